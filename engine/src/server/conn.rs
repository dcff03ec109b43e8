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
use uring_bt_proto::peer::DisconnectReason;
use uring_bt_proto::session::{CloseReason, Phase, Session, TorrentView};
use uring_bt_proto::wire::{self, BlockRef};
use uring_bt_storage::pool::PoolBuf;

use crate::server::registry::Torrent;
use crate::server::serve::{read_batch, Ready};
use crate::server::state::{PeerSlot, Shard, ShardEvent};

/// Receive buffer: start size, and the size it shrinks back to after a large message.
const RECV_INITIAL: usize = 16 * 1024;
/// Free room the reader keeps before each read.
const RECV_MIN_ROOM: usize = 4 * 1024;
/// Room for one read while our requests are outstanding at the peer (downloading): four
/// PIECEs and their headers.
const RECV_DOWNLOAD: usize = 4 * (16 * 1024 + 13);

/// Serves one inbound connection until it closes.
pub async fn run(shard: Rc<Shard>, stream: TcpStream, addr: SocketAddr) {
    let session = Session::new(shard.cfg.session.clone(), Some(addr.ip()), Instant::now());
    serve(shard, stream, addr, session, None, Vec::new()).await;
}

/// Serves an inbound connection another shard passed to us (its torrent is downloaded here):
/// the session reads the bytes received so far, the handshake first, as if they had just
/// arrived.
pub async fn adopt(shard: Rc<Shard>, h: crate::server::registry::Handoff) {
    let std = std::net::TcpStream::from(h.fd);
    let stream = TcpStream::from_std(std);
    let session = Session::new(shard.cfg.session.clone(), Some(h.addr.ip()), Instant::now());
    serve(shard, stream, h.addr, session, None, h.bytes).await;
}

/// An inbound connection whose handshake names a torrent downloaded on another shard: pass it
/// there (a duplicate of its descriptor and the bytes received, the handshake re-encoded
/// first). Returns true when it was handed off; the slot then closes without a shutdown.
fn hand_off(shard: &Shard, key: usize, stream: &TcpStream, buf: &[u8]) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (hs, addr) = {
        let peers = shard.peers.borrow();
        let Some(slot) = peers.get(key) else {
            return false;
        };
        let Some(hs) = slot.session.handshake().copied() else {
            return false;
        };
        (hs, slot.addr)
    };
    let Some(home) = shard
        .registry
        .get(&hs.info_hash)
        .and_then(|t| {
            t.download
                .as_ref()
                .filter(|d| d.is_active())
                .map(|d| d.home_shard)
        })
        .filter(|&h| h != shard.cfg.index)
    else {
        return false;
    };
    // SAFETY: dup of a descriptor this connection owns; the result is a new descriptor that
    // nothing else owns (or -1).
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is the fresh descriptor just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut bytes = Vec::with_capacity(wire::HANDSHAKE_LEN + buf.len());
    wire::encode_handshake(&hs, &mut bytes);
    bytes.extend_from_slice(buf);
    match shard
        .registry
        .hand_off(home, crate::server::registry::Handoff { fd, addr, bytes })
    {
        Ok(()) => {
            if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
                slot.handed_off = true;
            }
            tracing::debug!(shard = shard.cfg.index, %addr, home, "connection handed to the download's home shard");
            true
        }
        // Its queue is full (or it restarts): serve it here, upload only.
        Err(_) => false,
    }
}

/// Bounds the connect of a dial (the kernel's own SYN retries take minutes). Dropping a
/// pending connect is safe: nothing else uses that socket, and tokio-uring closes it when the
/// kernel completes the operation.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Dials `addr` for torrent `t` (a peer from a tracker or PEX) and serves the connection as
/// any other. At most [`ShardConfig::max_half_open`] dials of this shard are connecting or
/// handshaking at once; the others wait here for a slot.
pub async fn dial(shard: Rc<Shard>, t: usize, addr: SocketAddr) {
    shard.sync_torrents();
    let Some(torrent) = shard.torrent(t) else {
        return;
    };
    if !crate::server::download::allowed(&torrent, addr) {
        // Banned for bad data: never connected again.
        dial_failed(&shard, t, addr);
        return;
    }
    while shard.half_open.get() >= shard.cfg.max_half_open.max(1) {
        shard.half_open_wake.notified().await;
        if shard.stopping.get() {
            return;
        }
    }
    let full = shard.peers.borrow().len() >= shard.cfg.max_peers
        || shard
            .torrents
            .borrow()
            .get(t)
            .is_none_or(|st| st.peers >= shard.cfg.max_peers_per_torrent);
    if full || shard.stopping.get() {
        dial_failed(&shard, t, addr);
        return;
    }
    shard.half_open.set(shard.half_open.get() + 1);
    shard
        .registry
        .server
        .dials
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(shard = shard.cfg.index, %addr, "dial failed: {e}");
            release_half_open(&shard);
            dial_failed(&shard, t, addr);
            return;
        }
        Err(_) => {
            tracing::debug!(shard = shard.cfg.index, %addr, "dial timed out");
            release_half_open(&shard);
            dial_failed(&shard, t, addr);
            return;
        }
    };
    let session = Session::new_outbound(
        shard.cfg.session.clone(),
        Some(addr.ip()),
        Instant::now(),
        torrent.info_hash,
    );
    serve(shard, stream, addr, session, Some(t), Vec::new()).await;
}

