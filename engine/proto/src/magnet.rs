//! Magnet links (BEP 9), parsed: what `uring-bt download magnet:?...` starts from.
//!
//! `magnet:?xt=urn:btih:<info hash>&dn=<name>&tr=<tracker>...&x.pe=<peer>...`
//!
//! - `xt=urn:btih:`: the v1 info hash, 40 hex digits or 32 base32 characters (RFC 4648
//!   alphabet, no padding), both case-insensitive. Required. The same hash may repeat; two
//!   different ones are refused. A v2-only link (`urn:btmh:` and no `urn:btih:`) is refused
//!   with [`MagnetError::V2Only`]; a hybrid link (both) is read as v1. Other `xt` URNs are
//!   ignored.
//! - `dn`: the display name, percent-decoded (`+` is a space, as libtorrent writes it), invalid
//!   UTF-8 replaced; empty is no name. The name is a hint only: the metadata's own name is the
//!   one to use for files.
//! - `tr` (also `tr.<n>`): tracker URLs, percent-decoded, repeatable, kept in order without
//!   duplicates.
//! - `x.pe`: peers, `ip:port` or `[ipv6]:port`, repeatable, without duplicates. libtorrent
//!   prints them unencoded ([`crate::metainfo::Metainfo::magnet`] does the same), other clients
//!   encode the colon (`%3A`) and brackets: both are accepted. A peer named by a host name
//!   (`example.org:6881`) is skipped and counted in [`Magnet::skipped_peers`]: this crate does
//!   no I/O, and resolving names is the caller's business.
//! - Parameter names are matched ASCII case-insensitively; unknown parameters (`xl`, `ws`,
//!   `as`, `so`, ...) and parameters without `=` are ignored. A `#fragment` ends the query.
//!
//! # Limits (each refused with a typed error, never truncated silently)
//! - [`MAX_LINK_LEN`]: 64 KiB of link, checked before anything else is looked at.
//! - [`MAX_VALUE_LEN`]: 4 KiB per parameter value, as written (before decoding).
//! - [`MAX_TRACKERS`] distinct trackers, [`MAX_PEERS`] distinct peers (skipped host names do
//!   not count).
//!
//! Nothing here panics on any input (see the `magnet` fuzz target).

use std::net::{IpAddr, SocketAddr};

/// Longest magnet link accepted, in bytes.
pub const MAX_LINK_LEN: usize = 64 << 10;
/// Longest value of one parameter, in bytes as written (percent-escapes not yet decoded).
pub const MAX_VALUE_LEN: usize = 4 << 10;
/// Most distinct trackers (`tr`) one link may list.
pub const MAX_TRACKERS: usize = 64;
/// Most distinct peers (`x.pe`, IP addresses) one link may list.
pub const MAX_PEERS: usize = 64;

/// Longest piece of the input an error message quotes (the rest is elided).
const QUOTE_LEN: usize = 64;

/// A parsed magnet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info hash (`xt=urn:btih:`).
    pub info_hash: [u8; 20],
    /// The display name (`dn`), when there is a non-empty one.
    pub name: Option<String>,
    /// Tracker URLs (`tr`), in link order, without duplicates.
    pub trackers: Vec<String>,
    /// Peers (`x.pe`) given by IP address, in link order, without duplicates.
    pub peers: Vec<SocketAddr>,
    /// `x.pe` values naming a host instead of an IP address: not resolved here, skipped.
    pub skipped_peers: usize,
}

/// Why a magnet link is refused. Each message names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("the magnet link is {len} bytes long, above the limit of {MAX_LINK_LEN}")]
    TooLong { len: usize },
    #[error("not a magnet link: it must start with `magnet:?`")]
    NotMagnet,
    #[error("magnet parameter `{key}` is {len} bytes long, above the limit of {MAX_VALUE_LEN}")]
    ValueTooLong { key: String, len: usize },
    #[error("magnet parameter `{key}` has a malformed percent-escape (`%` must be followed by two hex digits)")]
    BadEscape { key: String },
    #[error("magnet parameter `{key}` is not valid UTF-8 once percent-decoded")]
    NotUtf8 { key: String },
    #[error("BitTorrent v2 magnet links are not supported (the link has `xt=urn:btmh:` but no `xt=urn:btih:` info hash)")]
    V2Only,
    #[error("the magnet link has no `xt=urn:btih:` info hash")]
    MissingInfoHash,
    #[error("info hash `{0}` is neither 40 hex digits nor 32 base32 characters")]
    BadInfoHash(String),
    #[error("the magnet link names two different info hashes (`xt=urn:btih:`)")]
    ConflictingInfoHashes,
    #[error("the magnet link lists more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("magnet peer `x.pe={0}` is not `ip:port` or `[ipv6]:port` with a port in 1..=65535")]
    BadPeer(String),
    #[error("magnet tracker `tr={0}` is empty or holds control characters")]
    BadTracker(String),
}

