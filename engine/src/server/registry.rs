//! The torrent registry: what every shard shares, read-mostly.
//!
//! Filled by the control plane (at start-up, and while serving) and handed to every shard as
//! `Arc<Registry>`. Nothing on the serving path takes a lock: lookups are immutable, piece state is a set of atomic
//! bitfields, per-file stamps are atomics, and statistics are relaxed atomic counters that the
//! control plane samples (a torrent's error text has a mutex, taken only when a piece fails).
//!
//! Piece states (per torrent):
//! - `have`: we hold the piece (seed: all of them).
//! - `verified`: the piece's hash was checked against the metainfo (after a full check, all of
//!   them; with `--skip-check`, set the first time a piece is served and its hash matches).
//! - `failed`: the piece failed its hash check, or its data could not be read (a file missing,
//!   shorter than the torrent says, not a regular file, or an I/O error): it is never sent
//!   again, and requests for it are refused without touching the disk (no retry storm). The
//!   first storage error of each kind is kept as the torrent's error, shown in the status line,
//!   and logged once, not per block.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use uring_bt_proto::layout::Layout;
use uring_bt_storage::error::{ErrorAction, StorageError};

/// A fixed-size bitfield of atomics, one bit per piece.
#[derive(Debug)]
pub struct AtomicBits {
    words: Box<[AtomicU64]>,
    len: u32,
}

