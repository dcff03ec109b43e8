//! The metadata fetcher (BEP 9, client side): what `uring-bt download magnet:?...` runs before
//! it can download. Given an info hash and peers (from the magnet's `x.pe`, and later from
//! trackers), it fetches the info dictionary from whichever peer serves a copy that hashes.
//!
//! On the control plane: an ordinary tokio runtime (current-thread is fine), plain
//! `tokio::net::TcpStream`s. These are not tokio-uring sockets, so dropping a read on a timeout
//! or when another peer has won is safe: nothing stays armed in a kernel ring.
//!
//! # One peer, from connect to verified bytes
//! 1. Connect (from [`FetchConfig::bind_ip`] when set) within [`FetchConfig::connect_timeout`].
//! 2. Our handshake ([`wire::OUR_RESERVED`]: FAST and the extension protocol); theirs must name
//!    the same info hash and support BEP 10.
//! 3. HAVE NONE when they support FAST (BEP 6 asks for one of BITFIELD / HAVE ALL / HAVE NONE
//!    first), then our BEP 10 handshake with `m: {ut_metadata: OUR_UT_METADATA_ID}`.
//! 4. Read messages (bounded by [`MAX_PEER_MESSAGE_LEN`]), ignoring everything but extended
//!    messages, until their BEP 10 handshake gives their `ut_metadata` id and a
//!    `metadata_size` in `1..=`[`MAX_METADATA_SIZE`].
//! 5. Request every piece, [`REQUESTS_IN_FLIGHT`] at a time; a data message is accepted only for
//!    a piece we asked for and have not received, with the handshake's `total_size` and exactly
//!    the piece's length ([`metadata_piece_range`]); anything else unsolicited is ignored. A
//!    reject ends this peer (the next one is tried).
//! 6. The assembled bytes must hash (SHA-1) to the info hash, else the peer is dropped and
//!    counted ([`Fetched::bad_metadata`]); then they must be exactly one bencoded dictionary
//!    under [`Limits::TORRENT`] (the iterative validator, no recursion).
//!
//! The whole of one peer's attempt is bounded by [`FetchConfig::peer_timeout`], and the fetch
//! by [`FetchConfig::total_timeout`]: every await sits under one of them.
//!
//! # Many peers
//! At most [`FetchConfig::max_parallel`] peers at once, in the order they were given, each
//! address at most once. The first verified copy wins and every other attempt is dropped
//! (aborted: its socket closes). Peers that arrive on `more` while the fetch runs join the
//! queue; the fetch ends with [`FetchError::AllFailed`] only once the queue is empty, no attempt
//! is running and `more` is closed (or absent).
//!
//! # Bounds
//! - Memory: per running attempt, one metadata buffer of the announced `metadata_size`
//!   (at most [`MAX_METADATA_SIZE`], 16 MiB) and one read buffer of at most
//!   `MAX_PEER_MESSAGE_LEN + 4 + READ_CHUNK` bytes (about 1.1 MiB), so in all at most
//!   `max_parallel x (16 MiB + 1.1 MiB)`: about 137 MiB with the default 8, and the size of the
//!   real info dict (usually well under 1 MiB) per peer in practice.
//! - Peers: at most [`MAX_CANDIDATES`] distinct addresses are remembered (tried or queued); later
//!   ones are ignored. Failure reasons kept for the error: the first [`MAX_REASONS`].
//! - Nothing is queued for a peer that does not read: we write our opening and at most
//!   [`REQUESTS_IN_FLIGHT`] requests at a time, each write under the peer's timeout; their
//!   `ut_metadata` requests to us are ignored (we have nothing to serve), so they cost no reply.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use uring_bt_proto::bencode::{self, Limits};
pub use uring_bt_proto::ext::MAX_METADATA_SIZE;
use uring_bt_proto::ext::{
    self, metadata_num_pieces, metadata_piece_range, ExtError, MetadataMsg, OUR_UT_METADATA_ID,
    UT_METADATA,
};
use uring_bt_proto::metainfo::hex;
use uring_bt_proto::wire::{
    self, ExtHandshake, Handshake, Message, WireError, EXTENDED_HANDSHAKE_ID, HANDSHAKE_LEN,
};