/// Tells the dialer a dial to `addr` for torrent `t` did not connect.
fn dial_failed(shard: &Shard, t: usize, addr: SocketAddr) {
    shard.event(ShardEvent::DialDone {
        shard: shard.cfg.index,
        torrent: t,
        addr,
        connected: false,
        seed: false,
    });
}

fn release_half_open(shard: &Shard) {
    shard.half_open.set(shard.half_open.get().saturating_sub(1));
    shard.half_open_wake.notify_one();
}

/// Runs a connection, inbound or dialed (`dialed`: the torrent we dialed it for), until it
/// closes; then undoes what it counted.
async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    addr: SocketAddr,
    session: Session,
    dialed: Option<usize>,
    received: Vec<u8>,
) {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(stream);
    let key = shard
        .peers
        .borrow_mut()
        .insert(PeerSlot::new(addr, stream.clone(), session));
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.half_open = dialed.is_some();
        // Our handshake is queued already: the writer task starts at once for a dial.
        slot.wake.notify_one();
    }
    let mut writer_done = None;
    if let Some(t) = dialed {
        // A dialed connection speaks first: its writer runs before the peer's handshake.
        writer_done = Some(start_writer(&shard, key, t, &stream));
    }
    let outcome = reader(&shard, key, &stream, &mut writer_done, dialed, received).await;
    // Stop the writer and wait for it to finish its operation in flight before the slot (and
    // with it the socket) goes away.
    if let Some(slot) = shard.peers.borrow_mut().get_mut(key) {
        slot.close();
    }
    if let Some(done) = writer_done {
        let _ = done.await;
    }
    let mut slot = shard.peers.borrow_mut().remove(key);
    if slot.half_open {
        release_half_open(&shard);
    }
    // The shard's reason (a timeout, a stalled write) explains the reader's EOF.
    let why = match (slot.close_reason.clone(), outcome) {
        (Some(r), _) => Closed::Protocol(r),
        (None, Err(e)) => e,
        (None, Ok(())) => Closed::Io("closed".into()),
    };
    tracing::debug!(shard = shard.cfg.index, %addr, "peer closed: {why}");
    let both_seeds = matches!(
        &why,
        Closed::Protocol(CloseReason::Peer(DisconnectReason::BothSeeds))
    );
    if let Some(t) = dialed {
        if slot.torrent.is_none() {
            // The dial never completed its handshake.
            shard.event(ShardEvent::DialDone {
                shard: shard.cfg.index,
                torrent: t,
                addr,
                connected: false,
                seed: both_seeds,
            });
        } else {
            shard.event(ShardEvent::Closed {
                shard: shard.cfg.index,
                torrent: t,
                addr,
                seed: both_seeds,
            });
        }
    }
    if let Some(t) = slot.torrent {
        crate::server::download::peer_gone(&shard, key, t, &mut slot);
        let torrent = {
            let mut ts = shard.torrents.borrow_mut();
            let Some(st) = ts.get_mut(t) else {
                return;
            };
            st.peers = st.peers.saturating_sub(1);
            if dialed.is_some() {
                st.dialed = st.dialed.saturating_sub(1);
            }
            st.torrent.clone()
        };
        if let Some(listen) = slot.listen_addr {
            if let Ok(mut sw) = torrent.swarm.lock() {
                sw.remove(&listen);
            }
        }
        torrent
            .stats
            .peers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if dialed.is_some() {
            torrent
                .stats
                .peers_dialed
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if matches!(&why, Closed::Protocol(r) if r.is_misbehaviour()) {
            torrent
                .stats
                .peers_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Starts the writer task of connection `key` (attached to torrent `t`); the receiver fires
/// when it has ended.
fn start_writer(
    shard: &Rc<Shard>,
    key: usize,
    t: usize,
    stream: &Rc<TcpStream>,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    crate::server::shard::spawn_task(
        shard,
        writer(shard.clone(), key, t, stream.clone(), done_tx),
    );
    done_rx
}

/// Most swarm entries considered for one PEX message (the message itself carries at most 50
/// added per family).
const PEX_SWARM_CAP: usize = 200;

/// Every session's timers, once per tick (see `server::shard`), and the swarm's listening
/// addresses learnt from extension handshakes (for PEX).
pub fn tick_sessions(shard: &Shard, now: Instant) {
    let mut swarms: std::collections::HashMap<usize, Vec<(SocketAddr, u8)>> =
        std::collections::HashMap::new();
    let mut peers = shard.peers.borrow_mut();
    for (_, slot) in peers.iter_mut() {
        if slot.closing {
            continue;
        }
        match slot.session.on_tick(now) {
            Ok(true) => slot.wake.notify_one(),
            Ok(false) => {}
            Err(reason) => {
                slot.close_for(reason);
                continue;
            }
        }
        // BEP 11: the swarm, as of this tick, to peers that support PEX (the session sends at
        // most one message a minute, never for a private torrent).
        if let Some(t) = slot.torrent.filter(|_| slot.session.pex_due(now)) {
            let swarm = swarms.entry(t).or_insert_with(|| {
                let mut v = Vec::new();
                if let Some(torrent) = shard.torrent(t).filter(|t| !t.private) {
                    torrent.swarm_snapshot(PEX_SWARM_CAP, &mut v);
                }
                v
            });
            if !swarm.is_empty() {
                let own = slot.listen_addr;
                let others: Vec<(SocketAddr, u8)> = swarm
                    .iter()
                    .copied()
                    .filter(|(a, _)| Some(*a) != own)
                    .collect();
                if slot.session.poll_pex(now, &others) {
                    slot.wake.notify_one();
                }
            }
        }
        // BEP 11: peers this peer told us about, for a torrent we download (the dialer
        // decides whether and when to dial them).
        if let Some(t) = slot.torrent {
            let pex = slot.session.take_pex_peers();
            if !pex.is_empty()
                && shard
                    .torrent(t)
                    .is_some_and(|tt| tt.is_downloading() && !tt.private)
            {
                shard.event(ShardEvent::Found {
                    torrent: t,
                    peers: pex,
                });
            }
        }
        if slot.listen_addr.is_none() {
            if let (Some(t), Some(port)) = (slot.torrent, slot.session.peer_listen_port()) {
                let listen = SocketAddr::new(slot.addr.ip(), port);
                if let Some(torrent) = shard.torrent(t) {
                    if let Ok(mut sw) = torrent.swarm.lock() {
                        sw.insert(listen, 0);
                    }
                }
                slot.listen_addr = Some(listen);
            }
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
    dialed: Option<usize>,
    received: Vec<u8>,
) -> Result<(), Closed> {
    let mut buf: Vec<u8> = received;
    buf.reserve(RECV_INITIAL.saturating_sub(buf.len()));
    let (read_wake, max_len) = {
        let peers = shard.peers.borrow();
        let slot = peers.get(key).ok_or(Closed::Io("slot gone".into()))?;
        (slot.read_wake.clone(), slot.session.max_message_len())
    };
    let mut max_len = max_len;
    // Bytes of `buf` already decoded: dropped once per read, not once per message (a read of
    // a downloading connection holds several PIECEs).
    let mut start = 0usize;
    // Downloading: the socket again (a dup), for vectored reads of PIECE payloads straight into
    // pool buffers (tokio-uring's TcpStream has no readv). Made at the first such read;
    // `Some(None)`: the dup failed (no descriptor left), payloads are copied from `buf`.
    let mut direct: Option<Option<tokio_uring::fs::File>> = None;
    loop {
        let (r, phase, torrent, downloading) = {
            let mut peers = shard.peers.borrow_mut();
            let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
            if slot.closing {
                return Ok(());
            }
            let r = slot.session.receive(&buf[start..])?;
            if r.wake || r.serve {
                slot.wake.notify_one();
            }
            let downloading = slot.session.peer().is_some_and(|p| p.our_requests() > 0);
            (r, slot.session.phase(), slot.torrent, downloading)
        };
        if let (Some((b, off)), Some(t)) = (r.block, torrent) {
            // Downloading: the data of our request, still in `buf`: into a pool buffer and
            // its write started before the bytes are dropped.
            let at = start + off;
            if let Some(data) = buf.get(at..at + b.len as usize) {
                crate::server::download::on_block(shard, key, t, b, data).await;
            }
        }
        if r.events || r.block.is_some() {
            if let Some(t) = torrent {
                crate::server::download::on_events(shard, key, t);
            }
        }
        start += r.consumed;
        if r.block.is_some() {
            // Decoding stopped after the block: decode on before reading more.
            continue;
        }
        buf.drain(..start);
        start = 0;
        if phase == Phase::AwaitTorrent {
            if dialed.is_none() && hand_off(shard, key, stream, &buf) {
                return Ok(());
            }
            let t = attach(shard, key, dialed)?;
            max_len = shard
                .peers
                .borrow()
                .get(key)
                .map_or(max_len, |s| s.session.max_message_len());
            if writer_done.is_none() {
                *writer_done = Some(start_writer(shard, key, t, stream));
            } else if let Some(slot) = shard.peers.borrow().get(key) {
                slot.wake.notify_one();
            }
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
        let direct_on = shard.cfg.download.recv_direct;
        if let (true, Some(t)) = (
            direct_on && downloading && phase == Phase::Established,
            torrent,
        ) {
            // PIECE payloads straight into pool buffers: the one whose header is here, and the
            // ones the next messages most likely are.
            let cur = if buf.len() >= wire::PIECE_HEADER_LEN {
                pending_block(shard, key, &buf).map(Some)
            } else {
                may_be_block(&buf, shard.pool.block_size()).then_some(None)
            };
            if let Some(cur) = cur {
                if let Some(blocks) =
                    read_scatter(shard, key, stream, &mut direct, &mut buf, cur).await?
                {
                    for (b, pb) in blocks {
                        deliver_in_place(shard, key, t, b, pb).await?;
                    }
                    continue;
                }
            }
        }
        // Room for the next message: what its header announces (checked against the limit
        // before its body is buffered), or a floor.
        let mut want = match wire::peek_header(&buf) {
            Some((len, id)) if phase == Phase::Established => {
                wire::check_header(len, id, max_len).map_err(CloseReason::Wire)?;
                4 + len as usize
            }
            _ => RECV_MIN_ROOM,
        };
        if downloading {
            // Blocks are on their way: read several PIECEs at once.
            want = want.max(buf.len() + RECV_DOWNLOAD);
        }
        if !downloading && buf.capacity() > RECV_INITIAL * 4 && buf.len() < RECV_INITIAL {
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
fn attach(shard: &Shard, key: usize, dialed: Option<usize>) -> Result<usize, Closed> {
    let mut peers = shard.peers.borrow_mut();
    let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
    let hs = *slot
        .session
        .handshake()
        .ok_or(Closed::Io("no handshake".into()))?;
    if shard.test_panic && hs.peer_id.starts_with(b"-XPANIC") {
        if hs.peer_id[7].wrapping_sub(b'0') as usize == shard.cfg.index {
            panic!("shard {}: injected panic (test switch)", shard.cfg.index);
        }
        return Err(Closed::Io("test panic peer for another shard".into()));
    }
    let torrent = shard
        .registry
        .get(&hs.info_hash)
        .ok_or(CloseReason::UnknownTorrent)?;
    let t = torrent.index;
    if dialed.is_some_and(|d| d != t) {
        return Err(CloseReason::WrongInfoHash.into());
    }
    if !crate::server::download::allowed(&torrent, slot.addr) {
        return Err(CloseReason::Banned.into());
    }
    if t >= shard.torrents.borrow().len() {
        shard.sync_torrents();
    }
    {
        let mut ts = shard.torrents.borrow_mut();
        let st = ts.get_mut(t).ok_or(CloseReason::UnknownTorrent)?;
        if st.peers >= shard.cfg.max_peers_per_torrent {
            return Err(CloseReason::TorrentFull.into());
        }
        st.peers += 1;
        if dialed.is_some() {
            st.dialed += 1;
        }
    }
    // From here on the slot counts toward the torrent (undone in `serve`).
    slot.torrent = Some(t);
    torrent
        .stats
        .peers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    torrent
        .stats
        .peers_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if dialed.is_some() {
        torrent
            .stats
            .peers_dialed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shard
            .registry
            .server
            .dials_connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A dialed peer listens where we reached it.
        slot.listen_addr = Some(slot.addr);
        if let Ok(mut sw) = torrent.swarm.lock() {
            sw.insert(slot.addr, uring_bt_proto::ext::pex_flags::OUTGOING);
        }
        shard.event(ShardEvent::DialDone {
            shard: shard.cfg.index,
            torrent: t,
            addr: slot.addr,
            connected: true,
            seed: false,
        });
    }
    if slot.half_open {
        slot.half_open = false;
        release_half_open(shard);
    }
    let layout = &torrent.layout;
    let n = layout.num_pieces();
    let view = TorrentView {
        info_hash: torrent.info_hash,
        num_pieces: n,
        piece_length: layout.piece_length(),
        last_piece_length: layout.piece_size(n - 1),
        seed: torrent.is_seed(),
        private: torrent.private,
        metadata: torrent.metadata.clone(),
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

/// Speculative reads hold at most `buffers / SPEC_SHARE` (at least 1) of a shard's pool.
const SPEC_SHARE: usize = 16;

/// The block whose PIECE header starts `buf` when the rest of its payload is to be received
/// straight into a pool buffer: ours, incomplete, and no larger than a pool buffer.
fn pending_block(shard: &Shard, key: usize, buf: &[u8]) -> Option<BlockRef> {
    let peers = shard.peers.borrow();
    let slot = peers.get(key)?;
    let b = slot.session.pending_block(buf)?;
    (b.len as usize <= shard.pool.block_size()).then_some(b)
}

/// One part of a vectored socket read: a pool buffer's block from its current length
/// (`owner` Pool), or a region of the receive buffer's spare room (the first such part owns the
/// Vec, the later ones point into the same reservation). `ptr` points at the part's first byte,
/// `len` bytes, `filled` of them received.
struct RecvPart {
    owner: RecvOwner,
    ptr: *mut u8,
    len: usize,
    filled: usize,
}

enum RecvOwner {
    Pool(PoolBuf),
    Conn(Vec<u8>),
    None,
}

impl RecvPart {
    /// The pool buffer's block from its current length up to `total` bytes.
    fn pool(mut pb: PoolBuf, total: usize) -> RecvPart {
        let at = pb.block_len();
        let room = &mut pb.block_capacity_mut()[at..total];
        let (ptr, len) = (room.as_mut_ptr(), room.len());
        RecvPart {
            owner: RecvOwner::Pool(pb),
            ptr,
            len,
            filled: 0,
        }
    }

    /// Consecutive regions of `lens` bytes after the receive buffer's contents (reserved here),
    /// the first part owning the buffer.
    fn conn(mut buf: Vec<u8>, lens: &[usize]) -> Vec<RecvPart> {
        buf.reserve(lens.iter().sum());
        let mut ptr = buf.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        let mut owner = Some(buf);
        lens.iter()
            .map(|&len| {
                let part = RecvPart {
                    owner: owner.take().map_or(RecvOwner::None, RecvOwner::Conn),
                    ptr,
                    len,
                    filled: 0,
                };
                // SAFETY: the regions lie one after another within the room reserved above.
                ptr = unsafe { ptr.add(len) };
                part
            })
            .collect()
    }
}

// SAFETY: `ptr..ptr + len` lies in memory the read's parts own (a pool buffer's block, which
// stays in the pool's arena while the PoolBuf lives, or a Vec's reserved spare capacity, which
// does not move while the Vec sits, untouched, in the part that owns it, in the same read), and
// `filled <= len`.
unsafe impl tokio_uring::buf::IoBuf for RecvPart {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }

    fn bytes_init(&self) -> usize {
        self.filled
    }

    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: as for IoBuf; `set_init` only records how many bytes the kernel wrote, capped at len.
unsafe impl tokio_uring::buf::IoBufMut for RecvPart {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.filled = pos.min(self.len);
    }
}

/// PIECEs one vectored read may receive straight into pool buffers (each a header into the
/// receive buffer, then a whole block into a pool buffer).
const SCATTER_BLOCKS: usize = 4;

/// The connection's second descriptor for vectored reads, made at its first use (`None`: the
/// dup failed, payloads are copied).
fn direct_file<'a>(
    direct: &'a mut Option<Option<tokio_uring::fs::File>>,
    stream: &TcpStream,
) -> Option<&'a tokio_uring::fs::File> {
    direct.get_or_insert_with(|| dup_stream(stream)).as_ref()
}

/// `buf` (less than a PIECE header) may be the start of a PIECE of at most `block_size`
/// bytes: worth receiving the next messages with [`read_scatter`].
fn may_be_block(buf: &[u8], block_size: usize) -> bool {
    if let Some((len, id)) = wire::peek_header(buf) {
        if len <= 9 || len as usize > 9 + block_size {
            return false;
        }
        if id.is_some_and(|id| id != wire::id::PIECE) {
            return false;
        }
    }
    true
}

/// How the bytes of one scattered read divide into messages ([`sort_scatter`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Sorted {
    /// PIECEs of ours received whole: (pool part, block), in stream order.
    blocks: Vec<(usize, BlockRef)>,
    /// A PIECE of ours whose payload is still arriving into this pool part.
    cur: Option<(usize, BlockRef)>,
    /// The bytes after the last whole block, in stream order: the receive buffer's new
    /// contents.
    tail: Vec<u8>,
}

/// Divides what one vectored read of [`read_scatter`] received into messages. The parts were,
/// in stream order: the rest of `cur`'s payload in pool part 0 (when `cur`), then for each
/// further pool part `i` a header region of `conn` and the block of pool part `i`, then a
/// last header region. `conn` is the receive buffer after the read: bytes it held before (a
/// partial header, unless `cur`), then the regions' bytes, back to back; `regions` their
/// `(offset, length, filled)`; `pools` each pool part's bytes received in this read (for
/// `cur`, all of its payload so far). `awaited` names our request a header answers.
fn sort_scatter(
    conn: &[u8],
    regions: &[(usize, usize, usize)],
    pools: &[&[u8]],
    cur: Option<BlockRef>,
    block: usize,
    awaited: impl Fn(&[u8]) -> Option<BlockRef>,
) -> Sorted {
    let h = wire::PIECE_HEADER_LEN;
    let mut out = Sorted::default();
    let first = usize::from(cur.is_some());
    if let Some(b) = cur {
        if pools.first().map_or(0, |p| p.len()) < b.len as usize {
            out.cur = Some((0, b));
            return out; // nothing after it yet
        }
        out.blocks.push((0, b));
    }
    // Everything from region `r` and pool part `p` on, in stream order.
    let rest = |r: usize, p: usize, out: &mut Vec<u8>| {
        for (p, &(off, _, filled)) in (p..).zip(&regions[r..]) {
            out.extend_from_slice(&conn[off..off + filled]);
            if let Some(pool) = pools.get(p) {
                out.extend_from_slice(pool);
            }
        }
    };
    // The message starts at `start` in `conn` (the first one may begin with bytes held before
    // the read).
    let mut start = 0;
    for (r, &(off, len, filled)) in regions.iter().enumerate() {
        let end = off + filled;
        let p = r + first;
        if filled < len || p >= pools.len() {
            // Inside a header, or the last header region: the tail is this much of a header.
            out.tail.extend_from_slice(&conn[start..end]);
            return out;
        }
        let header = &conn[start..start + h];
        let data = pools[p];
        match awaited(header).filter(|b| b.len as usize <= block) {
            Some(b) if data.len() >= b.len as usize => {
                out.blocks.push((p, b));
                if data.len() > b.len as usize {
                    // A shorter block: the stream goes on inside this pool part.
                    out.tail.extend_from_slice(&data[b.len as usize..]);
                    rest(r + 1, p + 1, &mut out.tail);
                    return out;
                }
            }
            Some(b) => {
                out.cur = Some((p, b));
                return out; // nothing after it yet
            }
            None => {
                // Not a PIECE of ours: from its header on, everything is the stream's.
                out.tail.extend_from_slice(&conn[start..end]);
                out.tail.extend_from_slice(data);
                rest(r + 1, p + 1, &mut out.tail);
                return out;
            }
        }
        start = regions.get(r + 1).map_or(end, |x| x.0);
    }
    out
}

/// Downloading: receives the next PIECE payloads straight into pool buffers, with vectored
/// reads that place, after what `buf` holds, the rest of a header (into `buf`), a whole block
/// (into a pool buffer), the next header, the next block, ... ([`SCATTER_BLOCKS`] blocks), then
/// room for one more header. `cur` is a PIECE of ours whose header and first payload bytes
/// `buf` holds (moved into a pool buffer first). While the messages are the PIECEs of our
/// requests, as they nearly always are while we download, every payload lands in a pool
/// buffer and a read costs what a plain read would (measured: a 13-byte header read of its
/// own cost more than the copy it saved). From the first message that is not (another
/// message, a shorter block, a block we did not ask for), the bytes go back into `buf` in
/// stream order for the session to decode ([`sort_scatter`]). Returns the blocks received, in
/// stream order; `buf` then holds what followed them. `None`: nothing was read (no descriptor
/// for the dup, or the shard's scattered reads hold their share of the pool).
async fn read_scatter(
    shard: &Rc<Shard>,
    key: usize,
    stream: &TcpStream,
    direct: &mut Option<Option<tokio_uring::fs::File>>,
    buf: &mut Vec<u8>,
    cur: Option<BlockRef>,
) -> Result<Option<Vec<(BlockRef, PoolBuf)>>, Closed> {
    let Some(file) = direct_file(direct, stream) else {
        return Ok(None);
    };
    let h = wire::PIECE_HEADER_LEN;
    // Pool buffers for messages not seen yet: at most a sixteenth of the pool per shard (a
    // read may wait long for a slow peer).
    let budget = (shard.pool.capacity() / SPEC_SHARE).max(1);
    let free = budget.saturating_sub(shard.spec_reads.get());
    let want = SCATTER_BLOCKS
        .saturating_sub(usize::from(cur.is_some()))
        .min(free);
    if want == 0 && cur.is_none() {
        return Ok(None);
    }
    let mut cur = match cur {
        Some(b) => {
            let mut pb = take_buffer(shard).await;
            pb.fill_block(&buf[h..]);
            buf.clear();
            Some((b, pb))
        }
        None => None,
    };
    let mut spare = Vec::with_capacity(want);
    if cur.is_none() {
        spare.push(take_buffer(shard).await); // the reader would wait at this PIECE anyway
    }
    while spare.len() < want {
        match shard.pool.try_take() {
            Some(pb) => spare.push(pb),
            None => break,
        }
    }
    let held = spare.len();
    shard.spec_reads.set(shard.spec_reads.get() + held);
    let out = scatter_reads(shard, key, file, buf, &mut cur, spare).await;
    shard
        .spec_reads
        .set(shard.spec_reads.get().saturating_sub(held));
    out.map(Some)
}

/// A pool buffer, waiting for one if none is free (backpressure on the peer).
async fn take_buffer(shard: &Shard) -> PoolBuf {
    match shard.pool.try_take() {
        Some(pb) => pb,
        None => shard.pool.take().await,
    }
}

/// The reads of [`read_scatter`], until no PIECE of ours is left half received.
async fn scatter_reads(
    shard: &Rc<Shard>,
    key: usize,
    file: &tokio_uring::fs::File,
    buf: &mut Vec<u8>,
    cur: &mut Option<(BlockRef, PoolBuf)>,
    mut spare: Vec<PoolBuf>,
) -> Result<Vec<(BlockRef, PoolBuf)>, Closed> {
    let h = wire::PIECE_HEADER_LEN;
    let block = shard.pool.block_size();
    let mut done = Vec::new();
    loop {
        // The parts in stream order: [cur's rest], (header, block) for each spare, header.
        let have = buf.len();
        let mut lens: Vec<usize> = (0..spare.len())
            .map(|i| if i == 0 && cur.is_none() { h - have } else { h })
            .collect();
        lens.push(h);
        let mut conn = RecvPart::conn(std::mem::take(buf), &lens).into_iter();
        let mut parts = Vec::with_capacity(2 * lens.len());
        let cur_b = cur.as_ref().map(|(b, _)| *b);
        if let Some((b, pb)) = cur.take() {
            parts.push(RecvPart::pool(pb, b.len as usize));
        }
        for pb in spare.drain(..) {
            parts.extend(conn.next());
            let mut pb = pb;
            pb.set_block_len(0);
            parts.push(RecvPart::pool(pb, block));
        }
        parts.extend(conn.next());
        let (res, parts) = file.readv_at(parts, 0).await;
        // Owners back: the receive buffer (its regions' bytes are back to back), the pool
        // buffers in order.
        let mut regions = Vec::with_capacity(lens.len());
        let mut pools: Vec<PoolBuf> = Vec::with_capacity(parts.len());
        let mut at = have;
        let mut conn_filled = 0;
        for part in parts {
            match part.owner {
                RecvOwner::Pool(mut pb) => {
                    let n = pb.block_len() + part.filled;
                    pb.set_block_len(n);
                    pools.push(pb);
                }
                RecvOwner::Conn(v) => {
                    *buf = v;
                    regions.push((at, part.len, part.filled));
                    at += part.filled;
                    conn_filled += part.filled;
                }
                RecvOwner::None => {
                    regions.push((at, part.len, part.filled));
                    at += part.filled;
                    conn_filled += part.filled;
                }
            }
        }
        // SAFETY: the kernel fills parts in order, so every region but the last one it wrote
        // is full and the regions are back to back: `conn_filled` bytes right after the old
        // length, within the room `RecvPart::conn` reserved.
        unsafe { buf.set_len(have + conn_filled) };
        match res {
            Ok(0) => return Err(Closed::Io("peer closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(Closed::Io(format!("read: {e}"))),
        }
        let sorted = {
            let mut peers = shard.peers.borrow_mut();
            let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
            slot.session.on_read(Instant::now());
            let views: Vec<&[u8]> = pools.iter().map(PoolBuf::block).collect();
            let session = &slot.session;
            sort_scatter(buf, &regions, &views, cur_b, block, |hd| {
                session.awaited_block(hd)
            })
        };
        let mut pools: Vec<Option<PoolBuf>> = pools.into_iter().map(Some).collect();
        for (p, b) in sorted.blocks {
            if let Some(mut pb) = pools.get_mut(p).and_then(Option::take) {
                pb.set_block_len(b.len as usize);
                done.push((b, pb));
            }
        }
        buf.clear();
        buf.extend_from_slice(&sorted.tail);
        match sorted.cur {
            Some((p, b)) => {
                let pb = pools
                    .get_mut(p)
                    .and_then(Option::take)
                    .ok_or(Closed::Io("internal error: scatter parts".into()))?;
                *cur = Some((b, pb));
                // Nothing came after it: the other buffers wait for the next read.
                spare.extend(pools.into_iter().flatten());
            }
            None => return Ok(done),
        }
    }
}

/// The payload of our request `b`, received into `pb` by [`read_scatter`]: through the
/// session (as if decoded from the buffer), then to the download.
async fn deliver_in_place(
    shard: &Rc<Shard>,
    key: usize,
    t: usize,
    b: BlockRef,
    pb: PoolBuf,
) -> Result<(), Closed> {
    let r = {
        let mut peers = shard.peers.borrow_mut();
        let slot = peers.get_mut(key).ok_or(Closed::Io("slot gone".into()))?;
        let r = slot.session.receive_piece(b, pb.block())?;
        if r.wake || r.serve {
            slot.wake.notify_one();
        }
        r
    };
    if r.block.is_some() {
        crate::server::download::on_block_buf(shard, key, t, b, pb);
    }
    crate::server::download::on_events(shard, key, t);
    if r.interest_changed {
        shard.want_fill(t);
    }
    Ok(())
}

/// A second descriptor for the connection's socket, as a tokio-uring file (it has readv), or
/// `None` when none is left (EMFILE): the descriptor budget counts two per downloading peer.
fn dup_stream(stream: &TcpStream) -> Option<tokio_uring::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: dup of a descriptor this connection owns; the result is a new descriptor that
    // nothing else owns (or -1).
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "no descriptor for vectored reads: PIECE payloads are copied on this connection"
        );
        return None;
    }
    // SAFETY: `fd` is the fresh descriptor just created.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Some(tokio_uring::fs::File::from_std(std::fs::File::from(fd)))
}

/// The writer task: all writes of one connection.
async fn writer(
    shard: Rc<Shard>,
    key: usize,
    t: usize,
    stream: Rc<TcpStream>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let Some(torrent) = shard.torrent(t) else {
        let _ = done.send(());
        return;
    };
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
                if let Some(pipes) = shard.pipes.as_ref() {
                    // Splicing: one batch at a time, straight from the page cache.
                    crate::server::splice::send_spliced(
                        &shard, pipes, key, &torrent, &stream, &mut reqs, &wake,
                    )
                    .await?;
                    continue;
                }
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

pub(crate) fn mark_writing(shard: &Shard, key: usize, on: bool) {
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
    account_sent(shard, key, torrent, payload, served);
    Ok(())
}

/// Counts a batch that reached the socket: the torrent's and the peer's upload, and each
/// request served in the peer's session.
pub(crate) fn account_sent(
    shard: &Shard,
    key: usize,
    torrent: &Torrent,
    payload: u64,
    served: Vec<BlockRef>,
) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = 16;

    fn blk(begin: u32, len: u32) -> BlockRef {
        BlockRef {
            piece: 3,
            begin,
            len,
        }
    }

    fn piece(b: BlockRef) -> Vec<u8> {
        let data: Vec<u8> = (0..b.len).map(|i| (b.begin + i) as u8).collect();
        let mut v = Vec::new();
        wire::encode(
            &wire::Message::Piece {
                piece: b.piece,
                begin: b.begin,
                data: &data,
            },
            &mut v,
        );
        v
    }

    /// Plays a vectored read of `stream` (bytes that arrived) into the parts `read_scatter`
    /// sets up (`have` bytes held before, `cur` with `cur_have` payload bytes, `spares` pool
    /// parts), as the kernel fills them in order; returns what `sort_scatter` makes of it and
    /// each pool part's bytes.
    fn play(
        held: &[u8],
        cur: Option<(BlockRef, usize)>,
        spares: usize,
        stream: &[u8],
        ours: &[BlockRef],
    ) -> (Sorted, Vec<Vec<u8>>) {
        let h = wire::PIECE_HEADER_LEN;
        let mut lens = vec![];
        for i in 0..spares {
            lens.push(if i == 0 && cur.is_none() {
                h - held.len()
            } else {
                h
            });
        }
        lens.push(h);
        // The parts in order: (is_pool, len).
        let mut parts = vec![];
        if let Some((b, have)) = cur {
            parts.push((true, b.len as usize - have));
        }
        for (i, &l) in lens.iter().enumerate() {
            parts.push((false, l));
            if i < spares {
                parts.push((true, B));
            }
        }
        let mut conn = held.to_vec();
        let mut regions = vec![];
        let mut pools: Vec<Vec<u8>> = vec![];
        if let Some((b, have)) = cur {
            pools.push(vec![0xEE; have]);
            let _ = b;
        }
        let mut rest = stream;
        let mut pool_i = 0;
        for (is_pool, l) in parts {
            let n = l.min(rest.len());
            if is_pool {
                if pool_i >= pools.len() {
                    pools.push(vec![]);
                }
                pools[pool_i].extend_from_slice(&rest[..n]);
                pool_i += 1;
            } else {
                regions.push((conn.len(), l, n));
                conn.extend_from_slice(&rest[..n]);
            }
            rest = &rest[n..];
        }
        while pools.len() < spares + usize::from(cur.is_some()) {
            pools.push(vec![]);
        }
        let views: Vec<&[u8]> = pools.iter().map(|p| &p[..]).collect();
        let sorted = sort_scatter(&conn, &regions, &views, cur.map(|c| c.0), B, |hd| {
            let len = u32::from_be_bytes(hd[..4].try_into().unwrap());
            if hd[4] != wire::id::PIECE || len < 9 {
                return None;
            }
            let b = BlockRef {
                piece: u32::from_be_bytes(hd[5..9].try_into().unwrap()),
                begin: u32::from_be_bytes(hd[9..13].try_into().unwrap()),
                len: len - 9,
            };
            ours.contains(&b).then_some(b)
        });
        (sorted, pools)
    }

    #[test]
    fn pieces_of_ours_land_in_the_pool_parts_and_the_next_header_in_the_tail() {
        let bs: Vec<BlockRef> = (0..5).map(|i| blk(i * B as u32, B as u32)).collect();
        let stream: Vec<u8> = bs.iter().flat_map(|&b| piece(b)).collect();
        let (s, pools) = play(&[], None, 4, &stream, &bs);
        assert_eq!(
            s.blocks,
            vec![(0, bs[0]), (1, bs[1]), (2, bs[2]), (3, bs[3])]
        );
        assert_eq!(s.cur, None);
        assert_eq!(s.tail, piece(bs[4])[..13].to_vec(), "the next header waits");
        for (i, p) in pools.iter().enumerate() {
            assert_eq!(p[..], piece(bs[i])[13..], "block {i}'s payload");
        }
        // With a partial header held before, and the current block's rest first.
        let (s, _) = play(&stream[..5], None, 2, &stream[5..], &bs);
        assert_eq!(s.blocks, vec![(0, bs[0]), (1, bs[1])]);
        assert_eq!(s.tail, piece(bs[2])[..13].to_vec());
        let (s, pools) = play(&[], Some((bs[0], 3)), 1, &stream[16..], &bs);
        assert_eq!(s.blocks, vec![(0, bs[0]), (1, bs[1])]);
        assert_eq!(pools[0].len(), B);
        assert_eq!(pools[1][..], piece(bs[1])[13..]);
        assert_eq!(s.tail, piece(bs[2])[..13].to_vec());
    }

    #[test]
    fn a_read_that_stops_inside_a_header_or_a_payload_keeps_it_for_the_next() {
        let bs: Vec<BlockRef> = (0..3).map(|i| blk(i * B as u32, B as u32)).collect();
        let stream: Vec<u8> = bs.iter().flat_map(|&b| piece(b)).collect();
        // Stops 20 bytes into the second message: its header and 7 payload bytes.
        let (s, pools) = play(&[], None, 3, &stream[..29 + 20], &bs);
        assert_eq!(s.blocks, vec![(0, bs[0])]);
        assert_eq!(s.cur, Some((1, bs[1])));
        assert_eq!(pools[1][..], piece(bs[1])[13..20]);
        assert!(s.tail.is_empty());
        // Stops 5 bytes into the second header.
        let (s, _) = play(&[], None, 3, &stream[..29 + 5], &bs);
        assert_eq!(s.blocks, vec![(0, bs[0])]);
        assert_eq!(s.cur, None);
        assert_eq!(s.tail, stream[29..34].to_vec());
        // The current block still short.
        let (s, _) = play(&[], Some((bs[0], 3)), 2, &stream[16..20], &bs);
        assert_eq!(s.cur, Some((0, bs[0])));
        assert!(s.blocks.is_empty() && s.tail.is_empty());
    }

    #[test]
    fn any_other_message_puts_every_byte_from_it_back_in_stream_order() {
        let bs: Vec<BlockRef> = (0..4).map(|i| blk(i * B as u32, B as u32)).collect();
        let mut have = Vec::new();
        wire::encode(&wire::Message::Have(7), &mut have);
        let short = blk(4 * B as u32, 5);
        let cases: Vec<(&str, Vec<u8>, Vec<BlockRef>)> = vec![
            // A HAVE between two PIECEs.
            (
                "have",
                [piece(bs[0]), have.clone(), piece(bs[1]), piece(bs[2])].concat(),
                bs.clone(),
            ),
            // A block we did not ask for.
            (
                "unrequested",
                [piece(bs[0]), piece(bs[1]), piece(bs[2])].concat(),
                vec![bs[0], bs[2]],
            ),
            // A shorter block (the torrent's last): what follows it sits in its pool part.
            (
                "short",
                [piece(bs[0]), piece(short), piece(bs[1]), piece(bs[2])].concat(),
                vec![bs[0], short, bs[1], bs[2]],
            ),
            // A keep-alive.
            (
                "keep-alive",
                [piece(bs[0]), vec![0, 0, 0, 0], piece(bs[1])].concat(),
                bs.clone(),
            ),
        ];
        for (name, stream, ours) in cases {
            let (s, pools) = play(&[], None, 4, &stream, &ours);
            // Whatever was taken as a block, then the tail, must be the stream again.
            let mut again = Vec::new();
            for &(p, b) in &s.blocks {
                again.extend_from_slice(&piece(b)[..13]);
                again.extend_from_slice(&pools[p][..b.len as usize]);
            }
            if let Some((p, b)) = s.cur {
                again.extend_from_slice(&piece(b)[..13]);
                again.extend_from_slice(&pools[p]);
            }
            again.extend_from_slice(&s.tail);
            assert_eq!(again, stream, "{name}: {s:?}");
            assert_eq!(s.blocks[0], (0, bs[0]), "{name}");
            match name {
                "short" => assert_eq!(s.blocks[1], (1, short), "{name}"),
                _ => assert_eq!(s.blocks.len(), 1, "{name}: {s:?}"),
            }
        }
    }
}
