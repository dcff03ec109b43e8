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

use crate::server::registry::{Registry, Torrent};

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
    /// Pipes of the splice send path (`--send-path splice`); 0: the copy path.
    pub splice_pipes: usize,
    /// Outgoing connections this shard sets up at once (connect + handshake).
    pub max_half_open: usize,
    /// The download side's settings (pipelines, snubbing, rate limit, bans).
    pub download: crate::server::download::DownloadConfig,
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
    /// A dial not yet through its handshake (holds one of the shard's half-open slots).
    pub half_open: bool,
    /// Where the peer accepts connections (the dialed address, or its IP with the `p` of its
    /// extension handshake), once known: its entry in the torrent's swarm (PEX).
    pub listen_addr: Option<SocketAddr>,
    /// Downloading (home shard): the peer's rate, contribution and what the picker counted.
    pub dl: crate::server::download::SlotDownload,
    /// The socket was passed to another shard: closing the slot must not shut it down.
    pub handed_off: bool,
}

impl PeerSlot {
    /// A slot for a connection to `addr` with its new session.
    pub fn new(
        addr: SocketAddr,
        stream: Rc<tokio_uring::net::TcpStream>,
        session: Session,
    ) -> Self {
        PeerSlot {
            addr,
            stream,
            torrent: None,
            session,
            wake: Rc::new(Notify::new()),
            read_wake: Rc::new(Notify::new()),
            uploaded: 0,
            uploaded_at_tick: 0,
            closing: false,
            close_reason: None,
            half_open: false,
            listen_addr: None,
            dl: Default::default(),
            handed_off: false,
        }
    }

    /// Marks the connection for closing and shuts the socket down, which completes any read or
    /// write in flight on it (we never drop an in-flight operation: see the hazards in
    /// docs/architecture.md).
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            if !self.handed_off {
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
            }
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

/// What a shard keeps of one torrent, indexed like the registry.
pub struct ShardTorrent {
    pub torrent: Arc<Torrent>,
    /// This shard's storage id for it.
    pub tid: TorrentId,
    pub choker: Choker,
    /// Connected peers of this torrent on this shard, and how many of them we dialed.
    pub peers: usize,
    pub dialed: usize,
    /// Its choker should fill free slots (a peer's interest changed): see [`filler`].
    pub fill_pending: bool,
    /// A downloading torrent whose home is another shard: the pieces this shard's peers were
    /// told about (HAVE from the tick), and how many.
    pub told: Option<(Vec<u8>, u32)>,
    /// The last round of `Torrent::recovered` this shard's peers were sent HAVE for.
    pub recovered_seen: u64,
}

/// A shard's state, shared by its tasks (single thread).
pub struct Shard {
    pub cfg: ShardConfig,
    pub registry: Arc<Registry>,
    pub pool: Rc<BufPool>,
    pub store: Rc<UringStore>,
    /// The torrents this shard knows, by registry index; extended from the registry
    /// ([`Shard::sync_torrents`]) when a torrent is added while serving.
    pub torrents: RefCell<Vec<ShardTorrent>>,
    pub peers: RefCell<Slab<PeerSlot>>,
    /// Wakes the task that runs quick choker passes ([`filler`]) at most every
    /// [`FILL_INTERVAL`].
    pub fill_wake: Notify,
    /// Outgoing connections being set up (connect and handshake not done), bounded by
    /// [`ShardConfig::max_half_open`].
    pub half_open: Cell<usize>,
    /// Wakes dials waiting for a half-open slot.
    pub half_open_wake: Notify,
    /// Pool buffers held by speculative reads (`conn::read_speculative`: a reader waiting for
    /// what is most likely a PIECE), at most `max(1, buffers / 16)`.
    pub spec_reads: Cell<usize>,
    /// Where connection events go (the control plane's dialer); `None` in tests.
    pub events: Option<tokio::sync::mpsc::Sender<ShardEvent>>,
    /// A task panicked: the shard's main task tears the shard down.
    pub failure: Rc<crate::server::shard::TaskFailure>,
    /// A stop was asked for: accept no more.
    pub stopping: Cell<bool>,
    /// The accept task has ended (its listener closed).
    pub accept_ended: Cell<bool>,
    /// The test-only panic switch is on (see `server::shard::TEST_PANIC_ENV`).
    pub test_panic: bool,
    /// The storage ring's file-table counters already added to the registry's `ServerStats`.
    pub published: Cell<(u64, u64)>,
    /// The downloads this shard is home to, by registry index.
    pub downloads: RefCell<std::collections::HashMap<usize, crate::server::download::Download>>,
    /// The splice send path's pipes (`None`: blocks are read into pool buffers and copied).
    pub pipes: Option<crate::server::splice::PipePool>,
}

/// What a shard tells the control plane about connections (for the dialer's peer list and
/// PEX). Sent with `try_send`: when the channel is full the event is dropped and counted, the
/// shard never waits on the control plane.
#[derive(Debug, Clone)]
pub enum ShardEvent {
    /// A dial to `addr` for torrent `torrent` ended: `connected` says whether the handshake
    /// completed; `seed`: the peer turned out to be a seed (not worth dialing again while we
    /// seed).
    DialDone {
        shard: usize,
        torrent: usize,
        addr: SocketAddr,
        connected: bool,
        seed: bool,
    },
    /// A connection of `torrent` we dialed to `addr` closed.
    Closed {
        shard: usize,
        torrent: usize,
        addr: SocketAddr,
        seed: bool,
    },
    /// Peers learnt from PEX for `torrent` (a download dials them). At most
    /// `session::PEX_PEERS_KEPT` per event.
    Found {
        torrent: usize,
        peers: Vec<SocketAddr>,
    },
}

/// What the control plane asks of a shard (a bounded channel per shard).
#[derive(Debug, Clone)]
pub enum ShardCmd {
    /// Dial `addr` for the torrent at registry index `torrent`.
    Dial { torrent: usize, addr: SocketAddr },
    /// Stop: close the listener, let sends in flight finish (at most `grace`), close every
    /// connection and return.
    Stop { grace: Duration },
    /// Test-only fault injection (see `server::shard::TEST_PANIC_ENV`): panic this shard.
    Panic,
}

impl Shard {
    /// Brings the shard's torrent table up to the registry's (new torrents added while
    /// serving). Cheap when nothing changed: one snapshot clone.
    pub fn sync_torrents(&self) {
        let all = self.registry.torrents();
        let mut mine = self.torrents.borrow_mut();
        for t in all.iter().skip(mine.len()) {
            let home = t
                .download
                .as_ref()
                .filter(|d| d.is_active())
                .map(|d| d.home_shard);
            let writable = home == Some(self.cfg.index);
            let tid = self
                .store
                .add_torrent(t.layout.clone(), t.root.clone(), writable);
            if writable {
                let seed = (self.cfg.index as u64) << 32
                    ^ u64::from(std::process::id())
                    ^ t.info_hash
                        .iter()
                        .fold(0u64, |a, &b| a.rotate_left(5) ^ u64::from(b));
                match crate::server::download::Download::new(
                    t.clone(),
                    tid,
                    seed,
                    self.cfg.download.hash_lanes,
                ) {
                    Ok(d) => {
                        self.downloads.borrow_mut().insert(t.index, d);
                    }
                    Err(e) => tracing::error!(torrent = %t.name, "cannot download: {e}"),
                }
            }
            let told = home
                .filter(|&h| h != self.cfg.index)
                .map(|_| (t.have.to_bytes(), t.have.count()));
            mine.push(ShardTorrent {
                torrent: t.clone(),
                tid,
                choker: Choker::new(self.cfg.upload_slots),
                peers: 0,
                dialed: 0,
                fill_pending: false,
                told,
                recovered_seen: t.recovered_gen.load(std::sync::atomic::Ordering::Acquire),
            });
        }
    }

