//! The connection driver: the only code that does I/O for a peer.
//!
//! The protocol is the connection's `Session` (sans-IO, `uring-bt-proto`); this module moves
//! its bytes. Two tasks per connection, both on the shard's runtime:
//! - the **reader** owns the receive buffer and the socket's reads. It always completes the read
//!   it has in flight (tokio-uring does not cancel a dropped operation: a dropped read would later
//!   swallow the peer's bytes). It hands what arrived to the session, and when the session's
//!   control queue reaches its high-water mark it issues no further read until the writer has
//!   drained it (backpressure: a peer that does not read cannot make us queue replies).
//! - the **writer** owns every write, so the stream stays ordered: control messages first, then a
//!   batch of requests read by `serve` into pool buffers and sent with one `writev`. Buffers go
//!   back to the pool when the write completes. The next batch is read while the previous one
//!   is being sent (one write in flight, always awaited).
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
use uring_bt_proto::session::{CloseReason, Phase, TorrentView};
use uring_bt_proto::wire::{self, BlockRef};
use uring_bt_storage::pool::PoolBuf;

use crate::server::registry::Torrent;
use crate::server::serve::{read_batch, Ready};
use crate::server::state::{PeerSlot, Shard};

/// Receive buffer: start size, and the size it shrinks back to after a large message.
const RECV_INITIAL: usize = 16 * 1024;
/// Free room the reader keeps before each read.
const RECV_MIN_ROOM: usize = 4 * 1024;

/// Serves one inbound connection until it closes.
pub async fn run(shard: Rc<Shard>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let key = shard.peers.borrow_mut().insert(PeerSlot::new(
        addr,
        stream.clone(),
        shard.cfg.session.clone(),
        Instant::now(),
    ));
    let mut writer_done = None;
    let outcome = reader(&shard, key, &stream, &mut writer_done).await;
    // Stop the writer and wait for it to finish its operation in flight before the slot (and
    // with it the socket) goes away.
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.close();
    }
    if let Some(done) = writer_done {
        let _ = done.await;
    }
    let slot = shard.peers.borrow_mut().remove(key);
    // The shard's reason (a timeout, a stalled write) explains the reader's EOF.
    let why = match (slot.close_reason, outcome) {
        (Some(r), _) => Closed::Protocol(r),
        (None, Err(e)) => e,
        (None, Ok(())) => Closed::Io("closed".into()),
    };
    tracing::debug!(shard = shard.cfg.index, %addr, "peer closed: {why}");
    if let Some(t) = slot.torrent {
        shard.torrent_peers.borrow_mut()[t] -= 1;
        let torrent = &shard.registry.torrents()[t];
        torrent
            .stats
            .peers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if matches!(&why, Closed::Protocol(r) if r.is_misbehaviour()) {
            torrent
                .stats
                .peers_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Why a connection ended: the protocol's reason, or the socket's.
#[derive(Debug)]
enum Closed {
    Protocol(CloseReason),
    Io(String),
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Protocol(r) => write!(f, "{r}"),
            Closed::Io(e) => f.write_str(e),
        }
    }
}

impl From<CloseReason> for Closed {
    fn from(r: CloseReason) -> Self {
        Closed::Protocol(r)
    }
}

async fn reader(
    shard: &Rc<Shard>,
    key: usize,
    stream: &Rc<TcpStream>,
    writer_done: &mut Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), Closed> {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_INITIAL);
    let (read_wake, max_len) = {
        let peers = shard.peers.borrow();
        let slot = peers.get(key).ok_or(Closed::Io("slot gone".into()))?;
        (slot.read_wake.clone(), slot.session.max_message_len())
    };
    let mut max_len = max_len;
    loop {
        let (r, phase, torrent) = {
            let mut peers = shard.peers.borrow_mut();
            let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
            if slot.closing {
                return Ok(());
            }
            let r = slot.session.receive(&buf)?;
            if r.wake || r.serve {
                slot.wake.notify_one();
            }
            (r, slot.session.phase(), slot.torrent)
        };
        buf.drain(..r.consumed);
        if phase == Phase::AwaitTorrent {
            let t = attach(shard, key)?;
            max_len = shard
                .peers
                .borrow()
                .get(key)
                .map_or(max_len, |s| s.session.max_message_len());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            *writer_done = Some(done_rx);
            tokio_uring::spawn(writer(shard.clone(), key, t, stream.clone(), done_tx));
            continue;
        }
        if r.interest_changed {
            if let Some(t) = torrent {
                shard.want_fill(t);
            }
        }
        if r.paused {
            // Backpressure: no read until the writer drained the control queue (or we close).
            loop {
                let ready = shard
                    .peers
                    .borrow()
                    .get(key)
                    .is_none_or(|s| s.closing || s.session.wants_input());
                if ready {
                    break;
                }
                read_wake.notified().await;
            }
            continue;
        }
        // Room for the next message: what its header announces (checked against the limit
        // before its body is buffered), or a floor.
        let want = match wire::peek_header(&buf) {
            Some((len, id)) if phase == Phase::Established => {
                wire::check_header(len, id, max_len).map_err(CloseReason::Wire)?;
                4 + len as usize
            }
            _ => RECV_MIN_ROOM,
        };
        if buf.capacity() > RECV_INITIAL * 4 && buf.len() < RECV_INITIAL {
            buf.shrink_to(RECV_INITIAL);
        }
        buf = read_more(stream, buf, want).await?;
        if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
            slot.session.on_read(Instant::now());
        }
    }
}

