//! The piece picker, sans-IO: which blocks to request of which peer.
//!
//! The picker knows how many connected peers have each piece (availability), which pieces we
//! have, which are in progress (partial) and, per block of a partial piece, who has it
//! requested and who sent it. The caller tells it what happens (a peer's bitfield, HAVE,
//! HAVE ALL, a block received, a request rejected or timed out, a peer gone, a piece hashed)
//! and asks it for blocks to request ([`Picker::pick`]). It reads no clock and does no I/O; the
//! caller's connection id is the [`PeerKey`]. libtorrent's `piece_picker` is the model.
//!
//! # What a pick returns, in order
//! 1. Free blocks of the partial pieces this peer started ("owns"), in block order; then those
//!    of orphaned partial pieces (their owner left, or restored from resume data), most blocks
//!    received first, which the peer adopts.
//! 2. New pieces the peer has: a random one while fewer than [`PickerConfig::random_first`]
//!    pieces are complete (so the first piece completes fast and we have something to trade),
//!    afterwards rarest first (lowest availability, seeds included). A new piece becomes
//!    partial, owned by this peer, and its blocks are handed out in order.
//! 3. Free blocks of other peers' partial pieces the peer has, those with most blocks received
//!    first (an unowned one is adopted). When [`PickerConfig::max_partial`] or more pieces are
//!    in progress this step runs *before* step 2, so finishing pieces comes before starting new
//!    ones; the bound is soft: if no partial piece has a block for the peer, step 2 still runs
//!    (a peer never idles while there is something it could fetch).
//! 4. Endgame ([`Picker::in_endgame`]: every block we lack is requested or received): blocks
//!    other peers have requested but this one has not, at most
//!    [`PickerConfig::endgame_dups`] requesters per block. The first copy to arrive wins and
//!    [`BlockOutcome::Accepted`] lists the other requesters to CANCEL. The condition is global:
//!    a piece nobody has keeps us out of endgame (its blocks are neither requested nor received).
//!
//! # Striped picks
//! With [`PickerConfig::stripe`] `W > 1`, steps 1 and 2 are one step: when none of the peer's
//! own pieces has a free block, it is given a *stripe* of up to `W` new pieces at once (random
//! or rarest as in step 2, while `max_partial` allows), and each block handed out is the
//! lowest-index free block among its own pieces (ties: the piece started first). So a peer that serves requests in
//! order delivers block 0 of `W` pieces, then block 1 of each, and so on. Orphans (1b) are
//! adopted first and their blocks handed out in order; steps 3 and 4 are unchanged. A peer has
//! at most `W` pieces of its own with free blocks (and any number whose blocks are all
//! requested), so `max_partial` should be about `W` times the peers.
//!
//! # Invariants
//! - Every piece is in exactly one of three places: *have* (hash passed), *partial* (at least
//!   one block requested or received, in `partials`), or *ordered* (we lack it, nothing
//!   requested or received). `pos[piece]` says which, and for the last two, where.
//! - `ordered` is sorted by availability in buckets: `bounds[k]` is the end (exclusive) of the
//!   bucket of pieces with per-peer availability `k`, and `bounds.last() == ordered.len()`.
//!   A +1/-1 moves a piece by one swap with its bucket's boundary, O(1). Seeds (HAVE ALL) are
//!   one counter, `seeds`, added to every piece's availability: they change no order. Within a
//!   bucket the order is arbitrary (shuffled at construction with the caller's seed).
//! - Outside endgame a block has at most one requester; in endgame at most `endgame_dups`, and
//!   never the same peer twice. A received block has none (the others were cancelled).
//! - A partial piece with no block requested or received goes back to `ordered`.
//! - `outstanding(peer)` is the number of blocks the peer has requested and not yet delivered,
//!   abandoned or been cancelled from.
//!
//! # Cost
//! Availability updates are O(1) (a bitfield is O(pieces)). A pick is O(want + partial pieces)
//! plus, per new piece, O(availability buckets above it) to take it out of `ordered`; for a seed
//! the new piece is `ordered[0]`, for another peer a scan of `ordered` from the rarest end to
//! the first piece it has (libtorrent does the same). Endgame picks scan the partial pieces'
//! blocks. `peer_gone` scans the blocks of the partial pieces it has requests in.
//!
//! # Memory
//! - Per piece: 12 bytes (availability `u32`, position `u32`, its slot in `ordered` `u32`).
//! - Per availability level: 4 bytes (`bounds`, as many as the highest per-peer availability of
//!   a piece we lack, plus one).
//! - Per partial piece: a 72-byte header plus 8 bytes per block (requester or contributor,
//!   state) plus 8 bytes per extra endgame requester (two heap allocations), and 12 bytes of
//!   pick scratch. With 16 KiB blocks a 4 MiB piece costs about 2.1 KiB while in progress. A
//!   partial piece has a block requested or received; orphaned ones are continued before new
//!   pieces are started, and above `max_partial` picks prefer partial pieces to new ones (a
//!   soft bound: a peer with nothing else to fetch still starts a piece). The worst case,
//!   every piece partial, is 96 bytes per piece (the 12 above included) plus 8 bytes per block
//!   (0.05% of the torrent's size at 16 KiB blocks).
//! - Per peer with requests outstanding: one hash map entry (about 16 bytes).
//!
//! So 100,000 pieces take 1.2 MB, plus the pieces in progress, whatever the number of peers.

use std::collections::HashMap;

use crate::wire::{BlockRef, BLOCK_SIZE};

/// The caller's id for a connection (its slab key).
pub type PeerKey = u32;

/// Default [`PickerConfig::random_first`]: pieces picked at random before rarest first.
pub const DEFAULT_RANDOM_FIRST: u32 = 4;
/// Default [`PickerConfig::endgame_dups`]: requesters per block in endgame.
pub const DEFAULT_ENDGAME_DUPS: u32 = 2;
/// Default [`PickerConfig::max_partial`]. Callers should set about twice the number of
/// connected peers with [`Picker::set_max_partial`].
pub const DEFAULT_MAX_PARTIAL: u32 = 32;
/// Largest piece count the picker takes (positions are 31-bit).
pub const MAX_PIECES: u32 = (1 << 31) - 1;
/// Largest number of blocks in a piece the picker takes (1 GiB pieces at 16 KiB blocks).
pub const MAX_BLOCKS_PER_PIECE: u32 = 1 << 16;

/// What a peer has, as the picker asks it.
pub trait PeerHas {
    /// The peer has `piece` (only asked for pieces in range).
    fn has(&self, piece: u32) -> bool;
    /// The peer has every piece (HAVE ALL or a full bitfield): lets the picker skip `has`
    /// checks and take the rarest piece directly. Returning `false` is always correct.
    fn is_seed(&self) -> bool;
}

/// A BEP 3 bitfield: piece 0 is the high bit of byte 0. Bits past the end read as 0.
#[derive(Debug, Clone, Copy)]
pub struct Bits<'a>(pub &'a [u8]);

impl PeerHas for Bits<'_> {
    fn has(&self, piece: u32) -> bool {
        bit(self.0, piece)
    }
    fn is_seed(&self) -> bool {
        false
    }
}

/// A seed: has every piece.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllPieces;

impl PeerHas for AllPieces {
    fn has(&self, _piece: u32) -> bool {
        true
    }
    fn is_seed(&self) -> bool {
        true
    }
}

fn bit(bits: &[u8], i: u32) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// Sizes and policy of a picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// Pieces in the torrent (0 is a valid, complete, torrent).
    pub num_pieces: u32,
    /// Bytes in every piece but the last.
    pub piece_length: u32,
    /// Bytes in the last piece, `1..=piece_length`.
    pub last_piece_length: u32,
    /// Bytes in a block, `1..=BLOCK_SIZE` ([`BLOCK_SIZE`], 16 KiB, by default); a piece's last
    /// block may be shorter.
    pub block_size: u32,
    /// Pick random pieces while fewer than this many are complete; rarest first afterwards.
    pub random_first: u32,
    /// In endgame, at most this many peers request the same block (values above 255 count as
    /// 255; 0 and 1 mean no duplicates).
    pub endgame_dups: u32,
    /// When this many pieces or more are in progress, free blocks of partial pieces are
    /// handed out before a new piece is started.
    pub max_partial: u32,
    /// Pieces a peer is given at once, their blocks interleaved (1: one piece after another).
    /// With 16, block `k` of sixteen pieces is requested before block `k + 1` of any of them,
    /// so the blocks arrive in an order in which sixteen pieces can be hashed together (the
    /// sixteen-lane SHA-1) without holding more than a few blocks. See "Striped picks" in the
    /// module docs.
    pub stripe: u32,
}

impl PickerConfig {
    /// A configuration with the default block size and policy.
    pub fn new(num_pieces: u32, piece_length: u32, last_piece_length: u32) -> Self {
        Self {
            num_pieces,
            piece_length,
            last_piece_length,
            block_size: BLOCK_SIZE,
            random_first: DEFAULT_RANDOM_FIRST,
            endgame_dups: DEFAULT_ENDGAME_DUPS,
            max_partial: DEFAULT_MAX_PARTIAL,
            stripe: 1,
        }
    }
}

/// A configuration the picker cannot work with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PickerError {
    #[error("{0} pieces: the picker takes at most {MAX_PIECES}")]
    TooManyPieces(u32),
    #[error("piece length must be greater than zero")]
    ZeroPieceLength,
    #[error("last piece length {last} must be in 1..={piece_length}")]
    BadLastPiece { last: u32, piece_length: u32 },
    #[error("block size {0} must be in 1..={BLOCK_SIZE}")]
    BadBlockSize(u32),
    #[error("{0} blocks per piece: the picker takes at most {MAX_BLOCKS_PER_PIECE}")]
    TooManyBlocks(u64),
}

/// What to do with a received block ([`Picker::on_block`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockOutcome {
    /// We did not ask this peer for it (or the block does not exist, or we have the piece):
    /// ignore the data.
    NotRequested,
    /// Another peer's copy arrived first: ignore the data.
    Duplicate,
    /// Write it. The peers in `cancel` had it requested too (endgame): send them CANCEL; the
    /// picker no longer counts the block as outstanding for them.
    Accepted {
        /// Other peers that had the block requested.
        cancel: Vec<PeerKey>,
        /// Every block of the piece has now been received: hash it, then call
        /// [`Picker::piece_passed`] or [`Picker::piece_failed`].
        piece_done: bool,
    },
}

/// `pos` value of a piece we have.
const HAVE: u32 = u32::MAX;
/// `pos` flag of a partial piece; the low 31 bits are its slot in `partials`.
const PARTIAL: u32 = 1 << 31;

// Block states.
const FREE: u8 = 0;
const REQUESTED: u8 = 1;
/// Received, `peer` is the contributor.
const RECEIVED: u8 = 2;
/// Received before a restart (resume data): no known contributor.
const RESTORED: u8 = 3;

#[derive(Debug, Clone, Copy)]
struct Block {
    /// REQUESTED: the first requester; RECEIVED: the contributor.
    peer: PeerKey,
    /// REQUESTED: number of requesters (`peer` plus `reqs - 1` entries in `Partial::extra`).
    reqs: u8,
    state: u8,
}

const FREE_BLOCK: Block = Block {
    peer: 0,
    reqs: 0,
    state: FREE,
};

#[derive(Debug, Clone)]
struct Partial {
    piece: u32,
    /// The peer that started it (or adopted it); it gets the free blocks first.
    owner: Option<PeerKey>,
    blocks: Vec<Block>,
    /// Endgame requesters beyond the first: (block index, peer).
    extra: Vec<(u32, PeerKey)>,
    /// Blocks neither requested nor received.
    free: u32,
    /// Blocks received.
    received: u32,
    /// No block below this index is free.
    next_free: u32,
}

