//! Tracker protocol codecs, sans-IO: HTTP announce/scrape (BEP 3, 23, 7, 48) and UDP (BEP 15).
//!
//! The types and signatures below are the API the engine's tracker clients
//! (`engine/src/control/tracker/`) code against: they own the sockets, the timers and the
//! retries; this module only builds requests and checks answers.
//!
//! Every parser validates with [`crate::bencode::validate`] before it looks at a value (no
//! recursion on untrusted input, no serde), caps what it keeps and never panics, whatever the
//! input:
//!
//! - at most [`MAX_PEERS`] peers, port 0 and unspecified addresses (`0.0.0.0`, `::`) dropped,
//!   duplicates removed (IPv4-mapped IPv6 addresses count as their IPv4 address);
//! - intervals clamped to `[MIN_INTERVAL, MAX_INTERVAL]`, the minimum interval never above the
//!   interval;
//! - tracker messages (`failure reason`, `warning message`, the UDP `error` text) decoded as
//!   lossy UTF-8, control characters replaced by U+FFFD (they are shown in a terminal), and cut
//!   at a character boundary to at most [`MAX_MESSAGE_LEN`] bytes;
//! - a `tracker id` longer than [`MAX_TRACKER_ID_LEN`] is ignored (cutting it would corrupt it);
//! - HTTP bodies above [`MAX_RESPONSE_BYTES`] are [`TrackerError::TooLarge`]; the bencode limits
//!   are [`http::ANNOUNCE_LIMITS`] and [`http::SCRAPE_LIMITS`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Default announce interval when a tracker gives none (or an unusable one).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);
/// Intervals from a tracker are clamped to `[MIN_INTERVAL, MAX_INTERVAL]`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Largest HTTP tracker response body read (bytes); more is an error.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Most peers kept from one announce response (the rest are ignored).
pub const MAX_PEERS: usize = 1000;
/// Longest `failure reason` / `warning message` kept (bytes; longer ones are cut).
pub const MAX_MESSAGE_LEN: usize = 512;
/// Longest `tracker id` kept (bytes); a longer one is ignored, as if absent (it is sent back in
/// every later announce URL).
pub const MAX_TRACKER_ID_LEN: usize = 256;

/// The `event` of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A regular re-announce (no `event` parameter; UDP: 0).
    None,
    Started,
    Completed,
    Stopped,
}

/// One announce, as both protocols need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// The port peers should connect to (`--announce-port`, else the listening port).
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes we still lack (0 when seeding).
    pub left: u64,
    pub event: Event,
    /// Peers wanted (HTTP `numwant`; UDP `num_want`).
    pub numwant: u32,
    /// Random per-process key (HTTP `key` as 8 hex digits; UDP `key`).
    pub key: u32,
    /// `--announce-ip` (HTTP `ip`; UDP: the IPv4 field, 0 when `None` or IPv6).
    pub ip: Option<IpAddr>,
    /// The `tracker id` a previous response gave (HTTP only).
    pub tracker_id: Option<Vec<u8>>,
}

/// What a tracker answered to an announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Clamped to `[MIN_INTERVAL, MAX_INTERVAL]`; [`DEFAULT_INTERVAL`] when missing.
    pub interval: Duration,
    /// Clamped likewise, never above `interval`.
    pub min_interval: Option<Duration>,
    pub tracker_id: Option<Vec<u8>>,
    /// Seeders / leechers, when the tracker says.
    pub complete: Option<u32>,
    pub incomplete: Option<u32>,
    /// Compact (BEP 23), dictionary and `peers6` (BEP 7) lists merged; at most [`MAX_PEERS`],
    /// port 0 entries dropped, duplicates removed.
    pub peers: Vec<SocketAddr>,
    pub warning: Option<String>,
}

/// One torrent's scrape figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    pub complete: u32,
    pub incomplete: u32,
    pub downloaded: u32,
}

/// Why an announce or scrape failed (shown in the status, per tracker).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The tracker refused: its `failure reason` (HTTP) or `error` action message (UDP).
    #[error("tracker says: {0}")]
    Failure(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("bad tracker URL: {0}")]
    BadUrl(String),
    /// Transport errors, filled by the I/O clients (connect, timeout, HTTP status, redirects).
    #[error("{0}")]
    Transport(String),
}

