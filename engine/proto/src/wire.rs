//! The peer wire protocol, sans-IO.
//!
//! Everything here is pure: [`decode`] looks at a byte slice and either returns one message
//! (borrowing its payload from the slice) plus the number of bytes it used, or says it needs more
//! bytes, or names what is wrong with the stream. [`encode`] writes a message into any
//! [`bytes::BufMut`]. Neither allocates. The connection driver owns the buffers and the socket.
//!
//! Covered: the handshake with its reserved bits (BEP 3, BEP 6, BEP 10), the BEP 3 messages, the
//! FAST extension (BEP 6: SUGGEST, HAVE ALL, HAVE NONE, REJECT, ALLOWED FAST), and the extension
//! protocol (BEP 10) message and handshake dictionary ([`ExtHandshake`]).
//!
//! # Limits
//! - [`MAX_MESSAGE_LEN`] (1 MiB + 13) bounds the length prefix of every message. It is checked
//!   as soon as the 4-byte prefix is visible, before any of the body is buffered, so a peer cannot
//!   make us buffer more than that. 1 MiB of BITFIELD is 8,388,608 pieces, far above any torrent
//!   the metainfo limits accept.
//! - A PIECE carries at most [`BLOCK_SIZE`] bytes of data (length prefix at most 16,393), checked
//!   from the 5-byte header, again before the body is buffered.
//! - Fixed-size messages (HAVE, REQUEST, ...) must have exactly their size; the check is made from
//!   the header.
//! - Unknown message ids are returned as [`Message::Unknown`] (BEP 3: ignore what you do not
//!   understand); their length is still bounded by `max_len`.
//! - The BEP 10 handshake dictionary is validated whole by the iterative (non-recursive)
//!   [`bencode::validate`] under [`EXT_LIMITS`] (64 KiB, 4,096 values, [`EXT_MAX_DEPTH`] levels
//!   below the top), then read over its raw spans; unknown keys and known keys of the wrong type
//!   are ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use crate::bencode::{self, BencodeError, Limits};

/// The largest block a peer may request, and the largest PIECE payload we accept (16 KiB).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// Bytes of a PIECE message before its data: length prefix (4), id (1), index (4), begin (4).
pub const PIECE_HEADER_LEN: usize = 13;

/// Upper bound on any message's length prefix (the bytes after the 4-byte prefix): 1 MiB + 13.
///
/// Chosen so that a BITFIELD for 8 Mi pieces still fits, while no peer can make a connection
/// buffer more than ~1 MiB. PIECE messages have their own, much smaller bound
/// ([`MAX_PIECE_MESSAGE_LEN`]).
pub const MAX_MESSAGE_LEN: u32 = (1 << 20) + 13;

/// Largest length prefix of a PIECE message: id + index + begin + [`BLOCK_SIZE`] bytes of data.
pub const MAX_PIECE_MESSAGE_LEN: u32 = 9 + BLOCK_SIZE;

/// Length of the BitTorrent handshake on the wire.
pub const HANDSHAKE_LEN: usize = 68;

/// The protocol string of the handshake (preceded by its length byte, 19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Message ids (BEP 3, BEP 5, BEP 6, BEP 10).
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    pub const EXTENDED: u8 = 20;
}

/// The extended message id of the BEP 10 handshake.
pub const EXTENDED_HANDSHAKE_ID: u8 = 0;

/// Everything that can be wrong with bytes a peer sent. Any of these means: drop the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLong { len: u32, max: u32 },
    #[error("message id {id} must have length {expected}, got {len}")]
    BadLength { id: u8, len: u32, expected: u32 },
    #[error("message id {id} needs a length of at least {min}, got {len}")]
    TooShort { id: u8, len: u32, min: u32 },
    #[error("PIECE message carries {data_len} bytes of data, above the block size {BLOCK_SIZE}")]
    PieceTooLong { data_len: u32 },
    #[error("handshake does not start with \\x13BitTorrent protocol")]
    BadProtocol,
    #[error("extension handshake: {0}")]
    ExtHandshake(&'static str),
}

/// A block: `len` bytes at offset `begin` of piece `piece` (REQUEST, CANCEL, REJECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    pub piece: u32,
    pub begin: u32,
    pub len: u32,
}

/// One decoded message. Payloads borrow from the buffer given to [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(BlockRef),
    Piece {
        piece: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRef),
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(BlockRef),
    AllowedFast(u32),
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// A message id we do not know; BEP 3 says to ignore it.
    Unknown {
        id: u8,
        payload: &'a [u8],
    },
}

/// A message that owns its payload (for out-queues). Convert with [`OwnedMessage::as_message`]
/// and [`Message::to_owned_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedMessage {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(Vec<u8>),
    Request(BlockRef),
    Piece {
        piece: u32,
        begin: u32,
        data: Vec<u8>,
    },
    Cancel(BlockRef),
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(BlockRef),
    AllowedFast(u32),
    Extended {
        id: u8,
        payload: Vec<u8>,
    },
    Unknown {
        id: u8,
        payload: Vec<u8>,
    },
}

impl OwnedMessage {
    /// Borrow as a [`Message`] (for [`encode`]).
    pub fn as_message(&self) -> Message<'_> {
        match self {
            OwnedMessage::KeepAlive => Message::KeepAlive,
            OwnedMessage::Choke => Message::Choke,
            OwnedMessage::Unchoke => Message::Unchoke,
            OwnedMessage::Interested => Message::Interested,
            OwnedMessage::NotInterested => Message::NotInterested,
            OwnedMessage::Have(p) => Message::Have(*p),
            OwnedMessage::Bitfield(b) => Message::Bitfield(b),
            OwnedMessage::Request(b) => Message::Request(*b),
            OwnedMessage::Piece { piece, begin, data } => Message::Piece {
                piece: *piece,
                begin: *begin,
                data,
            },
            OwnedMessage::Cancel(b) => Message::Cancel(*b),
            OwnedMessage::Port(p) => Message::Port(*p),
            OwnedMessage::Suggest(p) => Message::Suggest(*p),
            OwnedMessage::HaveAll => Message::HaveAll,
            OwnedMessage::HaveNone => Message::HaveNone,
            OwnedMessage::Reject(b) => Message::Reject(*b),
            OwnedMessage::AllowedFast(p) => Message::AllowedFast(*p),
            OwnedMessage::Extended { id, payload } => Message::Extended { id: *id, payload },
            OwnedMessage::Unknown { id, payload } => Message::Unknown { id: *id, payload },
        }
    }

    /// Bytes this message takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        self.as_message().encoded_len()
    }
}

