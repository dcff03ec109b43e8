//! The connection driver: the only code that does I/O for a peer.
//!
//! Two tasks per connection, both on the shard's runtime:
//! - the **reader** owns the receive buffer and the socket's reads. It always completes the read
//!   it has in flight (tokio-uring does not cancel a dropped operation: a dropped read would later
//!   swallow the peer's bytes). It decodes messages, feeds the peer state machine, and queues what
//!   the machine answers (control messages, requests to serve) in the peer's slot.
//! - the **writer** owns every write, so the stream stays ordered: control messages first, then a
//!   batch of requests: one pool buffer per block, the reads submitted together to the storage
//!   ring, the PIECE headers written into each buffer's headroom, and header+block of the whole
//!   batch sent with one `writev`. Buffers go back to the pool when the write completes. The next
//!   batch is read while the previous one is being sent (one write in flight, always awaited).
//!
//! Timeouts never drop an operation: the shard's ticker shuts the socket down, which completes
//! whatever is in flight with an error or EOF, and the tasks end on their own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use tokio_uring::buf::{BoundedBuf, Slice};
use tokio_uring::net::TcpStream;
use uring_bt_storage::pool::{PoolBuf, HEADROOM};
use uring_bt_storage::store::{BlockStore, StorageError};

use crate::peer::{Action, Actions, DisconnectReason, Peer, PeerConfig};
use crate::registry::Torrent;
use crate::shard::{PeerSlot, Shard};
use crate::wire::{self, BlockRef, ExtHandshake, Handshake, Message, HANDSHAKE_LEN};

/// Receive buffer: start size, and the size it shrinks back to after a large message.
const RECV_INITIAL: usize = 16 * 1024;
/// Free room the reader keeps before each read.
const RECV_MIN_ROOM: usize = 4 * 1024;
/// Offset of the 13-byte PIECE header inside a pool buffer.
const FRAME_START: usize = HEADROOM - 13;

/// The largest message we accept from a peer of torrent `t`: a PIECE (we may download later) or
/// the torrent's BITFIELD, whichever is larger, and never more than the wire limit. This bounds a
/// connection's receive buffer by the torrent, not by what the peer claims.
fn max_message_len(t: &Torrent) -> u32 {
    let bitfield = 1 + t.layout.num_pieces().div_ceil(8);
    (wire::BLOCK_SIZE + 9)
        .max(bitfield)
        .min(wire::MAX_MESSAGE_LEN)
}

/// Our reserved bytes: FAST extension (BEP 6) and extension protocol (BEP 10).
fn our_reserved() -> [u8; 8] {
    let mut r = [0u8; 8];
    r[5] |= 0x10;
    r[7] |= 0x04;
    r
}