impl Partial {
    fn requested(&self) -> u32 {
        self.blocks.len() as u32 - self.free - self.received
    }

    fn is_requester(&self, idx: u32, peer: PeerKey) -> bool {
        let b = self.blocks[idx as usize];
        b.state == REQUESTED
            && (b.peer == peer || (b.reqs > 1 && self.extra.contains(&(idx, peer))))
    }

    /// Every requester of block `idx`.
    fn requesters(&self, idx: u32, out: &mut Vec<PeerKey>) {
        let b = self.blocks[idx as usize];
        if b.state != REQUESTED {
            return;
        }
        out.push(b.peer);
        if b.reqs > 1 {
            out.extend(
                self.extra
                    .iter()
                    .filter(|&&(i, _)| i == idx)
                    .map(|&(_, q)| q),
            );
        }
    }
}

/// splitmix64: small, seeded, good enough to shuffle and to pick random pieces.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

enum Place {
    Have,
    Partial(usize),
    Ordered(usize),
}

/// The piece picker of one torrent. See the module docs for the rules and invariants.
#[derive(Debug, Clone)]
pub struct Picker {
    cfg: PickerConfig,
    /// Blocks in every piece but the last, and in the last.
    blocks_per_piece: u32,
    blocks_in_last: u32,
    /// Per piece: peers that have it, seeds not included.
    avail: Vec<u32>,
    /// Per piece: `HAVE`, `PARTIAL | slot`, or its index in `ordered`.
    pos: Vec<u32>,
    /// Pieces we lack with nothing requested or received, by availability (see `bounds`).
    ordered: Vec<u32>,
    /// `bounds[k]`: end of the bucket of availability `k` in `ordered`.
    bounds: Vec<u32>,
    /// Peers that have every piece.
    seeds: u32,
    partials: Vec<Partial>,
    /// Free blocks over all partial pieces.
    partial_free: u64,
    /// Blocks outstanding per peer (only peers with at least one).
    outstanding: HashMap<PeerKey, u32>,
    have_count: u32,
    missing_bytes: u64,
    rng: Rng,
    /// Reused by picks: (received blocks, unowned, slot) of candidate partial pieces.
    scratch: Vec<(u32, bool, u32)>,
    /// Reused by striped picks: the peer's pieces with free blocks (slots).
    stripe_scratch: Vec<u32>,
}

impl Picker {
    /// A picker for a torrent of which we have the pieces set in `have` (a BEP 3 bitfield;
    /// shorter is padded with zeros, bits past `num_pieces` are ignored). `seed` shuffles the
    /// order of equally available pieces and drives random-first picks.
    pub fn new(cfg: PickerConfig, have: &[u8], seed: u64) -> Result<Self, PickerError> {
        let n = cfg.num_pieces;
        if n > MAX_PIECES {
            return Err(PickerError::TooManyPieces(n));
        }
        if cfg.block_size == 0 || cfg.block_size > BLOCK_SIZE {
            return Err(PickerError::BadBlockSize(cfg.block_size));
        }
        let (blocks_per_piece, blocks_in_last) = if n == 0 {
            (0, 0)
        } else {
            if cfg.piece_length == 0 {
                return Err(PickerError::ZeroPieceLength);
            }
            if cfg.last_piece_length == 0 || cfg.last_piece_length > cfg.piece_length {
                return Err(PickerError::BadLastPiece {
                    last: cfg.last_piece_length,
                    piece_length: cfg.piece_length,
                });
            }
            let bpp = u64::from(cfg.piece_length).div_ceil(u64::from(cfg.block_size));
            if bpp > u64::from(MAX_BLOCKS_PER_PIECE) {
                return Err(PickerError::TooManyBlocks(bpp));
            }
            let last = cfg.last_piece_length.div_ceil(cfg.block_size);
            (bpp as u32, last)
        };
        let mut cfg = cfg;
        cfg.endgame_dups = cfg.endgame_dups.clamp(1, u32::from(u8::MAX));
        let mut rng = Rng(seed);
        let mut pos = vec![HAVE; n as usize];
        let mut ordered: Vec<u32> = (0..n).filter(|&p| !bit(have, p)).collect();
        for i in (1..ordered.len()).rev() {
            let j = rng.below(i + 1);
            ordered.swap(i, j);
        }
        for (i, &p) in ordered.iter().enumerate() {
            pos[p as usize] = i as u32;
        }
        let mut picker = Self {
            cfg,
            blocks_per_piece,
            blocks_in_last,
            avail: vec![0; n as usize],
            pos,
            bounds: vec![ordered.len() as u32],
            ordered,
            seeds: 0,
            partials: Vec::new(),
            partial_free: 0,
            outstanding: HashMap::new(),
            have_count: 0,
            missing_bytes: 0,
            rng,
            scratch: Vec::new(),
            stripe_scratch: Vec::new(),
        };
        picker.have_count = n - picker.ordered.len() as u32;
        picker.missing_bytes = picker
            .ordered
            .iter()
            .map(|&p| u64::from(picker.piece_len(p)))
            .sum();
        Ok(picker)
    }

    /// The configuration (with `endgame_dups` clamped to `1..=255`).
    pub fn config(&self) -> &PickerConfig {
        &self.cfg
    }

    /// Sets [`PickerConfig::max_partial`] (about twice the connected peers is a good value).
    pub fn set_max_partial(&mut self, max_partial: u32) {
        self.cfg.max_partial = max_partial;
    }

    // ---- queries ----

    /// Pieces in the torrent.
    pub fn num_pieces(&self) -> u32 {
        self.cfg.num_pieces
    }

    /// Pieces we have (hash passed).
    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// We have every piece.
    pub fn is_complete(&self) -> bool {
        self.have_count == self.cfg.num_pieces
    }

    /// We lack `piece` (false out of range).
    pub fn wants(&self, piece: u32) -> bool {
        self.pos.get(piece as usize).is_some_and(|&p| p != HAVE)
    }

    /// We have `piece` (false out of range).
    pub fn has_piece(&self, piece: u32) -> bool {
        self.pos.get(piece as usize).is_some_and(|&p| p == HAVE)
    }

    /// Bytes of the pieces we do not have yet (received blocks of unverified pieces count as
    /// missing).
    pub fn missing_bytes(&self) -> u64 {
        self.missing_bytes
    }

    /// Every block we lack is requested or received (and we lack something): picks may hand
    /// out blocks other peers have requested.
    pub fn in_endgame(&self) -> bool {
        !self.is_complete() && self.ordered.is_empty() && self.partial_free == 0
    }

    /// Blocks `peer` has requested and not delivered, abandoned or been cancelled from.
    pub fn outstanding(&self, peer: PeerKey) -> usize {
        self.outstanding.get(&peer).map_or(0, |&c| c as usize)
    }

    /// Pieces in progress (some block requested or received, hash not passed).
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// Connected peers that have `piece`, seeds included (0 out of range).
    pub fn availability(&self, piece: u32) -> u32 {
        self.avail
            .get(piece as usize)
            .map_or(0, |&a| a.saturating_add(self.seeds))
    }

    /// Connected seeds counted by [`Picker::inc_seed`].
    pub fn seeds(&self) -> u32 {
        self.seeds
    }

    /// The peer has a piece we lack. O(1) for a seed; otherwise a scan of the pieces we lack.
    pub fn is_interesting(&self, has: &impl PeerHas) -> bool {
        if self.is_complete() {
            return false;
        }
        if has.is_seed() {
            return true;
        }
        self.ordered.iter().any(|&p| has.has(p)) || self.partials.iter().any(|p| has.has(p.piece))
    }

    /// Bytes in `piece` (0 out of range).
    pub fn piece_len(&self, piece: u32) -> u32 {
        let n = self.cfg.num_pieces;
        if piece >= n {
            0
        } else if piece == n - 1 {
            self.cfg.last_piece_length
        } else {
            self.cfg.piece_length
        }
    }

    /// Blocks in `piece` (0 out of range).
    pub fn blocks_in_piece(&self, piece: u32) -> u32 {
        let n = self.cfg.num_pieces;
        if piece >= n {
            0
        } else if piece == n - 1 {
            self.blocks_in_last
        } else {
            self.blocks_per_piece
        }
    }

    /// Block `index` of `piece` (`None` out of range). The last block may be shorter.
    pub fn block(&self, piece: u32, index: u32) -> Option<BlockRef> {
        if index >= self.blocks_in_piece(piece) {
            return None;
        }
        let begin = index * self.cfg.block_size;
        let len = (self.piece_len(piece) - begin).min(self.cfg.block_size);
        Some(BlockRef { piece, begin, len })
    }

    /// The index of block `b` if it is exactly one of our blocks.
    fn block_index(&self, b: BlockRef) -> Option<u32> {
        let bs = self.cfg.block_size;
        if !b.begin.is_multiple_of(bs) {
            return None;
        }
        let idx = b.begin / bs;
        (self.block(b.piece, idx)? == b).then_some(idx)
    }

    fn place(&self, piece: u32) -> Option<Place> {
        let p = *self.pos.get(piece as usize)?;
        Some(if p == HAVE {
            Place::Have
        } else if p & PARTIAL != 0 {
            Place::Partial((p & !PARTIAL) as usize)
        } else {
            Place::Ordered(p as usize)
        })
    }

    // ---- availability ----

    /// A peer has `piece` (HAVE, or one bit of a bitfield). Out of range: ignored.
    pub fn inc(&mut self, piece: u32) {
        let Some(&a) = self.avail.get(piece as usize) else {
            return;
        };
        let Some(next) = a.checked_add(1) else {
            return;
        };
        if let Some(Place::Ordered(i)) = self.place(piece) {
            let k = a as usize;
            if self.bounds.len() == k + 1 {
                self.bounds.push(self.ordered.len() as u32);
            }
            let last = self.bounds[k] as usize - 1;
            self.swap(i, last);
            self.bounds[k] -= 1;
        }
        self.avail[piece as usize] = next;
    }

    /// A peer that had `piece` is gone. Out of range or already 0: ignored.
    pub fn dec(&mut self, piece: u32) {
        let Some(&a) = self.avail.get(piece as usize) else {
            return;
        };
        if a == 0 {
            return;
        }
        if let Some(Place::Ordered(i)) = self.place(piece) {
            let k = a as usize;
            let first = self.bounds[k - 1] as usize;
            self.swap(i, first);
            self.bounds[k - 1] += 1;
            self.trim_bounds();
        }
        self.avail[piece as usize] = a - 1;
    }

    /// A peer's BEP 3 bitfield: [`Picker::inc`] for every bit set. For a peer with every
    /// piece prefer [`Picker::inc_seed`] (O(1)); whichever is used, undo it with its pair.
    pub fn inc_bitfield(&mut self, bits: &[u8]) {
        self.for_bits(bits, Self::inc);
    }

    /// Undoes [`Picker::inc_bitfield`] (pass the peer's current bitfield, HAVEs included).
    pub fn dec_bitfield(&mut self, bits: &[u8]) {
        self.for_bits(bits, Self::dec);
    }

    fn for_bits(&mut self, bits: &[u8], mut f: impl FnMut(&mut Self, u32)) {
        let n = u64::from(self.cfg.num_pieces);
        for (i, &byte) in bits.iter().enumerate() {
            let base = i as u64 * 8;
            if base >= n {
                return;
            }
            if byte == 0 {
                continue;
            }
            for j in 0..8u32 {
                let piece = base + u64::from(j);
                if piece >= n {
                    return;
                }
                if byte & (0x80 >> j) != 0 {
                    f(self, piece as u32);
                }
            }
        }
    }