impl<'a> Message<'a> {
    /// Copy the payload into an [`OwnedMessage`] (allocates for payload-carrying messages).
    pub fn to_owned_message(&self) -> OwnedMessage {
        match *self {
            Message::KeepAlive => OwnedMessage::KeepAlive,
            Message::Choke => OwnedMessage::Choke,
            Message::Unchoke => OwnedMessage::Unchoke,
            Message::Interested => OwnedMessage::Interested,
            Message::NotInterested => OwnedMessage::NotInterested,
            Message::Have(p) => OwnedMessage::Have(p),
            Message::Bitfield(b) => OwnedMessage::Bitfield(b.to_vec()),
            Message::Request(b) => OwnedMessage::Request(b),
            Message::Piece { piece, begin, data } => OwnedMessage::Piece {
                piece,
                begin,
                data: data.to_vec(),
            },
            Message::Cancel(b) => OwnedMessage::Cancel(b),
            Message::Port(p) => OwnedMessage::Port(p),
            Message::Suggest(p) => OwnedMessage::Suggest(p),
            Message::HaveAll => OwnedMessage::HaveAll,
            Message::HaveNone => OwnedMessage::HaveNone,
            Message::Reject(b) => OwnedMessage::Reject(b),
            Message::AllowedFast(p) => OwnedMessage::AllowedFast(p),
            Message::Extended { id, payload } => OwnedMessage::Extended {
                id,
                payload: payload.to_vec(),
            },
            Message::Unknown { id, payload } => OwnedMessage::Unknown {
                id,
                payload: payload.to_vec(),
            },
        }
    }

    /// The message id, `None` for KEEP-ALIVE.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest(_) => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::Reject(_) => id::REJECT,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// The length prefix value: the bytes after the 4-byte prefix.
    fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Port(_) => 3,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Unknown { payload, .. } => 1 + payload.len(),
        }
    }

    /// Bytes this message takes on the wire, length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self.body_len()
    }
}

/// The exact length prefix a fixed-size message must have, `None` for variable-size or unknown.
fn fixed_len(msg_id: u8) -> Option<u32> {
    match msg_id {
        id::CHOKE
        | id::UNCHOKE
        | id::INTERESTED
        | id::NOT_INTERESTED
        | id::HAVE_ALL
        | id::HAVE_NONE => Some(1),
        id::HAVE | id::SUGGEST | id::ALLOWED_FAST => Some(5),
        id::REQUEST | id::CANCEL | id::REJECT => Some(13),
        id::PORT => Some(3),
        _ => None,
    }
}

/// Peek at a message header: the length prefix and, once visible and the message is not a
/// KEEP-ALIVE, its id. `None` when fewer than 4 bytes are buffered. Does not validate: call
/// [`check_header`] (or [`decode`]) for that.
pub fn peek_header(buf: &[u8]) -> Option<(u32, Option<u8>)> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    let msg_id = if len == 0 { None } else { buf.get(4).copied() };
    Some((len, msg_id))
}

/// Validate a header (length prefix `len`, message id `msg_id` when already visible) against
/// `max_len` and the per-message size rules. [`decode`] calls this before looking at the body;
/// a driver that reads a PIECE body straight into a storage buffer calls it itself after
/// [`peek_header`].
pub fn check_header(len: u32, msg_id: Option<u8>, max_len: u32) -> Result<(), WireError> {
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    let Some(msg_id) = msg_id else {
        return Ok(());
    };
    if let Some(expected) = fixed_len(msg_id) {
        if len != expected {
            return Err(WireError::BadLength {
                id: msg_id,
                len,
                expected,
            });
        }
        return Ok(());
    }
    let min = match msg_id {
        id::PIECE => 9,
        id::EXTENDED => 2,
        _ => 1,
    };
    if len < min {
        return Err(WireError::TooShort {
            id: msg_id,
            len,
            min,
        });
    }
    if msg_id == id::PIECE && len > MAX_PIECE_MESSAGE_LEN {
        return Err(WireError::PieceTooLong { data_len: len - 9 });
    }
    Ok(())
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn block_at(b: &[u8]) -> BlockRef {
    BlockRef {
        piece: be32(b, 0),
        begin: be32(b, 4),
        len: be32(b, 8),
    }
}

/// Decode one message from the front of `buf`.
///
/// - `Ok(Some((msg, used)))`: a whole message; drop `used` bytes from the front afterwards.
/// - `Ok(None)`: not enough bytes yet. The length prefix (and the id, when visible) has already
///   been checked, so the caller may safely wait for at most `4 + len` bytes.
/// - `Err(_)`: the peer broke the protocol; drop it.
///
/// `max_len` bounds the length prefix; pass [`MAX_MESSAGE_LEN`] unless you have a reason.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some((len, msg_id)) = peek_header(buf) else {
        return Ok(None);
    };
    check_header(len, msg_id, max_len)?;
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    // Cannot overflow on 64-bit targets; checked for 32-bit ones.
    let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(4)) else {
        return Err(WireError::TooLong { len, max: max_len });
    };
    let Some(body) = buf.get(4..total) else {
        return Ok(None);
    };
    let msg_id = body[0];
    let p = &body[1..];
    // Lengths of fixed-size messages were checked by `check_header`, so the indexing below is
    // in bounds (invariant).
    let msg = match msg_id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(be32(p, 0)),
        id::BITFIELD => Message::Bitfield(p),
        id::REQUEST => Message::Request(block_at(p)),
        id::PIECE => Message::Piece {
            piece: be32(p, 0),
            begin: be32(p, 4),
            data: &p[8..],
        },
        id::CANCEL => Message::Cancel(block_at(p)),
        id::PORT => Message::Port(u16::from_be_bytes([p[0], p[1]])),
        id::SUGGEST => Message::Suggest(be32(p, 0)),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::REJECT => Message::Reject(block_at(p)),
        id::ALLOWED_FAST => Message::AllowedFast(be32(p, 0)),
        id::EXTENDED => Message::Extended {
            id: p[0],
            payload: &p[1..],
        },
        other => Message::Unknown {
            id: other,
            payload: p,
        },
    };
    Ok(Some((msg, total)))
}

fn put_block(out: &mut impl BufMut, b: &BlockRef) {
    out.put_u32(b.piece);
    out.put_u32(b.begin);
    out.put_u32(b.len);
}