/// The peer's handshake named a torrent: look it up, count the connection toward its limit and
/// queue our opening. Returns the torrent's registry index.
fn attach(shard: &Shard, key: usize) -> Result<usize, Closed> {
    let mut peers = shard.peers.borrow_mut();
    let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
    let info_hash = slot
        .session
        .handshake()
        .map(|h| h.info_hash)
        .ok_or(Closed::Io("no handshake".into()))?;
    let torrent = shard
        .registry
        .get(&info_hash)
        .cloned()
        .ok_or(CloseReason::UnknownTorrent)?;
    let t = torrent.index;
    {
        let mut counts = shard.torrent_peers.borrow_mut();
        if counts[t] >= shard.cfg.max_peers_per_torrent {
            return Err(CloseReason::TorrentFull.into());
        }
        counts[t] += 1;
    }
    // From here on the slot counts toward the torrent (undone in `run`).
    slot.torrent = Some(t);
    torrent
        .stats
        .peers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    torrent
        .stats
        .peers_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let layout = &torrent.layout;
    let n = layout.num_pieces();
    let view = TorrentView {
        info_hash: torrent.info_hash,
        num_pieces: n,
        piece_length: layout.piece_length(),
        last_piece_length: layout.piece_size(n - 1),
        seed: torrent.is_seed(),
    };
    // A torrent with pieces that failed (their check or their read) is offered without them.
    let have = if view.seed {
        Vec::new()
    } else {
        torrent.servable_bitfield()
    };
    slot.session.attach(&view, &have);
    Ok(t)
}

/// Reads once into `buf`'s spare room, making sure there is room for `want` bytes in all (and
/// at least [`RECV_MIN_ROOM`] free). EOF or an error ends the connection.
async fn read_more(stream: &TcpStream, mut buf: Vec<u8>, want: usize) -> Result<Vec<u8>, Closed> {
    let need = want.max(buf.len() + RECV_MIN_ROOM);
    if buf.capacity() < need {
        buf.reserve(need - buf.len());
    }
    let len = buf.len();
    let (res, slice) = stream.read(buf.slice(len..)).await;
    let buf = slice.into_inner();
    match res {
        Ok(0) => Err(Closed::Io("peer closed the connection".into())),
        Ok(_) => Ok(buf),
        Err(e) => Err(Closed::Io(format!("read: {e}"))),
    }
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
    // stream stays ordered. It is always awaited, never dropped: tokio-uring does not cancel a
    // dropped operation (docs/architecture.md, "Never drop an in-flight operation").
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
                slot.session.take_control(&mut ctrl);
                if !ctrl.is_empty() {
                    // The control queue is empty again: a reader paused by backpressure reads on.
                    slot.read_wake.notify_one();
                }
                while reqs.len() < batch {
                    match slot.session.take_request() {
                        Some(r) => reqs.push(r),
                        None => break,
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
                let next = read_batch(&shard, key, &torrent, &mut reqs, sending.is_some(), &wake);
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
        if on {
            slot.session.on_write_start(now);
        } else {
            slot.session.on_write_done(now);
        }
    }
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
        write_rest(shard, key, stream, &mut frames, written).await?;
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
        for r in served {
            slot.session.on_served(r);
        }
    }
    Ok(())
}

/// Finishes a short writev: skips what was written and writes the rest frame by frame.
async fn write_rest(
    shard: &Shard,
    key: usize,
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
        // Progress was made: the write timeout counts from here (it catches a peer that stops
        // reading, not one that reads slowly).
        mark_writing(shard, key, true);
        let (res, _) = stream.write_all(buf.slice(begin..end)).await;
        res.map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}
