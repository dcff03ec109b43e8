//! Acceptance: memory stays bounded. With a pool of N buffers, reading 1 GiB through the store
//! does not grow resident memory beyond the pool plus a small constant.
//!
//! One test per binary, so no other test's allocations are counted.

mod common;

use std::io::Write;
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::layout::Layout;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::BlockStore;
use uring_bt_storage::uring::{UringConfig, UringStore};

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

const FILE: u64 = 64 << 20;
const POOL: usize = 64;
/// Allowed growth besides the pool: the runtime's tasks and op table, allocator slack.
const SLACK: usize = 4 << 20;

#[test]
fn reading_one_gib_keeps_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = std::fs::File::create(dir.path().join("m")).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| stream_byte(i as u64)).collect();
        for _ in 0..FILE >> 20 {
            f.write_all(&chunk).unwrap();
        }
    }
    let layout = Arc::new(Layout::new(vec![fe("m", FILE)], 1 << 20).unwrap());
    let blocks = all_blocks(&layout, 16_384);
    tokio_uring::start(async {
        let before = rss_bytes();
        let pool = BufPool::new(POOL, 16_384).unwrap();
        let store = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let mut total: u64 = 0;
        let mut peak = 0;
        let mut hs = Vec::new();
        // 32 concurrent readers, 1 GiB in all (16 passes over the 64 MiB file).
        for w in 0..32usize {
            let (store, pool) = (Rc::clone(&store), Rc::clone(&pool));
            let mine: Vec<_> = blocks.iter().copied().skip(w).step_by(32).collect();
            hs.push(tokio_uring::spawn(async move {
                let mut n_bytes = 0u64;
                let mut peak = 0;
                for pass in 0..16 {
                    for &(p, b, n) in &mine {
                        let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                        r.unwrap();
                        assert_eq!(buf.block().len(), n as usize);
                        n_bytes += u64::from(n);
                    }
                    if pass % 4 == 3 {
                        peak = peak.max(rss_bytes());
                    }
                }
                (n_bytes, peak)
            }));
        }
        for h in hs {
            let (n, p) = h.await.unwrap();
            total += n;
            peak = peak.max(p);
        }
        assert_eq!(total, 1 << 30);
        let growth = peak.saturating_sub(before);
        eprintln!(
            "rss before {} KiB, peak {} KiB, growth {} KiB, pool {} KiB",
            before >> 10,
            peak >> 10,
            growth >> 10,
            pool.arena_bytes() >> 10
        );
        assert!(
            growth <= pool.arena_bytes() + SLACK,
            "resident memory grew {growth} bytes, pool is {}",
            pool.arena_bytes()
        );
    });
}
