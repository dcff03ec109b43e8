//! The per-shard io_uring block store.
//!
//! tokio-uring cannot register files and does not expose its ring, so each shard's storage owns
//! a ring of its own (the `io-uring` crate) next to the shard's tokio-uring runtime:
//!
//! - the shard's [`BufPool`] is registered with the ring (`ReadFixed`/`WriteFixed` name a buffer
//!   by index); if registration is refused (RLIMIT_MEMLOCK, old kernel) the store logs one line
//!   and uses plain `Read`/`Write` on the same buffers;
//! - a sparse registered-file table of `max_open_files` slots, managed by [`FileTable`] (LRU; a
//!   slot with an operation in flight is never evicted);
//! - block I/O pushes SQEs without entering the kernel; a **driver task** (spawned by
//!   [`UringStore::new`] with `tokio_uring::spawn`, so `new` must run inside the shard's
//!   tokio-uring runtime) submits everything queued once per turn of the runtime's loop and reaps
//!   the completions right away: page-cache reads complete inside `io_uring_enter`. Completions
//!   that come later (disk reads, io-wq) signal an eventfd registered with the ring; the driver
//!   waits on it through tokio's reactor (`AsyncFd`, readiness only: no read is ever left in
//!   flight, so dropping the driver never leaves an armed operation behind).
//!
//! Buffer ownership: while an SQE points into a [`PoolBuf`], the buffer lives in the op table,
//! not in the caller's future. A future dropped mid-operation abandons its op; the buffer goes
//! back to the pool only when the kernel reports the op complete.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use sha1::{Digest, Sha1};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::files::{self, FileKey, FileTable, FileTableStats, OpenMode, Reserve, SlotRegistrar};
use crate::layout::{Layout, Span};
use crate::pool::{BufPool, PoolBuf};
use crate::store::{for_each_piece_of, run_length, BlockStore, StorageError, TorrentId};

mod splice;
pub use splice::{SpliceBlock, SpliceError, SplicePipe, MAX_CHAIN};

/// The most slots of a ring's registered-file table ([`UringConfig::max_open_files`]).
pub const MAX_OPEN_FILES: usize = 32_768;

/// Configuration of one shard's storage ring.
#[derive(Debug, Clone)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue gets twice as many). 1..=32768.
    pub ring_entries: u32,
    /// Slots of the registered-file table, 1..=[`MAX_OPEN_FILES`] (the engine derives them from
    /// RLIMIT_NOFILE: `server::limits::fd_budget`).
    pub max_open_files: usize,
    /// Register the pool's buffers with the ring (`ReadFixed`/`WriteFixed`).
    pub register_buffers: bool,
    /// Use a sparse registered-file table (fixed-file SQEs); otherwise plain descriptors.
    pub register_files: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            ring_entries: 256,
            max_open_files: 128,
            register_buffers: true,
            register_files: true,
        }
    }
}

/// Counters of one store (cumulative).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UringStats {
    /// Blocks read / bytes read.
    pub reads: u64,
    pub read_bytes: u64,
    /// Blocks written / bytes written.
    pub writes: u64,
    pub write_bytes: u64,
    /// SQEs pushed, `io_uring_enter` calls that submitted, short transfers resubmitted.
    pub sqes: u64,
    pub submits: u64,
    pub resubmits: u64,
    /// Wake-ups through the eventfd.
    pub eventfd_wakes: u64,
    /// Files opened, evicted, misses that waited for a slot.
    pub opens: u64,
    pub evictions: u64,
    pub slot_waits: u64,
}

struct TorrentEntry {
    layout: Arc<Layout>,
    root: PathBuf,
    root_fd: Option<OwnedFd>,
    writable: bool,
}

enum OpState {
    Pending(Option<Waker>),
    Done(i32),
    /// The future was dropped while the op was in flight: its buffer waits here for the CQE.
    Abandoned,
}

/// What an operation's SQE points into, owned by the op table until the completion: one pool
/// buffer, or the buffers of a vectored read together with the iovec array the SQE names.
enum OpBufs {
    /// An op that points into no pool buffer (a chain's pipe and socket splices).
    None,
    One(PoolBuf),
    Many {
        bufs: Vec<PoolBuf>,
        /// Never read by us: the kernel reads it through the SQE until the completion.
        #[allow(dead_code)]
        iov: Vec<libc::iovec>,
    },
}

impl OpBufs {
    fn one(self) -> PoolBuf {
        match self {
            OpBufs::One(b) => b,
            OpBufs::Many { .. } | OpBufs::None => {
                unreachable!("single-buffer op came back without its buffer")
            }
        }
    }

