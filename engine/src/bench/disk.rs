//! `uring-bt bench`: disk throughput against the machine's limits.
//!
//! `bench disk` reads random blocks of a warm file (its pages cached: warmed right before, with
//! residency measured before and after) through five paths, one thread each unless told:
//! - **storage**: the engine's own [`UringStore`] (its ring, registered file, registered pool
//!   buffers, batched submissions), `queue-depth` reads in flight from as many tasks;
//! - **tokio-uring**: `File::read_at` on tokio-uring's ring, `queue-depth` tasks;
//! - **raw ring**: a bare `io-uring` ring with no runtime, `queue-depth` `ReadFixed`s per
//!   `submit_and_wait`: the ceiling of any ring-based path on this machine;
//! - **pread**: plain `pread` from `threads` threads;
//! - **mmap**: copies out of a shared read-only mapping from `threads` threads.
//!
//! The runners are public so the criterion benchmarks (`benches/disk.rs`) measure the same code.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use uring_bt_proto::layout::{FileEntry, Layout};
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::{BlockStore, TorrentId};
use uring_bt_storage::uring::{UringConfig, UringStore};

/// Arguments of `uring-bt bench disk`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDiskArgs {
    /// File to read (created and filled when missing or of another size). Use an ext4 path such
    /// as /var/tmp, never tmpfs: io_uring hands tmpfs reads to worker threads.
    pub path: Option<PathBuf>,
    /// Block size in bytes (1..=1 MiB).
    #[arg(long, default_value_t = 16_384)]
    pub block_size: u32,
    /// Reads in flight for the io_uring paths (1..=4096).
    #[arg(long, default_value_t = 32)]
    pub queue_depth: usize,
    /// File size in MiB when the file is created.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Seconds per round (shared by the eight paths).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Threads for the pread and mmap paths.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Interleaved rounds (each path runs `seconds / 8` per round; the median round is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Default benchmark file.
pub const DEFAULT_PATH: &str = "/var/tmp/uring-bt-bench-1g.bin";

/// Result of one run.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Per-read latencies in nanoseconds, sorted (empty when not recorded).
    pub lat_ns: Vec<u32>,
    /// Best round's MB/s, when rounds were run.
    pub best_mb_per_s: f64,
}

impl RunResult {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    /// Latency percentile `p` (0..=100) in microseconds.
    pub fn pct_us(&self, p: f64) -> f64 {
        if self.lat_ns.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.lat_ns.len() - 1) as f64).round() as usize;
        f64::from(self.lat_ns[i.min(self.lat_ns.len() - 1)]) / 1e3
    }
    fn merge(mut self, o: RunResult) -> RunResult {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.lat_ns.extend(o.lat_ns);
        self
    }
}

/// `n` random block-aligned offsets in a file of `size` bytes (xorshift, fixed seed).
pub fn random_offsets(size: u64, block: u32, n: usize, seed: u64) -> Vec<u64> {
    let blocks = (size / u64::from(block)).max(1);
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % blocks) * u64::from(block)
        })
        .collect()
}

/// The generated data repeats every `PATTERN_LEN` bytes.
pub(crate) const PATTERN_LEN: usize = 1 << 20;

