//! The peer state machine, sans-IO.
//!
//! One [`Peer`] per connection, after the handshake. The connection driver feeds it every decoded
//! message ([`Peer::on_message`]) and the choker's decisions ([`Peer::set_choked`]); the machine
//! answers by pushing [`Action`]s (messages to send, "a request is ready to serve", "disconnect")
//! into an [`Actions`] buffer the driver owns and reuses. Requests to serve are pulled by the
//! driver with [`Peer::take_request`] and reported back with [`Peer::on_served`] or
//! [`Peer::refuse`]. Nothing here does I/O, reads a clock, or allocates per message (the request
//! queue grows up to its bound once; a BITFIELD we send is built once per connection).
//!
//! # Invariants
//! - Queued requests never exceed [`PeerConfig::reqq`] (what we advertise as `reqq`). A request
//!   past that bound is refused. Requests the driver has taken ([`Peer::take_request`]) no
//!   longer count: the driver may already have handed their PIECEs to the socket, and the peer,
//!   which counts a request until its PIECE arrives, may have received them and sent new ones.
//!   (Counting them made a libtorrent leecher that keeps exactly `reqq` requests outstanding
//!   overshoot by up to two batches, collect strikes and get disconnected every second or so.)
//!   What the driver has in flight is bounded by the driver: two batches, and its buffer pool.
//! - Every queued request is valid: piece in range, length `1..=BLOCK_SIZE`, `begin + len`
//!   within the piece, and the peer was unchoked when it arrived.
//! - With FAST (BEP 6) every request gets exactly one answer: the PIECE (the driver serves it) or
//!   a REJECT (from here, or from the driver through [`Peer::refuse`]). Without FAST a refused
//!   request is dropped silently, as BEP 3 has it.
//! - While we are a seed we never send INTERESTED, and a seed peer is disconnected.
//! - We never send HAVE for a piece the peer already has ([`Peer::on_we_have`]).
//!
//! # Abuse
//! Each invalid request (out of range, bad length, past the piece end, over the queue bound, or
//! a request while choked beyond the `reqq` grace after our CHOKE) is a strike; at
//! [`PeerConfig::max_bad_requests`] strikes the machine asks for a disconnect. Protocol
//! violations that make the peer's state unknowable (a bad BITFIELD, a HAVE out of range, a FAST
//! message without FAST) disconnect at once.

use std::collections::{HashMap, VecDeque};

use crate::wire::{
    BlockRef, ExtHandshake, Message, OwnedMessage, BLOCK_SIZE, EXTENDED_HANDSHAKE_ID,
};

/// Default request queue bound per peer, advertised as `reqq` in the extension handshake.
///
/// 2000 × 16 KiB = 31 MiB in flight: enough for one fast peer on a long fat link (250 MB/s at
/// 125 ms RTT) and costs 12 bytes per queued request (≤ 24 KiB per peer, grown on demand).
pub const DEFAULT_REQQ: u32 = 2000;

/// Default number of bad requests (strikes) after which a peer is disconnected.
pub const DEFAULT_MAX_BAD_REQUESTS: u32 = 20;

/// Limits and torrent geometry for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Pieces in the torrent (> 0).
    pub num_pieces: u32,
    /// Nominal piece length.
    pub piece_length: u32,
    /// Length of the last piece (`1..=piece_length`).
    pub last_piece_length: u32,
    /// Bound on queued requests from this peer (advertised as `reqq`; at least 1).
    pub reqq: u32,
    /// Strikes (bad requests) before we disconnect the peer.
    pub max_bad_requests: u32,
}

impl PeerConfig {
    /// Geometry and queue bound; `max_bad_requests` is [`DEFAULT_MAX_BAD_REQUESTS`]. A `reqq` of
    /// 0 is raised to 1.
    pub fn new(num_pieces: u32, piece_length: u32, last_piece_length: u32, reqq: u32) -> Self {
        PeerConfig {
            num_pieces,
            piece_length,
            last_piece_length,
            reqq: reqq.max(1),
            max_bad_requests: DEFAULT_MAX_BAD_REQUESTS,
        }
    }

    /// Length of piece `p` (0 when out of range).
    pub fn piece_size(&self, p: u32) -> u32 {
        if p >= self.num_pieces {
            0
        } else if p + 1 == self.num_pieces {
            self.last_piece_length
        } else {
            self.piece_length
        }
    }

    /// Bytes of a BITFIELD for this torrent.
    pub fn bitfield_len(&self) -> usize {
        (self.num_pieces as usize).div_ceil(8)
    }

    /// Why `b` is not a block we could ever serve, if it is not.
    pub fn check_block(&self, b: &BlockRef) -> Result<(), BadRequest> {
        if b.piece >= self.num_pieces {
            return Err(BadRequest::PieceOutOfRange);
        }
        if b.len == 0 || b.len > BLOCK_SIZE {
            return Err(BadRequest::BadLength);
        }
        if u64::from(b.begin) + u64::from(b.len) > u64::from(self.piece_size(b.piece)) {
            return Err(BadRequest::PastPieceEnd);
        }
        Ok(())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("piece index out of range")]
    PieceOutOfRange,
    #[error("block length is 0 or above 16 KiB")]
    BadLength,
    #[error("block reaches past the end of its piece")]
    PastPieceEnd,
    #[error("request while choked")]
    Choked,
    #[error("request queue full (reqq)")]
    QueueFull,
}

/// Why the machine wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DisconnectReason {
    #[error("both sides are seeds")]
    BothSeeds,
    #[error("BITFIELD of the wrong length or with spare bits set")]
    BadBitfield,
    #[error("HAVE for piece {0}, out of range")]
    HaveOutOfRange(u32),
    #[error("FAST message id {0} without the FAST extension")]
    FastNotNegotiated(u8),
    #[error("too many bad requests (last: {0})")]
    TooManyBadRequests(BadRequest),
}

impl DisconnectReason {
    /// The peer broke the protocol or abused limits (everything but "both seeds").
    pub fn is_misbehaviour(self) -> bool {
        self != DisconnectReason::BothSeeds
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Encode and send this message (in order).
    Send(OwnedMessage),
    /// A request was queued: wake the writer, [`Peer::take_request`] has work.
    Serve,
    /// Close the connection.
    Disconnect(DisconnectReason),
}

/// A reusable out-buffer of actions. The driver drains it after each call.
#[derive(Debug, Default)]
pub struct Actions(Vec<Action>);

impl Actions {
    pub fn new() -> Self {
        Actions(Vec::with_capacity(8))
    }

    pub fn push(&mut self, a: Action) {
        self.0.push(a);
    }

    /// Take the actions out, in order, leaving the buffer empty (its capacity is kept).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Action> {
        self.0.drain(..)
    }

    pub fn as_slice(&self) -> &[Action] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// True when a [`Action::Disconnect`] is queued.
    pub fn wants_disconnect(&self) -> bool {
        self.0.iter().any(|a| matches!(a, Action::Disconnect(_)))
    }
}

/// Counters of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Payload bytes served (PIECE data).
    pub uploaded: u64,
    /// Requests received (valid or not).
    pub requests_received: u64,
    /// Requests served.
    pub requests_served: u64,
    /// Requests refused (REJECT sent with FAST; dropped without).
    pub requests_rejected: u64,
    /// Requests cancelled by the peer before we served them.
    pub requests_cancelled: u64,
    /// Strikes so far (invalid requests).
    pub bad_requests: u32,
    /// BITFIELD / HAVE ALL / HAVE NONE messages after the first (each replaced the last).
    pub bitfields_replaced: u32,
}

