//! The download side of the data plane: one torrent's piece picker, piece hashing and writes,
//! on the torrent's home shard.
//!
//! Ownership: a torrent being downloaded has one home shard (`DownloadShared::home_shard`).
//! That shard owns its [`Picker`], the hash state of every piece in progress and the
//! connections the download uses (the dialer routes that torrent's dials there). Nothing of it
//! is shared: no lock on the per-block path. Other shards serve the torrent's pieces we have
//! (an atomic bitfield in the registry) to the peers that connect to them, and send those peers
//! HAVE from their 1 s tick.
//!
//! Anatomy of a received block:
//! 1. The reader decodes a PIECE answering one of our requests (`Received::block`).
//! 2. [`on_block`] asks the picker whether it wants it (duplicates and unrequested data are
//!    counted as wasted and dropped), sends CANCEL to the other peers that had it requested
//!    (endgame), advances the piece's SHA-1 when the block is the next one in order, copies
//!    the payload into a pool buffer (waiting for one is backpressure on that peer: its reader
//!    stops) and starts a `write_fixed` through the shard's storage ring. The buffer returns to
//!    the pool when the write completes.
//! 3. When every block of a piece has been received and written, [`finish_piece`] hashes
//!    what was not hashed in order by reading it back (the page cache), compares the digest
//!    with the metainfo's, and either marks the piece had (registry bits, HAVE to the peers
//!    lacking it) or gives it back to the picker and counts a strike against its contributors.
//!    Repeat offenders are banned: closed and never connected again.
//!
//! Memory: pool buffers (the write path's only block data), one SHA-1 state (≈ 100 bytes) and a
//! contributor list per piece in progress (bounded by the picker's partial pieces), the
//! picker's O(pieces) arrays. Nothing grows with the torrent's size beyond O(pieces) integers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uring_bt_proto::peer::{Peer, PeerEvent, MAX_OUR_REQUESTS};
use uring_bt_proto::picker::{BlockOutcome, PeerHas, Picker, PickerConfig};
use uring_bt_proto::session::CloseReason;
use uring_bt_proto::wire::{BlockRef, BLOCK_SIZE};
use uring_bt_storage::pool::PoolBuf;
use uring_bt_storage::sha1x16::{self, Sha1State, LANES};
use uring_bt_storage::store::{BlockStore, TorrentId};

use crate::server::registry::{PeerRecord, Torrent};
use crate::server::state::Shard;

/// Settings of the download side (part of the shard's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadConfig {
    /// A peer that sent no block we asked for in this long, with requests outstanding, is
    /// snubbing us: its requests go back to the picker.
    pub snub_timeout: Duration,
    /// Requests kept outstanding at a peer, at least (a new or slow peer)...
    pub min_pipeline: u32,
    /// ...and at most (also bounded by the peer's `reqq` and [`MAX_OUR_REQUESTS`]).
    pub max_pipeline: u32,
    /// Seconds of a peer's measured rate kept in flight.
    pub pipeline_secs: u32,
    /// Download rate limit of this shard in bytes per second (`None`: unlimited).
    pub max_rate: Option<u64>,
    /// Hash-check points after which a peer is banned: a failed piece it sent alone counts 2,
    /// one it shared with others 1.
    pub ban_points: u32,
    /// Stripe the picks over sixteen pieces and hash their blocks sixteen at once (the
    /// sixteen-lane SHA-1; `--hash-lanes`).
    pub hash_lanes: bool,
    /// Receive PIECE payloads straight into pool buffers with vectored reads
    /// (`conn::read_scatter`; `--recv-path direct`), not copied from the receive buffer.
    pub recv_direct: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            snub_timeout: Duration::from_secs(20),
            min_pipeline: 16,
            max_pipeline: MAX_OUR_REQUESTS as u32,
            pipeline_secs: 1,
            max_rate: None,
            ban_points: 4,
            hash_lanes: false,
            recv_direct: false,
        }
    }
}

/// `reqq` assumed for a peer that does not say (libtorrent's default when absent is 250).
const DEFAULT_PEER_REQQ: u32 = 250;

/// What the home shard keeps per connection of a downloading torrent.
#[derive(Debug, Default, Clone)]
pub struct SlotDownload {
    /// Payload bytes of ours received from the peer, and the value at the last tick.
    pub downloaded: u64,
    pub downloaded_at_tick: u64,
    /// Bytes per second, smoothed over ticks.
    pub rate: f64,
    /// What the picker counted of the peer's pieces.
    pub counted: Counted,
    /// Pieces that passed with blocks from this peer, failed pieces it contributed to, and its
    /// ban points.
    pub pieces: u32,
    pub hash_failures: u32,
    pub points: u32,
    /// Flushed into the torrent's `PeerRecord` already.
    pub flushed: (u64, u32, u32),
}

/// The peer's availability as the picker counted it (undone when the peer leaves).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Counted {
    #[default]
    Nothing,
    /// Its bitfield (and HAVEs since) are in the picker's counts: the peer's own bits say which.
    Bits,
    Seed,
}

/// One piece being received.
struct PieceState {
    sha: Sha1State,
    /// Bytes hashed from the start of the piece (blocks that arrived in order).
    hashed: u32,
    /// End of the blocks that arrived in order, or came early and joined them once the gap
    /// filled: hashed, or staged to be hashed (`hashed <= staged_to`).
    staged_to: u32,
    /// The digest, once the last block was hashed in order.
    digest: Option<[u8; 20]>,
    /// A block after a gap was written unhashed: later blocks after the gap are written at
    /// once too (the hash from disk at the piece's end takes them).
    broken: bool,
    /// Writes started and not completed, and blocks staged (their write starts once hashed).
    writes: u32,
    /// Every block received.
    done: bool,
    /// The check runs (or ran).
    finishing: bool,
    /// A write failed: the piece is lost (given back to the picker, no peer blamed).
    write_failed: bool,
    /// Slot keys that sent blocks of it.
    contributors: Vec<u32>,
}

impl PieceState {
    fn new() -> Self {
        PieceState {
            sha: Sha1State::new(),
            hashed: 0,
            staged_to: 0,
            digest: None,
            broken: false,
            writes: 0,
            done: false,
            finishing: false,
            write_failed: false,
            contributors: Vec::new(),
        }
    }

    /// Hashes `data`, the block at `self.hashed` of a piece of `plen` bytes.
    fn hash_next(&mut self, data: &[u8], plen: u32) {
        let end = self.hashed + data.len() as u32;
        if end == plen {
            self.digest = Some(self.sha.finish(data));
        } else {
            // Every block but a piece's last is BLOCK_SIZE long, a multiple of 64.
            self.sha.update(data);
        }
        self.hashed = end;
    }
}

