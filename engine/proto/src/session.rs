//! One peer connection from its first byte to its close, sans-IO.
//!
//! A [`Session`] is what the connection driver runs for every socket: it parses the handshake,
//! lets the driver name the torrent ([`Session::attach`]), queues our side of the handshake in
//! the order peers expect (handshake, then BITFIELD/HAVE ALL, then the BEP 10 extension
//! handshake), decodes every message and feeds the [`Peer`] state machine, and keeps the
//! connection's outgoing control bytes in one bounded queue. Its timers (handshake timeout, idle
//! timeout, stalled write, keep-alive) run on the `now` the driver passes in. It does no I/O and
//! reads no clock: the driver moves bytes between the socket and [`Session::receive`] /
//! [`Session::take_control`], and a scripted test can drive exactly the code production runs.
//!
//! # Bounds (per connection)
//! - **Control queue** (`out`): decoding stops while it holds [`SessionConfig::out_high_water`]
//!   bytes or more (the driver then stops reading from the socket: backpressure), so it never
//!   exceeds [`SessionConfig::max_control_bytes`]: the mark, plus [`MAX_METADATA_REPLY`] (no
//!   peer message adds more than one reply: a 17-byte REJECT, or one BEP 9 metadata piece of at
//!   most 16 KiB and its header), plus the larger of our opening (`68 + 5 + bitfield_len +
//!   ext_handshake_len`) and what the shard adds while decoding is paused: a REJECT per request
//!   queued or taken (`17 x (reqq + max_in_flight)`; a CHOKE rejects the whole queue with FAST),
//!   5 bytes per choker decision and one PEX message ([`MAX_PEX_MESSAGE`]) a minute until the
//!   write timeout drops a peer that does not read.
//! - **Metadata** (BEP 9): at most `2 x metadata_pieces + 4` pieces served per connection
//!   (`ext::default_max_replies`); later requests are rejected.
//! - **Input**: the driver keeps what [`Session::receive`] did not consume; a message is never
//!   longer than [`Session::max_message_len`] (the torrent's BITFIELD or a PIECE, capped by the
//!   wire limit), checked from its length prefix before its body is buffered.
//! - **Requests**: the [`Peer`]'s queue (`reqq`); what the driver took is bounded by the driver.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ext::{
    self, MetadataAnswer, MetadataMsg, MetadataServer, PexReceiver, PexSender, OUR_UT_METADATA_ID,
    OUR_UT_PEX_ID, PEX_MAX_REMEMBERED, UT_METADATA, UT_PEX,
};
use crate::peer::{
    Action, Actions, DisconnectReason, Peer, PeerConfig, PeerEvent, MAX_OUR_REQUESTS,
};
use crate::wire::{
    self, BlockRef, ExtHandshake, Handshake, Message, WireError, BLOCK_SIZE, HANDSHAKE_LEN,
    MAX_MESSAGE_LEN, OUR_RESERVED,
};

/// Default: a connection must complete its handshake within this.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default: a peer that sent nothing for this long is dropped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Default: a write to the peer that has not completed for this long means the peer stopped
/// reading; it is dropped (far below the idle timeout: a stalled peer holds pool buffers).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long between two keep-alives we send on an otherwise quiet connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(90);
/// Default high-water mark of the control queue (bytes).
pub const DEFAULT_OUT_HIGH_WATER: usize = 16 << 10;

/// Fixed settings of every session of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// Our listening port, sent as `p` in the extension handshake.
    pub listen_port: u16,
    /// Our client name and version, sent as `v`.
    pub client: String,
    /// Requests a peer may queue (advertised as `reqq`).
    pub reqq: u32,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Decoding pauses while the control queue holds this many bytes (backpressure).
    pub out_high_water: usize,
    /// Requests the driver holds at most (taken, not yet served or refused): its batches.
    pub max_in_flight: u32,
}

impl SessionConfig {
    /// Defaults for everything but our identity.
    pub fn new(peer_id: [u8; 20], listen_port: u16, reqq: u32) -> Self {
        SessionConfig {
            peer_id,
            listen_port,
            client: concat!("uring-bt ", env!("CARGO_PKG_VERSION")).to_string(),
            reqq: reqq.max(1),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            out_high_water: DEFAULT_OUT_HIGH_WATER,
            max_in_flight: 128,
        }
    }

    /// The most bytes the control queue of a session of a torrent with `num_pieces` pieces can
    /// hold (see the module's bounds): the high-water mark, plus [`MAX_METADATA_REPLY`]
    /// (decoding stops only once the mark is reached, and no peer message adds more than one
    /// reply), plus the larger of our opening and what the shard may add while decoding is
    /// paused: one REJECT for every request queued or taken (`reqq + max_in_flight`, each
    /// answered exactly once), a CHOKE or UNCHOKE per choker decision (at most two per rechoke
    /// period until the write timeout drops a peer that does not read, plus two) and one PEX
    /// message per PEX interval.
    pub fn max_control_bytes(&self, num_pieces: u32) -> usize {
        let toggles = 2 * self.write_timeout.as_secs().div_ceil(10) as usize + 2;
        let pex = MAX_PEX_MESSAGE
            * (self
                .write_timeout
                .as_secs()
                .div_ceil(ext::PEX_INTERVAL.as_secs()) as usize
                + 1);
        // Downloading: one fill of our pipeline (REQUESTs) and as many CANCELs; requests are
        // not queued while the queue is at its mark (see `Session::request`).
        let ours = 2 * 17 * MAX_OUR_REQUESTS + 2 * 5;
        let while_paused =
            17 * (self.reqq as usize + self.max_in_flight as usize) + 5 * toggles + pex + ours;
        let opening =
            HANDSHAKE_LEN + 5 + (num_pieces as usize).div_ceil(8) + 160 + self.client.len();
        self.out_high_water + MAX_METADATA_REPLY + while_paused.max(opening)
    }
}