/// The peer's pieces.
#[derive(Debug, Clone)]
struct PeerPieces {
    bits: Vec<u8>,
    count: u32,
}

impl PeerPieces {
    fn has(&self, p: u32) -> bool {
        self.bits
            .get((p / 8) as usize)
            .is_some_and(|b| b & (0x80 >> (p % 8)) != 0)
    }

    /// Set bit `p` (in range); true if it was new.
    fn set(&mut self, p: u32) -> bool {
        let Some(b) = self.bits.get_mut((p / 8) as usize) else {
            return false;
        };
        let mask = 0x80 >> (p % 8);
        if *b & mask != 0 {
            return false;
        }
        *b |= mask;
        self.count += 1;
        true
    }
}

/// The queue of a peer's validated requests: FIFO, with CANCEL in O(1).
///
/// A cancel does not search the queue: it moves one copy of the block from `live` to `dead`,
/// and [`RequestQueue::pop`] skips dead entries as it meets them. Dead entries are bounded: when
/// they outnumber the bound on live ones, the queue is compacted (O(len), so amortised O(1) per
/// cancel). So a peer that requests and cancels as fast as it can costs O(1) per message and at
/// most `2 x reqq` entries (12 bytes each) plus the two maps.
///
/// The maps hash with foldhash, seeded at random per map, not std's SipHash-1-3: SipHash was
/// 28% of the seeder's user-space instructions under callgrind
/// (`profiles/seed-callgrind.sh`). The keys are a peer's, but validated (a piece we have, a
/// block inside it) and at most `2 x reqq` live at once, and the seed is unknown to the peer.
#[derive(Debug, Default)]
struct RequestQueue {
    fifo: VecDeque<BlockRef>,
    /// Live copies of each block in `fifo`.
    live: BlockCounts,
    /// Cancelled copies of each block still in `fifo`.
    dead: BlockCounts,
    live_len: usize,
    dead_len: usize,
}

impl RequestQueue {
    /// Live requests.
    fn len(&self) -> usize {
        self.live_len
    }

    /// Queues `b`; compacts first when dead entries exceed `bound`.
    fn push(&mut self, b: BlockRef, bound: usize) {
        if self.dead_len > bound {
            self.compact();
        }
        self.fifo.push_back(b);
        *self.live.entry(b).or_insert(0) += 1;
        self.live_len += 1;
    }

    /// Cancels one queued copy of `b`; false when none is queued.
    fn cancel(&mut self, b: BlockRef) -> bool {
        if !take_one(&mut self.live, b) {
            return false;
        }
        self.live_len -= 1;
        *self.dead.entry(b).or_insert(0) += 1;
        self.dead_len += 1;
        if self.live_len == 0 {
            self.clear_dead();
        }
        true
    }

    /// The oldest live request.
    fn pop(&mut self) -> Option<BlockRef> {
        while let Some(b) = self.fifo.pop_front() {
            // With no cancel pending (the usual case) the dead map is not looked at.
            if self.dead_len > 0 && take_one(&mut self.dead, b) {
                self.dead_len -= 1;
                continue;
            }
            if take_one(&mut self.live, b) {
                self.live_len -= 1;
                return Some(b);
            }
        }
        None
    }

    /// No live request is left: drop every entry.
    fn clear_dead(&mut self) {
        self.fifo.clear();
        self.dead.clear();
        self.dead_len = 0;
    }

    /// Drops every dead entry from `fifo` (the oldest copies of a block die first, as a cancel
    /// of the first matching request would have it).
    fn compact(&mut self) {
        let mut dead = std::mem::take(&mut self.dead);
        self.fifo.retain(|b| !take_one(&mut dead, *b));
        self.dead_len = 0;
    }
}

/// Copies of each block, by block.
type BlockCounts = HashMap<BlockRef, u32, foldhash::fast::RandomState>;

/// Decrements `map[b]`, removing it at zero; false when absent. One hash of `b`.
fn take_one(map: &mut BlockCounts, b: BlockRef) -> bool {
    match map.entry(b) {
        std::collections::hash_map::Entry::Occupied(mut o) => {
            if *o.get() > 1 {
                *o.get_mut() -= 1;
            } else {
                o.remove();
            }
            true
        }
        std::collections::hash_map::Entry::Vacant(_) => false,
    }
}

/// The state machine of one connected peer.
#[derive(Debug)]
pub struct Peer {
    cfg: PeerConfig,
    we_are_seed: bool,
    fast: bool,
    /// We choke the peer (initially true).
    am_choking: bool,
    /// We are interested in the peer (never while we are a seed).
    am_interested: bool,
    /// The peer chokes us (initially true).
    peer_choking: bool,
    /// The peer is interested in us.
    peer_interested: bool,
    /// The peer's pieces: allocated lazily (`None` = nothing known, i.e. it has none).
    pieces: Option<PeerPieces>,
    /// The peer has all pieces (HAVE ALL, or all bits set).
    peer_seed: bool,
    /// A BITFIELD / HAVE ALL / HAVE NONE has been received.
    got_bitfield: bool,
    /// Validated requests, FIFO, with O(1) cancel.
    queue: RequestQueue,
    /// Requests handed to the driver by `take_request`, not yet served or refused.
    in_flight: u32,
    /// Requests received while choked since our last CHOKE (grace up to `reqq`).
    choked_requests: u32,
    /// The peer's extension handshake, once received.
    ext: Option<ExtHandshake>,
    stats: PeerStats,
    /// Downloading: our requests to the peer not yet answered, oldest first (bounded by
    /// [`MAX_OUR_REQUESTS`]).
    ours: VecDeque<BlockRef>,
    /// Downloading: what the driver's piece picker must hear, drained by the driver after each
    /// message ([`Peer::take_events`]); off while we are a seed.
    events: Vec<PeerEvent>,
    /// BEP 6: pieces the peer lets us request while it chokes us (at most
    /// [`MAX_ALLOWED_FAST`]).
    allowed_fast: Vec<u32>,
}

/// Most requests we keep outstanding at one peer (our pipeline's ceiling).
pub const MAX_OUR_REQUESTS: usize = 512;
/// Most ALLOWED FAST pieces remembered per peer (BEP 6 suggests 10).
pub const MAX_ALLOWED_FAST: usize = 32;

/// What a peer told us that matters to a download (the driver feeds it to its piece picker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// HAVE: the peer has one more piece.
    Have(u32),
    /// A BITFIELD with some pieces (read it with [`Peer::peer_bits`]).
    Bitfield,
    /// HAVE ALL, or a full BITFIELD, or the HAVEs that completed it: the peer is a seed.
    Seed,
    /// A later BITFIELD / HAVE ALL / HAVE NONE replaces what the peer said before: forget
    /// these pieces (`bits`) or that it was a seed.
    Lost { bits: Option<Vec<u8>>, seed: bool },
    /// The peer unchoked us: requests may go out.
    Unchoked,
    /// The peer choked us.
    Choked,
    /// A request of ours will not be answered (REJECT; a CHOKE without FAST; timed out):
    /// the block goes back to the picker.
    Abandoned(BlockRef),
    /// The PIECE for one of our requests arrived.
    Block(BlockRef),
    /// A PIECE we did not ask for (or no longer wait for): its data is ignored.
    Unrequested(BlockRef),
    /// ALLOWED FAST for a piece.
    AllowedFast(u32),
}

impl Peer {
    /// A new peer. `we_are_seed`: we have every piece. `fast`: both sides set the FAST bit.
    pub fn new(cfg: PeerConfig, we_are_seed: bool, fast: bool) -> Self {
        Peer {
            cfg,
            we_are_seed,
            fast,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            pieces: None,
            peer_seed: false,
            got_bitfield: false,
            queue: RequestQueue::default(),
            in_flight: 0,
            choked_requests: 0,
            ext: None,
            stats: PeerStats::default(),
            ours: VecDeque::new(),
            events: Vec::new(),
            allowed_fast: Vec::new(),
        }
    }

