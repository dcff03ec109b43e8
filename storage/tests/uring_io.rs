//! Block I/O through the real io_uring store: bytes, spans, padding, writes, hashing, stats.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use sha1::{Digest, Sha1};
use uring_bt_storage::layout::{FileEntry, Layout};
use uring_bt_storage::pool::{BufPool, HEADROOM};
use uring_bt_storage::store::{BlockStore, StorageError, TorrentId};
use uring_bt_storage::uring::{UringConfig, UringStore};

fn cfg(max_open_files: usize) -> UringConfig {
    UringConfig {
        max_open_files,
        ..UringConfig::default()
    }
}

/// Files of odd sizes, an empty one, a padding file (never written) and a subdirectory, the last
/// file `last` bytes long, written under a new temporary directory.
fn mixed_tree(last: u64, piece_len: u32) -> (tempfile::TempDir, Arc<Layout>) {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![
        fe("t/a", 10_000),
        fe("t/empty", 0),
        FileEntry {
            path: "t/.pad/1".into(),
            length: 6_384,
            padding: true,
        },
        fe("t/b", 40_000),
        fe("t/sub/c", 1),
        fe("t/d", last),
    ];
    let layout = Arc::new(Layout::new(files, piece_len).unwrap());
    write_files(&layout, dir.path());
    (dir, layout)
}

#[test]
fn reads_every_block_across_files_and_padding() {
    let _serial = serial();
    let (dir, layout) = mixed_tree(70_001, 32_768);
    assert!(!dir.path().join("t/.pad/1").exists());
    tokio_uring::start(async {
        let pool = BufPool::new(8, 16_384).unwrap();
        let store = UringStore::new(cfg(2), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let buf = pool.take().await;
            let (r, buf) = store.read_block(t, p, b, n, buf).await;
            r.unwrap();
            assert_eq!(
                buf.block(),
                &expected(&layout, p, b, n)[..],
                "block {p}/{b}"
            );
        }
        // Odd offsets and lengths.
        let mut rng = Rng(7);
        for _ in 0..500 {
            let p = rng.below(u64::from(layout.num_pieces())) as u32;
            let size = layout.piece_size(p);
            let b = rng.below(u64::from(size)) as u32;
            let n = 1 + rng.below(u64::from((size - b).min(16_384))) as u32;
            let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
            r.unwrap();
            assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
        }
        assert!(store.open_files() <= 2);
        let s = store.stats();
        assert!(s.evictions > 0, "{s:?}");
        assert_eq!(pool.available(), pool.capacity());
        // Pieces hash like the data.
        for p in 0..layout.num_pieces() {
            let want: [u8; 20] = Sha1::digest(expected(&layout, p, 0, layout.piece_size(p))).into();
            assert_eq!(store.hash_piece(t, p).await.unwrap(), want);
        }
    });
}

#[test]
fn concurrent_reads_batch_into_few_submits() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("one", 4 << 20)], 1 << 18).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(32, 16_384).unwrap();
        let store = UringStore::new(cfg(4), Rc::clone(&pool)).unwrap();
        assert_eq!(store.is_fixed(), (true, true));
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let blocks = all_blocks(&layout, 16_384);
        let mut handles = Vec::new();
        for w in 0..32usize {
            let store = Rc::clone(&store);
            let pool = Rc::clone(&pool);
            let layout = Arc::clone(&layout);
            let mine: Vec<_> = blocks.iter().copied().skip(w).step_by(32).collect();
            handles.push(tokio_uring::spawn(async move {
                for (p, b, n) in mine {
                    let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                    r.unwrap();
                    assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let s = store.stats();
        assert_eq!(s.reads as usize, blocks.len());
        // 32 readers: submissions are batched, far fewer enters than reads.
        assert!(s.submits * 4 < s.reads, "{s:?}");
    });
}

#[test]
fn writes_then_reads_back_and_framing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let layout =
        Arc::new(Layout::new(vec![fe("w/x", 20_000), fe("w/deep/y", 30_000)], 16_384).unwrap());
    tokio_uring::start(async {
        let pool = BufPool::new(4, 16_384).unwrap();
        let store = UringStore::new(cfg(8), Rc::clone(&pool)).unwrap();
        let root = dir.path().join("save");
        let t = store.add_torrent(Arc::clone(&layout), root.clone(), true);
        let ro = store.add_torrent(Arc::clone(&layout), root.clone(), false);
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let mut buf = pool.take().await;
            buf.fill_block(&expected(&layout, p, b, n));
            let (r, _buf) = store.write_block(t, p, b, buf).await;
            r.unwrap();
        }
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let (r, buf) = store.read_block(ro, p, b, n, pool.take().await).await;
            r.unwrap();
            assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
            let framed = buf.frame_piece(p, b);
            assert_eq!(framed.len(), 13 + n as usize);
            assert_eq!(&framed[..4], &(9 + n).to_be_bytes());
            assert_eq!(&framed[13..], &expected(&layout, p, b, n)[..]);
            let buf = framed.into_inner();
            assert_eq!(buf.block().as_ptr() as usize - HEADROOM, {
                use tokio_uring::buf::IoBuf;
                buf.stable_ptr() as usize
            });
        }
        // Writing to a read-only torrent is refused with a typed error.
        let mut buf = pool.take().await;
        buf.fill_block(b"x");
        let (r, _) = store.write_block(ro, 0, 0, buf).await;
        assert!(matches!(r, Err(StorageError::ReadOnly { .. })), "{r:?}");
        // Bad requests are the peer's fault.
        let (r, _) = store.read_block(ro, 99, 0, 1, pool.take().await).await;
        assert!(matches!(r, Err(StorageError::BadBlock(_))));
        let (r, _) = store
            .read_block(TorrentId(9), 0, 0, 1, pool.take().await)
            .await;
        assert!(matches!(r, Err(StorageError::UnknownTorrent(_))));
    });
    assert_eq!(
        std::fs::read(dir.path().join("save/w/deep/y"))
            .unwrap()
            .len(),
        30_000
    );
}