/// What the session needs to know of the torrent the peer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentView {
    pub info_hash: [u8; 20],
    pub num_pieces: u32,
    pub piece_length: u32,
    pub last_piece_length: u32,
    /// We have every piece.
    pub seed: bool,
    /// BEP 27: no PEX, and no metadata to peers (they must have the .torrent).
    pub private: bool,
    /// The raw info dictionary, served by BEP 9 `ut_metadata` (`None`: not served).
    pub metadata: Option<std::sync::Arc<[u8]>>,
}

/// The largest PEX message we send: 50 added and 50 dropped per family (compact entries and
/// flags) and the keys.
pub const MAX_PEX_MESSAGE: usize = 6 + 2 + 16 + 50 * (6 + 1 + 18 + 1) + 50 * (6 + 18) + 128;
/// The largest metadata reply: framing, the bencoded header and a 16 KiB piece.
pub const MAX_METADATA_REPLY: usize = 6 + 64 + crate::ext::METADATA_PIECE_LEN;

/// Why a session ended (or must end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("bad handshake: {0}")]
    BadHandshake(WireError),
    #[error("unknown info hash")]
    UnknownTorrent,
    #[error("torrent connection limit reached")]
    TorrentFull,
    #[error("wire: {0}")]
    Wire(WireError),
    #[error("we disconnect: {0}")]
    Peer(DisconnectReason),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("silent for {0:?}")]
    Idle(Duration),
    #[error("a write made no progress for {0:?}: the peer stopped reading")]
    WriteStalled(Duration),
    #[error("the peer we dialed answered for another torrent")]
    WrongInfoHash,
    #[error("connected to ourselves")]
    SelfConnection,
    #[error("banned: it sent data that failed the hash check")]
    Banned,
}

impl CloseReason {
    /// The peer broke the protocol or abused a limit (counted as "dropped for misbehaving").
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            CloseReason::Peer(r) => r.is_misbehaviour(),
            CloseReason::Wire(_) | CloseReason::WriteStalled(_) | CloseReason::Banned => true,
            _ => false,
        }
    }
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the peer's 68-byte handshake.
    Handshake,
    /// The handshake arrived; the driver must [`Session::attach`] or close.
    AwaitTorrent,
    /// Messages flow.
    Established,
}

/// What one call of [`Session::receive`] found, for the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Bytes of the input consumed (the driver drops them).
    pub consumed: usize,
    /// Control bytes were queued: wake the writer.
    pub wake: bool,
    /// A request was queued: the writer has blocks to serve.
    pub serve: bool,
    /// The peer's interest changed: the choker may want to act.
    pub interest_changed: bool,
    /// Decoding stopped at the control queue's high-water mark: read no more from the socket
    /// until the writer has drained it ([`Session::wants_input`]).
    pub paused: bool,
    /// Decoding stopped right after the PIECE for one of our requests: the block, and where its
    /// data starts in the buffer given to [`Session::receive`] (`block.len` bytes). The driver
    /// takes the data before it drops the consumed bytes.
    pub block: Option<(BlockRef, usize)>,
    /// Events for the download were queued ([`Session::take_events`]).
    pub events: bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    remote_ip: Option<IpAddr>,
    handshake: Option<Handshake>,
    peer: Option<Peer>,
    max_len: u32,
    /// Encoded control messages waiting for the writer (bounded: see the module docs).
    out: Vec<u8>,
    actions: Actions,
    connected_at: Instant,
    last_recv: Instant,
    last_send: Instant,
    writing_since: Option<Instant>,
    /// We dialed this peer for this torrent: our handshake went first.
    dialed: Option<[u8; 20]>,
    /// BEP 9: the info dictionary we serve and this connection's bound on it.
    metadata: Option<(std::sync::Arc<[u8]>, MetadataServer)>,
    /// BEP 11: what we told this peer (`None`: private torrent).
    pex_out: Option<PexSender>,
    pex_in: PexReceiver,
    /// PEX messages received and decoded (the peers in them are used when downloading).
    pex_received: u64,
    scratch: Vec<u8>,
    /// Downloading: when the last PIECE we asked for arrived (or the first request went out).
    last_block: Instant,
    /// Peers the peer told us about (PEX `added`), not yet taken by the driver.
    pex_peers: Vec<std::net::SocketAddr>,
}

/// Most PEX peers a session keeps until the driver takes them (one message's `added` is at
/// most a few hundred; we keep fewer).
pub const PEX_PEERS_KEPT: usize = 100;

impl Session {
    /// A new inbound connection from `remote_ip`, accepted at `now`.
    pub fn new(cfg: SessionConfig, remote_ip: Option<IpAddr>, now: Instant) -> Self {
        Session {
            cfg,
            phase: Phase::Handshake,
            remote_ip,
            handshake: None,
            peer: None,
            max_len: HANDSHAKE_LEN as u32,
            out: Vec::with_capacity(256),
            actions: Actions::new(),
            connected_at: now,
            last_recv: now,
            last_send: now,
            writing_since: None,
            dialed: None,
            metadata: None,
            pex_out: None,
            pex_in: PexReceiver::new(),
            pex_received: 0,
            scratch: Vec::new(),
            last_block: now,
            pex_peers: Vec::new(),
        }
    }

    /// A connection we dialed to `remote_ip` for the torrent `info_hash`, at `now`: our
    /// handshake is queued at once (the dialing side speaks first); the peer's must name the
    /// same torrent. The rest of our opening follows [`Session::attach`] as for an inbound one.
    pub fn new_outbound(
        cfg: SessionConfig,
        remote_ip: Option<IpAddr>,
        now: Instant,
        info_hash: [u8; 20],
    ) -> Self {
        let mut s = Session::new(cfg, remote_ip, now);
        let ours = Handshake {
            reserved: OUR_RESERVED,
            info_hash,
            peer_id: s.cfg.peer_id,
        };
        wire::encode_handshake(&ours, &mut s.out);
        s.dialed = Some(info_hash);
        s
    }

