//! The simulated store behaves like the real one: the same reads give the same bytes (padding
//! as zeros), the same writes leave the same data, and the same broken files give the same typed
//! errors. Engine tests written against `SimStore` then say something about `UringStore`.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::layout::{FileEntry, Layout};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::sim::{SimConfig, SimStore};
use uring_bt_storage::store::{BlockStore, StorageError};
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
