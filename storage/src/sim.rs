//! A simulated block store with seeded faults, for deterministic engine tests.
//!
//! [`SimStore`] implements [`BlockStore`] over in-memory torrent data. Faults are drawn from a
//! seeded PRNG (the same seed and the same sequence of calls give the same faults) or injected
//! one by one with [`SimStore::inject`]:
//! - **short reads/writes**: the transfer happens in several partial steps with a yield between
//!   them (what a real short read costs the caller: more turns, same bytes);
//! - **EIO**: the operation fails with [`StorageError::Io`];
//! - **ENOSPC**: a write fails with [`StorageError::NoSpace`];
//! - **latency**: each operation waits a drawn delay (tokio timer; works inside tokio-uring);
//! - per-file state: a file can be made missing ([`StorageError::FileMissing`]) or truncated
//!   ([`StorageError::FileTooShort`]);
//! - bad regions ([`SimStore::fail_reads`]): every read touching them fails with EIO, as a bad
//!   sector does, so a test can name the blocks that must fail whatever the order of operations.
//!
//! A fault drawn or injected applies to one operation: one `read_block`, one `write_block`, one
//! `hash_piece`, or one whole `read_blocks` run (the run fails, is delayed or is transferred in
//! partial steps as a whole, as one vectored read would be).
//!
//! Buffers come from a real [`BufPool`], so the engine under test sees the same backpressure.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::layout::Layout;
use crate::pool::PoolBuf;
use crate::store::{for_each_piece_of, run_length, BlockStore, StorageError, TorrentId};

/// Fault rates (per million operations) and latency of a [`SimStore`].
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub seed: u64,
    pub short_per_million: u32,
    pub eio_per_million: u32,
    /// Applies to writes only.
    pub enospc_per_million: u32,
    /// Each operation waits a delay drawn uniformly from this range (none when `None`).
    pub latency: Option<(Duration, Duration)>,
}

/// A fault to inject into the next operation(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next transfer happens in `steps` partial steps.
    Short {
        steps: u32,
    },
    Eio,
    NoSpace,
    Delay(Duration),
}

/// Counters of a [`SimStore`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    pub reads: u64,
    pub writes: u64,
    pub hashes: u64,
    pub short_steps: u64,
    pub eio: u64,
    pub enospc: u64,
    pub delayed: u64,
}

struct SimTorrent {
    layout: Arc<Layout>,
    /// The whole byte stream (padding files included, as zeros).
    data: Vec<u8>,
    writable: bool,
    missing: Vec<bool>,
    /// Current length of each file (<= its length in the layout).
    present: Vec<u64>,
    /// Ranges of the stream whose reads fail with EIO.
    bad: Vec<Range<u64>>,
    root: PathBuf,
}

/// See the module docs.
pub struct SimStore {
    cfg: SimConfig,
    rng: Cell<u64>,
    torrents: RefCell<Vec<SimTorrent>>,
    injected: RefCell<VecDeque<Fault>>,
    stats: Cell<SimStats>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStore")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats.get())
            .finish()
    }
}

impl SimStore {
    pub fn new(cfg: SimConfig) -> SimStore {
        SimStore {
            rng: Cell::new(splitmix(cfg.seed) | 1),
            cfg,
            torrents: RefCell::new(Vec::new()),
            injected: RefCell::new(VecDeque::new()),
            stats: Cell::new(SimStats::default()),
        }
    }

    /// Adds a torrent holding `data` (its whole stream; must be `layout.total_length()` bytes,
    /// else it is cut or zero-extended). Paths in errors are `sim/<file path>`.
    pub fn add_torrent(&self, layout: Arc<Layout>, mut data: Vec<u8>, writable: bool) -> TorrentId {
        data.resize(layout.total_length() as usize, 0);
        let n = layout.files().len();
        let present = layout.files().iter().map(|f| f.length).collect();
        let mut ts = self.torrents.borrow_mut();
        ts.push(SimTorrent {
            layout,
            data,
            writable,
            missing: vec![false; n],
            present,
            bad: Vec::new(),
            root: PathBuf::from("sim"),
        });
        TorrentId((ts.len() - 1) as u32)
    }