    fn many(self) -> Vec<PoolBuf> {
        match self {
            OpBufs::Many { bufs, .. } => bufs,
            OpBufs::One(_) | OpBufs::None => {
                unreachable!("vectored op came back without its buffers")
            }
        }
    }
}

struct OpEntry {
    state: OpState,
    buf: Option<OpBufs>,
    slot: Option<u32>,
}

#[derive(Default)]
struct OpTable {
    entries: Vec<Option<OpEntry>>,
    free: Vec<usize>,
    live: usize,
}

impl OpTable {
    fn insert(&mut self, e: OpEntry) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(e);
                i
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<OpEntry> {
        let e = self.entries.get_mut(i)?.take()?;
        self.live -= 1;
        self.free.push(i);
        Some(e)
    }
}

struct RingRegistrar<'a> {
    ring: &'a IoUring,
    enabled: bool,
}

impl SlotRegistrar for RingRegistrar<'_> {
    fn install(&self, slot: u32, fd: RawFd) -> std::io::Result<()> {
        if self.enabled {
            self.ring.submitter().register_files_update(slot, &[fd])?;
        }
        Ok(())
    }

    fn remove(&self, slot: u32) -> std::io::Result<()> {
        if self.enabled {
            self.ring.submitter().register_files_update(slot, &[-1])?;
        }
        Ok(())
    }
}

struct Inner {
    // Declared first: dropped before `pool` (the ring holds the buffer registration).
    ring: RefCell<IoUring>,
    ops: RefCell<OpTable>,
    files: RefCell<FileTable>,
    torrents: RefCell<Vec<TorrentEntry>>,
    fixed_bufs: bool,
    fixed_files: bool,
    need_submit: Cell<bool>,
    driver_waker: RefCell<Option<Waker>>,
    stats: Cell<UringStats>,
    pool: Rc<BufPool>,
}

/// One shard's io_uring block store; see the module docs. `!Send`; shared as `Rc<UringStore>`.
pub struct UringStore {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for UringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStore")
            .field("fixed_bufs", &self.inner.fixed_bufs)
            .field("fixed_files", &self.inner.fixed_files)
            .field("open_files", &self.open_files())
            .finish()
    }
}