/// At most [`QUOTE_LEN`] characters of `s`, for an error message.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LEN) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw` (strictly: a `%` not followed by two hex digits is an error); with
/// `plus_is_space`, `+` decodes to a space.
fn percent_decode(raw: &str, plus_is_space: bool, key: &str) -> Result<Vec<u8>, MagnetError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).copied().and_then(hex_val);
                let lo = b.get(i + 2).copied().and_then(hex_val);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(MagnetError::BadEscape { key: quote(key) }),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn decode_utf8(raw: &str, plus_is_space: bool, key: &str) -> Result<String, MagnetError> {
    String::from_utf8(percent_decode(raw, plus_is_space, key)?)
        .map_err(|_| MagnetError::NotUtf8 { key: quote(key) })
}

/// 40 hex digits or 32 base32 characters (RFC 4648, no padding), case-insensitive.
fn parse_btih(s: &str) -> Result<[u8; 20], MagnetError> {
    let bad = || MagnetError::BadInfoHash(quote(s));
    let b = s.as_bytes();
    let mut out = [0u8; 20];
    match b.len() {
        40 => {
            for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
                let hi = hex_val(pair[0]).ok_or_else(bad)?;
                let lo = hex_val(pair[1]).ok_or_else(bad)?;
                *o = hi << 4 | lo;
            }
        }
        32 => {
            // 32 symbols of 5 bits: exactly 160 bits, so no padding and no spare bits.
            let mut acc: u64 = 0;
            let mut bits = 0u32;
            let mut n = 0usize;
            for &c in b {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a',
                    b'2'..=b'7' => c - b'2' + 26,
                    _ => return Err(bad()),
                };
                acc = (acc << 5) | u64::from(v);
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    // n < 20: 32 x 5 bits give exactly 20 bytes.
                    let slot = out.get_mut(n).ok_or_else(bad)?;
                    *slot = (acc >> bits) as u8;
                    n += 1;
                    acc &= (1u64 << bits) - 1;
                }
            }
        }
        _ => return Err(bad()),
    }
    Ok(out)
}

/// Parses an `x.pe` value (already percent-decoded): `Ok(Some)` for an IP peer, `Ok(None)` for
/// a host name (skipped), an error for anything else.
fn parse_peer(s: &str) -> Result<Option<SocketAddr>, MagnetError> {
    let bad = || MagnetError::BadPeer(quote(s));
    let addr = if let Some(rest) = s.strip_prefix('[') {
        // [v6]:port (also [v4-mapped]); zone ids are not supported by SocketAddr: refused.
        let (ip, port) = rest.split_once("]:").ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
        SocketAddr::new(IpAddr::V6(ip), parse_port(port).ok_or_else(bad)?)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = parse_port(port).ok_or_else(bad)?;
        match host.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => SocketAddr::new(ip, port),
            // An unbracketed IPv6 address is ambiguous with its port: refused.
            Ok(IpAddr::V6(_)) => return Err(bad()),
            Err(_) if is_host_name(host) => return Ok(None),
            Err(_) => return Err(bad()),
        }
    };
    if addr.ip().is_unspecified() {
        return Err(bad());
    }
    Ok(Some(addr))
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// A DNS name as RFC 1123 allows it (letters, digits, `-`, dots between labels), that is not
/// all digits and dots (a malformed IPv4 address is not a host name).
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        && !h.bytes().all(|c| c.is_ascii_digit() || c == b'.')
}

/// A parameter name, compared ASCII case-insensitively.
fn key_is(key: &str, name: &str) -> bool {
    key.eq_ignore_ascii_case(name)
}

/// `tr`, or `tr.<digits>` (some sites number their trackers).
fn is_tracker_key(key: &str) -> bool {
    key_is(key, "tr")
        || key.get(..3).is_some_and(|k| k.eq_ignore_ascii_case("tr."))
            && key.len() > 3
            && key.bytes().skip(3).all(|c| c.is_ascii_digit())
}