/// A block in its pool buffer, waiting to be hashed: together with blocks of fifteen other
/// pieces (the sixteen-lane SHA-1), or, when it came before a gap in its piece, until the gap
/// fills (peers send blocks out of order, e.g. as their disk reads complete). Its write starts
/// once it is hashed, or once it waited `GAP_WAIT` for its gap (then its piece is hashed from
/// disk at its end).
struct Staged {
    piece: u32,
    begin: u32,
    buf: PoolBuf,
    at: Instant,
}

/// Most blocks staged per download (also at most a quarter of the shard's pool).
pub const MAX_STAGED: usize = 64;
/// A staged block waits at most about this long for fifteen others...
const STAGE_WAIT: Duration = Duration::from_millis(2);
/// ...and one that came before a gap in its piece at most about this long for the gap (the
/// missing blocks were requested before it, and are usually on the wire).
const GAP_WAIT: Duration = Duration::from_millis(20);

/// A block ready to be written (hashed, or to be hashed from disk), held until the blocks
/// right after it are ready too, so that a run of them is one vectored write.
struct Held {
    piece: u32,
    begin: u32,
    buf: PoolBuf,
    at: Instant,
}

/// Most blocks in one vectored write (256 KiB). A buffered write costs mostly per call: on
/// this project's test machine fio's io_uring writes of 1 GiB took 0.52 s of system time in
/// 16 KiB writes and 0.23 s in 256 KiB writes.
pub const WRITE_RUN: usize = 16;
/// Most blocks held per download (also at most a quarter of the shard's pool).
pub const MAX_HELD: usize = 64;
/// A held block waits at most about this long for its neighbours.
const HOLD_WAIT: Duration = Duration::from_millis(10);

/// Contiguous blocks of one piece to write at once: (piece, begin, buffers in order).
type Run = (u32, u32, Vec<PoolBuf>);

/// One torrent's download on its home shard.
pub struct Download {
    pub torrent: Arc<Torrent>,
    pub tid: TorrentId,
    pub picker: Picker,
    pieces: HashMap<u32, PieceState>,
    /// Rate limit: bytes we may still request, refilled from the clock.
    tokens: f64,
    refilled: Instant,
    /// The download stopped (complete, or a fatal storage error).
    stopped: bool,
    scratch: Vec<BlockRef>,
    /// Blocks waiting for the sixteen-lane hash or for a gap of their piece to fill
    /// ([`Staged`]), oldest first. At most `MAX_STAGED.min(pool / 4)`.
    stage: Vec<Staged>,
    /// The CPU hashes sixteen lanes at once, and the picker stripes sixteen pieces.
    lanes: bool,
    /// Blocks waiting for their neighbours to be written with them ([`Held`]). At most
    /// `MAX_HELD.min(pool / 4)`.
    held: Vec<Held>,
    /// A flush of the stage and the hold is scheduled.
    flush_armed: bool,
    /// Writes started (one per run) and the blocks they wrote: the `writing` line at
    /// completion (debug level).
    pub write_ops: u64,
    pub written_blocks: u64,
    /// Blocks hashed sixteen at once, blocks hashed one by one as they arrived (or after
    /// waiting in the stage), and bytes read back to hash (out of order): the `hashing` line
    /// at completion (debug level).
    pub hashed_lanes: u64,
    pub hashed_single: u64,
    pub read_back: u64,
    /// Blocks whose payload the reader received straight into a pool buffer, and blocks
    /// copied there from the receive buffer: the `receiving` line at completion (debug level).
    pub received_in_place: u64,
    pub received_copied: u64,
}

impl Download {
    /// A download of `torrent` (stored as `tid` in this shard's ring), from what it has.
    /// With `lanes`, picks are striped over sixteen pieces and their blocks hashed sixteen at
    /// once ([`DownloadConfig::hash_lanes`]).
    pub fn new(
        torrent: Arc<Torrent>,
        tid: TorrentId,
        seed: u64,
        lanes: bool,
    ) -> Result<Self, String> {
        let layout = &torrent.layout;
        let n = layout.num_pieces();
        let last = if n == 0 { 1 } else { layout.piece_size(n - 1) };
        let mut cfg = PickerConfig::new(n, layout.piece_length(), last);
        if lanes {
            // Blocks of sixteen pieces interleaved: hashed sixteen at a time as they arrive.
            cfg.stripe = LANES as u32;
            cfg.max_partial = cfg.max_partial.max(8 * LANES as u32);
        }
        let mut picker =
            Picker::new(cfg, &torrent.have.to_bytes(), seed).map_err(|e| e.to_string())?;
        // Pieces in progress at the last stop: their written blocks are not fetched again (a
        // restarted shard finds none: what it had in flight is fetched again).
        if let Some(d) = &torrent.download {
            let restored = d.partials.lock().map(|mut p| std::mem::take(&mut *p));
            let mut bytes = 0u64;
            for (piece, bits) in restored.unwrap_or_default() {
                if picker.restore_partial(piece, &bits) {
                    let blocks = picker.blocks_in_piece(piece);
                    for i in 0..blocks {
                        if bits
                            .get((i / 8) as usize)
                            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
                        {
                            bytes += picker.block(piece, i).map_or(0, |b| u64::from(b.len));
                        }
                    }
                }
            }
            d.restored.fetch_add(bytes, Relaxed);
        }
        Ok(Download {
            torrent,
            tid,
            picker,
            pieces: HashMap::new(),
            tokens: 0.0,
            refilled: Instant::now(),
            stopped: false,
            scratch: Vec::with_capacity(MAX_OUR_REQUESTS),
            stage: Vec::new(),
            lanes,
            held: Vec::new(),
            flush_armed: false,
            write_ops: 0,
            written_blocks: 0,
            hashed_lanes: 0,
            hashed_single: 0,
            read_back: 0,
            received_in_place: 0,
            received_copied: 0,
        })
    }

    /// Blocks the rate limit lets us request now (refilling from the clock; at most one
    /// second's worth saved up).
    fn allowance(&mut self, limit: Option<u64>, now: Instant) -> usize {
        let Some(rate) = limit else {
            return usize::MAX;
        };
        let rate = rate as f64;
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * rate).min(rate.max(f64::from(BLOCK_SIZE)));
        (self.tokens / f64::from(BLOCK_SIZE)) as usize
    }
}