impl UringStore {
    /// Builds the ring, registers the pool's buffers and a sparse file table, and spawns the
    /// driver task with `tokio_uring::spawn`.
    ///
    /// Must be called inside a tokio-uring runtime (on the shard's thread); panics otherwise
    /// (`tokio_uring::spawn` outside a runtime). The driver exits when the store is dropped.
    pub fn new(cfg: UringConfig, pool: Rc<BufPool>) -> Result<Rc<UringStore>, StorageError> {
        if cfg.ring_entries == 0 || cfg.ring_entries > 32_768 {
            return Err(StorageError::Config(format!(
                "ring_entries {} must be in 1..=32768",
                cfg.ring_entries
            )));
        }
        if cfg.max_open_files == 0 || cfg.max_open_files > MAX_OPEN_FILES {
            return Err(StorageError::Config(format!(
                "max_open_files {} must be in 1..={MAX_OPEN_FILES}",
                cfg.max_open_files
            )));
        }
        // Every operation holds a pool buffer, so at most `pool.capacity()` are in flight: a
        // completion queue that large never overflows.
        let cq = (pool.capacity() as u32)
            .next_power_of_two()
            .max(cfg.ring_entries.saturating_mul(2))
            .min(65_536);
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            .build(cfg.ring_entries)
            .map_err(StorageError::Ring)?;

        let mut fixed_bufs = false;
        if cfg.register_buffers {
            let iov = pool.iovecs();
            // SAFETY: every iovec points into the pool's arena, which outlives the ring (the
            // store keeps an Rc to the pool and drops the ring first; see `Inner`).
            match unsafe { ring.submitter().register_buffers(&iov) } {
                Ok(()) => fixed_bufs = true,
                Err(e) => tracing::warn!(
                    error = %e,
                    buffers = pool.capacity(),
                    bytes = pool.arena_bytes(),
                    "storage: registering the buffer pool with io_uring failed; \
                     falling back to unregistered buffers (raise RLIMIT_MEMLOCK or shrink the pool)"
                ),
            }
        }
        pool.set_registered(fixed_bufs);

        let mut fixed_files = false;
        if cfg.register_files {
            match ring
                .submitter()
                .register_files_sparse(cfg.max_open_files as u32)
            {
                Ok(()) => fixed_files = true,
                Err(e) => tracing::warn!(
                    error = %e,
                    slots = cfg.max_open_files,
                    "storage: registering a sparse file table failed; using plain descriptors"
                ),
            }
        }

        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(StorageError::Ring(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(StorageError::Ring)?;
        // SAFETY: the AsyncFd takes ownership of the eventfd and nothing else closes or
        // replaces it while registered.
        let efd = unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }
            .map_err(|e| StorageError::Ring(e.into()))?;

        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            ops: RefCell::new(OpTable::default()),
            files: RefCell::new(FileTable::new(cfg.max_open_files)),
            torrents: RefCell::new(Vec::new()),
            fixed_bufs,
            fixed_files,
            need_submit: Cell::new(false),
            driver_waker: RefCell::new(None),
            stats: Cell::new(UringStats::default()),
            pool,
        });
        tokio_uring::spawn(drive(Rc::downgrade(&inner), efd));
        Ok(Rc::new(UringStore { inner }))
    }

    /// Adds a torrent saved under `root` (the layout's paths are relative to it). `writable`
    /// opens its files read-write (creating them); otherwise read-only.
    pub fn add_torrent(&self, layout: Arc<Layout>, root: PathBuf, writable: bool) -> TorrentId {
        let mut t = self.inner.torrents.borrow_mut();
        t.push(TorrentEntry {
            layout,
            root,
            root_fd: None,
            writable,
        });
        TorrentId((t.len() - 1) as u32)
    }

    /// Switches torrent `t` between read-write (downloading) and read-only (seeding) and
    /// closes its idle files, so they are opened again in the new mode on their next use.
    /// Returns how many stayed open because they are busy (they keep their old mode until
    /// evicted).
    pub fn set_writable(&self, t: TorrentId, writable: bool) -> usize {
        if let Some(e) = self.inner.torrents.borrow_mut().get_mut(t.0 as usize) {
            e.writable = writable;
        }
        self.close_files(t)
    }

    /// Closes the files of torrent `t` that have nothing in flight (e.g. before a recheck or
    /// after the torrent was removed). Returns how many stayed open because they are busy.
    pub fn close_files(&self, t: TorrentId) -> usize {
        let ring = self.inner.ring.borrow();
        let reg = RingRegistrar {
            ring: &ring,
            enabled: self.inner.fixed_files,
        };
        self.inner.files.borrow_mut().close_torrent(t.0, &reg)
    }

    /// The pool this store reads into.
    pub fn pool(&self) -> &Rc<BufPool> {
        &self.inner.pool
    }

    /// Files open in the table right now.
    pub fn open_files(&self) -> usize {
        self.inner.files.borrow().open_files()
    }

    /// Capacity of the file table.
    pub fn max_open_files(&self) -> usize {
        self.inner.files.borrow().capacity()
    }

    /// Whether the pool's buffers are registered (`ReadFixed`) and files are fixed slots.
    pub fn is_fixed(&self) -> (bool, bool) {
        (self.inner.fixed_bufs, self.inner.fixed_files)
    }

    /// Operations pushed and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.ops.borrow().live
    }

    /// Cumulative counters.
    pub fn stats(&self) -> UringStats {
        let mut s = self.inner.stats.get();
        let FileTableStats {
            opens,
            evictions,
            slot_waits,
        } = self.inner.files.borrow().stats();
        s.opens = opens;
        s.evictions = evictions;
        s.slot_waits = slot_waits;
        s
    }

    fn torrent(&self, t: TorrentId) -> Result<(Arc<Layout>, bool), StorageError> {
        let ts = self.inner.torrents.borrow();
        let e = ts
            .get(t.0 as usize)
            .ok_or(StorageError::UnknownTorrent(t.0))?;
        Ok((Arc::clone(&e.layout), e.writable))
    }

    fn file_path(&self, t: TorrentId, file: usize) -> PathBuf {
        let ts = self.inner.torrents.borrow();
        match ts.get(t.0 as usize) {
            Some(e) => e.root.join(&e.layout.files()[file].path),
            None => PathBuf::new(),
        }
    }

    fn root_path(&self, t: TorrentId) -> PathBuf {
        let ts = self.inner.torrents.borrow();
        ts.get(t.0 as usize)
            .map(|e| e.root.clone())
            .unwrap_or_default()
    }

    /// Opens file `file` of torrent `t` (opening the torrent's root directory first if needed).
    fn open_file(&self, t: TorrentId, file: usize) -> Result<OwnedFd, StorageError> {
        let mut ts = self.inner.torrents.borrow_mut();
        let e = ts
            .get_mut(t.0 as usize)
            .ok_or(StorageError::UnknownTorrent(t.0))?;
        if e.root_fd.is_none() {
            if e.writable {
                std::fs::create_dir_all(&e.root)
                    .map_err(|err| StorageError::from_io(e.root.clone(), err))?;
            }
            e.root_fd = Some(files::open_root(&e.root)?);
        }
        let root_fd = e.root_fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let mode = if e.writable {
            OpenMode::ReadWrite
        } else {
            OpenMode::ReadOnly
        };
        files::open_data_file(root_fd, &e.root, &e.layout.files()[file].path, mode)
    }

    fn poll_acquire(
        &self,
        t: TorrentId,
        key: FileKey,
        cx: &mut Context<'_>,
    ) -> Poll<Result<u32, StorageError>> {
        match self.reserve_slot(t, key, Some(cx.waker())) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// Pins the slot of file `file` of torrent `t` if one can be had without waiting (`None`:
    /// every slot is busy).
    fn try_acquire(&self, t: TorrentId, file: usize) -> Option<Result<u32, StorageError>> {
        let key = FileKey {
            torrent: t.0,
            file: file as u32,
        };
        self.reserve_slot(t, key, None)
    }

    /// [`Self::poll_acquire`]'s work; `waker` is woken when a slot frees (if given).
    fn reserve_slot(
        &self,
        t: TorrentId,
        key: FileKey,
        waker: Option<&Waker>,
    ) -> Option<Result<u32, StorageError>> {
        let inner = &*self.inner;
        let ring = inner.ring.borrow();
        let reg = RingRegistrar {
            ring: &ring,
            enabled: inner.fixed_files,
        };
        let mut files = inner.files.borrow_mut();
        match files.reserve(key, &reg, waker) {
            Reserve::Hit(slot) => Some(Ok(slot)),
            Reserve::Busy => {
                // Every slot has an operation queued or in flight: make sure the queued ones are
                // submitted; a completion wakes us.
                inner.kick();
                None
            }
            Reserve::Vacant(slot) => Some(match self.open_file(t, key.file as usize) {
                Ok(fd) => match files.install(key, slot, fd, &reg) {
                    Ok(()) => Ok(slot),
                    Err(e) => Err(StorageError::Io {
                        path: self.file_path(t, key.file as usize),
                        source: e,
                    }),
                },
                Err(e) => {
                    files.unreserve(slot);
                    Err(e)
                }
            }),
        }
    }

    /// Pins (opening and installing on a miss) the slot of file `file` of torrent `t`. Waits
    /// while every slot has an operation in flight.
    async fn acquire(&self, t: TorrentId, file: usize) -> Result<u32, StorageError> {
        let key = FileKey {
            torrent: t.0,
            file: file as u32,
        };
        poll_fn(|cx| self.poll_acquire(t, key, cx)).await
    }

    /// Reads or writes `span` of the block in `buf`, resubmitting after short transfers and
    /// `EINTR`/`EAGAIN`.
    async fn transfer_span(
        &self,
        write: bool,
        t: TorrentId,
        span: Span,
        file_len: u64,
        mut buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf) {
        let inner = &*self.inner;
        let mut done: u32 = 0;
        let mut retries = 0;
        while done < span.len {
            let slot = match self.acquire(t, span.file_index).await {
                Ok(s) => s,
                Err(e) => return (Err(e), buf),
            };
            let n = span.len - done;
            let off = span.file_offset + u64::from(done);
            // SAFETY: span.buf_offset + span.len <= block length <= block capacity, so the
            // pointer stays inside this buffer's block region.
            let ptr = unsafe { buf.block_ptr().add((span.buf_offset + done) as usize) };
            let sqe = if inner.fixed_files {
                build_sqe(
                    write,
                    types::Fixed(slot),
                    ptr,
                    n,
                    off,
                    &buf,
                    inner.fixed_bufs,
                )
            } else {
                let fd = inner.files.borrow().raw_fd(slot).unwrap_or(-1);
                build_sqe(write, types::Fd(fd), ptr, n, off, &buf, inner.fixed_bufs)
            };
            let (res, b) = self
                .run_op(sqe, OpBufs::One(buf), slot, t, span.file_index)
                .await;
            buf = b.one();
            match res.and_then(|r| self.outcome(write, t, span, file_len, off, n, r, &mut retries))
            {
                Ok(got) => done += got,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Queues `sqe` (pointing into `bufs`, on file slot `slot`) and waits for its completion.
    async fn run_op(
        &self,
        sqe: squeue::Entry,
        bufs: OpBufs,
        slot: u32,
        t: TorrentId,
        file_index: usize,
    ) -> (Result<i32, StorageError>, OpBufs) {
        let inner = &*self.inner;
        let key = match inner.push_op(sqe, bufs, Some(slot)) {
            Ok(k) => k,
            Err((e, b)) => {
                let path = self.file_path(t, file_index);
                return (Err(StorageError::Io { path, source: e }), b);
            }
        };
        let (res, b) = OpFuture {
            inner,
            key,
            done: false,
        }
        .await;
        (Ok(res), b)
    }

    /// What the result `res` of a transfer of `n` bytes at `off` of `span`'s file means: bytes
    /// done (0 after `EINTR`/`EAGAIN`, to resubmit; fewer than `n` after a short transfer), or a
    /// typed error (a read at end of file: the file is shorter than the torrent says).
    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &self,
        write: bool,
        t: TorrentId,
        span: Span,
        file_len: u64,
        off: u64,
        n: u32,
        res: i32,
        retries: &mut u32,
    ) -> Result<u32, StorageError> {
        const MAX_RETRIES: u32 = 64;
        let inner = &*self.inner;
        if res > 0 {
            let got = (res as u32).min(n);
            if got < n {
                inner.bump(|s| s.resubmits += 1);
            }
            return Ok(got);
        }
        let path = self.file_path(t, span.file_index);
        if res == 0 {
            if write {
                return Err(StorageError::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "write returned 0 bytes",
                    ),
                });
            }
            let actual = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(off);
            return Err(StorageError::FileTooShort {
                path,
                expected: file_len,
                actual,
            });
        }
        let errno = -res;
        if (errno == libc::EINTR || errno == libc::EAGAIN) && *retries < MAX_RETRIES {
            *retries += 1;
            inner.bump(|s| s.resubmits += 1);
            return Ok(0);
        }
        Err(StorageError::from_errno(path, errno))
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
            return (
                Err(StorageError::BlockTooLarge {
                    len,
                    capacity: buf.block_capacity(),
                }),
                buf,
            );
        }
        let (layout, writable) = match self.torrent(t) {
            Ok(x) => x,
            Err(e) => return (Err(e), buf),
        };
        if write && !writable {
            return (
                Err(StorageError::ReadOnly {
                    path: self.root_path(t),
                }),
                buf,
            );
        }
        let spans = match layout.spans(piece, begin, len) {
            Ok(s) => s,
            Err(e) => return (Err(e.into()), buf),
        };
        if !write {
            buf.set_block_len(len as usize);
        }
        for span in spans {
            let f = &layout.files()[span.file_index];
            if f.padding {
                if !write {
                    let a = span.buf_offset as usize;
                    buf.block_mut()[a..a + span.len as usize].fill(0);
                }
                continue;
            }
            let r;
            (r, buf) = self.transfer_span(write, t, span, f.length, buf).await;
            if let Err(e) = r {
                return (Err(e), buf);
            }
        }
        let l = u64::from(len);
        if write {
            self.inner.bump(|s| {
                s.writes += 1;
                s.write_bytes += l;
            });
        } else {
            self.inner.bump(|s| {
                s.reads += 1;
                s.read_bytes += l;
            });
        }
        (Ok(()), buf)
    }
}