/// Serves one inbound connection until it closes.
pub(crate) async fn run(shard: Rc<Shard>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let now = Instant::now();
    let wake = Rc::new(tokio::sync::Notify::new());
    let key = shard.peers.borrow_mut().insert(PeerSlot {
        addr,
        stream: stream.clone(),
        torrent: None,
        peer: None,
        out: Vec::with_capacity(256),
        wake: wake.clone(),
        connected_at: now,
        last_recv: now,
        last_send: now,
        writing_since: None,
        uploaded: 0,
        uploaded_at_tick: 0,
        closing: false,
    });
    let mut writer_done = None;
    let outcome = reader(&shard, key, &stream, &mut writer_done).await;
    if let Err(reason) = &outcome {
        tracing::debug!(shard = shard.cfg.index, %addr, "peer closed: {reason}");
    }
    // Stop the writer and wait for it to finish its operation in flight before the slot (and
    // with it the socket) goes away.
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.close();
    }
    if let Some(done) = writer_done {
        let _ = done.await;
    }
    let slot = shard.peers.borrow_mut().remove(key);
    if let Some(t) = slot.torrent {
        shard.torrent_peers.borrow_mut()[t] -= 1;
        let torrent = &shard.registry.torrents()[t];
        torrent
            .stats
            .peers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a connection ended.
type Closed = Result<(), String>;

async fn reader(
    shard: &Rc<Shard>,
    key: usize,
    stream: &Rc<TcpStream>,
    writer_done: &mut Option<tokio::sync::oneshot::Receiver<()>>,
) -> Closed {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_INITIAL);

    // Handshake: 68 bytes; the peer may send more right behind it.
    while buf.len() < HANDSHAKE_LEN {
        buf = read_more(stream, buf, HANDSHAKE_LEN).await?;
    }
    let hs = match wire::decode_handshake(&buf) {
        Ok(Some(hs)) => hs,
        Ok(None) => return Err("short handshake".into()),
        Err(e) => return Err(format!("bad handshake: {e}")),
    };
    let Some(torrent) = shard.registry.get(&hs.info_hash).cloned() else {
        return Err("unknown info hash".into());
    };
    let t = torrent.index;
    {
        let mut counts = shard.torrent_peers.borrow_mut();
        if counts[t] >= shard.cfg.max_peers_per_torrent {
            return Err("torrent connection limit reached".into());
        }
        counts[t] += 1;
    }
    // From here on the slot counts toward the torrent (undone in `run`).
    torrent
        .stats
        .peers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    torrent
        .stats
        .peers_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    let ours = Handshake {
        reserved: our_reserved(),
        info_hash: torrent.info_hash,
        peer_id: shard.cfg.peer_id,
    };
    let fast = hs.supports_fast();
    let mut first = Vec::with_capacity(HANDSHAKE_LEN + 64);
    wire::encode_handshake(&ours, &mut first);
    let cfg = PeerConfig::new(
        torrent.layout.num_pieces(),
        torrent.layout.piece_length(),
        torrent.layout.piece_size(torrent.layout.num_pieces() - 1),
        shard.cfg.reqq,
    );
    let mut peer = Peer::new(cfg, torrent.is_seed(), fast);
    let mut actions = Actions::default();
    peer.start(&mut actions);
    {
        let mut peers = shard.peers.borrow_mut();
        let slot = peers.get_mut(key).ok_or("slot gone")?;
        slot.torrent = Some(t);
        apply_actions(slot, &mut actions);
        if hs.supports_extensions() {
            let ext = ExtHandshake {
                v: Some(concat!("uring-bt ", env!("CARGO_PKG_VERSION")).to_string()),
                reqq: Some(shard.cfg.reqq),
                yourip: Some(slot.addr.ip()),
                p: Some(shard.cfg.listen_port),
                ..ExtHandshake::default()
            };
            let payload = ext.encode();
            wire::encode(
                &Message::Extended {
                    id: 0,
                    payload: &payload,
                },
                &mut slot.out,
            );
        }
        // The handshake goes first: put it in front of what the state machine queued.
        first.extend_from_slice(&slot.out);
        slot.out.clear();
        slot.peer = Some(peer);
    }
    let (res, _) = stream.write_all(first).await;
    res.map_err(|e| format!("write handshake: {e}"))?;

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    *writer_done = Some(done_rx);
    tokio_uring::spawn(writer(shard.clone(), key, t, stream.clone(), done_tx));

    buf.drain(..HANDSHAKE_LEN);
    let max_len = max_message_len(&torrent);
    loop {
        let mut consumed = 0;
        let mut interested_changed = false;
        {
            let mut peers = shard.peers.borrow_mut();
            let slot = peers.get_mut(key).ok_or("slot gone")?;
            if slot.closing {
                return Ok(());
            }
            slot.last_recv = Instant::now();
            loop {
                match wire::decode(&buf[consumed..], max_len) {
                    Ok(Some((msg, n))) => {
                        consumed += n;
                        let Some(peer) = slot.peer.as_mut() else {
                            return Err("no peer state".into());
                        };
                        let was_interested = peer.is_interested();
                        peer.on_message(&msg, &mut actions);
                        interested_changed |= peer.is_interested() != was_interested;
                        if let Some(reason) = apply_actions(slot, &mut actions) {
                            if reason.is_misbehaviour() {
                                torrent
                                    .stats
                                    .peers_dropped
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            return Err(format!("we disconnect: {reason}"));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("wire: {e}")),
                }
            }
        }
        if interested_changed {
            crate::shard::rechoke(shard, t, Instant::now(), &mut Vec::new(), true);
        }
        buf.drain(..consumed);
        // Room for the next message: what its header announces (bounded by max_len), or a floor.
        let want = match wire::peek_header(&buf) {
            Some((len, _)) => 4 + len as usize,
            None => RECV_MIN_ROOM,
        };
        if buf.capacity() > RECV_INITIAL * 4 && buf.len() < RECV_INITIAL {
            buf.shrink_to(RECV_INITIAL);
        }
        buf = read_more(stream, buf, want).await?;
    }
}

/// Reads once into `buf`'s spare room, making sure there is room for `want` bytes in all (and
/// at least [`RECV_MIN_ROOM`] free). EOF or an error ends the connection.
async fn read_more(stream: &TcpStream, mut buf: Vec<u8>, want: usize) -> Result<Vec<u8>, String> {
    let need = want.max(buf.len() + RECV_MIN_ROOM);
    if buf.capacity() < need {
        buf.reserve(need - buf.len());
    }
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice(len..)).await;
    let buf = slice.into_inner();
    match res {
        Ok(0) => Err("peer closed the connection".into()),
        Ok(_) => Ok(buf),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Encodes the machine's actions into the slot. Returns why, when the peer must be dropped.
fn apply_actions(slot: &mut PeerSlot, actions: &mut Actions) -> Option<DisconnectReason> {
    let mut drop_peer = None;
    let mut wake = false;
    for a in actions.drain() {
        match a {
            Action::Send(m) => {
                wire::encode(&m.as_message(), &mut slot.out);
                wake = true;
            }
            Action::Serve => wake = true,
            Action::Disconnect(reason) => drop_peer = Some(reason),
        }
    }
    if drop_peer.is_some() {
        slot.close();
    } else if wake {
        slot.wake.notify_one();
    }
    drop_peer
}

/// The choker's decision for one peer.
pub(crate) fn set_choked(slot: &mut PeerSlot, choked: bool) {
    let mut actions = Actions::default();
    if let Some(peer) = slot.peer.as_mut() {
        peer.set_choked(choked, &mut actions);
    }
    apply_actions(slot, &mut actions);
}

/// The writer task: all writes of one connection.
async fn writer(
    shard: Rc<Shard>,
    key: usize,
    t: usize,
    stream: Rc<TcpStream>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let torrent = shard.registry.torrents()[t].clone();
    let batch = shard.cfg.batch.max(1);
    let mut ctrl: Vec<u8> = Vec::with_capacity(256);
    let mut reqs: Vec<BlockRef> = Vec::with_capacity(batch);
    let wake = match shard.peers.borrow().get(key) {
        Some(s) => s.wake.clone(),
        None => return,
    };
    // The batch being sent while the next one is read: at most one write in flight, so the
    // stream stays ordered. It is always awaited, never dropped (see the hazards in DESIGN.md).
    let mut sending: Option<Sending<'_>> = None;
    let outcome: Result<(), String> = async {
        loop {
            {
                let mut peers = shard.peers.borrow_mut();
                let Some(slot) = peers.get_mut(key) else {
                    return Ok(());
                };
                if slot.closing {
                    return Ok(());
                }
                std::mem::swap(&mut ctrl, &mut slot.out);
                if let Some(peer) = slot.peer.as_mut() {
                    while reqs.len() < batch {
                        match peer.take_request() {
                            Some(r) => reqs.push(r),
                            None => break,
                        }
                    }
                }
            }
            if ctrl.is_empty() && reqs.is_empty() {
                match sending.take() {
                    Some(s) => s.await?,
                    None => wake.notified().await,
                }
                continue;
            }
            if !ctrl.is_empty() {
                if let Some(s) = sending.take() {
                    s.await?;
                }
                mark_writing(&shard, key, true);
                let (res, b) = stream.write_all(std::mem::take(&mut ctrl)).await;
                ctrl = b;
                ctrl.clear();
                mark_writing(&shard, key, false);
                res.map_err(|e| format!("write: {e}"))?;
            }
            if !reqs.is_empty() {
                let next = read_batch(&shard, key, &torrent, &mut reqs);
                let ready = match sending.take() {
                    Some(s) => {
                        let (sent, ready) = join2(s, next).await;
                        sent?;
                        ready
                    }
                    None => next.await,
                };
                if !ready.frames.is_empty() {
                    sending = Some(Box::pin(send_batch(&shard, key, &torrent, &stream, ready)));
                }
            }
        }
    }
    .await;
    // A write still in flight completes before the writer ends (it fails at once when the
    // socket was shut down).
    if let Some(s) = sending.take() {
        let _ = s.await;
    }
    if let Err(e) = outcome {
        tracing::debug!(shard = shard.cfg.index, "writer: {e}");
    }
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.close();
    }
    let _ = done.send(());
}

/// A batch's send in flight.
type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Runs two futures to completion together.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let mut ra = None;
    let mut rb = None;
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (ra, rb) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("join2 finished with a side pending"),
    }
}