impl Download {
    /// Block `b` (in `buf`) was accepted: hash it now, or stage it (for the sixteen-lane hash,
    /// or, when it came before a gap, until the gap fills). Moves the blocks whose write can
    /// start (hashed, or not to be hashed in order) to `out`.
    fn hash_or_stage(
        &mut self,
        b: BlockRef,
        buf: PoolBuf,
        pool_capacity: usize,
        out: &mut Vec<(u32, u32, PoolBuf)>,
    ) {
        let bound = MAX_STAGED.min(pool_capacity / 4);
        let Some(ps) = self.pieces.get_mut(&b.piece) else {
            out.push((b.piece, b.begin, buf));
            return;
        };
        let in_order = ps.staged_to == b.begin;
        if in_order {
            ps.staged_to += b.len;
            // Blocks of this piece that came early and waited for this one follow it.
            loop {
                let to = ps.staged_to;
                match self
                    .stage
                    .iter()
                    .find(|st| st.piece == b.piece && st.begin == to)
                {
                    Some(st) => ps.staged_to += st.buf.block_len() as u32,
                    None => break,
                }
            }
        } else if ps.broken || !self.make_room(bound, out) {
            // Early, and no room to wait (or its chain is broken already): written now, hashed
            // from disk at the piece's end.
            if let Some(ps) = self.pieces.get_mut(&b.piece) {
                ps.broken = true;
            }
            out.push((b.piece, b.begin, buf));
            return;
        }
        self.stage.push(Staged {
            piece: b.piece,
            begin: b.begin,
            buf,
            at: Instant::now(),
        });
        if in_order {
            if self.lanes && b.len == BLOCK_SIZE {
                while self.hash_lanes(out) {}
            } else {
                // No lanes, or a piece's short last block: this piece's blocks in order now.
                self.hash_in_order(b.piece, out);
            }
        }
        // Over the bound (an in-order block always enters): the pieces whose early blocks
        // waited longest are flushed (hashed from disk at their end).
        while !self.make_room(bound + 1, out) {
            let oldest = self.stage[0].piece;
            self.flush_stage(oldest, out);
        }
    }

    /// Makes the stage shorter than `bound` by hashing one by one blocks waiting for lanes
    /// (nothing is lost: they are in order); returns whether it is.
    fn make_room(&mut self, bound: usize, out: &mut Vec<(u32, u32, PoolBuf)>) -> bool {
        while self.stage.len() >= bound {
            let Some(i) = self.stage.iter().position(|st| self.waits_for_lanes(st)) else {
                return false;
            };
            let p = self.stage[i].piece;
            let before = self.stage.len();
            self.hash_in_order(p, out);
            if self.stage.len() == before {
                // Cannot happen (a piece's in-order run is staged from its hashed end); never
                // loop on it.
                return false;
            }
        }
        true
    }

    /// A staged block in its piece's in-order run (waiting for fifteen other pieces), not one
    /// that came before a gap.
    fn waits_for_lanes(&self, st: &Staged) -> bool {
        self.pieces
            .get(&st.piece)
            .is_some_and(|ps| st.begin < ps.staged_to)
    }

    /// Index in the stage of `piece`'s block that continues its hash, if staged.
    fn next_to_hash(&self, piece: u32) -> Option<usize> {
        let hashed = self.pieces.get(&piece)?.hashed;
        self.stage
            .iter()
            .position(|st| st.piece == piece && st.begin == hashed)
    }

    /// If sixteen pieces have the block that continues their hash staged, hashes those in one
    /// pass of the sixteen-lane SHA-1 and moves them to `out`; returns whether it did.
    fn hash_lanes(&mut self, out: &mut Vec<(u32, u32, PoolBuf)>) -> bool {
        let mut pick = [0usize; LANES];
        let mut n = 0;
        for (i, st) in self.stage.iter().enumerate() {
            if n == LANES {
                break;
            }
            // A full block continuing its piece's hash (a piece's last block, when full, too:
            // the digest is finished over nothing at the piece's end).
            let continues = st.buf.block_len() == BLOCK_SIZE as usize
                && self
                    .pieces
                    .get(&st.piece)
                    .is_some_and(|ps| ps.hashed == st.begin);
            if continues && !pick[..n].iter().any(|&j| self.stage[j].piece == st.piece) {
                pick[n] = i;
                n += 1;
            }
        }
        if n < LANES {
            return false;
        }
        let mut states = [Sha1State::new(); LANES];
        for (st, &i) in states.iter_mut().zip(pick.iter()) {
            let Some(ps) = self.pieces.get(&self.stage[i].piece) else {
                return false;
            };
            *st = ps.sha;
        }
        {
            let data: [&[u8]; LANES] = std::array::from_fn(|k| self.stage[pick[k]].buf.block());
            sha1x16::compress_lanes(&mut states, &data);
        }
        self.hashed_lanes += LANES as u64;
        for (st, &i) in states.iter().zip(pick.iter()) {
            let piece = self.stage[i].piece;
            if let Some(ps) = self.pieces.get_mut(&piece) {
                ps.sha = *st;
                ps.hashed += BLOCK_SIZE;
            }
        }
        // Out of the stage, highest index first (pick is ascending).
        for &i in pick.iter().rev() {
            let st = self.stage.remove(i);
            out.push((st.piece, st.begin, st.buf));
        }
        true
    }

    /// Hashes one by one, in block order, the staged blocks of `piece` that continue its hash,
    /// and moves them to `out`; blocks after a gap stay.
    fn hash_in_order(&mut self, piece: u32, out: &mut Vec<(u32, u32, PoolBuf)>) {
        let plen = self.picker.piece_len(piece);
        while let Some(i) = self.next_to_hash(piece) {
            let st = self.stage.remove(i);
            if let Some(ps) = self.pieces.get_mut(&piece) {
                ps.hash_next(st.buf.block(), plen);
                self.hashed_single += 1;
            }
            out.push((st.piece, st.begin, st.buf));
        }
    }

    /// Empties the stage of `piece` into `out`: the blocks that continue its hash are hashed
    /// one by one; blocks still waiting for a gap are written unhashed (the piece is then
    /// hashed from disk at its end).
    fn flush_stage(&mut self, piece: u32, out: &mut Vec<(u32, u32, PoolBuf)>) {
        self.hash_in_order(piece, out);
        let mut i = 0;
        while i < self.stage.len() {
            if self.stage[i].piece == piece {
                let st = self.stage.remove(i);
                if let Some(ps) = self.pieces.get_mut(&piece) {
                    ps.broken = true;
                }
                out.push((st.piece, st.begin, st.buf));
            } else {
                i += 1;
            }
        }
    }