impl UringStore {
    /// Reads (`write`: writes) `span` (whose `buf_offset` counts from the start of the run)
    /// into (from) the run's buffers with `Readv` (`Writev`), resubmitting the rest after a
    /// short transfer.
    async fn transfer_span_vectored(
        &self,
        write: bool,
        t: TorrentId,
        span: Span,
        file_len: u64,
        lens: &[u32],
        mut bufs: Vec<PoolBuf>,
    ) -> (Result<(), StorageError>, Vec<PoolBuf>) {
        let inner = &*self.inner;
        let mut done: u32 = 0;
        let mut retries = 0;
        while done < span.len {
            let slot = match self.acquire(t, span.file_index).await {
                Ok(s) => s,
                Err(e) => return (Err(e), bufs),
            };
            let n = span.len - done;
            let off = span.file_offset + u64::from(done);
            let mut iov = Vec::with_capacity(lens.len());
            for_each_piece_of(lens, span.buf_offset + done, n, |i, o, len| {
                // SAFETY: `o + len <= lens[i] <= block capacity` (checked by `read_blocks`), so
                // the pointer and length stay inside buffer i's block region.
                let base = unsafe { bufs[i].block_ptr().add(o) };
                iov.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: len,
                });
            });
            let iov_ptr = iov.as_ptr();
            let iov_n = iov.len() as u32;
            let sqe = match (inner.fixed_files, write) {
                (true, false) => opcode::Readv::new(types::Fixed(slot), iov_ptr, iov_n)
                    .offset(off)
                    .build(),
                (true, true) => opcode::Writev::new(types::Fixed(slot), iov_ptr, iov_n)
                    .offset(off)
                    .build(),
                (false, w) => {
                    let fd = inner.files.borrow().raw_fd(slot).unwrap_or(-1);
                    if w {
                        opcode::Writev::new(types::Fd(fd), iov_ptr, iov_n)
                            .offset(off)
                            .build()
                    } else {
                        opcode::Readv::new(types::Fd(fd), iov_ptr, iov_n)
                            .offset(off)
                            .build()
                    }
                }
            };
            // The iovec array moves into the op table with the buffers; its heap allocation,
            // which the SQE points at, does not move.
            let (res, b) = self
                .run_op(sqe, OpBufs::Many { bufs, iov }, slot, t, span.file_index)
                .await;
            bufs = b.many();
            match res.and_then(|r| self.outcome(write, t, span, file_len, off, n, r, &mut retries))
            {
                Ok(got) => done += got,
                Err(e) => return (Err(e), bufs),
            }
        }
        (Ok(()), bufs)
    }
}