/// Largest message we read from a peer while fetching: the wire limit (1 MiB + 13), because a
/// seeder of a large torrent sends a BITFIELD that long before anything we want.
pub const MAX_PEER_MESSAGE_LEN: u32 = wire::MAX_MESSAGE_LEN;
/// Metadata requests outstanding to one peer at a time.
pub const REQUESTS_IN_FLIGHT: u32 = 4;
/// Most distinct peer addresses one fetch remembers (tried or queued).
pub const MAX_CANDIDATES: usize = 1024;
/// Failure reasons kept (and shown) in a [`FetchError`]: the first ones.
pub const MAX_REASONS: usize = 4;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// How a fetch runs.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Our peer id in the handshakes.
    pub peer_id: [u8; 20],
    /// The port we listen on, sent in our BEP 10 handshake (`p`); 0: not sent.
    pub listen_port: u16,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
    /// Bound on one peer's whole attempt, from connect to verified bytes.
    pub peer_timeout: Duration,
    /// Bound on the whole fetch.
    pub total_timeout: Duration,
    /// Peers tried at once (0 is taken as 1).
    pub max_parallel: usize,
    /// Connect from this address (port chosen by the kernel); peers of the other address family
    /// are then unreachable and fail.
    pub bind_ip: Option<IpAddr>,
}

impl FetchConfig {
    /// The defaults: 10 s per connect, 30 s per peer, 5 min in all, 8 peers at once.
    pub fn new(peer_id: [u8; 20], listen_port: u16) -> FetchConfig {
        FetchConfig {
            peer_id,
            listen_port,
            connect_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            max_parallel: 8,
            bind_ip: None,
        }
    }
}

/// A fetched, verified info dictionary.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The raw bytes of the info dict: their SHA-1 is the info hash, and they are one bencoded
    /// dictionary. Parse them as the `info` of a .torrent.
    pub info: Vec<u8>,
    /// The peer that served them.
    pub from: SocketAddr,
    /// Peers we started an attempt with (the winner included).
    pub tried: usize,
    /// Peers whose metadata did not hash to the info hash (dropped).
    pub bad_metadata: usize,
}

/// Why one peer did not give us the metadata. The peer is dropped; the fetch goes on with the
/// next one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("connect timed out after {} s", .0.as_secs_f64())]
    ConnectTimeout(Duration),
    #[error("timed out: no metadata within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("connection error: {0}")]
    Io(String),
    #[error("closed the connection")]
    Closed,
    #[error("wire protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("its handshake names another info hash")]
    WrongInfoHash,
    #[error("does not support the extension protocol (BEP 10), so it cannot send metadata")]
    NoExtensions,
    #[error("does not offer ut_metadata (BEP 9)")]
    NoUtMetadata,
    #[error("announced no metadata_size (it may not have the metadata itself)")]
    NoMetadataSize,
    #[error("announced metadata_size 0")]
    EmptyMetadata,
    #[error("announced metadata_size {size}, above the limit of {MAX_METADATA_SIZE} bytes")]
    MetadataTooLarge { size: u64 },
    #[error("rejected our request for metadata piece {0}")]
    Rejected(u32),
    #[error("bad ut_metadata message: {0}")]
    BadMessage(ExtError),
    #[error("metadata piece {piece} says total_size {got}, its handshake said {expected}")]
    SizeMismatch { piece: u32, got: u64, expected: u64 },
    #[error("its metadata does not hash to the info hash (SHA-1 {0})")]
    BadHash(String),
    #[error("its metadata hashes right but is not one bencoded dictionary: {0}")]
    NotADictionary(String),
    #[error("cannot reach it from bind address {0}: another address family")]
    FamilyMismatch(IpAddr),
    #[error("the attempt panicked")]
    Panicked,
}

/// Why a fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("no peers to fetch the metadata from (give `x.pe` peers or trackers that know some)")]
    NoPeers,
    #[error(
        "could not fetch the metadata: every peer failed ({tried} tried{}){}",
        bad_note(*.bad_metadata),
        Summary(.reasons, *.tried)
    )]
    AllFailed {
        tried: usize,
        bad_metadata: usize,
        /// The first [`MAX_REASONS`] failures.
        reasons: Vec<(SocketAddr, PeerError)>,
    },
    #[error(
        "timed out after {} s fetching the metadata ({tried} peers tried{}){}",
        .after.as_secs_f64(),
        bad_note(*.bad_metadata),
        Summary(.reasons, usize::MAX)
    )]
    TimedOut {
        after: Duration,
        tried: usize,
        bad_metadata: usize,
        /// The first [`MAX_REASONS`] failures.
        reasons: Vec<(SocketAddr, PeerError)>,
    },
}