/// Encode `msg` (length prefix included) into `out`.
///
/// Panics only if `out` cannot grow to [`Message::encoded_len`] bytes (the `BufMut` contract);
/// `Vec<u8>` and `BytesMut` always can. Messages whose payload makes the length prefix exceed
/// `u32::MAX` cannot be built from this crate's limits.
pub fn encode(msg: &Message<'_>, out: &mut impl BufMut) {
    let body_len = msg.body_len();
    debug_assert!(body_len <= u32::MAX as usize);
    out.put_u32(body_len as u32);
    let Some(msg_id) = msg.id() else {
        return;
    };
    out.put_u8(msg_id);
    match msg {
        Message::KeepAlive
        | Message::Choke
        | Message::Unchoke
        | Message::Interested
        | Message::NotInterested
        | Message::HaveAll
        | Message::HaveNone => {}
        Message::Have(p) | Message::Suggest(p) | Message::AllowedFast(p) => out.put_u32(*p),
        Message::Bitfield(b) => out.put_slice(b),
        Message::Request(b) | Message::Cancel(b) | Message::Reject(b) => put_block(out, b),
        Message::Piece { piece, begin, data } => {
            out.put_u32(*piece);
            out.put_u32(*begin);
            out.put_slice(data);
        }
        Message::Port(p) => out.put_u16(*p),
        Message::Extended { id, payload } => {
            out.put_u8(*id);
            out.put_slice(payload);
        }
        Message::Unknown { payload, .. } => out.put_slice(payload),
    }
}

/// The 13-byte header of a PIECE message carrying `len` bytes of data; the driver writes it in
/// front of the block it read from disk.
pub fn encode_piece_header(piece: u32, begin: u32, len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    h[0..4].copy_from_slice(&(9 + len).to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&piece.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Reserved byte 7, bit 0x04: the FAST extension (BEP 6).
pub const RESERVED_FAST: (usize, u8) = (7, 0x04);
/// Reserved byte 5, bit 0x10: the extension protocol (BEP 10).
pub const RESERVED_EXTENSIONS: (usize, u8) = (5, 0x10);
/// Reserved byte 7, bit 0x01: DHT (BEP 5). We never set it.
pub const RESERVED_DHT: (usize, u8) = (7, 0x01);

/// The reserved bytes we send: FAST and the extension protocol, nothing else.
pub const OUR_RESERVED: [u8; 8] = [0, 0, 0, 0, 0, 0x10, 0, 0x04];

/// The BitTorrent handshake (BEP 3): `\x13BitTorrent protocol`, 8 reserved bytes, info hash,
/// peer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Our handshake: [`OUR_RESERVED`] bits.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        Handshake {
            reserved: OUR_RESERVED,
            info_hash,
            peer_id,
        }
    }

    fn bit(&self, (byte, mask): (usize, u8)) -> bool {
        self.reserved[byte] & mask != 0
    }

    /// Reserved byte 7, bit 0x04 (BEP 6).
    pub fn supports_fast(&self) -> bool {
        self.bit(RESERVED_FAST)
    }

    /// Reserved byte 5, bit 0x10 (BEP 10).
    pub fn supports_extensions(&self) -> bool {
        self.bit(RESERVED_EXTENSIONS)
    }

    /// Reserved byte 7, bit 0x01 (BEP 5).
    pub fn supports_dht(&self) -> bool {
        self.bit(RESERVED_DHT)
    }

    /// The 68 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[0] = PROTOCOL.len() as u8;
        b[1..20].copy_from_slice(PROTOCOL);
        b[20..28].copy_from_slice(&self.reserved);
        b[28..48].copy_from_slice(&self.info_hash);
        b[48..68].copy_from_slice(&self.peer_id);
        b
    }
}

/// Write the 68-byte handshake into `out`.
pub fn encode_handshake(h: &Handshake, out: &mut impl BufMut) {
    out.put_slice(&h.to_bytes());
}

/// Decode a handshake from the front of `buf` (it uses exactly [`HANDSHAKE_LEN`] bytes).
///
/// The protocol string is checked against whatever prefix is buffered, so a peer speaking
/// something else is refused before 68 bytes arrive. `Ok(None)`: need more bytes.
pub fn decode_handshake(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
    let mut expected = [0u8; 20];
    expected[0] = PROTOCOL.len() as u8;
    expected[1..].copy_from_slice(PROTOCOL);
    let seen = buf.len().min(20);
    if buf[..seen] != expected[..seen] {
        return Err(WireError::BadProtocol);
    }
    if buf.len() < HANDSHAKE_LEN {
        return Ok(None);
    }
    let mut h = Handshake {
        reserved: [0; 8],
        info_hash: [0; 20],
        peer_id: [0; 20],
    };
    h.reserved.copy_from_slice(&buf[20..28]);
    h.info_hash.copy_from_slice(&buf[28..48]);
    h.peer_id.copy_from_slice(&buf[48..68]);
    Ok(Some(h))
}

// ---------------------------------------------------------------------------------------------
// BEP 10 extension handshake
// ---------------------------------------------------------------------------------------------

/// Nesting allowed in an extension handshake below its top-level dictionary (unknown values may
/// nest this deep and are skipped; deeper input is refused, without recursion).
pub const EXT_MAX_DEPTH: usize = 32;
/// The [`bencode::validate`] limits of an extension handshake: [`Limits::MESSAGE`]'s size
/// (64 KiB) and value count (4,096), and a depth of the top-level dictionary plus
/// [`EXT_MAX_DEPTH`]. Real handshakes are a few hundred bytes, two levels deep.
pub const EXT_LIMITS: Limits = Limits {
    max_depth: 1 + EXT_MAX_DEPTH,
    ..Limits::MESSAGE
};
/// At most this many entries of the `m` dictionary are kept; the rest are ignored.
pub const EXT_MAX_M_ENTRIES: usize = 64;
/// Extension names longer than this are ignored.
pub const EXT_MAX_NAME_LEN: usize = 64;
/// The client version string `v` is truncated to this many bytes.
pub const EXT_MAX_V_LEN: usize = 128;

/// The BEP 10 handshake dictionary (extended message id 0).
///
/// Decoding is lenient as BEP 10 asks: unknown keys are ignored, known keys with the wrong type
/// or an out-of-range value are ignored (left `None`/absent); `m` keeps at most
/// [`EXT_MAX_M_ENTRIES`] names (the first ones, each at most [`EXT_MAX_NAME_LEN`] bytes) and
/// `v` at most [`EXT_MAX_V_LEN`] bytes. Only these are errors: malformed bencode, a top level
/// that is not a dictionary, bytes after it, nesting deeper than [`EXT_MAX_DEPTH`] below it, or
/// a payload over the size or value count of [`EXT_LIMITS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name -> the id the sender wants to receive it as (0 = disabled).
    pub m: BTreeMap<String, u8>,
    /// Client name and version.
    pub v: Option<String>,
    /// How many outstanding requests the sender queues.
    pub reqq: Option<u32>,
    /// The receiver's address as the sender sees it (4 or 16 bytes on the wire).
    pub yourip: Option<IpAddr>,
    /// The sender's listening port.
    pub p: Option<u16>,
    /// BEP 9 metadata size.
    pub metadata_size: Option<u64>,
}