fn mark_writing(shard: &Shard, key: usize, on: bool) {
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        let now = Instant::now();
        slot.writing_since = on.then_some(now);
        if !on {
            slot.last_send = now;
        }
    }
}

/// Refuses a request we cannot serve (REJECT with FAST, silently without).
fn refuse(shard: &Shard, key: usize, torrent: &Torrent, r: BlockRef) {
    torrent
        .stats
        .requests_rejected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut actions = Actions::default();
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        if let Some(peer) = slot.peer.as_mut() {
            peer.refuse(r, &mut actions);
        }
        apply_actions(slot, &mut actions);
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
    let tid = shard.tids[torrent.index];
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
            }
            false
        }
        Err(e) => {
            tracing::warn!(torrent = %torrent.name, piece = p, "cannot read piece to verify it: {e}");
            false
        }
    }
}

/// A batch of blocks read and framed, ready to send.
struct Ready {
    frames: Vec<Slice<PoolBuf>>,
    served: Vec<BlockRef>,
    payload: u64,
}

/// Reads the blocks of `reqs` together into pool buffers (one ring submission) and frames them.
/// Requests that may not be served are refused; requests left without a free buffer stay in
/// `reqs` for the next batch.
async fn read_batch(
    shard: &Rc<Shard>,
    key: usize,
    torrent: &Torrent,
    reqs: &mut Vec<BlockRef>,
) -> Ready {
    let tid = shard.tids[torrent.index];
    let mut ready = Ready {
        frames: Vec::with_capacity(reqs.len()),
        served: Vec::with_capacity(reqs.len()),
        payload: 0,
    };
    // Refuse what we may not send; verify lazily what was not checked up front.
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
    if reqs.is_empty() {
        return ready;
    }
    // One buffer per block: wait for the first (backpressure), take the rest only if free.
    let mut bufs = Vec::with_capacity(reqs.len());
    bufs.push(shard.pool.take().await);
    while bufs.len() < reqs.len() {
        match shard.pool.try_take() {
            Some(b) => bufs.push(b),
            None => break,
        }
    }
    let n = bufs.len();
    let results = read_all(&shard.store, tid, &reqs[..n], bufs, shard.cfg.coalesce).await;
    for (r, (res, buf)) in reqs.drain(..n).zip(results) {
        match res {
            Ok(()) => {
                ready.payload += u64::from(r.len);
                ready.frames.push(buf.frame_piece(r.piece, r.begin));
                ready.served.push(r);
            }
            Err(e) => {
                report_storage_error(torrent, &e);
                refuse(shard, key, torrent, r);
            }
        }
    }
    ready
}

