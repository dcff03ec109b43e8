//! The shard's batch read (`server::serve::read_all`: runs of contiguous blocks read together,
//! a failed run read again block by block) driven through the simulated store, with the same
//! `BlockStore` trait the shard's io_uring store implements.
//!
//! A torrent of several files (padding, an empty file, a one-byte file), a batch that mixes
//! runs and scattered blocks in no particular order, and seeded faults: a bad region (EIO on
//! one block), a missing file, a short file, transient EIO and short reads. The blocks that can
//! be read come back with the exact bytes the store holds, in request order; the others come
//! back as errors, and only those; every buffer goes back to the pool.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use uring_bt::server::serve::{read_all, BlockRead, MAX_RUN};
use uring_bt_proto::wire::BlockRef;
use uring_bt_storage::layout::{FileEntry, Layout};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::sim::{Fault, SimConfig, SimStore};
use uring_bt_storage::store::{StorageError, TorrentId};

const BLOCK: u32 = 16_384;
const PIECE: u32 = 4 * BLOCK;

/// File indices in [`layout`].
const FILE_B: usize = 2;
const FILE_D: usize = 5;
/// What is left of file d after [`broken_store`] truncates it.
const D_PRESENT: u64 = 10_000;
/// A byte inside block 1 of piece 3 (in file c): reads touching it fail with EIO.
const BAD_BYTE: u64 = 3 * PIECE as u64 + BLOCK as u64 + 1_000;

fn layout() -> Arc<Layout> {
    let fe = |p: &str, length, padding| FileEntry {
        path: p.into(),
        length,
        padding,
    };
    Arc::new(
        Layout::new(
            vec![
                fe("t/a", 100_000, false),
                fe("t/.pad/0", 2 * u64::from(PIECE) - 100_000, true),
                fe("t/b", 1, false),
                fe("t/empty", 0, false),
                fe("t/c", 150_000, false),
                fe("t/d", 40_000, false),
                fe("t/e", 70_000, false),
            ],
            PIECE,
        )
        .unwrap(),
    )
}

/// The torrent's stream: deterministic bytes, zeros in padding files.
fn stream(l: &Layout) -> Vec<u8> {
    let mut v: Vec<u8> = (0..l.total_length())
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as u8 ^ (i as u8))
        .collect();
    for (i, f) in l.files().iter().enumerate() {
        if f.padding {
            let s = l.file_offset(i) as usize;
            v[s..s + f.length as usize].fill(0);
        }
    }
    v
}

fn req(piece: u32, block: u32, l: &Layout) -> BlockRef {
    let begin = block * BLOCK;
    BlockRef {
        piece,
        begin,
        len: BLOCK.min(l.piece_size(piece) - begin),
    }
}

/// A batch mixing runs and scattered blocks, out of order, with a duplicate.
fn batch(l: &Layout) -> Vec<BlockRef> {
    let last = l.num_pieces() - 1;
    let mut v = Vec::new();
    v.extend((0..4).map(|b| req(0, b, l))); // a run inside file a
    v.push(req(3, 3, l)); // scattered (file c)
    v.extend((0..3).map(|b| req(3, b, l))); // a run with the bad block in the middle
    v.push(req(1, 2, l)); // the end of a, then padding
    v.extend((0..4).map(|b| req(4, b, l))); // a run from c into the short file d
    v.push(req(2, 0, l)); // starts with the missing one-byte file b
    v.push(req(last, 3, l)); // the torrent's last block (shorter)
    v.extend((1..3).map(|b| req(2, b, l))); // a run inside c
    v.push(req(0, 1, l)); // a duplicate
    v.extend((0..2).map(|b| req(last, b, l))); // a run in file e
    v
}

/// What a request must give, worked out from the layout alone (not from the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Ok,
    Missing,
    Eio,
    Short,
}

fn want(l: &Layout, r: BlockRef, broken: bool) -> Want {
    if !broken {
        return Want::Ok;
    }
    let s = l.piece_range(r.piece).start + u64::from(r.begin);
    let e = s + u64::from(r.len);
    let touches = |a: u64, b: u64| a < e && s < b;
    let b = l.file_offset(FILE_B);
    let d = l.file_offset(FILE_D);
    if touches(b, b + 1) {
        Want::Missing
    } else if touches(BAD_BYTE, BAD_BYTE + 1) {
        Want::Eio
    } else if touches(d + D_PRESENT, d + l.files()[FILE_D].length) {
        Want::Short
    } else {
        Want::Ok
    }
}

fn got(r: &Result<(), StorageError>) -> Want {
    match r {
        Ok(()) => Want::Ok,
        Err(StorageError::FileMissing { .. }) => Want::Missing,
        Err(StorageError::Io { source, .. }) if source.raw_os_error() == Some(libc::EIO) => {
            Want::Eio
        }
        Err(StorageError::FileTooShort { .. }) => Want::Short,
        Err(e) => panic!("unexpected storage error {e:?}"),
    }
}

fn store(cfg: SimConfig, l: &Arc<Layout>, broken: bool) -> (SimStore, TorrentId) {
    let sim = SimStore::new(cfg);
    let t = sim.add_torrent(Arc::clone(l), stream(l), false);
    if broken {
        sim.set_missing(t, FILE_B, true);
        sim.truncate(t, FILE_D, D_PRESENT);
        sim.fail_reads(t, BAD_BYTE..BAD_BYTE + 1);
    }
    (sim, t)
}

/// Reads `reqs` with `read_all`, one buffer per request, as the shard does.
async fn read(
    pool: &Rc<BufPool>,
    sim: &SimStore,
    t: TorrentId,
    reqs: &[BlockRef],
    coalesce: usize,
) -> Vec<BlockRead> {
    let mut bufs = Vec::with_capacity(reqs.len());
    for _ in reqs {
        bufs.push(pool.take().await);
    }
    assert_eq!(pool.available(), pool.capacity() - reqs.len());
    read_all(sim, t, reqs, bufs, coalesce).await
}