    fn event(&mut self, e: PeerEvent) {
        if !self.we_are_seed {
            self.events.push(e);
        }
    }

    /// What the peer told us since the last call that a download must hear (empty while we
    /// are a seed). Bounded by what one `receive` decodes.
    pub fn take_events(&mut self, out: &mut Vec<PeerEvent>) {
        out.append(&mut self.events);
    }

    /// The peer's pieces as a BEP 3 bitfield, when it sent one (not a seed, some pieces).
    pub fn peer_bits(&self) -> Option<&[u8]> {
        self.pieces.as_ref().map(|p| p.bits.as_slice())
    }

    /// Events are waiting for [`Peer::take_events`].
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Our requests to the peer not yet answered.
    pub fn our_requests(&self) -> usize {
        self.ours.len()
    }

    /// `b` is one of our requests not yet answered.
    pub fn awaits(&self, b: BlockRef) -> bool {
        // Peers answer in order: the match is nearly always the front.
        self.ours.front() == Some(&b) || self.ours.contains(&b)
    }

    /// The peer allowed some pieces fast (BEP 6): requests for them may go out while it chokes
    /// us.
    pub fn has_allowed_fast(&self) -> bool {
        !self.allowed_fast.is_empty()
    }

    /// Whether we may send requests for `piece` now: the peer unchokes us, or it allowed that
    /// piece fast (BEP 6).
    pub fn may_request(&self, piece: u32) -> bool {
        !self.peer_choking || self.allowed_fast.contains(&piece)
    }

    /// Queue our REQUEST for `b` (downloading). Returns false (nothing sent) when the
    /// pipeline is at [`MAX_OUR_REQUESTS`], we are a seed, or the block is not valid for the
    /// torrent.
    pub fn request(&mut self, b: BlockRef, out: &mut Actions) -> bool {
        if self.we_are_seed
            || self.ours.len() >= MAX_OUR_REQUESTS
            || self.cfg.check_block(&b).is_err()
        {
            return false;
        }
        self.ours.push_back(b);
        out.push(Action::Send(OwnedMessage::Request(b)));
        true
    }

    /// Withdraw our request for `b` (another peer delivered it first, in endgame): CANCEL.
    /// With FAST the peer may still answer it (PIECE or REJECT): either is then unrequested.
    pub fn cancel(&mut self, b: BlockRef, out: &mut Actions) -> bool {
        match self.ours.iter().position(|x| *x == b) {
            Some(i) => {
                self.ours.remove(i);
                out.push(Action::Send(OwnedMessage::Cancel(b)));
                true
            }
            None => false,
        }
    }

    /// Withdraw every request of ours for blocks of `piece` (we have it now): CANCEL each.
    pub fn cancel_piece(&mut self, piece: u32, out: &mut Actions) -> usize {
        let before = self.ours.len();
        let mut i = 0;
        while i < self.ours.len() {
            if self.ours[i].piece == piece {
                if let Some(b) = self.ours.remove(i) {
                    out.push(Action::Send(OwnedMessage::Cancel(b)));
                }
            } else {
                i += 1;
            }
        }
        before - self.ours.len()
    }

    /// Give up every request still outstanding (the peer is snubbing us, or we are done):
    /// each comes back as [`PeerEvent::Abandoned`].
    pub fn abandon_requests(&mut self) {
        while let Some(b) = self.ours.pop_front() {
            self.events.push(PeerEvent::Abandoned(b));
        }
    }

    fn on_piece(&mut self, b: BlockRef) {
        // Peers answer in order: the match is nearly always the front.
        match self.ours.iter().position(|x| *x == b) {
            Some(i) => {
                self.ours.remove(i);
                self.events.push(PeerEvent::Block(b));
            }
            None => self.events.push(PeerEvent::Unrequested(b)),
        }
    }

    /// Queue what we send right after the handshake, as a seed: HAVE ALL with FAST, otherwise a
    /// full BITFIELD. For a partial download use [`Peer::start_with_have`].
    pub fn start(&mut self, out: &mut Actions) {
        if self.we_are_seed {
            if self.fast {
                out.push(Action::Send(OwnedMessage::HaveAll));
            } else {
                out.push(Action::Send(OwnedMessage::Bitfield(full_bitfield(
                    self.cfg.num_pieces,
                ))));
            }
        } else {
            self.start_with_have(&[], out);
        }
    }

    /// Queue what we send after the handshake when we have some pieces: `have` is our bitfield
    /// (BEP 3 layout, high bit first; shorter than the torrent's is padded with zero). With
    /// FAST, nothing is HAVE NONE and everything is HAVE ALL; without FAST, nothing sends nothing
    /// (BEP 3 allows skipping an empty bitfield).
    pub fn start_with_have(&mut self, have: &[u8], out: &mut Actions) {
        let n = self.cfg.bitfield_len();
        let mut bits = vec![0u8; n];
        let take = have.len().min(n);
        bits[..take].copy_from_slice(&have[..take]);
        if let Some(last) = bits.last_mut() {
            *last &= spare_mask(self.cfg.num_pieces);
        }
        let count: u32 = bits.iter().map(|b| b.count_ones()).sum();
        if count == self.cfg.num_pieces {
            self.we_are_seed = true;
            self.start(out);
            return;
        }
        if count == 0 {
            if self.fast {
                out.push(Action::Send(OwnedMessage::HaveNone));
            }
            return;
        }
        out.push(Action::Send(OwnedMessage::Bitfield(bits)));
    }