fn bad_note(bad: usize) -> String {
    match bad {
        0 => String::new(),
        n => format!(", {n} sent metadata that does not hash"),
    }
}

/// `: a: why; b: why; and N more` (`failed` = all failures when known, else `usize::MAX`).
struct Summary<'a>(&'a [(SocketAddr, PeerError)], usize);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (addr, why)) in self.0.iter().enumerate() {
            write!(f, "{}{addr}: {why}", if i == 0 { ": " } else { "; " })?;
        }
        if self.1 != usize::MAX && self.1 > self.0.len() {
            write!(f, "; and {} more", self.1 - self.0.len())?;
        }
        Ok(())
    }
}

/// What one attempt needs (owned: attempts run as tasks).
#[derive(Debug, Clone, Copy)]
struct PeerCfg {
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    listen_port: u16,
    connect_timeout: Duration,
    peer_timeout: Duration,
    bind_ip: Option<IpAddr>,
}

/// Fetches the info dict of `info_hash` from `peers` (and from the peers `more` delivers while
/// it runs). See the module documentation for the protocol, the order and the bounds.
pub async fn fetch_metadata(
    info_hash: [u8; 20],
    peers: Vec<SocketAddr>,
    cfg: &FetchConfig,
    mut more: Option<mpsc::Receiver<Vec<SocketAddr>>>,
) -> Result<Fetched, FetchError> {
    let start = tokio::time::Instant::now();
    let deadline = start + cfg.total_timeout;
    let max_parallel = cfg.max_parallel.max(1);
    let pcfg = PeerCfg {
        info_hash,
        peer_id: cfg.peer_id,
        listen_port: cfg.listen_port,
        connect_timeout: cfg.connect_timeout,
        peer_timeout: cfg.peer_timeout,
        bind_ip: cfg.bind_ip,
    };
    let mut known: HashSet<SocketAddr> = HashSet::new();
    let mut queue: VecDeque<SocketAddr> = VecDeque::new();
    add_peers(peers, &mut known, &mut queue);
    if queue.is_empty() && more.is_none() {
        return Err(FetchError::NoPeers);
    }

    let mut running: JoinSet<Result<Vec<u8>, PeerError>> = JoinSet::new();
    let mut addr_of: HashMap<tokio::task::Id, SocketAddr> = HashMap::new();
    let mut tried = 0usize;
    let mut bad_metadata = 0usize;
    let mut reasons: Vec<(SocketAddr, PeerError)> = Vec::new();

    loop {
        while running.len() < max_parallel {
            let Some(addr) = queue.pop_front() else {
                break;
            };
            tried += 1;
            let handle = running.spawn(attempt(addr, pcfg));
            addr_of.insert(handle.id(), addr);
        }
        if running.is_empty() && queue.is_empty() && more.is_none() {
            return Err(if tried == 0 {
                FetchError::NoPeers
            } else {
                FetchError::AllFailed {
                    tried,
                    bad_metadata,
                    reasons,
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                // Dropping `running` aborts every attempt still in progress.
                return Err(FetchError::TimedOut {
                    after: cfg.total_timeout,
                    tried,
                    bad_metadata,
                    reasons,
                });
            }
            Some(joined) = running.join_next_with_id(), if !running.is_empty() => {
                let (id, result) = match joined {
                    Ok((id, r)) => (id, r),
                    Err(e) => (e.id(), Err(PeerError::Panicked)),
                };
                let addr = addr_of.remove(&id).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                match result {
                    Ok(info) => {
                        return Ok(Fetched {
                            info,
                            from: addr,
                            tried,
                            bad_metadata,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(peer = %addr, "metadata fetch: {e}");
                        if matches!(e, PeerError::BadHash(_)) {
                            bad_metadata += 1;
                        }
                        if reasons.len() < MAX_REASONS {
                            reasons.push((addr, e));
                        }
                    }
                }
            }
            batch = next_batch(&mut more) => match batch {
                Some(addrs) => add_peers(addrs, &mut known, &mut queue),
                None => more = None,
            },
        }
    }
}

/// The next batch from `more`; never resolves when there is no `more`.
async fn next_batch(more: &mut Option<mpsc::Receiver<Vec<SocketAddr>>>) -> Option<Vec<SocketAddr>> {
    match more {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Queues the addresses not seen before, within [`MAX_CANDIDATES`]; port 0, unspecified,
/// multicast and broadcast addresses are never dialed.
fn add_peers(
    addrs: Vec<SocketAddr>,
    known: &mut HashSet<SocketAddr>,
    queue: &mut VecDeque<SocketAddr>,
) {
    for a in addrs {
        let ip = a.ip();
        let unusable = a.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if unusable || known.len() >= MAX_CANDIDATES || !known.insert(a) {
            continue;
        }
        queue.push_back(a);
    }
}

/// One peer's attempt, under its timeout.
async fn attempt(addr: SocketAddr, cfg: PeerCfg) -> Result<Vec<u8>, PeerError> {
    match tokio::time::timeout(cfg.peer_timeout, fetch_from(addr, &cfg)).await {
        Ok(r) => r,
        Err(_) => Err(PeerError::Timeout(cfg.peer_timeout)),
    }
}

fn io_err(e: std::io::Error) -> PeerError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PeerError::Closed,
        _ => PeerError::Io(e.to_string()),
    }
}

async fn connect(addr: SocketAddr, cfg: &PeerCfg) -> Result<TcpStream, PeerError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| PeerError::Connect(e.to_string()))?;
    if let Some(ip) = cfg.bind_ip {
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(PeerError::FamilyMismatch(ip));
        }
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| PeerError::Connect(format!("bind {ip}: {e}")))?;
    }
    match tokio::time::timeout(cfg.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(PeerError::Connect(e.to_string())),
        Err(_) => Err(PeerError::ConnectTimeout(cfg.connect_timeout)),
    }
}