impl AtomicBits {
    /// `len` bits, all clear (or all set with `set_all`).
    pub fn new(len: u32, set_all: bool) -> Self {
        let n = (len as usize).div_ceil(64);
        let words = (0..n)
            .map(|i| {
                let bits_here = (len as usize - i * 64).min(64);
                let v = if !set_all {
                    0
                } else if bits_here == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits_here) - 1
                };
                AtomicU64::new(v)
            })
            .collect();
        AtomicBits { words, len }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`; false when out of range.
    #[inline]
    pub fn get(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns whether it was clear before. Out of range: no-op, false.
    #[inline]
    pub fn set(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let prev = self.words[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::AcqRel);
        prev & (1 << (i % 64)) == 0
    }

    /// Clears bit `i`; returns whether it was set before. Out of range: no-op, false.
    #[inline]
    pub fn clear(&self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let prev = self.words[(i / 64) as usize].fetch_and(!(1 << (i % 64)), Ordering::AcqRel);
        prev & (1 << (i % 64)) != 0
    }

    /// Number of set bits.
    pub fn count(&self) -> u32 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum()
    }

    /// Whether every bit is set.
    pub fn all(&self) -> bool {
        self.count() == self.len
    }

    /// The BEP 3 bitfield encoding (high bit of the first byte = piece 0).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; (self.len as usize).div_ceil(8)];
        for i in 0..self.len {
            if self.get(i) {
                out[(i / 8) as usize] |= 0x80 >> (i % 8);
            }
        }
        out
    }
}

/// Relaxed counters of one torrent, summed over shards.
#[derive(Debug, Default)]
pub struct TorrentStats {
    /// Payload bytes sent in PIECE messages.
    pub uploaded: AtomicU64,
    /// Blocks served.
    pub blocks_served: AtomicU64,
    /// Requests refused (REJECT or dropped).
    pub requests_rejected: AtomicU64,
    /// Connected peers (after handshake).
    pub peers: AtomicUsize,
    /// Peers ever accepted.
    pub peers_total: AtomicU64,
    /// Connected peers we dialed (the rest of `peers` connected to us).
    pub peers_dialed: AtomicUsize,
    /// Pieces found bad while serving (lazy verification).
    pub pieces_failed: AtomicU64,
    /// Peers we disconnected for misbehaving (bad requests, protocol violations; not "both
    /// seeds"). A well-behaved client never lands here: the interop tests check it stays 0.
    pub peers_dropped: AtomicU64,
}

/// One torrent being served.
#[derive(Debug)]
pub struct Torrent {
    /// Index in the registry.
    pub index: usize,
    pub info_hash: [u8; 20],
    pub name: String,
    pub layout: Arc<Layout>,
    /// The save directory: file paths in the layout are relative to it.
    pub root: PathBuf,
    /// SHA-1 of every piece, from the metainfo.
    pub piece_hashes: Arc<[[u8; 20]]>,
    pub have: AtomicBits,
    pub verified: AtomicBits,
    pub failed: AtomicBits,
    pub stats: TorrentStats,
    /// The first storage error that made pieces unservable, for the status line (rare: taken
    /// only when a piece newly fails).
    pub error: Mutex<Option<String>>,
    /// Per file: its size and mtime (ns) when its pieces were verified (`u64::MAX`: unknown).
    /// Compared after every read, so a file changed under the seeder is never served as
    /// checked: see [`Torrent::unchanged`].
    stamps: Box<[(AtomicU64, AtomicU64)]>,
    /// Pieces given another chance after their file changed ([`Torrent::recheck_failed`]),
    /// numbered by round: shards send HAVE for them to their peers (new peers were offered a
    /// bitfield without them). The last [`RECOVERY_LOG`] rounds are kept.
    pub recovered: Mutex<std::collections::VecDeque<(u64, std::ops::Range<u32>)>>,
    /// The newest round in `recovered` (0: none yet).
    pub recovered_gen: AtomicU64,
    /// The raw info dictionary, served to peers by BEP 9 metadata exchange (`None`: not
    /// served, as for a private torrent).
    pub metadata: Option<Arc<[u8]>>,
    /// BEP 27: peers only from the torrent's trackers (no PEX, no metadata to peers).
    pub private: bool,
    /// The listening addresses of the peers connected now (for PEX), with their BEP 11 flags.
    /// Changed when a peer connects or closes (never per block); bounded by the peers allowed
    /// per torrent.
    pub swarm: Mutex<HashMap<std::net::SocketAddr, u8>>,
    /// Downloading: `None` for a torrent we only seed.
    pub download: Option<DownloadShared>,
}

/// What every shard and the control plane share of a torrent being downloaded. Its picker and
/// piece states live on its home shard only (`server::download`); this holds the flags and
/// counters others read.
#[derive(Debug)]
pub struct DownloadShared {
    /// The shard that owns the download: its picker, hash states and outgoing connections.
    pub home_shard: usize,
    /// Pieces still missing: the data files are being written (their mtimes change, so the
    /// seeding path's "changed under the seeder" check is off until the download completes).
    pub active: std::sync::atomic::AtomicBool,
    /// Pieces found complete on disk at start (resume data or the start-up check).
    pub resumed: u32,
    /// Payload bytes received in PIECE messages this run (including wasted ones).
    pub downloaded: AtomicU64,
    /// Bytes received and thrown away: unrequested or duplicate blocks, pieces that failed.
    pub wasted: AtomicU64,
    /// Pieces that failed their hash check.
    pub hash_failures: AtomicU64,
    /// Set when the last piece passed.
    pub completed_at: Mutex<Option<std::time::Instant>>,
    /// Why the download stopped (a full or failing disk); verified data and seeding go on.
    pub fatal: Mutex<Option<String>>,
    /// Per peer address: what it gave us (the `peer:` lines). Only peers that sent us data or
    /// failed a check get one, at most [`MAX_PEER_RECORDS`]; the rest are counted in
    /// `records_dropped`.
    pub peers: Mutex<HashMap<std::net::SocketAddr, PeerRecord>>,
    pub records_dropped: AtomicU64,
    /// Peers that sent data failing the hash check too often: never connected again. At most
    /// [`MAX_BANNED`] addresses (beyond, a banned peer is still closed, not remembered).
    pub banned: Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// Pieces in progress with the blocks already written (block bitmaps): from the resume
    /// data at start (taken by the home shard), and from the home shard at a stop (saved).
    pub partials: Mutex<Vec<(u32, Vec<u8>)>>,
    /// Bytes of blocks restored from partial pieces at start.
    pub restored: AtomicU64,
}

/// Most per-address records of a download (a peer connecting from ever new ports cannot grow
/// the map past this).
pub const MAX_PEER_RECORDS: usize = 4096;
/// Most banned addresses remembered per download.
pub const MAX_BANNED: usize = 4096;

/// One peer's contribution to a download.
#[derive(Debug, Clone, Default)]
pub struct PeerRecord {
    pub client: String,
    pub downloaded: u64,
    pub pieces: u32,
    pub hash_failures: u32,
    pub banned: bool,
}

impl DownloadShared {
    pub fn new(home_shard: usize, resumed: u32, active: bool) -> Self {
        DownloadShared {
            home_shard,
            active: std::sync::atomic::AtomicBool::new(active),
            resumed,
            downloaded: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            hash_failures: AtomicU64::new(0),
            completed_at: Mutex::new(None),
            fatal: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            banned: Mutex::new(std::collections::HashSet::new()),
            partials: Mutex::new(Vec::new()),
            restored: AtomicU64::new(0),
            records_dropped: AtomicU64::new(0),
        }
    }

    /// Whether `ip` is banned.
    pub fn is_banned(&self, ip: std::net::IpAddr) -> bool {
        self.banned.lock().is_ok_and(|b| b.contains(&ip))
    }

    /// Whether pieces are still being downloaded.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

/// A file's size and mtime in nanoseconds, following links (the server opens beneath the save
/// directory only, so a followed link is one the server reads too); `None` when it cannot be
/// stat'ed.
fn stamp(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let ns = (m.mtime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(m.mtime_nsec() as u64);
    Some((m.len(), ns))
}

impl Torrent {
    /// A torrent we seed. `verified` says whether the data was checked in full before serving.
    pub fn new_seed(
        index: usize,
        info_hash: [u8; 20],
        name: String,
        layout: Arc<Layout>,
        root: PathBuf,
        piece_hashes: Arc<[[u8; 20]]>,
        verified: bool,
    ) -> Self {
        let n = layout.num_pieces();
        Torrent {
            index,
            info_hash,
            name,
            root,
            piece_hashes,
            have: AtomicBits::new(n, true),
            verified: AtomicBits::new(n, verified),
            failed: AtomicBits::new(n, false),
            stats: TorrentStats::default(),
            error: Mutex::new(None),
            recovered: Mutex::new(std::collections::VecDeque::new()),
            recovered_gen: AtomicU64::new(0),
            stamps: (0..layout.files().len())
                .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)))
                .collect(),
            layout,
            metadata: None,
            private: false,
            swarm: Mutex::new(HashMap::new()),
            download: None,
        }
    }

    /// A torrent we download into `root`: `have` holds the pieces found good on disk at start
    /// (BEP 3 bitfield); the rest are fetched by shard `home_shard`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_download(
        index: usize,
        info_hash: [u8; 20],
        name: String,
        layout: Arc<Layout>,
        root: PathBuf,
        piece_hashes: Arc<[[u8; 20]]>,
        have: &[u8],
        home_shard: usize,
    ) -> Self {
        let mut t = Torrent::new_seed(index, info_hash, name, layout, root, piece_hashes, false);
        let n = t.layout.num_pieces();
        t.have = AtomicBits::new(n, false);
        for p in 0..n {
            if have
                .get((p / 8) as usize)
                .is_some_and(|b| b & (0x80 >> (p % 8)) != 0)
            {
                t.have.set(p);
                t.verified.set(p);
            }
        }
        let resumed = t.have.count();
        t.download = Some(DownloadShared::new(home_shard, resumed, resumed < n));
        t
    }

    /// Downloading now (pieces missing, files being written).
    pub fn is_downloading(&self) -> bool {
        self.download.as_ref().is_some_and(|d| d.is_active())
    }

    /// The connected peers' listening addresses (for PEX), at most `cap` of them.
    pub fn swarm_snapshot(&self, cap: usize, out: &mut Vec<(std::net::SocketAddr, u8)>) {
        out.clear();
        if let Ok(g) = self.swarm.lock() {
            out.extend(g.iter().take(cap).map(|(a, f)| (*a, *f)));
        }
    }

    /// Records every data file's size and mtime as the ones its pieces were verified against
    /// (call right after the check, before serving).
    pub fn stamp_files(&self) {
        for (i, f) in self.layout.files().iter().enumerate() {
            if f.padding {
                continue;
            }
            let (len, ns) = stamp(&self.root.join(&f.path)).unwrap_or((u64::MAX, u64::MAX));
            self.stamps[i].0.store(len, Ordering::Relaxed);
            self.stamps[i].1.store(ns, Ordering::Relaxed);
        }
    }

    /// Called after a read of piece `piece` completed: whether every file it touches still has
    /// the size and mtime its pieces were verified against. A write to a file updates its mtime
    /// before it changes a byte, so an unchanged stamp read after the read means the bytes read
    /// are the checked ones. A changed file has its pieces checked again ([`Torrent::file_changed`])
    /// and its new stamp recorded; the caller must not send what it read. `seen` caches the
    /// answer per file within one batch (a stat per file per batch, not per block).
    pub fn unchanged(&self, piece: u32, seen: &mut Vec<(usize, bool)>) -> bool {
        if self.is_downloading() {
            // We are the writer: pieces we have were verified from what we wrote, and are
            // never written again (the picker never picks a piece we have).
            return true;
        }
        let mut ok = true;
        for i in self.layout.piece_files(piece) {
            let f = &self.layout.files()[i];
            if f.padding {
                continue;
            }
            if let Some(&(_, same)) = seen.iter().find(|(j, _)| *j == i) {
                ok &= same;
                continue;
            }
            let now = stamp(&self.root.join(&f.path)).unwrap_or((u64::MAX, u64::MAX));
            let then = (
                self.stamps[i].0.load(Ordering::Relaxed),
                self.stamps[i].1.load(Ordering::Relaxed),
            );
            let same = now == then;
            if !same {
                self.stamps[i].0.store(now.0, Ordering::Relaxed);
                self.stamps[i].1.store(now.1, Ordering::Relaxed);
                let n = self.file_changed(i);
                tracing::warn!(torrent = %self.name, "{} changed under the seeder: its {n} piece(s) are checked again before they are served", f.path.display());
            }
            seen.push((i, same));
            ok &= same;
        }
        ok
    }

    /// A storage error while serving piece `piece`. A bad request changes nothing; a file that
    /// is missing, short, not a regular file or out of the save directory makes every piece of
    /// that file unservable; any other I/O error (EIO) makes this piece unservable. Returns true
    /// when this error newly failed pieces (the caller logs it; repeats are silent).
    pub fn on_storage_error(&self, piece: u32, e: &StorageError) -> bool {
        if e.action() == ErrorAction::RejectRequest {
            return false;
        }
        let whole_file = matches!(
            e,
            StorageError::FileMissing { .. }
                | StorageError::FileTooShort { .. }
                | StorageError::NotRegularFile { .. }
                | StorageError::UnsafePath { .. }
        );
        let path = match e {
            StorageError::FileMissing { path }
            | StorageError::FileTooShort { path, .. }
            | StorageError::NotRegularFile { path }
            | StorageError::UnsafePath { path }
            | StorageError::Io { path, .. } => Some(path),
            _ => None,
        };
        let file = path.and_then(|path| {
            self.layout
                .piece_files(piece)
                .find(|&i| self.root.join(&self.layout.files()[i].path) == *path)
        });
        let pieces = match file {
            Some(i) if whole_file => {
                // What the file looks like now (missing: unknown), so that the rescan gives its
                // pieces another chance only once it changes again.
                let now = stamp(&self.root.join(&self.layout.files()[i].path))
                    .unwrap_or((u64::MAX, u64::MAX));
                self.stamps[i].0.store(now.0, Ordering::Relaxed);
                self.stamps[i].1.store(now.1, Ordering::Relaxed);
                self.layout.file_pieces(i)
            }
            _ => piece..piece.saturating_add(1),
        };
        let mut news = 0u64;
        for p in pieces {
            if self.failed.set(p) {
                news += 1;
            }
        }
        if news == 0 {
            return false;
        }
        self.stats.pieces_failed.fetch_add(news, Ordering::Relaxed);
        self.note_error(|| e.to_string());
        true
    }

    /// Keeps `reason` as the torrent's error unless it has one.
    pub fn note_error(&self, reason: impl FnOnce() -> String) {
        if let Ok(mut err) = self.error.lock() {
            err.get_or_insert_with(reason);
        }
    }

    /// File `index` changed on disk (its size or mtime): its pieces are checked again before
    /// they are served (cleared `verified`), and pieces that had failed get another chance
    /// (cleared `failed`: one read or hash each tells). Returns the pieces affected.
    pub fn file_changed(&self, index: usize) -> u32 {
        let pieces = self.layout.file_pieces(index);
        let n = pieces.len() as u32;
        for p in pieces {
            self.verified.clear(p);
            self.failed.clear(p);
        }
        n
    }

    /// For a torrent with unservable pieces (seeding, not downloading): every file holding a
    /// failed piece is looked at (a stat each, `budget` at most per call); one whose size or
    /// mtime changed since it failed (restored, replaced, extended) has its pieces checked
    /// again before they are served ([`Torrent::file_changed`]), and they are logged in
    /// `recovered` for the shards to send HAVE. The error clears once no piece is failed.
    /// Returns the pieces given another chance. Called by the control plane every
    /// [`RESCAN`]; a file that is still broken fails again on its first read, quietly.
    pub fn recheck_failed(&self, budget: usize) -> u32 {
        if self.failed.count() == 0 || self.is_downloading() {
            return 0;
        }
        let mut looked = 0;
        let mut given = 0;
        for (i, f) in self.layout.files().iter().enumerate() {
            if f.padding || looked >= budget {
                continue;
            }
            let pieces = self.layout.file_pieces(i);
            if !pieces.clone().any(|p| self.failed.get(p)) {
                continue;
            }
            looked += 1;
            let now = stamp(&self.root.join(&f.path)).unwrap_or((u64::MAX, u64::MAX));
            let then = (
                self.stamps[i].0.load(Ordering::Relaxed),
                self.stamps[i].1.load(Ordering::Relaxed),
            );
            if now == then || now == (u64::MAX, u64::MAX) {
                continue;
            }
            self.stamps[i].0.store(now.0, Ordering::Relaxed);
            self.stamps[i].1.store(now.1, Ordering::Relaxed);
            given += self.file_changed(i);
            tracing::warn!(torrent = %self.name, "{} changed: its {} piece(s) are checked again and offered to peers", f.path.display(), pieces.len());
            if let Ok(mut log) = self.recovered.lock() {
                let gen = self.recovered_gen.load(Ordering::Relaxed) + 1;
                log.push_back((gen, pieces));
                while log.len() > RECOVERY_LOG {
                    log.pop_front();
                }
                self.recovered_gen.store(gen, Ordering::Release);
            }
        }
        if self.failed.count() == 0 {
            if let Ok(mut err) = self.error.lock() {
                *err = None;
            }
        }
        given
    }

    /// What resume data may record as good at a stop: pieces verified, not failed, and whose
    /// files still have the size and mtime they were verified against (BEP 3 bitfield).
    pub fn resume_bitfield(&self) -> Vec<u8> {
        let n = self.layout.num_pieces();
        let mut out = vec![0u8; (n as usize).div_ceil(8)];
        let mut seen = Vec::new();
        for p in 0..n {
            if self.verified.get(p) && !self.failed.get(p) && self.unchanged(p, &mut seen) {
                out[(p / 8) as usize] |= 0x80 >> (p % 8);
            }
        }
        out
    }

    /// Pieces that can no longer be served (failed their check or their read).
    pub fn unavailable(&self) -> u32 {
        self.failed.count()
    }

    /// The torrent's storage error, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// What we offer a new peer: every piece we have that has not failed (BEP 3 bitfield).
    pub fn servable_bitfield(&self) -> Vec<u8> {
        let mut out = self.have.to_bytes();
        for p in 0..self.failed.len() {
            if self.failed.get(p) {
                out[(p / 8) as usize] &= !(0x80 >> (p % 8));
            }
        }
        out
    }

    /// Whether piece `p` may be sent: we have it and it has not failed verification.
    #[inline]
    pub fn can_serve(&self, p: u32) -> bool {
        self.have.get(p) && !self.failed.get(p)
    }

    /// We have, and can serve, every piece.
    pub fn is_seed(&self) -> bool {
        self.have.all() && self.failed.count() == 0
    }
}

/// How often the control plane looks at the files of unservable pieces
/// ([`Torrent::recheck_failed`]), and at most how many files per torrent each time.
pub const RESCAN: std::time::Duration = std::time::Duration::from_secs(5);
pub const RESCAN_FILES: usize = 4096;
/// Rounds of recovered pieces kept for the shards (one round per changed file).
pub const RECOVERY_LOG: usize = 1024;

/// Relaxed counters of the whole server, summed over shards (each shard adds its own).
#[derive(Debug)]
pub struct ServerStats {
    /// Connections accepted / refused because the shard was full.
    pub accepted: AtomicU64,
    pub refused_full: AtomicU64,
    /// `accept` failures (EMFILE, ENFILE, ENOBUFS...).
    pub accept_errors: AtomicU64,
    /// Data files opened into, and evicted from, the shards' registered-file tables.
    pub file_opens: AtomicU64,
    pub file_evictions: AtomicU64,
    /// Blocks sent by the splice path (`--send-path splice`).
    pub blocks_spliced: AtomicU64,
    /// Shard events the control plane's channel had no room for.
    pub events_dropped: AtomicU64,
    /// Outgoing connections: attempted, and those whose handshake completed.
    pub dials: AtomicU64,
    pub dials_connected: AtomicU64,
    /// Connections each shard holds (published every tick; at most [`MAX_SHARDS`] shards).
    pub shard_peers: [AtomicUsize; MAX_SHARDS],
}

/// Most shards a server runs (`seed --shards`).
pub const MAX_SHARDS: usize = 256;

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats {
            accepted: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            file_opens: AtomicU64::new(0),
            file_evictions: AtomicU64::new(0),
            blocks_spliced: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            dials: AtomicU64::new(0),
            dials_connected: AtomicU64::new(0),
            shard_peers: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl ServerStats {
    /// One line for the end of a run.
    pub fn summary(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "server: {} connections accepted, {} refused (full), {} accept errors; {} dials, {} \
             connected; data files opened {} times, evicted {} times; {} blocks spliced",
            l(&self.accepted),
            l(&self.refused_full),
            l(&self.accept_errors),
            l(&self.dials),
            l(&self.dials_connected),
            l(&self.file_opens),
            l(&self.file_evictions),
            l(&self.blocks_spliced)
        )
    }
}

/// Every torrent of this process, looked up by info hash.
///
/// Not frozen at start-up: torrents are added while the server runs (an API, a watch
/// directory), and a shard restarted by the supervisor starts from what is here now. Readers
/// take a snapshot ([`Registry::torrents`]: one `Arc` clone under a read lock), never a lock on
/// the per-block path: shards keep their own copy of the entries they serve and look here only
/// when a handshake names a torrent they have not seen. Indices are stable: a torrent keeps
/// its index for the life of the process.
#[derive(Debug, Default)]
pub struct Registry {
    snap: std::sync::RwLock<Arc<Snapshot>>,
    /// Counters of the server as a whole.
    pub server: ServerStats,
    /// Each running shard's hand-off queue (by shard index): an inbound connection for a
    /// torrent being downloaded is passed to the download's home shard (`server::conn`). Taken
    /// once per such connection, never per block.
    pub handoff: Mutex<Vec<Option<tokio::sync::mpsc::Sender<Handoff>>>>,
}

/// An inbound connection passed to another shard after its handshake: the socket (a duplicate
/// of the descriptor; the first shard closes its own) and every byte received so far, the
/// handshake included, which the new shard's session reads again.
#[derive(Debug)]
pub struct Handoff {
    pub fd: std::os::fd::OwnedFd,
    pub addr: std::net::SocketAddr,
    pub bytes: Vec<u8>,
}

/// Connections waiting in one shard's hand-off queue, at most.
pub const HANDOFF_QUEUE: usize = 64;

impl Registry {
    /// Registers shard `index`'s hand-off queue (a restarted shard replaces its old one).
    pub fn set_handoff(&self, index: usize, tx: tokio::sync::mpsc::Sender<Handoff>) {
        if let Ok(mut v) = self.handoff.lock() {
            if v.len() <= index {
                v.resize_with(index + 1, || None);
            }
            v[index] = Some(tx);
        }
    }

    /// Passes `h` to shard `index`; gives it back when that shard has no queue or it is full.
    pub fn hand_off(&self, index: usize, h: Handoff) -> Result<(), Handoff> {
        let tx = self
            .handoff
            .lock()
            .ok()
            .and_then(|v| v.get(index).cloned().flatten());
        match tx {
            Some(tx) => tx.try_send(h).map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(h)
                | tokio::sync::mpsc::error::TrySendError::Closed(h) => h,
            }),
            None => Err(h),
        }
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    torrents: Vec<Arc<Torrent>>,
    by_hash: HashMap<[u8; 20], usize>,
}

/// A snapshot of the registry's torrents, indexed by [`Torrent::index`].
#[derive(Debug, Clone)]
pub struct Torrents(Arc<Snapshot>);

impl std::ops::Deref for Torrents {
    type Target = [Arc<Torrent>];
    fn deref(&self) -> &[Arc<Torrent>] {
        &self.0.torrents
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a writer panicked between two consistent snapshots.
        match self.snap.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The index the next added torrent gets.
    pub fn next_index(&self) -> usize {
        self.snapshot().torrents.len()
    }

    /// Adds a torrent, at start-up or while serving; its `index` must be
    /// [`Registry::next_index`]. Refuses a duplicate info hash.
    pub fn add(&self, t: Torrent) -> Result<Arc<Torrent>, String> {
        let mut g = match self.snap.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.by_hash.contains_key(&t.info_hash) {
            return Err(format!(
                "torrent {} ({}) is listed twice",
                t.name,
                hex(&t.info_hash)
            ));
        }
        if t.index != g.torrents.len() {
            return Err(format!(
                "torrent {} has index {}, expected {}",
                t.name,
                t.index,
                g.torrents.len()
            ));
        }
        let t = Arc::new(t);
        let mut next = Snapshot {
            torrents: g.torrents.clone(),
            by_hash: g.by_hash.clone(),
        };
        next.by_hash.insert(t.info_hash, next.torrents.len());
        next.torrents.push(t.clone());
        *g = Arc::new(next);
        Ok(t)
    }

    pub fn get(&self, info_hash: &[u8; 20]) -> Option<Arc<Torrent>> {
        let s = self.snapshot();
        s.by_hash.get(info_hash).map(|&i| s.torrents[i].clone())
    }

    /// The torrents now (a snapshot: later additions are not in it).
    pub fn torrents(&self) -> Torrents {
        Torrents(self.snapshot())
    }
}

pub use uring_bt_proto::metainfo::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_bits() {
        let b = AtomicBits::new(70, false);
        assert_eq!(b.count(), 0);
        assert!(b.set(69));
        assert!(!b.set(69));
        assert!(b.get(69));
        assert!(!b.get(70));
        assert!(!b.set(70));
        assert_eq!(b.count(), 1);
        let all = AtomicBits::new(70, true);
        assert!(all.all());
        assert_eq!(all.count(), 70);
        let bytes = all.to_bytes();
        assert_eq!(bytes.len(), 9);
        assert_eq!(bytes[8], 0b1111_1100); // bits 64..70: six set, two spare clear
        assert_eq!(AtomicBits::new(64, true).count(), 64);
        assert!(all.clear(3));
        assert!(!all.clear(3));
        assert!(!all.get(3));
        assert_eq!(all.count(), 69);
    }

    /// Two files of 3 and 2 pieces (16 KiB pieces): pieces 0..3 are a.bin's, 3..5 b.bin's.
    fn two_files() -> Torrent {
        use uring_bt_proto::layout::FileEntry;
        let fe = |p: &str, len: u64| FileEntry {
            path: PathBuf::from(p),
            length: len,
            padding: false,
        };
        let layout = Layout::new(
            vec![fe("t/a.bin", 3 * 16384), fe("t/b.bin", 2 * 16384)],
            16384,
        )
        .expect("layout");
        Torrent::new_seed(
            0,
            [1; 20],
            "t".into(),
            Arc::new(layout),
            PathBuf::from("/srv"),
            vec![[0; 20]; 5].into(),
            true,
        )
    }

    #[test]
    fn storage_errors_fail_a_file_or_a_piece_once() {
        let t = two_files();
        // EIO on a block of piece 1: that piece only; the first report is news, a repeat not.
        let eio = StorageError::Io {
            path: PathBuf::from("/srv/t/a.bin"),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(t.on_storage_error(1, &eio));
        assert!(!t.on_storage_error(1, &eio));
        assert_eq!(
            (t.unavailable(), t.can_serve(0), t.can_serve(1)),
            (1, true, false)
        );
        // b.bin missing: both of its pieces, whichever one was read.
        let gone = StorageError::FileMissing {
            path: PathBuf::from("/srv/t/b.bin"),
        };
        assert!(t.on_storage_error(4, &gone));
        assert!(!t.can_serve(3) && !t.can_serve(4) && t.can_serve(2));
        assert_eq!(t.unavailable(), 3);
        assert!(!t.is_seed());
        assert_eq!(t.servable_bitfield(), vec![0b1010_0000]);
        // The first error is the torrent's error; a bad request changes nothing.
        assert!(t.error().is_some_and(|e| e.contains("a.bin")));
        assert!(!t.on_storage_error(
            0,
            &StorageError::BlockTooLarge {
                len: 1 << 20,
                capacity: 16384
            }
        ));
        assert!(t.can_serve(0));
        // The rescan: a file still missing, or one whose stamp did not change (the EIO), gives
        // nothing another chance, so a broken file does not flip between failed and offered.
        assert_eq!(t.recheck_failed(RESCAN_FILES), 0);
        assert_eq!(t.unavailable(), 3);
        assert_eq!(t.recovered_gen.load(Ordering::Relaxed), 0);
        assert!(t.error().is_some());
        // The file changes again: its pieces get another chance (checked before served).
        assert_eq!(t.file_changed(1), 2);
        assert!(t.can_serve(3) && !t.verified.get(3));
    }
}