    /// Handle one message from the peer.
    pub fn on_message(&mut self, msg: &Message<'_>, out: &mut Actions) {
        match *msg {
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => {}
            Message::Choke => {
                if !self.peer_choking {
                    self.peer_choking = true;
                    self.event(PeerEvent::Choked);
                }
                // BEP 3: a CHOKE drops our requests. With FAST they stay until answered (PIECE
                // or REJECT); a peer that never answers is handled by the request timeout.
                if !self.fast {
                    while let Some(b) = self.ours.pop_front() {
                        self.events.push(PeerEvent::Abandoned(b));
                    }
                }
            }
            Message::Unchoke => {
                if self.peer_choking {
                    self.peer_choking = false;
                    self.event(PeerEvent::Unchoked);
                }
            }
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => self.peer_interested = false,
            Message::Have(p) => {
                if p >= self.cfg.num_pieces {
                    out.push(Action::Disconnect(DisconnectReason::HaveOutOfRange(p)));
                    return;
                }
                if !self.peer_seed {
                    let n = self.cfg.bitfield_len();
                    let pieces = self.pieces.get_or_insert_with(|| PeerPieces {
                        bits: vec![0; n],
                        count: 0,
                    });
                    if pieces.set(p) {
                        if pieces.count == self.cfg.num_pieces {
                            // The picker counted its pieces one by one: trade them for a seed.
                            let bits = self.pieces.as_ref().map(|x| x.bits.clone());
                            self.event(PeerEvent::Lost { bits, seed: false });
                            self.became_seed(out);
                            self.event(PeerEvent::Seed);
                        } else {
                            self.event(PeerEvent::Have(p));
                        }
                    }
                }
            }
            Message::Bitfield(bits) => {
                if !self.initial_ok(out) {
                    return;
                }
                if bits.len() != self.cfg.bitfield_len()
                    || bits
                        .last()
                        .is_some_and(|&b| b & !spare_mask(self.cfg.num_pieces) != 0)
                {
                    out.push(Action::Disconnect(DisconnectReason::BadBitfield));
                    return;
                }
                let count: u32 = bits.iter().map(|b| b.count_ones()).sum();
                if count == self.cfg.num_pieces {
                    self.became_seed(out);
                    self.event(PeerEvent::Seed);
                } else if count > 0 {
                    self.pieces = Some(PeerPieces {
                        bits: bits.to_vec(),
                        count,
                    });
                    self.event(PeerEvent::Bitfield);
                }
            }
            Message::HaveAll => {
                if !self.fast_ok(crate::wire::id::HAVE_ALL, out) || !self.initial_ok(out) {
                    return;
                }
                self.became_seed(out);
                self.event(PeerEvent::Seed);
            }
            Message::HaveNone => {
                if !self.fast_ok(crate::wire::id::HAVE_NONE, out) || !self.initial_ok(out) {
                    return;
                }
                self.pieces = None;
            }
            Message::Request(b) => self.on_request(b, out),
            Message::Cancel(b) => {
                if self.queue.cancel(b) {
                    self.stats.requests_cancelled += 1;
                    // BEP 6: with FAST a cancelled request still gets an answer: REJECT.
                    if self.fast {
                        out.push(Action::Send(OwnedMessage::Reject(b)));
                    }
                }
                // Not queued: already served, in flight (its PIECE answers it), or never asked.
            }
            Message::Piece { piece, begin, data } => {
                let b = BlockRef {
                    piece,
                    begin,
                    len: data.len() as u32,
                };
                // While seeding we request nothing: any data is unrequested.
                self.on_piece(b);
                if self.we_are_seed {
                    self.events.clear();
                }
            }
            Message::Reject(b) => {
                if !self.fast_ok(crate::wire::id::REJECT, out) {
                    return;
                }
                if let Some(i) = self.ours.iter().position(|x| *x == b) {
                    self.ours.remove(i);
                    self.event(PeerEvent::Abandoned(b));
                }
            }
            Message::AllowedFast(p) => {
                if !self.fast_ok(crate::wire::id::ALLOWED_FAST, out) {
                    return;
                }
                if p < self.cfg.num_pieces
                    && self.allowed_fast.len() < MAX_ALLOWED_FAST
                    && !self.allowed_fast.contains(&p)
                {
                    self.allowed_fast.push(p);
                    self.event(PeerEvent::AllowedFast(p));
                }
            }
            Message::Suggest(_) => {
                if let Some(id) = msg.id() {
                    self.fast_ok(id, out);
                }
                // SUGGEST is advice: rarest first decides.
            }
            Message::Extended { id, payload } => {
                if id == EXTENDED_HANDSHAKE_ID {
                    // Lenient: a malformed handshake leaves what we knew.
                    if let Ok(hs) = ExtHandshake::decode(payload) {
                        self.ext = Some(hs);
                    }
                }
            }
        }
    }

    /// BITFIELD / HAVE ALL / HAVE NONE. BEP 3 and 6 want one, first; we insist on neither:
    /// some clients send the extension handshake before it, and aria2 1.36 sends HAVE NONE or a
    /// BITFIELD and then a second BITFIELD ~50 ms later (libtorrent tolerates it too). A later
    /// one replaces what the peer said before; each costs work linear in its own length (at
    /// most the torrent's bitfield), so repeating them buys a peer nothing.
    fn initial_ok(&mut self, _out: &mut Actions) -> bool {
        if self.got_bitfield {
            self.stats.bitfields_replaced = self.stats.bitfields_replaced.saturating_add(1);
            let was_seed = self.peer_seed;
            let bits = self.pieces.take().map(|p| p.bits);
            if was_seed || bits.is_some() {
                self.event(PeerEvent::Lost {
                    bits,
                    seed: was_seed,
                });
            }
            self.peer_seed = false;
        }
        self.got_bitfield = true;
        true
    }

    fn fast_ok(&self, id: u8, out: &mut Actions) -> bool {
        if !self.fast {
            out.push(Action::Disconnect(DisconnectReason::FastNotNegotiated(id)));
        }
        self.fast
    }

    fn became_seed(&mut self, out: &mut Actions) {
        self.peer_seed = true;
        self.pieces = None;
        if self.we_are_seed {
            out.push(Action::Disconnect(DisconnectReason::BothSeeds));
        }
    }

    fn on_request(&mut self, b: BlockRef, out: &mut Actions) {
        self.stats.requests_received += 1;
        let refusal = if let Err(e) = self.cfg.check_block(&b) {
            Some((e, true))
        } else if self.am_choking {
            // Requests sent before our CHOKE arrived are innocent: up to `reqq` of them.
            self.choked_requests = self.choked_requests.saturating_add(1);
            Some((BadRequest::Choked, self.choked_requests > self.cfg.reqq))
        } else if self.queue.len() as u64 >= u64::from(self.cfg.reqq) {
            Some((BadRequest::QueueFull, true))
        } else {
            None
        };
        match refusal {
            None => {
                self.queue.push(b, self.cfg.reqq as usize);
                out.push(Action::Serve);
            }
            Some((why, strike)) => {
                self.reject(b, out);
                if strike {
                    self.stats.bad_requests += 1;
                    if self.stats.bad_requests >= self.cfg.max_bad_requests {
                        out.push(Action::Disconnect(DisconnectReason::TooManyBadRequests(
                            why,
                        )));
                    }
                }
            }
        }
    }

    /// Count a refused request and, with FAST, answer it with REJECT.
    fn reject(&mut self, b: BlockRef, out: &mut Actions) {
        self.stats.requests_rejected += 1;
        if self.fast {
            out.push(Action::Send(OwnedMessage::Reject(b)));
        }
    }

    /// The choker's decision. Choking sends CHOKE and drops the queue (REJECT for each queued
    /// request with FAST, as BEP 6 asks); unchoking sends UNCHOKE. No change, no message.
    pub fn set_choked(&mut self, choked: bool, out: &mut Actions) {
        if choked == self.am_choking {
            return;
        }
        self.am_choking = choked;
        if choked {
            out.push(Action::Send(OwnedMessage::Choke));
            self.choked_requests = 0;
            while let Some(b) = self.queue.pop() {
                self.reject(b, out);
            }
        } else {
            out.push(Action::Send(OwnedMessage::Unchoke));
        }
    }

    /// The next request to serve (FIFO). It leaves the `reqq` bound at once and counts as in
    /// flight until [`Peer::on_served`] or [`Peer::refuse`].
    pub fn take_request(&mut self) -> Option<BlockRef> {
        let b = self.queue.pop()?;
        self.in_flight += 1;
        Some(b)
    }