    /// A seed (HAVE ALL) connected: every piece's availability +1, O(1).
    pub fn inc_seed(&mut self) {
        self.seeds = self.seeds.saturating_add(1);
    }

    /// A seed is gone. Already 0: ignored.
    pub fn dec_seed(&mut self) {
        self.seeds = self.seeds.saturating_sub(1);
    }

    // ---- the ordered vector ----

    fn swap(&mut self, i: usize, j: usize) {
        if i == j {
            return;
        }
        self.ordered.swap(i, j);
        self.pos[self.ordered[i] as usize] = i as u32;
        self.pos[self.ordered[j] as usize] = j as u32;
    }

    /// Drops empty buckets at the top (keeps at least bucket 0).
    fn trim_bounds(&mut self) {
        while self.bounds.len() > 1
            && self.bounds[self.bounds.len() - 1] == self.bounds[self.bounds.len() - 2]
        {
            self.bounds.pop();
        }
    }

    /// Takes the piece at `ordered[i]` out: O(buckets above it).
    fn remove_ordered(&mut self, mut i: usize) {
        let piece = self.ordered[i];
        let k = self.avail[piece as usize] as usize;
        let top = self.bounds.len() - 1;
        for b in k..top {
            let last = self.bounds[b] as usize - 1;
            self.swap(i, last);
            self.bounds[b] -= 1;
            i = last;
        }
        let last = self.ordered.len() - 1;
        self.swap(i, last);
        self.ordered.pop();
        self.bounds[top] -= 1;
        self.trim_bounds();
    }

    /// Puts `piece` (whose `pos` is stale) into `ordered`, in its bucket.
    fn insert_ordered(&mut self, piece: u32) {
        let k = self.avail[piece as usize] as usize;
        while self.bounds.len() <= k {
            self.bounds.push(self.ordered.len() as u32);
        }
        let mut i = self.ordered.len();
        self.ordered.push(piece);
        self.pos[piece as usize] = i as u32;
        let top = self.bounds.len() - 1;
        self.bounds[top] += 1;
        for b in (k + 1..=top).rev() {
            let first = self.bounds[b - 1] as usize;
            self.swap(i, first);
            self.bounds[b - 1] += 1;
            i = first;
        }
    }

    // ---- partial pieces ----

    fn new_partial(&mut self, piece: u32, owner: Option<PeerKey>) -> usize {
        let n = self.blocks_in_piece(piece);
        let slot = self.partials.len();
        self.partials.push(Partial {
            piece,
            owner,
            blocks: vec![FREE_BLOCK; n as usize],
            extra: Vec::new(),
            free: n,
            received: 0,
            next_free: 0,
        });
        self.partial_free += u64::from(n);
        self.pos[piece as usize] = PARTIAL | slot as u32;
        slot
    }

    /// Removes partial `slot` (its piece's `pos` is left for the caller to set). Its requests
    /// are dropped from the outstanding counts; their peers are pushed to `requesters`.
    fn drop_partial(&mut self, slot: usize, requesters: &mut Vec<PeerKey>) -> Partial {
        let part = self.partials.swap_remove(slot);
        if let Some(moved) = self.partials.get(slot) {
            self.pos[moved.piece as usize] = PARTIAL | slot as u32;
        }
        self.partial_free -= u64::from(part.free);
        if part.requested() > 0 {
            let start = requesters.len();
            for idx in 0..part.blocks.len() as u32 {
                part.requesters(idx, requesters);
            }
            for &q in &requesters[start..] {
                dec_out(&mut self.outstanding, q);
            }
        }
        part
    }

    /// A partial piece with nothing requested or received goes back to `ordered`.
    fn release_if_empty(&mut self, slot: usize) {
        let p = &self.partials[slot];
        if p.free as usize == p.blocks.len() {
            let part = self.drop_partial(slot, &mut Vec::new());
            self.insert_ordered(part.piece);
        }
    }

    /// Hands out free blocks of partial `slot` to `peer` in block order.
    fn take_free(&mut self, slot: usize, peer: PeerKey, left: &mut usize, out: &mut Vec<BlockRef>) {
        let bs = self.cfg.block_size;
        let part = &mut self.partials[slot];
        let plen = if part.piece + 1 == self.cfg.num_pieces {
            self.cfg.last_piece_length
        } else {
            self.cfg.piece_length
        };
        let mut taken = 0u32;
        let mut i = part.next_free as usize;
        while *left > 0 && part.free > 0 && i < part.blocks.len() {
            let b = &mut part.blocks[i];
            if b.state == FREE {
                *b = Block {
                    peer,
                    reqs: 1,
                    state: REQUESTED,
                };
                part.free -= 1;
                taken += 1;
                *left -= 1;
                let begin = i as u32 * bs;
                out.push(BlockRef {
                    piece: part.piece,
                    begin,
                    len: (plen - begin).min(bs),
                });
            }
            i += 1;
        }
        part.next_free = i as u32;
        if taken > 0 {
            self.partial_free -= u64::from(taken);
            *self.outstanding.entry(peer).or_insert(0) += taken;
        }
    }

    // ---- picking ----

