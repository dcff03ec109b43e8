//! UDP trackers (BEP 15): one socket for every UDP tracker, a reader task routing replies.
//!
//! The socket is dual-stack `[::]:0` (IPv6 with `IPV6_V6ONLY` off, so IPv4 trackers are
//! reached as v4-mapped addresses), else `0.0.0.0:0`. Each request registers a random
//! transaction id with a small channel; the reader task hands a datagram to the request whose
//! transaction id it carries, when it came from the address that request was sent to, and
//! drops every other datagram. The request decodes it with the codec and ignores replies the
//! codec rejects (another action, a wrong size), waiting on until its timer runs out.
//!
//! A connect gives a connection id, cached per resolved tracker address and reused for
//! [`CONNECTION_ID_LIFETIME`]. The tries of one request (connect included) share BEP 15's
//! schedule: the n-th try waits `base x 2^n`, for n in `0..=max_retransmit`; a connection id
//! that expires meanwhile is asked for again on the same schedule.
//!
//! Bounds: [`MAX_PENDING`] requests in flight (more: an error at once); [`MAX_CONNECTION_IDS`]
//! cached ids; datagrams queued per request: [`QUEUED_PER_REQUEST`] (more are dropped);
//! datagrams above [`MAX_REPLY`] bytes dropped; DNS bounded by `connect_timeout`; the
//! retransmit count clamped to [`MAX_RETRANSMIT`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use uring_bt_proto::tracker::udp as codec;
use uring_bt_proto::tracker::udp::{Action, Reply};
pub use uring_bt_proto::tracker::udp::{CONNECTION_ID_LIFETIME, MAX_REPLY, MAX_RETRANSMIT};

use super::{ClientConfig, Rng};
use crate::control::tracker::{AnnounceRequest, AnnounceResponse, ScrapeStats, TrackerError};

/// UDP requests in flight at once (each holds a transaction id).
pub const MAX_PENDING: usize = 4096;
/// Connection ids cached (one per tracker address).
pub const MAX_CONNECTION_IDS: usize = 4096;
/// Datagrams queued for one request before the reader drops more.
pub const QUEUED_PER_REQUEST: usize = 8;
/// Receive buffer asked for the socket (best effort).
pub const RECV_BUFFER: usize = 1 << 20;

struct Waiter {
    /// The tracker's address, normalized (v4-mapped addresses as IPv4).
    from: SocketAddr,
    tx: mpsc::Sender<Vec<u8>>,
}

struct Shared {
    pending: HashMap<u32, Waiter>,
    conn_ids: HashMap<SocketAddr, (u64, Instant)>,
    rng: Rng,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The UDP tracker client.
pub(crate) struct UdpTracker {
    socket: Arc<UdpSocket>,
    /// The socket is IPv6 (dual-stack): IPv4 targets are sent to as v4-mapped.
    v6_socket: bool,
    shared: Arc<Mutex<Shared>>,
    reader: tokio::task::JoinHandle<()>,
    base: Duration,
    max_retransmit: u32,
    dns_timeout: Duration,
}

impl Drop for UdpTracker {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn bind_socket(local: Option<std::net::IpAddr>) -> std::io::Result<(std::net::UdpSocket, bool)> {
    use socket2::{Domain, Protocol, Socket, Type};
    if let Some(ip) = local {
        // Announces leave from our listening address (IPv4 or IPv6 trackers only, as it is).
        let domain = if ip.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&SocketAddr::new(ip, 0).into())?;
        let _ = s.set_recv_buffer_size(RECV_BUFFER);
        s.set_nonblocking(true)?;
        return Ok((s.into(), ip.is_ipv6()));
    }
    let dual = (|| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())?;
        Ok(s)
    })();
    let (sock, v6) = match dual {
        Ok(s) => (s, true),
        Err(e) => {
            tracing::debug!("no dual-stack UDP socket ({e}); UDP trackers over IPv4 only");
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
            (s, false)
        }
    };
    let _ = sock.set_recv_buffer_size(RECV_BUFFER);
    sock.set_nonblocking(true)?;
    Ok((sock.into(), v6))
}