fn build_sqe(
    write: bool,
    fd: impl Into<FdTarget>,
    ptr: *mut u8,
    len: u32,
    offset: u64,
    buf: &PoolBuf,
    fixed_buf: bool,
) -> squeue::Entry {
    match (fd.into(), write, fixed_buf) {
        (FdTarget::Fixed(f), false, true) => opcode::ReadFixed::new(f, ptr, len, buf.buf_index())
            .offset(offset)
            .build(),
        (FdTarget::Fixed(f), false, false) => opcode::Read::new(f, ptr, len).offset(offset).build(),
        (FdTarget::Fixed(f), true, true) => opcode::WriteFixed::new(f, ptr, len, buf.buf_index())
            .offset(offset)
            .build(),
        (FdTarget::Fixed(f), true, false) => opcode::Write::new(f, ptr, len).offset(offset).build(),
        (FdTarget::Fd(f), false, true) => opcode::ReadFixed::new(f, ptr, len, buf.buf_index())
            .offset(offset)
            .build(),
        (FdTarget::Fd(f), false, false) => opcode::Read::new(f, ptr, len).offset(offset).build(),
        (FdTarget::Fd(f), true, true) => opcode::WriteFixed::new(f, ptr, len, buf.buf_index())
            .offset(offset)
            .build(),
        (FdTarget::Fd(f), true, false) => opcode::Write::new(f, ptr, len).offset(offset).build(),
    }
}

