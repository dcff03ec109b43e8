//! BEP 9 (`ut_metadata`) and BEP 11 (`ut_pex`): the extension messages a seeder needs to be
//! findable from a magnet link and through its peers, sans-IO.
//!
//! Everything here produces or consumes the *payload* of a BEP 10 extended message, the bytes
//! after its one-byte extension id; [`crate::wire::encode`] of
//! `Message::Extended { id, payload }` frames it. The id to send with is the one the peer put in
//! its extension handshake's `m` dictionary under [`UT_METADATA`] / [`UT_PEX`]; the ids a peer
//! sends to us with are ours, [`OUR_UT_METADATA_ID`] and [`OUR_UT_PEX_ID`].
//!
//! # Decoding untrusted payloads
//! The bencoded part of every payload is validated first by the iterative (non-recursive)
//! [`bencode::validate`] under small limits ([`METADATA_LIMITS`], [`PEX_LIMITS`]), then read over
//! its raw spans with [`bencode::dict_entries`]. Unknown keys are ignored; a known key of the
//! wrong type, a missing required key, or an inconsistent value is an [`ExtError`]. When a key
//! repeats, the last value wins. Nothing here panics on peer data.
//!
//! # Bounds
//! - **Metadata served per connection**: [`MetadataServer`] serves at most `max_replies` pieces
//!   to one connection, after that it answers every request with a reject. The recommended cap is
//!   [`default_max_replies`]: `2 x pieces + 4` (every piece twice, e.g. after a failed hash check,
//!   plus slack), so one peer can make us send at most
//!   `(2 x ceil(len / 16 KiB) + 4) x (16 KiB + 80)` bytes of metadata replies in a connection's
//!   life: about 2 x the info dict. What is *queued* at any moment is bounded by the session's
//!   control queue (a peer that does not read stops being read from); a reject is 32 bytes or
//!   less, answering a request of about the same size.
//! - **Metadata size**: [`MAX_METADATA_SIZE`] (16 MiB, 1,024 pieces). Larger `total_size`s are
//!   refused; a [`MetadataServer`] for a larger info dict rejects every request.
//! - **PEX in**: a payload is at most [`PEX_LIMITS`]`.max_size` (64 KiB); at most
//!   [`PEX_MAX_ADDED`] added and [`PEX_MAX_DROPPED`] dropped addresses are kept per address
//!   family, the rest ignored. [`PexReceiver`] decodes at most one message per
//!   [`PEX_MIN_RECV_INTERVAL`] and ignores (does not decode) the ones in between.
//! - **PEX out**: [`PexSender`] sends at most one message per [`PEX_INTERVAL`], within the same
//!   caps, and remembers at most `max_remembered` addresses ([`PEX_MAX_REMEMBERED`] by default)
//!   that it told the peer about.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::bencode::{self, BencodeError, Limits};

/// The BEP 10 extension name of BEP 9 metadata exchange.
pub const UT_METADATA: &str = "ut_metadata";
/// The BEP 10 extension name of BEP 11 peer exchange.
pub const UT_PEX: &str = "ut_pex";
/// The id we ask peers to send `ut_metadata` messages to us with (our handshake's `m`).
pub const OUR_UT_METADATA_ID: u8 = 1;
/// The id we ask peers to send `ut_pex` messages to us with (our handshake's `m`).
pub const OUR_UT_PEX_ID: u8 = 2;

/// Size of one metadata piece (BEP 9); only the last piece may be shorter.
pub const METADATA_PIECE_LEN: usize = 16384;
/// Largest info dictionary we fetch or serve: 16 MiB (1,024 pieces), below the metainfo crate's
/// [`crate::metainfo::MAX_TORRENT_SIZE`].
pub const MAX_METADATA_SIZE: usize = 16 << 20;

/// Limits for the bencoded dictionary at the start of a `ut_metadata` payload: it has three keys
/// (`msg_type`, `piece`, `total_size`); the limits leave room for a few unknown ones.
pub const METADATA_LIMITS: Limits = Limits {
    max_depth: 8,
    max_tokens: 64,
    max_size: 1024,
};

/// Limits for a `ut_pex` payload (the whole payload is one dictionary). 64 KiB holds more than
/// 3,600 IPv6 entries, far above the caps; six keys need 13 values, the rest is room for unknown
/// keys.
pub const PEX_LIMITS: Limits = Limits {
    max_depth: 8,
    max_tokens: 256,
    max_size: 64 << 10,
};

/// At most this many added addresses per address family in one PEX message, sent or kept.
pub const PEX_MAX_ADDED: usize = 50;
/// At most this many dropped addresses per address family in one PEX message, sent or kept.
pub const PEX_MAX_DROPPED: usize = 50;
/// We send at most one PEX message per this interval to one peer (libtorrent refuses more than
/// about one a minute).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// A PEX message that arrives sooner than this after the last one we decoded is ignored (not
/// decoded, not an error): some slack under [`PEX_INTERVAL`] for network delays.
pub const PEX_MIN_RECV_INTERVAL: Duration = Duration::from_secs(45);
/// Default bound on the addresses a [`PexSender`] remembers having told its peer about.
pub const PEX_MAX_REMEMBERED: usize = 200;

/// Per-peer flags of `added.f` / `added6.f` (BEP 11).
pub mod pex_flags {
    /// The peer prefers encrypted connections.
    pub const PREFERS_ENCRYPTION: u8 = 0x01;
    /// The peer is a seed (or upload-only).
    pub const SEED: u8 = 0x02;
    /// The peer supports uTP.
    pub const UTP: u8 = 0x04;
    /// The peer supports the holepunch extension.
    pub const HOLEPUNCH: u8 = 0x08;
    /// The sender connected out to this peer: it is reachable at this address.
    pub const OUTGOING: u8 = 0x10;
}

/// `ut_metadata` message types (`msg_type`).
mod msg_type {
    pub const REQUEST: i64 = 0;
    pub const DATA: i64 = 1;
    pub const REJECT: i64 = 2;
}