    /// Hashes one by one the staged blocks that waited `STAGE_WAIT` or more for fifteen other
    /// pieces, and empties the stage of pieces with a block that waited `GAP_WAIT` or more
    /// for its gap, into `out`. Returns whether some are left.
    fn flush_stale(&mut self, now: Instant, out: &mut Vec<(u32, u32, PoolBuf)>) -> bool {
        let mut lanes_stale = Vec::new();
        let mut gap_stale = Vec::new();
        for st in &self.stage {
            let age = now.saturating_duration_since(st.at);
            let in_order = self.waits_for_lanes(st);
            if in_order && age >= STAGE_WAIT {
                lanes_stale.push(st.piece);
            } else if !in_order && age >= GAP_WAIT {
                gap_stale.push(st.piece);
            }
        }
        for p in lanes_stale {
            self.hash_in_order(p, out);
        }
        for p in gap_stale {
            self.flush_stage(p, out);
        }
        !self.stage.is_empty()
    }
}

impl Download {
    /// Takes the blocks of `ready` into the hold and moves the runs to write now to `runs`:
    /// `WRITE_RUN` contiguous blocks of a piece, every held block of a piece whose blocks have
    /// all arrived (or whose write failed), and, over the bound, every held block of the piece
    /// held longest.
    fn hold(&mut self, ready: Vec<(u32, u32, PoolBuf)>, pool_capacity: usize, runs: &mut Vec<Run>) {
        let now = Instant::now();
        let mut touched: Vec<u32> = Vec::new();
        for (piece, begin, buf) in ready {
            if !touched.contains(&piece) {
                touched.push(piece);
            }
            self.held.push(Held {
                piece,
                begin,
                buf,
                at: now,
            });
        }
        for p in touched {
            let all = self
                .pieces
                .get(&p)
                .is_none_or(|ps| ps.done || ps.write_failed);
            self.take_runs(p, all, runs);
        }
        let bound = MAX_HELD.min(pool_capacity / 4);
        while self.held.len() > bound {
            let Some(oldest) = self.held.iter().min_by_key(|h| h.at).map(|h| h.piece) else {
                break;
            };
            self.take_runs(oldest, true, runs);
        }
    }

    /// Moves `piece`'s held blocks to `runs` as runs of contiguous blocks (at most `WRITE_RUN`
    /// each): the full runs, or with `all` every one.
    fn take_runs(&mut self, piece: u32, all: bool, runs: &mut Vec<Run>) {
        let mut mine = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].piece == piece {
                mine.push(self.held.swap_remove(i));
            } else {
                i += 1;
            }
        }
        mine.sort_unstable_by_key(|h| h.begin);
        let mut group: Vec<Held> = Vec::new();
        let mut groups: Vec<Vec<Held>> = Vec::new();
        for h in mine {
            let follows = group
                .last()
                .is_some_and(|l| l.begin + l.buf.block_len() as u32 == h.begin);
            if (!follows || group.len() == WRITE_RUN) && !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
            group.push(h);
        }
        if !group.is_empty() {
            groups.push(group);
        }
        for g in groups {
            if all || g.len() == WRITE_RUN {
                let begin = g[0].begin;
                runs.push((piece, begin, g.into_iter().map(|h| h.buf).collect()));
            } else {
                self.held.extend(g);
            }
        }
    }

    /// Moves to `runs` every held block of the pieces with one held `HOLD_WAIT` or more.
    /// Returns whether some are left.
    fn write_stale(&mut self, now: Instant, runs: &mut Vec<Run>) -> bool {
        let stale: Vec<u32> = self
            .held
            .iter()
            .filter(|h| now.saturating_duration_since(h.at) >= HOLD_WAIT)
            .map(|h| h.piece)
            .collect();
        for p in stale {
            self.take_runs(p, true, runs);
        }
        !self.held.is_empty()
    }
}

/// A peer's pieces as the picker asks them.
struct PeerView<'a>(&'a Peer);

impl PeerHas for PeerView<'_> {
    fn has(&self, piece: u32) -> bool {
        self.0.peer_has(piece)
    }
    fn is_seed(&self) -> bool {
        self.0.peer_is_seed()
    }
}

/// While the peer chokes us: only the pieces it allowed fast (BEP 6) that it has.
struct AllowedFastView<'a>(&'a Peer);

impl PeerHas for AllowedFastView<'_> {
    fn has(&self, piece: u32) -> bool {
        self.0.peer_has(piece) && self.0.may_request(piece)
    }
    fn is_seed(&self) -> bool {
        false
    }
}

/// The download of torrent `t` if this shard is its home and it is still active.
fn with_download<R>(shard: &Shard, t: usize, f: impl FnOnce(&mut Download) -> R) -> Option<R> {
    let mut d = shard.downloads.borrow_mut();
    d.get_mut(&t).map(f)
}

/// After the session decoded messages of connection `key` (torrent `t`): feed what the peer
/// told us to the picker, update our interest, and fill the request pipeline.
pub fn on_events(shard: &Shard, key: usize, t: usize) {
    let mut events = Vec::new();
    {
        let mut peers = shard.peers.borrow_mut();
        let Some(slot) = peers.get_mut(key) else {
            return;
        };
        slot.session.take_events(&mut events);
    }
    let mut downloads = shard.downloads.borrow_mut();
    let Some(dl) = downloads.get_mut(&t) else {
        return;
    };
    let mut peers = shard.peers.borrow_mut();
    let Some(slot) = peers.get_mut(key) else {
        return;
    };
    let pk = key as u32;
    for e in events.drain(..) {
        match e {
            PeerEvent::Have(p) => {
                if slot.dl.counted == Counted::Nothing {
                    slot.dl.counted = Counted::Bits;
                }
                dl.picker.inc(p);
            }
            PeerEvent::Bitfield => {
                if let Some(bits) = slot.session.peer().and_then(|p| p.peer_bits()) {
                    dl.picker.inc_bitfield(bits);
                    slot.dl.counted = Counted::Bits;
                }
            }
            PeerEvent::Seed => {
                dl.picker.inc_seed();
                slot.dl.counted = Counted::Seed;
            }
            PeerEvent::Lost { bits, seed } => {
                if let Some(bits) = bits {
                    dl.picker.dec_bitfield(&bits);
                }
                if seed {
                    dl.picker.dec_seed();
                }
                slot.dl.counted = Counted::Nothing;
            }
            PeerEvent::Abandoned(b) => {
                dl.picker.on_abandon(pk, b);
            }
            PeerEvent::Unrequested(b) => {
                if let Some(d) = &dl.torrent.download {
                    d.wasted.fetch_add(u64::from(b.len), Relaxed);
                    d.downloaded.fetch_add(u64::from(b.len), Relaxed);
                }
            }
            PeerEvent::Unchoked
            | PeerEvent::Choked
            | PeerEvent::Block(_)
            | PeerEvent::AllowedFast(_) => {}
        }
    }
    if dl.stopped {
        return;
    }
    let interesting = slot
        .session
        .peer()
        .is_some_and(|p| dl.picker.is_interesting(&PeerView(p)));
    if slot.session.set_interested(interesting) {
        slot.wake.notify_one();
    }
    fill_slot(shard, dl, key, slot);
}