/// Sends a framed batch with one writev (finishing a short one frame by frame); the buffers go
/// back to the pool when it completes.
async fn send_batch(
    shard: &Shard,
    key: usize,
    torrent: &Torrent,
    stream: &TcpStream,
    ready: Ready,
) -> Result<(), String> {
    let Ready {
        frames,
        served,
        payload,
    } = ready;
    mark_writing(shard, key, true);
    let total: usize = frames.iter().map(|f| f.bytes_init()).sum();
    let (res, mut frames) = stream.writev(frames).await;
    let written = res.map_err(|e| format!("writev: {e}"))?;
    if written < total {
        write_rest(stream, &mut frames, written).await?;
    }
    drop(frames); // buffers return to the pool here
    mark_writing(shard, key, false);
    torrent
        .stats
        .uploaded
        .fetch_add(payload, std::sync::atomic::Ordering::Relaxed);
    torrent
        .stats
        .blocks_served
        .fetch_add(served.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.uploaded += payload;
        if let Some(peer) = slot.peer.as_mut() {
            for r in served {
                peer.on_served(r);
            }
        }
    }
    Ok(())
}

/// Finishes a short writev: skips what was written and writes the rest frame by frame.
async fn write_rest(
    stream: &TcpStream,
    frames: &mut Vec<Slice<PoolBuf>>,
    mut written: usize,
) -> Result<(), String> {
    for f in frames.drain(..) {
        let len = f.bytes_init();
        if written >= len {
            written -= len;
            continue;
        }
        let begin = f.begin() + written;
        let end = f.end();
        written = 0;
        let buf = f.into_inner();
        let (res, _) = stream.write_all(buf.slice(begin..end)).await;
        res.map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

fn report_storage_error(torrent: &Torrent, e: &StorageError) {
    tracing::warn!(torrent = %torrent.name, "storage: {e}");
}

/// Runs the block reads of one batch together, so the storage ring submits them in one call.
/// Requests that follow each other in the piece (`begin` right after the previous block's end),
/// up to `coalesce` of them, are read with one vectored read.
async fn read_all(
    store: &Rc<uring_bt_storage::uring::UringStore>,
    tid: uring_bt_storage::store::TorrentId,
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
        let mut j = i + 1;
        while j < reqs.len()
            && j - i < coalesce
            && reqs[j].piece == reqs[j - 1].piece
            && u64::from(reqs[j].begin) == u64::from(reqs[j - 1].begin) + u64::from(reqs[j - 1].len)
        {
            j += 1;
        }
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
type BlockRead = (Result<(), StorageError>, PoolBuf);

/// The most blocks one vectored read covers.
const MAX_RUN: usize = 64;

/// Reads one run of contiguous blocks: one vectored read, or block by block when the run fails
/// (to serve the blocks that can be served and refuse only the others).
async fn read_run(
    store: &uring_bt_storage::uring::UringStore,
    tid: uring_bt_storage::store::TorrentId,
    reqs: &[BlockRef],
    mut bufs: Vec<PoolBuf>,
) -> Vec<BlockRead> {
    let mut out = Vec::with_capacity(bufs.len());
    if bufs.len() > 1 {
        let mut lens = [0u32; MAX_RUN];
        for (l, r) in lens.iter_mut().zip(reqs) {
            *l = r.len;
        }
        let n = bufs.len().min(MAX_RUN);
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

#[allow(dead_code)]
const _: () = assert!(FRAME_START + 13 == HEADROOM);
