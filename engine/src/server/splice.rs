//! The splice send path (`seed --send-path splice`): a batch of requested blocks goes from the
//! page cache to the peer's socket through a pipe, with no copy into user space (the storage
//! ring's `splice_blocks`).
//!
//! Each shard has a bounded pool of pipes ([`PipePool`], `--splice-pipes` per shard, made on
//! first use): a writer leases one for a batch and gives it back when the batch is on the
//! socket. A batch that fails leaves the stream broken mid-message, so the connection closes and
//! its pipe (which may still hold bytes) is closed with it. A writer that finds every pipe
//! leased waits, like a writer that finds every pool buffer taken (backpressure), and stops
//! waiting when its connection closes.
//!
//! What it promises, as the copy path does: only verified pieces are sent (the same refusal
//! and lazy check before anything is queued), a file whose size or mtime changed since its
//! check is not sent (the stat is made before the splice rather than after the read),
//! descriptors are bounded (two per pipe, counted in the open-file budget), and memory is
//! bounded (one pool buffer per batch for the headers; the pipes hold references to page-cache
//! pages and at most one header page per block).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::Poll;

use tokio::sync::Notify;
use tokio_uring::net::TcpStream;
use uring_bt_proto::wire::BlockRef;
use uring_bt_storage::pool::PIECE_HEADER_LEN;
use uring_bt_storage::uring::{SpliceBlock, SpliceError, SplicePipe};

use crate::server::registry::Torrent;
use crate::server::serve::{admit, first_buffer, refuse};
use crate::server::state::Shard;

/// Bytes of room asked for each pipe: a whole batch of 64 blocks of 16 KiB, each with its
/// header page and one page of misalignment, fits (64 x 6 pages = 1.5 MiB); the kernel may
/// grant less (`/proc/sys/fs/pipe-max-size` for an unprivileged process), and a batch then
/// goes out as several chains.
pub const PIPE_BYTES: usize = 2 << 20;
/// Sizes tried, largest first, when the kernel refuses [`PIPE_BYTES`].
const PIPE_FALLBACKS: [usize; 3] = [1 << 20, 256 << 10, 64 << 10];

/// A shard's pipes for splicing: at most `cap`, made on first use.
pub struct PipePool {
    free: RefCell<Vec<SplicePipe>>,
    made: Cell<usize>,
    cap: usize,
    wake: Notify,
}

impl PipePool {
    /// A pool of at most `cap` pipes (`cap >= 1`).
    pub fn new(cap: usize) -> PipePool {
        PipePool {
            free: RefCell::new(Vec::new()),
            made: Cell::new(0),
            cap: cap.max(1),
            wake: Notify::new(),
        }
    }

    /// The most pipes this pool makes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Pipes made and not discarded (each holds two descriptors).
    pub fn made(&self) -> usize {
        self.made.get()
    }