/// What is wrong with a `ut_metadata` or `ut_pex` payload. A peer that sends one has sent
/// something we do not understand: the caller ignores the message or drops the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    #[error("malformed bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("missing key `{0}`")]
    MissingKey(&'static str),
    #[error("key `{0}` has the wrong type or is out of range")]
    BadValue(&'static str),
    #[error("unknown ut_metadata msg_type {0}")]
    UnknownMsgType(i64),
    #[error("{len} unexpected bytes after the dictionary of a {what} message")]
    Trailing { len: usize, what: &'static str },
    #[error("metadata total_size {0} is outside 1..={MAX_METADATA_SIZE}")]
    BadTotalSize(u64),
    #[error("metadata piece {piece} is beyond total_size {total_size}")]
    PieceOutOfRange { piece: u32, total_size: u64 },
    #[error("metadata piece {piece} carries {len} bytes, expected {expected}")]
    BadDataLen {
        piece: u32,
        len: usize,
        expected: usize,
    },
    #[error("`{key}` is {len} bytes, not a multiple of {unit}")]
    BadCompactLen {
        key: &'static str,
        len: usize,
        unit: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// BEP 9: ut_metadata
// ---------------------------------------------------------------------------------------------

/// One decoded `ut_metadata` message. `Data` borrows its bytes from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    /// The peer asks for metadata piece `piece`.
    Request { piece: u32 },
    /// Metadata piece `piece` of an info dict of `total_size` bytes. The decoder checked that
    /// `total_size` is in `1..=MAX_METADATA_SIZE`, that the piece exists, and that `data` has
    /// exactly the piece's length; the caller still checks `total_size` against the handshake's
    /// `metadata_size` and the assembled bytes against the info hash.
    Data {
        piece: u32,
        total_size: u64,
        data: &'a [u8],
    },
    /// The peer will not send piece `piece`.
    Reject { piece: u32 },
}

/// Number of metadata pieces of an info dict of `len` bytes (0 for 0 bytes).
pub fn metadata_num_pieces(len: usize) -> u32 {
    u32::try_from(len.div_ceil(METADATA_PIECE_LEN)).unwrap_or(u32::MAX)
}

/// The byte range of metadata piece `piece` in an info dict of `len` bytes; `None` when the
/// piece does not exist.
pub fn metadata_piece_range(len: usize, piece: u32) -> Option<Range<usize>> {
    let start = usize::try_from(piece)
        .ok()?
        .checked_mul(METADATA_PIECE_LEN)?;
    if start >= len {
        return None;
    }
    Some(start..len.min(start.saturating_add(METADATA_PIECE_LEN)))
}

/// Decodes a `ut_metadata` payload from a peer (untrusted).
///
/// The payload starts with a bencoded dictionary, found with [`bencode::validate`] under
/// [`METADATA_LIMITS`]. A `Request` or `Reject` must end there; a `Data` message's piece bytes
/// follow it and must have exactly the piece's length for `total_size`. An unknown `msg_type` is
/// an error.
pub fn decode_metadata(payload: &[u8]) -> Result<MetadataMsg<'_>, ExtError> {
    if payload.first() != Some(&b'd') {
        return Err(if payload.is_empty() {
            BencodeError::UnexpectedEof { offset: 0 }
        } else {
            BencodeError::NotADictionary
        }
        .into());
    }
    let dict_len = bencode::validate(payload, &METADATA_LIMITS)?;
    let (dict, rest) = payload.split_at(dict_len);
    let mut kind = None;
    let mut piece = None;
    let mut total_size = None;
    for (key, raw) in bencode::dict_entries(dict, &METADATA_LIMITS)? {
        match key {
            b"msg_type" => {
                kind = Some(bencode::as_int(raw).ok_or(ExtError::BadValue("msg_type"))?);
            }
            b"piece" => {
                piece = Some(
                    bencode::as_int(raw)
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or(ExtError::BadValue("piece"))?,
                );
            }
            b"total_size" => {
                total_size = Some(
                    bencode::as_int(raw)
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or(ExtError::BadValue("total_size"))?,
                );
            }
            _ => {}
        }
    }
    let kind = kind.ok_or(ExtError::MissingKey("msg_type"))?;
    if !matches!(kind, msg_type::REQUEST | msg_type::DATA | msg_type::REJECT) {
        return Err(ExtError::UnknownMsgType(kind));
    }
    let piece = piece.ok_or(ExtError::MissingKey("piece"))?;
    match kind {
        msg_type::DATA => {
            let total_size = total_size.ok_or(ExtError::MissingKey("total_size"))?;
            let len = usize::try_from(total_size)
                .ok()
                .filter(|&n| (1..=MAX_METADATA_SIZE).contains(&n))
                .ok_or(ExtError::BadTotalSize(total_size))?;
            let range = metadata_piece_range(len, piece)
                .ok_or(ExtError::PieceOutOfRange { piece, total_size })?;
            if rest.len() != range.len() {
                return Err(ExtError::BadDataLen {
                    piece,
                    len: rest.len(),
                    expected: range.len(),
                });
            }
            Ok(MetadataMsg::Data {
                piece,
                total_size,
                data: rest,
            })
        }
        _ => {
            let (what, msg) = if kind == msg_type::REQUEST {
                ("ut_metadata request", MetadataMsg::Request { piece })
            } else {
                ("ut_metadata reject", MetadataMsg::Reject { piece })
            };
            if !rest.is_empty() {
                return Err(ExtError::Trailing {
                    len: rest.len(),
                    what,
                });
            }
            Ok(msg)
        }
    }
}

fn put_bstr(out: &mut Vec<u8>, s: &[u8]) {
    put_len_prefix(out, s.len());
    out.extend_from_slice(s);
}

fn put_len_prefix(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b':');
}

fn put_bint(out: &mut Vec<u8>, v: i64) {
    out.push(b'i');
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'e');
}

fn put_metadata_dict(out: &mut Vec<u8>, kind: i64, piece: u32, total_size: Option<u64>) {
    out.push(b'd');
    put_bstr(out, b"msg_type");
    put_bint(out, kind);
    put_bstr(out, b"piece");
    put_bint(out, i64::from(piece));
    if let Some(total) = total_size {
        put_bstr(out, b"total_size");
        out.push(b'i');
        out.extend_from_slice(total.to_string().as_bytes());
        out.push(b'e');
    }
    out.push(b'e');
}

/// Appends the payload of a `ut_metadata` request for `piece` to `out`.
pub fn encode_metadata_request(piece: u32, out: &mut Vec<u8>) {
    put_metadata_dict(out, msg_type::REQUEST, piece, None);
}

/// Appends the payload of a `ut_metadata` reject of `piece` to `out`.
pub fn encode_metadata_reject(piece: u32, out: &mut Vec<u8>) {
    put_metadata_dict(out, msg_type::REJECT, piece, None);
}

/// Appends the payload of a `ut_metadata` data message to `out`: the dictionary (under 80
/// bytes), then `data`, which the caller takes from its info dict as
/// [`metadata_piece_range`]`(total_size, piece)`.
pub fn encode_metadata_data(piece: u32, total_size: u64, data: &[u8], out: &mut Vec<u8>) {
    put_metadata_dict(out, msg_type::DATA, piece, Some(total_size));
    out.extend_from_slice(data);
}

