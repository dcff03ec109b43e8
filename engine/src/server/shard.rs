//! Shards: the data plane. One thread per core, pinned, each running its own tokio-uring runtime.
//!
//! A shard owns, and shares with no other thread: its SO_REUSEPORT listener, a slab of peer
//! connections, its buffer pool and its storage ring (with the LRU-capped registered-file table),
//! and one choker per torrent. It reads the registry (`Arc<Registry>`: immutable lookups, atomic
//! piece bits and counters) and nothing else. Futures are `!Send`; state is `Rc<RefCell<..>>`
//! borrowed only between awaits, never across one.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use uring_bt_proto::choker::{Choker, ChokerPeer};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::uring::{UringConfig, UringStore};

use crate::server::registry::Registry;
use crate::server::state::{Shard, ShardConfig, TICK};

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
                crate::server::affinity::pin_shard_thread(cfg.index, cpu);
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
    let pool = BufPool::new(cfg.buffers, uring_bt_proto::wire::BLOCK_SIZE as usize)
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
        fill_pending: RefCell::new(vec![false; n]),
        fill_wake: tokio::sync::Notify::new(),
        peers: RefCell::new(Slab::with_capacity(cfg.max_peers.min(4096))),
        published: std::cell::Cell::new((0, 0)),
        cfg,
        registry,
        pool,
        store,
        tids,
    });
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    tokio_uring::spawn(ticker(shard.clone()));
    tokio_uring::spawn(crate::server::state::filler(shard.clone()));
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
                        .registry
                        .server
                        .refused_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(stream); // closes it
                    continue;
                }
                shard
                    .registry
                    .server
                    .accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio_uring::spawn(crate::server::conn::run(shard.clone(), stream, addr));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: out of a resource; back off instead of spinning.
                shard
                    .registry
                    .server
                    .accept_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(shard = shard.cfg.index, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Housekeeping once per [`TICK`]: every session's timers (handshake and idle timeouts,
/// stalled writes, keep-alives), then the chokers.
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
            match slot.session.on_tick(now) {
                Ok(true) => slot.wake.notify_one(),
                Ok(false) => {}
                Err(reason) => slot.close_for(reason),
            }
        }
        drop(peers);
        for t in 0..shard.registry.torrents().len() {
            shard.rechoke(t, now, &mut choker_input, false);
        }
        shard.publish_stats();
    }
}