enum FdTarget {
    Fixed(types::Fixed),
    Fd(types::Fd),
}

impl From<types::Fixed> for FdTarget {
    fn from(f: types::Fixed) -> Self {
        FdTarget::Fixed(f)
    }
}

impl From<types::Fd> for FdTarget {
    fn from(f: types::Fd) -> Self {
        FdTarget::Fd(f)
    }
}

impl BlockStore for UringStore {
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

    /// A run is read with **one vectored read per file span** instead of one read per block:
    /// the kernel walks the page cache once for the whole run. Short reads and `EINTR`/`EAGAIN`
    /// are resubmitted for the rest.
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
        let total = match run_length(lens, &bufs) {
            Ok(n) => n,
            Err(e) => return (Err(e), bufs),
        };
        let (layout, _) = match self.torrent(t) {
            Ok(x) => x,
            Err(e) => return (Err(e), bufs),
        };
        let spans = match layout.spans(piece, begin, total) {
            Ok(s) => s,
            Err(e) => return (Err(e.into()), bufs),
        };
        for (b, &len) in bufs.iter_mut().zip(lens) {
            b.set_block_len(len as usize);
        }
        for span in spans {
            let f = &layout.files()[span.file_index];
            if f.padding {
                for_each_piece_of(lens, span.buf_offset, span.len, |i, off, n| {
                    bufs[i].block_mut()[off..off + n].fill(0);
                });
                continue;
            }
            let r;
            (r, bufs) = self
                .transfer_span_vectored(false, t, span, f.length, lens, bufs)
                .await;
            if let Err(e) = r {
                return (Err(e), bufs);
            }
        }
        self.inner.bump(|s| {
            s.reads += lens.len() as u64;
            s.read_bytes += u64::from(total);
        });
        (Ok(()), bufs)
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