    /// The driver sent the PIECE for `b` (taken with [`Peer::take_request`]).
    pub fn on_served(&mut self, b: BlockRef) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.stats.requests_served += 1;
        self.stats.uploaded += u64::from(b.len);
    }

    /// The driver cannot serve `b` (taken with [`Peer::take_request`]): a storage error, a piece
    /// that failed its check. REJECT with FAST; nothing without. Not a strike against the peer.
    pub fn refuse(&mut self, b: BlockRef, out: &mut Actions) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.reject(b, out);
    }

    /// We completed piece `p` (downloading): HAVE to the peer unless it has the piece; when that
    /// made us a seed, drop interest and disconnect a seed peer.
    pub fn on_we_have(&mut self, p: u32, now_seed: bool, out: &mut Actions) {
        if p < self.cfg.num_pieces && !self.peer_has(p) {
            out.push(Action::Send(OwnedMessage::Have(p)));
        }
        if now_seed && !self.we_are_seed {
            self.set_interested(false, out);
            self.we_are_seed = true;
            self.ours.clear();
            self.events.clear();
            // We are a seed now: never interested again.
            if self.peer_seed {
                out.push(Action::Disconnect(DisconnectReason::BothSeeds));
            }
        }
    }

    /// Our interest in the peer (for a future picker). Ignored while we are a seed.
    pub fn set_interested(&mut self, interested: bool, out: &mut Actions) {
        let interested = interested && !self.we_are_seed;
        if interested != self.am_interested {
            self.am_interested = interested;
            out.push(Action::Send(if interested {
                OwnedMessage::Interested
            } else {
                OwnedMessage::NotInterested
            }));
        }
    }

    /// The peer is interested in our pieces.
    pub fn is_interested(&self) -> bool {
        self.peer_interested
    }

    /// We are choking the peer.
    pub fn am_choking(&self) -> bool {
        self.am_choking
    }

    /// We are interested in the peer.
    pub fn am_interested(&self) -> bool {
        self.am_interested
    }

    /// The peer is choking us.
    pub fn peer_choking(&self) -> bool {
        self.peer_choking
    }

    /// The peer has every piece.
    pub fn peer_is_seed(&self) -> bool {
        self.peer_seed
    }

    /// The peer has piece `p`.
    pub fn peer_has(&self, p: u32) -> bool {
        p < self.cfg.num_pieces
            && (self.peer_seed || self.pieces.as_ref().is_some_and(|x| x.has(p)))
    }

    /// Pieces the peer has.
    pub fn peer_piece_count(&self) -> u32 {
        if self.peer_seed {
            self.cfg.num_pieces
        } else {
            self.pieces.as_ref().map_or(0, |x| x.count)
        }
    }

    pub fn we_are_seed(&self) -> bool {
        self.we_are_seed
    }

    /// FAST negotiated on this connection.
    pub fn fast(&self) -> bool {
        self.fast
    }

    /// Requests queued, not yet taken.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Requests taken, not yet served or refused.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The peer's extension handshake, once received.
    pub fn ext_handshake(&self) -> Option<&ExtHandshake> {
        self.ext.as_ref()
    }

    pub fn stats(&self) -> &PeerStats {
        &self.stats
    }

    pub fn config(&self) -> &PeerConfig {
        &self.cfg
    }
}

/// Mask of the valid bits in the last byte of a bitfield of `num_pieces` bits.
fn spare_mask(num_pieces: u32) -> u8 {
    match num_pieces % 8 {
        0 => 0xFF,
        r => 0xFFu8 << (8 - r),
    }
}

