//! Shards: the data plane. One thread per core, pinned, each running its own tokio-uring runtime.
//!
//! A shard owns, and shares with no other thread: its SO_REUSEPORT listener, a slab of peer
//! connections, its buffer pool and its storage ring (with the LRU-capped registered-file table),
//! and one choker per torrent. It reads the registry (`Arc<Registry>`: immutable lookups, atomic
//! piece bits and counters) and nothing else. Futures are `!Send`; state is `Rc<RefCell<..>>`
//! borrowed only between awaits, never across one.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::TorrentId;
use uring_bt_storage::uring::{UringConfig, UringStore};

use crate::choker::{Choker, ChokerPeer};
use crate::peer::Peer;
use crate::registry::Registry;

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
    /// Requests queued per peer (advertised as `reqq`).
    pub reqq: u32,
    /// A connection that has not completed its handshake by then is closed.
    pub handshake_timeout: Duration,
    /// A connection that sent nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Submission queue entries of the storage ring.
    pub ring_entries: u32,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// The port we listen on (for the extension handshake's `p`).
    pub listen_port: u16,
    /// Requests served per batch (reads submitted together, pieces sent in one writev).
    pub batch: usize,
    /// Most contiguous blocks read with one vectored read.
    pub coalesce: usize,
}

/// How long between two keep-alives we send on an otherwise quiet connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
/// The shard's housekeeping period (timeouts, choker, keep-alives).
pub const TICK: Duration = Duration::from_secs(1);

/// One connected peer, as the shard sees it.
pub(crate) struct PeerSlot {
    pub addr: SocketAddr,
    pub stream: Rc<tokio_uring::net::TcpStream>,
    /// Registry index of the torrent, once the handshake named one.
    pub torrent: Option<usize>,
    /// The protocol state machine, once the handshake is done.
    pub peer: Option<Peer>,
    /// Encoded control messages waiting for the writer (bounded by the peer state machine's
    /// own limits: a handful of small messages per received message).
    pub out: Vec<u8>,
    /// Wakes the writer: control bytes queued, a request queued, or the connection closing.
    pub wake: Rc<Notify>,
    pub connected_at: Instant,
    pub last_recv: Instant,
    pub last_send: Instant,
    /// When the write in flight started (a peer that stops reading stalls it).
    pub writing_since: Option<Instant>,
    /// Payload bytes sent, and the value at the previous choker tick.
    pub uploaded: u64,
    pub uploaded_at_tick: u64,
    pub closing: bool,
}

impl PeerSlot {
    /// Marks the connection for closing and shuts the socket down, which completes any read or
    /// write in flight on it (we never drop an in-flight operation: see DESIGN.md, hazards).
    pub fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.wake.notify_one();
    }
}

/// Counters of one shard, for tests and the status line.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub accepted: Cell<u64>,
    pub refused_full: Cell<u64>,
}

/// A shard's state, shared by its tasks (single thread).
pub(crate) struct Shard {
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
    pub counters: ShardCounters,
}

/// Binds `n` listeners on `addr` with SO_REUSEPORT (the kernel spreads inbound connections over
/// them). With port 0 the first socket picks the port and the others join it. Returns them with
/// the real address.
pub fn bind_listeners(addr: SocketAddr, n: usize) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        if bound.is_ipv6() {
            s.set_only_v6(false).ok();
        }
        s.bind(&bound.into())?;
        s.listen(1024)?;
        let l: TcpListener = s.into();
        bound = l.local_addr()?;
        out.push(l);
    }
    Ok((out, bound))
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it, and sched_setaffinity
    // reads `size_of::<cpu_set_t>()` bytes of it for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts a shard on a thread of its own. `ready` receives `Ok` once the shard serves, or the
/// reason it could not start.
pub fn spawn(
    cfg: ShardConfig,
    registry: Arc<Registry>,
    listener: TcpListener,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("shard-{}", cfg.index))
        .spawn(move || {
            if let Some(cpu) = cfg.pin_cpu {
                if let Err(e) = pin_to_cpu(cpu) {
                    tracing::warn!(shard = cfg.index, cpu, "could not pin shard: {e}");
                }
            }
            let entries = cfg.ring_entries.max(64);
            let res = tokio_uring::builder().entries(entries).start(run(
                cfg,
                registry,
                listener,
                ready.clone(),
            ));
            if let Err(e) = res {
                let _ = ready.try_send(Err(e));
            }
        })
}

