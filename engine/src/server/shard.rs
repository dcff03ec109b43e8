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
use uring_bt_proto::choker::ChokerPeer;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::uring::{UringConfig, UringStore};

use crate::server::registry::Registry;
use crate::server::state::{Shard, ShardCmd, ShardConfig, ShardEvent, TICK};

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

/// [`bind_listeners`] for a server that starts: the port must be ours alone. SO_REUSEPORT lets
/// any process of the same user bind the same address and port, and the kernel then spreads
/// new connections over both processes' listeners: a second `uring-bt` started by mistake on a
/// port in use would silently take part of the first one's peers (for a torrent it may not
/// even serve). So after binding, every listening TCP socket in this network namespace
/// (`/proc/net/tcp`, `/proc/net/tcp6`) on our port whose address overlaps ours and which is
/// not one of ours is a refusal (`AddrInUse`). Both of two instances racing each other see
/// the other and stop. With port 0, the kernel's pick is tried again (8 times at most).
pub fn bind_listeners_exclusive(
    addr: SocketAddr,
    n: usize,
) -> io::Result<(Vec<TcpListener>, SocketAddr)> {
    let mut tries = 0;
    loop {
        let (ls, bound) = bind_listeners(addr, n)?;
        let ours: Vec<u64> = ls.iter().filter_map(|l| socket_inode(l).ok()).collect();
        let others = foreign_listeners(bound, &ours);
        if others.is_empty() {
            return Ok((ls, bound));
        }
        drop(ls);
        tries += 1;
        if addr.port() != 0 || tries >= 8 {
            return Err(in_use(bound.port(), &others));
        }
    }
}

/// Before a long data check: an error when another process listens on `addr`'s port at an
/// overlapping address already (port 0: never), so that a busy port is reported at once, not
/// after the check. [`bind_listeners_exclusive`] still decides, after it.
pub fn port_taken(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let others = foreign_listeners(addr, &[]);
    if others.is_empty() {
        Ok(())
    } else {
        Err(in_use(addr.port(), &others))
    }
}

fn in_use(port: u16, others: &[SocketAddr]) -> io::Error {
    let mut shown: Vec<String> = others.iter().map(|a| a.to_string()).collect();
    shown.sort();
    shown.dedup();
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "port {port} is already listened on by another process ({}; SO_REUSEPORT would share \
             new connections with it): stop it or choose another --listen",
            shown.join(", ")
        ),
    )
}

/// The inode of a socket (what `/proc/net/tcp` lists it by).
fn socket_inode(l: &TcpListener) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat writes into the zeroed struct we own; the descriptor is open for `l`'s life.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(l.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_ino)
}

/// Listening TCP sockets of this network namespace on `bound`'s port, with an address that
/// overlaps it, whose inode is not in `ours`.
fn foreign_listeners(bound: SocketAddr, ours: &[u64]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (addr, inode) in parse_listeners(&text, v6) {
            if addr.port() == bound.port() && !ours.contains(&inode) && overlaps(bound, addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// Whether a listener on `theirs` takes connections meant for `ours` (a dual-stack `[::]`
/// takes IPv4 too; an IPv4-mapped IPv6 address is its IPv4 one).
fn overlaps(ours: SocketAddr, theirs: SocketAddr) -> bool {
    use std::net::IpAddr;
    let norm = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (norm(ours.ip()), norm(theirs.ip()));
    if a == b {
        return true;
    }
    match (a, b) {
        // Ours is dual-stack (only_v6 off): every address of either family.
        (IpAddr::V6(x), _) if x.is_unspecified() => true,
        (_, IpAddr::V6(y)) if y.is_unspecified() => a.is_ipv6(),
        (IpAddr::V4(x), IpAddr::V4(y)) => x.is_unspecified() || y.is_unspecified(),
        _ => false,
    }
}

/// The `(local address, inode)` of each LISTEN (state 0A) line of `/proc/net/tcp` (`v6`:
/// `/proc/net/tcp6`). Addresses are the kernel's 32-bit words in host byte order, in hex.
fn parse_listeners(text: &str, v6: bool) -> Vec<(SocketAddr, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 || cols[3] != "0A" {
            continue;
        }
        let Some((ip_hex, port_hex)) = cols[1].split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port_hex, 16), cols[9].parse::<u64>())
        else {
            continue;
        };
        let words: Option<Vec<u32>> = (0..ip_hex.len() / 8)
            .map(|i| {
                ip_hex
                    .get(i * 8..i * 8 + 8)
                    .and_then(|w| u32::from_str_radix(w, 16).ok())
            })
            .collect();
        let ip: std::net::IpAddr = match (words.as_deref(), v6) {
            (Some(&[w]), false) => std::net::Ipv4Addr::from(w.to_ne_bytes()).into(),
            (Some(&[a, b, c, d]), true) => {
                let mut bytes = [0u8; 16];
                for (i, w) in [a, b, c, d].into_iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                std::net::Ipv6Addr::from(bytes).into()
            }
            _ => continue,
        };
        out.push((SocketAddr::new(ip, port), inode));
    }
    out
}