/// `a` with a v4-mapped IPv6 address turned into IPv4 (and no flow info / scope).
fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
        },
        v4 => v4,
    }
}

impl UdpTracker {
    pub(crate) fn new(cfg: &ClientConfig) -> std::io::Result<UdpTracker> {
        let (std_sock, v6_socket) = bind_socket(cfg.local_ip)?;
        let socket = Arc::new(UdpSocket::from_std(std_sock)?);
        let shared = Arc::new(Mutex::new(Shared {
            pending: HashMap::new(),
            conn_ids: HashMap::new(),
            rng: Rng::from_os(),
        }));
        let reader = tokio::spawn(read_loop(socket.clone(), shared.clone()));
        Ok(UdpTracker {
            socket,
            v6_socket,
            shared,
            reader,
            base: cfg.udp_base_timeout,
            max_retransmit: cfg.udp_max_retransmit.min(MAX_RETRANSMIT),
            dns_timeout: cfg.connect_timeout,
        })
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) async fn announce(
        &self,
        url: &str,
        req: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let reply = self
            .request(
                url,
                |cid, tid| codec::announce_request(cid, tid, req).to_vec(),
                Action::Announce,
                0,
            )
            .await?;
        match reply {
            Reply::Announce(r) => Ok(r),
            other => Err(TrackerError::Malformed(format!(
                "unexpected reply to an announce: {other:?}"
            ))),
        }
    }

    pub(crate) async fn scrape(
        &self,
        url: &str,
        info_hash: [u8; 20],
    ) -> Result<ScrapeStats, TrackerError> {
        let hashes = [info_hash];
        let reply = self
            .request(
                url,
                |cid, tid| {
                    let mut out = Vec::with_capacity(16 + 20);
                    codec::scrape_request(cid, tid, &hashes, &mut out);
                    out
                },
                Action::Scrape,
                1,
            )
            .await?;
        match reply {
            Reply::Scrape(v) => v.first().copied().ok_or_else(|| {
                TrackerError::Malformed("a scrape reply without the torrent".into())
            }),
            other => Err(TrackerError::Malformed(format!(
                "unexpected reply to a scrape: {other:?}"
            ))),
        }
    }

