//! A shard's state and one peer's slot: what the shard's tasks (accept loop, ticker, each
//! connection's reader and writer) share on the shard's thread.
//!
//! State is `Rc<RefCell<..>>`, borrowed only between awaits, never across one. The protocol
//! state of a connection is its [`Session`] (sans-IO, in `uring-bt-proto`); the slot adds the
//! socket, the wakers of its two tasks and its counters. Choking is applied here
//! ([`Shard::rechoke`]), so the ticker and the connection driver both call into this module and
//! neither calls the other.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;
use uring_bt_proto::choker::{Choker, ChokerPeer};
use uring_bt_proto::session::{CloseReason, Session, SessionConfig};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::TorrentId;
use uring_bt_storage::uring::UringStore;

use crate::server::registry::Registry;

/// Everything a shard is told at start-up. Every limit is explicit.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Shard number (0-based).
    pub index: usize,
    /// CPU to pin the thread to (`None`: no pinning).
    pub pin_cpu: Option<usize>,
    /// Connected peers this shard accepts (all torrents).
    pub max_peers: usize,
    /// Connected peers per torrent on this shard.
    pub max_peers_per_torrent: usize,
    /// Fixed-size block buffers in this shard's pool.
    pub buffers: usize,
    /// Files open at once in this shard's registered-file table.
    pub max_open_files: usize,
    /// Upload slots per torrent on this shard (regular slots; the optimistic one is extra).
    pub upload_slots: usize,
    /// Every connection's protocol settings: identity, `reqq`, timeouts, control-queue bound.
    pub session: SessionConfig,
    /// Submission queue entries of the storage ring.
    pub ring_entries: u32,
    /// Requests served per batch (reads submitted together, pieces sent in one writev).
    pub batch: usize,
    /// Most contiguous blocks read with one vectored read.
    pub coalesce: usize,
}

/// The shard's housekeeping period (timeouts, choker, keep-alives).
pub const TICK: Duration = Duration::from_secs(1);

/// Shortest time between two quick choker passes of one shard. A peer that flips INTERESTED /
/// NOT INTERESTED as fast as it can costs a flag per message, not a pass over the shard's
/// peers: at most `1 s / FILL_INTERVAL` passes a second per shard, whatever the peers send.
pub const FILL_INTERVAL: Duration = Duration::from_millis(50);

/// One connected peer, as the shard sees it.
pub struct PeerSlot {
    pub addr: SocketAddr,
    pub stream: Rc<tokio_uring::net::TcpStream>,
    /// Registry index of the torrent, once the handshake named one.
    pub torrent: Option<usize>,
    /// The connection's protocol state (handshake, peer state machine, control queue, timers).
    pub session: Session,
    /// Wakes the writer: control bytes queued, a request queued, or the connection closing.
    pub wake: Rc<Notify>,
    /// Wakes the reader paused by backpressure: the writer drained the control queue, or the
    /// connection is closing.
    pub read_wake: Rc<Notify>,
    /// Payload bytes sent, and the value at the previous choker tick.
    pub uploaded: u64,
    pub uploaded_at_tick: u64,
    pub closing: bool,
    /// Why the shard (not the peer) closed the connection, when it did.
    pub close_reason: Option<CloseReason>,
}

impl PeerSlot {
    /// A slot for a connection accepted at `now`.
    pub fn new(
        addr: SocketAddr,
        stream: Rc<tokio_uring::net::TcpStream>,
        cfg: SessionConfig,
        now: Instant,
    ) -> Self {
        PeerSlot {
            addr,
            stream,
            torrent: None,
            session: Session::new(cfg, Some(addr.ip()), now),
            wake: Rc::new(Notify::new()),
            read_wake: Rc::new(Notify::new()),
            uploaded: 0,
            uploaded_at_tick: 0,
            closing: false,
            close_reason: None,
        }
    }

