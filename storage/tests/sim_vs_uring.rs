//! The simulated store behaves like the real one: the same reads give the same bytes (padding
//! as zeros), the same writes leave the same data, and the same broken files give the same typed
//! errors. Engine tests written against `SimStore` then say something about `UringStore`.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::layout::{FileEntry, Layout};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::pool::PoolBuf;
use uring_bt_storage::sim::{SimConfig, SimStore};
use uring_bt_storage::store::{BlockStore, StorageError, TorrentId};
use uring_bt_storage::uring::{UringConfig, UringStore};

fn layout() -> Arc<Layout> {
    let pad = |p: &str, length| FileEntry {
        path: p.into(),
        length,
        padding: true,
    };
    Arc::new(
        Layout::new(
            vec![
                fe("q/a", 20_000),
                pad("q/.pad/0", 12_768),
                fe("q/b", 1),
                fe("q/empty", 0),
                fe("q/c", 50_000),
                pad("q/.pad/1", 100),
                fe("q/d", 9_999),
            ],
            32_768,
        )
        .unwrap(),
    )
}

fn stream(l: &Layout) -> Vec<u8> {
    let mut v: Vec<u8> = (0..l.total_length()).map(stream_byte).collect();
    for (i, f) in l.files().iter().enumerate() {
        if f.padding {
            let s = l.file_offset(i) as usize;
            v[s..s + f.length as usize].fill(0);
        }
    }
    v
}

fn kind(r: &Result<(), StorageError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(StorageError::FileMissing { .. }) => "missing",
        Err(StorageError::FileTooShort { .. }) => "short",
        Err(StorageError::BadBlock(_)) => "bad block",
        Err(StorageError::BlockTooLarge { .. }) => "too large",
        Err(StorageError::UnknownTorrent(_)) => "unknown torrent",
        Err(e) => panic!("unexpected {e:?}"),
    }
}

#[test]
fn same_bytes_and_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout();
    write_files(&l, dir.path());
    // Break two files the same way on both sides.
    std::fs::remove_file(dir.path().join("q/b")).unwrap();
    std::fs::write(dir.path().join("q/d"), vec![0u8; 5_000]).unwrap();
    let mut data = stream(&l);
    let d_start = l.file_offset(6) as usize;
    data[d_start..d_start + 5_000].fill(0);
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let real = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let rt = real.add_torrent(Arc::clone(&l), dir.path().to_path_buf(), false);
        let sim = SimStore::new(SimConfig::default());
        let st = sim.add_torrent(Arc::clone(&l), data, false);
        sim.set_missing(st, 2, true);
        sim.truncate(st, 6, 5_000);
        let mut rng = Rng(99);
        let mut kinds = std::collections::BTreeMap::new();
        // Every 16 KiB block, then random (sometimes invalid) requests.
        let mut reqs = all_blocks(&l, 16_384);
        for _ in 0..2_000 {
            let p = rng.below(u64::from(l.num_pieces()) + 1) as u32;
            let size = l.piece_size(p).max(1);
            let b = rng.below(u64::from(size)) as u32;
            reqs.push((p, b, 1 + rng.below(17_000) as u32));
        }
        for (p, b, n) in reqs {
            let (r1, b1) = real.read_block(rt, p, b, n, pool.take().await).await;
            let (r2, b2) = sim.read_block(st, p, b, n, pool.take().await).await;
            assert_eq!(
                kind(&r1),
                kind(&r2),
                "piece {p} begin {b} len {n}: {r1:?} vs {r2:?}"
            );
            if r1.is_ok() {
                assert_eq!(b1.block(), b2.block(), "piece {p} begin {b} len {n}");
            }
            *kinds.entry(kind(&r1)).or_insert(0) += 1;
        }
        // Every outcome was exercised.
        for k in ["ok", "missing", "short", "bad block", "too large"] {
            assert!(
                kinds.get(k).copied().unwrap_or(0) > 0,
                "{k} never seen: {kinds:?}"
            );
        }
    });
}