    /// The tracker's address from a `udp://host:port[/...]` URL.
    async fn resolve(&self, url: &str) -> Result<SocketAddr, TrackerError> {
        let (host, port) = parse_udp_url(url)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.usable(url, vec![SocketAddr::new(ip, port)]);
        }
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addrs = match tokio::time::timeout(self.dns_timeout, lookup).await {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                return Err(TrackerError::Transport(format!(
                    "cannot resolve {host}: {e}"
                )))
            }
            Err(_) => {
                return Err(TrackerError::Transport(format!(
                    "cannot resolve {host}: no answer within {:?}",
                    self.dns_timeout
                )))
            }
        };
        self.usable(url, addrs)
    }

    /// The address to use among `addrs`: the first IPv4 one, else the first IPv6 one when the
    /// socket is dual-stack.
    fn usable(&self, url: &str, addrs: Vec<SocketAddr>) -> Result<SocketAddr, TrackerError> {
        let addrs: Vec<SocketAddr> = addrs.into_iter().map(normalize).collect();
        if let Some(a) = addrs.iter().find(|a| a.is_ipv4()) {
            return Ok(*a);
        }
        match addrs.first() {
            Some(a) if self.v6_socket => Ok(*a),
            Some(_) => Err(TrackerError::Transport(format!(
                "{url}: IPv6 only, and this host has no IPv6 UDP socket"
            ))),
            None => Err(TrackerError::Transport(format!("{url}: no address"))),
        }
    }

    fn cached_id(&self, addr: SocketAddr) -> Option<(u64, Instant)> {
        let g = lock(&self.shared);
        g.conn_ids
            .get(&addr)
            .copied()
            .filter(|(_, at)| at.elapsed() < CONNECTION_ID_LIFETIME)
    }

    fn cache_id(&self, addr: SocketAddr, id: u64, at: Instant) {
        let mut g = lock(&self.shared);
        if g.conn_ids.len() >= MAX_CONNECTION_IDS && !g.conn_ids.contains_key(&addr) {
            g.conn_ids
                .retain(|_, (_, t)| t.elapsed() < CONNECTION_ID_LIFETIME);
            if g.conn_ids.len() >= MAX_CONNECTION_IDS {
                if let Some(k) = g.conn_ids.keys().next().copied() {
                    g.conn_ids.remove(&k);
                }
            }
        }
        g.conn_ids.insert(addr, (id, at));
    }

    fn forget_id(&self, addr: SocketAddr, id: u64) {
        let mut g = lock(&self.shared);
        if g.conn_ids.get(&addr).is_some_and(|(c, _)| *c == id) {
            g.conn_ids.remove(&addr);
        }
    }

    /// Registers a fresh random transaction id for a request to `addr`.
    fn register(&self, addr: SocketAddr) -> Result<PendingGuard, TrackerError> {
        let mut g = lock(&self.shared);
        if g.pending.len() >= MAX_PENDING {
            return Err(TrackerError::Transport(format!(
                "too many UDP tracker requests in flight ({MAX_PENDING})"
            )));
        }
        let mut txid = g.rng.next_u32();
        while g.pending.contains_key(&txid) {
            txid = g.rng.next_u32();
        }
        let (tx, rx) = mpsc::channel(QUEUED_PER_REQUEST);
        g.pending.insert(txid, Waiter { from: addr, tx });
        Ok(PendingGuard {
            shared: self.shared.clone(),
            txid,
            rx,
        })
    }

    fn target(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.v6_socket => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            a => a,
        }
    }

    /// One request (`build(connection_id, transaction_id)`) and its reply, connecting first
    /// when no fresh connection id is cached.
    async fn request(
        &self,
        url: &str,
        build: impl Fn(u64, u32) -> Vec<u8> + Sync,
        expected: Action,
        scraped: usize,
    ) -> Result<Reply, TrackerError> {
        let addr = self.resolve(url).await?;
        let v6 = addr.is_ipv6();
        let mut n = 0u32;
        let started = Instant::now();
        loop {
            let (cid, got_at) = match self.cached_id(addr) {
                Some(c) => c,
                None => {
                    let sent_at = Instant::now();
                    match self
                        .exchange(
                            addr,
                            v6,
                            &|_, t| codec::connect_request(t).to_vec(),
                            0,
                            Action::Connect,
                            0,
                            &mut n,
                            None,
                            started,
                        )
                        .await?
                    {
                        Outcome::Reply(Reply::Connect { connection_id }) => {
                            // The id's lifetime counts from when we asked for it.
                            self.cache_id(addr, connection_id, sent_at);
                            (connection_id, sent_at)
                        }
                        Outcome::Reply(Reply::Error(m)) => return Err(TrackerError::Failure(m)),
                        Outcome::Reply(other) => {
                            return Err(TrackerError::Malformed(format!(
                                "unexpected reply to a connect: {other:?}"
                            )))
                        }
                        Outcome::Expired => continue,
                    }
                }
            };
            match self
                .exchange(
                    addr,
                    v6,
                    &build,
                    cid,
                    expected,
                    scraped,
                    &mut n,
                    Some(got_at + CONNECTION_ID_LIFETIME),
                    started,
                )
                .await?
            {
                Outcome::Reply(Reply::Error(m)) => {
                    // Often "connection id mismatch": ask for a fresh id next time.
                    self.forget_id(addr, cid);
                    return Err(TrackerError::Failure(m));
                }
                Outcome::Reply(r) => return Ok(r),
                Outcome::Expired => {
                    self.forget_id(addr, cid);
                    continue;
                }
            }
        }
    }

    /// Sends `build(cid, txid)` and retransmits it on BEP 15's schedule (continuing at try
    /// `*n`) until a reply the codec accepts arrives. `Expired` when the connection id would
    /// be past `expires` at a retransmission.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        addr: SocketAddr,
        v6: bool,
        build: &(dyn Fn(u64, u32) -> Vec<u8> + Sync),
        cid: u64,
        expected: Action,
        scraped: usize,
        n: &mut u32,
        expires: Option<Instant>,
        started: Instant,
    ) -> Result<Outcome, TrackerError> {
        let mut pending = self.register(addr)?;
        let msg = build(cid, pending.txid);
        let target = self.target(addr);
        let mut first = true;
        loop {
            if *n > self.max_retransmit {
                return Err(TrackerError::Transport(format!(
                    "no reply from {addr} after {} tries in {:.1?}",
                    self.max_retransmit + 1,
                    started.elapsed()
                )));
            }
            if !first && expires.is_some_and(|e| Instant::now() >= e) {
                return Ok(Outcome::Expired);
            }
            first = false;
            self.socket
                .send_to(&msg, target)
                .await
                .map_err(|e| TrackerError::Transport(format!("cannot send to {addr}: {e}")))?;
            let deadline = tokio::time::Instant::now() + codec::retransmit_timeout(self.base, *n);
            loop {
                match tokio::time::timeout_at(deadline, pending.rx.recv()).await {
                    Err(_) => {
                        *n += 1;
                        break;
                    }
                    Ok(None) => {
                        return Err(TrackerError::Transport(
                            "the UDP tracker reader stopped".into(),
                        ))
                    }
                    Ok(Some(d)) => {
                        if let Some(r) =
                            codec::decode_reply(&d, expected, pending.txid, v6, scraped)
                        {
                            return Ok(Outcome::Reply(r));
                        }
                        tracing::debug!(
                            "udp tracker {addr}: ignored a {} byte reply to {expected:?}",
                            d.len()
                        );
                    }
                }
            }
        }
    }
}