/// The recommended `max_replies` for a [`MetadataServer`] of an info dict of `metadata_len`
/// bytes: `2 x pieces + 4`. A well-behaved peer needs each piece once; twice covers a retry of
/// the whole dict after a failed hash check, 4 more cover a few repeated requests.
pub fn default_max_replies(metadata_len: usize) -> u32 {
    metadata_num_pieces(metadata_len)
        .saturating_mul(2)
        .saturating_add(4)
}

/// What to answer a metadata request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataAnswer {
    /// Send a data message for `piece` with the bytes `range` of the info dict.
    Serve { piece: u32, range: Range<usize> },
    /// Send a reject for `piece`.
    Reject { piece: u32 },
}

/// Answers one connection's `ut_metadata` requests for an info dict the caller owns, and bounds
/// how much metadata that connection can make us send (see the module's Bounds).
#[derive(Debug, Clone)]
pub struct MetadataServer {
    metadata_len: usize,
    max_replies: u32,
    served: u32,
    rejected: u64,
}

impl MetadataServer {
    /// A server for an info dict of `metadata_len` bytes that serves at most `max_replies`
    /// pieces on this connection (see [`default_max_replies`]). An info dict of 0 bytes or of
    /// more than [`MAX_METADATA_SIZE`] is not served at all: every request is rejected (and
    /// [`MetadataServer::metadata_size`] says not to advertise it).
    pub fn new(metadata_len: usize, max_replies: u32) -> Self {
        MetadataServer {
            metadata_len,
            max_replies,
            served: 0,
            rejected: 0,
        }
    }

    /// Number of metadata pieces of an info dict of `len` bytes.
    pub fn num_pieces(len: usize) -> u32 {
        metadata_num_pieces(len)
    }

    /// The `metadata_size` to put in our extension handshake, `None` when this dict is not
    /// served (empty or larger than [`MAX_METADATA_SIZE`]).
    pub fn metadata_size(&self) -> Option<u64> {
        self.servable().then_some(self.metadata_len as u64)
    }

    fn servable(&self) -> bool {
        (1..=MAX_METADATA_SIZE).contains(&self.metadata_len)
    }

    /// The answer to a request for `piece`: serve it while it exists and fewer than
    /// `max_replies` pieces were served on this connection, else reject it.
    pub fn on_request(&mut self, piece: u32) -> MetadataAnswer {
        let range = if self.servable() && self.served < self.max_replies {
            metadata_piece_range(self.metadata_len, piece)
        } else {
            None
        };
        match range {
            Some(range) => {
                self.served += 1;
                MetadataAnswer::Serve { piece, range }
            }
            None => {
                self.rejected = self.rejected.saturating_add(1);
                MetadataAnswer::Reject { piece }
            }
        }
    }

    /// Pieces served on this connection so far (at most `max_replies`).
    pub fn served(&self) -> u32 {
        self.served
    }

    /// Requests rejected on this connection so far (a caller may drop a peer that keeps asking).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

// ---------------------------------------------------------------------------------------------
// BEP 11: ut_pex
// ---------------------------------------------------------------------------------------------

/// One PEX message, both address families. Decoded messages list IPv4 entries before IPv6 ones;
/// the encoding splits them by family (`added`/`added.f`/`dropped`: 6-byte compact IPv4,
/// `added6`/`added6.f`/`dropped6`: 18-byte compact IPv6) and keeps each family's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers the sender connected to since its last message, with their [`pex_flags`].
    pub added: Vec<(SocketAddr, u8)>,
    /// Peers the sender disconnected from since its last message.
    pub dropped: Vec<SocketAddr>,
}

/// IPv4 compact entry length: 4 address bytes and a big-endian port.
const COMPACT_V4: usize = 6;
/// IPv6 compact entry length: 16 address bytes and a big-endian port.
const COMPACT_V6: usize = 18;

/// An address worth passing on: a port and a specified IP.
fn usable(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified()
}