/// `read_blocks` (a run of contiguous blocks, one operation) agrees too: the same bytes in
/// every buffer of a run that succeeds, the same error kind for a run that does not (past the
/// piece end, a block of 0 bytes or too large for its buffer, a missing or short file on the
/// way, an unknown torrent).
#[test]
fn runs_read_the_same_bytes_and_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout();
    write_files(&l, dir.path());
    std::fs::remove_file(dir.path().join("q/b")).unwrap();
    std::fs::write(dir.path().join("q/d"), vec![0u8; 5_000]).unwrap();
    let mut data = stream(&l);
    let d_start = l.file_offset(6) as usize;
    data[d_start..d_start + 5_000].fill(0);
    tokio_uring::start(async {
        const MAX_BLOCKS: usize = 8;
        let pool = BufPool::new(2 * MAX_BLOCKS, 16_384).unwrap();
        let real = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let rt = real.add_torrent(Arc::clone(&l), dir.path().to_path_buf(), false);
        let sim = SimStore::new(SimConfig::default());
        let st = sim.add_torrent(Arc::clone(&l), data, false);
        sim.set_missing(st, 2, true);
        sim.truncate(st, 6, 5_000);
        let take = |n: usize| {
            let pool = Rc::clone(&pool);
            async move {
                let mut v: Vec<PoolBuf> = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(pool.take().await);
                }
                v
            }
        };
        let mut rng = Rng(1234);
        let mut kinds = std::collections::BTreeMap::new();
        // Runs that must meet each outcome, then random ones: mostly runs that fit the piece;
        // some past its end, some with a block of 0 bytes or over 16 KiB, some on a piece or a
        // torrent that does not exist.
        let last = l.num_pieces() - 1;
        let mut runs: Vec<(u32, u32, Vec<u32>)> = vec![
            (0, 10_000, vec![10_000, 12_768]),      // a, then padding
            (0, 19_000, vec![1_000, 5_000, 7_768]), // a's end, padding
            (1, 0, vec![1, 100]),                   // q/b is missing
            (last, 0, vec![16_384, 16_384]),        // q/d is short
            (last, 100, vec![16_384, 16_384]),      // past the piece end
            (0, 0, vec![100, 0, 100]),              // a block of 0 bytes
            (0, 0, vec![100, 16_385]),              // a block too large
        ];
        for _ in 0..1_500 {
            let p = rng.below(u64::from(l.num_pieces()) + 1) as u32;
            let size = l.piece_size(p).max(1);
            let first = match rng.below(3) {
                0 => 0,
                1 => (rng.below(u64::from(size)) as u32) & !16_383,
                _ => rng.below(u64::from(size)) as u32,
            };
            let blocks = 1 + rng.below(MAX_BLOCKS as u64) as usize;
            let mut lens = Vec::with_capacity(blocks);
            let mut at = first;
            while lens.len() < blocks {
                let n = match rng.below(60) {
                    0 => 0,
                    1 => 16_385 + rng.below(1_000) as u32,
                    2 => 1 + rng.below(16_384) as u32,
                    _ if at >= size => break,
                    3..=30 => 16_384.min(size - at),
                    _ => (1 + rng.below(16_384) as u32).min(size - at),
                };
                lens.push(n);
                at = at.saturating_add(n);
            }
            runs.push((p, first, lens));
        }
        for (i, (p, first, lens)) in runs.into_iter().enumerate() {
            let blocks = lens.len();
            let (rt, st) = if i % 500 == 7 {
                (TorrentId(9), TorrentId(9))
            } else {
                (rt, st)
            };
            let (r1, b1) = real
                .read_blocks(rt, p, first, &lens, take(blocks).await)
                .await;
            let (r2, b2) = sim
                .read_blocks(st, p, first, &lens, take(blocks).await)
                .await;
            let at = format!("run at {p}/{first} of {lens:?}");
            assert_eq!(kind(&r1), kind(&r2), "{at}: {r1:?} vs {r2:?}");
            assert_eq!(b1.len(), blocks, "{at}: every buffer comes back");
            assert_eq!(b2.len(), blocks, "{at}: every buffer comes back");
            if r1.is_ok() {
                for (k, ((x, y), &n)) in b1.iter().zip(&b2).zip(&lens).enumerate() {
                    assert_eq!(x.block_len(), n as usize, "{at}: block {k}");
                    assert_eq!(x.block(), y.block(), "{at}: block {k}");
                }
            }
            *kinds.entry(kind(&r1)).or_insert(0) += 1;
        }
        assert_eq!(pool.available(), pool.capacity());
        for k in [
            "ok",
            "missing",
            "short",
            "bad block",
            "too large",
            "unknown torrent",
        ] {
            assert!(
                kinds.get(k).copied().unwrap_or(0) > 0,
                "{k} never seen: {kinds:?}"
            );
        }
    });
}

#[test]
fn same_writes_leave_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout();
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let real = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let rt = real.add_torrent(Arc::clone(&l), dir.path().to_path_buf(), true);
        let sim = SimStore::new(SimConfig::default());
        let st = sim.add_torrent(Arc::clone(&l), Vec::new(), true);
        // Write every block (padding regions included in the buffers) in a shuffled order.
        let mut blocks = all_blocks(&l, 16_384);
        let mut rng = Rng(5);
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (p, b, n) in blocks {
            let src: Vec<u8> = (0..n).map(|i| (i as u8) ^ (p as u8) ^ 0x5a).collect();
            let mut buf = pool.take().await;
            buf.fill_block(&src);
            let (r, _) = real.write_block(rt, p, b, buf).await;
            r.unwrap();
            let mut buf = pool.take().await;
            buf.fill_block(&src);
            let (r, _) = sim.write_block(st, p, b, buf).await;
            r.unwrap();
        }
        let want = sim.data(st).unwrap();
        for (p, b, n) in all_blocks(&l, 16_384) {
            let (r, buf) = real.read_block(rt, p, b, n, pool.take().await).await;
            r.unwrap();
            let s = (l.piece_range(p).start + u64::from(b)) as usize;
            assert_eq!(buf.block(), &want[s..s + n as usize], "{p}/{b}");
        }
        for p in 0..l.num_pieces() {
            assert_eq!(
                real.hash_piece(rt, p).await.unwrap(),
                sim.hash_piece(st, p).await.unwrap()
            );
        }
    });
    // Padding files were never created.
    assert!(!dir.path().join("q/.pad").exists());
    assert_eq!(
        std::fs::metadata(dir.path().join("q/c")).unwrap().len(),
        50_000
    );
}