    /// The port the peer listens on, from its extension handshake.
    pub fn peer_listen_port(&self) -> Option<u16> {
        self.peer.as_ref()?.ext_handshake()?.p.filter(|&p| p != 0)
    }

    /// The peers PEX messages from this peer named since the last call (never for a private
    /// torrent: we do not advertise `ut_pex` then).
    pub fn take_pex_peers(&mut self) -> Vec<std::net::SocketAddr> {
        std::mem::take(&mut self.pex_peers)
    }

    /// PEX messages received from this peer and decoded.
    pub fn pex_received(&self) -> u64 {
        self.pex_received
    }

    /// Metadata pieces served on this connection.
    pub fn metadata_served(&self) -> u32 {
        self.metadata.as_ref().map_or(0, |(_, m)| m.served())
    }

    /// BEP 11: whether [`Session::poll_pex`] could send at `now` (PEX on, the peer supports
    /// it, the interval passed): the driver gathers the swarm only then.
    pub fn pex_due(&self, now: Instant) -> bool {
        self.pex_out.as_ref().is_some_and(|p| p.due(now))
            && self
                .peer
                .as_ref()
                .and_then(|p| p.ext_handshake())
                .is_some_and(|h| h.m.get(UT_PEX).is_some_and(|&id| id != 0))
    }

    /// BEP 11: at `now`, given the torrent's connected peers (`swarm`, this peer's own entry
    /// left out by the caller), queues a PEX message when one is due (at most one per
    /// [`ext::PEX_INTERVAL`], only to a peer that supports `ut_pex`, never for a private
    /// torrent). Returns true when control bytes were queued.
    pub fn poll_pex(&mut self, now: Instant, swarm: &[(std::net::SocketAddr, u8)]) -> bool {
        let Some(pex) = self.pex_out.as_mut() else {
            return false;
        };
        let Some(their_id) = self
            .peer
            .as_ref()
            .and_then(|p| p.ext_handshake())
            .and_then(|h| h.m.get(UT_PEX).copied())
            .filter(|&id| id != 0)
        else {
            return false;
        };
        self.scratch.clear();
        if !pex.poll(now, swarm, &mut self.scratch) {
            return false;
        }
        wire::encode(
            &Message::Extended {
                id: their_id,
                payload: &self.scratch,
            },
            &mut self.out,
        );
        true
    }

    /// True for a connection we dialed.
    pub fn is_outbound(&self) -> bool {
        self.dialed.is_some()
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The peer's handshake, once received.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.handshake.as_ref()
    }

    /// The peer state machine, once attached.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }

    /// The largest message accepted from this peer: a PIECE (we may download later) or the
    /// torrent's BITFIELD, whichever is larger, never above the wire limit. Bounds the driver's
    /// receive buffer by the torrent, not by what the peer claims.
    pub fn max_message_len(&self) -> u32 {
        self.max_len
    }