fn parse_compact(chunk: &[u8]) -> Option<SocketAddr> {
    match chunk.len() {
        COMPACT_V4 => {
            let ip: [u8; 4] = chunk[..4].try_into().ok()?;
            let port = u16::from_be_bytes([chunk[4], chunk[5]]);
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        COMPACT_V6 => {
            let ip: [u8; 16] = chunk[..16].try_into().ok()?;
            let port = u16::from_be_bytes([chunk[16], chunk[17]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

fn put_compact(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A compact peer list of `unit`-byte entries, or an error when its length is not a multiple.
fn compact_list<'a>(key: &'static str, raw: &'a [u8], unit: usize) -> Result<&'a [u8], ExtError> {
    let list = bencode::as_bytes(raw).ok_or(ExtError::BadValue(key))?;
    if list.len() % unit != 0 {
        return Err(ExtError::BadCompactLen {
            key,
            len: list.len(),
            unit,
        });
    }
    Ok(list)
}

/// Keeps the first `cap` usable entries of `list` (with their flags; a missing flag is 0).
fn push_added(out: &mut Vec<(SocketAddr, u8)>, list: &[u8], flags: &[u8], unit: usize, cap: usize) {
    let entries = list.chunks_exact(unit).enumerate();
    let usable_entries = entries.filter_map(|(i, chunk)| {
        let addr = parse_compact(chunk).filter(usable)?;
        Some((addr, flags.get(i).copied().unwrap_or(0)))
    });
    out.extend(usable_entries.take(cap));
}

fn push_dropped(out: &mut Vec<SocketAddr>, list: &[u8], unit: usize, cap: usize) {
    let entries = list
        .chunks_exact(unit)
        .filter_map(|chunk| parse_compact(chunk).filter(usable));
    out.extend(entries.take(cap));
}

/// Decodes a `ut_pex` payload from a peer (untrusted).
///
/// The payload must be exactly one dictionary, validated under [`PEX_LIMITS`]. Compact lists
/// whose length is not a multiple of 6 (IPv4) or 18 (IPv6) are errors. Entries with port 0 or
/// an unspecified IP are dropped; of the rest, the first [`PEX_MAX_ADDED`] added and
/// [`PEX_MAX_DROPPED`] dropped per family are kept and the others ignored. A missing flag (an
/// `added.f` shorter than `added`) is 0; extra flag bytes are ignored.
pub fn decode_pex(payload: &[u8]) -> Result<PexMessage, ExtError> {
    if payload.first() != Some(&b'd') {
        return Err(if payload.is_empty() {
            BencodeError::UnexpectedEof { offset: 0 }
        } else {
            BencodeError::NotADictionary
        }
        .into());
    }
    let len = bencode::validate(payload, &PEX_LIMITS)?;
    if len != payload.len() {
        return Err(ExtError::Trailing {
            len: payload.len() - len,
            what: "ut_pex",
        });
    }
    let (mut added4, mut flags4, mut dropped4): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    let (mut added6, mut flags6, mut dropped6): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    for (key, raw) in bencode::dict_entries(payload, &PEX_LIMITS)? {
        match key {
            b"added" => added4 = compact_list("added", raw, COMPACT_V4)?,
            b"added.f" => flags4 = bencode::as_bytes(raw).ok_or(ExtError::BadValue("added.f"))?,
            b"dropped" => dropped4 = compact_list("dropped", raw, COMPACT_V4)?,
            b"added6" => added6 = compact_list("added6", raw, COMPACT_V6)?,
            b"added6.f" => flags6 = bencode::as_bytes(raw).ok_or(ExtError::BadValue("added6.f"))?,
            b"dropped6" => dropped6 = compact_list("dropped6", raw, COMPACT_V6)?,
            _ => {}
        }
    }
    let mut msg = PexMessage::default();
    push_added(&mut msg.added, added4, flags4, COMPACT_V4, PEX_MAX_ADDED);
    push_added(&mut msg.added, added6, flags6, COMPACT_V6, PEX_MAX_ADDED);
    push_dropped(&mut msg.dropped, dropped4, COMPACT_V4, PEX_MAX_DROPPED);
    push_dropped(&mut msg.dropped, dropped6, COMPACT_V6, PEX_MAX_DROPPED);
    Ok(msg)
}

/// Appends the payload of a `ut_pex` message to `out`: canonical bencode (keys sorted), all six
/// keys present (empty strings when a list is empty, as libtorrent sends them). Entries are
/// written as given: the caps are the sender's to respect ([`PexSender`] does).
pub fn encode_pex(msg: &PexMessage, out: &mut Vec<u8>) {
    out.push(b'd');
    // Keys in byte order: added, added.f, added6, added6.f, dropped, dropped6.
    for (key, flags_key, ipv4, unit) in [
        (&b"added"[..], &b"added.f"[..], true, COMPACT_V4),
        (&b"added6"[..], &b"added6.f"[..], false, COMPACT_V6),
    ] {
        let family = || msg.added.iter().filter(move |(a, _)| a.is_ipv4() == ipv4);
        let n = family().count();
        put_bstr(out, key);
        put_len_prefix(out, n * unit);
        for (addr, _) in family() {
            put_compact(out, addr);
        }
        put_bstr(out, flags_key);
        put_len_prefix(out, n);
        out.extend(family().map(|(_, f)| *f));
    }
    for (key, ipv4, unit) in [
        (&b"dropped"[..], true, COMPACT_V4),
        (&b"dropped6"[..], false, COMPACT_V6),
    ] {
        let family = || msg.dropped.iter().filter(move |a| a.is_ipv4() == ipv4);
        put_bstr(out, key);
        put_len_prefix(out, family().count() * unit);
        for addr in family() {
            put_compact(out, addr);
        }
    }
    out.push(b'e');
}

/// Sends PEX to one peer: remembers what it told this peer and sends the difference.
///
/// Timing: the first message goes out at the first [`PexSender::poll`] that has something to
/// say (the driver starts polling once the peer's extension handshake named `ut_pex`, so the
/// handshakes are done by then); every later one at least [`PEX_INTERVAL`] after the previous
/// message. A poll with nothing new sends nothing and does not restart the interval.
///
/// Bounds: at most [`PEX_MAX_ADDED`] added and [`PEX_MAX_DROPPED`] dropped per family per
/// message; at most `max_remembered` addresses remembered, so once that many are known to the
/// peer, new ones wait until some are dropped. What does not fit goes in a later message.
///
/// The caller leaves out of `current` the peer this sender talks to, and does not use PEX on
/// private torrents. Entries with port 0 or an unspecified IP are never sent.
#[derive(Debug, Clone)]
pub struct PexSender {
    sent: BTreeSet<SocketAddr>,
    max_remembered: usize,
    last_sent: Option<Instant>,
}

impl PexSender {
    /// A sender that remembers at most `max_remembered` addresses (see [`PEX_MAX_REMEMBERED`]).
    pub fn new(max_remembered: usize) -> Self {
        PexSender {
            sent: BTreeSet::new(),
            max_remembered,
            last_sent: None,
        }
    }

    /// Whether a message may go out at `now` (the interval since the last one has passed), so a
    /// caller can skip gathering the swarm when it may not.
    pub fn due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= PEX_INTERVAL)
    }

    /// How many addresses the peer was told about and not told were dropped.
    pub fn remembered(&self) -> usize {
        self.sent.len()
    }

    /// Given the peers we are connected to now (`current`, with their [`pex_flags`]), appends a
    /// PEX payload to `out` and returns true when a message is due (see the type's docs for the
    /// timing and caps); returns false and leaves `out` alone otherwise.
    pub fn poll(&mut self, now: Instant, current: &[(SocketAddr, u8)], out: &mut Vec<u8>) -> bool {
        if let Some(last) = self.last_sent {
            if now.saturating_duration_since(last) < PEX_INTERVAL {
                return false;
            }
        }
        let current_set: HashSet<SocketAddr> =
            current.iter().map(|(a, _)| *a).filter(usable).collect();
        let mut msg = PexMessage::default();
        let (mut dropped4, mut dropped6) = (0usize, 0usize);
        for addr in &self.sent {
            if current_set.contains(addr) {
                continue;
            }
            let n = if addr.is_ipv4() {
                &mut dropped4
            } else {
                &mut dropped6
            };
            if *n < PEX_MAX_DROPPED {
                *n += 1;
                msg.dropped.push(*addr);
            }
        }
        let mut room = self
            .max_remembered
            .saturating_sub(self.sent.len() - msg.dropped.len());
        let (mut added4, mut added6) = (0usize, 0usize);
        let mut added_now: HashSet<SocketAddr> = HashSet::new();
        for &(addr, flags) in current {
            if room == 0 {
                break;
            }
            if !usable(&addr) || self.sent.contains(&addr) || added_now.contains(&addr) {
                continue;
            }
            let n = if addr.is_ipv4() {
                &mut added4
            } else {
                &mut added6
            };
            if *n < PEX_MAX_ADDED {
                *n += 1;
                room -= 1;
                added_now.insert(addr);
                msg.added.push((addr, flags));
            }
        }
        if msg.added.is_empty() && msg.dropped.is_empty() {
            return false;
        }
        for addr in &msg.dropped {
            self.sent.remove(addr);
        }
        self.sent.extend(added_now);
        encode_pex(&msg, out);
        self.last_sent = Some(now);
        true
    }
}

/// Receives PEX from one peer: decodes at most one message per [`PEX_MIN_RECV_INTERVAL`].
///
/// A message that comes sooner after the last one that was decoded is ignored: `Ok(None)`, not
/// decoded at all (so a flood costs no parsing), counted in [`PexReceiver::ignored`]. The
/// interval starts at every message that is decoded, whether it decodes or not, so a peer can
/// make us parse at most one payload (at most 64 KiB) per interval.
#[derive(Debug, Clone, Default)]
pub struct PexReceiver {
    last: Option<Instant>,
    ignored: u64,
}

impl PexReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `ut_pex` payload arrived at `now`: the decoded message, `None` when it came too soon,
    /// or the decoding error.
    pub fn on_message(
        &mut self,
        now: Instant,
        payload: &[u8],
    ) -> Result<Option<PexMessage>, ExtError> {
        if let Some(last) = self.last {
            if now.saturating_duration_since(last) < PEX_MIN_RECV_INTERVAL {
                self.ignored = self.ignored.saturating_add(1);
                return Ok(None);
            }
        }
        self.last = Some(now);
        decode_pex(payload).map(Some)
    }

    /// Messages ignored because they came too soon.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    fn v6(seg: u16, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, seg), port))
    }

    fn meta(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    // --- ut_metadata -------------------------------------------------------------------------

    #[test]
    fn metadata_encodings_match_bep9() {
        assert_eq!(
            meta(|o| encode_metadata_request(0, o)),
            b"d8:msg_typei0e5:piecei0ee"
        );
        assert_eq!(
            meta(|o| encode_metadata_reject(7, o)),
            b"d8:msg_typei2e5:piecei7ee"
        );
        assert_eq!(
            meta(|o| encode_metadata_data(0, 3, b"abc", o)),
            b"d8:msg_typei1e5:piecei0e10:total_sizei3eeabc"
        );
        // The largest data header stays under the documented 80 bytes.
        let header = meta(|o| encode_metadata_data(u32::MAX, u64::MAX, b"", o));
        assert!(header.len() < 80, "{}", header.len());
    }

    #[test]
    fn metadata_decodes_messages_from_other_clients() {
        // libtorrent-style key order, and an unknown key.
        assert_eq!(
            decode_metadata(b"d8:msg_typei0e5:piecei3e3:zzzi1ee"),
            Ok(MetadataMsg::Request { piece: 3 })
        );
        // Keys out of order are fine; total_size on a reject is ignored.
        assert_eq!(
            decode_metadata(b"d5:piecei1e10:total_sizei99e8:msg_typei2ee"),
            Ok(MetadataMsg::Reject { piece: 1 })
        );
        let mut data = b"d8:msg_typei1e5:piecei1e10:total_sizei16390ee".to_vec();
        data.extend_from_slice(b"sixbyt");
        assert_eq!(
            decode_metadata(&data),
            Ok(MetadataMsg::Data {
                piece: 1,
                total_size: 16390,
                data: b"sixbyt"
            })
        );
    }

    #[test]
    fn metadata_refuses_malformed_payloads() {
        let cases: &[(&[u8], ExtError)] = &[
            (b"", BencodeError::UnexpectedEof { offset: 0 }.into()),
            (b"li1ee", BencodeError::NotADictionary.into()),
            (
                b"d8:msg_typei0e",
                BencodeError::UnexpectedEof { offset: 14 }.into(),
            ),
            (b"d5:piecei0ee", ExtError::MissingKey("msg_type")),
            (b"d8:msg_typei0ee", ExtError::MissingKey("piece")),
            (b"d8:msg_typei3e5:piecei0ee", ExtError::UnknownMsgType(3)),
            (b"d8:msg_typei-1e5:piecei0ee", ExtError::UnknownMsgType(-1)),
            (b"d8:msg_type1:05:piecei0ee", ExtError::BadValue("msg_type")),
            (b"d8:msg_typei0e5:piecei-1ee", ExtError::BadValue("piece")),
            (
                b"d8:msg_typei0e5:piecei4294967296ee",
                ExtError::BadValue("piece"),
            ),
            (
                b"d8:msg_typei0e5:piecei0eeX",
                ExtError::Trailing {
                    len: 1,
                    what: "ut_metadata request",
                },
            ),
            (
                b"d8:msg_typei2e5:piecei0eeXY",
                ExtError::Trailing {
                    len: 2,
                    what: "ut_metadata reject",
                },
            ),
            (
                b"d8:msg_typei1e5:piecei0ee",
                ExtError::MissingKey("total_size"),
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei0ee",
                ExtError::BadTotalSize(0),
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei16777217ee",
                ExtError::BadTotalSize(16777217),
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee",
                ExtError::BadValue("total_size"),
            ),
            (
                b"d8:msg_typei1e5:piecei1e10:total_sizei16384eeabc",
                ExtError::PieceOutOfRange {
                    piece: 1,
                    total_size: 16384,
                },
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei3eeab",
                ExtError::BadDataLen {
                    piece: 0,
                    len: 2,
                    expected: 3,
                },
            ),
            (
                b"d8:msg_typei1e5:piecei0e10:total_sizei3eeabcd",
                ExtError::BadDataLen {
                    piece: 0,
                    len: 4,
                    expected: 3,
                },
            ),
        ];
        for (payload, err) in cases {
            assert_eq!(
                decode_metadata(payload).as_ref(),
                Err(err),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // A deep or oversized dictionary is refused by the validator, without recursion.
        let mut deep = b"d1:x".to_vec();
        deep.extend(vec![b'l'; 100_000]);
        assert!(matches!(
            decode_metadata(&deep),
            Err(ExtError::Bencode(BencodeError::TooDeep { .. }))
        ));
        let mut big = b"d1:x2000:".to_vec();
        big.extend(vec![b'a'; 2000]);
        big.push(b'e');
        assert!(matches!(
            decode_metadata(&big),
            Err(ExtError::Bencode(BencodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn metadata_piece_geometry() {
        assert_eq!(metadata_num_pieces(0), 0);
        assert_eq!(metadata_num_pieces(1), 1);
        assert_eq!(metadata_num_pieces(16384), 1);
        assert_eq!(metadata_num_pieces(16385), 2);
        assert_eq!(metadata_num_pieces(MAX_METADATA_SIZE), 1024);
        assert_eq!(metadata_piece_range(16385, 0), Some(0..16384));
        assert_eq!(metadata_piece_range(16385, 1), Some(16384..16385));
        assert_eq!(metadata_piece_range(16385, 2), None);
        assert_eq!(metadata_piece_range(0, 0), None);
        assert_eq!(
            metadata_piece_range(usize::MAX, u32::MAX).map(|r| r.len()),
            Some(16384)
        );
        assert_eq!(default_max_replies(40_000), 2 * 3 + 4);
    }

    #[test]
    fn metadata_server_serves_ranges_and_rejects_out_of_range() {
        let mut s = MetadataServer::new(40_000, 100);
        assert_eq!(s.metadata_size(), Some(40_000));
        assert_eq!(
            s.on_request(0),
            MetadataAnswer::Serve {
                piece: 0,
                range: 0..16384
            }
        );
        assert_eq!(
            s.on_request(2),
            MetadataAnswer::Serve {
                piece: 2,
                range: 32768..40000
            }
        );
        assert_eq!(s.on_request(3), MetadataAnswer::Reject { piece: 3 });
        assert_eq!(
            s.on_request(u32::MAX),
            MetadataAnswer::Reject { piece: u32::MAX }
        );
        assert_eq!((s.served(), s.rejected()), (2, 2));
        // Not served at all: empty or too large.
        for len in [0, MAX_METADATA_SIZE + 1] {
            let mut s = MetadataServer::new(len, 100);
            assert_eq!(s.metadata_size(), None);
            assert_eq!(s.on_request(0), MetadataAnswer::Reject { piece: 0 });
        }
    }

    #[test]
    fn metadata_server_bounds_what_one_peer_gets() {
        let len = 40_000; // 3 pieces
        let max = default_max_replies(len);
        assert_eq!(max, 10);
        let mut s = MetadataServer::new(len, max);
        let mut bytes = 0usize;
        let mut serves = 0u32;
        for i in 0..10_000u32 {
            match s.on_request(i % 3) {
                MetadataAnswer::Serve { range, .. } => {
                    serves += 1;
                    bytes += range.len();
                }
                MetadataAnswer::Reject { piece } => assert_eq!(piece, i % 3),
            }
        }
        assert_eq!(serves, max);
        assert_eq!(s.served(), max);
        assert_eq!(s.rejected(), 10_000 - u64::from(max));
        assert!(bytes <= max as usize * METADATA_PIECE_LEN);
        // Every later request is a reject, even for a valid piece.
        assert_eq!(s.on_request(0), MetadataAnswer::Reject { piece: 0 });
    }

    proptest! {
        #[test]
        fn metadata_round_trips(piece in any::<u32>(), kind in 0u8..3, len in 1usize..=MAX_METADATA_SIZE) {
            match kind {
                0 => {
                    let p = meta(|o| encode_metadata_request(piece, o));
                    prop_assert_eq!(decode_metadata(&p), Ok(MetadataMsg::Request { piece }));
                }
                1 => {
                    let p = meta(|o| encode_metadata_reject(piece, o));
                    prop_assert_eq!(decode_metadata(&p), Ok(MetadataMsg::Reject { piece }));
                }
                _ => {
                    let piece = piece % metadata_num_pieces(len);
                    let range = metadata_piece_range(len, piece).unwrap();
                    let data: Vec<u8> = range.clone().map(|i| i as u8).collect();
                    let p = meta(|o| encode_metadata_data(piece, len as u64, &data, o));
                    prop_assert_eq!(
                        decode_metadata(&p),
                        Ok(MetadataMsg::Data { piece, total_size: len as u64, data: &data })
                    );
                }
            }
        }

        #[test]
        fn metadata_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_metadata(&bytes);
            let mut with_prefix = b"d8:msg_typei1e5:piecei0e10:total_sizei".to_vec();
            with_prefix.extend_from_slice(&bytes);
            let _ = decode_metadata(&with_prefix);
        }
    }

    // --- ut_pex ------------------------------------------------------------------------------

    fn pex(msg: &PexMessage) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pex(msg, &mut out);
        out
    }

    #[test]
    fn pex_encoding_is_canonical() {
        let msg = PexMessage {
            added: vec![
                (v4([10, 0, 0, 1], 0x1A1B), pex_flags::SEED),
                (v6(1, 6881), pex_flags::UTP | pex_flags::OUTGOING),
            ],
            dropped: vec![v4([10, 0, 0, 2], 6881)],
        };
        let bytes = pex(&msg);
        let mut want = b"d5:added6:\x0a\x00\x00\x01\x1a\x1b7:added.f1:\x02".to_vec();
        want.extend_from_slice(b"6:added618:");
        want.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        want.extend_from_slice(&6881u16.to_be_bytes());
        want.extend_from_slice(b"8:added6.f1:\x14");
        want.extend_from_slice(b"7:dropped6:\x0a\x00\x00\x02\x1a\xe1");
        want.extend_from_slice(b"8:dropped60:e");
        assert_eq!(bytes, want);
        assert_eq!(decode_pex(&bytes), Ok(msg));
        // The empty message still has all six keys.
        assert_eq!(
            pex(&PexMessage::default()),
            b"d5:added0:7:added.f0:6:added60:8:added6.f0:7:dropped0:8:dropped60:e"
        );
        assert_eq!(decode_pex(b"de"), Ok(PexMessage::default()));
    }

    #[test]
    fn pex_decode_caps_and_filters() {
        let many4: Vec<(SocketAddr, u8)> = (0..80u8)
            .map(|i| (v4([10, 1, 0, i], 1000 + u16::from(i)), i))
            .collect();
        let many6: Vec<(SocketAddr, u8)> = (0..80u16).map(|i| (v6(i, 2000 + i), 0)).collect();
        let msg = PexMessage {
            added: many4.iter().chain(&many6).copied().collect(),
            dropped: many4.iter().chain(&many6).map(|(a, _)| *a).collect(),
        };
        let got = decode_pex(&pex(&msg)).unwrap();
        let added4: Vec<_> = got.added.iter().filter(|(a, _)| a.is_ipv4()).collect();
        let added6: Vec<_> = got.added.iter().filter(|(a, _)| a.is_ipv6()).collect();
        assert_eq!(added4.len(), PEX_MAX_ADDED);
        assert_eq!(added6.len(), PEX_MAX_ADDED);
        assert_eq!(got.added[..PEX_MAX_ADDED], many4[..PEX_MAX_ADDED]);
        assert_eq!(got.added[PEX_MAX_ADDED..], many6[..PEX_MAX_ADDED]);
        assert_eq!(
            got.dropped.iter().filter(|a| a.is_ipv4()).count(),
            PEX_MAX_DROPPED
        );
        assert_eq!(
            got.dropped.iter().filter(|a| a.is_ipv6()).count(),
            PEX_MAX_DROPPED
        );

        // Port 0 and unspecified IPs are dropped, and do not count against the cap.
        let msg = PexMessage {
            added: vec![
                (v4([10, 0, 0, 1], 0), 1),
                (v4([0, 0, 0, 0], 80), 1),
                (v4([10, 0, 0, 3], 80), 3),
                (SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80)), 0),
            ],
            dropped: vec![v4([10, 0, 0, 4], 0), v6(9, 0), v6(9, 9)],
        };
        assert_eq!(
            decode_pex(&pex(&msg)),
            Ok(PexMessage {
                added: vec![(v4([10, 0, 0, 3], 80), 3)],
                dropped: vec![v6(9, 9)],
            })
        );

        // Missing flags are 0; extra flag bytes are ignored.
        assert_eq!(
            decode_pex(
                b"d5:added12:\x0a\x00\x00\x01\x00\x50\x0a\x00\x00\x02\x00\x507:added.f1:\x02e"
            ),
            Ok(PexMessage {
                added: vec![(v4([10, 0, 0, 1], 80), 2), (v4([10, 0, 0, 2], 80), 0)],
                dropped: vec![],
            })
        );
        assert_eq!(
            decode_pex(b"d5:added6:\x0a\x00\x00\x01\x00\x507:added.f3:\x02\x03\x04e"),
            Ok(PexMessage {
                added: vec![(v4([10, 0, 0, 1], 80), 2)],
                dropped: vec![],
            })
        );
    }

    #[test]
    fn pex_refuses_malformed_payloads() {
        let cases: &[(&[u8], ExtError)] = &[
            (b"", BencodeError::UnexpectedEof { offset: 0 }.into()),
            (b"le", BencodeError::NotADictionary.into()),
            (
                b"d5:added",
                BencodeError::UnexpectedEof { offset: 8 }.into(),
            ),
            (
                b"d5:added5:abcdee",
                ExtError::BadCompactLen {
                    key: "added",
                    len: 5,
                    unit: 6,
                },
            ),
            (
                b"d7:dropped7:abcdefge",
                ExtError::BadCompactLen {
                    key: "dropped",
                    len: 7,
                    unit: 6,
                },
            ),
            (
                b"d6:added66:abcdefe",
                ExtError::BadCompactLen {
                    key: "added6",
                    len: 6,
                    unit: 18,
                },
            ),
            (
                b"d8:dropped61:xe",
                ExtError::BadCompactLen {
                    key: "dropped6",
                    len: 1,
                    unit: 18,
                },
            ),
            (b"d5:addedi1ee", ExtError::BadValue("added")),
            (b"d7:added.flee", ExtError::BadValue("added.f")),
            (b"d8:added6.fi0ee", ExtError::BadValue("added6.f")),
            (
                b"d5:added0:eX",
                ExtError::Trailing {
                    len: 1,
                    what: "ut_pex",
                },
            ),
        ];
        for (payload, err) in cases {
            assert_eq!(
                decode_pex(payload).as_ref(),
                Err(err),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // More than 64 KiB: refused before anything is listed.
        let mut big = b"d5:added66000:".to_vec();
        big.extend(vec![1u8; 66000]);
        big.push(b'e');
        assert!(matches!(
            decode_pex(&big),
            Err(ExtError::Bencode(BencodeError::TooLarge { .. }))
        ));
        // Unknown keys are ignored.
        assert_eq!(
            decode_pex(b"d1:xd1:yli1eee5:added0:e"),
            Ok(PexMessage::default())
        );
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
        ]
    }

    /// What decoding keeps of a message: usable entries, IPv4 first, each family capped.
    fn normalized(msg: &PexMessage) -> PexMessage {
        let mut out = PexMessage::default();
        for fam in [true, false] {
            out.added.extend(
                msg.added
                    .iter()
                    .filter(|(a, _)| a.is_ipv4() == fam && usable(a))
                    .take(PEX_MAX_ADDED),
            );
        }
        for fam in [true, false] {
            out.dropped.extend(
                msg.dropped
                    .iter()
                    .filter(|a| a.is_ipv4() == fam && usable(a))
                    .take(PEX_MAX_DROPPED),
            );
        }
        out
    }

    proptest! {
        #[test]
        fn pex_round_trips(
            added in proptest::collection::vec((arb_addr(), any::<u8>()), 0..120),
            dropped in proptest::collection::vec(arb_addr(), 0..120),
        ) {
            let msg = PexMessage { added, dropped };
            let bytes = pex(&msg);
            let got = decode_pex(&bytes).unwrap();
            let want = normalized(&msg);
            prop_assert_eq!(&got, &want);
            // A decoded message is a fixed point of encode/decode.
            let again = pex(&got);
            prop_assert_eq!(decode_pex(&again).unwrap(), got);
        }

        #[test]
        fn pex_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(msg) = decode_pex(&bytes) {
                prop_assert!(msg.added.len() <= 2 * PEX_MAX_ADDED);
                prop_assert!(msg.dropped.len() <= 2 * PEX_MAX_DROPPED);
            }
        }
    }

    #[test]
    fn pex_receiver_rate_limits() {
        let t0 = Instant::now();
        let mut r = PexReceiver::new();
        let one = pex(&PexMessage {
            added: vec![(v4([10, 0, 0, 1], 80), 0)],
            dropped: vec![],
        });
        assert_eq!(
            r.on_message(t0, &one).unwrap().map(|m| m.added.len()),
            Some(1)
        );
        assert_eq!(r.on_message(t0 + Duration::from_secs(10), &one), Ok(None));
        // Too soon: not even decoded, so garbage is ignored too.
        assert_eq!(
            r.on_message(
                t0 + PEX_MIN_RECV_INTERVAL - Duration::from_millis(1),
                b"garbage"
            ),
            Ok(None)
        );
        assert_eq!(r.ignored(), 2);
        // Ignored messages do not push the window: one interval after the first, it decodes.
        let t1 = t0 + PEX_MIN_RECV_INTERVAL;
        assert!(r.on_message(t1, &one).unwrap().is_some());
        // A malformed message that is decoded is an error, and it starts the interval.
        let t2 = t1 + PEX_MIN_RECV_INTERVAL;
        assert!(r.on_message(t2, b"garbage").is_err());
        assert_eq!(r.on_message(t2 + Duration::from_secs(1), &one), Ok(None));
        // A clock that goes backwards is "too soon", never a panic.
        assert_eq!(r.on_message(t0, &one), Ok(None));
    }

    fn sent(out: &[u8]) -> PexMessage {
        decode_pex(out).unwrap()
    }

    #[test]
    fn pex_sender_sends_differences_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut s = PexSender::new(PEX_MAX_REMEMBERED);
        let a = (v4([10, 0, 0, 1], 6881), pex_flags::SEED);
        let b = (v4([10, 0, 0, 2], 6881), 0);
        let c = (v6(3, 6881), pex_flags::UTP);
        let mut out = Vec::new();
        // Nothing to say: nothing sent, and the interval does not start.
        assert!(!s.poll(t0, &[], &mut out));
        assert!(out.is_empty());
        // The first message goes at the first poll with something to say.
        assert!(s.poll(t0, &[a, b], &mut out));
        assert_eq!(
            sent(&out),
            PexMessage {
                added: vec![a, b],
                dropped: vec![]
            }
        );
        // Within the interval: nothing, whatever changed.
        out.clear();
        assert!(!s.poll(t0 + Duration::from_secs(30), &[b, c], &mut out));
        assert!(!s.poll(
            t0 + PEX_INTERVAL - Duration::from_millis(1),
            &[b, c],
            &mut out
        ));
        assert!(out.is_empty());
        // After it: a dropped, c added, b not repeated.
        let t1 = t0 + PEX_INTERVAL;
        assert!(s.poll(t1, &[b, c], &mut out));
        assert_eq!(
            sent(&out),
            PexMessage {
                added: vec![c],
                dropped: vec![a.0]
            }
        );
        assert_eq!(s.remembered(), 2);
        // Nothing changed: nothing sent, even long after.
        out.clear();
        assert!(!s.poll(t1 + 10 * PEX_INTERVAL, &[b, c], &mut out));
        assert!(out.is_empty());
        // A change after a quiet spell goes out at once.
        let t2 = t1 + 10 * PEX_INTERVAL;
        assert!(s.poll(t2, &[c], &mut out));
        assert_eq!(
            sent(&out),
            PexMessage {
                added: vec![],
                dropped: vec![b.0]
            }
        );
        // Unusable addresses and duplicates in `current` are never sent.
        out.clear();
        let zero = (v4([10, 0, 0, 9], 0), 0);
        let unspec = (SocketAddr::from(([0, 0, 0, 0], 80)), 0);
        assert!(s.poll(t2 + PEX_INTERVAL, &[c, zero, unspec, a, a], &mut out));
        assert_eq!(
            sent(&out),
            PexMessage {
                added: vec![a],
                dropped: vec![]
            }
        );
    }

    #[test]
    fn pex_sender_respects_caps_and_memory_bound() {
        let mut t = Instant::now();
        let mut s = PexSender::new(120);
        let peers: Vec<(SocketAddr, u8)> = (0..100u8)
            .map(|i| (v4([10, 2, 0, i], 7000), 0))
            .chain((0..100u16).map(|i| (v6(i, 7000), 0)))
            .collect();
        let mut out = Vec::new();
        let mut poll = |s: &mut PexSender, t: Instant, cur: &[(SocketAddr, u8)]| {
            out.clear();
            s.poll(t, cur, &mut out).then(|| sent(&out))
        };
        // 50 IPv4 (cap) then IPv6 until the 120 remembered are reached.
        let m = poll(&mut s, t, &peers).unwrap();
        assert_eq!(m.added.iter().filter(|(a, _)| a.is_ipv4()).count(), 50);
        assert_eq!(m.added.iter().filter(|(a, _)| a.is_ipv6()).count(), 50);
        assert_eq!(s.remembered(), 100);
        t += PEX_INTERVAL;
        let m = poll(&mut s, t, &peers).unwrap();
        assert_eq!(m.added.len(), 20);
        assert_eq!(s.remembered(), 120);
        // Full: nothing more to add while nothing is dropped.
        t += PEX_INTERVAL;
        assert!(poll(&mut s, t, &peers).is_none());
        // Everyone leaves: dropped capped at 50 per family, the rest in the next message.
        t += PEX_INTERVAL;
        let m = poll(&mut s, t, &[]).unwrap();
        assert!(m.added.is_empty());
        assert_eq!(m.dropped.iter().filter(|a| a.is_ipv4()).count(), 50);
        assert_eq!(m.dropped.iter().filter(|a| a.is_ipv6()).count(), 50);
        assert_eq!(s.remembered(), 20);
        t += PEX_INTERVAL;
        let m = poll(&mut s, t, &[]).unwrap();
        assert_eq!(m.dropped.len(), 20);
        assert_eq!(s.remembered(), 0);
    }

    proptest! {
        /// Whatever the sequence of peer lists, the sender never exceeds its caps or memory, sends
        /// at most once per interval, and the receiver's view matches what we remember.
        #[test]
        fn pex_sender_model(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u8..40, any::<bool>()), 0..60), 0u64..120),
                1..20,
            ),
        ) {
            let mut t = Instant::now();
            let mut s = PexSender::new(30);
            let mut peer_view: BTreeSet<SocketAddr> = BTreeSet::new();
            let mut last: Option<Instant> = None;
            for (ids, dt) in steps {
                t += Duration::from_secs(dt);
                let current: Vec<(SocketAddr, u8)> = ids
                    .iter()
                    .map(|&(i, six)| (if six { v6(u16::from(i), 1) } else { v4([10, 0, 0, i], 1) }, 0))
                    .collect();
                let mut out = Vec::new();
                if s.poll(t, &current, &mut out) {
                    if let Some(l) = last {
                        prop_assert!(t - l >= PEX_INTERVAL);
                    }
                    last = Some(t);
                    let m = decode_pex(&out).unwrap();
                    prop_assert!(!m.added.is_empty() || !m.dropped.is_empty());
                    prop_assert_eq!(&normalized(&m), &m); // within caps and usable
                    for a in &m.dropped {
                        prop_assert!(peer_view.remove(a), "dropped {} never added", a);
                    }
                    for (a, _) in &m.added {
                        prop_assert!(peer_view.insert(*a), "added {} twice", a);
                    }
                } else {
                    prop_assert!(out.is_empty());
                }
                prop_assert!(peer_view.len() <= 30);
                prop_assert_eq!(peer_view.len(), s.remembered());
            }
        }
    }
}
