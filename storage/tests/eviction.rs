//! Acceptance: no eviction ever closes a file or reuses a slot with an operation in flight.
//!
//! With two slots and 64 concurrent readers over 40 files, every turn of the runtime queues many
//! reads (pushed to the ring, not yet submitted) naming a slot. If a miss evicted a slot with a
//! queued or in-flight read, that read would reach the newly installed file and return the wrong
//! bytes: every block is compared. The slot-wait counter proves the contention happened.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::layout::Layout;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::BlockStore;
use uring_bt_storage::uring::{UringConfig, UringStore};

#[test]
fn busy_slots_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (0..40).map(|i| fe(format!("e/f{i}"), 64 * 1024)).collect();
    let layout = Arc::new(Layout::new(files, 64 * 1024).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(64, 16_384).unwrap();
        let store = UringStore::new(
            UringConfig {
                max_open_files: 2,
                ..UringConfig::default()
            },
            Rc::clone(&pool),
        )
        .unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let blocks = all_blocks(&layout, 16_384);
        let mut hs = Vec::new();
        for w in 0..64u64 {
            let (store, pool, layout) = (Rc::clone(&store), Rc::clone(&pool), Arc::clone(&layout));
            let blocks = blocks.clone();
            hs.push(tokio_uring::spawn(async move {
                let mut rng = Rng(w + 1);
                for _ in 0..100 {
                    let (p, b, n) = blocks[rng.below(blocks.len() as u64) as usize];
                    let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                    r.unwrap();
                    assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
                    assert!(store.open_files() <= 2);
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        let s = store.stats();
        eprintln!("{s:?}");
        assert_eq!(s.reads, 6_400);
        assert!(s.slot_waits > 0, "the test must contend for slots: {s:?}");
        assert!(s.evictions > 100, "{s:?}");
        assert_eq!(store.in_flight(), 0);
        assert_eq!(pool.available(), pool.capacity());
    });
}

/// A read future dropped while its operation is queued must not return its buffer to the pool
/// (the kernel still writes into it) nor free its slot until the completion arrives.
#[test]
fn dropped_read_keeps_buffer_and_slot_until_completion() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("d/a", 65_536), fe("d/b", 65_536)], 65_536).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let store = UringStore::new(
            UringConfig {
                max_open_files: 1,
                ..UringConfig::default()
            },
            Rc::clone(&pool),
        )
        .unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        {
            let buf = pool.take().await;
            let fut = store.read_block(t, 0, 0, 16_384, buf);
            let mut fut = std::pin::pin!(fut);
            // Poll once: the SQE is queued, the future pending.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
            assert!(polled);
            assert_eq!(store.in_flight(), 1);
            assert_eq!(pool.available(), 1);
        } // dropped here, op in flight
        assert_eq!(
            pool.available(),
            1,
            "buffer must stay with the in-flight op"
        );
        assert_eq!(store.in_flight(), 1);
        // A read of the other file needs the only slot: it waits for the abandoned op.
        let (r, buf) = store.read_block(t, 1, 0, 16_384, pool.take().await).await;
        r.unwrap();
        assert_eq!(buf.block(), &expected(&layout, 1, 0, 16_384)[..]);
        drop(buf);
        assert_eq!(store.in_flight(), 0);
        assert_eq!(pool.available(), 2);
        assert!(store.stats().slot_waits > 0);
    });
}

use std::future::Future;
use std::task::Poll;

/// A store dropped with an abandoned operation still queued waits for it before releasing the
/// ring, so its buffer comes back to the pool only once the kernel is done with it.
#[test]
fn store_dropped_with_an_operation_in_flight_drains_it() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("x/a", 65_536)], 65_536).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let store = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        {
            let fut = store.read_block(t, 0, 0, 16_384, pool.take().await);
            let mut fut = std::pin::pin!(fut);
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
            assert!(pending);
        }
        assert_eq!(store.in_flight(), 1);
        assert_eq!(pool.available(), 1);
        drop(store); // the SQE was never submitted: drop submits it and waits
        assert_eq!(pool.available(), 2);
    });
}
