//! A block read by the store goes to a tokio-uring socket without a copy: the PoolBuf itself is
//! the write buffer (header framed in its headroom), and comes back to the pool when the write
//! completes. The receive side reads a PIECE payload straight into a pool buffer's block region.

mod common;

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use tokio_uring::net::{TcpListener, TcpStream};
use uring_bt_storage::layout::Layout;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::BlockStore;
use uring_bt_storage::uring::{UringConfig, UringStore};

#[test]
fn read_block_frame_and_send_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(Layout::new(vec![fe("s/data", 100_000)], 32_768).unwrap());
    write_files(&layout, dir.path());
    tokio_uring::start(async {
        let pool = BufPool::new(4, 16_384).unwrap();
        let store = UringStore::new(UringConfig::default(), Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();

        let blocks = all_blocks(&layout, 16_384);
        // Sender: read, frame, write; the buffer comes back from write_all.
        let sender = {
            let (store, pool, blocks) = (Rc::clone(&store), Rc::clone(&pool), blocks.clone());
            tokio_uring::spawn(async move {
                for (p, b, n) in blocks {
                    let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
                    r.unwrap();
                    let ptr = buf.block().as_ptr();
                    let (r, slice) = server.write_all(buf.frame_piece(p, b)).await;
                    r.unwrap();
                    let buf = slice.into_inner();
                    assert_eq!(buf.block().as_ptr(), ptr, "the same buffer, no copy");
                }
            })
        };
        // Receiver: the 13-byte header into a small Vec, the payload straight into a pool
        // buffer's block region.
        for (p, b, n) in blocks {
            let mut hdr = Vec::with_capacity(13);
            while hdr.len() < 13 {
                let want = 13 - hdr.len();
                let tmp = Vec::with_capacity(want);
                let (r, tmp) = client.read(tmp).await;
                assert!(r.unwrap() > 0);
                hdr.extend_from_slice(&tmp);
            }
            assert_eq!(&hdr[0..4], &(9 + n).to_be_bytes());
            assert_eq!(hdr[4], 7);
            assert_eq!(&hdr[5..9], &p.to_be_bytes());
            assert_eq!(&hdr[9..13], &b.to_be_bytes());
            // The first read goes to [HEADROOM..HEADROOM + n); short reads continue after
            // what arrived.
            let mut slice = pool.take().await.into_block_slice_mut(n as usize);
            let buf = loop {
                let (r, s) = client.read(slice).await;
                assert!(r.unwrap() > 0);
                let buf = s.into_inner();
                if buf.block_len() == n as usize {
                    break buf;
                }
                slice = buf.into_fill_slice(n as usize);
            };
            assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
        }
        sender.await.unwrap();
        assert_eq!(pool.available(), pool.capacity(), "every buffer came back");
    });
}

/// `splice_blocks` over a tree that forces every kind of chain split: 40 small files (blocks
/// span several), a padding file (zeros sent from memory), a file table of 4 slots (at most one
/// pinned per chain), and a 64 KiB pipe (16 buffers: a few blocks per chain). The receiver
/// reads a plain stream: each header and block must match, in order; the header buffer comes
/// back, and so does every slot pin (a later read of every file works).
#[test]
fn splice_blocks_sends_headers_and_blocks_in_order_through_small_pipes_and_tables() {
    use std::io::Read;
    use uring_bt_storage::uring::{SpliceBlock, SplicePipe};
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = (0..40)
        .map(|i| fe(format!("t/f{i:02}"), 3_000 + 1_111 * i))
        .collect();
    files.insert(
        7,
        uring_bt_storage::layout::FileEntry {
            path: "t/.pad/1".into(),
            length: 20_000,
            padding: true,
        },
    );
    let layout = Arc::new(Layout::new(files, 32_768).unwrap());
    write_files(&layout, dir.path());
    let blocks = all_blocks(&layout, 16_384);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let want: Vec<u8> = blocks
        .iter()
        .flat_map(|&(p, b, n)| {
            let mut m = Vec::with_capacity(13 + n as usize);
            m.extend_from_slice(&(9 + n).to_be_bytes());
            m.push(7);
            m.extend_from_slice(&p.to_be_bytes());
            m.extend_from_slice(&b.to_be_bytes());
            m.extend_from_slice(&expected(&layout, p, b, n));
            m
        })
        .collect();
    let total = want.len();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut got = vec![0u8; total];
        s.read_exact(&mut got).unwrap();
        got
    });
    tokio_uring::start(async {
        let pool = BufPool::new(4, 16_384).unwrap();
        let cfg = UringConfig {
            max_open_files: 4,
            ..UringConfig::default()
        };
        let store = UringStore::new(cfg, Rc::clone(&pool)).unwrap();
        let t = store.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let pipe = SplicePipe::new(64 << 10).unwrap();
        assert!(pipe.slots() >= 16, "{} pipe buffers", pipe.slots());
        let mut sent = 0u64;
        for batch in blocks.chunks(32) {
            let mut hdrs = pool.take().await;
            let h = hdrs.block_capacity_mut();
            let mut list = Vec::new();
            for (k, &(p, b, n)) in batch.iter().enumerate() {
                let at = &mut h[13 * k..13 * k + 13];
                at[0..4].copy_from_slice(&(9 + n).to_be_bytes());
                at[4] = 7;
                at[5..9].copy_from_slice(&p.to_be_bytes());
                at[9..13].copy_from_slice(&b.to_be_bytes());
                list.push(SpliceBlock {
                    piece: p,
                    begin: b,
                    len: n,
                });
            }
            let (r, back) = store
                .splice_blocks(
                    t,
                    &list,
                    hdrs,
                    &pipe,
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                )
                .await;
            sent += r.unwrap_or_else(|e| panic!("splice_blocks: {e}"));
            drop(back);
        }
        assert_eq!(sent, total as u64, "bytes the socket took");
        assert_eq!(
            pool.available(),
            pool.capacity(),
            "the header buffers came back"
        );
        assert_eq!(store.in_flight(), 0);
        // Every pin was released: each file can still be read through the 4-slot table.
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let (r, buf) = store.read_block(t, p, b, n, pool.take().await).await;
            r.unwrap();
            assert_eq!(buf.block(), &expected(&layout, p, b, n)[..]);
        }
        assert!(store.stats().evictions > 0, "the table churned");
    });
    let got = reader.join().unwrap();
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "stream differs at byte {first_bad:?}");
}