    /// Appends up to `want` blocks to request of `peer` to `out` (see the module docs for the
    /// order) and counts them as outstanding for it; returns how many were appended.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        has: &impl PeerHas,
        want: usize,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let start = out.len();
        let mut left = want;
        if left == 0 || self.is_complete() {
            return 0;
        }
        let seed = has.is_seed();
        if self.cfg.stripe > 1 {
            // 1b first, then 1 and 2 together, interleaved (see "Striped picks").
            self.pick_partials(peer, has, true, &mut left, out);
            if left > 0 {
                self.pick_striped(peer, has, &mut left, out);
            }
        } else {
            // 1. Our own partial pieces.
            for slot in 0..self.partials.len() {
                if left == 0 {
                    break;
                }
                let p = &self.partials[slot];
                if p.owner == Some(peer) && p.free > 0 && (seed || has.has(p.piece)) {
                    self.take_free(slot, peer, &mut left, out);
                }
            }
            // 1b. Orphaned partial pieces (their owner left, or restored): adopt them.
            if left > 0 {
                self.pick_partials(peer, has, true, &mut left, out);
            }
        }
        // 2. New pieces, with 3. (others' partial pieces) first when over max_partial.
        let random = self.have_count < self.cfg.random_first;
        let mut others_done = false;
        let mut scan = 0usize;
        while left > 0 {
            if !others_done && self.partials.len() >= self.cfg.max_partial as usize {
                self.pick_partials(peer, has, false, &mut left, out);
                others_done = true;
                continue;
            }
            let found = if random {
                self.random_piece(has)
            } else {
                self.rarest_piece(has, &mut scan)
            };
            let Some(i) = found else { break };
            let piece = self.ordered[i];
            self.remove_ordered(i);
            let slot = self.new_partial(piece, Some(peer));
            self.take_free(slot, peer, &mut left, out);
        }
        if left > 0 && !others_done {
            self.pick_partials(peer, has, false, &mut left, out);
        }
        // 4. Endgame.
        if left > 0 && self.in_endgame() {
            self.pick_endgame(peer, has, &mut left, out);
        }
        out.len() - start
    }

    /// Steps 1 and 2 with a stripe: up to `stripe` pieces of the peer's own with free blocks,
    /// the lowest-index free block among them each time.
    fn pick_striped(
        &mut self,
        peer: PeerKey,
        has: &impl PeerHas,
        left: &mut usize,
        out: &mut Vec<BlockRef>,
    ) {
        let seed = has.is_seed();
        let width = self.cfg.stripe as usize;
        let mut act = std::mem::take(&mut self.stripe_scratch);
        act.clear();
        act.extend(
            self.partials
                .iter()
                .enumerate()
                .filter(|(_, p)| p.owner == Some(peer) && p.free > 0 && (seed || has.has(p.piece)))
                .map(|(slot, _)| slot as u32),
        );
        let random = self.have_count < self.cfg.random_first;
        let mut scan = 0usize;
        let mut no_new = false;
        let mut opened = false;
        while *left > 0 {
            act.retain(|&s| self.partials[s as usize].free > 0);
            // One more piece while the stripe is in its first round (no piece of it past its
            // first block): pieces of a stripe start together and advance together.
            if act.len() < width
                && !no_new
                && self.partials.len() < self.cfg.max_partial as usize
                && act
                    .iter()
                    .all(|&s| self.partials[s as usize].next_free <= 1)
            {
                let found = if random {
                    self.random_piece(has)
                } else {
                    self.rarest_piece(has, &mut scan)
                };
                match found {
                    Some(i) => {
                        let piece = self.ordered[i];
                        self.remove_ordered(i);
                        act.push(self.new_partial(piece, Some(peer)) as u32);
                        opened = true;
                    }
                    None => no_new = true,
                }
            }
            // The first of the lowest next free block (`act` is in start order).
            let Some(&slot) = act
                .iter()
                .min_by_key(|&&s| self.partials[s as usize].next_free)
            else {
                break;
            };
            let before = *left;
            let mut one = 1usize;
            self.take_free(slot as usize, peer, &mut one, out);
            *left -= 1 - one;
            if *left == before {
                // Nothing free after all (cannot happen: free > 0): never loop on it.
                act.retain(|&s| s != slot);
            }
        }
        if opened {
            // A piece opened and given nothing (another had a lower free block) goes back:
            // highest slot first, so that each removal moves only slots already looked at.
            act.sort_unstable_by(|a, b| b.cmp(a));
            for &s in &act {
                self.release_if_empty(s as usize);
            }
        }
        self.stripe_scratch = act;
    }

    /// Index in `ordered` of a random piece the peer has.
    fn random_piece(&mut self, has: &impl PeerHas) -> Option<usize> {
        let len = self.ordered.len();
        if len == 0 {
            return None;
        }
        let r = self.rng.below(len);
        if has.is_seed() {
            return Some(r);
        }
        (0..len)
            .map(|k| (r + k) % len)
            .find(|&i| has.has(self.ordered[i]))
    }

    /// Index in `ordered` of the rarest piece the peer has, scanning from `*scan` (no piece
    /// before it is one the peer has; removing a piece only reorders positions at or after it).
    fn rarest_piece(&self, has: &impl PeerHas, scan: &mut usize) -> Option<usize> {
        if has.is_seed() {
            return (*scan < self.ordered.len()).then_some(*scan);
        }
        while *scan < self.ordered.len() {
            if has.has(self.ordered[*scan]) {
                return Some(*scan);
            }
            *scan += 1;
        }
        None
    }

    /// Steps 1b and 3: free blocks of partial pieces owned by nobody (`orphans`), or by
    /// anybody but `peer`, most received first; an unowned piece is adopted.
    fn pick_partials(
        &mut self,
        peer: PeerKey,
        has: &impl PeerHas,
        orphans: bool,
        left: &mut usize,
        out: &mut Vec<BlockRef>,
    ) {
        let seed = has.is_seed();
        let mut cand = std::mem::take(&mut self.scratch);
        cand.clear();
        cand.extend(
            self.partials
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.free > 0
                        && (if orphans {
                            p.owner.is_none()
                        } else {
                            p.owner != Some(peer)
                        })
                        && (seed || has.has(p.piece))
                })
                .map(|(slot, p)| (p.received, p.owner.is_none(), slot as u32)),
        );
        cand.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, unowned, slot) in &cand {
            if *left == 0 {
                break;
            }
            let slot = slot as usize;
            if unowned {
                self.partials[slot].owner = Some(peer);
            }
            self.take_free(slot, peer, left, out);
        }
        self.scratch = cand;
    }

    /// Step 4: blocks requested by others, not by `peer`, below `endgame_dups` requesters.
    fn pick_endgame(
        &mut self,
        peer: PeerKey,
        has: &impl PeerHas,
        left: &mut usize,
        out: &mut Vec<BlockRef>,
    ) {
        let dups = self.cfg.endgame_dups as u8;
        if dups < 2 {
            return;
        }
        let seed = has.is_seed();
        let mut cand = std::mem::take(&mut self.scratch);
        cand.clear();
        cand.extend(
            self.partials
                .iter()
                .enumerate()
                .filter(|(_, p)| p.requested() > 0 && (seed || has.has(p.piece)))
                .map(|(slot, p)| (p.received, false, slot as u32)),
        );
        cand.sort_unstable_by(|a, b| b.cmp(a));
        let mut taken = 0u32;
        for &(_, _, slot) in &cand {
            let piece = self.partials[slot as usize].piece;
            let n = self.blocks_in_piece(piece);
            for idx in 0..n {
                if *left == 0 {
                    break;
                }
                let part = &mut self.partials[slot as usize];
                let b = part.blocks[idx as usize];
                if b.state != REQUESTED || b.reqs >= dups || part.is_requester(idx, peer) {
                    continue;
                }
                part.blocks[idx as usize].reqs += 1;
                part.extra.push((idx, peer));
                taken += 1;
                *left -= 1;
                if let Some(r) = self.block(piece, idx) {
                    out.push(r);
                }
            }
        }
        self.scratch = cand;
        if taken > 0 {
            *self.outstanding.entry(peer).or_insert(0) += taken;
        }
    }

    // ---- outcomes ----

    /// Block `b` arrived from `peer`. See [`BlockOutcome`].
    pub fn on_block(&mut self, peer: PeerKey, b: BlockRef) -> BlockOutcome {
        let Some(idx) = self.block_index(b) else {
            return BlockOutcome::NotRequested;
        };
        let Some(Place::Partial(slot)) = self.place(b.piece) else {
            return BlockOutcome::NotRequested;
        };
        let part = &mut self.partials[slot];
        let blk = part.blocks[idx as usize];
        match blk.state {
            RECEIVED | RESTORED => return BlockOutcome::Duplicate,
            REQUESTED if part.is_requester(idx, peer) => {}
            _ => return BlockOutcome::NotRequested,
        }
        let mut cancel = Vec::new();
        if blk.peer != peer {
            cancel.push(blk.peer);
        }
        if blk.reqs > 1 {
            part.extra.retain(|&(i, q)| {
                if i == idx {
                    if q != peer {
                        cancel.push(q);
                    }
                    false
                } else {
                    true
                }
            });
        }
        part.blocks[idx as usize] = Block {
            peer,
            reqs: 0,
            state: RECEIVED,
        };
        part.received += 1;
        let piece_done = part.received as usize == part.blocks.len();
        dec_out(&mut self.outstanding, peer);
        for &q in &cancel {
            dec_out(&mut self.outstanding, q);
        }
        BlockOutcome::Accepted { cancel, piece_done }
    }

    /// `peer` will not deliver `b` (REJECT, timeout, our CANCEL, CHOKE): the block is free
    /// again unless another peer has it requested. Returns false if `peer` had not requested
    /// it (nothing changed).
    pub fn on_abandon(&mut self, peer: PeerKey, b: BlockRef) -> bool {
        let Some(idx) = self.block_index(b) else {
            return false;
        };
        let Some(Place::Partial(slot)) = self.place(b.piece) else {
            return false;
        };
        if !self.unrequest(slot, idx, peer) {
            return false;
        }
        dec_out(&mut self.outstanding, peer);
        self.release_if_empty(slot);
        true
    }

    /// Removes `peer` as a requester of block `idx` of partial `slot` (not the outstanding
    /// count). False if it was not one.
    fn unrequest(&mut self, slot: usize, idx: u32, peer: PeerKey) -> bool {
        let part = &mut self.partials[slot];
        let b = part.blocks[idx as usize];
        if b.state != REQUESTED {
            return false;
        }
        if b.peer == peer {
            if b.reqs > 1 {
                // Promote an endgame requester to first.
                let Some(j) = part.extra.iter().position(|&(i, _)| i == idx) else {
                    return false;
                };
                let (_, q) = part.extra.swap_remove(j);
                part.blocks[idx as usize] = Block {
                    peer: q,
                    reqs: b.reqs - 1,
                    state: REQUESTED,
                };
            } else {
                part.blocks[idx as usize] = FREE_BLOCK;
                part.free += 1;
                part.next_free = part.next_free.min(idx);
                self.partial_free += 1;
            }
            true
        } else if let Some(j) = part.extra.iter().position(|&e| e == (idx, peer)) {
            part.extra.swap_remove(j);
            part.blocks[idx as usize].reqs -= 1;
            true
        } else {
            false
        }
    }

    /// `peer` disconnected: its outstanding requests are released and the partial pieces it
    /// owned are free for others to continue. (Remove its availability separately with
    /// [`Picker::dec_bitfield`] or [`Picker::dec_seed`].) The blocks it delivered keep it as
    /// their contributor for [`Picker::piece_failed`].
    pub fn peer_gone(&mut self, peer: PeerKey) {
        let had = self.outstanding.remove(&peer).unwrap_or(0);
        for slot in (0..self.partials.len()).rev() {
            if self.partials[slot].owner == Some(peer) {
                self.partials[slot].owner = None;
            }
            if had == 0 || self.partials[slot].requested() == 0 {
                continue;
            }
            for idx in 0..self.partials[slot].blocks.len() as u32 {
                self.unrequest(slot, idx, peer);
            }
            self.release_if_empty(slot);
        }
    }

    /// `piece` passed its hash and is written: we have it; it is never picked again. Returns
    /// the peers that still had blocks of it requested (send them CANCEL; they no longer count
    /// as outstanding). Out of range or already had: ignored.
    pub fn piece_passed(&mut self, piece: u32) -> Vec<PeerKey> {
        let mut cancel = Vec::new();
        match self.place(piece) {
            None | Some(Place::Have) => return cancel,
            Some(Place::Ordered(i)) => self.remove_ordered(i),
            Some(Place::Partial(slot)) => {
                self.drop_partial(slot, &mut cancel);
            }
        }
        self.pos[piece as usize] = HAVE;
        self.have_count += 1;
        self.missing_bytes -= u64::from(self.piece_len(piece));
        cancel.sort_unstable();
        cancel.dedup();
        cancel
    }

    /// `piece` failed its hash: all its blocks are free again and it is picked anew. Returns
    /// the distinct peers that contributed its blocks (to count and ban repeat offenders).
    /// Requests still outstanding in it are dropped (their data will be `NotRequested`). A
    /// piece we had becomes missing again. Out of range: ignored.
    pub fn piece_failed(&mut self, piece: u32) -> Vec<PeerKey> {
        let mut contributors = Vec::new();
        match self.place(piece) {
            None | Some(Place::Ordered(_)) => return contributors,
            Some(Place::Have) => {
                self.have_count -= 1;
                self.missing_bytes += u64::from(self.piece_len(piece));
            }
            Some(Place::Partial(slot)) => {
                let part = self.drop_partial(slot, &mut Vec::new());
                contributors.extend(
                    part.blocks
                        .iter()
                        .filter(|b| b.state == RECEIVED)
                        .map(|b| b.peer),
                );
                contributors.sort_unstable();
                contributors.dedup();
            }
        }
        self.insert_ordered(piece);
        contributors
    }

    /// Resume data: the blocks of `piece` set in `received` (a bitmap, block 0 the high bit of
    /// byte 0, as [`Picker::partials`] returns) were written before a restart. Only for a piece
    /// we lack with nothing requested or received; returns false otherwise, or if no bit of a
    /// block is set. A piece whose every block is set is done: hash it next.
    pub fn restore_partial(&mut self, piece: u32, received: &[u8]) -> bool {
        let Some(Place::Ordered(i)) = self.place(piece) else {
            return false;
        };
        let n = self.blocks_in_piece(piece);
        let count = (0..n).filter(|&j| bit(received, j)).count() as u32;
        if count == 0 {
            return false;
        }
        self.remove_ordered(i);
        let slot = self.new_partial(piece, None);
        let part = &mut self.partials[slot];
        for j in 0..n {
            if bit(received, j) {
                part.blocks[j as usize].state = RESTORED;
            }
        }
        part.free = n - count;
        part.received = count;
        part.next_free = (0..n).find(|&j| !bit(received, j)).unwrap_or(n);
        self.partial_free -= u64::from(count);
        true
    }

    /// Pieces in progress with at least one block received, and their received-block bitmaps
    /// (the format [`Picker::restore_partial`] takes), for resume data.
    pub fn partials(&self) -> impl Iterator<Item = (u32, Vec<u8>)> + '_ {
        self.partials.iter().filter(|p| p.received > 0).map(|p| {
            let mut bits = vec![0u8; p.blocks.len().div_ceil(8)];
            for (j, b) in p.blocks.iter().enumerate() {
                if b.state == RECEIVED || b.state == RESTORED {
                    bits[j / 8] |= 0x80 >> (j % 8);
                }
            }
            (p.piece, bits)
        })
    }
}

fn dec_out(outstanding: &mut HashMap<PeerKey, u32>, peer: PeerKey) {
    if let Some(c) = outstanding.get_mut(&peer) {
        *c -= 1;
        if *c == 0 {
            outstanding.remove(&peer);
        }
    }
}