    /// Bytes arrived from the socket at `now` (resets the idle timer).
    pub fn on_read(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// Processes what the driver has buffered: the handshake, or as many whole messages as the
    /// control queue's high-water mark allows. Returns what happened, or why to close.
    pub fn receive(&mut self, buf: &[u8]) -> Result<Received, CloseReason> {
        let mut r = Received::default();
        match self.phase {
            Phase::AwaitTorrent => return Ok(r),
            Phase::Handshake => {
                return match wire::decode_handshake(buf) {
                    Ok(None) => Ok(r),
                    Ok(Some(hs)) => {
                        if self.dialed.is_some_and(|ih| ih != hs.info_hash) {
                            return Err(CloseReason::WrongInfoHash);
                        }
                        if hs.peer_id == self.cfg.peer_id {
                            return Err(CloseReason::SelfConnection);
                        }
                        self.handshake = Some(hs);
                        self.phase = Phase::AwaitTorrent;
                        r.consumed = HANDSHAKE_LEN;
                        Ok(r)
                    }
                    Err(e) => Err(CloseReason::BadHandshake(e)),
                };
            }
            Phase::Established => {}
        }
        let Some(peer) = self.peer.as_mut() else {
            return Ok(r);
        };
        loop {
            if self.out.len() >= self.cfg.out_high_water {
                r.paused = true;
                break;
            }
            match wire::decode(&buf[r.consumed..], self.max_len) {
                Ok(Some((msg, n))) => {
                    let start = r.consumed;
                    r.consumed += n;
                    let ours = on_message(peer, &msg, &mut self.actions, &mut self.out, &mut r)?;
                    if let Message::Piece { piece, begin, data } = msg {
                        if ours {
                            // Ours: hand the data to the driver before decoding on.
                            self.last_block = self.last_recv;
                            let b = BlockRef {
                                piece,
                                begin,
                                len: data.len() as u32,
                            };
                            r.block = Some((b, start + n - data.len()));
                            break;
                        }
                    }
                    if let Message::Extended { id, payload } = msg {
                        if id == OUR_UT_METADATA_ID {
                            r.wake |= on_metadata(peer, &mut self.metadata, payload, &mut self.out);
                        } else if id == OUR_UT_PEX_ID && self.pex_out.is_some() {
                            // Lenient: a malformed or too frequent PEX message is ignored.
                            if let Ok(Some(m)) = self.pex_in.on_message(self.last_recv, payload) {
                                self.pex_received += 1;
                                // Kept for the driver (a download dials them), at most
                                // PEX_PEERS_KEPT until taken.
                                for (a, _) in m.added {
                                    if self.pex_peers.len() < PEX_PEERS_KEPT {
                                        self.pex_peers.push(a);
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(CloseReason::Wire(e)),
            }
        }
        Ok(r)
    }

    /// The block of the PIECE whose header starts `buf` (what [`Session::receive`] left
    /// undecoded), when it answers one of our requests and its payload has not all arrived.
    /// The driver may then receive the payload straight into a storage buffer and give it to
    /// [`Session::receive_piece`]; `buf`'s 13 header bytes and the payload bytes after them
    /// are its start. A header that breaks the rules gives `None`: [`Session::receive`] reports
    /// it once the bytes are there.
    pub fn pending_block(&self, buf: &[u8]) -> Option<BlockRef> {
        let b = self.awaited_block(buf)?;
        // Whole: `receive` decodes it.
        (buf.len() < wire::PIECE_HEADER_LEN + b.len as usize).then_some(b)
    }

    /// The block of the PIECE whose 13-byte header starts `header`, when it answers one of our
    /// requests (what follows the header does not matter: the driver may have received the
    /// payload elsewhere). `None` for any other message or a header that breaks the rules.
    pub fn awaited_block(&self, header: &[u8]) -> Option<BlockRef> {
        if self.phase != Phase::Established {
            return None;
        }
        let peer = self.peer.as_ref()?;
        let head: &[u8; 13] = header.get(..13)?.try_into().ok()?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[4] != wire::id::PIECE
            || wire::check_header(len, Some(head[4]), self.max_len).is_err()
        {
            return None;
        }
        let b = BlockRef {
            piece: u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
            begin: u32::from_be_bytes([head[9], head[10], head[11], head[12]]),
            len: len - 9,
        };
        peer.awaits(b).then_some(b)
    }

    /// The payload `data` of the PIECE for `b` that [`Session::pending_block`] named, received
    /// by the driver out of the buffer: the session changes as decoding the whole message would
    /// have changed it. `block` of the result is `Some((b, 0))` when it answered our request.
    pub fn receive_piece(&mut self, b: BlockRef, data: &[u8]) -> Result<Received, CloseReason> {
        let mut r = Received::default();
        let Some(peer) = self.peer.as_mut() else {
            return Ok(r);
        };
        let msg = Message::Piece {
            piece: b.piece,
            begin: b.begin,
            data,
        };
        if on_message(peer, &msg, &mut self.actions, &mut self.out, &mut r)? {
            self.last_block = self.last_recv;
            r.block = Some((b, 0));
        }
        Ok(r)
    }

    /// Names the torrent of the peer's handshake (the driver looked its info hash up) and
    /// queues our opening: our handshake, HAVE ALL or a BITFIELD, and the extension handshake
    /// when the peer supports BEP 10. `have`: our bitfield when we are not a seed.
    pub fn attach(&mut self, t: &TorrentView, have: &[u8]) {
        let Some(hs) = self.handshake else {
            return;
        };
        if self.dialed.is_none() {
            let ours = Handshake {
                reserved: OUR_RESERVED,
                info_hash: t.info_hash,
                peer_id: self.cfg.peer_id,
            };
            wire::encode_handshake(&ours, &mut self.out);
        }
        let cfg = PeerConfig::new(
            t.num_pieces,
            t.piece_length,
            t.last_piece_length,
            self.cfg.reqq,
        );
        let mut peer = Peer::new(cfg, t.seed, hs.supports_fast());
        if t.seed {
            peer.start(&mut self.actions);
        } else {
            peer.start_with_have(have, &mut self.actions);
        }
        let mut r = Received::default();
        // Our opening holds no Disconnect.
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        if hs.supports_extensions() {
            let mut ext = ExtHandshake {
                v: Some(self.cfg.client.clone()),
                reqq: Some(self.cfg.reqq),
                yourip: self.remote_ip,
                p: Some(self.cfg.listen_port),
                ..ExtHandshake::default()
            };
            if !t.private {
                if let Some(info) = &t.metadata {
                    let server =
                        MetadataServer::new(info.len(), ext::default_max_replies(info.len()));
                    if let Some(size) = server.metadata_size() {
                        ext.m.insert(UT_METADATA.to_string(), OUR_UT_METADATA_ID);
                        ext.metadata_size = Some(size);
                        self.metadata = Some((info.clone(), server));
                    }
                }
                ext.m.insert(UT_PEX.to_string(), OUR_UT_PEX_ID);
                self.pex_out = Some(PexSender::new(PEX_MAX_REMEMBERED));
            }
            let payload = ext.encode();
            wire::encode(
                &Message::Extended {
                    id: 0,
                    payload: &payload,
                },
                &mut self.out,
            );
        }
        let bitfield = 1 + t.num_pieces.div_ceil(8);
        self.max_len = (BLOCK_SIZE + 9).max(bitfield).min(MAX_MESSAGE_LEN);
        self.peer = Some(peer);
        self.phase = Phase::Established;
    }

    /// True when the driver may read more from the socket (the control queue is below its
    /// high-water mark).
    pub fn wants_input(&self) -> bool {
        self.out.len() < self.cfg.out_high_water
    }

    /// Control bytes waiting to be written.
    pub fn control_len(&self) -> usize {
        self.out.len()
    }

    /// Hands the queued control bytes to the writer: swaps them with `buf` (which should be
    /// empty; its capacity is reused), so no byte is copied.
    pub fn take_control(&mut self, buf: &mut Vec<u8>) {
        debug_assert!(buf.is_empty());
        buf.clear();
        std::mem::swap(buf, &mut self.out);
    }

    /// The next request to serve (see [`Peer::take_request`]).
    pub fn take_request(&mut self) -> Option<BlockRef> {
        self.peer.as_mut()?.take_request()
    }

    /// Downloading: what the peer told us that the picker must hear (see [`PeerEvent`]).
    pub fn take_events(&mut self, out: &mut Vec<PeerEvent>) {
        if let Some(p) = self.peer.as_mut() {
            p.take_events(out);
        }
    }

    /// Downloading: queue REQUESTs for `blocks` (in order), as many as the pipeline ceiling
    /// allows and never while the control queue is at its high-water mark (a peer that sends
    /// data but reads nothing cannot make us queue requests without bound). Returns how many
    /// were queued; the rest are the caller's to give back to its picker.
    pub fn request(&mut self, blocks: &[BlockRef]) -> usize {
        let Some(p) = self.peer.as_mut() else {
            return 0;
        };
        if p.our_requests() == 0 {
            // The request timeout counts from the first request of a pipeline.
            self.last_block = self.last_recv.max(self.last_send);
        }
        let mut n = 0;
        for b in blocks {
            if self.out.len() >= self.cfg.out_high_water || !p.request(*b, &mut self.actions) {
                break;
            }
            n += 1;
        }
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        n
    }

    /// Downloading: withdraw our request for `b` (CANCEL). Returns true when control bytes
    /// were queued.
    pub fn cancel(&mut self, b: BlockRef) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        let sent = p.cancel(b, &mut self.actions);
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        sent
    }

    /// Downloading: withdraw our requests for blocks of `piece` (we have it now). Returns
    /// true when control bytes were queued.
    pub fn cancel_piece(&mut self, piece: u32) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        let n = p.cancel_piece(piece, &mut self.actions);
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        n > 0
    }

    /// Downloading: our interest in the peer. Returns true when control bytes were queued.
    pub fn set_interested(&mut self, interested: bool) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        p.set_interested(interested, &mut self.actions);
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        r.wake
    }

    /// Downloading: we completed piece `p` (HAVE unless the peer has it); `now_seed`: it was
    /// the last one. `Err`: close (both of us are seeds now). `Ok(true)`: bytes queued.
    pub fn on_we_have(&mut self, piece: u32, now_seed: bool) -> Result<bool, CloseReason> {
        let Some(p) = self.peer.as_mut() else {
            return Ok(false);
        };
        p.on_we_have(piece, now_seed, &mut self.actions);
        let mut r = Received::default();
        apply(&mut self.actions, &mut self.out, &mut r)?;
        Ok(r.wake)
    }

    /// Downloading, at `now`: when no block we asked for arrived for `snub` while requests
    /// were outstanding, the peer is snubbing us (or lost a request, as transmission 3.00
    /// sometimes does): every request is abandoned (they come back as events, for other peers
    /// or a new try) and true is returned.
    pub fn check_requests(&mut self, now: Instant, snub: Duration) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        if p.our_requests() == 0 || now.saturating_duration_since(self.last_block) < snub {
            return false;
        }
        p.abandon_requests();
        self.last_block = now;
        true
    }

    /// The PIECE for `b` was handed to the socket.
    pub fn on_served(&mut self, b: BlockRef) {
        if let Some(p) = self.peer.as_mut() {
            p.on_served(b);
        }
    }

    /// The driver cannot serve `b` (storage error, a piece that failed its check): REJECT with
    /// FAST. Returns true when control bytes were queued.
    pub fn refuse(&mut self, b: BlockRef) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        p.refuse(b, &mut self.actions);
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        r.wake
    }

    /// The choker's decision. Returns true when control bytes were queued.
    pub fn set_choked(&mut self, choked: bool) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        p.set_choked(choked, &mut self.actions);
        let mut r = Received::default();
        let _ = apply(&mut self.actions, &mut self.out, &mut r);
        r.wake
    }

    /// A write to the socket is in flight.
    pub fn is_writing(&self) -> bool {
        self.writing_since.is_some()
    }

    /// A write to the socket started at `now`.
    pub fn on_write_start(&mut self, now: Instant) {
        self.writing_since = Some(now);
    }

    /// The write in flight completed at `now`.
    pub fn on_write_done(&mut self, now: Instant) {
        self.writing_since = None;
        self.last_send = now;
    }

    /// The timers, at `now`: `Err` when the connection must close (no handshake in time,
    /// silent too long, a write stalled); `Ok(true)` when a keep-alive was queued (wake the
    /// writer).
    pub fn on_tick(&mut self, now: Instant) -> Result<bool, CloseReason> {
        if self.phase != Phase::Established {
            if now.saturating_duration_since(self.connected_at) > self.cfg.handshake_timeout {
                return Err(CloseReason::HandshakeTimeout(self.cfg.handshake_timeout));
            }
            return Ok(false);
        }
        if now.saturating_duration_since(self.last_recv) > self.cfg.idle_timeout {
            return Err(CloseReason::Idle(self.cfg.idle_timeout));
        }
        if let Some(t) = self.writing_since {
            if now.saturating_duration_since(t) > self.cfg.write_timeout {
                return Err(CloseReason::WriteStalled(self.cfg.write_timeout));
            }
            return Ok(false);
        }
        if self.out.is_empty()
            && now.saturating_duration_since(self.last_send) > self.cfg.keepalive_interval
        {
            wire::encode(&Message::KeepAlive, &mut self.out);
            self.last_send = now;
            return Ok(true);
        }
        Ok(false)
    }
}

/// A `ut_metadata` message from the peer: a request is answered (a piece of the info
/// dictionary, or a reject when it is out of range or the connection's bound is spent), sent
/// to the id the peer's extension handshake gave; anything else is ignored (we never request
/// metadata while seeding). Returns true when bytes were queued.
fn on_metadata(
    peer: &Peer,
    metadata: &mut Option<(std::sync::Arc<[u8]>, MetadataServer)>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let Some(their_id) = peer
        .ext_handshake()
        .and_then(|h| h.m.get(UT_METADATA).copied())
        .filter(|&id| id != 0)
    else {
        return false;
    };
    let Ok(MetadataMsg::Request { piece }) = ext::decode_metadata(payload) else {
        return false;
    };
    let mut body = Vec::new();
    match metadata.as_mut() {
        Some((info, server)) => match server.on_request(piece) {
            MetadataAnswer::Serve { piece, range } => match info.get(range) {
                Some(data) => ext::encode_metadata_data(piece, info.len() as u64, data, &mut body),
                None => ext::encode_metadata_reject(piece, &mut body),
            },
            MetadataAnswer::Reject { piece } => ext::encode_metadata_reject(piece, &mut body),
        },
        // Not served (private torrent): every request is rejected.
        None => ext::encode_metadata_reject(piece, &mut body),
    }
    wire::encode(
        &Message::Extended {
            id: their_id,
            payload: &body,
        },
        out,
    );
    true
}

/// One decoded message through the peer's state machine: its actions into the control queue,
/// interest and events noted in `r`. True when it answered one of our requests (a PIECE).
fn on_message(
    peer: &mut Peer,
    msg: &Message<'_>,
    actions: &mut Actions,
    out: &mut Vec<u8>,
    r: &mut Received,
) -> Result<bool, CloseReason> {
    let was_interested = peer.is_interested();
    let had = peer.our_requests();
    peer.on_message(msg, actions);
    r.interest_changed |= peer.is_interested() != was_interested;
    apply(actions, out, r)?;
    r.events |= peer.has_events();
    Ok(peer.our_requests() < had)
}

/// Encodes the machine's actions into the control queue.
fn apply(actions: &mut Actions, out: &mut Vec<u8>, r: &mut Received) -> Result<(), CloseReason> {
    let mut close = None;
    for a in actions.drain() {
        match a {
            Action::Send(m) => {
                wire::encode(&m.as_message(), out);
                r.wake = true;
            }
            Action::Serve => r.serve = true,
            Action::Disconnect(reason) => close = close.or(Some(reason)),
        }
    }
    match close {
        Some(reason) => Err(CloseReason::Peer(reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::OwnedMessage;

    const IH: [u8; 20] = [7; 20];

    fn view() -> TorrentView {
        TorrentView {
            info_hash: IH,
            num_pieces: 4,
            piece_length: 32768,
            last_piece_length: 1000,
            seed: true,
            private: false,
            metadata: None,
        }
    }

    fn their_handshake(fast: bool) -> Vec<u8> {
        let mut hs = Handshake::new(IH, [9; 20]);
        if !fast {
            hs.reserved = [0, 0, 0, 0, 0, 0x10, 0, 0];
        }
        hs.to_bytes().to_vec()
    }

    fn decode_all(mut b: &[u8]) -> Vec<OwnedMessage> {
        let mut v = Vec::new();
        while let Ok(Some((m, n))) = wire::decode(b, MAX_MESSAGE_LEN) {
            v.push(m.to_owned_message());
            b = &b[n..];
        }
        assert!(b.is_empty(), "{} trailing bytes", b.len());
        v
    }

    fn established(cfg: SessionConfig, t0: Instant) -> Session {
        let mut s = Session::new(cfg, Some("127.0.0.2".parse().unwrap()), t0);
        let r = s.receive(&their_handshake(true)).unwrap();
        assert_eq!(r.consumed, HANDSHAKE_LEN);
        assert_eq!(s.phase(), Phase::AwaitTorrent);
        s.attach(&view(), &[]);
        s
    }

    fn leech_view() -> TorrentView {
        TorrentView {
            seed: false,
            ..view()
        }
    }

    /// An inbound session of a torrent we download, past its opening.
    fn leeching() -> Session {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::new([1; 20], 6881, 50), None, t0);
        s.receive(&their_handshake(true)).unwrap();
        s.attach(&leech_view(), &[]);
        let mut ctrl = Vec::new();
        s.take_control(&mut ctrl);
        s
    }

    #[test]
    fn a_piece_we_asked_for_stops_decoding_with_its_data_offset() {
        let mut s = leeching();
        let b = BlockRef {
            piece: 1,
            begin: 0,
            len: 100,
        };
        let mut input = Vec::new();
        wire::encode(&Message::Unchoke, &mut input);
        let mut ev = Vec::new();
        let r = s.receive(&input).unwrap();
        assert!(r.events && r.block.is_none());
        s.take_events(&mut ev);
        assert_eq!(ev, vec![PeerEvent::Unchoked]);
        assert_eq!(s.request(&[b]), 1);
        let mut input = Vec::new();
        let data: Vec<u8> = (0..100u8).collect();
        wire::encode(
            &Message::Piece {
                piece: 1,
                begin: 0,
                data: &data,
            },
            &mut input,
        );
        wire::encode(&Message::Have(2), &mut input);
        let r = s.receive(&input).unwrap();
        let (got, off) = r.block.expect("the block");
        assert_eq!(got, b);
        assert_eq!(&input[off..off + 100], &data[..]);
        assert_eq!(r.consumed, 4 + 9 + 100, "stops right after the PIECE");
        let r2 = s.receive(&input[r.consumed..]).unwrap();
        assert!(r2.block.is_none() && r2.events);
    }

    #[test]
    fn a_piece_received_out_of_the_buffer_changes_the_session_as_decoding_it_would() {
        let mut s = leeching();
        let mut input = Vec::new();
        wire::encode(&Message::Unchoke, &mut input);
        s.receive(&input).unwrap();
        let mut ev = Vec::new();
        s.take_events(&mut ev);
        let b = |begin| BlockRef {
            piece: 1,
            begin,
            len: 100,
        };
        assert_eq!(s.request(&[b(0), b(100)]), 2);
        let data: Vec<u8> = (0..100u8).collect();
        let mut msg = Vec::new();
        wire::encode(
            &Message::Piece {
                piece: 1,
                begin: 100,
                data: &data,
            },
            &mut msg,
        );
        // Only a header, or the whole message, or a PIECE we did not ask for: not pending.
        assert_eq!(s.pending_block(&msg[..12]), None);
        assert_eq!(s.pending_block(&msg), None, "whole: receive decodes it");
        assert_eq!(
            s.awaited_block(&msg[..13]),
            Some(b(100)),
            "the header alone names it"
        );
        assert_eq!(s.awaited_block(&msg), Some(b(100)));
        let mut other = msg.clone();
        other[12] = 7; // begin 100 -> 107: not ours
        assert_eq!(s.pending_block(&other[..40]), None);
        let mut too_long = msg.clone();
        too_long[..4].copy_from_slice(&(MAX_MESSAGE_LEN + 1).to_be_bytes());
        assert_eq!(
            s.pending_block(&too_long[..40]),
            None,
            "left for receive to refuse"
        );
        // The header and part of the payload: pending, for the second request (out of order).
        assert_eq!(s.pending_block(&msg[..40]), Some(b(100)));
        assert_eq!(s.peer().unwrap().our_requests(), 2);
        let r = s.receive_piece(b(100), &data).unwrap();
        assert_eq!(r.block, Some((b(100), 0)));
        assert_eq!(r.consumed, 0, "the driver dropped the bytes itself");
        assert!(r.events);
        ev.clear();
        s.take_events(&mut ev);
        assert_eq!(ev, vec![PeerEvent::Block(b(100))]);
        assert_eq!(s.peer().unwrap().our_requests(), 1);
        // The same block again answers no request of ours: no block for the driver.
        let r = s.receive_piece(b(100), &data).unwrap();
        assert_eq!(r.block, None);
        ev.clear();
        s.take_events(&mut ev);
        assert_eq!(ev, vec![PeerEvent::Unrequested(b(100))]);
        // And decoding the first one from the buffer still works after it.
        let mut first = Vec::new();
        wire::encode(
            &Message::Piece {
                piece: 1,
                begin: 0,
                data: &data,
            },
            &mut first,
        );
        assert_eq!(s.receive(&first).unwrap().block, Some((b(0), 13)));
        assert_eq!(s.peer().unwrap().our_requests(), 0);
    }

    #[test]
    fn pex_peers_are_kept_for_the_driver_bounded_and_rate_limited() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::new([1; 20], 6881, 50), None, t0);
        s.receive(&their_handshake(true)).unwrap();
        s.attach(&leech_view(), &[]);
        let msg = crate::ext::PexMessage {
            added: (0..300u16)
                .map(|i| (std::net::SocketAddr::from(([127, 0, 1, 1], 1000 + i)), 0))
                .collect(),
            dropped: vec![],
        };
        let mut payload = Vec::new();
        crate::ext::encode_pex(&msg, &mut payload);
        let mut input = Vec::new();
        wire::encode(
            &Message::Extended {
                id: OUR_UT_PEX_ID,
                payload: &payload,
            },
            &mut input,
        );
        s.receive(&input).unwrap();
        let got = s.take_pex_peers();
        assert!(
            !got.is_empty() && got.len() <= PEX_PEERS_KEPT,
            "{}",
            got.len()
        );
        assert!(s.take_pex_peers().is_empty(), "taken once");
        // A second message within the interval is not even decoded.
        s.receive(&input).unwrap();
        assert!(s.take_pex_peers().is_empty());
    }

    #[test]
    fn requests_wait_while_the_control_queue_is_at_its_mark() {
        let t0 = Instant::now();
        let mut cfg = SessionConfig::new([1; 20], 6881, 50);
        cfg.out_high_water = 64;
        let mut s = Session::new(cfg, None, t0);
        s.receive(&their_handshake(true)).unwrap();
        s.attach(&leech_view(), &[]);
        // The opening alone is above 64 bytes: nothing may be requested until it is written.
        let blocks: Vec<BlockRef> = (0..4)
            .map(|i| BlockRef {
                piece: 0,
                begin: i * 16384,
                len: 16384,
            })
            .collect();
        assert_eq!(s.request(&blocks), 0);
        let mut ctrl = Vec::new();
        s.take_control(&mut ctrl);
        let n = s.request(&blocks);
        assert!((1..4).contains(&n), "stops at the mark: {n}");
        assert!(s.control_len() <= 64 + 17);
    }

    #[test]
    fn a_peer_sending_nothing_we_asked_for_is_snubbed_and_its_requests_come_back() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::new([1; 20], 6881, 50), None, t0);
        s.receive(&their_handshake(true)).unwrap();
        s.attach(&leech_view(), &[]);
        let mut ctrl = Vec::new();
        s.take_control(&mut ctrl);
        let b = BlockRef {
            piece: 0,
            begin: 0,
            len: 16384,
        };
        assert_eq!(s.request(&[b]), 1);
        assert!(!s.check_requests(t0 + Duration::from_secs(5), Duration::from_secs(20)));
        assert!(s.check_requests(t0 + Duration::from_secs(21), Duration::from_secs(20)));
        let mut ev = Vec::new();
        s.take_events(&mut ev);
        assert_eq!(ev, vec![PeerEvent::Abandoned(b)]);
        assert!(!s.check_requests(t0 + Duration::from_secs(60), Duration::from_secs(20)));
    }

    #[test]
    fn opening_is_handshake_then_have_all_then_ext_handshake() {
        let t0 = Instant::now();
        let mut s = established(SessionConfig::new([1; 20], 6881, 50), t0);
        let mut out = Vec::new();
        s.take_control(&mut out);
        let hs = wire::decode_handshake(&out).unwrap().unwrap();
        assert_eq!(hs.info_hash, IH);
        assert_eq!(hs.peer_id, [1; 20]);
        assert!(hs.supports_fast() && hs.supports_extensions());
        let msgs = decode_all(&out[HANDSHAKE_LEN..]);
        assert_eq!(msgs[0], OwnedMessage::HaveAll);
        let OwnedMessage::Extended { id: 0, payload } = &msgs[1] else {
            panic!("second message is {:?}", msgs[1]);
        };
        let ext = ExtHandshake::decode(payload).unwrap();
        assert_eq!(ext.reqq, Some(50));
        assert_eq!(ext.p, Some(6881));
        assert_eq!(ext.yourip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(msgs.len(), 2);
    }

    #[test]
    fn outbound_speaks_first_and_checks_the_torrent() {
        let t0 = Instant::now();
        let cfg = SessionConfig::new([1; 20], 6881, 50);
        let mut s = Session::new_outbound(cfg.clone(), None, t0, IH);
        assert!(s.is_outbound());
        let mut out = Vec::new();
        s.take_control(&mut out);
        let hs = wire::decode_handshake(&out).unwrap().unwrap();
        assert_eq!((hs.info_hash, hs.peer_id), (IH, [1; 20]));
        assert_eq!(
            out.len(),
            HANDSHAKE_LEN,
            "only the handshake before theirs arrives"
        );
        assert_eq!(
            s.receive(&their_handshake(true)).unwrap().consumed,
            HANDSHAKE_LEN
        );
        s.attach(&view(), &[]);
        out.clear();
        s.take_control(&mut out);
        // No second handshake: HAVE ALL and the extension handshake follow.
        let msgs = decode_all(&out);
        assert_eq!(msgs[0], OwnedMessage::HaveAll);
        assert_eq!(msgs.len(), 2);
        // A peer answering for another torrent, or ourselves, is refused.
        let mut other = Session::new_outbound(cfg.clone(), None, t0, [8; 20]);
        assert_eq!(
            other.receive(&their_handshake(true)),
            Err(CloseReason::WrongInfoHash)
        );
        let mut me = Session::new_outbound(cfg, None, t0, IH);
        let mine = Handshake::new(IH, [1; 20]).to_bytes().to_vec();
        assert_eq!(me.receive(&mine), Err(CloseReason::SelfConnection));
    }

    #[test]
    fn handshake_in_pieces_and_garbage() {
        let t0 = Instant::now();
        let mut s = Session::new(SessionConfig::new([1; 20], 1, 10), None, t0);
        let hs = their_handshake(true);
        assert_eq!(s.receive(&hs[..30]).unwrap().consumed, 0);
        assert_eq!(s.receive(&hs).unwrap().consumed, HANDSHAKE_LEN);
        let mut bad = Session::new(SessionConfig::new([1; 20], 1, 10), None, t0);
        assert!(matches!(
            bad.receive(
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234567890123456789"
            ),
            Err(CloseReason::BadHandshake(_))
        ));
    }

    #[test]
    fn control_queue_stops_decoding_at_high_water() {
        let t0 = Instant::now();
        let mut cfg = SessionConfig::new([1; 20], 1, 10);
        cfg.out_high_water = 1000;
        let mut s = established(cfg.clone(), t0);
        assert!(s.set_choked(false));
        let mut sink = Vec::new();
        s.take_control(&mut sink);
        // A peer that never reads sends valid REQUEST + CANCEL pairs: with FAST each cancelled
        // request is answered with a REJECT, and none is a strike.
        let mut input = Vec::new();
        for i in 0..10_000u32 {
            let b = BlockRef {
                piece: i % 4,
                begin: 0,
                len: 1000,
            };
            wire::encode(&Message::Request(b), &mut input);
            wire::encode(&Message::Cancel(b), &mut input);
        }
        let mut consumed = 0;
        let mut rounds = 0;
        loop {
            let r = s.receive(&input[consumed..]).unwrap_or_else(|e| {
                panic!("closed after {consumed} bytes: {e}");
            });
            consumed += r.consumed;
            assert!(
                s.control_len() <= cfg.max_control_bytes(4),
                "control queue {} above its bound",
                s.control_len()
            );
            if !r.paused {
                break;
            }
            assert!(!s.wants_input());
            rounds += 1;
            // The writer drains the queue.
            let mut b = Vec::new();
            s.take_control(&mut b);
            assert!(s.wants_input());
            if rounds > 1000 {
                panic!("no progress");
            }
        }
        assert!(
            rounds >= 10,
            "the queue reached its high-water mark {rounds} times"
        );
        assert_eq!(
            consumed,
            input.len(),
            "every valid message was decoded in the end"
        );
    }

    #[test]
    fn choked_request_flood_disconnects_and_queue_stays_bounded() {
        let t0 = Instant::now();
        let mut cfg = SessionConfig::new([1; 20], 1, 10);
        cfg.out_high_water = 100;
        let mut s = established(cfg.clone(), t0);
        let mut input = Vec::new();
        for _ in 0..100u32 {
            wire::encode(
                &Message::Request(BlockRef {
                    piece: 0,
                    begin: 0,
                    len: 1,
                }),
                &mut input,
            );
        }
        let mut consumed = 0;
        let err = loop {
            match s.receive(&input[consumed..]) {
                Ok(r) => {
                    assert!(s.control_len() <= cfg.max_control_bytes(4));
                    consumed += r.consumed;
                    assert!(r.paused, "all input decoded without a disconnect");
                    let mut b = Vec::new();
                    s.take_control(&mut b);
                }
                Err(e) => break e,
            }
        };
        assert!(err.is_misbehaviour());
        assert!(matches!(
            err,
            CloseReason::Peer(DisconnectReason::TooManyBadRequests(_))
        ));
    }

    #[test]
    fn timers() {
        let t0 = Instant::now();
        let cfg = SessionConfig::new([1; 20], 1, 10);
        let mut s = Session::new(cfg.clone(), None, t0);
        assert_eq!(s.on_tick(t0 + Duration::from_secs(5)), Ok(false));
        assert!(matches!(
            s.on_tick(t0 + cfg.handshake_timeout + Duration::from_secs(1)),
            Err(CloseReason::HandshakeTimeout(_))
        ));

        let mut s = established(cfg.clone(), t0);
        let mut b = Vec::new();
        s.take_control(&mut b);
        // Keep-alive after the interval of quiet; not again right after.
        let k = t0 + cfg.keepalive_interval + Duration::from_secs(1);
        s.on_read(k);
        assert_eq!(s.on_tick(k), Ok(true));
        assert_eq!(s.control_len(), 4);
        assert_eq!(s.on_tick(k), Ok(false));
        // A stalled write closes after the write timeout, long before the idle timeout.
        s.on_write_start(k);
        assert_eq!(s.on_tick(k + Duration::from_secs(1)), Ok(false));
        assert!(matches!(
            s.on_tick(k + cfg.write_timeout + Duration::from_secs(1)),
            Err(CloseReason::WriteStalled(_))
        ));
        s.on_write_done(k + Duration::from_secs(2));
        // Silence closes after the idle timeout.
        assert!(matches!(
            s.on_tick(k + cfg.idle_timeout + Duration::from_secs(1)),
            Err(CloseReason::Idle(_))
        ));
    }
}