/// Reads more bytes into `rbuf` (at most [`READ_CHUNK`] at a time); end of stream is
/// [`PeerError::Closed`].
async fn read_more(stream: &mut TcpStream, rbuf: &mut BytesMut) -> Result<(), PeerError> {
    rbuf.reserve(READ_CHUNK);
    match stream.read_buf(rbuf).await {
        Ok(0) => Err(PeerError::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(io_err(e)),
    }
}

async fn fetch_from(addr: SocketAddr, cfg: &PeerCfg) -> Result<Vec<u8>, PeerError> {
    let mut stream = connect(addr, cfg).await?;
    let _ = stream.set_nodelay(true);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    wire::encode_handshake(&Handshake::new(cfg.info_hash, cfg.peer_id), &mut out);
    stream.write_all(&out).await.map_err(io_err)?;

    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let theirs = loop {
        if let Some(h) = wire::decode_handshake(&rbuf)? {
            break h;
        }
        read_more(&mut stream, &mut rbuf).await?;
    };
    rbuf.advance(HANDSHAKE_LEN);
    if theirs.info_hash != cfg.info_hash {
        return Err(PeerError::WrongInfoHash);
    }
    if !theirs.supports_extensions() {
        return Err(PeerError::NoExtensions);
    }

    out.clear();
    if theirs.supports_fast() {
        wire::encode(&Message::HaveNone, &mut out);
    }
    let payload = our_ext_handshake(cfg.listen_port);
    wire::encode(
        &Message::Extended {
            id: EXTENDED_HANDSHAKE_ID,
            payload: &payload,
        },
        &mut out,
    );
    stream.write_all(&out).await.map_err(io_err)?;

    let mut asm = Assembly::default();
    loop {
        out.clear();
        while let Some((msg, used)) = wire::decode(&rbuf, MAX_PEER_MESSAGE_LEN)? {
            let done = asm.on_message(msg, &mut out)?;
            rbuf.advance(used);
            if let Some(info) = done {
                return verify(info, &cfg.info_hash);
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err)?;
        }
        read_more(&mut stream, &mut rbuf).await?;
    }
}

/// Our BEP 10 handshake: `ut_metadata` only, our port, our name.
fn our_ext_handshake(listen_port: u16) -> Vec<u8> {
    let mut hs = ExtHandshake {
        p: (listen_port != 0).then_some(listen_port),
        v: Some(format!("uring-bt {}", env!("CARGO_PKG_VERSION"))),
        ..ExtHandshake::default()
    };
    hs.m.insert(UT_METADATA.to_owned(), OUR_UT_METADATA_ID);
    hs.encode()
}

/// SHA-1 over the assembled bytes, then the iterative bencode validator.
fn verify(info: Vec<u8>, info_hash: &[u8; 20]) -> Result<Vec<u8>, PeerError> {
    let got: [u8; 20] = Sha1::digest(&info).into();
    if &got != info_hash {
        return Err(PeerError::BadHash(hex(&got)));
    }
    if info.first() != Some(&b'd') {
        return Err(PeerError::NotADictionary(
            "it does not start with `d`".into(),
        ));
    }
    match bencode::validate(&info, &Limits::TORRENT) {
        Ok(len) if len == info.len() => Ok(info),
        Ok(len) => Err(PeerError::NotADictionary(format!(
            "{} bytes after the dictionary",
            info.len() - len
        ))),
        Err(e) => Err(PeerError::NotADictionary(e.to_string())),
    }
}

/// The metadata being assembled from one peer, once its handshake told us the size.
#[derive(Debug)]
struct Progress {
    /// The id the peer wants `ut_metadata` messages sent with.
    their_id: u8,
    size: usize,
    num_pieces: u32,
    buf: Vec<u8>,
    received: Vec<bool>,
    /// Pieces `0..next` have been requested.
    next: u32,
    done: u32,
}

/// One peer's side of the exchange, without I/O: messages in, requests out (appended to `out`),
/// the assembled bytes when every piece is in.
#[derive(Debug, Default)]
struct Assembly {
    progress: Option<Progress>,
}

impl Assembly {
    fn on_message(
        &mut self,
        msg: Message<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        match msg {
            Message::Extended {
                id: EXTENDED_HANDSHAKE_ID,
                payload,
            } => {
                let hs = ExtHandshake::decode(payload)?;
                self.on_handshake(&hs, out)?;
                Ok(None)
            }
            Message::Extended {
                id: OUR_UT_METADATA_ID,
                payload,
            } => self.on_metadata(payload, out),
            // BITFIELD, HAVE, HAVE ALL, UNCHOKE, keep-alives, other extensions...: not ours.
            _ => Ok(None),
        }
    }

    fn on_handshake(&mut self, hs: &ExtHandshake, out: &mut Vec<u8>) -> Result<(), PeerError> {
        let id = hs.m.get(UT_METADATA).copied();
        if let Some(p) = &mut self.progress {
            // A later handshake (BEP 10 allows them) may move or disable the extension; the
            // size stays the one we started with.
            return match id {
                Some(0) => Err(PeerError::NoUtMetadata),
                Some(id) => {
                    p.their_id = id;
                    Ok(())
                }
                None => Ok(()),
            };
        }
        let their_id = id.filter(|&id| id != 0).ok_or(PeerError::NoUtMetadata)?;
        let size = hs.metadata_size.ok_or(PeerError::NoMetadataSize)?;
        if size == 0 {
            return Err(PeerError::EmptyMetadata);
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s <= MAX_METADATA_SIZE)
            .ok_or(PeerError::MetadataTooLarge { size })?;
        let num_pieces = metadata_num_pieces(size);
        let mut p = Progress {
            their_id,
            size,
            num_pieces,
            buf: vec![0; size],
            received: vec![false; num_pieces as usize],
            next: 0,
            done: 0,
        };
        while p.next < num_pieces.min(REQUESTS_IN_FLIGHT) {
            request(&mut p, out);
        }
        self.progress = Some(p);
        Ok(())
    }

    fn on_metadata(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, PeerError> {
        let Some(p) = &mut self.progress else {
            // Before their handshake we asked for nothing: whatever this is, it is not an
            // answer.
            return Ok(None);
        };
        match ext::decode_metadata(payload).map_err(PeerError::BadMessage)? {
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => {
                if total_size != p.size as u64 {
                    return Err(PeerError::SizeMismatch {
                        piece,
                        got: total_size,
                        expected: p.size as u64,
                    });
                }
                let asked = piece < p.next;
                let slot = p.received.get_mut(piece as usize);
                let Some(slot) = slot.filter(|s| asked && !**s) else {
                    return Ok(None); // not requested, or a repeat: ignored
                };
                // The decoder checked `data` is exactly this piece's length for total_size.
                let Some(range) =
                    metadata_piece_range(p.size, piece).filter(|r| r.len() == data.len())
                else {
                    return Err(PeerError::BadMessage(ExtError::BadValue("piece")));
                };
                *slot = true;
                p.buf[range].copy_from_slice(data);
                p.done += 1;
                if p.done == p.num_pieces {
                    return Ok(Some(std::mem::take(&mut p.buf)));
                }
                if p.next < p.num_pieces {
                    request(p, out);
                }
                Ok(None)
            }
            MetadataMsg::Reject { piece } => Err(PeerError::Rejected(piece)),
            // We have no metadata to serve: ignored (no reply, so nothing queues up).
            MetadataMsg::Request { .. } => Ok(None),
        }
    }
}

/// Appends the request of piece `p.next` to `out` and moves `next` on.
fn request(p: &mut Progress, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(32);
    ext::encode_metadata_request(p.next, &mut payload);
    wire::encode(
        &Message::Extended {
            id: p.their_id,
            payload: &payload,
        },
        out,
    );
    p.next += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use uring_bt_proto::wire::OwnedMessage;

    fn handshake(id: Option<u8>, size: Option<u64>) -> Vec<u8> {
        let mut hs = ExtHandshake {
            metadata_size: size,
            ..ExtHandshake::default()
        };
        if let Some(id) = id {
            hs.m.insert(UT_METADATA.into(), id);
        }
        hs.encode()
    }

    /// The ut_metadata requests in `out`, as (extension id, piece).
    fn requests(out: &[u8]) -> Vec<(u8, u32)> {
        let mut v = Vec::new();
        let mut at = 0;
        while let Some((m, n)) = wire::decode(&out[at..], MAX_PEER_MESSAGE_LEN).unwrap() {
            if let OwnedMessage::Extended { id, payload } = m.to_owned_message() {
                match ext::decode_metadata(&payload).unwrap() {
                    MetadataMsg::Request { piece } => v.push((id, piece)),
                    other => panic!("{other:?}"),
                }
            }
            at += n;
        }
        assert_eq!(at, out.len());
        v
    }

    fn data(piece: u32, total: usize, bytes: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        ext::encode_metadata_data(piece, total as u64, bytes, &mut p);
        p
    }

    fn ext_msg(id: u8, payload: &[u8]) -> Message<'_> {
        Message::Extended { id, payload }
    }

    #[test]
    fn assembles_in_windows_and_ignores_unsolicited() {
        let size = 6 * 16384 + 100; // 7 pieces
        let info: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut a = Assembly::default();
        let mut out = Vec::new();
        // Before the handshake: data is ignored.
        let early = data(0, size, &info[..16384]);
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &early), &mut out),
            Ok(None)
        );
        assert_eq!(a.on_message(Message::HaveAll, &mut out), Ok(None));
        let hs = handshake(Some(9), Some(size as u64));
        assert_eq!(a.on_message(ext_msg(0, &hs), &mut out), Ok(None));
        assert_eq!(requests(&out), vec![(9, 0), (9, 1), (9, 2), (9, 3)]);
        // A piece not requested yet (5), and a repeat, are ignored and request nothing.
        out.clear();
        let r = |i: u32| metadata_piece_range(size, i).unwrap();
        let p5 = data(5, size, &info[r(5)]);
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &p5), &mut out),
            Ok(None)
        );
        assert!(out.is_empty());
        let p1 = data(1, size, &info[r(1)]);
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &p1), &mut out),
            Ok(None)
        );
        assert_eq!(requests(&out), vec![(9, 4)]);
        out.clear();
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &p1), &mut out),
            Ok(None)
        );
        assert!(out.is_empty());
        // A later handshake moves the id.
        let hs2 = handshake(Some(11), None);
        assert_eq!(a.on_message(ext_msg(0, &hs2), &mut out), Ok(None));
        let mut got = None;
        for i in [0u32, 2, 3, 4, 5, 6] {
            out.clear();
            let m = data(i, size, &info[r(i)]);
            got = a
                .on_message(ext_msg(OUR_UT_METADATA_ID, &m), &mut out)
                .unwrap();
            if i == 0 {
                assert_eq!(requests(&out), vec![(11, 5)]);
            }
        }
        assert_eq!(got.as_deref(), Some(&info[..]));
    }

    #[test]
    fn refuses_bad_handshakes_and_messages() {
        let mut out = Vec::new();
        let on_hs = |id, size| {
            let hs = handshake(id, size);
            Assembly::default().on_message(ext_msg(0, &hs), &mut Vec::new())
        };
        assert_eq!(on_hs(None, Some(10)), Err(PeerError::NoUtMetadata));
        assert_eq!(on_hs(Some(0), Some(10)), Err(PeerError::NoUtMetadata));
        assert_eq!(on_hs(Some(3), None), Err(PeerError::NoMetadataSize));
        assert_eq!(on_hs(Some(3), Some(0)), Err(PeerError::EmptyMetadata));
        let over = MAX_METADATA_SIZE as u64 + 1;
        let e = on_hs(Some(3), Some(over)).unwrap_err();
        assert_eq!(e, PeerError::MetadataTooLarge { size: over });
        assert_eq!(
            e.to_string(),
            "announced metadata_size 16777217, above the limit of 16777216 bytes"
        );
        assert_eq!(on_hs(Some(3), Some(MAX_METADATA_SIZE as u64)), Ok(None));

        let mut a = Assembly::default();
        a.on_message(ext_msg(0, &handshake(Some(3), Some(20000))), &mut out)
            .unwrap();
        let wrong_total = data(0, 30000, &[0; 16384]);
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &wrong_total), &mut out),
            Err(PeerError::SizeMismatch {
                piece: 0,
                got: 30000,
                expected: 20000
            })
        );
        let mut rej = Vec::new();
        ext::encode_metadata_reject(1, &mut rej);
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &rej), &mut out),
            Err(PeerError::Rejected(1))
        );
        assert!(matches!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, b"garbage"), &mut out),
            Err(PeerError::BadMessage(_))
        ));
        // Their requests get no answer; a later handshake that disables the extension ends it.
        let mut req = Vec::new();
        ext::encode_metadata_request(0, &mut req);
        out.clear();
        assert_eq!(
            a.on_message(ext_msg(OUR_UT_METADATA_ID, &req), &mut out),
            Ok(None)
        );
        assert!(out.is_empty());
        assert_eq!(
            a.on_message(ext_msg(0, &handshake(Some(0), None)), &mut out),
            Err(PeerError::NoUtMetadata)
        );
    }

    #[test]
    fn verifies_hash_then_bencode() {
        let good = b"d1:ai1ee".to_vec();
        let h: [u8; 20] = Sha1::digest(&good).into();
        assert_eq!(verify(good.clone(), &h), Ok(good));
        assert!(matches!(
            verify(b"d1:ai2ee".to_vec(), &h),
            Err(PeerError::BadHash(_))
        ));
        for bad in [&b"li1ee"[..], b"d1:ai1eeX", b"d1:a"] {
            let h: [u8; 20] = Sha1::digest(bad).into();
            assert!(
                matches!(verify(bad.to_vec(), &h), Err(PeerError::NotADictionary(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn errors_summarize_the_first_reasons() {
        let a: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let e = FetchError::AllFailed {
            tried: 6,
            bad_metadata: 1,
            reasons: vec![
                (a, PeerError::BadHash("00".into())),
                (a, PeerError::Timeout(Duration::from_secs(30))),
            ],
        };
        assert_eq!(
            e.to_string(),
            "could not fetch the metadata: every peer failed (6 tried, 1 sent metadata that \
             does not hash): 127.0.0.2:1: its metadata does not hash to the info hash (SHA-1 \
             00); 127.0.0.2:1: timed out: no metadata within 30 s; and 4 more"
        );
        let e = FetchError::TimedOut {
            after: Duration::from_millis(1500),
            tried: 0,
            bad_metadata: 0,
            reasons: vec![],
        };
        assert_eq!(
            e.to_string(),
            "timed out after 1.5 s fetching the metadata (0 peers tried)"
        );
    }

    #[test]
    fn no_peers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = FetchConfig::new([1; 20], 0);
        let r = rt.block_on(fetch_metadata([0; 20], vec![], &cfg, None));
        assert!(matches!(r, Err(FetchError::NoPeers)), "{r:?}");
        // Unusable addresses are not dialed: still no peers.
        let zero = vec![
            "0.0.0.0:6881".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ];
        let r = rt.block_on(fetch_metadata([0; 20], zero, &cfg, None));
        assert!(matches!(r, Err(FetchError::NoPeers)), "{r:?}");
        // A `more` channel that closes without a peer.
        let (tx, rx) = mpsc::channel(1);
        drop(tx);
        let r = rt.block_on(fetch_metadata([0; 20], vec![], &cfg, Some(rx)));
        assert!(matches!(r, Err(FetchError::NoPeers)), "{r:?}");
    }
}