/// A BITFIELD with every piece set (spare bits clear).
pub fn full_bitfield(num_pieces: u32) -> Vec<u8> {
    let mut bits = vec![0xFFu8; (num_pieces as usize).div_ceil(8)];
    if let Some(last) = bits.last_mut() {
        *last &= spare_mask(num_pieces);
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_queue_matches_a_naive_queue_and_stays_bounded() {
        // A deterministic model check: the O(1) queue pops exactly what a VecDeque with a
        // linear-search cancel pops, and never holds more than 2 x bound + 1 entries.
        let bound = 8usize;
        let mut q = RequestQueue::default();
        let mut naive: VecDeque<BlockRef> = VecDeque::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = BlockRef {
                piece: (x % 3) as u32,
                begin: ((x >> 8) % 3) as u32,
                len: 1,
            };
            match (x >> 20) % 4 {
                0 | 1 if naive.len() < bound => {
                    q.push(b, bound);
                    naive.push_back(b);
                }
                2 => {
                    let pos = naive.iter().position(|n| *n == b);
                    assert_eq!(q.cancel(b), pos.is_some());
                    if let Some(i) = pos {
                        naive.remove(i);
                    }
                }
                _ => assert_eq!(q.pop(), naive.pop_front()),
            }
            assert_eq!(q.len(), naive.len());
            assert!(q.fifo.len() <= 2 * bound + 1, "{} entries", q.fifo.len());
        }
    }

    #[test]
    fn request_and_cancel_flood_costs_constant_memory() {
        let mut p = Peer::new(cfg(), true, true);
        let mut out = Actions::new();
        p.set_choked(false, &mut out);
        out.clear();
        for i in 0..100_000u32 {
            let b = BlockRef {
                piece: i % 4,
                begin: 0,
                len: 1,
            };
            p.on_message(&Message::Request(b), &mut out);
            p.on_message(&Message::Cancel(b), &mut out);
            assert!(!out.wants_disconnect());
            out.clear();
        }
        assert_eq!(p.queued(), 0);
        assert!(p.queue.fifo.len() <= 2 * cfg().reqq as usize + 1);
        assert_eq!(p.stats().requests_cancelled, 100_000);
    }

    /// 10 pieces of 64 KiB, the last 20,000 bytes.
    fn cfg() -> PeerConfig {
        PeerConfig::new(10, 65536, 20_000, 8)
    }

    fn blk(piece: u32, begin: u32, len: u32) -> BlockRef {
        BlockRef { piece, begin, len }
    }

    fn sends(out: &mut Actions) -> Vec<OwnedMessage> {
        out.drain()
            .filter_map(|a| match a {
                Action::Send(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// A seed peer, FAST as given, unchoked, interested.
    fn serving(fast: bool) -> (Peer, Actions) {
        let mut p = Peer::new(cfg(), true, fast);
        let mut out = Actions::new();
        p.start(&mut out);
        p.on_message(&Message::Interested, &mut out);
        p.set_choked(false, &mut out);
        out.clear();
        (p, out)
    }

    /// A leeching peer (we lack pieces), FAST as given.
    fn leeching(fast: bool) -> (Peer, Actions) {
        let mut p = Peer::new(cfg(), false, fast);
        let mut out = Actions::new();
        p.start_with_have(&[], &mut out);
        out.clear();
        (p, out)
    }

    fn events(p: &mut Peer) -> Vec<PeerEvent> {
        let mut v = Vec::new();
        p.take_events(&mut v);
        v
    }

    #[test]
    fn download_events_follow_availability_and_replacements() {
        let (mut p, mut out) = leeching(true);
        p.on_message(&Message::Bitfield(&[0b1010_0000, 0]), &mut out);
        p.on_message(&Message::Have(1), &mut out);
        p.on_message(&Message::Have(1), &mut out); // repeated: no event
        assert_eq!(
            events(&mut p),
            vec![PeerEvent::Bitfield, PeerEvent::Have(1)]
        );
        // A second bitfield (aria2) replaces the first: the old bits are given back.
        p.on_message(&Message::HaveAll, &mut out);
        assert_eq!(
            events(&mut p),
            vec![
                PeerEvent::Lost {
                    bits: Some(vec![0b1110_0000, 0]),
                    seed: false
                },
                PeerEvent::Seed
            ]
        );
        // HAVEs that complete the set trade the counted bits for a seed.
        let (mut q, mut out) = leeching(false);
        for i in 0..10 {
            q.on_message(&Message::Have(i), &mut out);
        }
        let ev = events(&mut q);
        assert_eq!(ev.len(), 9 + 2, "{ev:?}");
        assert!(matches!(
            ev[9],
            PeerEvent::Lost {
                bits: Some(_),
                seed: false
            }
        ));
        assert!(q.peer_is_seed());
    }

    #[test]
    fn our_requests_are_tracked_answered_rejected_and_dropped_on_choke() {
        let (mut p, mut out) = leeching(true);
        p.on_message(&Message::Unchoke, &mut out);
        assert_eq!(events(&mut p), vec![PeerEvent::Unchoked]);
        let (a, b, c) = (blk(0, 0, 16384), blk(0, 16384, 16384), blk(9, 0, 16384));
        assert!(p.request(a, &mut out) && p.request(b, &mut out) && p.request(c, &mut out));
        assert!(
            !p.request(blk(9, 16384, 16384), &mut out),
            "past the last piece's end"
        );
        assert_eq!(
            sends(&mut out),
            vec![
                OwnedMessage::Request(a),
                OwnedMessage::Request(b),
                OwnedMessage::Request(c)
            ]
        );
        let data = vec![7u8; 16384];
        p.on_message(
            &Message::Piece {
                piece: 0,
                begin: 0,
                data: &data,
            },
            &mut out,
        );
        p.on_message(
            &Message::Piece {
                piece: 0,
                begin: 0,
                data: &data,
            },
            &mut out,
        );
        assert_eq!(
            events(&mut p),
            vec![PeerEvent::Block(a), PeerEvent::Unrequested(a)]
        );
        p.on_message(&Message::Reject(b), &mut out);
        assert_eq!(events(&mut p), vec![PeerEvent::Abandoned(b)]);
        // With FAST a CHOKE keeps our requests (they will be answered or rejected)...
        p.on_message(&Message::Choke, &mut out);
        assert_eq!(events(&mut p), vec![PeerEvent::Choked]);
        assert_eq!(p.our_requests(), 1);
        // ...without FAST it drops them.
        let (mut q, mut out) = leeching(false);
        q.on_message(&Message::Unchoke, &mut out);
        assert!(q.request(a, &mut out) && q.request(b, &mut out));
        q.on_message(&Message::Choke, &mut out);
        let ev = events(&mut q);
        assert!(ev.contains(&PeerEvent::Abandoned(a)) && ev.contains(&PeerEvent::Abandoned(b)));
        assert_eq!(q.our_requests(), 0);
        // REJECT without FAST is a protocol violation.
        q.on_message(&Message::Reject(a), &mut out);
        assert!(out.wants_disconnect());
    }

    #[test]
    fn pipeline_is_bounded_and_cancel_and_completion_clear_it() {
        let mut p = Peer::new(PeerConfig::new(4096, 1 << 20, 1 << 20, 8), false, true);
        let mut out = Actions::new();
        let mut sent = 0;
        for i in 0..(MAX_OUR_REQUESTS as u32 + 10) {
            if p.request(blk(i / 64, (i % 64) * 16384, 16384), &mut out) {
                sent += 1;
            }
        }
        assert_eq!(sent, MAX_OUR_REQUESTS);
        assert!(p.cancel(blk(0, 0, 16384), &mut out));
        assert!(!p.cancel(blk(0, 0, 16384), &mut out), "cancelled once");
        assert_eq!(p.cancel_piece(1, &mut out), 64);
        out.clear();
        p.on_we_have(5, true, &mut out);
        assert_eq!(p.our_requests(), 0);
        assert!(
            !p.request(blk(7, 0, 16384), &mut out),
            "a seed requests nothing"
        );
        assert!(events(&mut p).is_empty());
    }

    #[test]
    fn allowed_fast_is_bounded_and_lets_us_request_while_choked() {
        let (mut p, mut out) = leeching(true);
        assert!(!p.may_request(3));
        p.on_message(&Message::AllowedFast(3), &mut out);
        p.on_message(&Message::AllowedFast(99), &mut out); // out of range: ignored
        assert!(p.may_request(3) && !p.may_request(4));
        assert_eq!(events(&mut p), vec![PeerEvent::AllowedFast(3)]);
        assert!(out.is_empty());
    }

    #[test]
    fn seed_starts_with_have_all_or_bitfield() {
        let mut out = Actions::new();
        Peer::new(cfg(), true, true).start(&mut out);
        assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::HaveAll)]);
        out.clear();
        Peer::new(cfg(), true, false).start(&mut out);
        assert_eq!(
            out.as_slice(),
            [Action::Send(OwnedMessage::Bitfield(vec![0xFF, 0xC0]))]
        );
        assert_eq!(full_bitfield(16), vec![0xFF, 0xFF]);
        assert_eq!(full_bitfield(1), vec![0x80]);
    }

    #[test]
    fn partial_start_sends_bitfield_or_have_none() {
        let mut out = Actions::new();
        let mut p = Peer::new(cfg(), false, true);
        p.start(&mut out);
        assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::HaveNone)]);
        out.clear();
        Peer::new(cfg(), false, false).start(&mut out);
        assert!(out.is_empty(), "empty bitfield may be skipped without FAST");
        // Spare bits in our own have-set are cleared.
        Peer::new(cfg(), false, true).start_with_have(&[0x81, 0xFF], &mut out);
        assert_eq!(
            out.as_slice(),
            [Action::Send(OwnedMessage::Bitfield(vec![0x81, 0xC0]))]
        );
        out.clear();
        // A complete have-set makes us a seed.
        let mut p = Peer::new(cfg(), false, true);
        p.start_with_have(&[0xFF, 0xC0], &mut out);
        assert!(p.we_are_seed());
        assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::HaveAll)]);
    }

    #[test]
    fn valid_requests_queue_fifo_and_serve() {
        let (mut p, mut out) = serving(true);
        p.on_message(&Message::Request(blk(0, 0, 16384)), &mut out);
        p.on_message(&Message::Request(blk(9, 16384, 3616)), &mut out); // exactly to the end
        assert_eq!(out.as_slice(), [Action::Serve, Action::Serve]);
        assert_eq!(p.take_request(), Some(blk(0, 0, 16384)));
        assert_eq!(p.take_request(), Some(blk(9, 16384, 3616)));
        assert_eq!(p.take_request(), None);
        assert_eq!(p.in_flight(), 2);
        p.on_served(blk(0, 0, 16384));
        p.on_served(blk(9, 16384, 3616));
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.stats().uploaded, 16384 + 3616);
        assert_eq!(p.stats().requests_served, 2);
        assert_eq!(p.stats().requests_rejected, 0);
    }

    fn bad_requests() -> Vec<(BlockRef, BadRequest)> {
        vec![
            (blk(10, 0, 16384), BadRequest::PieceOutOfRange),
            (blk(u32::MAX, 0, 1), BadRequest::PieceOutOfRange),
            (blk(0, 0, 0), BadRequest::BadLength),
            (blk(0, 0, 16385), BadRequest::BadLength),
            (blk(0, 0, u32::MAX), BadRequest::BadLength),
            (blk(0, 65536 - 16383, 16384), BadRequest::PastPieceEnd),
            (blk(9, 16384, 3617), BadRequest::PastPieceEnd),
            (blk(9, 20_000, 1), BadRequest::PastPieceEnd),
            (blk(0, u32::MAX, 16384), BadRequest::PastPieceEnd),
        ]
    }

    #[test]
    fn each_bad_request_kind_is_rejected_with_fast() {
        for (b, why) in bad_requests() {
            assert_eq!(cfg().check_block(&b), Err(why), "{b:?}");
            let (mut p, mut out) = serving(true);
            p.on_message(&Message::Request(b), &mut out);
            assert_eq!(
                out.as_slice(),
                [Action::Send(OwnedMessage::Reject(b))],
                "{b:?}"
            );
            assert_eq!(p.take_request(), None);
            assert_eq!(p.stats().bad_requests, 1);
            assert_eq!(p.stats().requests_rejected, 1);
        }
    }

    #[test]
    fn each_bad_request_kind_is_dropped_without_fast() {
        for (b, _) in bad_requests() {
            let (mut p, mut out) = serving(false);
            p.on_message(&Message::Request(b), &mut out);
            assert!(out.is_empty(), "{b:?}: no REJECT without FAST");
            assert_eq!(p.take_request(), None);
            assert_eq!(p.stats().bad_requests, 1);
        }
    }

    #[test]
    fn repeated_bad_requests_disconnect() {
        for fast in [true, false] {
            let (mut p, mut out) = serving(fast);
            for i in 0..DEFAULT_MAX_BAD_REQUESTS {
                assert!(!out.wants_disconnect(), "fast={fast} after {i}");
                p.on_message(&Message::Request(blk(0, 0, 0)), &mut out);
            }
            assert!(out.as_slice().contains(&Action::Disconnect(
                DisconnectReason::TooManyBadRequests(BadRequest::BadLength)
            )));
        }
    }

    #[test]
    fn requests_while_choked_are_rejected_with_grace() {
        // FAST: REJECT; strikes only beyond `reqq` requests after our CHOKE.
        let mut p = Peer::new(cfg(), true, true);
        let mut out = Actions::new();
        p.on_message(&Message::Interested, &mut out);
        for _ in 0..cfg().reqq {
            p.on_message(&Message::Request(blk(1, 0, 16384)), &mut out);
        }
        assert_eq!(sends(&mut out).len(), cfg().reqq as usize);
        assert_eq!(p.stats().bad_requests, 0);
        assert_eq!(p.take_request(), None);
        for _ in 0..DEFAULT_MAX_BAD_REQUESTS {
            p.on_message(&Message::Request(blk(1, 0, 16384)), &mut out);
        }
        assert!(out.wants_disconnect());

        // Without FAST: dropped silently, same strikes.
        let mut p = Peer::new(cfg(), true, false);
        let mut out = Actions::new();
        p.on_message(&Message::Request(blk(1, 0, 16384)), &mut out);
        assert!(out.is_empty());
        assert_eq!(p.take_request(), None);
        assert_eq!(p.stats().requests_rejected, 1);
    }

    #[test]
    fn queue_is_bounded_by_reqq_and_a_taken_request_frees_room() {
        let (mut p, mut out) = serving(true);
        let reqq = cfg().reqq;
        for i in 0..reqq {
            p.on_message(&Message::Request(blk(i % 10, 0, 16384)), &mut out);
        }
        assert_eq!(p.queued(), reqq as usize);
        out.clear();
        let over = blk(5, 16384, 16384);
        p.on_message(&Message::Request(over), &mut out);
        assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::Reject(over))]);
        assert_eq!(p.stats().bad_requests, 1);
        // Taking one frees room at once (its PIECE may already be on its way), before it is
        // served; the queue is full again after the next request.
        let t = p.take_request().unwrap();
        assert_eq!(p.in_flight(), 1);
        out.clear();
        p.on_message(&Message::Request(over), &mut out);
        assert_eq!(out.as_slice(), [Action::Serve]);
        assert_eq!(p.queued(), reqq as usize);
        out.clear();
        p.on_message(&Message::Request(blk(6, 0, 16384)), &mut out);
        assert_eq!(
            out.as_slice(),
            [Action::Send(OwnedMessage::Reject(blk(6, 0, 16384)))]
        );
        assert_eq!(p.stats().bad_requests, 2);
        p.on_served(t);
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn choking_rejects_queue_with_fast_and_drops_without() {
        let (mut p, mut out) = serving(true);
        p.on_message(&Message::Request(blk(0, 0, 16384)), &mut out);
        p.on_message(&Message::Request(blk(0, 16384, 16384)), &mut out);
        out.clear();
        p.set_choked(true, &mut out);
        assert_eq!(
            sends(&mut out),
            [
                OwnedMessage::Choke,
                OwnedMessage::Reject(blk(0, 0, 16384)),
                OwnedMessage::Reject(blk(0, 16384, 16384)),
            ]
        );
        assert_eq!(p.take_request(), None);
        assert!(p.am_choking());
        // Idempotent.
        p.set_choked(true, &mut out);
        assert!(out.is_empty());

        let (mut p, mut out) = serving(false);
        p.on_message(&Message::Request(blk(0, 0, 16384)), &mut out);
        out.clear();
        p.set_choked(true, &mut out);
        assert_eq!(sends(&mut out), [OwnedMessage::Choke]);
        assert_eq!(p.take_request(), None);
        p.set_choked(false, &mut out);
        assert_eq!(sends(&mut out), [OwnedMessage::Unchoke]);
    }

    #[test]
    fn cancel_removes_queued_and_rejects_with_fast() {
        for fast in [true, false] {
            let (mut p, mut out) = serving(fast);
            let a = blk(0, 0, 16384);
            let b = blk(0, 16384, 16384);
            p.on_message(&Message::Request(a), &mut out);
            p.on_message(&Message::Request(b), &mut out);
            out.clear();
            p.on_message(&Message::Cancel(a), &mut out);
            if fast {
                assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::Reject(a))]);
            } else {
                assert!(out.is_empty());
            }
            out.clear();
            // Cancelling what is not queued (in flight, or unknown) does nothing.
            assert_eq!(p.take_request(), Some(b));
            p.on_message(&Message::Cancel(b), &mut out);
            p.on_message(&Message::Cancel(blk(3, 0, 1)), &mut out);
            assert!(out.is_empty());
            assert_eq!(p.stats().requests_cancelled, 1);
        }
    }

    #[test]
    fn refuse_rejects_with_fast_without_a_strike() {
        let (mut p, mut out) = serving(true);
        p.on_message(&Message::Request(blk(2, 0, 100)), &mut out);
        out.clear();
        let t = p.take_request().unwrap();
        p.refuse(t, &mut out);
        assert_eq!(out.as_slice(), [Action::Send(OwnedMessage::Reject(t))]);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.stats().bad_requests, 0);
    }

    #[test]
    fn two_seeds_disconnect() {
        for msg in [Message::HaveAll, Message::Bitfield(&[0xFF, 0xC0])] {
            let mut p = Peer::new(cfg(), true, true);
            let mut out = Actions::new();
            p.on_message(&msg, &mut out);
            assert_eq!(
                out.as_slice(),
                [Action::Disconnect(DisconnectReason::BothSeeds)]
            );
            assert!(p.peer_is_seed());
        }
        // A peer completing through HAVEs.
        let mut p = Peer::new(cfg(), true, true);
        let mut out = Actions::new();
        p.on_message(&Message::Bitfield(&[0xFF, 0x80]), &mut out);
        assert!(out.is_empty());
        assert_eq!(p.peer_piece_count(), 9);
        p.on_message(&Message::Have(8), &mut out); // already had it
        assert!(out.is_empty());
        p.on_message(&Message::Have(9), &mut out);
        assert_eq!(
            out.as_slice(),
            [Action::Disconnect(DisconnectReason::BothSeeds)]
        );
        // A leecher facing a seed stays connected.
        let mut p = Peer::new(cfg(), false, true);
        p.on_message(&Message::HaveAll, out.tap_clear());
        assert!(out.is_empty());
        assert!(p.peer_is_seed());
    }

    #[test]
    fn bad_bitfields_and_haves_disconnect() {
        let cases: Vec<(Message<'_>, DisconnectReason)> = vec![
            (Message::Have(10), DisconnectReason::HaveOutOfRange(10)),
            (Message::Bitfield(&[0xFF]), DisconnectReason::BadBitfield),
            (Message::Bitfield(&[0, 0, 0]), DisconnectReason::BadBitfield),
            (Message::Bitfield(&[]), DisconnectReason::BadBitfield),
            (Message::Bitfield(&[0, 0x20]), DisconnectReason::BadBitfield), // spare bit
        ];
        for (msg, why) in cases {
            let mut p = Peer::new(cfg(), true, true);
            let mut out = Actions::new();
            p.on_message(&msg, &mut out);
            assert_eq!(out.as_slice(), [Action::Disconnect(why)], "{msg:?}");
        }
        // A second bitfield-type message replaces the first (aria2 sends two).
        let mut p = Peer::new(cfg(), false, true);
        let mut out = Actions::new();
        p.on_message(&Message::HaveNone, &mut out);
        p.on_message(&Message::Bitfield(&[0x80, 0]), &mut out);
        assert!(out.as_slice().is_empty(), "{:?}", out.as_slice());
        assert!(p.peer_has(0) && !p.peer_has(1));
        p.on_message(&Message::HaveNone, &mut out);
        assert!(!p.peer_has(0));
        assert_eq!(p.stats().bitfields_replaced, 2);
    }

    #[test]
    fn fast_messages_without_fast_disconnect() {
        use crate::wire::id;
        for (msg, mid) in [
            (Message::HaveAll, id::HAVE_ALL),
            (Message::HaveNone, id::HAVE_NONE),
            (Message::Suggest(1), id::SUGGEST),
            (Message::AllowedFast(1), id::ALLOWED_FAST),
            (Message::Reject(blk(0, 0, 1)), id::REJECT),
        ] {
            let mut p = Peer::new(cfg(), true, false);
            let mut out = Actions::new();
            p.on_message(&msg, &mut out);
            assert_eq!(
                out.as_slice(),
                [Action::Disconnect(DisconnectReason::FastNotNegotiated(mid))]
            );
            // With FAST they are fine (a seed ignores SUGGEST/ALLOWED FAST/REJECT).
            let mut p = Peer::new(cfg(), false, true);
            p.on_message(&msg, out.tap_clear());
            assert!(out.is_empty(), "{msg:?}");
        }
    }

    #[test]
    fn interest_and_seed_rules() {
        let mut p = Peer::new(cfg(), true, true);
        let mut out = Actions::new();
        p.set_interested(true, &mut out);
        assert!(out.is_empty(), "a seed never sends INTERESTED");
        assert!(!p.am_interested());
        p.on_message(&Message::Interested, &mut out);
        assert!(p.is_interested());
        p.on_message(&Message::NotInterested, &mut out);
        assert!(!p.is_interested());
        p.on_message(&Message::Unchoke, &mut out);
        assert!(!p.peer_choking());
        p.on_message(&Message::Choke, &mut out);
        assert!(p.peer_choking());
        assert!(out.is_empty());

        // Downloading: interest goes out, and is withdrawn on completion.
        let mut p = Peer::new(cfg(), false, true);
        p.on_message(&Message::Bitfield(&[0x80, 0]), &mut out);
        p.set_interested(true, &mut out);
        assert_eq!(sends(&mut out), [OwnedMessage::Interested]);
        // HAVE suppression: the peer has piece 0.
        p.on_we_have(0, false, &mut out);
        assert!(out.is_empty());
        p.on_we_have(1, true, &mut out);
        assert_eq!(
            sends(&mut out),
            [OwnedMessage::Have(1), OwnedMessage::NotInterested]
        );
        assert!(p.we_are_seed());
    }

    #[test]
    fn ext_handshake_and_ignored_messages() {
        let (mut p, mut out) = serving(true);
        let hs = ExtHandshake {
            reqq: Some(500),
            v: Some("x".into()),
            ..Default::default()
        };
        let payload = hs.encode();
        p.on_message(
            &Message::Extended {
                id: 0,
                payload: &payload,
            },
            &mut out,
        );
        assert_eq!(p.ext_handshake(), Some(&hs));
        // Garbage handshakes, other extended ids, PORT, unknown ids, unsolicited PIECE: ignored.
        p.on_message(
            &Message::Extended {
                id: 0,
                payload: b"garbage",
            },
            &mut out,
        );
        p.on_message(
            &Message::Extended {
                id: 3,
                payload: b"x",
            },
            &mut out,
        );
        p.on_message(&Message::Port(1), &mut out);
        p.on_message(
            &Message::Unknown {
                id: 99,
                payload: b"",
            },
            &mut out,
        );
        p.on_message(
            &Message::Piece {
                piece: 0,
                begin: 0,
                data: b"zz",
            },
            &mut out,
        );
        p.on_message(&Message::KeepAlive, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.ext_handshake(), Some(&hs));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request(BlockRef),
        Cancel(BlockRef),
        Interested(bool),
        Choke(bool),
        Serve,
        Refuse,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Mostly valid blocks, some invalid ones, drawn from a small space so CANCELs hit.
        let block = (
            0u32..12,
            prop_oneof![Just(0u32), Just(16384), Just(49152), Just(65535)],
            prop_oneof![Just(0u32), Just(1), Just(16384), Just(16385)],
        )
            .prop_map(|(piece, begin, len)| BlockRef { piece, begin, len });
        prop_oneof![
            6 => block.clone().prop_map(Op::Request),
            2 => block.prop_map(Op::Cancel),
            1 => any::<bool>().prop_map(Op::Interested),
            1 => any::<bool>().prop_map(Op::Choke),
            3 => Just(Op::Serve),
            1 => Just(Op::Refuse),
        ]
    }

    proptest::proptest! {
        /// Whatever the peer and the choker do: the queue stays within `reqq`, only valid
        /// blocks are handed out, and every request is accounted for exactly once (served,
        /// rejected, cancelled, or still pending). With FAST each refusal or cancel sends one
        /// REJECT; without FAST none is sent.
        #[test]
        fn every_request_is_answered_once(fast: bool, ops in proptest::collection::vec(op(), 0..300)) {
            let mut p = Peer::new(cfg(), true, fast);
            let mut out = Actions::new();
            p.start(&mut out);
            out.clear();
            let mut rejects_sent = 0u64;
            for op in ops {
                match op {
                    Op::Request(b) => p.on_message(&Message::Request(b), &mut out),
                    Op::Cancel(b) => p.on_message(&Message::Cancel(b), &mut out),
                    Op::Interested(i) => p.on_message(
                        if i { &Message::Interested } else { &Message::NotInterested },
                        &mut out,
                    ),
                    Op::Choke(c) => p.set_choked(c, &mut out),
                    Op::Serve => {
                        if let Some(b) = p.take_request() {
                            proptest::prop_assert!(cfg().check_block(&b).is_ok());
                            p.on_served(b);
                        }
                    }
                    Op::Refuse => {
                        if let Some(b) = p.take_request() {
                            p.refuse(b, &mut out);
                        }
                    }
                }
                for a in out.drain() {
                    match a {
                        Action::Send(OwnedMessage::Reject(_)) => rejects_sent += 1,
                        Action::Send(OwnedMessage::Interested) => {
                            proptest::prop_assert!(false, "a seed sent INTERESTED")
                        }
                        _ => {}
                    }
                }
                proptest::prop_assert!(p.queued() as u64 <= u64::from(cfg().reqq));
                let st = p.stats();
                proptest::prop_assert_eq!(
                    st.requests_received,
                    st.requests_served + st.requests_rejected + st.requests_cancelled
                        + p.queued() as u64 + u64::from(p.in_flight())
                );
                let expect = if fast { st.requests_rejected + st.requests_cancelled } else { 0 };
                proptest::prop_assert_eq!(rejects_sent, expect);
            }
        }
    }

    trait TapClear {
        fn tap_clear(&mut self) -> &mut Self;
    }
    impl TapClear for Actions {
        fn tap_clear(&mut self) -> &mut Self {
            self.clear();
            self
        }
    }
}
