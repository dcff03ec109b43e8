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
//! - The BEP 10 handshake dictionary is parsed by a small iterative (non-recursive) bencode
//!   reader with a nesting limit ([`EXT_MAX_DEPTH`]); unknown keys and known keys of the wrong type
//!   are ignored.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

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

/// Nesting limit of the bencode reader for extension handshakes (unknown values are skipped,
/// iteratively, up to this depth; deeper input is refused).
pub const EXT_MAX_DEPTH: usize = 32;
/// At most this many entries of the `m` dictionary are kept; the rest are ignored.
pub const EXT_MAX_M_ENTRIES: usize = 64;
/// Extension names longer than this are ignored.
pub const EXT_MAX_NAME_LEN: usize = 64;
/// The client version string `v` is truncated to this many bytes.
pub const EXT_MAX_V_LEN: usize = 128;

/// The BEP 10 handshake dictionary (extended message id 0).
///
/// Decoding is lenient as BEP 10 asks: unknown keys are ignored, known keys with the wrong type
/// or an out-of-range value are ignored (left `None`/absent). Only malformed bencode, a top
/// level that is not a dictionary, or nesting deeper than [`EXT_MAX_DEPTH`] are errors.
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
    pub fn decode(buf: &[u8]) -> Result<ExtHandshake, WireError> {
        let mut r = Reader { buf, pos: 0 };
        if r.peek()? != b'd' {
            return Err(WireError::ExtHandshake("top level is not a dictionary"));
        }
        r.pos += 1;
        let mut hs = ExtHandshake::default();
        while r.peek()? != b'e' {
            let key = r.bytes()?;
            match key {
                b"m" if r.peek()? == b'd' => {
                    r.pos += 1;
                    while r.peek()? != b'e' {
                        let name = r.bytes()?;
                        if r.peek()? == b'i' {
                            let v = r.int()?;
                            if let (Ok(name), Ok(v)) = (std::str::from_utf8(name), u8::try_from(v))
                            {
                                if name.len() <= EXT_MAX_NAME_LEN
                                    && (hs.m.len() < EXT_MAX_M_ENTRIES || hs.m.contains_key(name))
                                {
                                    hs.m.insert(name.to_owned(), v);
                                }
                            }
                        } else {
                            r.skip_value()?;
                        }
                    }
                    r.pos += 1;
                }
                b"v" if r.peek()?.is_ascii_digit() => {
                    let v = r.bytes()?;
                    let v = &v[..v.len().min(EXT_MAX_V_LEN)];
                    hs.v = Some(String::from_utf8_lossy(v).into_owned());
                }
                b"reqq" if r.peek()? == b'i' => {
                    hs.reqq = u32::try_from(r.int()?).ok();
                }
                b"p" if r.peek()? == b'i' => {
                    hs.p = u16::try_from(r.int()?).ok().filter(|&p| p != 0);
                }
                b"metadata_size" if r.peek()? == b'i' => {
                    hs.metadata_size = u64::try_from(r.int()?).ok();
                }
                b"yourip" if r.peek()?.is_ascii_digit() => {
                    let ip = r.bytes()?;
                    hs.yourip = if let Ok(a) = <[u8; 4]>::try_from(ip) {
                        Some(IpAddr::V4(Ipv4Addr::from(a)))
                    } else if let Ok(a) = <[u8; 16]>::try_from(ip) {
                        Some(IpAddr::V6(Ipv6Addr::from(a)))
                    } else {
                        None
                    };
                }
                _ => r.skip_value()?,
            }
        }
        Ok(hs)
    }
}

/// A minimal bencode reader over untrusted bytes: no recursion, every index checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const EOF: WireError = WireError::ExtHandshake("truncated bencode");
const MALFORMED: WireError = WireError::ExtHandshake("malformed bencode");

impl<'a> Reader<'a> {
    fn peek(&self) -> Result<u8, WireError> {
        self.buf.get(self.pos).copied().ok_or(EOF)
    }

    /// A byte string `<len>:<bytes>`.
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let mut len: usize = 0;
        let mut digits = 0;
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'0'..=b'9' => {
                    digits += 1;
                    if digits > 1 && len == 0 {
                        return Err(MALFORMED); // leading zero
                    }
                    len = len
                        .checked_mul(10)
                        .and_then(|l| l.checked_add(usize::from(c - b'0')))
                        .ok_or(MALFORMED)?;
                }
                b':' if digits > 0 => break,
                _ => return Err(MALFORMED),
            }
        }
        let end = self.pos.checked_add(len).ok_or(MALFORMED)?;
        let s = self.buf.get(self.pos..end).ok_or(EOF)?;
        self.pos = end;
        Ok(s)
    }

    /// An integer `i<digits>e`.
    fn int(&mut self) -> Result<i64, WireError> {
        if self.peek()? != b'i' {
            return Err(MALFORMED);
        }
        self.pos += 1;
        let start = self.pos;
        let rest = self.buf.get(start..).ok_or(EOF)?;
        let end = rest.iter().position(|&c| c == b'e').ok_or(EOF)?;
        let digits = &rest[..end];
        let (neg, mag) = match digits {
            [b'-', m @ ..] => (true, m),
            m => (false, m),
        };
        let canonical = !mag.is_empty()
            && mag.iter().all(u8::is_ascii_digit)
            && (mag.len() == 1 || mag[0] != b'0')
            && (!neg || mag != b"0");
        if !canonical {
            return Err(MALFORMED);
        }
        let text = std::str::from_utf8(digits).map_err(|_| MALFORMED)?;
        let v: i64 = text
            .parse()
            .map_err(|_| WireError::ExtHandshake("integer out of range"))?;
        self.pos = start + end + 1;
        Ok(v)
    }

    /// Skip one value of any type, iteratively, with a nesting limit.
    fn skip_value(&mut self) -> Result<(), WireError> {
        // Per open container: is it a dictionary, and does it expect a key next?
        let mut is_dict = [false; EXT_MAX_DEPTH];
        let mut key_next = [false; EXT_MAX_DEPTH];
        let mut depth = 0usize;
        loop {
            let c = self.peek()?;
            if depth > 0 && c == b'e' {
                let d = depth - 1;
                if is_dict[d] && !key_next[d] {
                    return Err(WireError::ExtHandshake("dictionary key without a value"));
                }
                self.pos += 1;
                depth -= 1;
            } else if depth > 0 && is_dict[depth - 1] && key_next[depth - 1] {
                if !c.is_ascii_digit() {
                    return Err(WireError::ExtHandshake("dictionary key is not a string"));
                }
                self.bytes()?;
                key_next[depth - 1] = false;
                continue;
            } else {
                match c {
                    b'i' => {
                        self.int()?;
                    }
                    b'0'..=b'9' => {
                        self.bytes()?;
                    }
                    b'l' | b'd' => {
                        if depth == EXT_MAX_DEPTH {
                            return Err(WireError::ExtHandshake("nesting too deep"));
                        }
                        self.pos += 1;
                        is_dict[depth] = c == b'd';
                        key_next[depth] = c == b'd';
                        depth += 1;
                        continue;
                    }
                    _ => return Err(MALFORMED),
                }
            }
            // One complete value (a scalar, or a container just closed) was consumed.
            if depth == 0 {
                return Ok(());
            }
            if is_dict[depth - 1] {
                key_next[depth - 1] = true;
            }
        }
    }
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
}
