//! 16 KiB random reads from a warm 1 GiB file on ext4 (/var/tmp), through:
//! - `storage`: the engine's `UringStore` (own ring, registered file + registered pool buffers,
//!   batched submissions), at queue depths 1, 32, 128; and `storage_plain` (same ring, plain
//!   `Read` + plain descriptor) at 32, to show what registration buys;
//! - `tokio_uring`: `File::read_at` with an owned `Vec` per task, at depths 1, 32, 128;
//! - `pread` and `mmap` (copy out of a shared mapping): one thread (a synchronous call has no
//!   queue depth).
//!
//! The file is created if missing, read in full right before the group (warm page cache) and its
//! residency printed before and after (compare with `fincore`).
//!
//! Run: `cargo bench -p uring-bt-benches --bench disk -- --warm-up-time 1 --measurement-time 3`

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use uring_bt_storage::hash::{hash_pieces_with, HashOptions};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uring_bt::bench::disk::{
    ensure_file, random_offsets, residency, run_mmap, run_pread, warm, Mapping, StorageRunner,
    TokioUringRunner, DEFAULT_PATH,
};

const BLOCK: u32 = 16_384;
const SIZE: u64 = 1 << 30;
/// Reads per criterion iteration.
const BATCH: usize = 1_024;

fn batches(offsets: &[u64], iters: u64, mut f: impl FnMut(&[u64]) -> Duration) -> Duration {
    let n = offsets.len() / BATCH;
    (0..iters as usize)
        .map(|i| {
            let lo = (i % n) * BATCH;
            f(&offsets[lo..lo + BATCH])
        })
        .sum()
}

fn disk(c: &mut Criterion) {
    let path = Path::new(DEFAULT_PATH);
    ensure_file(path, SIZE).expect("creating the benchmark file");
    warm(path).expect("warming");
    let (res, pages) = residency(path).expect("residency");
    eprintln!("disk bench: {DEFAULT_PATH}: {res}/{pages} pages resident before");
    let offsets = random_offsets(SIZE, BLOCK, 1 << 20, 0x5eed);

    let mut g = c.benchmark_group("disk_16k_random");
    g.throughput(Throughput::Bytes(u64::from(BLOCK) * BATCH as u64));
    for depth in [1usize, 32, 128] {
        let s = StorageRunner::new(path, BLOCK, depth, true).expect("storage runner");
        assert_eq!(s.store().is_fixed(), (true, true));
        g.bench_function(BenchmarkId::new("storage", depth), |b| {
            b.iter_custom(|iters| {
                batches(&offsets, iters, |o| {
                    s.run(o, depth, false).expect("read").elapsed
                })
            })
        });
        drop(s);
        if depth == 32 {
            let s = StorageRunner::new(path, BLOCK, depth, false).expect("storage runner");
            g.bench_function(BenchmarkId::new("storage_plain", depth), |b| {
                b.iter_custom(|iters| {
                    batches(&offsets, iters, |o| {
                        s.run(o, depth, false).expect("read").elapsed
                    })
                })
            });
        }
        let t = TokioUringRunner::new(path, BLOCK).expect("tokio-uring runner");
        g.bench_function(BenchmarkId::new("tokio_uring", depth), |b| {
            b.iter_custom(|iters| {
                batches(&offsets, iters, |o| {
                    t.run(o, depth, false).expect("read").elapsed
                })
            })
        });
    }
    let file = File::open(path).expect("open");
    g.bench_function(BenchmarkId::new("pread", 1), |b| {
        b.iter_custom(|iters| {
            batches(&offsets, iters, |o| {
                run_pread(&file, o, BLOCK, 1, false).expect("read").elapsed
            })
        })
    });
    let map = Mapping::new(&file).expect("mmap");
    g.bench_function(BenchmarkId::new("mmap", 1), |b| {
        b.iter_custom(|iters| {
            batches(&offsets, iters, |o| {
                run_mmap(&map, o, BLOCK, 1, false).expect("read").elapsed
            })
        })
    });
    g.finish();
    let (res, pages) = residency(path).expect("residency");
    eprintln!("disk bench: {DEFAULT_PATH}: {res}/{pages} pages resident after");
}

/// Piece hashing over a warm 64 MiB file (1 MiB pieces), one thread: through the store's ring
/// (`hash_piece`, 16 KiB and 64 KiB pool buffers) vs `storage::hash` (std `pread`, 64 KiB).
fn hash(c: &mut Criterion) {
    let path = Path::new("/var/tmp/uring-bt-bench-64m.bin");
    ensure_file(path, 64 << 20).expect("creating the hash file");
    warm(path).expect("warming");
    let mut g = c.benchmark_group("hash_64mib");
    g.throughput(Throughput::Bytes(64 << 20));
    g.sample_size(10);
    for block in [16_384u32, 65_536] {
        let s = StorageRunner::with_piece_length(path, block, 1, true, 1 << 20)
            .expect("storage runner");
        g.bench_function(BenchmarkId::new("storage_hash_piece", block), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| s.hash_all().expect("hash")).sum())
        });
    }
    let s =
        StorageRunner::with_piece_length(path, 16_384, 1, true, 1 << 20).expect("storage runner");
    let layout = s.layout();
    let root = path.parent().expect("parent").to_path_buf();
    g.bench_function(BenchmarkId::new("std_pread_hash_pieces", 65_536), |b| {
        b.iter(|| {
            let r = hash_pieces_with(
                &layout,
                &root,
                HashOptions {
                    threads: 1,
                    read_chunk: 65_536,
                    multi_buffer: false,
                },
                &|_| {},
            );
            assert!(r.iter().all(|x| x.is_ok()));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = disk, hash
}
criterion_main!(benches);