/// How a shard thread ended (for the supervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardExit {
    /// Stopped on request ([`ShardCmd::Stop`]).
    Stopped,
    /// Could not start, or its runtime failed.
    Failed(String),
    /// A task of the shard panicked: the shard was torn down (its connections closed, its
    /// ring drained) and must be restarted.
    Panicked(String),
}

impl std::fmt::Display for ShardExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardExit::Stopped => f.write_str("stopped"),
            ShardExit::Failed(e) => f.write_str(e),
            ShardExit::Panicked(e) => write!(f, "panicked: {e}"),
        }
    }
}

/// Test-only fault injection: with this environment variable set to `1`, a peer whose
/// handshake's peer id starts with `-XPANIC` and a digit `d` makes shard `d` panic if it lands
/// there (it is closed otherwise). Read once per shard start; never set in production.
pub const TEST_PANIC_ENV: &str = "URING_BT_TEST_PANIC";

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Starts a shard on a thread of its own. `ready` receives `Ok` once the shard serves, or the
/// reason it could not start; `on_exit` is called once, on the shard's thread, when it ends,
/// however it ends (a panic is caught there: the release profile unwinds, see
/// docs/architecture.md, "Panics").
pub fn spawn(
    cfg: ShardConfig,
    registry: Arc<Registry>,
    listener: TcpListener,
    cmds: tokio::sync::mpsc::Receiver<ShardCmd>,
    events: Option<tokio::sync::mpsc::Sender<ShardEvent>>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
    on_exit: Box<dyn FnOnce(ShardExit) + Send>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("shard-{}", cfg.index))
        .spawn(move || {
            if let Some(cpu) = cfg.pin_cpu {
                crate::server::affinity::pin_shard_thread(cfg.index, cpu);
            }
            let entries = cfg.ring_entries.max(64);
            let index = cfg.index;
            let ready2 = ready.clone();
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                // Not `Builder::start`, which unwraps the ring's error (a panic that reads as a
                // bug when io_uring is refused or RLIMIT_MEMLOCK is too low).
                let rt = tokio_uring::Runtime::new(tokio_uring::builder().entries(entries))
                    .map_err(|e| {
                        ShardExit::Failed(format!(
                            "shard {index}: {}",
                            crate::server::limits::io_uring_refused(
                                &e,
                                crate::server::limits::memlock_charged()
                            )
                        ))
                    })?;
                rt.block_on(run(cfg, registry, listener, cmds, events, ready2))
            }));
            let exit = match res {
                Ok(Ok(())) => ShardExit::Stopped,
                Ok(Err(e)) => {
                    let _ = ready.try_send(Err(format!("{e}")));
                    e
                }
                Err(p) => {
                    let text = panic_text(p.as_ref());
                    // A panic before the shard served: the starter is told why (after it served,
                    // nobody listens and this is a no-op).
                    let _ = ready.try_send(Err(format!(
                        "shard {index} panicked while starting: {text}"
                    )));
                    ShardExit::Panicked(text)
                }
            };
            tracing::debug!(shard = index, "shard ended: {exit:?}");
            on_exit(exit);
        })
}

/// Failure of a task of the shard: the first panic's text, and a wake for the shard's main
/// task, which then tears the shard down.
#[derive(Default)]
pub struct TaskFailure {
    text: RefCell<Option<String>>,
    wake: tokio::sync::Notify,
}

impl TaskFailure {
    fn set(&self, text: String) {
        let mut t = self.text.borrow_mut();
        if t.is_none() {
            *t = Some(text);
        }
        self.wake.notify_one();
    }
}

/// Spawns a task of the shard whose panic fails the whole shard (instead of silently ending
/// that task and leaving its connection's slot behind, as tokio's `LocalSet` would).
pub fn spawn_task<F>(shard: &Rc<Shard>, fut: F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    let failure = shard.failure.clone();
    tokio_uring::spawn(async move {
        let mut fut = std::pin::pin!(fut);
        let res = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                Ok(p) => p.map(|()| None),
                Err(payload) => std::task::Poll::Ready(Some(panic_text(payload.as_ref()))),
            }
        })
        .await;
        if let Some(text) = res {
            failure.set(text);
        }
    });
}