/// Parses a magnet link (untrusted: typed by a user or pasted from a web page).
pub fn parse(link: &str) -> Result<Magnet, MagnetError> {
    if link.len() > MAX_LINK_LEN {
        return Err(MagnetError::TooLong { len: link.len() });
    }
    let link = link.trim();
    let query = link
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("magnet:?"))
        .and_then(|_| link.get(8..))
        .ok_or(MagnetError::NotMagnet)?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);

    let mut info_hash: Option<[u8; 20]> = None;
    let mut saw_btmh = false;
    let mut name = None;
    let mut trackers: Vec<String> = Vec::new();
    let mut peers: Vec<SocketAddr> = Vec::new();
    let mut skipped_peers = 0usize;

    for param in query.split('&') {
        let Some((key, value)) = param.split_once('=') else {
            continue; // `&&`, a trailing `&`, or a flag without a value: ignored
        };
        if value.len() > MAX_VALUE_LEN {
            return Err(MagnetError::ValueTooLong {
                key: quote(key),
                len: value.len(),
            });
        }
        if key_is(key, "xt") {
            let urn = decode_utf8(value, false, key)?;
            let lower_prefix = |p: &str| {
                urn.get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p))
            };
            if lower_prefix("urn:btih:") {
                let h = parse_btih(&urn[9..])?;
                match info_hash {
                    Some(prev) if prev != h => return Err(MagnetError::ConflictingInfoHashes),
                    _ => info_hash = Some(h),
                }
            } else if lower_prefix("urn:btmh:") {
                saw_btmh = true;
            }
            // Other URNs (ed2k, sha1, ...) are not ours: ignored.
        } else if key_is(key, "dn") {
            let dn = String::from_utf8_lossy(&percent_decode(value, true, key)?).into_owned();
            name = (!dn.is_empty()).then_some(dn);
        } else if is_tracker_key(key) {
            let url = decode_utf8(value, false, key)?;
            if url.trim().is_empty() || url.chars().any(char::is_control) {
                return Err(MagnetError::BadTracker(quote(&url)));
            }
            if !trackers.contains(&url) {
                if trackers.len() == MAX_TRACKERS {
                    return Err(MagnetError::TooMany {
                        what: "trackers (`tr`)",
                        limit: MAX_TRACKERS,
                    });
                }
                trackers.push(url);
            }
        } else if key_is(key, "x.pe") {
            let pe = decode_utf8(value, false, key)?;
            match parse_peer(&pe)? {
                Some(addr) if !peers.contains(&addr) => {
                    if peers.len() == MAX_PEERS {
                        return Err(MagnetError::TooMany {
                            what: "peers (`x.pe`)",
                            limit: MAX_PEERS,
                        });
                    }
                    peers.push(addr);
                }
                Some(_) => {}
                None => skipped_peers += 1,
            }
        }
        // Anything else: ignored (BEP 9 lets clients add parameters).
    }

    let info_hash = match info_hash {
        Some(h) => h,
        None if saw_btmh => return Err(MagnetError::V2Only),
        None => return Err(MagnetError::MissingInfoHash),
    };
    Ok(Magnet {
        info_hash,
        name,
        trackers,
        peers,
        skipped_peers,
    })
}