    /// The torrent's current stream (what reads would return for present files).
    pub fn data(&self, t: TorrentId) -> Option<Vec<u8>> {
        self.torrents
            .borrow()
            .get(t.0 as usize)
            .map(|x| x.data.clone())
    }

    /// Makes file `file` missing (or present again).
    pub fn set_missing(&self, t: TorrentId, file: usize, missing: bool) {
        if let Some(x) = self.torrents.borrow_mut().get_mut(t.0 as usize) {
            if let Some(m) = x.missing.get_mut(file) {
                *m = missing;
            }
        }
    }

    /// Truncates file `file` to `len` bytes (reads past it fail with `FileTooShort`).
    pub fn truncate(&self, t: TorrentId, file: usize, len: u64) {
        if let Some(x) = self.torrents.borrow_mut().get_mut(t.0 as usize) {
            let full = x.layout.files().get(file).map_or(0, |f| f.length);
            if let Some(p) = x.present.get_mut(file) {
                *p = len.min(full);
            }
        }
    }

    /// Makes every read (`read_block`, `read_blocks`, `hash_piece`) that touches bytes `range`
    /// of the torrent's stream fail with EIO, until [`SimStore::clear_failed_reads`]: a bad
    /// sector. Padding files never fail. Writes are not affected.
    pub fn fail_reads(&self, t: TorrentId, range: Range<u64>) {
        if let Some(x) = self.torrents.borrow_mut().get_mut(t.0 as usize) {
            x.bad.push(range);
        }
    }

    /// Forgets the bad regions of [`SimStore::fail_reads`].
    pub fn clear_failed_reads(&self, t: TorrentId) {
        if let Some(x) = self.torrents.borrow_mut().get_mut(t.0 as usize) {
            x.bad.clear();
        }
    }

    /// Queues a fault for the next operations (FIFO, one per operation).
    pub fn inject(&self, f: Fault) {
        self.injected.borrow_mut().push_back(f);
    }