    /// Marks the connection for closing and shuts the socket down, which completes any read or
    /// write in flight on it (we never drop an in-flight operation: see the hazards in
    /// docs/architecture.md).
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.wake.notify_one();
        self.read_wake.notify_one();
    }

    /// Closes the connection for `reason` (the first reason given is kept).
    pub fn close_for(&mut self, reason: CloseReason) {
        if self.close_reason.is_none() && !self.closing {
            self.close_reason = Some(reason);
        }
        self.close();
    }

    /// The choker's decision for this peer.
    pub fn set_choked(&mut self, choked: bool) {
        if self.session.set_choked(choked) {
            self.wake.notify_one();
        }
    }
}

/// A shard's state, shared by its tasks (single thread).
pub struct Shard {
    pub cfg: ShardConfig,
    pub registry: Arc<Registry>,
    pub pool: Rc<BufPool>,
    pub store: Rc<UringStore>,
    /// Registry index -> this shard's storage id.
    pub tids: Vec<TorrentId>,
    pub peers: RefCell<Slab<PeerSlot>>,
    /// Connected peers per torrent on this shard.
    pub torrent_peers: RefCell<Vec<usize>>,
    pub chokers: RefCell<Vec<Choker>>,
    /// Torrents whose choker should fill free slots (a peer's interest changed), and the wake
    /// of the task that does it ([`filler`]) at most every [`FILL_INTERVAL`].
    pub fill_pending: RefCell<Vec<bool>>,
    pub fill_wake: Notify,
    /// The storage ring's file-table counters already added to the registry's `ServerStats`.
    pub published: Cell<(u64, u64)>,
}

impl Shard {
    /// Adds what the storage ring's file table did since the last call to the server's counters
    /// (after every batch's reads and every tick: a few loads when nothing changed).
    pub fn publish_stats(&self) {
        let st = self.store.stats();
        if self.published.get() == (st.opens, st.evictions) {
            return;
        }
        let (opens, evictions) = self.published.replace((st.opens, st.evictions));
        let server = &self.registry.server;
        server
            .file_opens
            .fetch_add(st.opens.saturating_sub(opens), Ordering::Relaxed);
        server
            .file_evictions
            .fetch_add(st.evictions.saturating_sub(evictions), Ordering::Relaxed);
    }

    /// A peer of torrent `t` changed its interest: its choker fills free slots soon (rate
    /// limited, see [`FILL_INTERVAL`]).
    pub fn want_fill(&self, t: usize) {
        if let Some(p) = self.fill_pending.borrow_mut().get_mut(t) {
            if !*p {
                *p = true;
                self.fill_wake.notify_one();
            }
        }
    }

    /// Runs torrent `t`'s choker over this shard's peers and applies its decisions. `quick`:
    /// only fill free slots (a peer just became interested), no rotation.
    pub fn rechoke(&self, t: usize, now: Instant, input: &mut Vec<ChokerPeer>, quick: bool) {
        input.clear();
        let mut peers = self.peers.borrow_mut();
        for (key, slot) in peers.iter_mut() {
            if slot.torrent != Some(t) || slot.closing {
                continue;
            }
            let Some(peer) = slot.session.peer() else {
                continue;
            };
            input.push(ChokerPeer {
                key,
                interested: peer.is_interested(),
                unchoked: !peer.am_choking(),
                recent_upload: slot.uploaded - slot.uploaded_at_tick,
            });
            if !quick {
                slot.uploaded_at_tick = slot.uploaded;
            }
        }
        let mut chokers = self.chokers.borrow_mut();
        let decisions = if quick {
            chokers[t].fill(now, input)
        } else {
            chokers[t].tick(now, input)
        };
        for (key, unchoke) in decisions {
            if let Some(slot) = peers.get_mut(key) {
                slot.set_choked(!unchoke);
            }
        }
    }
}

/// The task that runs the quick choker passes [`Shard::want_fill`] asks for, at most once per
/// [`FILL_INTERVAL`].
pub async fn filler(shard: Rc<Shard>) {
    let mut input = Vec::new();
    loop {
        shard.fill_wake.notified().await;
        let n = shard.fill_pending.borrow().len();
        for t in 0..n {
            let due = std::mem::take(&mut shard.fill_pending.borrow_mut()[t]);
            if due {
                shard.rechoke(t, Instant::now(), &mut input, true);
            }
        }
        tokio::time::sleep(FILL_INTERVAL).await;
    }
}