    /// The torrent at registry index `t` (the shard has synced it).
    pub fn torrent(&self, t: usize) -> Option<Arc<Torrent>> {
        self.torrents.borrow().get(t).map(|st| st.torrent.clone())
    }

    /// This shard's storage id for torrent `t`.
    pub fn tid(&self, t: usize) -> Option<TorrentId> {
        self.torrents.borrow().get(t).map(|st| st.tid)
    }

    /// Sends a connection event to the control plane, dropping it when the channel is full.
    pub fn event(&self, e: ShardEvent) {
        if let Some(tx) = &self.events {
            if tx.try_send(e).is_err() {
                self.registry
                    .server
                    .events_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

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
        if let Some(st) = self.torrents.borrow_mut().get_mut(t) {
            if !st.fill_pending {
                st.fill_pending = true;
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
        let mut torrents = self.torrents.borrow_mut();
        let Some(st) = torrents.get_mut(t) else {
            return;
        };
        let decisions = if quick {
            st.choker.fill(now, input)
        } else {
            st.choker.tick(now, input)
        };
        let optimistic = st.choker.optimistic();
        for (key, unchoke) in decisions {
            if let Some(slot) = peers.get_mut(key) {
                // One event per decision (target `uring_bt::choker`, `RUST_LOG=uring_bt::choker=info`):
                // the lab scenario checks them against the schedule (docs/lab.md).
                tracing::info!(
                    target: "uring_bt::choker",
                    shard = self.cfg.index,
                    torrent = t,
                    peer = %slot.addr,
                    unchoke,
                    optimistic = unchoke && optimistic == Some(key),
                    pass = if !quick && st.choker.last_rechoke() == Some(now) {
                        "rechoke"
                    } else {
                        "fill"
                    },
                    "choker decision"
                );
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
        let n = shard.torrents.borrow().len();
        for t in 0..n {
            let due = shard
                .torrents
                .borrow_mut()
                .get_mut(t)
                .is_some_and(|st| std::mem::take(&mut st.fill_pending));
            if due {
                shard.rechoke(t, Instant::now(), &mut input, true);
            }
        }
        tokio::time::sleep(FILL_INTERVAL).await;
    }
}