/// Reads that miss the page cache complete after `io_uring_enter` returns (io-wq or the page
/// wait queue): the driver must learn of them through the eventfd.
#[test]
fn cold_reads_complete_through_the_eventfd() {
    let _serial = serial();
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("cold", 8 << 20)], 1 << 20).unwrap());
    write_files(&layout, dir.path());
    let f = std::fs::File::open(dir.path().join("cold")).unwrap();
    f.sync_all().unwrap();
    // SAFETY: advisory call on an open descriptor.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    tokio_uring::start(async {
        let pool = BufPool::new(16, 16_384).unwrap();
        let store = UringStore::new(cfg(4), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let mut hs = Vec::new();
        for w in 0..16usize {
            let (store, pool, layout) = (Rc::clone(&store), Rc::clone(&pool), Arc::clone(&layout));
            let mine: Vec<_> = all_blocks(&layout, 16_384)
                .into_iter()
                .skip(w)
                .step_by(16)
                .collect();
            hs.push(tokio_uring::spawn(async move {
                for (p, b, n) in mine {
                    let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                    r.unwrap();
                    assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        let s = store.stats();
        eprintln!("{s:?}");
        assert_eq!(s.reads, 512);
    });
}

/// The fallback when the ring refuses registration: plain descriptors and unregistered buffers.
#[test]
fn unregistered_fallback_reads_the_same_bytes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("u/a", 50_000), fe("u/b", 30_000)], 32_768).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(4, 16_384).unwrap();
        let store = UringStore::new(
            UringConfig {
                register_buffers: false,
                register_files: false,
                max_open_files: 1,
                ..UringConfig::default()
            },
            Rc::clone(&pool),
        )
        .unwrap();
        assert_eq!(store.is_fixed(), (false, false));
        assert!(!pool.is_registered());
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
            r.unwrap();
            assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
        }
        let w = store.add_torrent(Arc::clone(&layout), dir.path().join("copy"), true);
        let mut buf = pool.take().await;
        buf.fill_block(&expected(&layout, 1, 0, 16_384));
        let (r, _) = store.write_block(w, 1, 0, buf).await;
        r.unwrap();
        let (r, buf) = store.read_block(w, 1, 0, 16_384, pool.take().await).await;
        r.unwrap();
        assert_eq!(buf.block(), &expected(&layout, 1, 0, 16_384)[..]);
    });
}

/// Dropping a store ends its driver task and releases its descriptors (ring, eventfd, files).
#[test]
fn dropping_the_store_releases_its_descriptors() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("z/a", 20_000)], 16_384).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let before = open_fds();
        for _ in 0..20 {
            let pool = BufPool::new(2, 16_384).unwrap();
            let store = UringStore::new(cfg(4), Rc::clone(&pool)).unwrap();
            let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
            let (r, _) = store.read_block(t, 1, 0, 100, pool.take().await).await;
            r.unwrap();
            // Let the reactor deliver the eventfd's readiness and the driver go idle.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            drop(store);
            // The driver must now notice the store is gone and exit.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // A loaded machine may run the last drivers late: wait for them, boundedly (2 s),
        // while 20 leaked stores (three descriptors each) would never go.
        let mut after = open_fds();
        for _ in 0..200 {
            if after <= before + 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            after = open_fds();
        }
        assert!(after <= before + 2, "descriptors leak: {before} -> {after}");
    });
}