#[cfg(test)]
impl Picker {
    /// Checks every structural invariant of the module docs; panics on a broken one.
    fn check_invariants(&self) {
        let n = self.cfg.num_pieces as usize;
        assert_eq!(self.avail.len(), n);
        assert_eq!(self.pos.len(), n);
        // The ordered vector: positions, buckets, sorted by availability.
        assert!(!self.bounds.is_empty());
        assert_eq!(*self.bounds.last().unwrap() as usize, self.ordered.len());
        assert!(
            self.bounds.windows(2).all(|w| w[0] <= w[1]),
            "bounds {:?}",
            self.bounds
        );
        for (i, &p) in self.ordered.iter().enumerate() {
            assert_eq!(self.pos[p as usize] as usize, i, "pos of piece {p}");
            let k = self.avail[p as usize] as usize;
            assert!(
                k < self.bounds.len(),
                "piece {p} avail {k} bounds {:?}",
                self.bounds
            );
            let start = if k == 0 {
                0
            } else {
                self.bounds[k - 1] as usize
            };
            assert!(
                start <= i && i < self.bounds[k] as usize,
                "piece {p} out of its bucket"
            );
        }
        assert!(self
            .ordered
            .windows(2)
            .all(|w| self.avail[w[0] as usize] <= self.avail[w[1] as usize]));
        // Partial pieces.
        let mut free_total = 0u64;
        let mut out: HashMap<PeerKey, u32> = HashMap::new();
        for (slot, part) in self.partials.iter().enumerate() {
            assert_eq!(self.pos[part.piece as usize], PARTIAL | slot as u32);
            assert_eq!(part.blocks.len() as u32, self.blocks_in_piece(part.piece));
            let free = part.blocks.iter().filter(|b| b.state == FREE).count() as u32;
            let recv = part
                .blocks
                .iter()
                .filter(|b| b.state == RECEIVED || b.state == RESTORED)
                .count() as u32;
            assert_eq!(part.free, free);
            assert_eq!(part.received, recv);
            assert!(
                (free as usize) < part.blocks.len(),
                "empty partial {}",
                part.piece
            );
            assert!(part.blocks[..part.next_free as usize]
                .iter()
                .all(|b| b.state != FREE));
            for &(i, q) in &part.extra {
                let b = part.blocks[i as usize];
                assert_eq!(b.state, REQUESTED);
                assert_ne!(b.peer, q);
            }
            for idx in 0..part.blocks.len() as u32 {
                let b = part.blocks[idx as usize];
                let mut reqs = Vec::new();
                part.requesters(idx, &mut reqs);
                if b.state == REQUESTED {
                    assert_eq!(reqs.len(), b.reqs as usize);
                    assert!(b.reqs as u32 <= self.cfg.endgame_dups);
                    let mut d = reqs.clone();
                    d.sort_unstable();
                    d.dedup();
                    assert_eq!(d.len(), reqs.len(), "a peer requested a block twice");
                } else {
                    assert!(reqs.is_empty());
                }
                for q in reqs {
                    *out.entry(q).or_insert(0) += 1;
                }
            }
            free_total += u64::from(free);
        }
        assert_eq!(self.partial_free, free_total);
        assert_eq!(self.outstanding, out);
        // Every piece in exactly one place.
        let have = self.pos.iter().filter(|&&p| p == HAVE).count();
        assert_eq!(have + self.partials.len() + self.ordered.len(), n);
        assert_eq!(have as u32, self.have_count);
        let missing: u64 = (0..n as u32)
            .filter(|&p| self.pos[p as usize] != HAVE)
            .map(|p| u64::from(self.piece_len(p)))
            .sum();
        assert_eq!(self.missing_bytes, missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(piece: u32, begin: u32, len: u32) -> BlockRef {
        BlockRef { piece, begin, len }
    }

    /// `num_pieces` pieces of `blocks` blocks of 10 bytes, random_first 0, big max_partial.
    fn picker(num_pieces: u32, blocks: u32) -> Picker {
        let mut cfg = PickerConfig::new(num_pieces, blocks * 10, blocks * 10);
        cfg.block_size = 10;
        cfg.random_first = 0;
        cfg.max_partial = 1000;
        Picker::new(cfg, &[], 7).unwrap()
    }

    fn bits(pieces: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        for &p in pieces {
            v[(p / 8) as usize] |= 0x80 >> (p % 8);
        }
        v
    }

    fn pick(p: &mut Picker, peer: PeerKey, has: &impl PeerHas, want: usize) -> Vec<BlockRef> {
        let mut out = Vec::new();
        p.pick(peer, has, want, &mut out);
        p.check_invariants();
        out
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn memory_formula_matches_the_docs() {
        assert_eq!(std::mem::size_of::<Block>(), 8);
        assert_eq!(std::mem::size_of::<Partial>(), 72);
        assert_eq!(std::mem::size_of::<(u32, bool, u32)>(), 12);
    }

    #[test]
    fn bits_are_bep3() {
        let b = [0b1000_0001u8, 0b0100_0000];
        let bits = Bits(&b);
        assert!(bits.has(0) && bits.has(7) && bits.has(9));
        assert!(!bits.has(1) && !bits.has(8) && !bits.has(16) && !bits.has(u32::MAX));
        assert!(!bits.is_seed() && AllPieces.is_seed() && AllPieces.has(3));
    }

    #[test]
    fn rarest_first_picks_the_rarer_piece() {
        let mut p = picker(3, 1);
        for _ in 0..3 {
            p.inc(0);
        }
        p.inc(1);
        p.inc(2);
        p.inc(2);
        p.inc_seed();
        p.check_invariants();
        assert_eq!(p.availability(1), 2);
        assert_eq!(pick(&mut p, 1, &AllPieces, 1), vec![blk(1, 0, 10)]);
        assert_eq!(pick(&mut p, 2, &AllPieces, 1), vec![blk(2, 0, 10)]);
        assert_eq!(pick(&mut p, 3, &AllPieces, 1), vec![blk(0, 0, 10)]);
        // A peer without the rarest piece gets the rarest it has.
        let mut p = picker(3, 1);
        p.inc(0);
        p.inc(1);
        p.inc(1);
        p.inc(2);
        p.inc(2);
        p.inc(2);
        let b = bits(&[1, 2]);
        assert_eq!(pick(&mut p, 1, &Bits(&b), 1), vec![blk(1, 0, 10)]);
    }

    #[test]
    fn availability_moves_pieces_between_buckets() {
        let mut p = picker(50, 1);
        let mut rng = Rng(3);
        let mut model = [0u32; 50];
        for _ in 0..5000 {
            let piece = rng.below(50) as u32;
            if rng.below(2) == 0 {
                p.inc(piece);
                model[piece as usize] += 1;
            } else {
                p.dec(piece);
                model[piece as usize] = model[piece as usize].saturating_sub(1);
            }
        }
        p.check_invariants();
        for (i, &a) in model.iter().enumerate() {
            assert_eq!(p.availability(i as u32), a);
        }
        let all = [0xffu8; 7];
        p.inc_bitfield(&all);
        p.check_invariants();
        assert_eq!(p.availability(49), model[49] + 1);
        p.dec_bitfield(&all);
        p.check_invariants();
        assert_eq!(p.availability(49), model[49]);
    }

    #[test]
    fn random_first_then_rarest_first() {
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..32 {
            let mut cfg = PickerConfig::new(20, 10, 10);
            cfg.block_size = 10;
            let mut p = Picker::new(cfg, &[], seed).unwrap();
            for piece in 1..20 {
                p.inc(piece);
                p.inc(piece);
            }
            p.inc(0); // piece 0 is the rarest
            let got = pick(&mut p, 1, &AllPieces, 1);
            firsts.insert(got[0].piece);
            // Complete random_first (4) pieces: rarest first from then on.
            for piece in 10..14 {
                p.piece_passed(piece);
            }
            p.peer_gone(1);
            assert_eq!(pick(&mut p, 2, &AllPieces, 1)[0].piece, 0);
        }
        assert!(firsts.len() > 4, "random-first picked only {firsts:?}");
    }

    #[test]
    fn shuffle_differs_by_seed() {
        let first = |seed| {
            let mut p = Picker::new(PickerConfig::new(1000, 16384, 16384), &[], seed).unwrap();
            p.set_max_partial(1000);
            let mut out = Vec::new();
            let mut cfg = *p.config();
            cfg.random_first = 0;
            p.cfg = cfg;
            p.pick(1, &AllPieces, 1, &mut out);
            out[0].piece
        };
        let set: std::collections::HashSet<u32> = (0..16).map(first).collect();
        assert!(set.len() > 8);
    }

    #[test]
    fn own_partial_first_in_block_order() {
        let mut p = picker(5, 4);
        p.inc_seed();
        let a = pick(&mut p, 1, &AllPieces, 2);
        assert_eq!(a.len(), 2);
        let piece = a[0].piece;
        assert_eq!(a, vec![blk(piece, 0, 10), blk(piece, 10, 10)]);
        // Another peer starts its own piece.
        let b = pick(&mut p, 2, &AllPieces, 1);
        assert_ne!(b[0].piece, piece);
        // Peer 1 continues its piece before anything else.
        let a2 = pick(&mut p, 1, &AllPieces, 3);
        assert_eq!(a2[..2], [blk(piece, 20, 10), blk(piece, 30, 10)]);
        assert_ne!(a2[2].piece, piece);
        assert_ne!(a2[2].piece, b[0].piece);
        assert_eq!(p.outstanding(1), 5);
        // An abandoned block is handed out again in order.
        assert!(p.on_abandon(1, blk(piece, 10, 10)));
        assert_eq!(pick(&mut p, 1, &AllPieces, 1), vec![blk(piece, 10, 10)]);
    }

    #[test]
    fn finishes_partials_before_new_pieces_over_max_partial() {
        let mut p = picker(5, 4);
        p.inc_seed();
        p.set_max_partial(2);
        let a = pick(&mut p, 1, &AllPieces, 1);
        // Below the bound: peer 2 starts a new piece.
        let b = pick(&mut p, 2, &AllPieces, 1);
        assert_ne!(a[0].piece, b[0].piece);
        assert_eq!(p.partial_count(), 2);
        // Peer 2's piece has a block received: more received, picked first.
        assert!(matches!(
            p.on_block(2, b[0]),
            BlockOutcome::Accepted {
                piece_done: false,
                ..
            }
        ));
        // At the bound: peer 3 gets free blocks of partial pieces, most received first.
        let c = pick(&mut p, 3, &AllPieces, 4);
        assert_eq!(p.partial_count(), 2);
        assert_eq!(
            c,
            vec![
                blk(b[0].piece, 10, 10),
                blk(b[0].piece, 20, 10),
                blk(b[0].piece, 30, 10),
                blk(a[0].piece, 10, 10)
            ]
        );
        // Partial pieces exhausted: a new piece rather than idling.
        let d = pick(&mut p, 3, &AllPieces, 3);
        assert_eq!(d[..2], [blk(a[0].piece, 20, 10), blk(a[0].piece, 30, 10)]);
        assert_eq!(d[2].begin, 0);
        assert_eq!(p.partial_count(), 3);
    }

    #[test]
    fn others_partials_after_new_pieces_below_max_partial() {
        let mut p = picker(2, 4);
        p.inc_seed();
        let a = pick(&mut p, 1, &AllPieces, 1);
        let b = pick(&mut p, 2, &AllPieces, 5);
        assert_eq!(b.len(), 5);
        assert!(b[..4].iter().all(|x| x.piece != a[0].piece));
        assert_eq!(b[4], blk(a[0].piece, 10, 10));
        assert!(!p.in_endgame());
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let mut p = picker(1, 2);
        p.inc_seed();
        let a = pick(&mut p, 1, &AllPieces, 10);
        assert_eq!(a, vec![blk(0, 0, 10), blk(0, 10, 10)]);
        assert!(p.in_endgame());
        let b = pick(&mut p, 2, &AllPieces, 10);
        assert_eq!(b, a);
        assert!(
            pick(&mut p, 1, &AllPieces, 10).is_empty(),
            "same block twice"
        );
        assert!(
            pick(&mut p, 3, &AllPieces, 10).is_empty(),
            "above endgame_dups"
        );
        assert_eq!(
            p.on_block(2, blk(0, 0, 10)),
            BlockOutcome::Accepted {
                cancel: vec![1],
                piece_done: false
            }
        );
        p.check_invariants();
        assert_eq!(p.outstanding(1), 1);
        assert_eq!(p.outstanding(2), 1);
        assert_eq!(p.on_block(1, blk(0, 0, 10)), BlockOutcome::Duplicate);
        // The first requester abandons: the second stays.
        assert!(p.on_abandon(1, blk(0, 10, 10)));
        p.check_invariants();
        assert_eq!(pick(&mut p, 3, &AllPieces, 10), vec![blk(0, 10, 10)]);
        assert_eq!(
            p.on_block(3, blk(0, 10, 10)),
            BlockOutcome::Accepted {
                cancel: vec![2],
                piece_done: true
            }
        );
        assert_eq!(p.outstanding(2) + p.outstanding(3), 0);
        assert!(p.piece_passed(0).is_empty());
        assert!(p.is_complete() && !p.in_endgame());
        assert!(pick(&mut p, 4, &AllPieces, 10).is_empty());
        p.check_invariants();
    }

    #[test]
    fn endgame_dups_one_means_none() {
        let mut cfg = PickerConfig::new(1, 10, 10);
        cfg.block_size = 10;
        cfg.endgame_dups = 0;
        let mut p = Picker::new(cfg, &[], 1).unwrap();
        assert_eq!(pick(&mut p, 1, &AllPieces, 1).len(), 1);
        assert!(p.in_endgame());
        assert!(pick(&mut p, 2, &AllPieces, 1).is_empty());
    }

    #[test]
    fn abandon_frees_blocks() {
        let mut p = picker(1, 2);
        let a = pick(&mut p, 1, &AllPieces, 1);
        assert!(!p.on_abandon(2, a[0]), "not a requester");
        assert_eq!(p.on_block(2, a[0]), BlockOutcome::NotRequested);
        assert!(p.on_abandon(1, a[0]));
        assert!(!p.on_abandon(1, a[0]));
        p.check_invariants();
        assert_eq!(p.partial_count(), 0, "an empty partial goes back");
        assert_eq!(p.outstanding(1), 0);
        assert_eq!(p.on_block(1, a[0]), BlockOutcome::NotRequested);
        assert_eq!(pick(&mut p, 2, &AllPieces, 1), a);
    }

    #[test]
    fn peer_gone_releases_requests_and_ownership() {
        let mut p = picker(3, 4);
        let a = pick(&mut p, 1, &AllPieces, 2);
        let piece = a[0].piece;
        assert!(matches!(p.on_block(1, a[0]), BlockOutcome::Accepted { .. }));
        p.peer_gone(1);
        p.check_invariants();
        assert_eq!(p.outstanding(1), 0);
        assert_eq!(p.partial_count(), 1);
        // Peer 2 continues (adopts) the piece before starting a new one.
        let b = pick(&mut p, 2, &AllPieces, 3);
        assert_eq!(
            b,
            vec![blk(piece, 10, 10), blk(piece, 20, 10), blk(piece, 30, 10)]
        );
        p.peer_gone(2);
        // A partial with nothing received and nothing requested goes back to ordered.
        let c = pick(&mut p, 3, &AllPieces, 1);
        p.peer_gone(3);
        p.check_invariants();
        assert_eq!(p.partial_count(), 1);
        assert!(p.wants(c[0].piece));
        p.peer_gone(99); // unknown: nothing
        p.check_invariants();
    }

    #[test]
    fn piece_failed_returns_contributors_and_frees_blocks() {
        let mut p = picker(1, 3);
        let a = pick(&mut p, 5, &AllPieces, 2);
        let b = pick(&mut p, 2, &AllPieces, 1);
        assert_eq!(b, vec![blk(0, 20, 10)]);
        for x in &a {
            p.on_block(5, *x);
        }
        assert_eq!(
            p.on_block(2, b[0]),
            BlockOutcome::Accepted {
                cancel: vec![],
                piece_done: true
            }
        );
        assert_eq!(p.partials().count(), 1);
        assert_eq!(p.piece_failed(0), vec![2, 5]);
        p.check_invariants();
        assert_eq!(p.partial_count(), 0);
        assert!(!p.in_endgame());
        assert_eq!(pick(&mut p, 7, &AllPieces, 5).len(), 3);
        // A piece we had can fail too (a later check): it is missing again.
        let mut p = picker(2, 1);
        p.piece_passed(1);
        assert_eq!(p.have_count(), 1);
        assert!(p.piece_failed(1).is_empty());
        assert_eq!(p.have_count(), 0);
        assert_eq!(p.missing_bytes(), 20);
        p.check_invariants();
    }

    #[test]
    fn piece_passed_is_never_picked_and_cancels() {
        let mut p = picker(2, 2);
        let a = pick(&mut p, 1, &AllPieces, 1);
        assert_eq!(p.piece_passed(a[0].piece), vec![1]);
        assert_eq!(p.outstanding(1), 0);
        assert!(!p.wants(a[0].piece) && p.has_piece(a[0].piece));
        assert!(p.piece_passed(a[0].piece).is_empty());
        assert_eq!(p.on_block(1, a[0]), BlockOutcome::NotRequested);
        let b = pick(&mut p, 1, &AllPieces, 10);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|x| x.piece != a[0].piece));
        p.check_invariants();
    }

    #[test]
    fn short_last_piece_and_last_block() {
        let cfg = PickerConfig::new(3, 40000, 20000);
        let mut p = Picker::new(cfg, &[], 1).unwrap();
        assert_eq!(p.blocks_in_piece(0), 3);
        assert_eq!(p.blocks_in_piece(2), 2);
        assert_eq!(p.block(0, 2), Some(blk(0, 32768, 7232)));
        assert_eq!(p.block(2, 1), Some(blk(2, 16384, 3616)));
        assert_eq!(p.block(2, 2), None);
        assert_eq!(p.missing_bytes(), 100000);
        let got = pick(&mut p, 1, &AllPieces, 100);
        assert_eq!(got.len(), 8);
        assert_eq!(got.iter().map(|b| u64::from(b.len)).sum::<u64>(), 100000);
        assert!(got.contains(&blk(2, 16384, 3616)));
        // Wrong geometry is not ours.
        assert_eq!(
            p.on_block(1, blk(2, 16384, 16384)),
            BlockOutcome::NotRequested
        );
        assert_eq!(p.on_block(1, blk(2, 100, 3616)), BlockOutcome::NotRequested);
        assert!(!p.on_abandon(1, blk(0, 32768, 16384)));
        for b in &got {
            assert!(matches!(p.on_block(1, *b), BlockOutcome::Accepted { .. }));
        }
        for piece in 0..3 {
            p.piece_passed(piece);
        }
        assert!(p.is_complete());
        assert_eq!(p.missing_bytes(), 0);
        p.check_invariants();
    }

    #[test]
    fn empty_torrent() {
        let mut p = Picker::new(PickerConfig::new(0, 0, 0), &[0xff], 1).unwrap();
        assert!(p.is_complete() && !p.in_endgame());
        assert_eq!(
            (p.num_pieces(), p.have_count(), p.missing_bytes()),
            (0, 0, 0)
        );
        assert!(pick(&mut p, 1, &AllPieces, 10).is_empty());
        assert!(!p.is_interesting(&AllPieces));
        p.inc(0);
        p.dec(0);
        p.inc_bitfield(&[0xff]);
        p.inc_seed();
        assert_eq!(p.on_block(1, blk(0, 0, 10)), BlockOutcome::NotRequested);
        assert!(p.piece_passed(0).is_empty());
        assert!(p.piece_failed(0).is_empty());
        assert!(!p.restore_partial(0, &[0xff]));
        assert_eq!(p.partials().count(), 0);
        p.peer_gone(1);
        p.check_invariants();
    }

    #[test]
    fn out_of_range_input_is_ignored() {
        let mut p = picker(10, 2);
        p.inc(10);
        p.inc(u32::MAX);
        p.dec(10);
        p.dec(3); // already 0
        p.dec_seed();
        p.inc_bitfield(&[0xff; 100]);
        p.check_invariants();
        assert_eq!(p.availability(9), 1);
        assert_eq!(p.availability(10), 0);
        p.dec_bitfield(&[0xff; 100]);
        p.dec_bitfield(&[0xff; 100]);
        assert_eq!(p.availability(9), 0);
        assert_eq!(p.on_block(1, blk(10, 0, 10)), BlockOutcome::NotRequested);
        assert_eq!(
            p.on_block(1, blk(0, u32::MAX, 10)),
            BlockOutcome::NotRequested
        );
        assert!(!p.on_abandon(1, blk(u32::MAX, 0, 10)));
        assert!(p.piece_passed(10).is_empty());
        assert!(p.piece_failed(u32::MAX).is_empty());
        assert!(!p.restore_partial(10, &[0xff]));
        assert!(!p.restore_partial(0, &[]));
        assert_eq!(p.block(10, 0), None);
        assert_eq!(p.block(0, 2), None);
        assert_eq!(p.blocks_in_piece(10), 0);
        assert!(!p.wants(10));
        assert_eq!(pick(&mut p, 1, &AllPieces, 0).len(), 0);
        // A bitfield claiming pieces past the end gives nothing out of range.
        let got = pick(&mut p, 1, &Bits(&[0xff; 100]), 1000);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|b| b.piece < 10));
        p.check_invariants();
    }

    #[test]
    fn bad_configs_are_errors() {
        let ok = PickerConfig::new(10, 32768, 100);
        assert!(Picker::new(ok, &[], 0).is_ok());
        let mut c = ok;
        c.piece_length = 0;
        assert_eq!(
            Picker::new(c, &[], 0).unwrap_err(),
            PickerError::ZeroPieceLength
        );
        let mut c = ok;
        c.last_piece_length = 0;
        assert!(matches!(
            Picker::new(c, &[], 0),
            Err(PickerError::BadLastPiece { .. })
        ));
        c.last_piece_length = 32769;
        assert!(matches!(
            Picker::new(c, &[], 0),
            Err(PickerError::BadLastPiece { .. })
        ));
        let mut c = ok;
        c.block_size = 0;
        assert_eq!(
            Picker::new(c, &[], 0).unwrap_err(),
            PickerError::BadBlockSize(0)
        );
        c.block_size = BLOCK_SIZE + 1;
        assert!(Picker::new(c, &[], 0).is_err());
        let mut c = ok;
        c.block_size = 1;
        c.piece_length = u32::MAX;
        assert!(matches!(
            Picker::new(c, &[], 0),
            Err(PickerError::TooManyBlocks(_))
        ));
        let mut c = ok;
        c.num_pieces = u32::MAX;
        assert!(matches!(
            Picker::new(c, &[], 0),
            Err(PickerError::TooManyPieces(_))
        ));
    }

    #[test]
    fn have_bitfield_at_start() {
        let p = Picker::new(
            PickerConfig::new(10, 100, 50),
            &[0b1010_0000, 0b0100_0000],
            0,
        )
        .unwrap();
        assert_eq!(p.have_count(), 3);
        assert!(!p.wants(0) && p.wants(1) && !p.wants(2) && p.wants(8) && !p.wants(9));
        assert_eq!(p.missing_bytes(), 7 * 100);
        p.check_invariants();
        let all = Picker::new(PickerConfig::new(10, 100, 50), &[0xff, 0xff], 0).unwrap();
        assert!(all.is_complete());
        assert!(!all.is_interesting(&AllPieces));
    }

    #[test]
    fn restore_and_save_partials() {
        let mut p = picker(3, 10);
        assert!(p.restore_partial(1, &[0b1100_0000, 0b0100_0000]));
        assert!(!p.restore_partial(1, &[0xff]), "already partial");
        p.check_invariants();
        let saved: Vec<_> = p.partials().collect();
        assert_eq!(saved, vec![(1, vec![0b1100_0000, 0b0100_0000])]);
        // The restored piece is continued first (most received) when over max_partial.
        p.set_max_partial(1);
        let got = pick(&mut p, 1, &AllPieces, 2);
        assert_eq!(got, vec![blk(1, 20, 10), blk(1, 30, 10)]);
        assert_eq!(p.on_block(1, blk(1, 0, 10)), BlockOutcome::Duplicate);
        // Restored blocks have no contributor.
        for b in pick(&mut p, 1, &AllPieces, 5) {
            p.on_block(1, b);
        }
        assert_eq!(p.piece_failed(1), vec![1]);
        // A restored piece with every block is done.
        assert!(p.restore_partial(2, &[0xff, 0xff]));
        assert_eq!(p.partials().last(), Some((2, vec![0xff, 0b1100_0000])));
        assert!(p.piece_failed(2).is_empty());
        p.check_invariants();
    }

    #[test]
    fn interest() {
        let mut p = picker(10, 1);
        assert!(p.is_interesting(&AllPieces));
        let b = bits(&[3]);
        assert!(p.is_interesting(&Bits(&b)));
        p.piece_passed(3);
        assert!(!p.is_interesting(&Bits(&b)));
        assert!(!p.is_interesting(&Bits(&[])));
        let b = bits(&[4]);
        pick(&mut p, 1, &Bits(&b), 1);
        assert!(
            p.is_interesting(&Bits(&b)),
            "a partial piece is still wanted"
        );
    }
}

