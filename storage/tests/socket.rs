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