fn put_bstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn put_bint(out: &mut Vec<u8>, v: u64) {
    out.push(b'i');
    out.extend_from_slice(v.to_string().as_bytes());
    out.push(b'e');
}

impl ExtHandshake {
    /// Canonical bencode (keys sorted), the payload of an extended message with id 0.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(b'd');
        // Keys in byte order: m, metadata_size, p, reqq, v, yourip.
        put_bstr(&mut out, b"m");
        out.push(b'd');
        for (name, ext_id) in &self.m {
            put_bstr(&mut out, name.as_bytes());
            put_bint(&mut out, u64::from(*ext_id));
        }
        out.push(b'e');
        if let Some(size) = self.metadata_size {
            put_bstr(&mut out, b"metadata_size");
            put_bint(&mut out, size);
        }
        if let Some(p) = self.p {
            put_bstr(&mut out, b"p");
            put_bint(&mut out, u64::from(p));
        }
        if let Some(reqq) = self.reqq {
            put_bstr(&mut out, b"reqq");
            put_bint(&mut out, u64::from(reqq));
        }
        if let Some(v) = &self.v {
            put_bstr(&mut out, b"v");
            put_bstr(&mut out, v.as_bytes());
        }
        if let Some(ip) = self.yourip {
            put_bstr(&mut out, b"yourip");
            match ip {
                IpAddr::V4(a) => put_bstr(&mut out, &a.octets()),
                IpAddr::V6(a) => put_bstr(&mut out, &a.octets()),
            }
        }
        out.push(b'e');
        out
    }

    /// Decode a handshake dictionary sent by a peer (untrusted).
    ///
    /// The payload is checked whole first with [`bencode::validate`] under [`EXT_LIMITS`]
    /// (iterative: no recursion, whatever the nesting), then the top-level dictionary and `m`
    /// are walked with [`bencode::dict_entries`] over the validated bytes. The payload must be
    /// exactly one dictionary: bytes after it are refused (the extended message carries nothing
    /// else; a payload that does is not a handshake we understand). Keys are read in the order
    /// they appear; when a key repeats, the last usable value wins, and `m` dictionaries merge.
    pub fn decode(buf: &[u8]) -> Result<ExtHandshake, WireError> {
        match buf.first() {
            None => return Err(ext_error(BencodeError::UnexpectedEof { offset: 0 })),
            Some(b'd') => {}
            Some(_) => return Err(ext_error(BencodeError::NotADictionary)),
        }
        let len = bencode::validate(buf, &EXT_LIMITS).map_err(ext_error)?;
        if len != buf.len() {
            return Err(WireError::ExtHandshake(
                "trailing bytes after the dictionary",
            ));
        }
        let mut hs = ExtHandshake::default();
        for (key, raw) in bencode::dict_entries(buf, &EXT_LIMITS).map_err(ext_error)? {
            match key {
                b"m" if raw.first() == Some(&b'd') => {
                    for (name, raw_id) in
                        bencode::dict_entries(raw, &EXT_LIMITS).map_err(ext_error)?
                    {
                        let Some(ext_id) = bencode::as_int(raw_id) else {
                            continue;
                        };
                        if let (Ok(name), Ok(ext_id)) =
                            (std::str::from_utf8(name), u8::try_from(ext_id))
                        {
                            if name.len() <= EXT_MAX_NAME_LEN
                                && (hs.m.len() < EXT_MAX_M_ENTRIES || hs.m.contains_key(name))
                            {
                                hs.m.insert(name.to_owned(), ext_id);
                            }
                        }
                    }
                }
                b"v" => {
                    if let Some(v) = bencode::as_bytes(raw) {
                        hs.v = Some(client_version(v));
                    }
                }
                b"reqq" => {
                    if let Some(i) = bencode::as_int(raw) {
                        hs.reqq = u32::try_from(i).ok();
                    }
                }
                b"p" => {
                    if let Some(i) = bencode::as_int(raw) {
                        hs.p = u16::try_from(i).ok().filter(|&p| p != 0);
                    }
                }
                b"metadata_size" => {
                    if let Some(i) = bencode::as_int(raw) {
                        hs.metadata_size = u64::try_from(i).ok();
                    }
                }
                b"yourip" => {
                    if let Some(ip) = bencode::as_bytes(raw) {
                        hs.yourip = if let Ok(a) = <[u8; 4]>::try_from(ip) {
                            Some(IpAddr::V4(Ipv4Addr::from(a)))
                        } else if let Ok(a) = <[u8; 16]>::try_from(ip) {
                            Some(IpAddr::V6(Ipv6Addr::from(a)))
                        } else {
                            None
                        };
                    }
                }
                // Unknown keys, and known keys of the wrong type: ignored (BEP 10).
                _ => {}
            }
        }
        Ok(hs)
    }
}

/// The `v` a peer sent, as at most [`EXT_MAX_V_LEN`] bytes of UTF-8: its first
/// [`EXT_MAX_V_LEN`] bytes, invalid UTF-8 replaced by U+FFFD, cut back to a character boundary
/// when the replacements (3 bytes each) made it longer. The cap holds on the decoded string, so
/// decoding our own encoding of it gives it back unchanged.
fn client_version(raw: &[u8]) -> String {
    let mut v = String::from_utf8_lossy(&raw[..raw.len().min(EXT_MAX_V_LEN)]).into_owned();
    if v.len() > EXT_MAX_V_LEN {
        let end = (0..=EXT_MAX_V_LEN)
            .rev()
            .find(|&i| v.is_char_boundary(i))
            .unwrap_or(0);
        v.truncate(end);
    }
    v
}

