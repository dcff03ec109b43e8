//! Reading a batch of requested blocks into pool buffers, framed as PIECE messages.
//!
//! The writer of a connection hands a batch of requests here: requests that may not be served
//! are refused (REJECT with FAST), pieces not yet checked are verified first (`--skip-check`),
//! one pool buffer is taken per block (waiting for the first: backpressure), contiguous blocks
//! are read with one vectored read, the reads of a batch go to the storage ring together, and
//! each buffer gets its 13-byte PIECE header written into its headroom.
//!
//! The reads ([`read_all`], [`read_run`]) are generic over the [`BlockStore`]: the shard passes
//! its io_uring store, the engine tests the simulated one with seeded faults
//! (`engine/tests/serve_sim.rs`). Monomorphized: no box, no dynamic dispatch on the hot path.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use tokio::sync::Notify;
use tokio_uring::buf::Slice;
use uring_bt_proto::wire::BlockRef;
use uring_bt_storage::pool::PoolBuf;
use uring_bt_storage::store::{BlockStore, StorageError, TorrentId};

use crate::server::registry::Torrent;
use crate::server::state::Shard;

/// Refuses a request we cannot serve (REJECT with FAST, silently without).
pub fn refuse(shard: &Shard, key: usize, torrent: &Torrent, r: BlockRef) {
    torrent
        .stats
        .requests_rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        if slot.session.refuse(r) {
            slot.wake.notify_one();
        }
    }
}

/// Lazy verification (`--skip-check`): hashes piece `p` the first time it is served.
async fn ensure_verified(shard: &Shard, torrent: &Torrent, p: u32) -> bool {
    if torrent.verified.get(p) {
        return true;
    }
    if torrent.failed.get(p) {
        return false;
    }
    let Some(tid) = shard.tid(torrent.index) else {
        return false;
    };
    match shard.store.hash_piece(tid, p).await {
        Ok(h) if Some(&h) == torrent.piece_hashes.get(p as usize) => {
            torrent.verified.set(p);
            true
        }
        Ok(_) => {
            if torrent.failed.set(p) {
                torrent
                    .stats
                    .pieces_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(torrent = %torrent.name, piece = p, "piece failed its hash check; it will not be served");
                torrent
                    .note_error(|| format!("piece {p} failed its hash check (the data changed)"));
            }
            false
        }
        Err(e) => {
            // Failed for good (no re-hash per request); logged once per newly failed piece.
            if torrent.on_storage_error(p, &e) || torrent.failed.set(p) {
                tracing::warn!(torrent = %torrent.name, piece = p, "cannot read piece to verify it: {e}; it will not be served");
            }
            false
        }
    }
}

/// Refuses the requests of `reqs` that may not be served (removing them) and verifies lazily
/// what was not checked up front. Returns the torrent's store id, or `None` when nothing is
/// left to serve.
pub async fn admit(
    shard: &Shard,
    key: usize,
    torrent: &Torrent,
    reqs: &mut Vec<BlockRef>,
) -> Option<TorrentId> {
    // A connection is attached only to a torrent its shard has synced: never missing.
    let Some(tid) = shard.tid(torrent.index) else {
        for r in reqs.drain(..) {
            refuse(shard, key, torrent, r);
        }
        return None;
    };
    let mut i = 0;
    while i < reqs.len() {
        let r = reqs[i];
        if !torrent.can_serve(r.piece) || !ensure_verified(shard, torrent, r.piece).await {
            refuse(shard, key, torrent, r);
            reqs.swap_remove(i);
        } else {
            i += 1;
        }
    }
    (!reqs.is_empty()).then_some(tid)
}

/// Waits for a pool buffer, or returns `None` once the connection is closing. Dropping the
/// pool's `Take` is safe: a wake it was handed passes on to the next waiter.
pub(crate) async fn first_buffer(shard: &Rc<Shard>, key: usize, wake: &Notify) -> Option<PoolBuf> {
    let closing = || shard.peers.borrow().get(key).is_none_or(|s| s.closing);
    if closing() {
        return None;
    }
    if let Some(b) = shard.pool.try_take() {
        return Some(b);
    }
    // One place in the pool's queue for the whole wait; the writer's wake (new work, or the
    // connection closing) is re-armed until it means closing.
    let mut take = std::pin::pin!(shard.pool.take());
    let mut woken = std::pin::pin!(wake.notified());
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(b) = take.as_mut().poll(cx) {
            return Poll::Ready(Some(b));
        }
        if woken.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if closing() {
            return Poll::Ready(None);
        }
        woken.set(wake.notified());
    })
    .await
}

/// A batch of blocks read and framed, ready to send.
pub struct Ready {
    pub frames: Vec<Slice<PoolBuf>>,
    pub served: Vec<BlockRef>,
    pub payload: u64,
}

