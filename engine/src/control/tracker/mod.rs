//! Tracker I/O clients, on the control plane's tokio runtime (never on a shard).
//!
//! The codecs are sans-IO in [`uring_bt_proto::tracker`]; this module moves their bytes:
//! - [`http`]: HTTP and HTTPS trackers through hyper-util's pooled legacy client (rustls with
//!   the webpki roots for https), redirects followed by hand.
//! - [`udp`]: BEP 15 trackers over one shared UDP socket with a reader task that routes replies
//!   by transaction id, connection ids cached per tracker address.
//!
//! One [`TrackerClient`] serves the whole process; [`TrackerClient::announce`] and
//! [`TrackerClient::scrape`] dispatch on the URL's scheme and return `Send` futures.
//!
//! Bounds (all explicit; the defaults are [`ClientConfig::default`]):
//! - HTTP: connect timeout `connect_timeout` (10 s); the whole request, redirects and body
//!   included, `request_timeout` (30 s); at most `max_redirects` (3) redirects, to http/https
//!   only; a body of at most [`MAX_RESPONSE_BYTES`] (more: [`TrackerError::TooLarge`], nothing
//!   beyond it is buffered); idle pooled connections: [`http::POOL_MAX_IDLE_PER_HOST`] per host
//!   for [`http::POOL_IDLE_TIMEOUT`].
//! - UDP: the n-th try waits `udp_base_timeout x 2^n` (15 s), n = 0..=`udp_max_retransmit` (3,
//!   at most [`udp::MAX_RETRANSMIT`]): 15+30+60+120 s worst case for one announce, connect
//!   included; at most [`udp::MAX_PENDING`] requests in flight; at most
//!   [`udp::MAX_CONNECTION_IDS`] cached connection ids, each used for
//!   [`udp::CONNECTION_ID_LIFETIME`]; replies longer than [`udp::MAX_REPLY`] are dropped; DNS
//!   bounded by `connect_timeout`.

pub mod http;
pub mod udp;

use std::time::Duration;

pub use uring_bt_proto::tracker::{
    AnnounceRequest, AnnounceResponse, Event, ScrapeStats, TrackerError, MAX_RESPONSE_BYTES,
};

/// What the tracker clients may spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// TCP connect timeout for HTTP trackers; also bounds a DNS lookup for UDP trackers.
    pub connect_timeout: Duration,
    /// One HTTP request in all: connect, redirects, headers and body.
    pub request_timeout: Duration,
    /// Redirects followed (to http/https only); one more is an error.
    pub max_redirects: u32,
    /// The `User-Agent` of HTTP requests.
    pub user_agent: String,
    /// BEP 15's base timeout: the n-th try of a UDP request waits `base x 2^n`.
    pub udp_base_timeout: Duration,
    /// Retransmissions of a UDP request after the first try (clamped to
    /// [`udp::MAX_RETRANSMIT`]).
    pub udp_max_retransmit: u32,
    /// The local address announces leave from (`--listen`'s IP when it names one): a tracker
    /// that ignores `ip=` (opentracker does) then hands out the address we listen on.
    pub local_ip: Option<std::net::IpAddr>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_redirects: 3,
            user_agent: concat!("uring-bt/", env!("CARGO_PKG_VERSION")).to_string(),
            udp_base_timeout: Duration::from_secs(15),
            udp_max_retransmit: 3,
            local_ip: None,
        }
    }
}

/// The protocol of a tracker URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Udp,
}

/// The protocol of `url` from its scheme (case-insensitive): http and https, or udp; anything
/// else is [`TrackerError::BadUrl`].
pub(crate) fn scheme_of(url: &str) -> Result<Scheme, TrackerError> {
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| TrackerError::BadUrl(format!("{url}: no scheme")))?;
    match scheme.as_str() {
        "http" | "https" => Ok(Scheme::Http),
        "udp" => Ok(Scheme::Udp),
        other => Err(TrackerError::BadUrl(format!(
            "{url}: unsupported scheme {other:?} (http, https and udp are)"
        ))),
    }
}

/// The tracker clients of one process: an HTTP(S) client pool and one UDP socket.
pub struct TrackerClient {
    http: http::HttpTracker,
    udp: udp::UdpTracker,
}

impl TrackerClient {
    /// Makes the clients and binds the UDP socket. Must be called inside the tokio runtime (the
    /// socket registers with its reactor and the UDP reader task is spawned on it).
    pub fn new(cfg: ClientConfig) -> std::io::Result<TrackerClient> {
        Ok(TrackerClient {
            http: http::HttpTracker::new(&cfg)?,
            udp: udp::UdpTracker::new(&cfg)?,
        })
    }

    /// Announces `req` to the tracker at `url` (http, https or udp).
    pub async fn announce(
        &self,
        url: &str,
        req: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        match scheme_of(url)? {
            Scheme::Http => self.http.announce(url, req).await,
            Scheme::Udp => self.udp.announce(url, req).await,
        }
    }

    /// Scrapes one torrent from the tracker whose announce URL is `url`.
    pub async fn scrape(
        &self,
        url: &str,
        info_hash: [u8; 20],
    ) -> Result<ScrapeStats, TrackerError> {
        match scheme_of(url)? {
            Scheme::Http => self.http.scrape(url, info_hash).await,
            Scheme::Udp => self.udp.scrape(url, info_hash).await,
        }
    }

    /// The local address of the UDP socket (for diagnostics and tests).
    pub fn udp_local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.udp.local_addr()
    }
}

/// A small PRNG (SplitMix64) for transaction ids, keys, shuffles and jitter; seeded once from
/// /dev/urandom. Not for cryptography.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from /dev/urandom, else from the time and the process id.
    pub(crate) fn from_os() -> Rng {
        let mut b = [0u8; 8];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .is_ok();
        let seed = if ok {
            u64::from_le_bytes(b)
        } else {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32)
        };
        Rng(seed)
    }

    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher-Yates.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// `e` and its sources, joined with ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(scheme_of("http://a/announce"), Ok(Scheme::Http));
        assert_eq!(scheme_of("HTTPS://a/announce"), Ok(Scheme::Http));
        assert_eq!(scheme_of("udp://a:1"), Ok(Scheme::Udp));
        assert!(matches!(
            scheme_of("wss://a/announce"),
            Err(TrackerError::BadUrl(_))
        ));
        assert!(matches!(
            scheme_of("a/announce"),
            Err(TrackerError::BadUrl(_))
        ));
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::seeded(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s, "a shuffle of 50 moved nothing");
    }
}