async fn run(
    cfg: ShardConfig,
    registry: Arc<Registry>,
    listener: TcpListener,
    mut cmds: tokio::sync::mpsc::Receiver<ShardCmd>,
    events: Option<tokio::sync::mpsc::Sender<ShardEvent>>,
    ready: std::sync::mpsc::SyncSender<Result<(), String>>,
) -> Result<(), ShardExit> {
    let index = cfg.index;
    let pool = BufPool::new(cfg.buffers, uring_bt_proto::wire::BLOCK_SIZE as usize)
        .map_err(|e| ShardExit::Failed(format!("shard {index}: buffer pool: {e}")))?;
    let store = UringStore::new(
        UringConfig {
            ring_entries: cfg.ring_entries,
            max_open_files: cfg.max_open_files,
            ..UringConfig::default()
        },
        pool.clone(),
    )
    .map_err(|e| ShardExit::Failed(format!("shard {index}: storage ring: {e}")))?;
    let test_panic = std::env::var(TEST_PANIC_ENV).is_ok_and(|v| v == "1");
    let shard = Rc::new(Shard {
        torrents: RefCell::new(Vec::new()),
        fill_wake: tokio::sync::Notify::new(),
        peers: RefCell::new(Slab::with_capacity(cfg.max_peers.min(4096))),
        published: std::cell::Cell::new((0, 0)),
        downloads: RefCell::new(std::collections::HashMap::new()),
        half_open: std::cell::Cell::new(0),
        half_open_wake: tokio::sync::Notify::new(),
        spec_reads: std::cell::Cell::new(0),
        events,
        failure: Rc::new(TaskFailure::default()),
        stopping: std::cell::Cell::new(false),
        accept_ended: std::cell::Cell::new(false),
        test_panic,
        pipes: (cfg.splice_pipes > 0)
            .then(|| crate::server::splice::PipePool::new(cfg.splice_pipes)),
        cfg,
        registry,
        pool,
        store,
    });
    shard.sync_torrents();
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    let listen_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    spawn_task(&shard, ticker(shard.clone()));
    spawn_task(&shard, crate::server::state::filler(shard.clone()));
    spawn_task(&shard, accept_loop(shard.clone(), listener));
    let (handoff_tx, mut handoffs) =
        tokio::sync::mpsc::channel(crate::server::registry::HANDOFF_QUEUE);
    shard.registry.set_handoff(index, handoff_tx);
    let _ = ready.try_send(Ok(()));
    loop {
        tokio::select! {
            Some(h) = handoffs.recv() => {
                spawn_task(&shard, crate::server::conn::adopt(shard.clone(), h));
            }
            cmd = cmds.recv() => match cmd {
                Some(ShardCmd::Dial { torrent, addr }) => {
                    spawn_task(&shard, crate::server::conn::dial(shard.clone(), torrent, addr));
                }
                Some(ShardCmd::Stop { grace }) => {
                    stop(&shard, listen_fd, grace).await;
                    return Ok(());
                }
                Some(ShardCmd::Panic) => {
                    close_listener(&shard, listen_fd).await;
                    forget_connections(&shard);
                    panic!("shard {index}: injected panic (test switch)")
                }
                // The control plane is gone: stop as for a Stop.
                None => {
                    stop(&shard, listen_fd, Duration::from_secs(1)).await;
                    return Ok(());
                }
            },
            () = shard.failure.wake.notified() => {
                close_listener(&shard, listen_fd).await;
                forget_connections(&shard);
                let text = shard.failure.text.borrow().clone().unwrap_or_default();
                return Err(ShardExit::Panicked(text));
            }
        }
    }
}

/// A task panicked: the runtime is about to drop every connection's tasks without their
/// clean-up, so what they counted in the shared registry is undone here (peers per torrent,
/// dialed peers, swarm entries for PEX, this shard's peer count).
fn forget_connections(shard: &Shard) {
    use std::sync::atomic::Ordering::Relaxed;
    let Ok(peers) = shard.peers.try_borrow() else {
        return;
    };
    for (_, slot) in peers.iter() {
        let Some(t) = slot.torrent else {
            continue;
        };
        let Some(torrent) = shard.torrent(t) else {
            continue;
        };
        torrent.stats.peers.fetch_sub(1, Relaxed);
        if slot.session.is_outbound() {
            torrent.stats.peers_dialed.fetch_sub(1, Relaxed);
        }
        if let Some(listen) = slot.listen_addr {
            if let Ok(mut sw) = torrent.swarm.lock() {
                sw.remove(&listen);
            }
        }
    }
    if let Some(n) = shard.registry.server.shard_peers.get(shard.cfg.index) {
        n.store(0, Relaxed);
    }
}