/// A pipeline of N requests is refilled when N / this many are free ([`fill_slot`]).
const REFILL_FRACTION: usize = 8;

/// Fills connection `key`'s request pipeline from the picker (when we are interested and the
/// peer unchokes us), within the rate limit.
fn fill_slot(
    shard: &Shard,
    dl: &mut Download,
    key: usize,
    slot: &mut crate::server::state::PeerSlot,
) {
    if dl.stopped || slot.closing {
        return;
    }
    let cfg = shard.cfg.download;
    let Some(peer) = slot.session.peer() else {
        return;
    };
    if !peer.am_interested() || (peer.peer_choking() && !peer.has_allowed_fast()) {
        return;
    }
    let reqq = peer
        .ext_handshake()
        .and_then(|h| h.reqq)
        .unwrap_or(DEFAULT_PEER_REQQ)
        .max(1);
    let by_rate = (slot.dl.rate * f64::from(cfg.pipeline_secs) / f64::from(BLOCK_SIZE)) as u32;
    let target = by_rate
        .max(cfg.min_pipeline)
        .min(cfg.max_pipeline)
        .min(reqq)
        .min(MAX_OUR_REQUESTS as u32) as usize;
    let have = peer.our_requests();
    // Requests go out in batches: a pipeline is refilled once an eighth of it is free (or it is
    // empty), not after every block, so that downloading sends one small write per batch of
    // blocks instead of one per block received, each of which woke the seeder.
    let batch = (target / REFILL_FRACTION).max(1);
    if have >= target || (have > 0 && target - have < batch) {
        return;
    }
    let allowed = dl.allowance(cfg.max_rate, Instant::now());
    let want = (target - have).min(allowed);
    if want == 0 {
        return;
    }
    let mut out = std::mem::take(&mut dl.scratch);
    out.clear();
    if peer.peer_choking() {
        // BEP 6: a choked peer still answers requests for the pieces it allowed fast.
        dl.picker
            .pick(key as u32, &AllowedFastView(peer), want, &mut out);
    } else {
        dl.picker.pick(key as u32, &PeerView(peer), want, &mut out);
    }
    let sent = slot.session.request(&out);
    for b in &out[sent..] {
        dl.picker.on_abandon(key as u32, *b);
    }
    if cfg.max_rate.is_some() {
        dl.tokens -= (sent as f64) * f64::from(BLOCK_SIZE);
    }
    if sent > 0 {
        slot.wake.notify_one();
    }
    dl.scratch = out;
}

/// Fills every connection of torrent `t` (after blocks were freed: a peer left, a piece
/// failed, a tick).
pub fn fill_all(shard: &Shard, t: usize) {
    let mut downloads = shard.downloads.borrow_mut();
    let Some(dl) = downloads.get_mut(&t) else {
        return;
    };
    let mut peers = shard.peers.borrow_mut();
    for (key, slot) in peers.iter_mut() {
        if slot.torrent == Some(t) {
            fill_slot(shard, dl, key, slot);
        }
    }
}

/// The PIECE for our request `b` arrived on connection `key` with `data`. Returns when the data
/// is copied into a pool buffer (waiting for one is backpressure on the peer: its reader
/// stops) and hashed or staged, and the writes that could start have started.
pub async fn on_block(shard: &Rc<Shard>, key: usize, t: usize, b: BlockRef, data: &[u8]) {
    let mut buf = match shard.pool.try_take() {
        Some(buf) => buf,
        None => shard.pool.take().await,
    };
    buf.fill_block(data);
    accept_block(shard, key, t, b, buf, false);
}

/// As [`on_block`] for a payload the reader received straight into the pool buffer `buf`
/// (`conn::read_scatter`): no copy.
pub fn on_block_buf(shard: &Rc<Shard>, key: usize, t: usize, b: BlockRef, buf: PoolBuf) {
    accept_block(shard, key, t, b, buf, true);
}

/// The block `b` of connection `key`, its data in `buf`: accounted, given to the picker, then
/// hashed or staged, and the writes that could start started. `in_place`: the reader received
/// it straight into `buf` (counted for the `receiving` line).
fn accept_block(
    shard: &Rc<Shard>,
    key: usize,
    t: usize,
    b: BlockRef,
    buf: PoolBuf,
    in_place: bool,
) {
    let len = u64::from(b.len);
    let accepted = with_download(shard, t, |dl| {
        if in_place {
            dl.received_in_place += 1;
        } else {
            dl.received_copied += 1;
        }
        if let Some(d) = &dl.torrent.download {
            d.downloaded.fetch_add(len, Relaxed);
        }
        match dl.picker.on_block(key as u32, b) {
            BlockOutcome::Accepted { cancel, piece_done } => {
                let ps = dl.pieces.entry(b.piece).or_insert_with(PieceState::new);
                ps.writes += 1;
                ps.done |= piece_done;
                if !ps.contributors.contains(&(key as u32)) {
                    ps.contributors.push(key as u32);
                }
                Some((dl.tid, cancel))
            }
            BlockOutcome::NotRequested | BlockOutcome::Duplicate => {
                if let Some(d) = &dl.torrent.download {
                    d.wasted.fetch_add(len, Relaxed);
                }
                None
            }
        }
    })
    .flatten();
    let Some((tid, cancel)) = accepted else {
        return; // the buffer goes back to the pool
    };
    {
        let mut peers = shard.peers.borrow_mut();
        if let Some(slot) = peers.get_mut(key) {
            slot.dl.downloaded += len;
        }
        for k in cancel {
            if let Some(other) = peers.get_mut(k as usize) {
                if other.session.cancel(b) {
                    other.wake.notify_one();
                }
            }
        }
    }
    let mut ready = Vec::new();
    let mut runs = Vec::new();
    let cap = shard.pool.capacity();
    let arm = with_download(shard, t, |dl| {
        dl.hash_or_stage(b, buf, cap, &mut ready);
        dl.hold(ready, cap, &mut runs);
        let busy = !dl.stage.is_empty() || !dl.held.is_empty();
        let arm = busy && !dl.flush_armed;
        dl.flush_armed |= arm;
        arm
    })
    .unwrap_or(false);
    start_writes(shard, t, tid, runs);
    if arm {
        let shard2 = shard.clone();
        crate::server::shard::spawn_task(shard, async move {
            flush_later(&shard2, t).await;
        });
    }
}