/// Checks the results of a batch: one per request, in request order; a success holds exactly
/// the store's bytes of that block. Returns each request's outcome.
fn check(
    sim: &SimStore,
    t: TorrentId,
    l: &Layout,
    reqs: &[BlockRef],
    out: &[BlockRead],
) -> Vec<Want> {
    assert_eq!(out.len(), reqs.len(), "one result per request");
    let data = sim.data(t).unwrap();
    reqs.iter()
        .zip(out)
        .map(|(r, (res, buf))| {
            if res.is_ok() {
                let s = (l.piece_range(r.piece).start + u64::from(r.begin)) as usize;
                assert_eq!(buf.block_len(), r.len as usize, "{r:?}");
                assert!(
                    buf.block() == &data[s..s + r.len as usize],
                    "{r:?}: not the store's bytes"
                );
            }
            got(res)
        })
        .collect()
}

/// Persistent faults (a bad block, a missing file, a short file), every coalescing limit:
/// exactly the blocks that touch a fault fail, with its error; a run holding one is read again
/// block by block, so its other blocks are served.
#[test]
fn batch_serves_what_can_be_read_and_fails_only_the_rest() {
    let l = layout();
    let reqs = batch(&l);
    let wants: Vec<Want> = reqs.iter().map(|&r| want(&l, r, true)).collect();
    // The batch exercises every outcome, and a failing run holds blocks that are served.
    for w in [Want::Ok, Want::Missing, Want::Eio, Want::Short] {
        assert!(wants.contains(&w), "{w:?} not exercised");
    }
    assert_eq!(wants[5..8], [Want::Ok, Want::Eio, Want::Ok]);
    tokio_uring::start(async {
        let pool = BufPool::new(32, BLOCK as usize).unwrap();
        for coalesce in [1, 2, 3, 8, MAX_RUN, usize::MAX] {
            let (sim, t) = store(SimConfig::default(), &l, true);
            let out = read(&pool, &sim, t, &reqs, coalesce).await;
            let outcomes = check(&sim, t, &l, &reqs, &out);
            assert_eq!(outcomes, wants, "coalesce {coalesce}");
            drop(out);
            assert_eq!(pool.available(), pool.capacity(), "coalesce {coalesce}");
            let served = wants.iter().filter(|&&w| w == Want::Ok).count() as u64;
            assert_eq!(sim.stats().reads, served, "coalesce {coalesce}");
        }
    });
}

/// A transient EIO on a run (the batch's first operation) fails the run as a whole; reading
/// it again block by block serves every block.
#[test]
fn transient_eio_on_a_run_is_served_block_by_block() {
    let l = layout();
    let reqs = batch(&l);
    tokio_uring::start(async {
        let pool = BufPool::new(32, BLOCK as usize).unwrap();
        let (sim, t) = store(SimConfig::default(), &l, false);
        sim.inject(Fault::Eio);
        let out = read(&pool, &sim, t, &reqs, 8).await;
        let outcomes = check(&sim, t, &l, &reqs, &out);
        assert!(outcomes.iter().all(|&w| w == Want::Ok), "{outcomes:?}");
        assert_eq!(sim.stats().eio, 1);
        assert_eq!(sim.stats().reads, reqs.len() as u64);
        drop(out);
        assert_eq!(pool.available(), pool.capacity());
    });
}

/// Seeded random faults (EIO, short reads, and with latency the reads completing out of
/// order) on top of the persistent ones: whatever fails, the blocks served hold the store's
/// bytes in request order, a block the layout says must fail never succeeds, and every buffer
/// comes back. Without latency, the same seed gives the same outcomes.
#[test]
fn seeded_faults_keep_bytes_order_and_buffers() {
    let l = layout();
    let reqs = batch(&l);
    let wants: Vec<Want> = reqs.iter().map(|&r| want(&l, r, true)).collect();
    tokio_uring::start(async {
        let pool = BufPool::new(32, BLOCK as usize).unwrap();
        let (mut transient, mut short_steps, mut delayed) = (0, 0, 0);
        for seed in 1..=20u64 {
            let mut runs = Vec::new();
            for latency in [
                None,
                None,
                Some((Duration::ZERO, Duration::from_micros(200))),
            ] {
                let cfg = SimConfig {
                    seed,
                    short_per_million: 300_000,
                    eio_per_million: 100_000,
                    latency,
                    ..SimConfig::default()
                };
                let (sim, t) = store(cfg, &l, true);
                let out = read(&pool, &sim, t, &reqs, 8).await;
                let outcomes = check(&sim, t, &l, &reqs, &out);
                for (k, (&g, &w)) in outcomes.iter().zip(&wants).enumerate() {
                    match (w, g) {
                        (w, g) if w == g => {}
                        // A drawn EIO may fail a block the layout lets through.
                        (Want::Ok, Want::Eio) => transient += 1,
                        _ => panic!("seed {seed}, request {k} {:?}: {g:?}, want {w:?}", reqs[k]),
                    }
                }
                drop(out);
                assert_eq!(pool.available(), pool.capacity(), "seed {seed}");
                short_steps += sim.stats().short_steps;
                delayed += sim.stats().delayed;
                if latency.is_none() {
                    runs.push((outcomes, sim.stats()));
                }
            }
            assert_eq!(runs[0], runs[1], "seed {seed}: same seed, same outcomes");
        }
        assert!(transient > 0, "no drawn EIO ever failed a block");
        assert!(short_steps > 0 && delayed > 0, "{short_steps} {delayed}");
    });
}