/// `read_blocks` (one vectored read per file span for a run of contiguous blocks) returns the
/// same bytes as reading each block alone: runs crossing files, empty files and padding, odd
/// block lengths, with two file slots so runs evict each other's files.
#[test]
fn vectored_runs_read_the_same_bytes_as_single_blocks() {
    let _serial = serial();
    let (dir, layout) = mixed_tree(170_001, 131_072);
    tokio_uring::start(async {
        let pool = BufPool::new(16, 16_384).unwrap();
        let store = UringStore::new(cfg(2), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let mut rng = Rng(11);
        let mut runs = 0u64;
        let mut blocks = 0u64;
        for _ in 0..400 {
            let p = rng.below(u64::from(layout.num_pieces())) as u32;
            let size = layout.piece_size(p);
            let mut begin = rng.below(u64::from(size)) as u32;
            let first = begin;
            let mut lens = Vec::new();
            let want_blocks = 1 + rng.below(8) as usize;
            while lens.len() < want_blocks && begin < size {
                let n = (1 + rng.below(16_384) as u32).min(size - begin);
                lens.push(n);
                begin += n;
            }
            let mut bufs = Vec::new();
            for _ in &lens {
                bufs.push(pool.take().await);
            }
            let (r, bufs) = store.read_blocks(t, p, first, &lens, bufs).await;
            r.unwrap();
            let mut b = first;
            for (buf, &n) in bufs.iter().zip(&lens) {
                assert_eq!(
                    buf.block(),
                    &expected(&layout, p, b, n)[..],
                    "run at {p}/{first}: block {b}+{n}"
                );
                b += n;
            }
            runs += 1;
            blocks += lens.len() as u64;
        }
        let s = store.stats();
        assert_eq!(s.reads, blocks);
        assert!(
            s.sqes < blocks,
            "runs must take fewer operations than blocks: {s:?} ({runs} runs)"
        );
        assert_eq!(pool.available(), pool.capacity());
        // A run past the end of the piece is refused before any I/O.
        let last = layout.num_pieces() - 1;
        let size = layout.piece_size(last);
        let bufs = vec![pool.take().await, pool.take().await];
        let (r, bufs) = store
            .read_blocks(t, last, size - 100, &[50, 51], bufs)
            .await;
        assert!(matches!(r, Err(StorageError::BadBlock(_))), "{r:?}");
        drop(bufs);
        // A file shorter than the torrent says: a typed error naming it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("t/d"))
            .unwrap()
            .set_len(100_000)
            .unwrap();
        let bufs = vec![pool.take().await, pool.take().await];
        let (r, _bufs) = store.read_blocks(t, last, 0, &[16_384, 16_384], bufs).await;
        match r {
            Err(StorageError::FileTooShort { path, .. }) => assert!(path.ends_with("t/d")),
            other => panic!("expected FileTooShort, got {other:?}"),
        }
    });
}

/// `write_blocks` (one vectored write per file span for a run of contiguous blocks) leaves the
/// same bytes as writing each block alone: every piece written as runs of 1 to 8 blocks of odd
/// lengths, crossing files, an empty file and padding (never created), with two file slots so
/// runs evict each other's files; fewer operations than blocks; a read-only torrent and a run
/// past the piece's end are refused with typed errors.
#[test]
fn vectored_runs_write_the_same_bytes_as_single_blocks() {
    let _serial = serial();
    let (src, layout) = mixed_tree(170_001, 131_072);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("save");
    tokio_uring::start(async {
        let pool = BufPool::new(16, 16_384).unwrap();
        let store = UringStore::new(cfg(2), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), root.clone(), true);
        let mut rng = Rng(5);
        let mut blocks = 0u64;
        for p in 0..layout.num_pieces() {
            let size = layout.piece_size(p);
            let mut begin = 0u32;
            while begin < size {
                let first = begin;
                let mut bufs = Vec::new();
                let want_blocks = 1 + rng.below(8) as usize;
                while bufs.len() < want_blocks && begin < size {
                    let n = (1 + rng.below(16_384) as u32).min(size - begin);
                    let mut buf = pool.take().await;
                    buf.fill_block(&expected(&layout, p, begin, n));
                    bufs.push(buf);
                    begin += n;
                }
                blocks += bufs.len() as u64;
                let (r, bufs) = store.write_blocks(t, p, first, bufs).await;
                r.unwrap();
                drop(bufs);
            }
        }
        let s = store.stats();
        assert_eq!(s.writes, blocks);
        assert!(
            s.sqes < blocks,
            "runs must take fewer operations than blocks: {s:?}"
        );
        assert_eq!(pool.available(), pool.capacity());
        // A run past the end of the piece is refused before any I/O.
        let last = layout.num_pieces() - 1;
        let size = layout.piece_size(last);
        let mut bufs = vec![pool.take().await, pool.take().await];
        for b in &mut bufs {
            b.fill_block(&[7u8; 60]);
        }
        let (r, bufs) = store.write_blocks(t, last, size - 100, bufs).await;
        assert!(matches!(r, Err(StorageError::BadBlock(_))), "{r:?}");
        // A read-only torrent refuses a run.
        let ro = store.add_torrent(Arc::clone(&layout), root.clone(), false);
        let (r, _bufs) = store.write_blocks(ro, 0, 0, bufs).await;
        assert!(matches!(r, Err(StorageError::ReadOnly { .. })), "{r:?}");
    });
    // Byte for byte what the source tree holds; the padding file was never created.
    for f in layout.files() {
        let got = root.join(&f.path);
        if f.padding {
            assert!(
                !got.exists(),
                "padding file {} was created",
                f.path.display()
            );
            continue;
        }
        if f.length == 0 {
            // No block touches an empty file: the store never opens it (the engine creates
            // empty files itself).
            continue;
        }
        let want = std::fs::read(src.path().join(&f.path)).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), want, "{}", f.path.display());
    }
}
