//! SHA-1 throughput: one core at several chunk sizes, all cores at once, and the piece hasher
//! (`storage::hash`) over a file in /dev/shm at several read-chunk sizes.
//!
//! Run: `cargo bench -p uring-bt-benches --bench sha1`
//! (compare: `openssl speed -seconds 3 -evp sha1` and `openssl speed -seconds 3 -multi 2 -evp sha1`).
//! sha1 0.10.7's `asm` feature is empty (the SHA-NI backend is intrinsics, picked at run time), so
//! `--features sha1/asm` builds the same code; `--features sha1/force-soft` shows the portable
//! backend.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha1::{Digest, Sha1};
use uring_bt_proto::layout::{FileEntry, Layout};
use uring_bt_storage::hash::{hash_pieces_with, HashOptions};
use uring_bt_storage::sha1x16::{Sha1x16, LANES};

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn sha1_one_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha1_one_core");
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(3));
    for &size in &[16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{}KiB", size >> 10), |b| {
            b.iter(|| Sha1::digest(black_box(&data)))
        });
    }
    g.finish();
}

/// Sixteen messages at once on one core (AVX-512, `storage::sha1x16`): 16 lanes of 64 KiB, the
/// shape `storage::hash` feeds it (L2-resident, like `openssl speed`'s buffer).
fn sha1x16_one_core(c: &mut Criterion) {
    let Some(fresh) = Sha1x16::new() else {
        eprintln!("sha1x16_one_core: this CPU has no AVX-512F/BW; nothing to measure");
        return;
    };
    let lane = 64usize << 10;
    let data: Vec<u8> = (0..LANES * lane)
        .map(|i| (i * 31 + i / 977) as u8)
        .collect();
    let mut g = c.benchmark_group("sha1x16_one_core");
    g.sample_size(20);
    g.measurement_time(std::time::Duration::from_secs(3));
    g.throughput(Throughput::Bytes((LANES * lane) as u64));
    g.bench_function("16_lanes_64KiB", |b| {
        b.iter(|| {
            let mut h = fresh.clone();
            h.update(black_box(&data), lane, lane);
            black_box(h.finalize())
        })
    });
    g.finish();
}

/// Every core hashes its own 16 KiB blocks (in 1 MiB runs) at once: the ceiling for `create`.
fn sha1_all_cores(c: &mut Criterion) {
    let n = cores();
    let per_thread = 8usize << 20;
    let mut g = c.benchmark_group("sha1_all_cores");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(5));
    g.throughput(Throughput::Bytes((n * per_thread) as u64));
    let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1 << 20]).collect();
    g.bench_function(format!("{n}_threads_1MiB_pieces"), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for buf in &bufs {
                    s.spawn(move || {
                        for _ in 0..per_thread / buf.len() {
                            let mut h = Sha1::new();
                            for block in buf.chunks(16 << 10) {
                                h.update(block);
                            }
                            black_box(h.finalize());
                        }
                    });
                }
            })
        })
    });
    g.finish();
}

/// `hash_pieces` over a 256 MiB file in /dev/shm (tmpfs: always in memory), 1 MiB pieces.
fn piece_hasher(c: &mut Criterion) {
    let size: usize = 256 << 20;
    let path = PathBuf::from(format!(
        "/dev/shm/uring-bt-sha1-bench-{}",
        std::process::id()
    ));
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    if std::fs::write(&path, &data).is_err() {
        eprintln!("piece_hasher: cannot write {}; skipped", path.display());
        return;
    }
    drop(data);
    let layout = Layout::new(
        vec![FileEntry {
            path: path.clone(),
            length: size as u64,
            padding: false,
        }],
        1 << 20,
    )
    .expect("layout");
    let mut g = c.benchmark_group("hash_pieces_tmpfs");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(8));
    g.throughput(Throughput::Bytes(size as u64));
    let hash_all = |threads, read_chunk, multi_buffer| {
        let opts = HashOptions {
            threads,
            read_chunk,
            multi_buffer,
        };
        let r = hash_pieces_with(&layout, std::path::Path::new(""), opts, &|_| {});
        assert!(r.iter().all(|p| p.is_ok()));
        black_box(r)
    };
    for threads in [1, cores()] {
        for chunk in [16 << 10, 64 << 10, 256 << 10, 1 << 20] {
            g.bench_function(format!("{threads}_threads_read_{}KiB", chunk >> 10), |b| {
                b.iter(|| hash_all(threads, chunk, false))
            });
        }
        // The default: sixteen pieces at once (AVX-512), 64 KiB reads per lane.
        g.bench_function(format!("{threads}_threads_16_lanes_read_64KiB"), |b| {
            b.iter(|| hash_all(threads, 64 << 10, true))
        });
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(
    benches,
    sha1_one_core,
    sha1x16_one_core,
    sha1_all_cores,
    piece_hasher
);
criterion_main!(benches);