/// What an extension handshake that does not validate is refused with.
fn ext_error(e: BencodeError) -> WireError {
    WireError::ExtHandshake(match e {
        BencodeError::UnexpectedEof { .. } | BencodeError::StringPastEnd { .. } => {
            "truncated bencode"
        }
        BencodeError::TooDeep { .. } => "nesting too deep",
        BencodeError::TooManyTokens { .. } => "too many values",
        BencodeError::TooLarge { .. } => "too large",
        BencodeError::NotADictionary => "top level is not a dictionary",
        BencodeError::UnexpectedByte { .. }
        | BencodeError::BadInteger { .. }
        | BencodeError::BadStringLength { .. }
        | BencodeError::NonStringKey { .. }
        | BencodeError::MissingValue { .. } => "malformed bencode",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(m: &Message<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(m, &mut v);
        assert_eq!(v.len(), m.encoded_len());
        v
    }

    fn block() -> impl Strategy<Value = BlockRef> {
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(piece, begin, len)| BlockRef {
            piece,
            begin,
            len,
        })
    }

    fn owned_message() -> impl Strategy<Value = OwnedMessage> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
        prop_oneof![
            Just(OwnedMessage::KeepAlive),
            Just(OwnedMessage::Choke),
            Just(OwnedMessage::Unchoke),
            Just(OwnedMessage::Interested),
            Just(OwnedMessage::NotInterested),
            any::<u32>().prop_map(OwnedMessage::Have),
            bytes(300).prop_map(OwnedMessage::Bitfield),
            block().prop_map(OwnedMessage::Request),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..=BLOCK_SIZE as usize)
            )
                .prop_map(|(piece, begin, data)| OwnedMessage::Piece {
                    piece,
                    begin,
                    data
                }),
            block().prop_map(OwnedMessage::Cancel),
            any::<u16>().prop_map(OwnedMessage::Port),
            any::<u32>().prop_map(OwnedMessage::Suggest),
            Just(OwnedMessage::HaveAll),
            Just(OwnedMessage::HaveNone),
            block().prop_map(OwnedMessage::Reject),
            any::<u32>().prop_map(OwnedMessage::AllowedFast),
            (any::<u8>(), bytes(300))
                .prop_map(|(id, payload)| OwnedMessage::Extended { id, payload }),
            // Ids no message uses.
            (prop_oneof![10u8..=12, 0x12u8..=19, 21u8..=255], bytes(100))
                .prop_map(|(id, payload)| OwnedMessage::Unknown { id, payload }),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trip(m in owned_message()) {
            let bytes = enc(&m.as_message());
            let (d, used) = decode(&bytes, MAX_MESSAGE_LEN).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(d.to_owned_message(), m);
            // Every strict prefix is "need more bytes", never an error or a message.
            for cut in [0, 1, 3, 4, 5, bytes.len() / 2, bytes.len() - 1] {
                if cut < bytes.len() {
                    prop_assert_eq!(decode(&bytes[..cut], MAX_MESSAGE_LEN).unwrap(), None);
                }
            }
        }

        #[test]
        fn message_stream_round_trip(ms in proptest::collection::vec(owned_message(), 0..20)) {
            let mut stream = Vec::new();
            for m in &ms {
                encode(&m.as_message(), &mut stream);
            }
            let mut at = 0;
            let mut got = Vec::new();
            while let Some((m, used)) = decode(&stream[at..], MAX_MESSAGE_LEN).unwrap() {
                got.push(m.to_owned_message());
                at += used;
            }
            prop_assert_eq!(at, stream.len());
            prop_assert_eq!(got, ms);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes, MAX_MESSAGE_LEN);
            let _ = decode_handshake(&bytes);
            let _ = ExtHandshake::decode(&bytes);
        }

        #[test]
        fn handshake_round_trip(reserved in any::<[u8; 8]>(), ih in any::<[u8; 20]>(), pid in any::<[u8; 20]>()) {
            let h = Handshake { reserved, info_hash: ih, peer_id: pid };
            let mut v = Vec::new();
            encode_handshake(&h, &mut v);
            prop_assert_eq!(v.len(), HANDSHAKE_LEN);
            prop_assert_eq!(decode_handshake(&v).unwrap(), Some(h));
            for cut in 0..HANDSHAKE_LEN {
                prop_assert_eq!(decode_handshake(&v[..cut]).unwrap(), None);
            }
        }

        #[test]
        fn ext_handshake_round_trip(
            m in proptest::collection::btree_map("[a-z_]{1,20}", any::<u8>(), 0..10),
            v in proptest::option::of("[ -~]{0,40}"),
            reqq in proptest::option::of(any::<u32>()),
            yourip in proptest::option::of(prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ]),
            p in proptest::option::of(1u16..),
            metadata_size in proptest::option::of(0u64..=i64::MAX as u64),
        ) {
            let hs = ExtHandshake { m, v, reqq, yourip, p, metadata_size };
            let bytes = hs.encode();
            prop_assert_eq!(ExtHandshake::decode(&bytes).unwrap(), hs);
        }

        /// Anything within the documented caps round-trips: any UTF-8 names and `v`, every
        /// field optional. The encoding is canonical (re-encoding gives the same bytes), and
        /// every strict prefix or a trailing byte is refused.
        #[test]
        fn ext_handshake_round_trips_within_caps(
            m in proptest::collection::btree_map("\\PC{1,16}", any::<u8>(), 0..=EXT_MAX_M_ENTRIES),
            v in proptest::option::of("\\PC{0,32}"),
            reqq in proptest::option::of(any::<u32>()),
            yourip in proptest::option::of(prop_oneof![
                any::<[u8; 4]>().prop_map(IpAddr::from),
                any::<[u8; 16]>().prop_map(IpAddr::from),
            ]),
            p in proptest::option::of(1u16..),
            metadata_size in proptest::option::of(0u64..=i64::MAX as u64),
            tail in any::<u8>(),
        ) {
            prop_assume!(m.keys().all(|k| k.len() <= EXT_MAX_NAME_LEN));
            prop_assume!(v.as_ref().is_none_or(|v| v.len() <= EXT_MAX_V_LEN));
            let hs = ExtHandshake { m, v, reqq, yourip, p, metadata_size };
            let bytes = hs.encode();
            let back = ExtHandshake::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &hs);
            prop_assert_eq!(back.encode(), bytes.clone());
            for cut in 0..bytes.len() {
                prop_assert!(ExtHandshake::decode(&bytes[..cut]).is_err(), "prefix of {}", cut);
            }
            let mut trailing = bytes;
            trailing.push(tail);
            prop_assert_eq!(
                ExtHandshake::decode(&trailing),
                Err(WireError::ExtHandshake("trailing bytes after the dictionary"))
            );
        }

        /// Whatever decodes, from any bytes, re-encodes to a handshake that decodes to itself.
        #[test]
        fn ext_handshake_decode_is_a_fixed_point(
            bytes in proptest::collection::vec(any::<u8>(), 0..128),
            prefix in prop_oneof![Just(&b""[..]), Just(&b"d"[..]), Just(&b"d1:md"[..])],
        ) {
            let mut buf = prefix.to_vec();
            buf.extend(bytes);
            if let Ok(hs) = ExtHandshake::decode(&buf) {
                prop_assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
            }
        }
    }

    #[test]
    fn keepalive_and_fixed_encodings() {
        assert_eq!(enc(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(enc(&Message::HaveAll), [0, 0, 0, 1, 0x0E]);
        assert_eq!(enc(&Message::HaveNone), [0, 0, 0, 1, 0x0F]);
        assert_eq!(
            enc(&Message::Reject(BlockRef {
                piece: 1,
                begin: 0x4000,
                len: 0x4000
            })),
            [0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
        assert_eq!(
            enc(&Message::AllowedFast(7)),
            [0, 0, 0, 5, 0x11, 0, 0, 0, 7]
        );
        assert_eq!(enc(&Message::Suggest(2)), [0, 0, 0, 5, 0x0D, 0, 0, 0, 2]);
        assert_eq!(enc(&Message::Port(6881)), [0, 0, 0, 3, 9, 0x1A, 0xE1]);
    }

    #[test]
    fn piece_header_matches_encode() {
        let data = vec![7u8; 1000];
        let full = enc(&Message::Piece {
            piece: 3,
            begin: 16384,
            data: &data,
        });
        assert_eq!(
            encode_piece_header(3, 16384, 1000),
            full[..PIECE_HEADER_LEN]
        );
        assert_eq!(&full[PIECE_HEADER_LEN..], &data[..]);
    }

    #[test]
    fn refuses_over_long_prefix_before_body() {
        // Only the 4-byte prefix is buffered: the error comes now, not after 1 MiB arrives.
        let len = MAX_MESSAGE_LEN + 1;
        assert_eq!(
            decode(&len.to_be_bytes(), MAX_MESSAGE_LEN),
            Err(WireError::TooLong {
                len,
                max: MAX_MESSAGE_LEN
            })
        );
        assert_eq!(
            decode(&u32::MAX.to_be_bytes(), MAX_MESSAGE_LEN),
            Err(WireError::TooLong {
                len: u32::MAX,
                max: MAX_MESSAGE_LEN
            })
        );
        // The caller's max applies.
        assert!(matches!(
            decode(&[0, 0, 1, 0, 5], 100),
            Err(WireError::TooLong { len: 256, max: 100 })
        ));
        // At the limit: fine, need more bytes.
        let mut hdr = MAX_MESSAGE_LEN.to_be_bytes().to_vec();
        hdr.push(id::BITFIELD);
        assert_eq!(decode(&hdr, MAX_MESSAGE_LEN), Ok(None));
    }

    #[test]
    fn refuses_oversized_piece_from_header() {
        let mut hdr = (MAX_PIECE_MESSAGE_LEN + 1).to_be_bytes().to_vec();
        hdr.push(id::PIECE);
        assert_eq!(
            decode(&hdr, MAX_MESSAGE_LEN),
            Err(WireError::PieceTooLong {
                data_len: BLOCK_SIZE + 1
            })
        );
        let mut ok = MAX_PIECE_MESSAGE_LEN.to_be_bytes().to_vec();
        ok.push(id::PIECE);
        assert_eq!(decode(&ok, MAX_MESSAGE_LEN), Ok(None));
        // PIECE shorter than its index and begin.
        assert_eq!(
            decode(&[0, 0, 0, 8, id::PIECE], MAX_MESSAGE_LEN),
            Err(WireError::TooShort {
                id: id::PIECE,
                len: 8,
                min: 9
            })
        );
    }

    #[test]
    fn refuses_bad_fixed_lengths() {
        let cases: &[(u8, u32)] = &[
            (id::CHOKE, 1),
            (id::UNCHOKE, 1),
            (id::INTERESTED, 1),
            (id::NOT_INTERESTED, 1),
            (id::HAVE, 5),
            (id::REQUEST, 13),
            (id::CANCEL, 13),
            (id::PORT, 3),
            (id::SUGGEST, 5),
            (id::HAVE_ALL, 1),
            (id::HAVE_NONE, 1),
            (id::REJECT, 13),
            (id::ALLOWED_FAST, 5),
        ];
        for &(msg_id, expected) in cases {
            for len in [expected - 1, expected + 1, expected + 100] {
                if len == 0 {
                    continue; // a zero prefix is a KEEP-ALIVE
                }
                let mut b = len.to_be_bytes().to_vec();
                b.push(msg_id);
                assert_eq!(
                    decode(&b, MAX_MESSAGE_LEN),
                    Err(WireError::BadLength {
                        id: msg_id,
                        len,
                        expected
                    }),
                    "id {msg_id} len {len}"
                );
            }
        }
        // Extended needs its extended id byte.
        assert_eq!(
            decode(&[0, 0, 0, 1, id::EXTENDED], MAX_MESSAGE_LEN),
            Err(WireError::TooShort {
                id: id::EXTENDED,
                len: 1,
                min: 2
            })
        );
    }

    #[test]
    fn truncated_messages_need_more() {
        let full = enc(&Message::Request(BlockRef {
            piece: 1,
            begin: 2,
            len: 3,
        }));
        for cut in 0..full.len() {
            assert_eq!(decode(&full[..cut], MAX_MESSAGE_LEN), Ok(None), "cut {cut}");
        }
        // Trailing bytes of the next message are left alone.
        let mut two = full.clone();
        two.extend_from_slice(&[0, 0]);
        let (_, used) = decode(&two, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(used, full.len());
    }

    #[test]
    fn unknown_ids_are_returned_not_fatal() {
        assert_eq!(
            decode(&[0, 0, 0, 3, 0x42, 1, 2], MAX_MESSAGE_LEN),
            Ok(Some((
                Message::Unknown {
                    id: 0x42,
                    payload: &[1, 2]
                },
                7
            )))
        );
    }

    #[test]
    fn peek_header_works() {
        assert_eq!(peek_header(&[0, 0, 0]), None);
        assert_eq!(peek_header(&[0, 0, 0, 0]), Some((0, None)));
        assert_eq!(peek_header(&[0, 0, 0, 9]), Some((9, None)));
        assert_eq!(peek_header(&[0, 0, 0x40, 9, 7]), Some((16393, Some(7))));
        assert_eq!(
            check_header(16393, Some(id::PIECE), MAX_MESSAGE_LEN),
            Ok(())
        );
    }

    #[test]
    fn handshake_bits_and_refusals() {
        let h = Handshake::new([1; 20], [2; 20]);
        assert!(h.supports_fast());
        assert!(h.supports_extensions());
        assert!(!h.supports_dht());
        let b = h.to_bytes();
        assert_eq!(b[25], 0x10);
        assert_eq!(b[27], 0x04);
        let plain = Handshake {
            reserved: [0; 8],
            ..h
        };
        assert!(!plain.supports_fast() && !plain.supports_extensions());
        let dht = Handshake {
            reserved: [0, 0, 0, 0, 0, 0, 0, 1],
            ..h
        };
        assert!(dht.supports_dht() && !dht.supports_fast());
        // Wrong length byte, and a wrong protocol string detected from a prefix.
        assert_eq!(decode_handshake(&[18]), Err(WireError::BadProtocol));
        assert_eq!(
            decode_handshake(b"\x13BitTorrent protoX"),
            Err(WireError::BadProtocol)
        );
        assert_eq!(
            decode_handshake(b"GET / HTTP/1.1\r\n"),
            Err(WireError::BadProtocol)
        );
        assert_eq!(decode_handshake(b""), Ok(None));
    }

    #[test]
    fn ext_handshake_canonical_encoding() {
        let mut hs = ExtHandshake {
            reqq: Some(2000),
            v: Some("uring-bt 0.1".into()),
            p: Some(6881),
            yourip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
            ..Default::default()
        };
        hs.m.insert("ut_metadata".into(), 2);
        hs.m.insert("ut_pex".into(), 0);
        assert_eq!(
            hs.encode(),
            b"d1:md11:ut_metadatai2e6:ut_pexi0ee1:pi6881e4:reqqi2000e1:v12:uring-bt 0.16:yourip4:\x7f\x00\x00\x01e"
        );
    }

    #[test]
    fn ext_handshake_is_lenient_with_types_and_unknown_keys() {
        // reqq as a string, p out of range, yourip of 5 bytes, m entry with a list value and one
        // out of u8 range, unknown keys with nested values: all ignored, not fatal.
        let raw = b"d1:ai1e1:ld1:xli1eee1:md1:al1:be1:bi300e1:ci3ee1:pi70000e4:reqq3:abc\
            6:yourip5:abcde1:zd1:yd1:xleeee";
        let hs = ExtHandshake::decode(raw).unwrap();
        assert_eq!(hs.m.len(), 1);
        assert_eq!(hs.m.get("c"), Some(&3));
        assert_eq!(hs.p, None);
        assert_eq!(hs.reqq, None);
        assert_eq!(hs.yourip, None);
        // m of the wrong type is ignored too.
        let hs = ExtHandshake::decode(b"d1:mi5e4:reqqi250ee").unwrap();
        assert!(hs.m.is_empty());
        assert_eq!(hs.reqq, Some(250));
        // IPv6 yourip and a non-UTF-8 v.
        let mut raw = b"d1:v2:\xff\xfe6:yourip16:".to_vec();
        raw.extend_from_slice(&[0u8; 15]);
        raw.extend_from_slice(b"\x01e");
        let hs = ExtHandshake::decode(&raw).unwrap();
        assert_eq!(hs.yourip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(hs.v.as_deref(), Some("\u{fffd}\u{fffd}"));
    }

    #[test]
    fn ext_handshake_refusals() {
        for bad in [
            &b""[..],
            b"le",
            b"i5e",
            b"d",
            b"d1:m",
            b"d1:md1:ai1e",
            b"d1:xi01ee",
            b"d1:xi-0ee",
            b"d1:xie",
            b"d1:x02:abe",
            b"d1:xd1:ae",
            b"d1:xdi1ei2eee",
            b"d1:x99999999999999999999999:e",
            b"d1:xi99999999999999999999ee",
            b"d1:xxe",
        ] {
            assert!(
                ExtHandshake::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Nesting: up to the limit is fine, one more is refused; no recursion either way.
        let nest = |n: usize| {
            let mut v = b"d1:x".to_vec();
            v.resize(v.len() + n, b'l');
            v.resize(v.len() + n, b'e');
            v.push(b'e');
            v
        };
        assert!(ExtHandshake::decode(&nest(EXT_MAX_DEPTH)).is_ok());
        assert_eq!(
            ExtHandshake::decode(&nest(EXT_MAX_DEPTH + 1)),
            Err(WireError::ExtHandshake("nesting too deep"))
        );
        assert!(ExtHandshake::decode(&nest(1_000_000)).is_err());
    }

    #[test]
    fn ext_handshake_caps_m_entries() {
        let mut raw = b"d1:md".to_vec();
        for i in 0..(EXT_MAX_M_ENTRIES + 10) {
            let name = format!("x{i:04}");
            raw.extend_from_slice(format!("{}:{}i1e", name.len(), name).as_bytes());
        }
        raw.extend_from_slice(b"ee");
        let hs = ExtHandshake::decode(&raw).unwrap();
        assert_eq!(hs.m.len(), EXT_MAX_M_ENTRIES);
    }

    #[test]
    fn ext_limits_match_the_documented_bounds() {
        assert_eq!(EXT_LIMITS.max_depth, EXT_MAX_DEPTH + 1);
        assert_eq!(EXT_LIMITS.max_size, Limits::MESSAGE.max_size);
        assert_eq!(EXT_LIMITS.max_tokens, Limits::MESSAGE.max_tokens);
        // A handshake at every cap fits the size and value limits many times over.
        let hs = ExtHandshake {
            m: (0..EXT_MAX_M_ENTRIES)
                .map(|i| (format!("{i:0>width$}", width = EXT_MAX_NAME_LEN), 255))
                .collect(),
            v: Some("v".repeat(EXT_MAX_V_LEN)),
            reqq: Some(u32::MAX),
            yourip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            p: Some(u16::MAX),
            metadata_size: Some(i64::MAX as u64),
        };
        let bytes = hs.encode();
        assert!(bytes.len() * 8 < EXT_LIMITS.max_size, "{}", bytes.len());
        assert_eq!(ExtHandshake::decode(&bytes), Ok(hs));
    }

    #[test]
    fn ext_handshake_refuses_trailing_bytes() {
        // The payload is one dictionary and nothing else (decided: reject, not ignore).
        assert!(ExtHandshake::decode(b"d4:reqqi5ee").is_ok());
        for bad in [
            &b"d4:reqqi5eeX"[..],
            b"d4:reqqi5ee\0",
            b"dee",
            b"dede",
            b"d4:reqqi5eed4:reqqi6ee",
            b"d4:reqqi5ee4:spam",
        ] {
            assert_eq!(
                ExtHandshake::decode(bad),
                Err(WireError::ExtHandshake(
                    "trailing bytes after the dictionary"
                )),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Trailing garbage that is not bencode is refused the same way: the dict is complete.
        assert_eq!(
            ExtHandshake::decode(b"de\xff\xff"),
            Err(WireError::ExtHandshake(
                "trailing bytes after the dictionary"
            ))
        );
    }

    #[test]
    fn ext_handshake_refuses_10000_deep_nesting_without_recursing() {
        let n = 10_000;
        // Lists under an unknown key, dictionaries under nested keys, and both under `m`.
        let mut lists = b"d1:x".to_vec();
        lists.extend(std::iter::repeat_n(b'l', n));
        lists.extend(std::iter::repeat_n(b'e', n));
        lists.push(b'e');
        let mut dicts = b"d".to_vec();
        dicts.extend(b"1:xd".repeat(n));
        dicts.extend(b"1:yi1e");
        dicts.extend(std::iter::repeat_n(b'e', n + 1));
        let mut in_m = b"d1:md1:a".to_vec();
        in_m.extend(std::iter::repeat_n(b'l', n));
        in_m.extend(std::iter::repeat_n(b'e', n));
        in_m.extend(b"ee");
        for deep in [lists, dicts, in_m] {
            // Run on a small stack: a recursive reader would overflow it long before 10,000.
            let got = std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || ExtHandshake::decode(&deep))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(got, Err(WireError::ExtHandshake("nesting too deep")));
        }
    }

    #[test]
    fn ext_handshake_keeps_the_first_m_entries_of_1000() {
        let mut raw = b"d1:md".to_vec();
        for i in 0..1000 {
            let name = format!("x{i:04}");
            raw.extend_from_slice(format!("{}:{}i{}e", name.len(), name, i % 256).as_bytes());
        }
        // A later value for a name already kept still updates it; a new name does not get in.
        raw.extend_from_slice(b"5:x0003i200e5:y0000i1e");
        raw.extend_from_slice(b"e4:reqqi7ee");
        let hs = ExtHandshake::decode(&raw).unwrap();
        assert_eq!(hs.m.len(), EXT_MAX_M_ENTRIES);
        let want: Vec<String> = (0..EXT_MAX_M_ENTRIES).map(|i| format!("x{i:04}")).collect();
        assert!(hs.m.keys().eq(want.iter()), "{:?}", hs.m.keys());
        assert_eq!(hs.m.get("x0003"), Some(&200));
        assert_eq!(hs.m.get("x0063"), Some(&63));
        assert_eq!(hs.reqq, Some(7), "keys after a large m are still read");
    }

    #[test]
    fn ext_handshake_size_and_value_limits() {
        // Over 64 KiB: refused, even as one well-formed string.
        let mut big = b"d1:x".to_vec();
        let len = EXT_LIMITS.max_size;
        big.extend(format!("{len}:").as_bytes());
        big.resize(big.len() + len, b'a');
        big.push(b'e');
        assert_eq!(
            ExtHandshake::decode(&big),
            Err(WireError::ExtHandshake("too large"))
        );
        // More than 4,096 values (here 2,100 entries of `m`, 4,203 values): refused whole.
        let mut many = b"d1:md".to_vec();
        for i in 0..2100 {
            many.extend(format!("5:x{i:04}i1e").as_bytes());
        }
        many.extend(b"ee");
        assert!(many.len() < EXT_LIMITS.max_size);
        assert_eq!(
            ExtHandshake::decode(&many),
            Err(WireError::ExtHandshake("too many values"))
        );
    }

    #[test]
    fn ext_handshake_repeated_keys_last_usable_value_wins() {
        // A repeated key of the right type replaces the earlier value; of the wrong type it is
        // ignored; in range or not, an integer of the right type is taken (out of range: None).
        let hs = ExtHandshake::decode(
            b"d4:reqqi5e4:reqqi6e1:pi80e1:p3:abc1:md1:ai1ee1:md1:bi2ee\
              13:metadata_sizei9e13:metadata_sizei-1e6:yourip4:\x01\x02\x03\x04e",
        )
        .unwrap();
        assert_eq!(hs.reqq, Some(6));
        assert_eq!(hs.p, Some(80));
        assert_eq!(hs.m.len(), 2);
        assert_eq!(hs.metadata_size, None);
        assert_eq!(hs.yourip, Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        // p = 0 means no port; v is cut at EXT_MAX_V_LEN bytes; long names are dropped.
        let mut raw = b"d1:md".to_vec();
        let long = "n".repeat(EXT_MAX_NAME_LEN + 1);
        raw.extend(format!("{}:{long}i1e", long.len()).as_bytes());
        raw.extend(b"e1:pi0e1:v");
        raw.extend(format!("{}:", EXT_MAX_V_LEN + 10).as_bytes());
        raw.resize(raw.len() + EXT_MAX_V_LEN + 10, b'v');
        raw.push(b'e');
        let hs = ExtHandshake::decode(&raw).unwrap();
        assert!(hs.m.is_empty());
        assert_eq!(hs.p, None);
        assert_eq!(hs.v.map(|v| v.len()), Some(EXT_MAX_V_LEN));
    }

    /// Regression (found by the `ext_handshake` fuzz target): a `v` of invalid UTF-8 became up
    /// to 3 x EXT_MAX_V_LEN bytes after the lossy conversion, above the documented cap, and its
    /// canonical re-encoding decoded to a different, shorter `v`.
    #[test]
    fn ext_handshake_v_cap_holds_after_lossy_conversion() {
        let mut raw = format!("d1:v{}:", EXT_MAX_V_LEN + 2).into_bytes();
        raw.resize(raw.len() + EXT_MAX_V_LEN + 2, 0xFF);
        raw.push(b'e');
        let hs = ExtHandshake::decode(&raw).unwrap();
        let v = hs.v.as_deref().unwrap();
        assert!(v.len() <= EXT_MAX_V_LEN, "{} bytes", v.len());
        assert_eq!(v, "\u{fffd}".repeat(EXT_MAX_V_LEN / 3));
        assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
        // Valid UTF-8 cut inside a character: the partial character is dropped, or kept as one
        // U+FFFD when that fits.
        let euro = "\u{20ac}".repeat(EXT_MAX_V_LEN);
        let emoji = format!("{}\u{1f600}", "a".repeat(EXT_MAX_V_LEN - 3));
        for (long, want) in [
            (euro, "\u{20ac}".repeat(EXT_MAX_V_LEN / 3)),
            (
                "\u{e9}".repeat(EXT_MAX_V_LEN),
                "\u{e9}".repeat(EXT_MAX_V_LEN / 2),
            ),
            (emoji, format!("{}\u{fffd}", "a".repeat(EXT_MAX_V_LEN - 3))),
        ] {
            let mut raw = format!("d1:v{}:", long.len()).into_bytes();
            raw.extend(long.as_bytes());
            raw.push(b'e');
            let hs = ExtHandshake::decode(&raw).unwrap();
            assert_eq!(hs.v.as_deref(), Some(&want[..]));
            assert!(want.len() <= EXT_MAX_V_LEN);
            assert_eq!(ExtHandshake::decode(&hs.encode()), Ok(hs));
        }
        // Short strings are untouched, replacement characters and all.
        let hs = ExtHandshake::decode(b"d1:v3:a\xffbe").unwrap();
        assert_eq!(hs.v.as_deref(), Some("a\u{fffd}b"));
    }
}