/// The first [`PATTERN_LEN`] bytes of every file [`ensure_file`] makes: the byte at offset `o`
/// is `pattern()[o % PATTERN_LEN]`, so a reader can check any block without the file
/// (`bench swarm`'s peers do).
pub(crate) fn pattern() -> Vec<u8> {
    (0..PATTERN_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Creates `path` with `size` bytes of non-zero data unless it already has that size.
pub fn ensure_file(path: &Path, size: u64) -> anyhow::Result<()> {
    if std::fs::metadata(path)
        .map(|m| m.len() == size)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = pattern();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// Reads the whole file (1 MiB preads) so its pages are cached.
pub fn warm(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

/// Pages of `path` resident in the page cache, and its page count (like `fincore`).
pub fn residency(path: &Path) -> anyhow::Result<(u64, u64)> {
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    let pages = len.div_ceil(4096);
    let map = Mapping::new(&f)?;
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the mapping, which lives until `map` drops.
    let r = unsafe { libc::mincore(map.ptr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if r != 0 {
        bail!("mincore: {}", std::io::Error::last_os_error());
    }
    Ok((
        vec.iter().filter(|&&b| b & 1 == 1).count() as u64,
        pages as u64,
    ))
}

/// The engine's storage path: a [`UringStore`] over one file, on its own tokio-uring runtime.
pub struct StorageRunner {
    rt: tokio_uring::Runtime,
    store: Rc<UringStore>,
    pool: Rc<BufPool>,
    t: TorrentId,
    piece_len: u32,
    block: u32,
    layout: Arc<Layout>,
}

impl StorageRunner {
    /// `fixed`: registered buffers and a registered file (the engine's default); otherwise plain
    /// `Read` with a plain descriptor on the same ring.
    pub fn new(path: &Path, block: u32, depth: usize, fixed: bool) -> anyhow::Result<Self> {
        Self::with_options(path, block, depth, fixed, fixed, block.saturating_mul(64))
    }

    /// [`Self::new`] with an explicit piece length (a multiple of `block` keeps every block
    /// inside one piece).
    pub fn with_piece_length(
        path: &Path,
        block: u32,
        depth: usize,
        fixed: bool,
        piece_len: u32,
    ) -> anyhow::Result<Self> {
        Self::with_options(path, block, depth, fixed, fixed, piece_len)
    }

    /// Registered file table and registered buffers chosen separately.
    pub fn with_options(
        path: &Path,
        block: u32,
        depth: usize,
        register_files: bool,
        register_buffers: bool,
        piece_len: u32,
    ) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)?.len();
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_name().context("file name")?;
        let layout = Layout::new(
            vec![FileEntry {
                path: PathBuf::from(name),
                length: size,
                padding: false,
            }],
            piece_len,
        )?;
        let layout = Arc::new(layout);
        let rt = tokio_uring::Runtime::new(&tokio_uring::builder())?;
        let (store, pool, t) = rt.block_on(async {
            let pool = BufPool::new(depth.max(1), block as usize)?;
            let store = UringStore::new(
                UringConfig {
                    ring_entries: (depth as u32).next_power_of_two().clamp(64, 4096),
                    max_open_files: 4,
                    register_buffers,
                    register_files,
                },
                Rc::clone(&pool),
            )?;
            let t = store.add_torrent(Arc::clone(&layout), dir, false);
            anyhow::Ok((store, pool, t))
        })?;
        Ok(StorageRunner {
            rt,
            store,
            pool,
            t,
            piece_len,
            block,
            layout,
        })
    }

    pub fn store(&self) -> &Rc<UringStore> {
        &self.store
    }

    /// The one-file layout the runner reads (pieces of 64 blocks).
    pub fn layout(&self) -> Layout {
        self.layout.as_ref().clone()
    }

    /// Hashes every piece through the store (`hash_piece`, one pool buffer, reads of one block
    /// each) and returns the elapsed time.
    pub fn hash_all(&self) -> anyhow::Result<Duration> {
        self.rt.block_on(async {
            let start = Instant::now();
            for p in 0..self.layout.num_pieces() {
                std::hint::black_box(self.store.hash_piece(self.t, p).await?);
            }
            Ok(start.elapsed())
        })
    }

    /// Reads a block at every offset, `depth` at a time.
    pub fn run(&self, offsets: &[u64], depth: usize, record: bool) -> anyhow::Result<RunResult> {
        let offsets: Rc<[u64]> = offsets.into();
        self.rt.block_on(async {
            let next = Rc::new(Cell::new(0usize));
            let start = Instant::now();
            let mut hs = Vec::with_capacity(depth);
            for _ in 0..depth.max(1) {
                let (store, pool, next, offsets) = (
                    Rc::clone(&self.store),
                    Rc::clone(&self.pool),
                    Rc::clone(&next),
                    Rc::clone(&offsets),
                );
                let (t, pl, block) = (self.t, u64::from(self.piece_len), self.block);
                hs.push(tokio_uring::spawn(async move {
                    let mut r = RunResult::default();
                    if record {
                        r.lat_ns.reserve(offsets.len() / depth.max(1) + 1);
                    }
                    loop {
                        let i = next.get();
                        if i >= offsets.len() {
                            return Ok::<_, anyhow::Error>(r);
                        }
                        next.set(i + 1);
                        let off = offsets[i];
                        let t0 = record.then(Instant::now);
                        let buf = pool.take().await;
                        let (res, buf) = store
                            .read_block(t, (off / pl) as u32, (off % pl) as u32, block, buf)
                            .await;
                        res?;
                        std::hint::black_box(buf.block().first());
                        drop(buf);
                        if let Some(t0) = t0 {
                            r.lat_ns
                                .push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        }
                        r.ops += 1;
                        r.bytes += u64::from(block);
                    }
                }));
            }
            let mut total = RunResult::default();
            for h in hs {
                total = total.merge(h.await??);
            }
            total.elapsed = start.elapsed();
            total.lat_ns.sort_unstable();
            Ok(total)
        })
    }
}

/// tokio-uring `File::read_at`, `depth` tasks, one owned `Vec` buffer each.
pub struct TokioUringRunner {
    rt: tokio_uring::Runtime,
    file: Rc<tokio_uring::fs::File>,
    block: u32,
}

impl TokioUringRunner {
    pub fn new(path: &Path, block: u32) -> anyhow::Result<Self> {
        let rt = tokio_uring::Runtime::new(&tokio_uring::builder())?;
        let file = rt.block_on(tokio_uring::fs::File::open(path))?;
        Ok(TokioUringRunner {
            rt,
            file: Rc::new(file),
            block,
        })
    }

    pub fn run(&self, offsets: &[u64], depth: usize, record: bool) -> anyhow::Result<RunResult> {
        let offsets: Rc<[u64]> = offsets.into();
        self.rt.block_on(async {
            let next = Rc::new(Cell::new(0usize));
            let start = Instant::now();
            let mut hs = Vec::with_capacity(depth);
            for _ in 0..depth.max(1) {
                let (file, next, offsets) =
                    (Rc::clone(&self.file), Rc::clone(&next), Rc::clone(&offsets));
                let block = self.block;
                hs.push(tokio_uring::spawn(async move {
                    let mut r = RunResult::default();
                    let mut buf = vec![0u8; block as usize];
                    loop {
                        let i = next.get();
                        if i >= offsets.len() {
                            return Ok::<_, anyhow::Error>(r);
                        }
                        next.set(i + 1);
                        let t0 = record.then(Instant::now);
                        let (res, b) = file.read_at(buf, offsets[i]).await;
                        buf = b;
                        let n = res?;
                        if n != block as usize {
                            bail!("short read of {n} bytes");
                        }
                        std::hint::black_box(buf.first());
                        if let Some(t0) = t0 {
                            r.lat_ns
                                .push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                        }
                        r.ops += 1;
                        r.bytes += n as u64;
                    }
                }));
            }
            let mut total = RunResult::default();
            for h in hs {
                total = total.merge(h.await??);
            }
            total.elapsed = start.elapsed();
            total.lat_ns.sort_unstable();
            Ok(total)
        })
    }
}

/// A bare ring with no runtime: `depth` `ReadFixed`s on a registered file into registered,
/// page-aligned buffers, one `submit_and_wait` per batch. Nothing a real server could run (no
/// tasks, no sockets, every read waited for together), it is the ceiling any ring-based path
/// (ours, tokio-uring's) can reach on this machine.
pub struct RawRingRunner {
    ring: io_uring::IoUring,
    file: File,
    arena: *mut u8,
    layout: std::alloc::Layout,
    stride: usize,
    depth: usize,
    block: u32,
    /// A wait on the ring failed with reads possibly in flight: the buffers are never freed.
    poisoned: bool,
}

impl RawRingRunner {
    pub fn new(path: &Path, block: u32, depth: usize) -> anyhow::Result<Self> {
        let file = File::open(path)?;
        let depth = depth.clamp(1, 4096);
        let stride = (block as usize).next_multiple_of(4096);
        let layout = std::alloc::Layout::from_size_align(stride * depth, 4096)?;
        // SAFETY: the layout has a non-zero size (stride >= 4096, depth >= 1).
        let arena = unsafe { std::alloc::alloc_zeroed(layout) };
        if arena.is_null() {
            bail!("cannot allocate {} bytes of buffers", layout.size());
        }
        let this = RawRingRunner {
            ring: io_uring::IoUring::builder()
                .setup_cqsize((depth as u32).next_power_of_two().max(64))
                .build((depth as u32).next_power_of_two().max(64))?,
            file,
            arena,
            layout,
            stride,
            depth,
            block,
            poisoned: false,
        };
        let iov: Vec<libc::iovec> = (0..depth)
            .map(|i| libc::iovec {
                // SAFETY: i * stride is inside the arena.
                iov_base: unsafe { arena.add(i * stride) }.cast(),
                iov_len: block as usize,
            })
            .collect();
        // SAFETY: the iovecs point into the arena, which outlives the ring (freed in Drop after
        // the ring's operations have all been reaped: `run` waits for every read it submits).
        unsafe { this.ring.submitter().register_buffers(&iov) }?;
        this.ring
            .submitter()
            .register_files(&[this.file.as_raw_fd()])?;
        Ok(this)
    }

    pub fn run(&mut self, offsets: &[u64], record: bool) -> anyhow::Result<RunResult> {
        let mut r = RunResult::default();
        let start = Instant::now();
        for batch in offsets.chunks(self.depth) {
            let t0 = Instant::now();
            {
                let mut sq = self.ring.submission();
                for (i, &off) in batch.iter().enumerate() {
                    // SAFETY: buffer i is registered at index i and not in use by another read.
                    let dst = unsafe { self.arena.add(i * self.stride) };
                    let e = io_uring::opcode::ReadFixed::new(
                        io_uring::types::Fixed(0),
                        dst,
                        self.block,
                        i as u16,
                    )
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                    // SAFETY: the buffer and the registered file outlive the read (waited below).
                    unsafe { sq.push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
                }
            }
            // Every read of the batch is reaped before returning, even after a bad result: the
            // kernel must be done with the buffers before they are reused or freed.
            let mut left = batch.len();
            let mut bad = None;
            while left > 0 {
                match self.ring.submit_and_wait(left) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        self.poisoned = true;
                        return Err(e.into());
                    }
                }
                for c in self.ring.completion() {
                    left -= 1;
                    if c.result() != self.block as i32 {
                        bad.get_or_insert(c.result());
                    }
                }
            }
            if let Some(res) = bad {
                bail!("raw ring read: result {res}");
            }
            let lat = t0.elapsed().as_nanos().min(u32::MAX as u128) as u32;
            if record {
                r.lat_ns.extend(std::iter::repeat_n(lat, batch.len()));
            }
            r.ops += batch.len() as u64;
            r.bytes += batch.len() as u64 * u64::from(self.block);
        }
        r.elapsed = start.elapsed();
        r.lat_ns.sort_unstable();
        Ok(r)
    }
}

impl Drop for RawRingRunner {
    fn drop(&mut self) {
        if self.poisoned {
            return; // reads may still be in flight: leak the buffers rather than free them
        }
        // SAFETY: allocated in `new` with this layout; every read was reaped in `run`, so the
        // ring (dropped after this) has nothing in flight that could write into the buffers.
        unsafe { std::alloc::dealloc(self.arena, self.layout) };
    }
}

fn split_threads<F>(offsets: &[u64], threads: usize, f: F) -> anyhow::Result<RunResult>
where
    F: Fn(&[u64]) -> anyhow::Result<RunResult> + Sync,
{
    let threads = threads.max(1);
    let per = offsets.len().div_ceil(threads).max(1);
    let start = Instant::now();
    let results: Vec<anyhow::Result<RunResult>> = std::thread::scope(|s| {
        let hs: Vec<_> = offsets.chunks(per).map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    });
    let mut total = RunResult::default();
    for r in results {
        total = total.merge(r?);
    }
    total.elapsed = start.elapsed();
    total.lat_ns.sort_unstable();
    Ok(total)
}

/// Plain `pread` of each offset from `threads` threads.
pub fn run_pread(
    file: &File,
    offsets: &[u64],
    block: u32,
    threads: usize,
    record: bool,
) -> anyhow::Result<RunResult> {
    split_threads(offsets, threads, |chunk| {
        let mut buf = vec![0u8; block as usize];
        let mut r = RunResult::default();
        for &off in chunk {
            let t0 = record.then(Instant::now);
            let n = file.read_at(&mut buf, off)?;
            if n != block as usize {
                bail!("short read of {n} bytes");
            }
            std::hint::black_box(buf.first());
            if let Some(t0) = t0 {
                r.lat_ns
                    .push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            }
            r.ops += 1;
            r.bytes += n as u64;
        }
        Ok(r)
    })
}

/// A read-only shared mapping of a whole file.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until drop; sharing pointers to it between threads
// only allows reads.
unsafe impl Sync for Mapping {}
// SAFETY: as above; unmapping from another thread is fine.
unsafe impl Send for Mapping {}

impl Mapping {
    pub fn new(file: &File) -> anyhow::Result<Mapping> {
        let len = file.metadata()?.len() as usize;
        // SAFETY: a fresh read-only shared mapping of an open file; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: p as *const u8,
            len,
        })
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: the mapping covers `len` readable bytes while `self` lives. Another process
        // truncating the file would raise SIGBUS: benchmark files are ours.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Copies each block out of a shared mapping (what a seeder that mmaps would pay per block),
/// from `threads` threads.
pub fn run_mmap(
    map: &Mapping,
    offsets: &[u64],
    block: u32,
    threads: usize,
    record: bool,
) -> anyhow::Result<RunResult> {
    let data = map.slice();
    split_threads(offsets, threads, |chunk| {
        let mut buf = vec![0u8; block as usize];
        let mut r = RunResult::default();
        for &off in chunk {
            let t0 = record.then(Instant::now);
            let off = off as usize;
            buf.copy_from_slice(&data[off..off + block as usize]);
            std::hint::black_box(buf.first());
            if let Some(t0) = t0 {
                r.lat_ns
                    .push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            }
            r.ops += 1;
            r.bytes += u64::from(block);
        }
        Ok(r)
    })
}

/// Runs `f` on batches of offsets until `seconds` have passed (at least one batch).
fn for_seconds(
    offsets: &[u64],
    seconds: f64,
    mut f: impl FnMut(&[u64]) -> anyhow::Result<RunResult>,
) -> anyhow::Result<RunResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.max(0.05));
    let mut total = RunResult::default();
    let mut elapsed = Duration::ZERO;
    let mut i = 0usize;
    let batch = 16_384.min(offsets.len());
    loop {
        let lo = (i * batch) % offsets.len();
        let hi = (lo + batch).min(offsets.len());
        let r = f(&offsets[lo..hi])?;
        elapsed += r.elapsed;
        total = total.merge(r);
        i += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    total.elapsed = elapsed;
    total.lat_ns.sort_unstable();
    Ok(total)
}

/// Validates the arguments of `bench disk` (every limit explicit).
pub fn check_args(args: &BenchDiskArgs) -> Result<(), String> {
    if args.block_size == 0 || args.block_size > 1 << 20 {
        return Err("--block-size must be in 1..=1048576".into());
    }
    if args.queue_depth == 0 || args.queue_depth > 4096 {
        return Err("--queue-depth must be in 1..=4096".into());
    }
    if args.threads == 0 || args.threads > 256 {
        return Err("--threads must be in 1..=256".into());
    }
    if args.rounds == 0 || args.rounds > 100 {
        return Err("--rounds must be in 1..=100".into());
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    if args.size_mib == 0 || args.size_mib > 1 << 20 {
        return Err("--size-mib must be in 1..=1048576".into());
    }
    Ok(())
}

/// Runs `uring-bt bench disk`.
pub fn run_disk(args: BenchDiskArgs) -> anyhow::Result<ExitCode> {
    if let Err(msg) = check_args(&args) {
        // A usage error: exit code 2, like the argument parser's own errors.
        eprintln!("error: {msg}");
        return Ok(ExitCode::from(2));
    }
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let size = args.size_mib << 20;
    if !path.exists() {
        ensure_file(&path, size)?;
    }
    let file_size = std::fs::metadata(&path)?.len();
    if file_size < u64::from(args.block_size) {
        bail!("{} is smaller than one block", path.display());
    }
    let offsets = random_offsets(file_size, args.block_size, 1 << 20, 0x5eed_cafe);

    warm(&path)?;
    let before = residency(&path)?;

    let block = args.block_size;
    let depth = args.queue_depth;
    let storage = StorageRunner::new(&path, block, depth, true)?;
    let (fixed_bufs, fixed_files) = storage.store().is_fixed();
    let plain = StorageRunner::new(&path, block, depth, false)?;
    let mixed = StorageRunner::with_options(&path, block, depth, true, false, block * 64)?;
    let tu = TokioUringRunner::new(&path, block)?;
    let mut raw = RawRingRunner::new(&path, block, depth)?;
    let file = File::open(&path)?;
    let map = Mapping::new(&file)?;
    let names = [
        "storage reg file+reg bufs",
        "storage fd+plain bufs",
        "storage reg file+plain bufs",
        "tokio-uring read_at",
        "raw ring, no runtime",
        "pread",
        "mmap copy",
        "mmap copy (fresh mapping)",
    ];
    // Rounds interleave the paths so that load from other processes spreads over all of them;
    // each path reports its median round.
    let per = args.seconds / names.len() as f64;
    let mut rounds: Vec<Vec<RunResult>> = vec![Vec::new(); names.len()];
    for round in 0..args.rounds {
        // Rotate the order each round so no path always runs first or after the same one.
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let r = match i {
                0 => for_seconds(&offsets, per, |o| storage.run(o, depth, true))?,
                1 => for_seconds(&offsets, per, |o| plain.run(o, depth, true))?,
                2 => for_seconds(&offsets, per, |o| mixed.run(o, depth, true))?,
                3 => for_seconds(&offsets, per, |o| tu.run(o, depth, true))?,
                4 => for_seconds(&offsets, per, |o| raw.run(o, true))?,
                5 => for_seconds(&offsets, per, |o| {
                    run_pread(&file, o, block, args.threads, true)
                })?,
                6 => for_seconds(&offsets, per, |o| {
                    run_mmap(&map, o, block, args.threads, true)
                })?,
                // A new mapping per batch of 16,384 reads: page faults included (a seeder
                // serving many torrents maps pages it has not touched yet).
                _ => for_seconds(&offsets, per, |o| {
                    let m = Mapping::new(&file)?;
                    run_mmap(&m, o, block, args.threads, true)
                })?,
            };
            rounds[i].push(r);
        }
    }
    let ring_stats = storage.store().stats();
    drop((storage, plain, mixed, tu, raw, map));
    let after = residency(&path)?;
    let medians: Vec<RunResult> = rounds
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
            let best = v.last().map(|r| r.mb_per_s()).unwrap_or(0.0);
            let mut m = v.swap_remove(v.len() / 2);
            m.best_mb_per_s = best;
            m
        })
        .collect();
    let rows: Vec<(&str, &RunResult)> = names.iter().copied().zip(medians.iter()).collect();
    let mut out = std::io::stdout().lock();
    let res = if args.json {
        let runs: Vec<_> = rows
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "path": name, "ops": r.ops, "bytes": r.bytes,
                    "seconds": r.elapsed.as_secs_f64(),
                    "mb_per_s": r.mb_per_s(), "iops": r.iops(),
                    "best_mb_per_s": r.best_mb_per_s,
                    "p50_us": r.pct_us(50.0), "p99_us": r.pct_us(99.0), "p999_us": r.pct_us(99.9),
                })
            })
            .collect();
        let v = serde_json::json!({
            "file": path.display().to_string(), "file_size": file_size,
            "block_size": block, "queue_depth": depth, "threads": args.threads,
            "rounds": args.rounds,
            "registered_buffers": fixed_bufs, "registered_files": fixed_files,
            "resident_pages_before": before.0, "resident_pages_after": after.0,
            "pages": before.1, "runs": runs,
            "storage_reads": ring_stats.reads, "storage_submits": ring_stats.submits,
            "storage_eventfd_wakes": ring_stats.eventfd_wakes,
        });
        writeln!(out, "{v}")
    } else {
        let mut s = format!(
            "file {} ({} MiB), block {} B, queue depth {} (io_uring paths), {} thread(s) (pread, mmap)\n\
             page cache: {}/{} pages resident before, {}/{} after; registered buffers {}, files {}\n\
             median of {} interleaved rounds ({:.1} s per path per round)\n\
             {:<27} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}\n",
            path.display(), file_size >> 20, block, depth, args.threads,
            before.0, before.1, after.0, after.1, fixed_bufs, fixed_files,
            args.rounds, per,
            "path", "MB/s", "best MB/s", "IOPS", "p50 us", "p99 us", "p99.9 us"
        );
        s.push_str(&format!(
            "storage ring: {} reads in {} submits ({:.1} per io_uring_enter), {} eventfd wakes\n",
            ring_stats.reads,
            ring_stats.submits,
            ring_stats.reads as f64 / ring_stats.submits.max(1) as f64,
            ring_stats.eventfd_wakes
        ));
        for (name, r) in rows {
            s.push_str(&format!(
                "{:<27} {:>10.0} {:>10.0} {:>10.0} {:>9.1} {:>9.1} {:>9.1}\n",
                name,
                r.mb_per_s(),
                r.best_mb_per_s,
                r.iops(),
                r.pct_us(50.0),
                r.pct_us(99.0),
                r.pct_us(99.9)
            ));
        }
        out.write_all(s.as_bytes())
    };
    match res {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let ok = BenchDiskArgs {
            path: None,
            block_size: 16_384,
            queue_depth: 32,
            size_mib: 1024,
            seconds: 5.0,
            threads: 1,
            rounds: 3,
            json: false,
        };
        assert!(check_args(&ok).is_ok());
        for bad in [
            BenchDiskArgs {
                block_size: 0,
                ..ok.clone()
            },
            BenchDiskArgs {
                block_size: 2 << 20,
                ..ok.clone()
            },
            BenchDiskArgs {
                queue_depth: 0,
                ..ok.clone()
            },
            BenchDiskArgs {
                queue_depth: 5000,
                ..ok.clone()
            },
            BenchDiskArgs {
                threads: 0,
                ..ok.clone()
            },
            BenchDiskArgs {
                rounds: 0,
                ..ok.clone()
            },
            BenchDiskArgs {
                seconds: 0.0,
                ..ok.clone()
            },
            BenchDiskArgs {
                seconds: f64::NAN,
                ..ok.clone()
            },
            BenchDiskArgs {
                size_mib: 0,
                ..ok.clone()
            },
        ] {
            assert!(check_args(&bad).is_err(), "{bad:?}");
            assert_eq!(run_disk(bad).unwrap(), ExitCode::from(2));
        }
    }

    #[test]
    fn all_paths_read_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        ensure_file(&path, 4 << 20).unwrap();
        let offs = random_offsets(4 << 20, 16_384, 2_000, 1);
        assert!(offs.iter().all(|o| o % 16_384 == 0 && *o < 4 << 20));
        let s = StorageRunner::new(&path, 16_384, 8, true).unwrap();
        let r = s.run(&offs, 8, true).unwrap();
        assert_eq!(r.ops, 2_000);
        assert_eq!(r.lat_ns.len(), 2_000);
        let t = TokioUringRunner::new(&path, 16_384).unwrap();
        assert_eq!(t.run(&offs, 8, false).unwrap().ops, 2_000);
        let mut raw = RawRingRunner::new(&path, 16_384, 8).unwrap();
        let r = raw.run(&offs, true).unwrap();
        assert_eq!((r.ops, r.lat_ns.len()), (2_000, 2_000));
        let f = File::open(&path).unwrap();
        assert_eq!(run_pread(&f, &offs, 16_384, 2, false).unwrap().ops, 2_000);
        let m = Mapping::new(&f).unwrap();
        assert_eq!(run_mmap(&m, &offs, 16_384, 2, false).unwrap().ops, 2_000);
        let (res, pages) = residency(&path).unwrap();
        assert_eq!(pages, 1024);
        assert!(res <= pages);
    }
}