/// Text from a tracker (`failure reason`, `warning message`, the UDP `error` message), made safe
/// to keep and show: lossy UTF-8, control characters replaced by U+FFFD (the text ends up in a
/// terminal), cut at a character boundary to at most [`MAX_MESSAGE_LEN`] bytes.
fn message(raw: &[u8]) -> String {
    let head = raw.get(..MAX_MESSAGE_LEN).unwrap_or(raw);
    let mut out = String::with_capacity(head.len());
    for c in String::from_utf8_lossy(head).chars() {
        let c = if c.is_control() {
            char::REPLACEMENT_CHARACTER
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_MESSAGE_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// A tracker's interval in seconds, clamped to `[MIN_INTERVAL, MAX_INTERVAL]`.
fn clamp_secs(secs: u64) -> Duration {
    Duration::from_secs(secs.clamp(MIN_INTERVAL.as_secs(), MAX_INTERVAL.as_secs()))
}

/// The announce interval: clamped, [`DEFAULT_INTERVAL`] when missing, zero or negative.
fn interval_from(secs: Option<i64>) -> Duration {
    match secs.and_then(|s| u64::try_from(s).ok()) {
        Some(s) if s > 0 => clamp_secs(s),
        _ => DEFAULT_INTERVAL,
    }
}

/// The minimum interval: clamped, never above `interval`; `None` when missing, zero or negative.
fn min_interval_from(secs: Option<i64>, interval: Duration) -> Option<Duration> {
    match secs.and_then(|s| u64::try_from(s).ok()) {
        Some(s) if s > 0 => Some(clamp_secs(s).min(interval)),
        _ => None,
    }
}

/// The peers of one response, merged: capped at [`MAX_PEERS`], port 0 and unspecified addresses
/// dropped, IPv4-mapped IPv6 addresses turned into IPv4 ones, duplicates removed, first-seen
/// order kept. A `BTreeSet` keeps it deterministic (no random hasher state).
struct PeerSet {
    peers: Vec<SocketAddr>,
    seen: std::collections::BTreeSet<SocketAddr>,
}

impl PeerSet {
    fn new() -> Self {
        PeerSet {
            peers: Vec::new(),
            seen: std::collections::BTreeSet::new(),
        }
    }

    fn full(&self) -> bool {
        self.peers.len() >= MAX_PEERS
    }

    fn add(&mut self, ip: IpAddr, port: u16) {
        let ip = ip.to_canonical();
        if self.full() || port == 0 || ip.is_unspecified() {
            return;
        }
        let addr = SocketAddr::new(ip, port);
        if self.seen.insert(addr) {
            self.peers.push(addr);
        }
    }

    /// Compact IPv4 peers (BEP 23): 4 address bytes and 2 port bytes, big-endian, each.
    fn add_compact_v4(&mut self, bytes: &[u8]) {
        for c in bytes.chunks_exact(6) {
            if self.full() {
                break;
            }
            let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
            self.add(IpAddr::V4(ip), u16::from_be_bytes([c[4], c[5]]));
        }
    }

    /// Compact IPv6 peers (BEP 7): 16 address bytes and 2 port bytes, big-endian, each.
    fn add_compact_v6(&mut self, bytes: &[u8]) {
        for c in bytes.chunks_exact(18) {
            if self.full() {
                break;
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&c[..16]);
            self.add(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([c[16], c[17]]),
            );
        }
    }
}

/// HTTP trackers.
pub mod http {
    use super::*;
    use crate::bencode::{as_bytes, as_int, dict_entries, dict_get, validate, Entry, Limits};
    use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use std::fmt::Write as _;

    /// Limits for an announce response. Size: [`MAX_RESPONSE_BYTES`] (1 MiB, about 174,000
    /// compact peers). Depth 8: the deepest thing BEP 3 defines is root dictionary > `peers`
    /// list > peer dictionary (3); unknown keys may nest a little more. Tokens
    /// `16 * MAX_PEERS + 64` (16,064): a dictionary peer with `ip`, `port` and `peer id` is 7
    /// values, so [`MAX_PEERS`] of them with up to 7 keys each fit, or about twice as many
    /// ordinary ones, plus 64 values for the rest of the response. A dictionary peer list
    /// longer than that is refused ([`TrackerError::Malformed`]) rather than scanned: a tracker
    /// that honours `numwant` never sends one. Compact lists (one value whatever their length)
    /// are bounded by the size alone.
    pub const ANNOUNCE_LIMITS: Limits = Limits {
        max_depth: 8,
        max_tokens: 16 * MAX_PEERS + 64,
        max_size: MAX_RESPONSE_BYTES,
    };

    /// Limits for a scrape response. Size: [`MAX_RESPONSE_BYTES`]; depth 8 (root > `files` >
    /// torrent's dictionary is 3); tokens 65,536: a torrent's entry is 8 values (hash, dictionary,
    /// three keys and their values), so about 8,000 torrents fit, far more than one scrape asks
    /// for (a tracker that answers with its whole database above that is refused).
    pub const SCRAPE_LIMITS: Limits = Limits {
        max_depth: 8,
        max_tokens: 1 << 16,
        max_size: MAX_RESPONSE_BYTES,
    };

    /// Bytes that stay literal in a query value: RFC 3986's unreserved characters
    /// (`A-Z a-z 0-9 - . _ ~`). Everything else is `%XX`, upper-case hex.
    const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');

    fn enc(bytes: &[u8]) -> percent_encoding::PercentEncode<'_> {
        percent_encode(bytes, QUERY_VALUE)
    }

    /// An `http` or `https` URL cut where this module needs it. The fragment, if any, is dropped
    /// (it is never sent); the query is kept as it stands.
    struct Url<'a> {
        /// Scheme, authority and path.
        head: &'a str,
        /// Where the path starts in `head` (`head.len()` when there is none).
        path_start: usize,
        /// The query, without its `?`.
        query: Option<&'a str>,
    }

    fn split_url(url: &str) -> Result<Url<'_>, String> {
        if let Some(c) = url.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("{url:?}: character {c:?} is not allowed in a URL"));
        }
        let no_fragment = url.split_once('#').map_or(url, |(u, _)| u);
        let Some((scheme, _)) = no_fragment.split_once("://") else {
            return Err(format!("{url:?} is not an absolute URL"));
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(format!("{url:?} is not an http or https URL"));
        }
        // The scheme is exactly `http` or `https`, so the first `?` is after the `://`.
        let (head, query) = match no_fragment.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (no_fragment, None),
        };
        let authority_start = scheme.len() + 3;
        let after_scheme = head.get(authority_start..).unwrap_or("");
        let authority_len = after_scheme.find('/').unwrap_or(after_scheme.len());
        if authority_len == 0 {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Url {
            head,
            path_start: authority_start + authority_len,
            query,
        })
    }

    /// Appends `?` and the existing query (with a `&` after it unless it is empty or already
    /// ends with one), ready for the first new parameter.
    fn start_query(url: &mut String, query: Option<&str>) {
        url.push('?');
        if let Some(q) = query {
            url.push_str(q);
            if !q.is_empty() && !q.ends_with('&') {
                url.push('&');
            }
        }
    }

    fn event_name(event: Event) -> Option<&'static str> {
        match event {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }

    /// The announce URL for `req` on the tracker `base` (which may carry a query already):
    /// `info_hash` and `peer_id` percent-encoded byte by byte, `port`, `uploaded`,
    /// `downloaded`, `left`, `event` (omitted for [`Event::None`]), `compact=1`, `numwant`,
    /// `key`, `ip`, `trackerid`. Only `http` and `https` URLs.
    ///
    /// Parameters come in that order. Byte strings (`info_hash`, `peer_id`, `trackerid`) and
    /// `ip` keep RFC 3986's unreserved characters literal and encode every other byte as `%XX`
    /// (upper-case hex). `key` is 8 upper-case hex digits. A fragment in `base` is dropped; a
    /// `base` with spaces, control or non-ASCII characters, no host, or another scheme is
    /// [`TrackerError::BadUrl`].
    pub fn announce_url(base: &str, req: &AnnounceRequest) -> Result<String, TrackerError> {
        let u = split_url(base).map_err(TrackerError::BadUrl)?;
        let mut url = String::with_capacity(base.len() + 256);
        url.push_str(u.head);
        start_query(&mut url, u.query);
        // Writing to a String cannot fail.
        let _ = write!(
            url,
            "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}",
            enc(&req.info_hash),
            enc(&req.peer_id),
            req.port,
            req.uploaded,
            req.downloaded,
            req.left
        );
        if let Some(event) = event_name(req.event) {
            let _ = write!(url, "&event={event}");
        }
        let _ = write!(
            url,
            "&compact=1&numwant={}&key={:08X}",
            req.numwant, req.key
        );
        if let Some(ip) = req.ip {
            let _ = write!(url, "&ip={}", enc(ip.to_string().as_bytes()));
        }
        if let Some(id) = &req.tracker_id {
            let _ = write!(url, "&trackerid={}", enc(id));
        }
        Ok(url)
    }

    /// The scrape URL for `announce` as BEP 48 derives it (the last path element must start
    /// with `announce`, which becomes `scrape`), with one `info_hash` per hash; `None` when the
    /// tracker has no scrape URL.
    ///
    /// The comparison is on the path as written (`%61nnounce` is not `announce`). The existing
    /// query is kept, the fragment dropped. With no hashes, the URL asks for a full scrape.
    /// Not an `http`/`https` URL (as [`announce_url`] accepts them): `None`.
    pub fn scrape_url(announce: &str, info_hashes: &[[u8; 20]]) -> Option<String> {
        let u = split_url(announce).ok()?;
        let path = u.head.get(u.path_start..)?;
        let slash = path.rfind('/')?;
        let rest = path.get(slash + 1..)?.strip_prefix("announce")?;
        let mut url = String::with_capacity(announce.len() + 64 * info_hashes.len());
        url.push_str(u.head.get(..u.path_start + slash + 1)?);
        url.push_str("scrape");
        url.push_str(rest);
        if info_hashes.is_empty() {
            if let Some(q) = u.query {
                url.push('?');
                url.push_str(q);
            }
            return Some(url);
        }
        start_query(&mut url, u.query);
        for (i, hash) in info_hashes.iter().enumerate() {
            if i > 0 {
                url.push('&');
            }
            let _ = write!(url, "info_hash={}", enc(hash));
        }
        Some(url)
    }

    fn malformed(what: impl std::fmt::Display) -> TrackerError {
        TrackerError::Malformed(what.to_string())
    }

    /// Checks a response body and returns its top-level dictionary's bytes: at most
    /// [`MAX_RESPONSE_BYTES`] ([`TrackerError::TooLarge`]), valid bencode within `limits`, a
    /// dictionary, followed by nothing but ASCII whitespace (some trackers end with a newline).
    fn root_dict<'a>(body: &'a [u8], limits: &Limits) -> Result<&'a [u8], TrackerError> {
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(TrackerError::TooLarge(MAX_RESPONSE_BYTES));
        }
        let len = validate(body, limits).map_err(malformed)?;
        let (Some(value), Some(rest)) = (body.get(..len), body.get(len..)) else {
            return Err(malformed("bad value length"));
        };
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(malformed("bytes after the response dictionary"));
        }
        if value.first() != Some(&b'd') {
            return Err(malformed("the response is not a dictionary"));
        }
        Ok(value)
    }

    /// The first value of `key` among `entries`.
    fn get<'a>(entries: &[Entry<'a>], key: &[u8]) -> Option<&'a [u8]> {
        entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// `failure reason`, when there is one: the tracker refused.
    fn failure(entries: &[Entry<'_>]) -> Result<(), TrackerError> {
        match get(entries, b"failure reason") {
            None => Ok(()),
            Some(raw) => match as_bytes(raw) {
                Some(text) => Err(TrackerError::Failure(message(text))),
                None => Err(malformed("`failure reason` is not a string")),
            },
        }
    }

    /// A non-negative integer that fits a `u32`; `None` for anything else.
    fn count(raw: Option<&[u8]>) -> Option<u32> {
        raw.and_then(as_int).and_then(|v| u32::try_from(v).ok())
    }

    /// The items of the validated list `raw` (`l...e`), each as its raw span, without
    /// recursion (each item is spanned by the iterative [`validate`]).
    fn list_items<'a>(raw: &'a [u8], limits: &'a Limits) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut pos = 1; // after the `l`
        std::iter::from_fn(move || {
            let rest = raw.get(pos..)?;
            if rest.first() == Some(&b'e') {
                return None;
            }
            let len = validate(rest, limits).ok()?;
            pos += len;
            rest.get(..len)
        })
    }

    /// One dictionary peer (BEP 3): `ip` as dotted IPv4 or IPv6 text (brackets allowed), `port`
    /// in 1..=65535. Anything else (a DNS name, a missing key, not a dictionary) is skipped.
    fn dict_peer(raw: &[u8]) -> Option<(IpAddr, u16)> {
        if raw.first() != Some(&b'd') {
            return None;
        }
        let entries = dict_entries(raw, &ANNOUNCE_LIMITS).ok()?;
        let ip = std::str::from_utf8(as_bytes(get(&entries, b"ip")?)?).ok()?;
        let ip = ip
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(ip);
        let ip: IpAddr = ip.parse().ok()?;
        let port = u16::try_from(as_int(get(&entries, b"port")?)?).ok()?;
        Some((ip, port))
    }

    /// Parses an announce response body (`failure reason` becomes [`TrackerError::Failure`]).
    ///
    /// The body is checked with [`ANNOUNCE_LIMITS`] first. `peers` may be a compact string
    /// (6-byte entries; another length is [`TrackerError::Malformed`]) or a list of
    /// dictionaries (unusable entries skipped); `peers6` a compact string of 18-byte entries.
    /// Both missing is no peers. A repeated key counts once (its first occurrence); optional
    /// values of the wrong type (`interval`, `complete`, ...) are treated as absent; `complete`
    /// and `incomplete` outside `0..=u32::MAX` likewise.
    pub fn parse_announce(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
        let root = root_dict(body, &ANNOUNCE_LIMITS)?;
        let entries = dict_entries(root, &ANNOUNCE_LIMITS).map_err(malformed)?;
        failure(&entries)?;

        let v4 = match get(&entries, b"peers") {
            None => None,
            Some(raw) if raw.first() == Some(&b'l') => Some(Err(raw)),
            Some(raw) => match as_bytes(raw) {
                Some(b) if b.len() % 6 == 0 => Some(Ok(b)),
                Some(b) => {
                    return Err(malformed(format_args!(
                        "compact `peers` of {} bytes, not a multiple of 6",
                        b.len()
                    )))
                }
                None => return Err(malformed("`peers` is neither a string nor a list")),
            },
        };
        let v6 = match get(&entries, b"peers6") {
            None => None,
            Some(raw) => match as_bytes(raw) {
                Some(b) if b.len() % 18 == 0 => Some(b),
                Some(b) => {
                    return Err(malformed(format_args!(
                        "`peers6` of {} bytes, not a multiple of 18",
                        b.len()
                    )))
                }
                None => return Err(malformed("`peers6` is not a string")),
            },
        };
        let mut peers = PeerSet::new();
        match v4 {
            None => {}
            Some(Ok(compact)) => peers.add_compact_v4(compact),
            Some(Err(list)) => {
                for item in list_items(list, &ANNOUNCE_LIMITS) {
                    if peers.full() {
                        break;
                    }
                    if let Some((ip, port)) = dict_peer(item) {
                        peers.add(ip, port);
                    }
                }
            }
        }
        if let Some(compact) = v6 {
            peers.add_compact_v6(compact);
        }

        let interval = interval_from(get(&entries, b"interval").and_then(as_int));
        let min_interval =
            min_interval_from(get(&entries, b"min interval").and_then(as_int), interval);
        let tracker_id = get(&entries, b"tracker id")
            .and_then(as_bytes)
            .filter(|id| !id.is_empty() && id.len() <= MAX_TRACKER_ID_LEN)
            .map(<[u8]>::to_vec);
        Ok(AnnounceResponse {
            interval,
            min_interval,
            tracker_id,
            complete: count(get(&entries, b"complete")),
            incomplete: count(get(&entries, b"incomplete")),
            peers: peers.peers,
            warning: get(&entries, b"warning message")
                .and_then(as_bytes)
                .map(message),
        })
    }

    /// Parses a scrape response body and returns `info_hash`'s figures (`Malformed` when the
    /// torrent is not in it).
    ///
    /// The body is checked with [`SCRAPE_LIMITS`] first; `failure reason` is
    /// [`TrackerError::Failure`]; `files` must be a dictionary keyed by raw 20-byte info hashes.
    /// A figure that is missing, not an integer or outside `0..=u32::MAX` reads as 0.
    pub fn parse_scrape(body: &[u8], info_hash: &[u8; 20]) -> Result<ScrapeStats, TrackerError> {
        let root = root_dict(body, &SCRAPE_LIMITS)?;
        let entries = dict_entries(root, &SCRAPE_LIMITS).map_err(malformed)?;
        failure(&entries)?;
        let files = get(&entries, b"files").ok_or_else(|| malformed("no `files`"))?;
        if files.first() != Some(&b'd') {
            return Err(malformed("`files` is not a dictionary"));
        }
        let stats = dict_get(files, info_hash, &SCRAPE_LIMITS)
            .map_err(malformed)?
            .ok_or_else(|| malformed("the torrent is not in the scrape response"))?;
        if stats.first() != Some(&b'd') {
            return Err(malformed("the torrent's scrape entry is not a dictionary"));
        }
        let stats = dict_entries(stats, &SCRAPE_LIMITS).map_err(malformed)?;
        let figure = |key: &[u8]| count(get(&stats, key)).unwrap_or(0);
        Ok(ScrapeStats {
            complete: figure(b"complete"),
            incomplete: figure(b"incomplete"),
            downloaded: figure(b"downloaded"),
        })
    }
}