async fn run(
    cfg: ShardConfig,
    registry: Arc<Registry>,
    listener: TcpListener,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) -> Result<(), String> {
    let index = cfg.index;
    let pool = BufPool::new(cfg.buffers, crate::wire::BLOCK_SIZE as usize)
        .map_err(|e| format!("shard {index}: buffer pool: {e}"))?;
    let store = UringStore::new(
        UringConfig {
            ring_entries: cfg.ring_entries,
            max_open_files: cfg.max_open_files,
            ..UringConfig::default()
        },
        pool.clone(),
    )
    .map_err(|e| format!("shard {index}: storage ring: {e}"))?;
    let tids = registry
        .torrents()
        .iter()
        .map(|t| store.add_torrent(t.layout.clone(), t.root.clone(), false))
        .collect();
    let n = registry.torrents().len();
    let shard = Rc::new(Shard {
        chokers: RefCell::new((0..n).map(|_| Choker::new(cfg.upload_slots)).collect()),
        torrent_peers: RefCell::new(vec![0; n]),
        peers: RefCell::new(Slab::with_capacity(cfg.max_peers.min(4096))),
        counters: ShardCounters::default(),
        cfg,
        registry,
        pool,
        store,
        tids,
    });
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    tokio_uring::spawn(ticker(shard.clone()));
    let _ = ready.try_send(Ok(()));
    accept_loop(shard, listener).await;
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: tokio_uring::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let full = shard.peers.borrow().len() >= shard.cfg.max_peers;
                if full {
                    shard
                        .counters
                        .refused_full
                        .set(shard.counters.refused_full.get() + 1);
                    drop(stream); // closes it
                    continue;
                }
                shard
                    .counters
                    .accepted
                    .set(shard.counters.accepted.get() + 1);
                tokio_uring::spawn(crate::conn::run(shard.clone(), stream, addr));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: out of a resource; back off instead of spinning.
                tracing::warn!(shard = shard.cfg.index, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Housekeeping once per [`TICK`]: timeouts, keep-alives, the chokers.
async fn ticker(shard: Rc<Shard>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut choker_input: Vec<ChokerPeer> = Vec::new();
    loop {
        interval.tick().await;
        let now = Instant::now();
        let mut peers = shard.peers.borrow_mut();
        for (_, slot) in peers.iter_mut() {
            if slot.closing {
                continue;
            }
            let timed_out = if slot.peer.is_none() {
                now.duration_since(slot.connected_at) > shard.cfg.handshake_timeout
            } else {
                now.duration_since(slot.last_recv) > shard.cfg.idle_timeout
            };
            let stalled = slot
                .writing_since
                .is_some_and(|t| now.duration_since(t) > shard.cfg.idle_timeout);
            if timed_out || stalled {
                slot.close();
                continue;
            }
            if slot.peer.is_some() && now.duration_since(slot.last_send) > KEEPALIVE_INTERVAL {
                crate::wire::encode(&crate::wire::Message::KeepAlive, &mut slot.out);
                slot.last_send = now;
                slot.wake.notify_one();
            }
        }
        drop(peers);
        for t in 0..shard.registry.torrents().len() {
            rechoke(&shard, t, now, &mut choker_input, false);
        }
    }
}

/// Runs torrent `t`'s choker over this shard's peers and applies its decisions. `quick`: only
/// fill free slots (a peer just became interested), no rotation.
pub(crate) fn rechoke(
    shard: &Shard,
    t: usize,
    now: Instant,
    input: &mut Vec<ChokerPeer>,
    quick: bool,
) {
    input.clear();
    let mut peers = shard.peers.borrow_mut();
    for (key, slot) in peers.iter_mut() {
        if slot.torrent != Some(t) || slot.closing {
            continue;
        }
        let Some(peer) = slot.peer.as_ref() else {
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
    let mut chokers = shard.chokers.borrow_mut();
    let decisions = if quick {
        chokers[t].fill(now, input)
    } else {
        chokers[t].tick(now, input)
    };
    for (key, unchoke) in decisions {
        if let Some(slot) = peers.get_mut(key) {
            crate::conn::set_choked(slot, !unchoke);
        }
    }
}