/// Reads the blocks of `reqs` together into pool buffers (one ring submission) and frames them.
/// Requests that may not be served are refused; requests left without a free buffer stay in
/// `reqs` for the next batch.
///
/// Buffers: one per block. A batch read while the connection's previous batch is still being
/// sent (`ahead`) takes only buffers that are free right now, and only while more than half the
/// pool is free: a peer whose send stalls (it stopped reading) then holds one batch, not two,
/// and read-ahead never starves other peers. Otherwise the first buffer is waited for
/// (backpressure), unless the connection closes meanwhile (`wake` fires and the slot is
/// closing): a closing writer never waits in the pool.
pub async fn read_batch(
    shard: &Rc<Shard>,
    key: usize,
    torrent: &Torrent,
    reqs: &mut Vec<BlockRef>,
    ahead: bool,
    wake: &Notify,
) -> Ready {
    let mut ready = Ready {
        frames: Vec::with_capacity(reqs.len()),
        served: Vec::with_capacity(reqs.len()),
        payload: 0,
    };
    let Some(tid) = admit(shard, key, torrent, reqs).await else {
        return ready;
    };
    let mut bufs = Vec::with_capacity(reqs.len());
    if ahead {
        let reserve = shard.pool.capacity() / 2;
        while bufs.len() < reqs.len() && shard.pool.available() > reserve {
            match shard.pool.try_take() {
                Some(b) => bufs.push(b),
                None => break,
            }
        }
        if bufs.is_empty() {
            return ready;
        }
    } else {
        match first_buffer(shard, key, wake).await {
            Some(b) => bufs.push(b),
            None => return ready,
        }
    }
    while bufs.len() < reqs.len() {
        match shard.pool.try_take() {
            Some(b) => bufs.push(b),
            None => break,
        }
    }
    let n = bufs.len();
    let results = read_all(&*shard.store, tid, &reqs[..n], bufs, shard.cfg.coalesce).await;
    shard.publish_stats();
    // A stat per file per batch, after the reads: a file changed since its check is not sent.
    let mut seen = Vec::new();
    for (r, (res, buf)) in reqs.drain(..n).zip(results) {
        match res {
            Ok(()) if !torrent.unchanged(r.piece, &mut seen) => {
                drop(buf);
                refuse(shard, key, torrent, r);
            }
            Ok(()) => {
                ready.payload += u64::from(r.len);
                ready.frames.push(buf.frame_piece(r.piece, r.begin));
                ready.served.push(r);
            }
            Err(e) => {
                if torrent.on_storage_error(r.piece, &e) {
                    tracing::warn!(torrent = %torrent.name, piece = r.piece, "storage: {e}; the pieces it touches will not be served");
                }
                refuse(shard, key, torrent, r);
            }
        }
    }
    ready
}

/// Runs the block reads of one batch together, so the storage ring submits them in one call.
/// Requests that follow each other in the piece (`begin` right after the previous block's end),
/// up to `coalesce` of them (at most [`MAX_RUN`]), are read as one run ([`read_run`]).
///
/// Takes one buffer per request, in order: reads `reqs[..bufs.len()]` (buffers beyond
/// `reqs.len()` go back to the pool). Returns one [`BlockRead`] per request read, **in request
/// order**, each with its buffer (holding the block on success), whatever the outcome.
pub async fn read_all<S: BlockStore>(
    store: &S,
    tid: TorrentId,
    reqs: &[BlockRef],
    bufs: Vec<PoolBuf>,
    coalesce: usize,
) -> Vec<BlockRead> {
    let coalesce = coalesce.clamp(1, MAX_RUN);
    // The futures live in one Vec that is never resized while they exist, so each stays at its
    // address until it completes and is dropped in place: no box per run.
    let mut futs = Vec::with_capacity(reqs.len());
    let mut bufs = bufs.into_iter();
    let mut i = 0;
    while i < reqs.len() {
        let j = i + run_length(&reqs[i..], coalesce);
        let run_bufs: Vec<PoolBuf> = bufs.by_ref().take(j - i).collect();
        futs.push(Some(read_run(store, tid, &reqs[i..j], run_bufs)));
        i = j;
    }
    let mut out: Vec<Option<Vec<BlockRead>>> = (0..futs.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot.as_mut() {
                // SAFETY: the future is never moved: `futs` is not resized or reallocated while
                // any element is `Some`, and a finished future is dropped in place below.
                let f = unsafe { Pin::new_unchecked(f) };
                match f.poll(cx) {
                    Poll::Ready(v) => {
                        *o = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().flatten().collect()
}

/// One block's read: its outcome and its buffer.
pub type BlockRead = (Result<(), StorageError>, PoolBuf);

/// The most blocks one vectored read covers.
pub const MAX_RUN: usize = 64;

/// How many requests from the start of `reqs` form one run (at least 1 when `reqs` is not
/// empty, at most `max`): each in the same piece as the one before, beginning where it ends.
fn run_length(reqs: &[BlockRef], max: usize) -> usize {
    let mut j = 1;
    while j < reqs.len()
        && j < max
        && reqs[j].piece == reqs[j - 1].piece
        && u64::from(reqs[j].begin) == u64::from(reqs[j - 1].begin) + u64::from(reqs[j - 1].len)
    {
        j += 1;
    }
    j.min(reqs.len())
}

/// Reads one run of contiguous blocks (as [`read_all`] groups them), one buffer per request:
/// one batched read ([`BlockStore::read_blocks`]), or block by block when the run fails (to
/// serve the blocks that can be served and refuse only the others). Returns one [`BlockRead`]
/// per request, in order (`reqs[..bufs.len()]`; extra buffers go back to the pool).
///
/// Requests that are not one run of at most [`MAX_RUN`] blocks, one buffer each, are read
/// block by block.
pub async fn read_run<S: BlockStore>(
    store: &S,
    tid: TorrentId,
    reqs: &[BlockRef],
    mut bufs: Vec<PoolBuf>,
) -> Vec<BlockRead> {
    let mut out = Vec::with_capacity(bufs.len());
    let n = bufs.len();
    if n > 1 && n == reqs.len() && run_length(reqs, MAX_RUN) == n {
        let mut lens = [0u32; MAX_RUN];
        for (l, r) in lens.iter_mut().zip(reqs) {
            *l = r.len;
        }
        let (res, back) = store
            .read_blocks(tid, reqs[0].piece, reqs[0].begin, &lens[..n], bufs)
            .await;
        if res.is_ok() {
            out.extend(back.into_iter().map(|b| (Ok(()), b)));
            return out;
        }
        bufs = back;
    }
    for (r, b) in reqs.iter().zip(bufs) {
        out.push(store.read_block(tid, r.piece, r.begin, r.len, b).await);
    }
    out
}