enum Outcome {
    Reply(Reply),
    Expired,
}

/// A registered transaction id; unregistered when dropped (completed or cancelled).
struct PendingGuard {
    shared: Arc<Mutex<Shared>>,
    txid: u32,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        lock(&self.shared).pending.remove(&self.txid);
    }
}

/// Routes every datagram to the request waiting for its transaction id.
async fn read_loop(socket: Arc<UdpSocket>, shared: Arc<Mutex<Shared>>) {
    let mut buf = vec![0u8; MAX_REPLY + 1];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors on some systems, ENOMEM...: keep serving, without spinning.
                tracing::debug!("udp tracker socket: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if len > MAX_REPLY {
            continue;
        }
        let d = &buf[..len];
        let Some(txid) = codec::transaction_id(d) else {
            continue;
        };
        let from = normalize(from);
        let g = lock(&shared);
        if let Some(w) = g.pending.get(&txid) {
            if w.from == from {
                let _ = w.tx.try_send(d.to_vec());
            }
        }
    }
}

/// Host and port of `udp://host:port[/path][?query]` (IPv6 literals in brackets).
fn parse_udp_url(url: &str) -> Result<(String, u16), TrackerError> {
    let bad = |why: &str| TrackerError::BadUrl(format!("{url}: {why}"));
    let rest = url
        .split_once("://")
        .filter(|(s, _)| s.eq_ignore_ascii_case("udp"))
        .map(|(_, r)| r)
        .ok_or_else(|| bad("not a udp:// URL"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let p = after.strip_prefix(':').ok_or_else(|| bad("no port"))?;
        (h, p)
    } else {
        authority.rsplit_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_urls() {
        assert_eq!(
            parse_udp_url("udp://tracker.example:6969/announce").unwrap(),
            ("tracker.example".to_string(), 6969)
        );
        assert_eq!(
            parse_udp_url("UDP://127.0.0.1:80").unwrap(),
            ("127.0.0.1".to_string(), 80)
        );
        assert_eq!(
            parse_udp_url("udp://[::1]:6969/announce?x").unwrap(),
            ("::1".to_string(), 6969)
        );
        for bad in [
            "udp://host",
            "udp://:80",
            "udp://h:0",
            "udp://h:99999",
            "http://h:1",
            "udp://[::1/x",
        ] {
            assert!(
                matches!(parse_udp_url(bad), Err(TrackerError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn normalizes_mapped() {
        let m: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(normalize(m), "127.0.0.1:5".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[::1]:5".parse().unwrap();
        assert_eq!(normalize(v6), v6);
    }
}