    pub fn stats(&self) -> SimStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut SimStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn next_u64(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn chance(&self, per_million: u32) -> bool {
        per_million > 0 && (self.next_u64() % 1_000_000) < u64::from(per_million)
    }

    /// Draws this operation's fault: an injected one first, else from the rates.
    fn draw(&self, write: bool) -> Option<Fault> {
        if let Some(f) = self.injected.borrow_mut().pop_front() {
            return Some(f);
        }
        if self.chance(self.cfg.eio_per_million) {
            return Some(Fault::Eio);
        }
        if write && self.chance(self.cfg.enospc_per_million) {
            return Some(Fault::NoSpace);
        }
        if self.chance(self.cfg.short_per_million) {
            return Some(Fault::Short {
                steps: 2 + (self.next_u64() % 3) as u32,
            });
        }
        None
    }

    async fn latency(&self, extra: Option<Duration>) {
        let d = match (extra, self.cfg.latency) {
            (Some(d), _) => Some(d),
            (None, Some((lo, hi))) if hi > lo => {
                let span = (hi - lo).as_nanos() as u64;
                Some(lo + Duration::from_nanos(self.next_u64() % span.max(1)))
            }
            (None, Some((lo, _))) if !lo.is_zero() => Some(lo),
            _ => None,
        };
        if let Some(d) = d {
            self.bump(|s| s.delayed += 1);
            tokio::time::sleep(d).await;
        }
    }

    /// Validates a block (or a run of blocks: `len` is its whole length) and returns the checks'
    /// error, if any, and the path of its first file. Files are checked in stream order and the
    /// first one that fails decides: missing, then (reads) a bad region, then too short.
    fn check(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        len: u32,
        write: bool,
    ) -> Result<PathBuf, StorageError> {
        let ts = self.torrents.borrow();
        let x = ts
            .get(t.0 as usize)
            .ok_or(StorageError::UnknownTorrent(t.0))?;
        if write && !x.writable {
            return Err(StorageError::ReadOnly {
                path: x.root.clone(),
            });
        }
        let mut first = None;
        for s in x.layout.spans(piece, begin, len)? {
            let f = &x.layout.files()[s.file_index];
            let path = x.root.join(&f.path);
            if f.padding {
                continue;
            }
            if x.missing[s.file_index] {
                return Err(StorageError::FileMissing { path });
            }
            let at = x.layout.file_offset(s.file_index) + s.file_offset;
            let here = at..at + u64::from(s.len);
            if !write
                && x.bad
                    .iter()
                    .any(|b| b.start < here.end && here.start < b.end)
            {
                self.bump(|st| st.eio += 1);
                let source = std::io::Error::from_raw_os_error(libc::EIO);
                return Err(StorageError::Io { path, source });
            }
            if !write && s.file_offset + u64::from(s.len) > x.present[s.file_index] {
                return Err(StorageError::FileTooShort {
                    path,
                    expected: f.length,
                    actual: x.present[s.file_index],
                });
            }
            first.get_or_insert(path);
        }
        Ok(first.unwrap_or_else(|| x.root.clone()))
    }

    async fn transfer(
        &self,
        write: bool,
        t: TorrentId,
        piece: u32,
        begin: u32,
        len: u32,
        mut buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf) {
        if len as usize > buf.block_capacity() {
            let capacity = buf.block_capacity();
            return (Err(StorageError::BlockTooLarge { len, capacity }), buf);
        }
        let r = self
            .transfer_run(
                write,
                t,
                piece,
                begin,
                &[len],
                std::slice::from_mut(&mut buf),
            )
            .await;
        (r, buf)
    }

    /// Transfers the run of blocks `lens` (laid end to end from `begin`; each fits its buffer,
    /// their sum fits a `u32`: the caller checked) to or from `bufs`, as one operation.
    async fn transfer_run(
        &self,
        write: bool,
        t: TorrentId,
        piece: u32,
        begin: u32,
        lens: &[u32],
        bufs: &mut [PoolBuf],
    ) -> Result<(), StorageError> {
        let len: u32 = lens.iter().sum();
        let path = self.check(t, piece, begin, len, write)?;
        let fault = self.draw(write);
        let delay = match fault {
            Some(Fault::Delay(d)) => Some(d),
            _ => None,
        };
        self.latency(delay).await;
        match fault {
            Some(Fault::Eio) => {
                self.bump(|s| s.eio += 1);
                let source = std::io::Error::from_raw_os_error(libc::EIO);
                return Err(StorageError::Io { path, source });
            }
            Some(Fault::NoSpace) if write => {
                self.bump(|s| s.enospc += 1);
                return Err(StorageError::NoSpace { path });
            }
            _ => {}
        }
        let steps = match fault {
            Some(Fault::Short { steps }) => steps.clamp(1, len.max(1)),
            _ => 1,
        };
        let start = {
            let ts = self.torrents.borrow();
            // Checked above: the torrent exists and the run fits in the piece.
            ts[t.0 as usize].layout.piece_range(piece).start as usize + begin as usize
        };
        if !write {
            for (b, &l) in bufs.iter_mut().zip(lens) {
                b.set_block_len(l as usize);
            }
        }
        let step = len.div_ceil(steps).max(1);
        let mut done: u32 = 0;
        while done < len {
            let n = step.min(len - done);
            {
                let mut ts = self.torrents.borrow_mut();
                let x = &mut ts[t.0 as usize];
                // Run bytes [done, done + n), block by block; `at` is the stream offset.
                let mut at = start + done as usize;
                for_each_piece_of(lens, done, n, |i, o, k| {
                    let range = at..at + k;
                    if write {
                        x.data[range].copy_from_slice(&bufs[i].block()[o..o + k]);
                    } else {
                        bufs[i].block_mut()[o..o + k].copy_from_slice(&x.data[range]);
                    }
                    at += k;
                });
            }
            done += n;
            if done < len {
                self.bump(|s| s.short_steps += 1);
                tokio::task::yield_now().await;
            }
        }
        let blocks = lens.len() as u64;
        if write {
            // Padding files read as zeros whatever is written to them.
            let mut ts = self.torrents.borrow_mut();
            let x = &mut ts[t.0 as usize];
            let layout = Arc::clone(&x.layout);
            if let Ok(spans) = layout.spans(piece, begin, len) {
                for s in spans {
                    if layout.files()[s.file_index].padding {
                        let a = start + s.buf_offset as usize;
                        x.data[a..a + s.len as usize].fill(0);
                    }
                }
            }
            self.bump(|s| s.writes += blocks);
        } else {
            self.bump(|s| s.reads += blocks);
        }
        Ok(())
    }
}

fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BlockStore for SimStore {
    async fn read_block(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        len: u32,
        buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf) {
        self.transfer(false, t, piece, begin, len, buf).await
    }

    /// The run is one operation: checked as a whole (the same errors, in the same order, as
    /// the io_uring store), then one fault is drawn for it and its bytes are copied.
    async fn read_blocks(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        lens: &[u32],
        mut bufs: Vec<PoolBuf>,
    ) -> (Result<(), StorageError>, Vec<PoolBuf>) {
        assert_eq!(lens.len(), bufs.len(), "one buffer per block");
        if lens.len() == 1 {
            if let Some(b) = bufs.pop() {
                let (r, b) = self.transfer(false, t, piece, begin, lens[0], b).await;
                bufs.push(b);
                return (r, bufs);
            }
        }
        if let Err(e) = run_length(lens, &bufs) {
            return (Err(e), bufs);
        }
        let r = self
            .transfer_run(false, t, piece, begin, lens, &mut bufs)
            .await;
        (r, bufs)
    }

    async fn write_block(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf) {
        let len = buf.block_len() as u32;
        self.transfer(true, t, piece, begin, len, buf).await
    }

    /// The run is one operation, as for [`BlockStore::read_blocks`].
    async fn write_blocks(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        mut bufs: Vec<PoolBuf>,
    ) -> (Result<(), StorageError>, Vec<PoolBuf>) {
        if bufs.is_empty() {
            return (Ok(()), bufs);
        }
        if bufs.len() == 1 {
            if let Some(b) = bufs.pop() {
                let (r, b) = self.write_block(t, piece, begin, b).await;
                bufs.push(b);
                return (r, bufs);
            }
        }
        let lens: Vec<u32> = bufs.iter().map(|b| b.block_len() as u32).collect();
        if let Err(e) = run_length(&lens, &bufs) {
            return (Err(e), bufs);
        }
        let r = self
            .transfer_run(true, t, piece, begin, &lens, &mut bufs)
            .await;
        (r, bufs)
    }

    async fn hash_piece(&self, t: TorrentId, piece: u32) -> Result<[u8; 20], StorageError> {
        let size = {
            let ts = self.torrents.borrow();
            let x = ts
                .get(t.0 as usize)
                .ok_or(StorageError::UnknownTorrent(t.0))?;
            x.layout.piece_size(piece)
        };
        self.check(t, piece, 0, size, false)?;
        let fault = self.draw(false);
        if let Some(Fault::Eio) = fault {
            self.bump(|s| s.eio += 1);
            let path = self.check(t, piece, 0, size, false)?;
            let source = std::io::Error::from_raw_os_error(libc::EIO);
            return Err(StorageError::Io { path, source });
        }
        let delay = match fault {
            Some(Fault::Delay(d)) => Some(d),
            _ => None,
        };
        self.latency(delay).await;
        let ts = self.torrents.borrow();
        let x = &ts[t.0 as usize];
        let r = x.layout.piece_range(piece);
        let digest = Sha1::digest(&x.data[r.start as usize..r.end as usize]);
        self.bump(|s| s.hashes += 1);
        Ok(digest.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::FileEntry;
    use crate::pool::BufPool;

    fn layout() -> Arc<Layout> {
        let fe = |p: &str, length, padding| FileEntry {
            path: p.into(),
            length,
            padding,
        };
        Arc::new(
            Layout::new(
                vec![
                    fe("t/a", 300, false),
                    fe("t/.pad/0", 212, true),
                    fe("t/b", 1000, false),
                ],
                256,
            )
            .unwrap(),
        )
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    fn rt<F: std::future::Future>(f: F) -> F::Output {
        tokio_uring::start(f)
    }

    #[test]
    fn reads_writes_and_hashes() {
        rt(async {
            let pool = BufPool::new(2, 256).unwrap();
            let l = layout();
            let mut d = data(l.total_length() as usize);
            d[300..512].fill(0);
            let s = SimStore::new(SimConfig::default());
            let t = s.add_torrent(Arc::clone(&l), d.clone(), true);
            let (r, buf) = s.read_block(t, 1, 10, 200, pool.take().await).await;
            r.unwrap();
            assert_eq!(buf.block(), &d[266..466]);
            let mut buf = buf;
            buf.fill_block(&[0xAB; 100]);
            let (r, _) = s.write_block(t, 1, 0, buf).await;
            r.unwrap();
            let now = s.data(t).unwrap();
            assert_eq!(&now[256..300], &[0xAB; 44][..]);
            assert!(now[300..356].iter().all(|&b| b == 0), "padding stays zero");
            let want: [u8; 20] = Sha1::digest(&now[0..256]).into();
            assert_eq!(s.hash_piece(t, 0).await.unwrap(), want);
        });
    }

    #[test]
    fn seeded_faults_are_deterministic_and_typed() {
        let run = |seed| {
            rt(async move {
                let pool = BufPool::new(1, 256).unwrap();
                let l = layout();
                let s = SimStore::new(SimConfig {
                    seed,
                    short_per_million: 200_000,
                    eio_per_million: 100_000,
                    enospc_per_million: 100_000,
                    latency: Some((Duration::ZERO, Duration::from_micros(50))),
                });
                let t = s.add_torrent(Arc::clone(&l), data(l.total_length() as usize), true);
                let mut outcome = Vec::new();
                for i in 0..200u32 {
                    let piece = i % l.num_pieces();
                    let size = l.piece_size(piece);
                    let mut buf = pool.take().await;
                    let r = if i % 2 == 0 {
                        let (r, _) = s.read_block(t, piece, 0, size, buf).await;
                        r
                    } else {
                        buf.fill_block(&vec![1; size as usize]);
                        let (r, _) = s.write_block(t, piece, 0, buf).await;
                        r
                    };
                    outcome.push(match r {
                        Ok(()) => 0,
                        Err(StorageError::Io { .. }) => 1,
                        Err(StorageError::NoSpace { .. }) => 2,
                        Err(e) => panic!("unexpected {e:?}"),
                    });
                }
                (outcome, s.stats())
            })
        };
        let (a, sa) = run(42);
        let (b, sb) = run(42);
        assert_eq!(a, b, "same seed, same faults");
        assert_eq!(sa, sb);
        assert!(
            sa.eio > 0 && sa.enospc > 0 && sa.short_steps > 0 && sa.delayed > 0,
            "{sa:?}"
        );
        let (c, _) = run(43);
        assert_ne!(a, c);
    }

    #[test]
    fn runs_are_one_operation_and_bad_regions_fail_them() {
        rt(async {
            let pool = BufPool::new(3, 256).unwrap();
            let l = layout();
            let d = {
                let mut d = data(l.total_length() as usize);
                d[300..512].fill(0);
                d
            };
            let s = SimStore::new(SimConfig::default());
            let t = s.add_torrent(Arc::clone(&l), d.clone(), false);
            let bufs = vec![pool.take().await, pool.take().await, pool.take().await];
            // A short transfer in 7 steps, whose steps straddle the blocks' boundaries.
            s.inject(Fault::Short { steps: 7 });
            let (r, bufs) = s.read_blocks(t, 1, 0, &[100, 56, 100], bufs).await;
            r.unwrap();
            assert_eq!(bufs[0].block(), &d[256..356]);
            assert_eq!(bufs[1].block(), &d[356..412]);
            assert_eq!(bufs[2].block(), &d[412..512]);
            assert_eq!(s.stats().short_steps, 6);
            assert_eq!(s.stats().reads, 3);
            // One injected EIO fails the whole run (one operation), and only that run.
            s.inject(Fault::Eio);
            let (r, bufs) = s.read_blocks(t, 2, 0, &[100, 56, 100], bufs).await;
            assert!(matches!(r, Err(StorageError::Io { .. })), "{r:?}");
            let (r, bufs) = s.read_blocks(t, 2, 0, &[100, 56, 100], bufs).await;
            r.unwrap();
            // A bad region fails every read touching it, in a run or alone, and nothing else.
            s.fail_reads(t, 600..601);
            let (r, mut bufs) = s.read_blocks(t, 2, 0, &[100, 56, 100], bufs).await;
            assert!(matches!(r, Err(StorageError::Io { .. })), "{r:?}");
            let b = bufs.pop().unwrap();
            let (r, b) = s.read_block(t, 2, 50, 50, b).await;
            assert!(matches!(r, Err(StorageError::Io { .. })), "{r:?}");
            let (r, b) = s.read_block(t, 2, 89, 100, b).await;
            r.unwrap();
            assert_eq!(b.block(), &d[601..701]);
            assert!(s.hash_piece(t, 2).await.is_err());
            s.clear_failed_reads(t);
            assert!(s.hash_piece(t, 2).await.is_ok());
            // The run's lengths are checked as the io_uring store checks them.
            bufs.push(b);
            let (r, bufs) = s.read_blocks(t, 0, 0, &[10, 0, 10], bufs).await;
            assert!(
                matches!(r, Err(StorageError::BlockTooLarge { len: 0, .. })),
                "{r:?}"
            );
            let (r, _) = s.read_blocks(t, 0, 200, &[50, 50, 50], bufs).await;
            assert!(matches!(r, Err(StorageError::BadBlock(_))), "{r:?}");
            assert_eq!(pool.available(), pool.capacity());
        });
    }

    #[test]
    fn missing_short_readonly_and_injected() {
        rt(async {
            let pool = BufPool::new(1, 1024).unwrap();
            let l = layout();
            let s = SimStore::new(SimConfig::default());
            let t = s.add_torrent(Arc::clone(&l), data(l.total_length() as usize), false);
            s.set_missing(t, 2, true);
            let last = l.num_pieces() - 1;
            let (r, buf) = s.read_block(t, last, 0, 10, pool.take().await).await;
            assert!(matches!(r, Err(StorageError::FileMissing { .. })), "{r:?}");
            s.set_missing(t, 2, false);
            s.truncate(t, 2, 100);
            let (r, buf) = s.read_block(t, last, 0, 10, buf).await;
            assert!(
                matches!(r, Err(StorageError::FileTooShort { actual: 100, .. })),
                "{r:?}"
            );
            let (r, buf) = s.write_block(t, 0, 0, buf).await;
            assert!(matches!(r, Err(StorageError::ReadOnly { .. })), "{r:?}");
            s.inject(Fault::Eio);
            let (r, buf) = s.read_block(t, 0, 0, 10, buf).await;
            assert!(matches!(r, Err(StorageError::Io { .. })), "{r:?}");
            s.inject(Fault::Short { steps: 4 });
            let (r, buf) = s.read_block(t, 0, 0, 200, buf).await;
            r.unwrap();
            assert_eq!(buf.block(), &data(200)[..]);
            assert_eq!(s.stats().short_steps, 3);
            let (r, buf) = s.read_block(t, 0, 0, 600, buf).await;
            assert!(matches!(r, Err(StorageError::BadBlock(_))), "{r:?}");
            let (r, _) = s.read_block(t, 0, 0, 2000, buf).await;
            assert!(
                matches!(r, Err(StorageError::BlockTooLarge { .. })),
                "{r:?}"
            );
        });
    }
}