impl std::str::FromStr for Magnet {
    type Err = MagnetError;
    fn from_str(s: &str) -> Result<Magnet, MagnetError> {
        parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::Metainfo;
    use proptest::prelude::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    const HASH: [u8; 20] = [
        0xc1, 0x2f, 0xe1, 0xc0, 0x6b, 0xba, 0x25, 0x4a, 0x9d, 0xc9, 0xf5, 0x19, 0xb3, 0x35, 0xaa,
        0x7c, 0x13, 0x67, 0xa8, 0x8a,
    ];

    fn base32(bytes: &[u8; 20]) -> String {
        const ALPHA: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = String::new();
        let mut acc: u64 = 0;
        let mut bits = 0;
        for &b in bytes {
            acc = acc << 8 | u64::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHA[(acc >> bits) as usize & 31] as char);
            }
        }
        assert_eq!(bits, 0);
        out
    }

    fn ok(link: &str) -> Magnet {
        parse(link).unwrap_or_else(|e| panic!("{link}: {e}"))
    }

    fn err(link: &str) -> MagnetError {
        match parse(link) {
            Ok(m) => panic!("{link}: accepted as {m:?}"),
            Err(e) => e,
        }
    }

    fn bs(s: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", s.len()).into_bytes();
        v.extend_from_slice(s);
        v
    }

    /// A .torrent named `name` with these trackers (one per tier).
    fn torrent(name: &str, trackers: &[&str]) -> Metainfo {
        let mut info = b"d6:lengthi100e4:name".to_vec();
        info.extend(bs(name.as_bytes()));
        info.extend(b"12:piece lengthi16384e6:pieces");
        info.extend(bs(&[3u8; 20]));
        info.push(b'e');
        let mut t = b"d".to_vec();
        if !trackers.is_empty() {
            t.extend(b"13:announce-listl");
            for tr in trackers {
                t.push(b'l');
                t.extend(bs(tr.as_bytes()));
                t.push(b'e');
            }
            t.push(b'e');
        }
        t.extend(b"4:info");
        t.extend(&info);
        t.push(b'e');
        Metainfo::from_bytes(&t).unwrap()
    }

    #[test]
    fn minimal_hex_and_base32() {
        let m = ok(&format!("magnet:?xt=urn:btih:{HEX}"));
        assert_eq!(
            m,
            Magnet {
                info_hash: HASH,
                name: None,
                trackers: vec![],
                peers: vec![],
                skipped_peers: 0,
            }
        );
        // Upper-case hex, upper- and lower-case base32, upper-case scheme and URN.
        assert_eq!(
            ok(&format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase())).info_hash,
            HASH
        );
        let b32 = base32(&HASH);
        assert_eq!(b32.len(), 32);
        assert_eq!(ok(&format!("magnet:?xt=urn:btih:{b32}")).info_hash, HASH);
        assert_eq!(
            ok(&format!("MAGNET:?XT=URN:BTIH:{}", b32.to_lowercase())).info_hash,
            HASH
        );
        // A known vector: 20 zero bytes are 32 `A`s; 0xff.. is 32 `7`s.
        assert_eq!(
            ok(&format!("magnet:?xt=urn:btih:{}", "A".repeat(32))).info_hash,
            [0; 20]
        );
        assert_eq!(
            ok(&format!("magnet:?xt=urn:btih:{}", "7".repeat(32))).info_hash,
            [0xff; 20]
        );
    }

    #[test]
    fn round_trips_what_metainfo_prints() {
        let meta = torrent(
            "My file (1) é+&=.bin",
            &[
                "http://127.0.0.1:6969/announce?key=a&b=c d",
                "udp://[::1]:6969",
                "http://t.example/ann%20ounce",
            ],
        );
        let peers: Vec<SocketAddr> = vec![
            "127.0.0.1:6881".parse().unwrap(),
            "[::1]:51413".parse().unwrap(),
            "[2001:db8::7]:1".parse().unwrap(),
        ];
        let link = meta.magnet(&peers);
        let m = ok(&link);
        assert_eq!(m.info_hash, meta.info_hash);
        assert_eq!(m.name.as_deref(), Some(meta.name.as_str()));
        assert_eq!(
            m.trackers,
            meta.tracker_urls().map(str::to_owned).collect::<Vec<_>>()
        );
        assert_eq!(m.peers, peers);
        assert_eq!(m.skipped_peers, 0);
        // No trackers, no peers.
        let bare = torrent("a", &[]);
        let m = ok(&bare.magnet(&[]));
        assert_eq!(m.info_hash, bare.info_hash);
        assert_eq!(m.name.as_deref(), Some("a"));
        assert!(m.trackers.is_empty() && m.peers.is_empty());
    }

    #[test]
    fn x_pe_encoded_and_unencoded() {
        let m = ok(&format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=127.0.0.2:6881&x.pe=127.0.0.3%3A6882\
             &x.pe=%5B%3A%3A1%5D%3A6883&x.pe=[::2]:6884&X.PE=%5b::3%5d%3a6885"
        ));
        let want: Vec<SocketAddr> = [
            "127.0.0.2:6881",
            "127.0.0.3:6882",
            "[::1]:6883",
            "[::2]:6884",
            "[::3]:6885",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(m.peers, want);
        // Duplicates are kept once, in first-seen order.
        let m = ok(&format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=127.0.0.2:1&x.pe=127.0.0.2%3A1&x.pe=127.0.0.1:1"
        ));
        assert_eq!(
            m.peers,
            vec![
                "127.0.0.2:1".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn host_name_peers_are_skipped_and_counted() {
        let m = ok(&format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=peer.example.org:6881&x.pe=localhost%3A1\
             &x.pe=127.0.0.1:2"
        ));
        assert_eq!(m.peers, vec!["127.0.0.1:2".parse::<SocketAddr>().unwrap()]);
        assert_eq!(m.skipped_peers, 2);
    }

    #[test]
    fn trackers_and_names_are_percent_decoded() {
        let m = ok(&format!(
            "magnet:?dn=Some+Name%20%C3%A9&xt=urn:btih:{HEX}&tr=udp%3A%2F%2Ft.example%3A80\
             &tr=http://a.example/x+y&tr.1=http%3A%2F%2Fb.example&tr=udp%3A%2F%2Ft.example%3A80\
             &xl=123&ws=http%3A%2F%2Fw&unknown&&"
        ));
        assert_eq!(m.name.as_deref(), Some("Some Name é"));
        assert_eq!(
            m.trackers,
            vec![
                "udp://t.example:80".to_string(),
                "http://a.example/x+y".to_string(),
                "http://b.example".to_string(),
            ]
        );
        // Empty dn: no name. Invalid UTF-8 in dn: replaced.
        assert_eq!(ok(&format!("magnet:?xt=urn:btih:{HEX}&dn=")).name, None);
        assert_eq!(
            ok(&format!("magnet:?xt=urn:btih:{HEX}&dn=a%FFb"))
                .name
                .as_deref(),
            Some("a\u{fffd}b")
        );
        // A fragment ends the query.
        let m = ok(&format!("magnet:?xt=urn:btih:{HEX}&dn=x#&tr=http://frag"));
        assert!(m.trackers.is_empty());
    }

    #[test]
    fn hybrid_and_v2() {
        let btmh = format!("1220{}", "ab".repeat(32));
        let m = ok(&format!(
            "magnet:?xt=urn:btmh:{btmh}&xt=urn:btih:{HEX}&dn=hybrid"
        ));
        assert_eq!(m.info_hash, HASH);
        let e = err(&format!("magnet:?xt=urn:btmh:{btmh}&dn=v2"));
        assert_eq!(e, MagnetError::V2Only);
        assert!(e
            .to_string()
            .contains("BitTorrent v2 magnet links are not supported"));
    }

    #[test]
    fn refuses_bad_links() {
        assert_eq!(err(""), MagnetError::NotMagnet);
        assert_eq!(err("http://x/?xt=urn:btih:"), MagnetError::NotMagnet);
        assert_eq!(err("magnet:"), MagnetError::NotMagnet);
        assert_eq!(err("magnet:?"), MagnetError::MissingInfoHash);
        assert_eq!(
            err("magnet:?dn=x&xt=urn:ed2k:abc"),
            MagnetError::MissingInfoHash
        );
        for bad in [
            &HEX[..39],
            &format!("{HEX}0"),
            &HEX.replace('c', "g"),
            "0123456789abcdefghijklmnopqrstuv", // 32 chars, but `0`, `1`, `8`, `9` not base32
            "",
        ] {
            assert!(
                matches!(
                    err(&format!("magnet:?xt=urn:btih:{bad}")),
                    MagnetError::BadInfoHash(_)
                ),
                "{bad}"
            );
        }
        let other = HEX.replace('c', "d");
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            MagnetError::ConflictingInfoHashes
        );
        // The same hash twice, hex and base32: fine.
        ok(&format!(
            "magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}",
            base32(&HASH)
        ));
        for (pe, _why) in [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:65536", "port too large"),
            ("127.0.0.1:+80", "sign"),
            ("::1:80", "unbracketed v6"),
            ("[::1]80", "no colon after bracket"),
            ("[zz]:80", "bad v6"),
            ("0.0.0.0:80", "unspecified"),
            ("300.1.1.1:80", "bad v4"),
            ("bad_host!:80", "not a host name"),
            (":80", "empty host"),
        ] {
            assert!(
                matches!(
                    err(&format!("magnet:?xt=urn:btih:{HEX}&x.pe={pe}")),
                    MagnetError::BadPeer(_)
                ),
                "{pe}"
            );
        }
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&tr=http%3A%2F%2Fx%2")),
            MagnetError::BadEscape { key: "tr".into() }
        );
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&dn=%zz")),
            MagnetError::BadEscape { key: "dn".into() }
        );
        assert_eq!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&tr=%FF")),
            MagnetError::NotUtf8 { key: "tr".into() }
        );
        assert!(matches!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&tr=")),
            MagnetError::BadTracker(_)
        ));
        assert!(matches!(
            err(&format!("magnet:?xt=urn:btih:{HEX}&tr=http://a%0A")),
            MagnetError::BadTracker(_)
        ));
    }

    #[test]
    fn limits() {
        // Link length.
        let long = format!("magnet:?xt=urn:btih:{HEX}&x={}", "a".repeat(MAX_LINK_LEN));
        assert_eq!(err(&long), MagnetError::TooLong { len: long.len() });
        // Value length: 4 KiB is fine, one more byte is not.
        let at = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "a".repeat(MAX_VALUE_LEN));
        assert_eq!(ok(&at).name.map(|n| n.len()), Some(MAX_VALUE_LEN));
        let over = format!(
            "magnet:?xt=urn:btih:{HEX}&dn={}",
            "a".repeat(MAX_VALUE_LEN + 1)
        );
        assert_eq!(
            err(&over),
            MagnetError::ValueTooLong {
                key: "dn".into(),
                len: MAX_VALUE_LEN + 1
            }
        );
        // Trackers: 64 distinct are fine (and repeats do not count), 65 are not.
        let mut link = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..MAX_TRACKERS {
            link.push_str(&format!("&tr=http://t{i}.example&tr=http://t{i}.example"));
        }
        assert_eq!(ok(&link).trackers.len(), MAX_TRACKERS);
        link.push_str("&tr=http://one-more.example");
        assert_eq!(
            err(&link),
            MagnetError::TooMany {
                what: "trackers (`tr`)",
                limit: MAX_TRACKERS
            }
        );
        // Peers likewise; skipped host names do not count.
        let mut link = format!("magnet:?xt=urn:btih:{HEX}&x.pe=host.example:1");
        for i in 0..MAX_PEERS {
            link.push_str(&format!("&x.pe=127.0.1.{i}:6881"));
        }
        let m = ok(&link);
        assert_eq!((m.peers.len(), m.skipped_peers), (MAX_PEERS, 1));
        link.push_str("&x.pe=127.0.2.1:6881");
        let e = err(&link);
        assert_eq!(
            e,
            MagnetError::TooMany {
                what: "peers (`x.pe`)",
                limit: MAX_PEERS
            }
        );
        assert_eq!(
            e.to_string(),
            "the magnet link lists more than 64 peers (`x.pe`)"
        );
        // Error messages quote at most 64 characters of the input.
        let e = err(&format!("magnet:?xt=urn:btih:{}", "é".repeat(1000)));
        assert!(e.to_string().len() < 200, "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s);
            let _ = parse(&format!("magnet:?{s}"));
            let _ = parse(&format!("magnet:?xt=urn:btih:{HEX}&{s}"));
        }

        #[test]
        fn base32_and_hex_agree(hash in any::<[u8; 20]>()) {
            let hex = crate::metainfo::hex(&hash);
            prop_assert_eq!(parse(&format!("magnet:?xt=urn:btih:{hex}")).unwrap().info_hash, hash);
            let b32 = base32(&hash);
            prop_assert_eq!(parse(&format!("magnet:?xt=urn:btih:{b32}")).unwrap().info_hash, hash);
        }

        #[test]
        fn peers_round_trip(
            v4 in proptest::collection::vec((any::<[u8; 4]>(), 1u16..), 0..10),
            v6 in proptest::collection::vec((any::<[u8; 16]>(), 1u16..), 0..10),
            encode in any::<bool>(),
        ) {
            let peers: Vec<SocketAddr> = v4
                .into_iter()
                .map(|(ip, p)| SocketAddr::from((ip, p)))
                .chain(v6.into_iter().map(|(ip, p)| SocketAddr::from((std::net::Ipv6Addr::from(ip), p))))
                .filter(|a| !a.ip().is_unspecified())
                .collect();
            let mut link = format!("magnet:?xt=urn:btih:{HEX}");
            for p in &peers {
                let s = p.to_string();
                let s = if encode {
                    s.replace(':', "%3A").replace('[', "%5B").replace(']', "%5D")
                } else {
                    s
                };
                link.push_str(&format!("&x.pe={s}"));
            }
            let mut want = Vec::new();
            for p in peers {
                if !want.contains(&p) {
                    want.push(p);
                }
            }
            prop_assert_eq!(parse(&link).unwrap().peers, want);
        }
    }
}
