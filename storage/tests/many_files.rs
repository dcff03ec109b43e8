//! Acceptance: a torrent of 5,000+ files read block by block in random order, with the file
//! table capped at 64 and RLIMIT_NOFILE at 256: every block's bytes are right, and the number
//! of open descriptors (from /proc/self/fd) never exceeds the cap plus a small constant.
//!
//! One test per binary: it lowers this process's descriptor limit.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::files::rlimit_nofile;
use uring_bt_storage::layout::Layout;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::BlockStore;
use uring_bt_storage::uring::{UringConfig, UringStore};

const CAP: usize = 64;
/// Descriptors besides the table: stdio, the test harness, the ring, the eventfd, tokio-uring's
/// ring and epoll, the torrent's root directory, a directory listing while counting.
const SLACK: usize = 24;

#[test]
fn five_thousand_files_random_order_under_ulimit_256() {
    let dir = tempfile::tempdir().unwrap();
    // 5,003 files of varied sizes (some zero, some crossing blocks), 16 KiB pieces.
    let mut rng = Rng(0x5eed);
    let files: Vec<_> = (0..5_003)
        .map(|i| {
            let len = match i % 7 {
                0 => 0,
                1 => 1,
                2 => 16_384,
                _ => 1 + rng.below(12_000),
            };
            fe(format!("big/d{}/f{i}.bin", i % 50), len)
        })
        .collect();
    let layout = Arc::new(Layout::new(files, 16_384).unwrap());
    write_files(&layout, dir.path());

    let lim = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    assert_eq!(rlimit_nofile(), 256);
    // 256 descriptors hold a table of CAP (64) slots with room to spare (the engine's
    // `server::limits::fd_budget` splits a limit between peers and files the same way).

    let base = open_fds();
    let mut blocks = all_blocks(&layout, 16_384);
    // Random order (Fisher-Yates with a fixed seed).
    for i in (1..blocks.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        blocks.swap(i, j);
    }
    tokio_uring::start(async {
        let pool = BufPool::new(16, 16_384).unwrap();
        let store = UringStore::new(
            UringConfig {
                max_open_files: CAP,
                ..UringConfig::default()
            },
            Rc::clone(&pool),
        )
        .unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let mut max_fds = 0;
        // 8 concurrent readers, so slots are contended while operations are in flight.
        let chunks: Vec<Vec<_>> = (0..8)
            .map(|w| blocks.iter().copied().skip(w).step_by(8).collect())
            .collect();
        let max_seen = Rc::new(std::cell::Cell::new(0usize));
        let mut hs = Vec::new();
        for mine in chunks {
            let (store, pool, layout, max_seen) = (
                Rc::clone(&store),
                Rc::clone(&pool),
                Arc::clone(&layout),
                Rc::clone(&max_seen),
            );
            hs.push(tokio_uring::spawn(async move {
                for (p, b, n) in mine {
                    let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                    r.unwrap();
                    assert_eq!(buf.block(), &expected(&layout, p, b, n)[..], "{p}/{b}");
                    assert!(store.open_files() <= CAP);
                    // After every read (the table opens files only inside reads).
                    max_seen.set(max_seen.get().max(open_fds()));
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        max_fds = max_fds.max(max_seen.get());
        let s = store.stats();
        eprintln!("base fds {base}, max fds {max_fds}, stats {s:?}");
        assert!(
            max_fds <= CAP + SLACK,
            "open descriptors {max_fds} > {CAP} + {SLACK}"
        );
        assert!(s.opens >= 4_000, "{s:?}");
        assert!(s.evictions > 0);
    });
}