#[cfg(test)]
mod striped {
    use super::*;

    struct Seed;
    impl PeerHas for Seed {
        fn has(&self, _piece: u32) -> bool {
            true
        }
        fn is_seed(&self) -> bool {
            true
        }
    }

    fn picker(stripe: u32, max_partial: u32) -> Picker {
        // 8 pieces of 4 blocks of 16 KiB.
        let mut cfg = PickerConfig::new(8, 4 * BLOCK_SIZE, 4 * BLOCK_SIZE);
        cfg.random_first = 0;
        cfg.stripe = stripe;
        cfg.max_partial = max_partial;
        let mut p = Picker::new(cfg, &[], 7).expect("config");
        p.inc_seed();
        p
    }

    /// Block k of every piece of the stripe comes before block k + 1 of any, in small picks
    /// and large ones alike, and a finished stripe is followed by the next one.
    #[test]
    fn blocks_interleave_across_the_stripe() {
        for chunk in [1usize, 3, 16, 32] {
            let mut p = picker(4, 64);
            let mut out = Vec::new();
            while out.len() < 32 {
                let want = chunk.min(32 - out.len());
                assert_eq!(p.pick(1, &Seed, want, &mut out), want, "chunk {chunk}");
            }
            for (stripe, run) in out.chunks(16).enumerate() {
                let mut pieces: Vec<u32> = run[..4].iter().map(|b| b.piece).collect();
                pieces.sort_unstable();
                pieces.dedup();
                assert_eq!(
                    pieces.len(),
                    4,
                    "stripe {stripe}: four pieces, chunk {chunk}"
                );
                for (i, b) in run.iter().enumerate() {
                    assert_eq!(
                        b.begin,
                        (i / 4) as u32 * BLOCK_SIZE,
                        "chunk {chunk}: {run:?}"
                    );
                    assert_eq!(b.piece, run[i % 4].piece, "chunk {chunk}: {run:?}");
                }
            }
            assert_eq!(p.partial_count(), 8);
        }
    }