/// Stops accepting and waits (at most 1 s) for the accept task to end. The accept in flight
/// must complete inside this runtime: were the runtime torn down with it pending, a connection
/// the kernel accepts at that moment would be discarded by tokio-uring's driver without being
/// closed (a leaked socket, and a peer left waiting).
async fn close_listener(shard: &Rc<Shard>, listen_fd: std::os::fd::RawFd) {
    shard.stopping.set(true);
    // SAFETY: `listen_fd` is the listener's descriptor, alive until the accept task (which owns
    // the listener) ends; shutdown(2) only makes its pending accept fail, it frees nothing.
    unsafe {
        libc::shutdown(listen_fd, libc::SHUT_RDWR);
    }
    let until = Instant::now() + Duration::from_secs(1);
    while !shard.accept_ended.get() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A clean stop: no more accepts; sends in flight get up to `grace` to finish; then every
/// connection is closed and its tasks end (bounded wait) before the runtime goes away.
async fn stop(shard: &Rc<Shard>, listen_fd: std::os::fd::RawFd, grace: Duration) {
    close_listener(shard, listen_fd).await;
    let until = Instant::now() + grace;
    while Instant::now() < until {
        let busy = shard
            .peers
            .borrow()
            .iter()
            .any(|(_, s)| !s.closing && s.session.is_writing());
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (_, slot) in shard.peers.borrow_mut().iter_mut() {
        slot.close();
    }
    let until = Instant::now() + Duration::from_secs(2);
    while !shard.peers.borrow().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Downloads: writes still in flight finish (at most 2 s), then the pieces in progress
    // are kept for the resume data.
    let until = Instant::now() + Duration::from_secs(2);
    while crate::server::download::writes_in_flight(shard) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crate::server::download::save_partials(shard);
}

async fn accept_loop(shard: Rc<Shard>, listener: tokio_uring::net::TcpListener) {
    loop {
        let res = listener.accept().await;
        if shard.stopping.get() {
            // A connection accepted at this moment is closed here (dropped), with the listener.
            drop(res);
            drop(listener);
            shard.accept_ended.set(true);
            return;
        }
        match res {
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
                spawn_task(
                    &shard,
                    crate::server::conn::run(shard.clone(), stream, addr),
                );
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
/// stalled writes, keep-alives), the PEX and swarm bookkeeping, then the chokers.
async fn ticker(shard: Rc<Shard>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut choker_input: Vec<ChokerPeer> = Vec::new();
    loop {
        interval.tick().await;
        shard.sync_torrents();
        let now = Instant::now();
        crate::server::conn::tick_sessions(&shard, now);
        crate::server::download::tick(&shard, now);
        crate::server::download::tell_haves(&shard);
        crate::server::download::tell_recovered(&shard);
        let n = shard.torrents.borrow().len();
        for t in 0..n {
            shard.rechoke(t, now, &mut choker_input, false);
        }
        shard.publish_stats();
        if let Some(n) = shard.registry.server.shard_peers.get(shard.cfg.index) {
            n.store(
                shard.peers.borrow().len(),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_are_parsed() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1078 1 0 100 0 0 10 0\n\
   1: 0100007F:1F91 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 1079 1 0 100 0 0 10 0\n";
        let want: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(parse_listeners(v4, false), vec![(want, 1078)]);
        }
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2000 1 0 100 0 0 10 0\n\
   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0 100 0 0 10 0\n\
   2: garbage\n";
        let got = parse_listeners(v6, true);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("[::]:8080".parse().unwrap(), 2000));
        if cfg!(target_endian = "little") {
            assert_eq!(got[1], ("[::ffff:127.0.0.1]:8080".parse().unwrap(), 2001));
        }
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("127.0.0.1:1"), a("0.0.0.0:1")));
        assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.2:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(overlaps(a("[::]:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("127.0.0.1:1"), a("[::ffff:127.0.0.1]:1")));
        assert!(overlaps(a("[::1]:1"), a("[::]:1")));
        assert!(!overlaps(a("[::1]:1"), a("127.0.0.1:1")));
    }

    #[test]
    fn a_port_shared_through_so_reuseport_is_refused() {
        // Ours alone: accepted, and both shards' sockets are recognised as ours.
        let (ls, bound) = bind_listeners_exclusive("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(ls.len(), 2);
        // Someone else (a socket that is not among the new ones) on the same port, as a
        // second instance would be: bind succeeds through SO_REUSEPORT, the check refuses.
        let err = bind_listeners_exclusive(bound, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("port {} is already listened on", bound.port()))
                && msg.contains(&bound.to_string()),
            "{msg}"
        );
        // The wildcard overlaps it too.
        let any: SocketAddr = format!("0.0.0.0:{}", bound.port()).parse().unwrap();
        assert!(bind_listeners_exclusive(any, 1).is_err());
        // A shard's restart joins its own port without the check.
        assert!(bind_listeners(bound, 1).is_ok());
        drop(ls);
        assert!(bind_listeners_exclusive(bound, 1).is_ok());
    }
}