    /// A run is written with **one vectored write per file span** (`Writev`: the pool's
    /// buffers are registered, but no fixed-buffer opcode takes several); padding files are
    /// skipped. Short writes and `EINTR`/`EAGAIN` are resubmitted for the rest.
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
        let total = match run_length(&lens, &bufs) {
            Ok(n) => n,
            Err(e) => return (Err(e), bufs),
        };
        let (layout, writable) = match self.torrent(t) {
            Ok(x) => x,
            Err(e) => return (Err(e), bufs),
        };
        if !writable {
            let path = self.root_path(t);
            return (Err(StorageError::ReadOnly { path }), bufs);
        }
        let spans = match layout.spans(piece, begin, total) {
            Ok(s) => s,
            Err(e) => return (Err(e.into()), bufs),
        };
        for span in spans {
            let f = &layout.files()[span.file_index];
            if f.padding {
                continue;
            }
            let r;
            (r, bufs) = self
                .transfer_span_vectored(true, t, span, f.length, &lens, bufs)
                .await;
            if let Err(e) = r {
                return (Err(e), bufs);
            }
        }
        self.inner.bump(|s| {
            s.writes += lens.len() as u64;
            s.write_bytes += u64::from(total);
        });
        (Ok(()), bufs)
    }

    async fn hash_piece(&self, t: TorrentId, piece: u32) -> Result<[u8; 20], StorageError> {
        let (layout, _) = self.torrent(t)?;
        let size = layout.piece_size(piece);
        layout.check_block(piece, 0, size)?;
        let mut buf = self.inner.pool.take().await;
        let chunk = buf.block_capacity().min(u32::MAX as usize) as u32;
        let mut h = Sha1::new();
        let mut begin = 0;
        while begin < size {
            let n = chunk.min(size - begin);
            let r;
            (r, buf) = self.read_block(t, piece, begin, n, buf).await;
            r?;
            h.update(buf.block());
            begin += n;
        }
        Ok(h.finalize().into())
    }
}