    /// A pipe: a free one, a new one while fewer than `cap` exist, or the next one given back.
    /// `None` once `closing()` says the connection is closing (checked whenever `conn_wake`
    /// fires) or when no pipe can be made at all.
    async fn lease(&self, closing: impl Fn() -> bool, conn_wake: &Notify) -> Option<SplicePipe> {
        loop {
            if closing() {
                return None;
            }
            if let Some(p) = self.free.borrow_mut().pop() {
                return Some(p);
            }
            if self.made.get() < self.cap {
                match make_pipe() {
                    Ok(p) => {
                        self.made.set(self.made.get() + 1);
                        return Some(p);
                    }
                    Err(e) => {
                        tracing::warn!("splice: cannot make a pipe: {e}");
                        if self.made.get() == 0 {
                            return None;
                        }
                    }
                }
            }
            // Wait for a pipe to come back, or for the connection's own wake (closing).
            let mut back = std::pin::pin!(self.wake.notified());
            let mut woken = std::pin::pin!(conn_wake.notified());
            std::future::poll_fn(|cx| {
                if back.as_mut().poll(cx).is_ready() || woken.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    fn give_back(&self, p: SplicePipe) {
        self.free.borrow_mut().push(p);
        self.wake.notify_one();
    }

    /// A leased pipe that may hold bytes is closed instead of given back.
    fn discard(&self, p: SplicePipe) {
        drop(p);
        self.made.set(self.made.get().saturating_sub(1));
        self.wake.notify_one();
    }
}

fn make_pipe() -> std::io::Result<SplicePipe> {
    match SplicePipe::new(PIPE_BYTES) {
        Ok(p) => Ok(p),
        Err(first) => {
            for bytes in PIPE_FALLBACKS {
                if let Ok(p) = SplicePipe::new(bytes) {
                    return Ok(p);
                }
            }
            Err(first)
        }
    }
}

/// Sends the blocks of `reqs` (emptied) by splicing, after refusing what may not be sent.
/// `Err` ends the connection (the stream is broken mid-message).
pub async fn send_spliced(
    shard: &Rc<Shard>,
    pipes: &PipePool,
    key: usize,
    torrent: &Torrent,
    stream: &TcpStream,
    reqs: &mut Vec<BlockRef>,
    wake: &Notify,
) -> Result<(), String> {
    let Some(tid) = admit(shard, key, torrent, reqs).await else {
        return Ok(());
    };
    // A file changed since its check is not sent: one stat per file per batch, before it is.
    let mut seen = Vec::new();
    let mut i = 0;
    while i < reqs.len() {
        if torrent.unchanged(reqs[i].piece, &mut seen) {
            i += 1;
        } else {
            let r = reqs.swap_remove(i);
            refuse(shard, key, torrent, r);
        }
    }
    if reqs.is_empty() {
        return Ok(());
    }
    // One pool buffer holds the batch's headers (and paces the batch like the copy path).
    let Some(mut hdrs) = first_buffer(shard, key, wake).await else {
        return Ok(());
    };
    let n = reqs.len().min(hdrs.block_capacity() / PIECE_HEADER_LEN);
    let mut blocks = Vec::with_capacity(n);
    {
        let h = hdrs.block_capacity_mut();
        for (k, r) in reqs[..n].iter().enumerate() {
            let at = &mut h[k * PIECE_HEADER_LEN..(k + 1) * PIECE_HEADER_LEN];
            at[0..4].copy_from_slice(&(9 + r.len).to_be_bytes());
            at[4] = 7;
            at[5..9].copy_from_slice(&r.piece.to_be_bytes());
            at[9..13].copy_from_slice(&r.begin.to_be_bytes());
            blocks.push(SpliceBlock {
                piece: r.piece,
                begin: r.begin,
                len: r.len,
            });
        }
    }
    let closing = || shard.peers.borrow().get(key).is_none_or(|s| s.closing);
    let Some(pipe) = pipes.lease(closing, wake).await else {
        return Err("no pipe for splicing".into());
    };
    crate::server::conn::mark_writing(shard, key, true);
    let (res, hdrs) = shard
        .store
        .splice_blocks(tid, &blocks, hdrs, &pipe, stream.as_raw_fd())
        .await;
    drop(hdrs);
    crate::server::conn::mark_writing(shard, key, false);
    shard.publish_stats();
    let served: Vec<BlockRef> = reqs.drain(..n).collect();
    // Requests beyond what one header buffer holds (never with --batch <= 64) go next time.
    match res {
        Ok(_) => {
            pipes.give_back(pipe);
            shard
                .registry
                .server
                .blocks_spliced
                .fetch_add(served.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let payload = served.iter().map(|r| u64::from(r.len)).sum();
            crate::server::conn::account_sent(shard, key, torrent, payload, served);
            Ok(())
        }
        Err(SpliceError::File { piece, error }) => {
            pipes.discard(pipe);
            if torrent.on_storage_error(piece, &error) {
                tracing::warn!(torrent = %torrent.name, piece, "storage: {error}; the pieces it touches will not be served");
            }
            Err(format!("splice: piece {piece}: {error}"))
        }
        Err(SpliceError::Socket(e)) => {
            pipes.discard(pipe);
            Err(format!("splice: {e}"))
        }
    }
}