    /// Two peers get stripes of their own; max_partial still bounds new pieces softly.
    #[test]
    fn each_peer_has_its_own_stripe() {
        let mut p = picker(4, 64);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.pick(1, &Seed, 4, &mut a);
        p.pick(2, &Seed, 4, &mut b);
        let pa: Vec<u32> = a.iter().map(|x| x.piece).collect();
        assert!(b.iter().all(|x| !pa.contains(&x.piece)), "{a:?} {b:?}");
        assert!(a.iter().chain(&b).all(|x| x.begin == 0));
        // max_partial 2: the stripe is cut to two pieces, and a peer still gets every block.
        let mut p = picker(4, 2);
        let mut out = Vec::new();
        assert_eq!(p.pick(1, &Seed, 32, &mut out), 32);
        assert_eq!(
            &out[..2].iter().map(|x| x.begin).collect::<Vec<_>>(),
            &[0, 0]
        );
    }
}

/// The picker against a naive model: plain vectors, O(n) scans, no ordering structures. The
/// model does not choose blocks; it checks each choice of the picker against the rules and
/// tracks the state the picker should have.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;

    const SLOTS: u8 = 4;

    #[derive(Debug, Clone)]
    enum Op {
        Connect {
            slot: u8,
            seed: bool,
            bits: u16,
        },
        Have {
            slot: u8,
            piece: u8,
        },
        Pick {
            slot: u8,
            want: u8,
        },
        Receive {
            slot: u8,
            nth: u8,
        },
        Abandon {
            slot: u8,
            nth: u8,
        },
        Bogus {
            slot: u8,
            piece: u8,
            block: u8,
            skew: u8,
            abandon: bool,
        },
        Gone {
            slot: u8,
        },
        Pass {
            piece: u8,
            force: bool,
        },
        Fail {
            piece: u8,
        },
        ExtInc {
            piece: u8,
        },
        ExtDec {
            piece: u8,
        },
        ExtSeed {
            inc: bool,
        },
        Restore {
            piece: u8,
            bits: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let slot = 0..SLOTS;
        prop_oneof![
            3 => (slot.clone(), prop::bool::weighted(0.3), any::<u16>())
                .prop_map(|(slot, seed, bits)| Op::Connect { slot, seed, bits }),
            2 => (slot.clone(), any::<u8>()).prop_map(|(slot, piece)| Op::Have { slot, piece }),
            10 => (slot.clone(), 0..8u8).prop_map(|(slot, want)| Op::Pick { slot, want }),
            10 => (slot.clone(), any::<u8>()).prop_map(|(slot, nth)| Op::Receive { slot, nth }),
            3 => (slot.clone(), any::<u8>()).prop_map(|(slot, nth)| Op::Abandon { slot, nth }),
            1 => (slot.clone(), any::<u8>(), any::<u8>(), 0..4u8, any::<bool>()).prop_map(
                |(slot, piece, block, skew, abandon)| Op::Bogus { slot, piece, block, skew, abandon }
            ),
            1 => slot.clone().prop_map(|slot| Op::Gone { slot }),
            4 => (any::<u8>(), prop::bool::weighted(0.1))
                .prop_map(|(piece, force)| Op::Pass { piece, force }),
            1 => any::<u8>().prop_map(|piece| Op::Fail { piece }),
            2 => any::<u8>().prop_map(|piece| Op::ExtInc { piece }),
            1 => any::<u8>().prop_map(|piece| Op::ExtDec { piece }),
            1 => any::<bool>().prop_map(|inc| Op::ExtSeed { inc }),
            1 => (any::<u8>(), any::<u16>()).prop_map(|(piece, bits)| Op::Restore { piece, bits }),
        ]
    }

    fn config() -> impl Strategy<Value = PickerConfig> {
        (
            (0..=12u32, 1..=4u32, 1..=12u32),
            (0..=3u32, 0..=3u32, 0..=5u32, 1..=4u32),
        )
            .prop_flat_map(|((n, bs, plen), (rf, dups, maxp, stripe))| {
                (1..=plen).prop_map(move |last| PickerConfig {
                    num_pieces: n,
                    piece_length: plen,
                    last_piece_length: last,
                    block_size: bs,
                    random_first: rf,
                    endgame_dups: dups,
                    max_partial: maxp,
                    stripe,
                })
            })
    }

    #[derive(Debug, Clone, Default)]
    struct MBlock {
        req: Vec<PeerKey>,
        received: bool,
        contributor: Option<PeerKey>,
    }

    struct MPeer {
        key: PeerKey,
        seed: bool,
        bits: Vec<u8>,
    }

    impl MPeer {
        fn has(&self, piece: u32) -> bool {
            self.seed || bit(&self.bits, piece)
        }
    }

    struct Model {
        cfg: PickerConfig,
        avail: Vec<u32>,
        seeds: u32,
        have: Vec<bool>,
        blocks: Vec<Vec<MBlock>>,
    }

    impl Model {
        fn plen(&self, piece: u32) -> u32 {
            if piece + 1 == self.cfg.num_pieces {
                self.cfg.last_piece_length
            } else {
                self.cfg.piece_length
            }
        }

        fn nblocks(&self, piece: u32) -> u32 {
            self.plen(piece).div_ceil(self.cfg.block_size)
        }

        fn bref(&self, piece: u32, idx: u32) -> BlockRef {
            let begin = idx * self.cfg.block_size;
            BlockRef {
                piece,
                begin,
                len: (self.plen(piece) - begin).min(self.cfg.block_size),
            }
        }

        /// The block index of `b` if it is exactly one of the torrent's blocks.
        fn index(&self, b: BlockRef) -> Option<usize> {
            if b.piece >= self.cfg.num_pieces || !b.begin.is_multiple_of(self.cfg.block_size) {
                return None;
            }
            let idx = b.begin / self.cfg.block_size;
            (idx < self.nblocks(b.piece) && self.bref(b.piece, idx) == b).then_some(idx as usize)
        }

        fn avail(&self, piece: u32) -> u32 {
            self.avail[piece as usize] + self.seeds
        }

        fn lacking(&self) -> impl Iterator<Item = u32> + '_ {
            (0..self.cfg.num_pieces).filter(|&p| !self.have[p as usize])
        }

        /// Free blocks (neither requested nor received) of pieces we lack for which `f` holds.
        fn free(&self, f: impl Fn(u32) -> bool) -> usize {
            self.lacking()
                .filter(|&p| f(p))
                .map(|p| {
                    self.blocks[p as usize]
                        .iter()
                        .filter(|b| !b.received && b.req.is_empty())
                        .count()
                })
                .sum()
        }

        fn in_endgame(&self) -> bool {
            self.lacking().next().is_some() && self.free(|_| true) == 0
        }

        fn is_partial(&self, p: u32) -> bool {
            !self.have[p as usize]
                && self.blocks[p as usize]
                    .iter()
                    .any(|b| b.received || !b.req.is_empty())
        }

        fn partial_count(&self) -> usize {
            self.lacking().filter(|&p| self.is_partial(p)).count()
        }

        fn outstanding(&self, key: PeerKey) -> Vec<BlockRef> {
            let mut v = Vec::new();
            for p in 0..self.cfg.num_pieces {
                for (i, b) in self.blocks[p as usize].iter().enumerate() {
                    if b.req.contains(&key) {
                        v.push(self.bref(p, i as u32));
                    }
                }
            }
            v
        }

        fn clear(&mut self, p: u32) {
            for b in &mut self.blocks[p as usize] {
                *b = MBlock::default();
            }
        }

        fn on_block(&mut self, key: PeerKey, b: BlockRef) -> BlockOutcome {
            let Some(idx) = self.index(b) else {
                return BlockOutcome::NotRequested;
            };
            if self.have[b.piece as usize] {
                return BlockOutcome::NotRequested;
            }
            let blocks = &mut self.blocks[b.piece as usize];
            if blocks[idx].received {
                return BlockOutcome::Duplicate;
            }
            if !blocks[idx].req.contains(&key) {
                return BlockOutcome::NotRequested;
            }
            let mut cancel: Vec<PeerKey> = blocks[idx]
                .req
                .iter()
                .copied()
                .filter(|&q| q != key)
                .collect();
            cancel.sort_unstable();
            blocks[idx] = MBlock {
                req: Vec::new(),
                received: true,
                contributor: Some(key),
            };
            let piece_done = blocks.iter().all(|b| b.received);
            BlockOutcome::Accepted { cancel, piece_done }
        }

        fn on_abandon(&mut self, key: PeerKey, b: BlockRef) -> bool {
            let Some(idx) = self.index(b) else {
                return false;
            };
            if self.have[b.piece as usize] {
                return false;
            }
            let req = &mut self.blocks[b.piece as usize][idx].req;
            let before = req.len();
            req.retain(|&q| q != key);
            before != req.len()
        }
    }

    fn sorted(o: BlockOutcome) -> BlockOutcome {
        match o {
            BlockOutcome::Accepted {
                mut cancel,
                piece_done,
            } => {
                cancel.sort_unstable();
                BlockOutcome::Accepted { cancel, piece_done }
            }
            o => o,
        }
    }

    fn pick_for(p: &mut Picker, peer: &MPeer, want: usize, out: &mut Vec<BlockRef>) -> usize {
        if peer.seed {
            p.pick(peer.key, &AllPieces, want, out)
        } else {
            p.pick(peer.key, &Bits(&peer.bits), want, out)
        }
    }

    fn check(p: &Picker, m: &Model, peers: &[Option<MPeer>], keys: PeerKey) {
        p.check_invariants();
        let n = m.cfg.num_pieces;
        for q in 0..n {
            assert_eq!(p.availability(q), m.avail(q), "availability of {q}");
            assert_eq!(p.wants(q), !m.have[q as usize]);
        }
        let have = m.have.iter().filter(|&&h| h).count() as u32;
        assert_eq!(p.have_count(), have);
        assert_eq!(p.is_complete(), have == n);
        let missing: u64 = m.lacking().map(|q| u64::from(m.plen(q))).sum();
        assert_eq!(p.missing_bytes(), missing);
        assert_eq!(p.in_endgame(), m.in_endgame(), "endgame");
        assert_eq!(p.partial_count(), m.partial_count(), "partial count");
        for key in 0..keys {
            assert_eq!(
                p.outstanding(key),
                m.outstanding(key).len(),
                "outstanding of {key}"
            );
        }
        for peer in peers.iter().flatten() {
            let interesting = m.lacking().any(|q| peer.has(q));
            if peer.seed {
                assert_eq!(p.is_interesting(&AllPieces), interesting);
            } else {
                assert_eq!(p.is_interesting(&Bits(&peer.bits)), interesting);
            }
        }
        let mut saved: Vec<(u32, Vec<u8>)> = p.partials().collect();
        saved.sort();
        let expect: Vec<(u32, Vec<u8>)> = m
            .lacking()
            .filter(|&q| m.blocks[q as usize].iter().any(|b| b.received))
            .map(|q| {
                let bl = &m.blocks[q as usize];
                let mut bits = vec![0u8; bl.len().div_ceil(8)];
                for (j, b) in bl.iter().enumerate() {
                    if b.received {
                        bits[j / 8] |= 0x80 >> (j % 8);
                    }
                }
                (q, bits)
            })
            .collect();
        assert_eq!(saved, expect);
    }

    fn run(cfg: PickerConfig, have_bits: u16, seed: u64, ops: Vec<Op>) {
        let have_bytes = have_bits.to_be_bytes();
        let mut p = Picker::new(cfg, &have_bytes, seed).unwrap();
        let cfg = *p.config();
        let n = cfg.num_pieces;
        let mut m = Model {
            cfg,
            avail: vec![0; n as usize],
            seeds: 0,
            have: (0..n).map(|q| bit(&have_bytes, q)).collect(),
            blocks: Vec::new(),
        };
        m.blocks = (0..n)
            .map(|q| vec![MBlock::default(); m.nblocks(q) as usize])
            .collect();
        let dups = cfg.endgame_dups as usize;
        let mut peers: Vec<Option<MPeer>> = (0..SLOTS).map(|_| None).collect();
        let mut keys: PeerKey = 0;
        check(&p, &m, &peers, keys);
        for op in ops {
            match op {
                Op::Connect { slot, seed, bits } => {
                    if peers[slot as usize].is_some() {
                        continue;
                    }
                    let bits = bits.to_be_bytes().to_vec();
                    if seed {
                        p.inc_seed();
                        m.seeds += 1;
                    } else {
                        p.inc_bitfield(&bits);
                        for q in 0..n {
                            if bit(&bits, q) {
                                m.avail[q as usize] += 1;
                            }
                        }
                    }
                    peers[slot as usize] = Some(MPeer {
                        key: keys,
                        seed,
                        bits,
                    });
                    keys += 1;
                }
                Op::Have { slot, piece } => {
                    let piece = u32::from(piece) % (n + 1);
                    let Some(peer) = peers[slot as usize].as_mut() else {
                        continue;
                    };
                    if piece == n {
                        p.inc(piece); // out of range: ignored
                    } else if !peer.has(piece) {
                        peer.bits[(piece / 8) as usize] |= 0x80 >> (piece % 8);
                        p.inc(piece);
                        m.avail[piece as usize] += 1;
                    }
                }
                Op::Pick { slot, want } => {
                    let Some(peer) = peers[slot as usize].as_ref() else {
                        continue;
                    };
                    let want = want as usize;
                    let key = peer.key;
                    let endgame = m.in_endgame();
                    let free_for_peer = m.free(|q| peer.has(q));
                    let dup_for_peer: usize = m
                        .lacking()
                        .filter(|&q| peer.has(q))
                        .map(|q| {
                            m.blocks[q as usize]
                                .iter()
                                .filter(|b| {
                                    !b.received
                                        && !b.req.is_empty()
                                        && b.req.len() < dups
                                        && !b.req.contains(&key)
                                })
                                .count()
                        })
                        .sum();
                    let rarest = p.have_count() >= cfg.random_first && m.partial_count() == 0;
                    let min_avail = m
                        .lacking()
                        .filter(|&q| peer.has(q))
                        .map(|q| m.avail(q))
                        .min();
                    let mut out = Vec::new();
                    let got = pick_for(&mut p, peer, want, &mut out);
                    assert_eq!(got, out.len());
                    assert!(got <= want);
                    for b in &out {
                        let idx = m.index(*b).expect("a block of the torrent");
                        assert!(peer.has(b.piece), "peer lacks {b:?}");
                        assert!(!m.have[b.piece as usize], "we have {b:?}");
                        let global_free = m.free(|_| true);
                        let mb = &mut m.blocks[b.piece as usize][idx];
                        assert!(!mb.received, "{b:?} already received");
                        assert!(!mb.req.contains(&key), "{b:?} twice to {key}");
                        if global_free > 0 {
                            assert!(mb.req.is_empty(), "{b:?} duplicated outside endgame");
                        } else {
                            assert!(mb.req.len() < dups, "{b:?} above endgame_dups");
                        }
                        mb.req.push(key);
                    }
                    if endgame {
                        assert_eq!(got, want.min(dup_for_peer), "endgame pick");
                    } else {
                        assert!(
                            got >= want.min(free_for_peer),
                            "starved: {got} of {want}, {free_for_peer} free"
                        );
                    }
                    if rarest && got > 0 {
                        assert_eq!(Some(m.avail(out[0].piece)), min_avail, "not rarest first");
                    }
                }
                Op::Receive { slot, nth } => {
                    let Some(peer) = peers[slot as usize].as_ref() else {
                        continue;
                    };
                    let list = m.outstanding(peer.key);
                    if list.is_empty() {
                        continue;
                    }
                    let b = list[nth as usize % list.len()];
                    let expect = m.on_block(peer.key, b);
                    assert!(matches!(expect, BlockOutcome::Accepted { .. }));
                    assert_eq!(sorted(p.on_block(peer.key, b)), expect, "on_block {b:?}");
                }
                Op::Abandon { slot, nth } => {
                    let Some(peer) = peers[slot as usize].as_ref() else {
                        continue;
                    };
                    let list = m.outstanding(peer.key);
                    if list.is_empty() {
                        continue;
                    }
                    let b = list[nth as usize % list.len()];
                    assert!(m.on_abandon(peer.key, b));
                    assert!(p.on_abandon(peer.key, b));
                }
                Op::Bogus {
                    slot,
                    piece,
                    block,
                    skew,
                    abandon,
                } => {
                    let Some(peer) = peers[slot as usize].as_ref() else {
                        continue;
                    };
                    let piece = u32::from(piece) % (n + 1);
                    let nb = if piece < n { m.nblocks(piece) } else { 1 };
                    let idx = u32::from(block) % (nb + 1);
                    let bs = cfg.block_size;
                    let mut b = if piece < n && idx < nb {
                        m.bref(piece, idx)
                    } else {
                        BlockRef {
                            piece,
                            begin: idx * bs,
                            len: bs,
                        }
                    };
                    match skew {
                        1 => b.begin += 1,
                        2 => b.len += 1,
                        3 => b.len -= 1,
                        _ => {}
                    }
                    if abandon {
                        assert_eq!(p.on_abandon(peer.key, b), m.on_abandon(peer.key, b));
                    } else {
                        let expect = m.on_block(peer.key, b);
                        assert_eq!(sorted(p.on_block(peer.key, b)), expect, "bogus {b:?}");
                    }
                }
                Op::Gone { slot } => {
                    let Some(peer) = peers[slot as usize].take() else {
                        continue;
                    };
                    p.peer_gone(peer.key);
                    for bl in &mut m.blocks {
                        for b in bl {
                            b.req.retain(|&q| q != peer.key);
                        }
                    }
                    if peer.seed {
                        p.dec_seed();
                        m.seeds = m.seeds.saturating_sub(1);
                    } else {
                        p.dec_bitfield(&peer.bits);
                        for q in 0..n {
                            if bit(&peer.bits, q) {
                                m.avail[q as usize] = m.avail[q as usize].saturating_sub(1);
                            }
                        }
                    }
                }
                Op::Pass { piece, force } => {
                    let piece = u32::from(piece) % (n + 1);
                    if piece == n {
                        assert!(p.piece_passed(piece).is_empty());
                        continue;
                    }
                    let done = m.blocks[piece as usize].iter().all(|b| b.received);
                    if !(force || done) {
                        continue;
                    }
                    let mut expect: Vec<PeerKey> = Vec::new();
                    if !m.have[piece as usize] {
                        expect = m.blocks[piece as usize]
                            .iter()
                            .flat_map(|b| b.req.iter().copied())
                            .collect();
                        expect.sort_unstable();
                        expect.dedup();
                    }
                    assert_eq!(p.piece_passed(piece), expect);
                    m.have[piece as usize] = true;
                    m.clear(piece);
                }
                Op::Fail { piece } => {
                    let piece = u32::from(piece) % (n + 1);
                    if piece == n {
                        assert!(p.piece_failed(piece).is_empty());
                        continue;
                    }
                    let mut expect: Vec<PeerKey> = m.blocks[piece as usize]
                        .iter()
                        .filter(|b| b.received)
                        .filter_map(|b| b.contributor)
                        .collect();
                    expect.sort_unstable();
                    expect.dedup();
                    assert_eq!(p.piece_failed(piece), expect);
                    m.have[piece as usize] = false;
                    m.clear(piece);
                }
                Op::ExtInc { piece } => {
                    let piece = u32::from(piece) % (n + 1);
                    p.inc(piece);
                    if piece < n {
                        m.avail[piece as usize] += 1;
                    }
                }
                Op::ExtDec { piece } => {
                    let piece = u32::from(piece) % (n + 1);
                    p.dec(piece);
                    if piece < n {
                        m.avail[piece as usize] = m.avail[piece as usize].saturating_sub(1);
                    }
                }
                Op::ExtSeed { inc } => {
                    if inc {
                        p.inc_seed();
                        m.seeds += 1;
                    } else {
                        p.dec_seed();
                        m.seeds = m.seeds.saturating_sub(1);
                    }
                }
                Op::Restore { piece, bits } => {
                    let piece = u32::from(piece) % (n + 1);
                    let bits = bits.to_be_bytes();
                    let ok = piece < n
                        && !m.have[piece as usize]
                        && !m.is_partial(piece)
                        && (0..m.nblocks(piece)).any(|j| bit(&bits, j));
                    assert_eq!(p.restore_partial(piece, &bits), ok);
                    if ok {
                        for j in 0..m.nblocks(piece) {
                            if bit(&bits, j) {
                                m.blocks[piece as usize][j as usize].received = true;
                            }
                        }
                    }
                }
            }
            check(&p, &m, &peers, keys);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// Random swarms: every rule of the module docs holds after every step, and the
        /// picker's state equals the model's.
        #[test]
        fn picker_matches_model(
            cfg in config(),
            have in any::<u16>(),
            seed in any::<u64>(),
            ops in prop::collection::vec(op(), 0..250),
        ) {
            run(cfg, have, seed, ops);
        }
    }
}