/// Hashes the staged blocks of torrent `t` that waited too long (too few pieces arrive at once
/// to fill sixteen lanes: one slow peer, the last pieces) and writes the held blocks that
/// waited too long for their neighbours, until the stage and the hold are empty.
async fn flush_later(shard: &Rc<Shard>, t: usize) {
    loop {
        tokio::time::sleep(STAGE_WAIT).await;
        let mut ready = Vec::new();
        let mut runs = Vec::new();
        let cap = shard.pool.capacity();
        let Some((tid, left)) = with_download(shard, t, |dl| {
            let now = Instant::now();
            dl.flush_stale(now, &mut ready);
            dl.hold(ready, cap, &mut runs);
            dl.write_stale(now, &mut runs);
            let left = !(dl.stage.is_empty() && dl.held.is_empty());
            dl.flush_armed = left;
            (dl.tid, left)
        }) else {
            return;
        };
        start_writes(shard, t, tid, runs);
        if !left {
            return;
        }
    }
}

/// Starts the write of each run through the shard's storage ring (one vectored write per
/// file span); its buffers go back to the pool when the write completes.
fn start_writes(shard: &Rc<Shard>, t: usize, tid: TorrentId, runs: Vec<Run>) {
    if runs.is_empty() {
        return;
    }
    let _ = with_download(shard, t, |dl| {
        dl.write_ops += runs.len() as u64;
        dl.written_blocks += runs.iter().map(|r| r.2.len() as u64).sum::<u64>();
    });
    for (piece, begin, bufs) in runs {
        let shard2 = shard.clone();
        crate::server::shard::spawn_task(shard, async move {
            let n = bufs.len() as u32;
            let (res, bufs) = shard2.store.write_blocks(tid, piece, begin, bufs).await;
            drop(bufs); // back to the pool
            after_write(&shard2, t, piece, n, res.err());
        });
    }
}

/// A write of `n` blocks of piece `piece` completed (`err`: it failed).
fn after_write(
    shard: &Rc<Shard>,
    t: usize,
    piece: u32,
    n: u32,
    err: Option<uring_bt_storage::error::StorageError>,
) {
    let ready = with_download(shard, t, |dl| {
        let ps = dl.pieces.get_mut(&piece)?;
        ps.writes = ps.writes.saturating_sub(n);
        if let Some(e) = &err {
            ps.write_failed = true;
            if let Some(d) = &dl.torrent.download {
                if let Ok(mut f) = d.fatal.lock() {
                    if f.is_none() {
                        *f = Some(format!(
                            "cannot write {}: {e}; the download stopped (verified pieces are kept and served)",
                            dl.torrent.name
                        ));
                        tracing::error!("{}", f.as_deref().unwrap_or_default());
                    }
                }
            }
            dl.stopped = true;
        }
        (ps.writes == 0 && (ps.done || ps.write_failed) && !ps.finishing).then(|| {
            ps.finishing = true;
        })
    })
    .flatten();
    if ready.is_some() {
        let shard2 = shard.clone();
        crate::server::shard::spawn_task(shard, async move {
            finish_piece(&shard2, t, piece).await;
        });
    }
}

/// Every block of `piece` is received and written: hash what was not hashed in order (read
/// back through the ring, from the page cache), then pass or fail the piece.
async fn finish_piece(shard: &Rc<Shard>, t: usize, piece: u32) {
    let Some((tid, state, len, write_failed)) = with_download(shard, t, |dl| {
        let plen = dl.picker.piece_len(piece);
        dl.pieces.get(&piece).map(|ps| {
            (
                dl.tid,
                (ps.sha, ps.hashed, ps.digest),
                plen,
                ps.write_failed,
            )
        })
    })
    .flatten() else {
        return;
    };
    let (mut sha, hashed, mut digest) = state;
    let mut read_failed = write_failed;
    if !write_failed && digest.is_none() && hashed == len {
        digest = Some(sha.finish(&[]));
    }
    if !write_failed && digest.is_none() {
        // Out of order: continue the hash from disk.
        let mut at = hashed;
        while at < len {
            let n = (len - at).min(BLOCK_SIZE);
            let buf = match shard.pool.try_take() {
                Some(b) => b,
                None => shard.pool.take().await,
            };
            let (res, buf) = shard.store.read_block(tid, piece, at, n, buf).await;
            if res.is_err() {
                read_failed = true;
                break;
            }
            let _ = with_download(shard, t, |dl| dl.read_back += u64::from(n));
            if at + n == len {
                digest = Some(sha.finish(buf.block()));
            } else {
                sha.update(buf.block());
            }
            at += n;
        }
    }
    let torrent = match shard.torrent(t) {
        Some(t) => t,
        None => return,
    };
    let Some(state) = with_download(shard, t, |dl| dl.pieces.remove(&piece)).flatten() else {
        return;
    };
    let good = !read_failed
        && digest.is_some_and(|d| torrent.piece_hashes.get(piece as usize) == Some(&d));
    if good {
        piece_passed(shard, t, &torrent, piece, &state.contributors);
    } else {
        piece_failed(shard, t, &torrent, piece, &state.contributors, read_failed);
    }
    fill_all(shard, t);
}

fn piece_passed(shard: &Shard, t: usize, torrent: &Torrent, piece: u32, contributors: &[u32]) {
    let (cancel, complete) = match with_download(shard, t, |dl| {
        let c = dl.picker.piece_passed(piece);
        (c, dl.picker.is_complete())
    }) {
        Some(x) => x,
        None => return,
    };
    torrent.verified.set(piece);
    torrent.have.set(piece);
    let mut peers = shard.peers.borrow_mut();
    for k in contributors {
        if let Some(slot) = peers.get_mut(*k as usize) {
            slot.dl.pieces += 1;
        }
    }
    for k in cancel {
        // Requests of a piece now had: withdraw them (endgame leftovers).
        if let Some(slot) = peers.get_mut(k as usize) {
            if slot.session.cancel_piece(piece) {
                slot.wake.notify_one();
            }
        }
    }
    if complete {
        if let Some(dl) = shard.downloads.borrow_mut().get_mut(&t) {
            dl.stopped = true;
        }
    }
    // HAVE to this shard's peers of the torrent that lack the piece (HAVE suppression in the
    // session); on completion they also lose our interest, and seeds are dropped.
    for (_, slot) in peers.iter_mut() {
        if slot.torrent != Some(t) || slot.closing {
            continue;
        }
        match slot.session.on_we_have(piece, complete) {
            Ok(true) => slot.wake.notify_one(),
            Ok(false) => {}
            Err(reason) => slot.close_for(reason),
        }
    }
    drop(peers);
    if complete {
        on_complete(shard, t, torrent);
    }
}