/// UDP trackers (BEP 15). The client owns the socket, the timers and the connection ids; this
/// module builds requests and checks replies. Every integer is big-endian.
pub mod udp {
    use super::*;

    /// The protocol id of a connect request.
    pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
    /// A connection id may be used for this long after it was received.
    pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
    /// Retransmissions: the n-th try waits `15 x 2^n` s; n never exceeds this (BEP 15 says 8).
    pub const MAX_RETRANSMIT: u32 = 8;
    /// Largest reply read (bytes): an announce reply with [`MAX_PEERS`] IPv6 peers fits.
    pub const MAX_REPLY: usize = 20 + 18 * MAX_PEERS;
    /// Most info hashes in one scrape request (BEP 15: about 74 fit a safe datagram).
    pub const MAX_SCRAPE_HASHES: usize = 74;

    /// The action of a request or reply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Action {
        Connect,
        Announce,
        Scrape,
        Error,
    }

    impl Action {
        /// The action's number on the wire (0 connect, 1 announce, 2 scrape, 3 error).
        pub fn code(self) -> u32 {
            match self {
                Action::Connect => 0,
                Action::Announce => 1,
                Action::Scrape => 2,
                Action::Error => 3,
            }
        }
    }

    /// BEP 15's event numbers: 0 none, 1 completed, 2 started, 3 stopped.
    fn event_code(event: Event) -> u32 {
        match event {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }

    /// How long the n-th try waits for its reply: `base x 2^min(n, MAX_RETRANSMIT)` (BEP 15:
    /// base 15 s). Saturates at [`Duration::MAX`] rather than overflow.
    pub fn retransmit_timeout(base: Duration, n: u32) -> Duration {
        base.saturating_mul(1u32 << n.min(MAX_RETRANSMIT))
    }

    /// A connect request (16 bytes): protocol id, action 0, transaction id.
    pub fn connect_request(transaction_id: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
        b[8..12].copy_from_slice(&Action::Connect.code().to_be_bytes());
        b[12..16].copy_from_slice(&transaction_id.to_be_bytes());
        b
    }

    /// An announce request (98 bytes). Offsets: connection id 0, action (1) 8, transaction id
    /// 12, info hash 16, peer id 36, downloaded 56, left 64, uploaded 72, event 80, IPv4 address
    /// 84 (0 unless `req.ip` is IPv4, or IPv4-mapped IPv6), key 88, num_want 92, port 96.
    pub fn announce_request(
        connection_id: u64,
        transaction_id: u32,
        req: &AnnounceRequest,
    ) -> [u8; 98] {
        let ip = match req.ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => v4.octets(),
            _ => [0; 4],
        };
        let mut b = [0u8; 98];
        b[0..8].copy_from_slice(&connection_id.to_be_bytes());
        b[8..12].copy_from_slice(&Action::Announce.code().to_be_bytes());
        b[12..16].copy_from_slice(&transaction_id.to_be_bytes());
        b[16..36].copy_from_slice(&req.info_hash);
        b[36..56].copy_from_slice(&req.peer_id);
        b[56..64].copy_from_slice(&req.downloaded.to_be_bytes());
        b[64..72].copy_from_slice(&req.left.to_be_bytes());
        b[72..80].copy_from_slice(&req.uploaded.to_be_bytes());
        b[80..84].copy_from_slice(&event_code(req.event).to_be_bytes());
        b[84..88].copy_from_slice(&ip);
        b[88..92].copy_from_slice(&req.key.to_be_bytes());
        b[92..96].copy_from_slice(&req.numwant.to_be_bytes());
        b[96..98].copy_from_slice(&req.port.to_be_bytes());
        b
    }

    /// A scrape request for up to 74 info hashes (BEP 15's limit), into `out`.
    ///
    /// `out` is cleared first and then holds exactly the datagram: connection id, action 2,
    /// transaction id, then 20 bytes per hash (16 + 20 x n bytes). More than
    /// [`MAX_SCRAPE_HASHES`] hashes is a caller bug: only the first 74 are sent (and
    /// [`decode_reply`] caps `scraped` the same way).
    pub fn scrape_request(
        connection_id: u64,
        transaction_id: u32,
        info_hashes: &[[u8; 20]],
        out: &mut Vec<u8>,
    ) {
        let hashes = &info_hashes[..info_hashes.len().min(MAX_SCRAPE_HASHES)];
        out.clear();
        out.reserve(16 + 20 * hashes.len());
        out.extend_from_slice(&connection_id.to_be_bytes());
        out.extend_from_slice(&Action::Scrape.code().to_be_bytes());
        out.extend_from_slice(&transaction_id.to_be_bytes());
        for hash in hashes {
            out.extend_from_slice(hash);
        }
    }

    /// A reply, checked against what we sent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Reply {
        Connect {
            connection_id: u64,
        },
        Announce(AnnounceResponse),
        Scrape(Vec<ScrapeStats>),
        /// The tracker's `error` action: its message.
        Error(String),
    }

    fn be_u32(b: &[u8], at: usize) -> Option<u32> {
        let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    fn be_u64(b: &[u8], at: usize) -> Option<u64> {
        let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }

    /// The transaction id of a datagram (bytes 4..8), to route it to the request waiting for
    /// it; `None` when it is shorter than 8 bytes.
    pub fn transaction_id(datagram: &[u8]) -> Option<u32> {
        be_u32(datagram, 4)
    }

    /// Decodes a reply to the request with `expected` action and `transaction_id`. A reply with
    /// another transaction id, another action (other than `error`) or a wrong size is `None`:
    /// the caller ignores it and keeps waiting. `v6`: the tracker was reached over IPv6, so
    /// announce peers are 18-byte entries. `scraped`: how many info hashes a scrape asked for.
    ///
    /// Sizes: a connect reply is exactly 16 bytes; an announce reply 20 bytes and then whole
    /// 6-byte (18 with `v6`) peers; a scrape reply exactly `8 + 12 x scraped` bytes, `scraped`
    /// capped at [`MAX_SCRAPE_HASHES`] as [`scrape_request`] caps what it sends. An `error`
    /// reply (action 3) with the right transaction id is accepted whatever `expected` is; its
    /// message is cleaned and cut like HTTP's `failure reason`. An announce reply's interval is
    /// clamped (0: [`DEFAULT_INTERVAL`]); its peers are capped, deduplicated and port 0 dropped
    /// as HTTP's; `complete` and `incomplete` are its seeders and leechers.
    pub fn decode_reply(
        datagram: &[u8],
        expected: Action,
        transaction_id: u32,
        v6: bool,
        scraped: usize,
    ) -> Option<Reply> {
        let action = be_u32(datagram, 0)?;
        if be_u32(datagram, 4)? != transaction_id {
            return None;
        }
        let body = datagram.get(8..)?;
        if action == Action::Error.code() {
            return Some(Reply::Error(message(body)));
        }
        if action != expected.code() {
            return None;
        }
        match expected {
            Action::Connect => {
                if datagram.len() != 16 {
                    return None;
                }
                Some(Reply::Connect {
                    connection_id: be_u64(datagram, 8)?,
                })
            }
            Action::Announce => {
                let entry = if v6 { 18 } else { 6 };
                let peers_bytes = datagram.get(20..)?;
                if peers_bytes.len() % entry != 0 {
                    return None;
                }
                let interval = interval_from(Some(i64::from(be_u32(datagram, 8)?)));
                let leechers = be_u32(datagram, 12)?;
                let seeders = be_u32(datagram, 16)?;
                let mut peers = PeerSet::new();
                if v6 {
                    peers.add_compact_v6(peers_bytes);
                } else {
                    peers.add_compact_v4(peers_bytes);
                }
                Some(Reply::Announce(AnnounceResponse {
                    interval,
                    min_interval: None,
                    tracker_id: None,
                    complete: Some(seeders),
                    incomplete: Some(leechers),
                    peers: peers.peers,
                    warning: None,
                }))
            }
            Action::Scrape => {
                let n = scraped.min(MAX_SCRAPE_HASHES);
                if body.len() != 12 * n {
                    return None;
                }
                let stats = body
                    .chunks_exact(12)
                    .map(|c| ScrapeStats {
                        complete: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                        downloaded: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                        incomplete: u32::from_be_bytes([c[8], c[9], c[10], c[11]]),
                    })
                    .collect();
                Some(Reply::Scrape(stats))
            }
            Action::Error => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http::{announce_url, parse_announce, parse_scrape, scrape_url};
    use super::udp::{self, Action, Reply};
    use super::*;
    use percent_encoding::percent_decode_str;
    use proptest::prelude::*;

    fn req() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: [0xAB; 20],
            peer_id: *b"-UB0100-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            numwant: 50,
            key: 0x00C0_FFEE,
            ip: None,
            tracker_id: None,
        }
    }

    /// The query parameters of `url`, values percent-decoded.
    fn params(url: &str) -> Vec<(String, Vec<u8>)> {
        let (_, q) = url.split_once('?').expect("a query");
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), percent_decode_str(v).collect())
            })
            .collect()
    }

    fn param(url: &str, key: &str) -> Option<Vec<u8>> {
        params(url)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn bstr(b: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", b.len()).into_bytes();
        v.extend_from_slice(b);
        v
    }

    /// A dictionary from already-encoded keys and values.
    fn dict(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let mut v = b"d".to_vec();
        for (k, val) in entries {
            v.extend(bstr(k));
            v.extend_from_slice(val);
        }
        v.push(b'e');
        v
    }

    fn int(i: i64) -> Vec<u8> {
        format!("i{i}e").into_bytes()
    }

    fn compact4(peers: &[([u8; 4], u16)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (ip, port) in peers {
            v.extend_from_slice(ip);
            v.extend_from_slice(&port.to_be_bytes());
        }
        v
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn check_caps(r: &AnnounceResponse) {
        assert!(r.peers.len() <= MAX_PEERS);
        assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&r.interval));
        if let Some(m) = r.min_interval {
            assert!(m >= MIN_INTERVAL && m <= r.interval);
        }
        assert!(r.peers.iter().all(|p| p.port() != 0));
        let mut sorted = r.peers.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), r.peers.len(), "duplicates");
        assert!(r
            .warning
            .as_ref()
            .is_none_or(|w| w.len() <= MAX_MESSAGE_LEN));
        assert!(r
            .tracker_id
            .as_ref()
            .is_none_or(|t| t.len() <= MAX_TRACKER_ID_LEN));
    }

    // ---- HTTP URLs ----

    #[test]
    fn announce_url_encodes_all_256_bytes() {
        let all: Vec<u8> = (0..=255u8).collect();
        for chunk in all.chunks(20) {
            let mut r = req();
            r.info_hash = [0; 20];
            r.info_hash[..chunk.len()].copy_from_slice(chunk);
            r.peer_id = r.info_hash;
            r.peer_id.reverse();
            r.tracker_id = Some(chunk.to_vec());
            let url = announce_url("http://t.example/announce", &r).unwrap();
            assert!(url.is_ascii());
            // Only unreserved characters literally, everything else %XX upper case.
            let (_, q) = url.split_once('?').unwrap();
            for kv in q.split('&') {
                let (_, v) = kv.split_once('=').unwrap();
                let mut bytes = v.bytes();
                while let Some(c) = bytes.next() {
                    if c == b'%' {
                        let h: Vec<u8> = bytes.by_ref().take(2).collect();
                        assert!(
                            h.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')),
                            "{v}"
                        );
                    } else {
                        assert!(c.is_ascii_alphanumeric() || b"-._~".contains(&c), "{v}");
                    }
                }
            }
            assert_eq!(param(&url, "info_hash").unwrap(), r.info_hash);
            assert_eq!(param(&url, "peer_id").unwrap(), r.peer_id);
            assert_eq!(param(&url, "trackerid").unwrap(), chunk);
        }
    }

    #[test]
    fn announce_url_fields() {
        let mut r = req();
        r.ip = Some("2001:db8::1".parse().unwrap());
        r.tracker_id = Some(b"id 1&x".to_vec());
        r.uploaded = u64::MAX;
        let url = announce_url("https://t.example:8443/announce", &r).unwrap();
        assert!(url.starts_with("https://t.example:8443/announce?info_hash=%AB%AB"));
        let keys: Vec<String> = params(&url).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "info_hash",
                "peer_id",
                "port",
                "uploaded",
                "downloaded",
                "left",
                "event",
                "compact",
                "numwant",
                "key",
                "ip",
                "trackerid"
            ]
        );
        assert!(url.contains("&peer_id=-UB0100-abcdefghijkl&port=6881&uploaded=18446744073709551615&downloaded=2&left=3&event=started&compact=1&numwant=50&key=00C0FFEE&ip=2001%3Adb8%3A%3A1&trackerid=id%201%26x"), "{url}");
        for (event, name) in [
            (Event::Completed, Some("completed")),
            (Event::Stopped, Some("stopped")),
            (Event::None, None),
        ] {
            r.event = event;
            let url = announce_url("http://t/announce", &r).unwrap();
            assert_eq!(param(&url, "event"), name.map(|n| n.as_bytes().to_vec()));
        }
        r.ip = Some("10.0.0.1".parse().unwrap());
        r.tracker_id = None;
        let url = announce_url("http://t/announce", &r).unwrap();
        assert!(url.ends_with("&key=00C0FFEE&ip=10.0.0.1"), "{url}");
    }

    #[test]
    fn announce_url_base_with_query() {
        let r = req();
        let url = announce_url("http://t/announce.php?passkey=a%2Fb", &r).unwrap();
        assert!(
            url.starts_with("http://t/announce.php?passkey=a%2Fb&info_hash="),
            "{url}"
        );
        assert_eq!(param(&url, "passkey").unwrap(), b"a/b");
        let url = announce_url("http://t/announce?", &r).unwrap();
        assert!(url.starts_with("http://t/announce?info_hash="), "{url}");
        let url = announce_url("http://t/announce?a=1&", &r).unwrap();
        assert!(url.starts_with("http://t/announce?a=1&info_hash="), "{url}");
        // The fragment is dropped, never sent.
        let url = announce_url("http://t/announce?a=1#frag", &r).unwrap();
        assert!(url.starts_with("http://t/announce?a=1&info_hash="), "{url}");
        assert!(!url.contains('#'));
        let url = announce_url("HTTP://t", &r).unwrap();
        assert!(url.starts_with("HTTP://t?info_hash="), "{url}");
    }

    #[test]
    fn announce_url_rejects_bad_urls() {
        for base in [
            "udp://t:80/announce",
            "ftp://t/announce",
            "/announce",
            "t/announce",
            "http://",
            "http:///announce",
            "http://t/ann ounce",
            "http://t/\nannounce",
            "http://tracker.éxample/announce",
            "",
        ] {
            assert!(
                matches!(announce_url(base, &req()), Err(TrackerError::BadUrl(_))),
                "{base:?}"
            );
        }
    }

    #[test]
    fn scrape_url_bep48() {
        let h: [[u8; 20]; 0] = [];
        let cases = [
            ("http://x/announce", Some("http://x/scrape")),
            (
                "http://x/a/announce.php?k=1",
                Some("http://x/a/scrape.php?k=1"),
            ),
            ("http://x/announce?x2%0644", Some("http://x/scrape?x2%0644")),
            ("http://x/x%064announce", None),
            ("http://x/a", None),
            ("http://x/announce?x=2/4", Some("http://x/scrape?x=2/4")),
            ("http://x:80/announce.php", Some("http://x:80/scrape.php")),
            ("http://x/announce/", None),
            ("http://x/a/announce/b", None),
            ("http://x/announcement", Some("http://x/scrapement")),
            ("http://x", None),
            ("http://x?announce", None),
            ("udp://x/announce", None),
            ("https://x/p/announce#f", Some("https://x/p/scrape")),
        ];
        for (announce, want) in cases {
            assert_eq!(scrape_url(announce, &h).as_deref(), want, "{announce}");
        }
    }

    #[test]
    fn scrape_url_appends_hashes() {
        let hashes = [[0u8; 20], [0xFF; 20]];
        let url = scrape_url("http://x/announce", &hashes).unwrap();
        assert_eq!(
            url,
            format!(
                "http://x/scrape?info_hash={}&info_hash={}",
                "%00".repeat(20),
                "%FF".repeat(20)
            )
        );
        let url = scrape_url("http://x/announce.php?k=1", &hashes[..1]).unwrap();
        assert_eq!(
            url,
            format!("http://x/scrape.php?k=1&info_hash={}", "%00".repeat(20))
        );
        let p = params(&url);
        assert_eq!(p[1], ("info_hash".to_string(), vec![0; 20]));
    }

    // ---- HTTP announce responses ----

    #[test]
    fn announce_compact() {
        let peers = compact4(&[([10, 0, 0, 1], 6881), ([192, 168, 1, 2], 51413)]);
        let body = dict(&[
            (b"complete", int(5)),
            (b"incomplete", int(7)),
            (b"interval", int(900)),
            (b"min interval", int(300)),
            (b"peers", bstr(&peers)),
            (b"tracker id", bstr(b"abc")),
            (b"warning message", bstr(b"slow down")),
        ]);
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.interval, Duration::from_secs(900));
        assert_eq!(r.min_interval, Some(Duration::from_secs(300)));
        assert_eq!(r.complete, Some(5));
        assert_eq!(r.incomplete, Some(7));
        assert_eq!(r.tracker_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(r.warning.as_deref(), Some("slow down"));
        assert_eq!(r.peers, [sa("10.0.0.1:6881"), sa("192.168.1.2:51413")]);
        check_caps(&r);
    }

    #[test]
    fn announce_minimal_and_trailing_newline() {
        let r = parse_announce(b"de").unwrap();
        assert_eq!(r.interval, DEFAULT_INTERVAL);
        assert_eq!(r.min_interval, None);
        assert!(r.peers.is_empty());
        assert_eq!(
            (r.complete, r.incomplete, r.warning, r.tracker_id),
            (None, None, None, None)
        );
        assert!(parse_announce(b"d8:intervali60ee\r\n").is_ok());
        assert!(matches!(
            parse_announce(b"d8:intervali60eex"),
            Err(TrackerError::Malformed(_))
        ));
        assert!(matches!(
            parse_announce(b"dedE"),
            Err(TrackerError::Malformed(_))
        ));
    }

    #[test]
    fn announce_dict_peers() {
        let list = [
            dict(&[
                (b"ip", bstr(b"10.0.0.1")),
                (b"peer id", bstr(&[1; 20])),
                (b"port", int(6881)),
            ]),
            dict(&[(b"ip", bstr(b"2001:db8::2")), (b"port", int(7000))]),
            dict(&[(b"ip", bstr(b"[2001:db8::3]")), (b"port", int(7001))]),
            // Skipped: a DNS name, port 0, port too large, negative port, no port, no ip, wrong
            // types, not a dictionary.
            dict(&[(b"ip", bstr(b"tracker.example")), (b"port", int(1))]),
            dict(&[(b"ip", bstr(b"10.0.0.2")), (b"port", int(0))]),
            dict(&[(b"ip", bstr(b"10.0.0.3")), (b"port", int(65536))]),
            dict(&[(b"ip", bstr(b"10.0.0.4")), (b"port", int(-1))]),
            dict(&[(b"ip", bstr(b"10.0.0.5"))]),
            dict(&[(b"port", int(5))]),
            dict(&[(b"ip", int(1)), (b"port", bstr(b"5"))]),
            dict(&[(b"ip", bstr(b"010.0.0.6")), (b"port", int(6))]),
            int(3),
            b"le".to_vec(),
            dict(&[(b"ip", bstr(b"10.0.0.7")), (b"port", int(65535))]),
        ]
        .concat();
        let mut peers = b"l".to_vec();
        peers.extend(list);
        peers.push(b'e');
        let r = parse_announce(&dict(&[(b"peers", peers)])).unwrap();
        assert_eq!(
            r.peers,
            [
                sa("10.0.0.1:6881"),
                sa("[2001:db8::2]:7000"),
                sa("[2001:db8::3]:7001"),
                sa("10.0.0.7:65535")
            ]
        );
    }

    #[test]
    fn announce_peers6_and_mixed() {
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&6881u16.to_be_bytes());
        // IPv4-mapped: the same peer as the compact one below, so a duplicate.
        v6.extend_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&6881u16.to_be_bytes());
        v6.extend_from_slice(&Ipv6Addr::UNSPECIFIED.octets());
        v6.extend_from_slice(&1u16.to_be_bytes());
        let body = dict(&[
            (b"peers", bstr(&compact4(&[([10, 0, 0, 1], 6881)]))),
            (b"peers6", bstr(&v6)),
        ]);
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.peers, [sa("10.0.0.1:6881"), sa("[2001:db8::1]:6881")]);

        // Dictionary peers merged with peers6.
        let list = [
            b"l".to_vec(),
            dict(&[(b"ip", bstr(b"10.0.0.9")), (b"port", int(9))]),
            b"e".to_vec(),
        ]
        .concat();
        let body = dict(&[(b"peers", list), (b"peers6", bstr(&v6[..18]))]);
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.peers, [sa("10.0.0.9:9"), sa("[2001:db8::1]:6881")]);

        // peers6 alone.
        let r = parse_announce(&dict(&[(b"peers6", bstr(&v6[..18]))])).unwrap();
        assert_eq!(r.peers, [sa("[2001:db8::1]:6881")]);
    }

    #[test]
    fn announce_truncated_and_bad_lengths() {
        let peers = compact4(&[([10, 0, 0, 1], 6881), ([10, 0, 0, 2], 6882)]);
        let body = dict(&[(b"interval", int(900)), (b"peers", bstr(&peers))]);
        for cut in 0..body.len() {
            assert!(
                matches!(
                    parse_announce(&body[..cut]),
                    Err(TrackerError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        for bad in [
            dict(&[(b"peers", bstr(&peers[..11]))]),
            dict(&[(b"peers6", bstr(&[0; 17]))]),
            dict(&[(b"peers6", bstr(&[0; 36 + 6]))]),
            dict(&[(b"peers", int(3))]),
            dict(&[(b"peers", b"de".to_vec())]),
            dict(&[(b"peers6", b"le".to_vec())]),
            b"li1ee".to_vec(),
            b"4:spam".to_vec(),
            b"i3e".to_vec(),
            Vec::new(),
        ] {
            assert!(
                matches!(parse_announce(&bad), Err(TrackerError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn announce_oversized() {
        // A body above MAX_RESPONSE_BYTES is refused before it is scanned.
        let big = vec![b'd'; MAX_RESPONSE_BYTES + 1];
        assert_eq!(
            parse_announce(&big),
            Err(TrackerError::TooLarge(MAX_RESPONSE_BYTES))
        );
        assert_eq!(
            parse_scrape(&big, &[0; 20]),
            Err(TrackerError::TooLarge(MAX_RESPONSE_BYTES))
        );
        // Many more compact peers than MAX_PEERS: the first MAX_PEERS are kept.
        let peers: Vec<([u8; 4], u16)> = (0..3 * MAX_PEERS as u32)
            .map(|i| ((0x0A00_0000 | i).to_be_bytes(), 1 + (i % 60000) as u16))
            .collect();
        let r = parse_announce(&dict(&[(b"peers", bstr(&compact4(&peers)))])).unwrap();
        assert_eq!(r.peers.len(), MAX_PEERS);
        assert_eq!(r.peers[0], sa("10.0.0.0:1"));
        check_caps(&r);
        // Up to the size limit, compact peers are fine.
        let n = (MAX_RESPONSE_BYTES - 32) / 6;
        let blob = vec![1u8; n * 6];
        let body = dict(&[(b"peers", bstr(&blob))]);
        assert!(body.len() <= MAX_RESPONSE_BYTES);
        let r = parse_announce(&body).unwrap();
        assert_eq!(r.peers, [sa("1.1.1.1:257")]);
        // Dictionary peers past the token limit are refused.
        let mut list = b"l".to_vec();
        for _ in 0..http::ANNOUNCE_LIMITS.max_tokens {
            list.extend_from_slice(b"de");
        }
        list.push(b'e');
        assert!(matches!(
            parse_announce(&dict(&[(b"peers", list)])),
            Err(TrackerError::Malformed(_))
        ));
        // MAX_PEERS dictionary peers with `peer id` fit the token limit.
        let mut list = b"l".to_vec();
        for i in 0..MAX_PEERS as u32 + 10 {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000 | i).to_string();
            list.extend(dict(&[
                (b"ip", bstr(ip.as_bytes())),
                (b"peer id", bstr(&[7; 20])),
                (b"port", int(6881)),
            ]));
        }
        list.push(b'e');
        let r = parse_announce(&dict(&[(b"peers", list)])).unwrap();
        assert_eq!(r.peers.len(), MAX_PEERS);
    }

    #[test]
    fn announce_deep_nesting() {
        // A million levels: refused by the depth limit, without recursion.
        let mut deep = vec![b'l'; MAX_RESPONSE_BYTES];
        assert!(matches!(
            parse_announce(&deep),
            Err(TrackerError::Malformed(_))
        ));
        deep[0] = b'd';
        deep[1..8].copy_from_slice(b"5:peers");
        assert!(matches!(
            parse_announce(&deep),
            Err(TrackerError::Malformed(_))
        ));
        let nine = b"d1:xlllllllleeeeeeeee";
        assert!(matches!(
            parse_announce(nine),
            Err(TrackerError::Malformed(_))
        ));
        let eight = b"d1:xllllllleeeeeeee";
        assert!(parse_announce(eight).is_ok());
    }

    #[test]
    fn announce_failure_reason() {
        let body = dict(&[
            (b"failure reason", bstr(b"unregistered torrent")),
            (b"peers", int(1)),
        ]);
        assert_eq!(
            parse_announce(&body),
            Err(TrackerError::Failure("unregistered torrent".into()))
        );
        // Long: cut. Invalid UTF-8 and control characters: replaced.
        let long = vec![b'a'; 10_000];
        let Err(TrackerError::Failure(m)) =
            parse_announce(&dict(&[(b"failure reason", bstr(&long))]))
        else {
            panic!("a failure")
        };
        assert_eq!(m.len(), MAX_MESSAGE_LEN);
        let Err(TrackerError::Failure(m)) =
            parse_announce(&dict(&[(b"failure reason", bstr(b"bad\xff\x1b[2Jx"))]))
        else {
            panic!("a failure")
        };
        assert_eq!(m, "bad\u{FFFD}\u{FFFD}[2Jx");
        // Multi-byte characters are never split.
        let mut text = b"a".to_vec();
        text.extend("é".repeat(600).as_bytes());
        let Err(TrackerError::Failure(m)) =
            parse_announce(&dict(&[(b"failure reason", bstr(&text))]))
        else {
            panic!("a failure")
        };
        assert!(
            m.len() <= MAX_MESSAGE_LEN && m.len() >= MAX_MESSAGE_LEN - 3,
            "{}",
            m.len()
        );
        assert!(m.ends_with('é'));
        let invalid = vec![0xFF; 1000];
        let Err(TrackerError::Failure(m)) =
            parse_announce(&dict(&[(b"failure reason", bstr(&invalid))]))
        else {
            panic!("a failure")
        };
        assert_eq!(m.len(), MAX_MESSAGE_LEN / 3 * 3);
        assert!(matches!(
            parse_announce(&dict(&[(b"failure reason", int(1))])),
            Err(TrackerError::Malformed(_))
        ));
        // Warnings are cut the same way.
        let r = parse_announce(&dict(&[(b"warning message", bstr(&long))])).unwrap();
        assert_eq!(r.warning.unwrap().len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn announce_absurd_intervals() {
        let secs = |s: u64| Duration::from_secs(s);
        // (interval, min interval, expected interval, expected min interval)
        type Case = (Vec<u8>, Option<Vec<u8>>, Duration, Option<Duration>);
        let cases: [Case; 9] = [
            (int(0), None, DEFAULT_INTERVAL, None),
            (int(-5), Some(int(-5)), DEFAULT_INTERVAL, None),
            (
                int(1_000_000_000_000),
                Some(int(1_000_000_000_000)),
                MAX_INTERVAL,
                Some(MAX_INTERVAL),
            ),
            (int(i64::MAX), Some(int(i64::MIN)), MAX_INTERVAL, None),
            (int(1), Some(int(1)), MIN_INTERVAL, Some(MIN_INTERVAL)),
            (int(120), Some(int(1_000_000)), secs(120), Some(secs(120))),
            (int(1800), Some(int(0)), secs(1800), None),
            (bstr(b"1800"), Some(bstr(b"60")), DEFAULT_INTERVAL, None),
            (int(3600), Some(int(30)), secs(3600), Some(MIN_INTERVAL)),
        ];
        for (interval, min, want, want_min) in cases {
            let mut e: Vec<(&[u8], Vec<u8>)> = vec![(b"interval", interval)];
            if let Some(m) = min {
                e.push((b"min interval", m));
            }
            let r = parse_announce(&dict(&e)).unwrap();
            assert_eq!((r.interval, r.min_interval), (want, want_min));
            check_caps(&r);
        }
    }

    #[test]
    fn announce_duplicates_and_port_zero() {
        let peers = compact4(&[
            ([10, 0, 0, 1], 6881),
            ([10, 0, 0, 1], 6881),
            ([10, 0, 0, 1], 6882),
            ([10, 0, 0, 2], 0),
            ([0, 0, 0, 0], 6881),
            ([10, 0, 0, 1], 6881),
        ]);
        let r = parse_announce(&dict(&[(b"peers", bstr(&peers))])).unwrap();
        assert_eq!(r.peers, [sa("10.0.0.1:6881"), sa("10.0.0.1:6882")]);
        // Duplicate keys: the first wins.
        let body = b"d8:intervali100e8:intervali200ee";
        assert_eq!(
            parse_announce(body).unwrap().interval,
            Duration::from_secs(100)
        );
    }

    #[test]
    fn announce_counts_and_tracker_id() {
        let body = dict(&[
            (b"complete", int(-1)),
            (b"incomplete", int(u32::MAX as i64 + 1)),
            (b"tracker id", bstr(&[b'x'; MAX_TRACKER_ID_LEN + 1])),
        ]);
        let r = parse_announce(&body).unwrap();
        assert_eq!((r.complete, r.incomplete, r.tracker_id), (None, None, None));
        let body = dict(&[
            (b"complete", int(u32::MAX as i64)),
            (b"incomplete", int(0)),
            (b"tracker id", bstr(&[0xFF; MAX_TRACKER_ID_LEN])),
        ]);
        let r = parse_announce(&body).unwrap();
        assert_eq!((r.complete, r.incomplete), (Some(u32::MAX), Some(0)));
        assert_eq!(r.tracker_id, Some(vec![0xFF; MAX_TRACKER_ID_LEN]));
    }

    // ---- HTTP scrape responses ----

    #[test]
    fn scrape_found_missing_failure() {
        let h1 = [1u8; 20];
        let h2 = [2u8; 20];
        let stats = dict(&[
            (b"complete", int(3)),
            (b"downloaded", int(10)),
            (b"incomplete", int(4)),
            (b"name", bstr(b"x")),
        ]);
        let files = dict(&[(&h1, stats), (&h2, dict(&[(b"complete", int(-1))]))]);
        let body = dict(&[(b"files", files)]);
        assert_eq!(
            parse_scrape(&body, &h1),
            Ok(ScrapeStats {
                complete: 3,
                incomplete: 4,
                downloaded: 10
            })
        );
        assert_eq!(parse_scrape(&body, &h2), Ok(ScrapeStats::default()));
        assert!(matches!(
            parse_scrape(&body, &[3; 20]),
            Err(TrackerError::Malformed(_))
        ));
        assert!(matches!(
            parse_scrape(b"de", &h1),
            Err(TrackerError::Malformed(_))
        ));
        assert!(matches!(
            parse_scrape(&dict(&[(b"files", int(1))]), &h1),
            Err(TrackerError::Malformed(_))
        ));
        assert!(matches!(
            parse_scrape(&dict(&[(b"files", dict(&[(&h1, int(1))]))]), &h1),
            Err(TrackerError::Malformed(_))
        ));
        assert_eq!(
            parse_scrape(&dict(&[(b"failure reason", bstr(b"no scrape"))]), &h1),
            Err(TrackerError::Failure("no scrape".into()))
        );
        for cut in 0..body.len() {
            assert!(parse_scrape(&body[..cut], &h1).is_err());
        }
    }

    // ---- UDP ----

    #[test]
    fn udp_connect_request_layout() {
        let b = udp::connect_request(0xDEAD_BEEF);
        assert_eq!(b.len(), 16);
        assert_eq!(b[..8], [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80]);
        assert_eq!(b[8..12], [0, 0, 0, 0]);
        assert_eq!(b[12..], [0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(udp::transaction_id(&b[8..]), Some(0xDEAD_BEEF));
    }

    #[test]
    fn udp_announce_request_layout() {
        let mut r = req();
        r.uploaded = 0x0102_0304_0506_0708;
        r.downloaded = 0x1112_1314_1516_1718;
        r.left = 0x2122_2324_2526_2728;
        r.ip = Some("1.2.3.4".parse().unwrap());
        r.numwant = u32::MAX;
        let b = udp::announce_request(0x0A0B_0C0D_0E0F_1011, 77, &r);
        assert_eq!(b.len(), 98);
        assert_eq!(b[0..8], 0x0A0B_0C0D_0E0F_1011u64.to_be_bytes());
        assert_eq!(b[8..12], 1u32.to_be_bytes());
        assert_eq!(b[12..16], 77u32.to_be_bytes());
        assert_eq!(b[16..36], r.info_hash);
        assert_eq!(b[36..56], r.peer_id);
        assert_eq!(b[56..64], r.downloaded.to_be_bytes());
        assert_eq!(b[64..72], r.left.to_be_bytes());
        assert_eq!(b[72..80], r.uploaded.to_be_bytes());
        assert_eq!(b[80..84], 2u32.to_be_bytes()); // started
        assert_eq!(b[84..88], [1, 2, 3, 4]);
        assert_eq!(b[88..92], r.key.to_be_bytes());
        assert_eq!(b[92..96], [0xFF; 4]); // -1: the tracker's default
        assert_eq!(b[96..98], 6881u16.to_be_bytes());
        for (event, code) in [
            (Event::None, 0u32),
            (Event::Completed, 1),
            (Event::Started, 2),
            (Event::Stopped, 3),
        ] {
            r.event = event;
            assert_eq!(udp::announce_request(0, 0, &r)[80..84], code.to_be_bytes());
        }
        for (ip, want) in [
            (None, [0; 4]),
            (Some("2001:db8::1".parse().unwrap()), [0; 4]),
            (Some("::ffff:5.6.7.8".parse().unwrap()), [5, 6, 7, 8]),
        ] {
            r.ip = ip;
            assert_eq!(udp::announce_request(0, 0, &r)[84..88], want);
        }
    }

    #[test]
    fn udp_scrape_request_sizes() {
        let hashes: Vec<[u8; 20]> = (0..100u8).map(|i| [i; 20]).collect();
        let mut out = vec![0xEE; 5];
        udp::scrape_request(9, 10, &hashes[..3], &mut out);
        assert_eq!(out.len(), 16 + 60);
        assert_eq!(out[..8], 9u64.to_be_bytes());
        assert_eq!(out[8..12], 2u32.to_be_bytes());
        assert_eq!(out[12..16], 10u32.to_be_bytes());
        assert_eq!(out[16..36], [0; 20]);
        assert_eq!(out[56..76], [2; 20]);
        udp::scrape_request(9, 10, &hashes, &mut out);
        assert_eq!(out.len(), 16 + 20 * udp::MAX_SCRAPE_HASHES);
        assert_eq!(out[out.len() - 20..], [73; 20]);
        udp::scrape_request(9, 10, &[], &mut out);
        assert_eq!(out.len(), 16);
    }

    fn header(action: u32, txid: u32) -> Vec<u8> {
        let mut v = action.to_be_bytes().to_vec();
        v.extend_from_slice(&txid.to_be_bytes());
        v
    }

    #[test]
    fn udp_transaction_id() {
        assert_eq!(
            udp::transaction_id(&header(1, 0x0102_0304)),
            Some(0x0102_0304)
        );
        assert_eq!(udp::transaction_id(&[0; 7]), None);
        assert_eq!(udp::transaction_id(&[]), None);
    }

    #[test]
    fn udp_decode_connect() {
        let mut d = header(0, 5);
        d.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(
            udp::decode_reply(&d, Action::Connect, 5, false, 0),
            Some(Reply::Connect {
                connection_id: 0x1122_3344_5566_7788
            })
        );
        assert_eq!(udp::decode_reply(&d, Action::Connect, 6, false, 0), None);
        assert_eq!(udp::decode_reply(&d, Action::Announce, 5, false, 0), None);
        assert_eq!(udp::decode_reply(&d, Action::Error, 5, false, 0), None);
        assert_eq!(
            udp::decode_reply(&d[..15], Action::Connect, 5, false, 0),
            None
        );
        d.push(0);
        assert_eq!(udp::decode_reply(&d, Action::Connect, 5, false, 0), None);
        assert_eq!(
            udp::decode_reply(&d[..7], Action::Connect, 5, false, 0),
            None
        );
    }

    fn announce_reply(
        txid: u32,
        interval: u32,
        leechers: u32,
        seeders: u32,
        peers: &[u8],
    ) -> Vec<u8> {
        let mut d = header(1, txid);
        for v in [interval, leechers, seeders] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        d.extend_from_slice(peers);
        d
    }

    #[test]
    fn udp_decode_announce() {
        let peers = compact4(&[
            ([10, 0, 0, 1], 1),
            ([10, 0, 0, 1], 1),
            ([10, 0, 0, 2], 0),
            ([10, 0, 0, 3], 3),
        ]);
        let d = announce_reply(7, 1200, 4, 9, &peers);
        let Some(Reply::Announce(r)) = udp::decode_reply(&d, Action::Announce, 7, false, 0) else {
            panic!("an announce reply")
        };
        assert_eq!(r.interval, Duration::from_secs(1200));
        assert_eq!((r.complete, r.incomplete), (Some(9), Some(4)));
        assert_eq!(r.peers, [sa("10.0.0.1:1"), sa("10.0.0.3:3")]);
        assert_eq!(
            (r.min_interval, r.tracker_id, r.warning),
            (None, None, None)
        );
        // Wrong transaction id, wrong action, wrong sizes.
        assert_eq!(udp::decode_reply(&d, Action::Announce, 8, false, 0), None);
        assert_eq!(udp::decode_reply(&d, Action::Connect, 7, false, 0), None);
        assert_eq!(udp::decode_reply(&d, Action::Scrape, 7, false, 0), None);
        assert_eq!(
            udp::decode_reply(&d[..19], Action::Announce, 7, false, 0),
            None
        );
        assert_eq!(
            udp::decode_reply(&d[..25], Action::Announce, 7, false, 0),
            None
        );
        assert!(udp::decode_reply(&d[..20], Action::Announce, 7, false, 0).is_some());
        // 24 bytes of peers: four v4 peers, not a whole number of v6 ones.
        assert_eq!(udp::decode_reply(&d, Action::Announce, 7, true, 0), None);
        // IPv6.
        let mut p6 = Vec::new();
        p6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p6.extend_from_slice(&443u16.to_be_bytes());
        let d = announce_reply(7, 0, 0, 0, &p6);
        let Some(Reply::Announce(r)) = udp::decode_reply(&d, Action::Announce, 7, true, 0) else {
            panic!("an announce reply")
        };
        assert_eq!(r.peers, [sa("[2001:db8::1]:443")]);
        assert_eq!(r.interval, DEFAULT_INTERVAL);
        let mut d = d;
        d.extend_from_slice(&[0; 12]); // 30 bytes of peers: not whole 18-byte entries
        assert_eq!(udp::decode_reply(&d, Action::Announce, 7, true, 0), None);
        // Absurd intervals.
        for (interval, want) in [
            (1, MIN_INTERVAL),
            (u32::MAX, MAX_INTERVAL),
            (0, DEFAULT_INTERVAL),
        ] {
            let d = announce_reply(1, interval, 0, 0, &[]);
            let Some(Reply::Announce(r)) = udp::decode_reply(&d, Action::Announce, 1, false, 0)
            else {
                panic!("an announce reply")
            };
            assert_eq!(r.interval, want);
        }
    }

    #[test]
    fn udp_decode_announce_caps_peers() {
        let mut p6 = Vec::new();
        for i in 0..(MAX_PEERS as u16 + 200) {
            let mut ip = [0u8; 16];
            ip[0] = 0x20;
            ip[14..].copy_from_slice(&i.to_be_bytes());
            p6.extend_from_slice(&ip);
            p6.extend_from_slice(&(i + 1).to_be_bytes());
        }
        let d = announce_reply(1, 60, 0, 0, &p6);
        let Some(Reply::Announce(r)) = udp::decode_reply(&d, Action::Announce, 1, true, 0) else {
            panic!("an announce reply")
        };
        assert_eq!(r.peers.len(), MAX_PEERS);
        check_caps(&r);
    }

    #[test]
    fn udp_decode_scrape() {
        let mut d = header(2, 3);
        for v in [1u32, 2, 3, 4, 5, 6] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        let want = vec![
            ScrapeStats {
                complete: 1,
                downloaded: 2,
                incomplete: 3,
            },
            ScrapeStats {
                complete: 4,
                downloaded: 5,
                incomplete: 6,
            },
        ];
        assert_eq!(
            udp::decode_reply(&d, Action::Scrape, 3, false, 2),
            Some(Reply::Scrape(want))
        );
        assert_eq!(udp::decode_reply(&d, Action::Scrape, 3, false, 1), None);
        assert_eq!(udp::decode_reply(&d, Action::Scrape, 3, false, 3), None);
        assert_eq!(udp::decode_reply(&d, Action::Scrape, 4, false, 2), None);
        assert_eq!(udp::decode_reply(&d, Action::Announce, 3, false, 2), None);
        assert_eq!(
            udp::decode_reply(&d[..8], Action::Scrape, 3, false, 0),
            Some(Reply::Scrape(vec![]))
        );
        // More hashes than one request carries: capped as scrape_request caps them.
        let mut d = header(2, 3);
        d.extend(vec![0; 12 * udp::MAX_SCRAPE_HASHES]);
        let Some(Reply::Scrape(s)) = udp::decode_reply(&d, Action::Scrape, 3, false, 1000) else {
            panic!("a scrape reply")
        };
        assert_eq!(s.len(), udp::MAX_SCRAPE_HASHES);
        assert!(udp::decode_reply(&d, Action::Scrape, 3, false, usize::MAX).is_some());
    }

    #[test]
    fn udp_decode_error() {
        let mut d = header(3, 9);
        d.extend_from_slice(b"torrent not registered");
        for expected in [
            Action::Connect,
            Action::Announce,
            Action::Scrape,
            Action::Error,
        ] {
            for v6 in [false, true] {
                assert_eq!(
                    udp::decode_reply(&d, expected, 9, v6, 5),
                    Some(Reply::Error("torrent not registered".into()))
                );
            }
            assert_eq!(udp::decode_reply(&d, expected, 10, false, 0), None);
        }
        assert_eq!(
            udp::decode_reply(&header(3, 9), Action::Announce, 9, false, 0),
            Some(Reply::Error(String::new()))
        );
        let mut d = header(3, 9);
        d.extend(vec![0xC3; 5000]);
        let Some(Reply::Error(m)) = udp::decode_reply(&d, Action::Connect, 9, false, 0) else {
            panic!("an error reply")
        };
        assert!(m.len() <= MAX_MESSAGE_LEN);
        // Unknown actions are ignored.
        let mut d = header(4, 9);
        d.extend_from_slice(&[0; 8]);
        assert_eq!(udp::decode_reply(&d, Action::Connect, 9, false, 0), None);
    }

    #[test]
    fn udp_retransmit_timeout() {
        let base = Duration::from_secs(15);
        assert_eq!(udp::retransmit_timeout(base, 0), Duration::from_secs(15));
        assert_eq!(udp::retransmit_timeout(base, 1), Duration::from_secs(30));
        assert_eq!(
            udp::retransmit_timeout(base, 8),
            Duration::from_secs(15 * 256)
        );
        assert_eq!(
            udp::retransmit_timeout(base, 9),
            Duration::from_secs(15 * 256)
        );
        assert_eq!(
            udp::retransmit_timeout(base, u32::MAX),
            Duration::from_secs(15 * 256)
        );
        assert_eq!(udp::retransmit_timeout(Duration::MAX, 3), Duration::MAX);
        assert_eq!(udp::retransmit_timeout(Duration::ZERO, 3), Duration::ZERO);
    }

    // ---- properties ----

    fn any_request() -> impl Strategy<Value = AnnounceRequest> {
        (
            any::<[u8; 20]>(),
            any::<[u8; 20]>(),
            any::<(u16, u64, u64, u64, u32, u32)>(),
            0..4u8,
            proptest::option::of(any::<[u8; 4]>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        )
            .prop_map(
                |(
                    info_hash,
                    peer_id,
                    (port, uploaded, downloaded, left, numwant, key),
                    ev,
                    ip,
                    tracker_id,
                )| {
                    AnnounceRequest {
                        info_hash,
                        peer_id,
                        port,
                        uploaded,
                        downloaded,
                        left,
                        event: [
                            Event::None,
                            Event::Started,
                            Event::Completed,
                            Event::Stopped,
                        ][ev as usize],
                        numwant,
                        key,
                        ip: ip.map(IpAddr::from),
                        tracker_id,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn prop_announce_url_round_trips(r in any_request(), query in "[a-z0-9=&%]{0,12}") {
            let base = if query.is_empty() { "http://t/announce".to_string() } else { format!("http://t/announce?{query}") };
            let url = announce_url(&base, &r).unwrap();
            prop_assert!(url.starts_with(&base));
            prop_assert_eq!(param(&url, "info_hash").unwrap(), r.info_hash.to_vec());
            prop_assert_eq!(param(&url, "peer_id").unwrap(), r.peer_id.to_vec());
            prop_assert_eq!(param(&url, "port").unwrap(), r.port.to_string().into_bytes());
            prop_assert_eq!(param(&url, "uploaded").unwrap(), r.uploaded.to_string().into_bytes());
            prop_assert_eq!(param(&url, "downloaded").unwrap(), r.downloaded.to_string().into_bytes());
            prop_assert_eq!(param(&url, "left").unwrap(), r.left.to_string().into_bytes());
            prop_assert_eq!(param(&url, "numwant").unwrap(), r.numwant.to_string().into_bytes());
            let key = param(&url, "key").unwrap();
            prop_assert_eq!(u32::from_str_radix(std::str::from_utf8(&key).unwrap(), 16).unwrap(), r.key);
            prop_assert_eq!(key.len(), 8);
            prop_assert_eq!(param(&url, "ip"), r.ip.map(|ip| ip.to_string().into_bytes()));
            prop_assert_eq!(param(&url, "trackerid"), r.tracker_id.clone());
            prop_assert_eq!(param(&url, "event").is_some(), r.event != Event::None);
        }

        #[test]
        fn prop_compact_peers_round_trip(peers in proptest::collection::vec((any::<[u8; 4]>(), any::<u16>()), 0..300)) {
            let body = dict(&[(b"interval", int(600)), (b"peers", bstr(&compact4(&peers)))]);
            let r = parse_announce(&body).unwrap();
            let mut want: Vec<SocketAddr> = Vec::new();
            for (ip, port) in &peers {
                let a = SocketAddr::new(IpAddr::from(*ip), *port);
                if *port != 0 && !a.ip().is_unspecified() && !want.contains(&a) {
                    want.push(a);
                }
            }
            prop_assert_eq!(&r.peers, &want);
            // The same peers over UDP.
            let d = announce_reply(1, 600, 0, 0, &compact4(&peers));
            let Some(Reply::Announce(u)) = udp::decode_reply(&d, Action::Announce, 1, false, 0) else {
                panic!("an announce reply")
            };
            prop_assert_eq!(u.peers, want);
        }

        #[test]
        fn prop_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), ctl in any::<u8>()) {
            if let Ok(r) = parse_announce(&data) {
                check_caps(&r);
            }
            if let Err(TrackerError::Failure(m)) = parse_announce(&data) {
                prop_assert!(m.len() <= MAX_MESSAGE_LEN);
            }
            let _ = parse_scrape(&data, &[0; 20]);
            let txid = udp::transaction_id(&data).unwrap_or(0);
            let expected = [Action::Connect, Action::Announce, Action::Scrape, Action::Error][usize::from(ctl & 3)];
            match udp::decode_reply(&data, expected, txid, ctl & 4 != 0, usize::from(ctl >> 3)) {
                Some(Reply::Announce(r)) => check_caps(&r),
                Some(Reply::Error(m)) => prop_assert!(m.len() <= MAX_MESSAGE_LEN),
                _ => {}
            }
            prop_assert_eq!(udp::decode_reply(&data, expected, txid ^ 1, false, 0), None);
        }

        #[test]
        fn prop_messages_are_cut(text in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let Err(TrackerError::Failure(m)) = parse_announce(&dict(&[(b"failure reason", bstr(&text))])) else {
                panic!("a failure")
            };
            prop_assert!(m.len() <= MAX_MESSAGE_LEN);
            prop_assert!(!m.chars().any(char::is_control));
            if let Ok(s) = std::str::from_utf8(&text) {
                if s.len() <= MAX_MESSAGE_LEN && !s.chars().any(char::is_control) {
                    prop_assert_eq!(m, s);
                }
            }
        }
    }
}