impl Inner {
    fn bump(&self, f: impl FnOnce(&mut UringStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Asks the driver to submit at the end of this turn.
    fn kick(&self) {
        if !self.need_submit.replace(true) {
            if let Some(w) = self.driver_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Queues `sqe` (not yet submitted); `buf` lives in the op table until its completion.
    /// On failure the SQE was not queued and the buffer comes back.
    fn push_op(
        &self,
        sqe: squeue::Entry,
        buf: OpBufs,
        slot: Option<u32>,
    ) -> Result<usize, (std::io::Error, OpBufs)> {
        let key = self.ops.borrow_mut().insert(OpEntry {
            state: OpState::Pending(None),
            buf: Some(buf),
            slot,
        });
        let sqe = sqe.user_data(key as u64);
        let mut tries = 0;
        loop {
            let pushed = {
                let mut ring = self.ring.borrow_mut();
                // SAFETY: the SQE's buffer lives in the op table (owned there until the CQE is
                // reaped) inside the pool's arena; its file is a slot pinned until that CQE.
                let r = unsafe { ring.submission().push(&sqe) };
                r.is_ok()
            };
            if pushed {
                break;
            }
            // The submission queue is full: submit now, then retry.
            tries += 1;
            if let Err(e) = self.submit_now() {
                if tries > 16 {
                    let mut ops = self.ops.borrow_mut();
                    let entry = ops.remove(key);
                    drop(ops);
                    let entry = entry.and_then(|mut e| {
                        if let Some(s) = e.slot.take() {
                            self.files.borrow_mut().unpin(s);
                        }
                        e.buf.take()
                    });
                    match entry {
                        Some(b) => return Err((e, b)),
                        None => unreachable!("op {key} vanished before it was queued"),
                    }
                }
            }
            self.reap();
        }
        self.bump(|s| s.sqes += 1);
        self.kick();
        Ok(key)
    }

    /// Submits whatever is queued (no waiting).
    fn submit_now(&self) -> std::io::Result<()> {
        let mut busy_rounds = 0;
        loop {
            let r = {
                let mut ring = self.ring.borrow_mut();
                if ring.submission().is_empty() {
                    return Ok(());
                }
                ring.submit()
            };
            match r {
                Ok(_) => {
                    self.bump(|s| s.submits += 1);
                    return Ok(());
                }
                Err(e) => match e.raw_os_error() {
                    // Completion queue backlog: make room, retry.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
                        if busy_rounds < 16 =>
                    {
                        busy_rounds += 1;
                        self.reap();
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Submits and reaps: one turn of the driver.
    fn flush(&self) {
        self.need_submit.set(false);
        if let Err(e) = self.submit_now() {
            tracing::error!(error = %e, "storage ring: submit failed; will retry next turn");
            self.kick();
        }
        self.reap();
    }

    /// Takes every available completion.
    fn reap(&self) {
        loop {
            let mut batch = [(0u64, 0i32); 64];
            let mut n = 0;
            {
                let mut ring = self.ring.borrow_mut();
                let mut cq = ring.completion();
                for cqe in cq.by_ref().take(batch.len()) {
                    batch[n] = (cqe.user_data(), cqe.result());
                    n += 1;
                }
            }
            for &(ud, res) in &batch[..n] {
                self.complete(ud as usize, res);
            }
            if n < batch.len() {
                return;
            }
        }
    }

    fn complete(&self, key: usize, res: i32) {
        let mut ops = self.ops.borrow_mut();
        let Some(Some(e)) = ops.entries.get_mut(key) else {
            return;
        };
        if let Some(slot) = e.slot.take() {
            self.files.borrow_mut().unpin(slot);
        }
        match &mut e.state {
            OpState::Pending(w) => {
                let w = w.take();
                e.state = OpState::Done(res);
                drop(ops);
                if let Some(w) = w {
                    w.wake();
                }
            }
            OpState::Abandoned => {
                let entry = ops.remove(key);
                drop(ops);
                drop(entry); // the buffer goes back to the pool now
            }
            OpState::Done(_) => {}
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the driver task see the store is gone and exit (dropping its eventfd).
        if let Some(w) = self.driver_waker.get_mut().take() {
            w.wake();
        }
        // Operations still in flight were abandoned by dropped futures: wait for them so the
        // kernel never writes into a buffer or file we released.
        let mut failures = 0;
        while self.ops.get_mut().live > 0 {
            let r = self.ring.get_mut().submit_and_wait(1);
            match r {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    failures += 1;
                    if failures > 16 {
                        tracing::error!(error = %e, "storage ring: cannot drain on drop; leaking the pool");
                        std::mem::forget(Rc::clone(&self.pool));
                        return;
                    }
                }
            }
            let ring = self.ring.get_mut();
            let done: Vec<u64> = ring.completion().map(|c| c.user_data()).collect();
            for ud in done {
                drop(self.ops.get_mut().remove(ud as usize));
            }
        }
        // Release the registered files now (the kernel drops a closed ring's resources
        // asynchronously, which would keep files, and their file system, busy for a while).
        if self.fixed_files {
            let _ = self.ring.get_mut().submitter().unregister_files();
        }
    }
}

/// Waits for one op's completion and hands back its result and buffer.
struct OpFuture<'a> {
    inner: &'a Inner,
    key: usize,
    done: bool,
}

impl Future for OpFuture<'_> {
    type Output = (i32, OpBufs);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(i32, OpBufs)> {
        let this = self.get_mut();
        let mut ops = this.inner.ops.borrow_mut();
        let Some(Some(e)) = ops.entries.get_mut(this.key) else {
            unreachable!("op {} polled after completion", this.key)
        };
        match &mut e.state {
            OpState::Done(res) => {
                let res = *res;
                let e = ops.remove(this.key);
                this.done = true;
                match e.and_then(|mut e| e.buf.take()) {
                    Some(b) => Poll::Ready((res, b)),
                    None => unreachable!("op without its buffer"),
                }
            }
            OpState::Pending(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            OpState::Abandoned => unreachable!("abandoned op polled"),
        }
    }
}

impl Drop for OpFuture<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut ops = self.inner.ops.borrow_mut();
        let finished = match ops.entries.get_mut(self.key) {
            Some(Some(e)) => match e.state {
                OpState::Done(_) => true,
                _ => {
                    e.state = OpState::Abandoned;
                    false
                }
            },
            _ => false,
        };
        if finished {
            let entry = ops.remove(self.key);
            drop(ops);
            drop(entry);
        }
    }
}

/// The driver task: submits queued SQEs once per turn and reaps completions, woken by pushes
/// (through `Inner::kick`) or by the ring's eventfd (completions that did not come inline).
async fn drive(weak: Weak<Inner>, efd: AsyncFd<OwnedFd>) {
    loop {
        let go = poll_fn(|cx| {
            let Some(inner) = weak.upgrade() else {
                return Poll::Ready(false);
            };
            let mut woke = false;
            match efd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    // The counter is never read: every signal of the eventfd is a new edge for
                    // the (edge-triggered) reactor whatever its value, and not reading saves a
                    // syscall on each spurious wake (inline completions signal it too).
                    guard.clear_ready();
                    inner.bump(|s| s.eventfd_wakes += 1);
                    woke = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "storage ring: eventfd failed; driver stops");
                    return Poll::Ready(false);
                }
                Poll::Pending => {}
            }
            if woke || inner.need_submit.get() {
                return Poll::Ready(true);
            }
            *inner.driver_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !go {
            return;
        }
        match weak.upgrade() {
            Some(inner) => inner.flush(),
            None => return,
        }
    }
}