fn piece_failed(
    shard: &Shard,
    t: usize,
    torrent: &Torrent,
    piece: u32,
    contributors: &[u32],
    storage: bool,
) {
    let _ = with_download(shard, t, |dl| dl.picker.piece_failed(piece));
    let Some(d) = &torrent.download else {
        return;
    };
    if storage {
        // Our disk lost it, not the peers: fetch it again, blame nobody.
        return;
    }
    d.hash_failures.fetch_add(1, Relaxed);
    d.wasted
        .fetch_add(u64::from(torrent.layout.piece_size(piece)), Relaxed);
    let points = if contributors.len() == 1 { 2 } else { 1 };
    let ban_at = shard.cfg.download.ban_points.max(1);
    let mut peers = shard.peers.borrow_mut();
    // A piece shared with a peer that is banned or gone already (banned peers are closed) is
    // most likely that peer's doing: its blocks stay in pieces still in progress when it is
    // banned, and those fail later. Blaming the others for them banned an honest seeder that
    // had shared four such pieces with a liar (CI, 2026-12-04). Nobody gets points for it.
    let known_bad = contributors.len() > 1
        && contributors.iter().any(|&k| {
            peers
                .get(k as usize)
                .is_none_or(|s| s.dl.points >= ban_at || s.closing)
        });
    if known_bad {
        tracing::info!(
            torrent = %torrent.name,
            "piece {piece} failed its hash check ({} contributor(s), one of them banned or gone: no points)",
            contributors.len()
        );
        return;
    }
    for k in contributors {
        let Some(slot) = peers.get_mut(*k as usize) else {
            continue;
        };
        slot.dl.hash_failures += 1;
        slot.dl.points += points;
        tracing::info!(
            torrent = %torrent.name,
            peer = %slot.addr,
            "piece {piece} failed its hash check ({} contributor(s)); {} point(s) of {ban_at}",
            contributors.len(),
            slot.dl.points
        );
        if slot.dl.points >= ban_at {
            if let Ok(mut b) = d.banned.lock() {
                if b.len() < crate::server::registry::MAX_BANNED {
                    b.insert(slot.addr.ip());
                }
            }
            if let Ok(mut recs) = d.peers.lock() {
                if let Some(r) = recs.get_mut(&slot.addr) {
                    r.banned = true;
                } else if recs.len() < crate::server::registry::MAX_PEER_RECORDS {
                    recs.insert(
                        slot.addr,
                        PeerRecord {
                            banned: true,
                            ..PeerRecord::default()
                        },
                    );
                }
            }
            tracing::warn!(torrent = %torrent.name, peer = %slot.addr, "banned: sent data that failed the hash check");
            slot.close_for(CloseReason::Banned);
        }
    }
}

/// The last piece passed: the torrent turns into a seed on every shard.
fn on_complete(shard: &Shard, t: usize, torrent: &Torrent) {
    let Some(d) = &torrent.download else {
        return;
    };
    let _ = with_download(shard, t, |dl| {
        tracing::debug!(
            torrent = %torrent.name,
            "receiving: {} blocks straight into pool buffers, {} copied; hashing: {} blocks sixteen at once, {} one by one, {} bytes read back; writing: {} blocks in {} writes",
            dl.received_in_place,
            dl.received_copied,
            dl.hashed_lanes,
            dl.hashed_single,
            dl.read_back,
            dl.written_blocks,
            dl.write_ops
        );
    });
    if let Some(tid) = shard.tid(t) {
        // Open the files read-only again from their next use.
        shard.store.set_writable(tid, false);
    }
    // What seeding's "changed under the seeder" check compares with from now on.
    torrent.stamp_files();
    d.active.store(false, Ordering::Release);
    if let Ok(mut c) = d.completed_at.lock() {
        c.get_or_insert_with(Instant::now);
    }
}

/// Connection `key` of torrent `t` closed: its requests and availability leave the picker, its
/// figures go to the torrent's record.
pub fn peer_gone(shard: &Shard, key: usize, t: usize, slot: &mut crate::server::state::PeerSlot) {
    flush_record(shard, t, slot);
    let _ = with_download(shard, t, |dl| {
        dl.picker.peer_gone(key as u32);
        match slot.dl.counted {
            Counted::Nothing => {}
            Counted::Seed => dl.picker.dec_seed(),
            Counted::Bits => {
                if let Some(bits) = slot.session.peer().and_then(|p| p.peer_bits()) {
                    dl.picker.dec_bitfield(bits);
                }
            }
        }
    });
}

/// Adds what connection `slot` did since the last flush to its address's record.
fn flush_record(shard: &Shard, t: usize, slot: &mut crate::server::state::PeerSlot) {
    let Some(torrent) = shard.torrent(t) else {
        return;
    };
    let Some(d) = &torrent.download else {
        return;
    };
    let (b, p, f) = slot.dl.flushed;
    if (b, p, f) == (slot.dl.downloaded, slot.dl.pieces, slot.dl.hash_failures)
        && d.peers.lock().is_ok_and(|r| r.contains_key(&slot.addr))
    {
        return;
    }
    if let Ok(mut recs) = d.peers.lock() {
        if !recs.contains_key(&slot.addr) {
            // Only peers that gave us something get a record, and only so many.
            if slot.dl.downloaded == 0 && slot.dl.hash_failures == 0 {
                return;
            }
            if recs.len() >= crate::server::registry::MAX_PEER_RECORDS {
                d.records_dropped.fetch_add(1, Relaxed);
                slot.dl.flushed = (slot.dl.downloaded, slot.dl.pieces, slot.dl.hash_failures);
                return;
            }
        }
        let r: &mut PeerRecord = recs.entry(slot.addr).or_default();
        if r.client.is_empty() {
            r.client = client_name(slot);
        }
        r.downloaded += slot.dl.downloaded - b;
        r.pieces += slot.dl.pieces - p;
        r.hash_failures += slot.dl.hash_failures - f;
    };
    slot.dl.flushed = (slot.dl.downloaded, slot.dl.pieces, slot.dl.hash_failures);
}

/// The peer's client: `v` of its extension handshake, else its peer id's prefix.
fn client_name(slot: &crate::server::state::PeerSlot) -> String {
    if let Some(v) = slot
        .session
        .peer()
        .and_then(|p| p.ext_handshake())
        .and_then(|h| h.v.clone())
    {
        return v
            .chars()
            .filter(|c| !c.is_control() && *c != ' ')
            .take(40)
            .collect();
    }
    slot.session
        .handshake()
        .map(|h| {
            h.peer_id[..8]
                .iter()
                .map(|&c| if c.is_ascii_graphic() { c as char } else { '.' })
                .collect()
        })
        .unwrap_or_default()
}

/// Once per tick on the home shard: each connection's rate, the snub check, the records, and a
/// pipeline fill (the rate limit's tokens came back; blocks were freed).
pub fn tick(shard: &Shard, now: Instant) {
    let ts: Vec<usize> = shard.downloads.borrow().keys().copied().collect();
    let snub = shard.cfg.download.snub_timeout;
    for t in ts {
        let mut snubbed = Vec::new();
        {
            let mut peers = shard.peers.borrow_mut();
            for (key, slot) in peers.iter_mut() {
                if slot.torrent != Some(t) {
                    continue;
                }
                let got = slot.dl.downloaded - slot.dl.downloaded_at_tick;
                slot.dl.downloaded_at_tick = slot.dl.downloaded;
                let secs = crate::server::state::TICK.as_secs_f64();
                slot.dl.rate = 0.6 * slot.dl.rate + 0.4 * (got as f64 / secs);
                if slot.session.check_requests(now, snub) {
                    tracing::debug!(peer = %slot.addr, "snubbed: no block in {snub:?}, its requests go to other peers");
                    snubbed.push(key);
                }
            }
            for (_, slot) in peers.iter_mut() {
                if slot.torrent == Some(t) {
                    flush_record(shard, t, slot);
                }
            }
        }
        for key in snubbed {
            on_events(shard, key, t);
        }
        fill_all(shard, t);
    }
}

/// Whether `addr` may be connected for torrent `t` (not banned).
pub fn allowed(torrent: &Torrent, addr: SocketAddr) -> bool {
    torrent
        .download
        .as_ref()
        .is_none_or(|d| !d.is_banned(addr.ip()))
}

/// Once per tick on the shards that are not a download's home: HAVE to their peers of that
/// torrent for the pieces completed since the last tick (HAVE suppression in the session).
pub fn tell_haves(shard: &Shard) {
    let mut news: Vec<(usize, Vec<u32>, bool)> = Vec::new();
    {
        let mut ts = shard.torrents.borrow_mut();
        for (t, st) in ts.iter_mut().enumerate() {
            let Some((told, count)) = st.told.as_mut() else {
                continue;
            };
            let now = st.torrent.have.count();
            if now == *count {
                continue;
            }
            let mut fresh = Vec::new();
            for p in 0..st.torrent.have.len() {
                let byte = (p / 8) as usize;
                let mask = 0x80u8 >> (p % 8);
                if told.get(byte).is_some_and(|b| b & mask == 0) && st.torrent.have.get(p) {
                    told[byte] |= mask;
                    fresh.push(p);
                }
            }
            *count = now;
            let seed = st.torrent.is_seed();
            if seed {
                st.told = None;
            }
            news.push((t, fresh, seed));
        }
    }
    if news.is_empty() {
        return;
    }
    let mut peers = shard.peers.borrow_mut();
    for (t, fresh, seed) in news {
        for (_, slot) in peers.iter_mut() {
            if slot.torrent != Some(t) || slot.closing {
                continue;
            }
            let mut wake = false;
            for (i, &p) in fresh.iter().enumerate() {
                let last = seed && i + 1 == fresh.len();
                match slot.session.on_we_have(p, last) {
                    Ok(w) => wake |= w,
                    Err(reason) => {
                        slot.close_for(reason);
                        break;
                    }
                }
            }
            if wake {
                slot.wake.notify_one();
            }
        }
    }
}

/// Once per tick: HAVE to this shard's peers for the pieces a torrent gave another chance
/// since the last tick (`Torrent::recheck_failed`: a file restored under the seeder). Peers
/// that came while they were unservable were offered a bitfield without them; to the others a
/// HAVE for a piece they think we have changes nothing.
pub fn tell_recovered(shard: &Shard) {
    let mut news: Vec<(usize, Vec<u32>)> = Vec::new();
    {
        let mut ts = shard.torrents.borrow_mut();
        for (t, st) in ts.iter_mut().enumerate() {
            let gen = st.torrent.recovered_gen.load(Ordering::Acquire);
            if gen == st.recovered_seen {
                continue;
            }
            let seen = std::mem::replace(&mut st.recovered_seen, gen);
            let mut fresh = Vec::new();
            if let Ok(log) = st.torrent.recovered.lock() {
                for (g, pieces) in log.iter() {
                    if *g > seen {
                        fresh.extend(pieces.clone().filter(|&p| st.torrent.can_serve(p)));
                    }
                }
            }
            fresh.sort_unstable();
            fresh.dedup();
            if !fresh.is_empty() {
                news.push((t, fresh));
            }
        }
    }
    let mut peers = shard.peers.borrow_mut();
    for (t, fresh) in news {
        for (_, slot) in peers.iter_mut() {
            if slot.torrent != Some(t) || slot.closing {
                continue;
            }
            let mut wake = false;
            for &p in &fresh {
                match slot.session.on_we_have(p, false) {
                    Ok(w) => wake |= w,
                    Err(reason) => {
                        slot.close_for(reason);
                        break;
                    }
                }
            }
            if wake {
                slot.wake.notify_one();
            }
        }
    }
}

/// Writes in flight on this shard's downloads.
pub fn writes_in_flight(shard: &Shard) -> u32 {
    shard
        .downloads
        .borrow()
        .values()
        .map(|d| d.pieces.values().map(|p| p.writes).sum::<u32>())
        .sum()
}

/// At a stop: each download's pieces in progress whose received blocks are all written (no
/// write in flight or failed) go to the torrent's `partials`, for the resume data. A piece
/// whose every block is received is left out (its check had not run): it is fetched again.
pub fn save_partials(shard: &Shard) {
    for dl in shard.downloads.borrow().values() {
        let Some(d) = &dl.torrent.download else {
            continue;
        };
        if !d.is_active() {
            continue;
        }
        let keep: Vec<(u32, Vec<u8>)> = dl
            .picker
            .partials()
            .filter(|(p, bits)| {
                let clean = dl
                    .pieces
                    .get(p)
                    .is_none_or(|ps| ps.writes == 0 && !ps.write_failed && !ps.done);
                let n = dl.picker.blocks_in_piece(*p);
                let full = (0..n).all(|i| {
                    bits.get((i / 8) as usize)
                        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
                });
                clean && !full && bits.iter().any(|&b| b != 0)
            })
            .collect();
        if let Ok(mut p) = d.partials.lock() {
            *p = keep;
        }
    }
}
