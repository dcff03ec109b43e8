//! `uring-bt bench net`: the ceiling of our network send path on this machine.
//!
//! `--streams` sender threads (one TCP connection each) send blocks of a warm file (its pages
//! cached: created, read right before, residency counted before and after) for `--seconds`
//! per path, through seven paths:
//! - **send**: `send` of one reused buffer, no file at all (the socket's own cost);
//! - **pread+send**: one `pread` and one `send` per block;
//! - **batched**: one 512 KiB `pread`, then one `send` of it (what the seeder does with its
//!   pool: one read of a run of blocks, one `writev`);
//! - **sendfile**: one `sendfile` per block (the kernel copies page cache to socket);
//! - **ring send**: a bare `io-uring` ring per thread, 512 KiB of `ReadFixed` reads into
//!   registered buffers, then one linked chain of `Send`s of them (order kept);
//! - **ring send_zc**: the same with `SendZc` from the registered buffers (`buf_index`), with
//!   the kernel asked to report whether it copied (`IORING_SEND_ZC_REPORT_USAGE`): over
//!   loopback it always copies, so zero-copy gains are not visible here;
//! - **ring splice**: the same ring, a linked chain of one `Splice` per block from the file into
//!   a pipe and one `Splice` of the batch from the pipe to the socket (no copy in user space;
//!   what `seed --send-path splice` does). io_uring runs splices in io-wq workers, so their CPU
//!   is the process's "rest".
//!
//! For each: MB/s (10^6 bytes/s, from the first byte to the receiver's report), and CPU seconds
//! per GiB of the senders (`getrusage(RUSAGE_THREAD)` summed over the sender threads), of the
//! receivers (each connection's receiving thread, measured the same way and reported back over
//! the connection), and of the rest of the process (io-wq workers, if the kernel used any).
//! On loopback the receiver runs in this process on the same CPUs, and the kernel does most of
//! the receive-side TCP work in the sender's context, so "sender CPU" includes it.
//!
//! Beside them, in the same invocation on loopback: `iperf3` (one stream), throughput and its
//! own CPU figures. The **floor** is the cheapest send cost per GiB among our paths (sender
//! threads plus the rest of the process, i.e. the io-wq workers of the splice path); the
//! **ceiling** is the best throughput.
//!
//! `--serve ADDR` runs only the receiving end (discard, report CPU per connection) until killed;
//! `--to ADDR` sends to such a server on another machine instead of the in-process receiver.
//!
//! Protocol between the two ends: the sender sends bytes, then shuts its write side down; the
//! receiver, at end of stream, answers one JSON line `{"bytes":N,"cpu_s":X}` and closes.

use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::disk::{ensure_file, random_offsets, residency, warm};
use super::hash::{cores, output_within, print_stdout};
use crate::cli::UsageError;

/// Arguments of `uring-bt bench net`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchNetArgs {
    /// Seconds per path (0 < S <= 600); seven paths and iperf3 take about 8 x S in all, plus
    /// creating and warming the file.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Block size in bytes (1..=1048576): what one peer request asks for.
    #[arg(long, default_value_t = 16_384)]
    pub block: u32,
    /// Sender threads, one connection each (1..=256; default: the number of cores).
    #[arg(long)]
    pub streams: Option<usize>,
    /// Directory for the data file: an ext4 path, never tmpfs (default: a fresh directory
    /// under /var/tmp). The file lives in a new subdirectory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Size of the data file in MiB (1..=65536).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only receive: listen on ADDR (HOST:PORT), discard what arrives and report each
    /// connection's CPU to its sender, until killed.
    #[arg(long, value_name = "ADDR", conflicts_with = "to")]
    pub serve: Option<String>,
    /// Send to a `uring-bt bench net --serve` on ADDR (HOST:PORT) instead of the in-process
    /// loopback receiver (iperf3 is then not run).
    #[arg(long, value_name = "ADDR")]
    pub to: Option<String>,
}

/// Bytes of one batched read (and of one ring batch).
pub const BATCH: usize = 512 * 1024;
/// Registered buffers (blocks) per ring batch, at most.
const MAX_RING_DEPTH: usize = 64;
/// The receiver's buffer.
const RECV_BUF: usize = 256 * 1024;
/// Connections a receiver serves at once; more are closed at once.
const MAX_RECEIVER_CONNS: usize = 1024;
/// A receiving connection that sends nothing for this long is dropped.
const RECV_IDLE: Duration = Duration::from_secs(60);
/// How long a sender waits for the receiver's report after its last byte.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Random offsets each sender cycles through.
const OFFSETS: usize = 1 << 16;
const GIB: f64 = (1u64 << 30) as f64;
/// `IORING_SEND_ZC_REPORT_USAGE` (linux/io_uring.h), not in io-uring 0.6.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a notification's result when the kernel copied.
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
/// `IORING_CQE_F_NOTIF`: a zero-copy send's notification (its buffer is free again).
const CQE_F_NOTIF: u32 = 1 << 3;

/// One way of sending blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    Send,
    PreadSend,
    Batched,
    Sendfile,
    RingSend,
    RingSendZc,
    RingSplice,
}

impl SendPath {
    pub const ALL: [SendPath; 7] = [
        SendPath::Send,
        SendPath::PreadSend,
        SendPath::Batched,
        SendPath::Sendfile,
        SendPath::RingSend,
        SendPath::RingSendZc,
        SendPath::RingSplice,
    ];

    /// The name in JSON.
    pub fn key(self) -> &'static str {
        match self {
            SendPath::Send => "send",
            SendPath::PreadSend => "pread_send",
            SendPath::Batched => "batched",
            SendPath::Sendfile => "sendfile",
            SendPath::RingSend => "ring_send",
            SendPath::RingSendZc => "ring_send_zc",
            SendPath::RingSplice => "ring_splice",
        }
    }

    /// The name in the table.
    pub fn what(self) -> &'static str {
        match self {
            SendPath::Send => "send, reused buffer (no file)",
            SendPath::PreadSend => "pread + send per block",
            SendPath::Batched => "pread 512 KiB + send (batched)",
            SendPath::Sendfile => "sendfile per block",
            SendPath::RingSend => "ring: read_fixed + send",
            SendPath::RingSendZc => "ring: read_fixed + send_zc fixed",
            SendPath::RingSplice => "ring: splice file > pipe > socket",
        }
    }
}

/// CPU seconds (user + system) of the calling thread.
pub fn thread_cpu() -> f64 {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU seconds (user + system) of the whole process, every thread.
pub fn process_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> f64 {
    // SAFETY: `rusage` is a plain C struct of integers, for which all-zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` into memory we own, of the right type and size.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The file system holding `path`, by name where we know it.
pub(crate) fn fs_name(path: &Path) -> String {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: `statfs` is a plain C struct, for which all-zero bytes are valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and lives across the call; `st` is ours.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    // The width of f_type differs between targets.
    #[allow(clippy::unnecessary_cast)]
    match st.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        t => format!("0x{t:x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The receiving end
// ---------------------------------------------------------------------------------------------

/// One connection received: bytes and the receiving thread's CPU seconds.
fn receive(mut s: TcpStream) -> std::io::Result<(u64, f64)> {
    s.set_read_timeout(Some(RECV_IDLE))?;
    let cpu0 = thread_cpu();
    let mut buf = vec![0u8; RECV_BUF];
    let mut bytes = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let cpu = thread_cpu() - cpu0;
    let line = serde_json::json!({"bytes": bytes, "cpu_s": cpu});
    s.write_all(format!("{line}\n").as_bytes())?;
    Ok((bytes, cpu))
}

/// Accepts until `stop`, one thread per connection (at most [`MAX_RECEIVER_CONNS`] at once).
fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, log: bool) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = conn else {
            // A transient accept error (EMFILE, ECONNABORTED): pause rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if active.load(Ordering::Acquire) >= MAX_RECEIVER_CONNS {
            continue; // dropped: closed
        }
        active.fetch_add(1, Ordering::AcqRel);
        let peer = stream.peer_addr().ok();
        let a = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("net-recv".into())
            .spawn(move || {
                let r = receive(stream);
                a.fetch_sub(1, Ordering::AcqRel);
                if log {
                    let from = peer.map(|p| p.to_string()).unwrap_or_default();
                    match r {
                        Ok((bytes, cpu)) => println!(
                            "{from}: {bytes} bytes, {cpu:.3} CPU-s, {:.3} CPU-s/GiB",
                            cpu / (bytes.max(1) as f64 / GIB)
                        ),
                        Err(e) => println!("{from}: {e}"),
                    }
                }
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The in-process receiver on loopback; stops (and joins its accept thread) when dropped.
struct Receiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(bind: SocketAddr) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let accept = std::thread::Builder::new()
            .name("net-accept".into())
            .spawn(move || accept_loop(listener, s, false))?;
        Ok(Receiver {
            addr,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop with one connection of our own; it sees `stop` and returns.
        if TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).is_ok() {
            if let Some(h) = self.accept.take() {
                let _ = h.join();
            }
        }
    }
}

/// `bench net --serve ADDR`: receive until killed.
fn serve(addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening: {local}");
    let _ = std::io::stdout().flush();
    accept_loop(listener, Arc::new(AtomicBool::new(false)), true);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// The sending end
// ---------------------------------------------------------------------------------------------

/// What one path measured (figures are zero when `error` is set).
#[derive(Debug, Clone)]
pub struct PathResult {
    pub path: SendPath,
    pub bytes: u64,
    pub seconds: f64,
    pub sender_cpu: f64,
    pub receiver_cpu: f64,
    /// CPU of the process not in the sender or (on loopback) receiver threads.
    pub other_cpu: f64,
    /// Zero-copy notifications, and how many of them said the kernel copied.
    pub zc: Option<(u64, u64)>,
    pub error: Option<String>,
}

impl PathResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.bytes > 0 && self.seconds > 0.0
    }
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }
    fn per_gib(&self, cpu: f64) -> f64 {
        if self.bytes > 0 {
            cpu / (self.bytes as f64 / GIB)
        } else {
            0.0
        }
    }
    pub fn sender_cpu_per_gib(&self) -> f64 {
        self.per_gib(self.sender_cpu)
    }
    pub fn receiver_cpu_per_gib(&self) -> f64 {
        self.per_gib(self.receiver_cpu)
    }
    pub fn other_cpu_per_gib(&self) -> f64 {
        self.per_gib(self.other_cpu)
    }
    /// What sending costs: the sender threads and the rest of the process (the io-wq workers
    /// that run the splice path's splices for them; about 0 for every other path). The floor
    /// is the cheapest of these.
    pub fn send_cost_per_gib(&self) -> f64 {
        self.per_gib(self.sender_cpu + self.other_cpu)
    }
}

/// What every sender of a run shares.
struct Plan<'a> {
    target: SocketAddr,
    loopback: bool,
    file: &'a File,
    file_size: u64,
    block: u32,
    streams: usize,
    seconds: f64,
}

impl Plan<'_> {
    /// Bytes of one batch: whole blocks, about [`BATCH`].
    fn batch(&self) -> usize {
        (BATCH / self.block as usize).max(1) * self.block as usize
    }
    fn ring_depth(&self) -> usize {
        (BATCH / self.block as usize).clamp(1, MAX_RING_DEPTH)
    }
}

/// One sender's figures.
struct StreamResult {
    sent: u64,
    elapsed: Duration,
    cpu: f64,
    received: u64,
    receiver_cpu: f64,
    zc: (u64, u64),
}

/// Writes all of `len` bytes of `file` from `off` to `sock` with `sendfile`.
fn sendfile_all(sock: &TcpStream, file: &File, off: u64, len: usize) -> std::io::Result<()> {
    let mut off = off as libc::off_t;
    let mut left = len;
    while left > 0 {
        // SAFETY: both descriptors are open for the duration of the call (borrowed); `off` is
        // a live local the kernel reads and advances.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, left) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as usize;
    }
    Ok(())
}

/// A pipe (read end, write end) with room for `bytes` (rounded up to pages): `F_SETPIPE_SZ`.
pub(crate) fn pipe_sized(
    bytes: usize,
) -> anyhow::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of two ints the kernel fills.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 succeeded: both descriptors are new and owned by nobody else.
    let (r, w) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let want = bytes.next_multiple_of(4096) as libc::c_int;
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, want) } < 0 {
        return Err(std::io::Error::last_os_error()).context("F_SETPIPE_SZ");
    }
    Ok((r, w))
}

/// A bare ring per sender with two sets of `depth` registered, page-aligned buffers. A batch
/// reads `depth` blocks with `ReadFixed` from the registered file (slot 0) into one set, waits
/// for them, then sends them in one linked chain (so the stream keeps their order) on the
/// registered socket (slot 1), with `Send` or with `SendZc` from the registered buffers, and
/// waits for the sends. A zero-copy send's buffer is free only at its notification, which
/// over loopback comes when the receiver has read the data: the next batch fills the other
/// set meanwhile, and a set is reused only once all its notifications are in. `Drop` reaps
/// whatever notifications are still outstanding before freeing the buffers.
struct RingSender {
    ring: io_uring::IoUring,
    arena: *mut u8,
    layout: std::alloc::Layout,
    stride: usize,
    depth: usize,
    block: u32,
    /// The set the next batch uses.
    next_set: usize,
    /// Operations still to complete: reads, sends, and per set the zero-copy notifications.
    reads: usize,
    sends: usize,
    notifs: [usize; 2],
    /// Figures of completions reaped so far: bytes sent, notifications, "copied" ones.
    sent: u64,
    notified: u64,
    copied: u64,
    /// The first failed read or send result of the current batch.
    bad: Option<i32>,
    /// A wait failed with operations possibly in flight: the buffers are never freed.
    poisoned: bool,
    /// The splice path's pipe (read end, write end), registered at slots 2 and 3.
    pipe: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
}

/// user_data: bit 32 marks a read, bit 33 a send; bit 16 the set; the low bits the buffer.
const UD_READ: u64 = 1 << 32;
const UD_SEND: u64 = 1 << 33;
const UD_SET: u64 = 1 << 16;

impl RingSender {
    fn new(
        file: &File,
        sock: &TcpStream,
        block: u32,
        depth: usize,
        splice: bool,
    ) -> anyhow::Result<Self> {
        let depth = depth.clamp(1, MAX_RING_DEPTH);
        let stride = (block as usize).next_multiple_of(4096);
        let layout = std::alloc::Layout::from_size_align(stride * 2 * depth, 4096)?;
        // SAFETY: the layout has a non-zero size (stride >= 4096, depth >= 1).
        let arena = unsafe { std::alloc::alloc_zeroed(layout) };
        if arena.is_null() {
            bail!("cannot allocate {} bytes of buffers", layout.size());
        }
        let entries = (depth as u32 + 1).next_power_of_two().max(8);
        let ring = match io_uring::IoUring::builder()
            .setup_cqsize(entries * 8)
            .build(entries)
        {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: allocated just above with this layout; nothing uses it yet.
                unsafe { std::alloc::dealloc(arena, layout) };
                return Err(anyhow::Error::new(e).context("io_uring_setup"));
            }
        };
        // From here on `Drop` frees the arena.
        let mut this = RingSender {
            ring,
            arena,
            layout,
            stride,
            depth,
            block,
            next_set: 0,
            reads: 0,
            sends: 0,
            notifs: [0, 0],
            sent: 0,
            notified: 0,
            copied: 0,
            bad: None,
            poisoned: false,
            pipe: None,
        };
        let iov: Vec<libc::iovec> = (0..2 * depth)
            .map(|i| libc::iovec {
                iov_base: this.buf(i).cast(),
                iov_len: block as usize,
            })
            .collect();
        // SAFETY: the iovecs point into the arena, which outlives every operation of the ring
        // (`batch` and `Drop` reap everything submitted before the arena is freed).
        unsafe { this.ring.submitter().register_buffers(&iov) }.context("registering buffers")?;
        let mut fds = vec![file.as_raw_fd(), sock.as_raw_fd()];
        if splice {
            let (r, w) = pipe_sized(block as usize * depth)?;
            fds.extend([r.as_raw_fd(), w.as_raw_fd()]);
            this.pipe = Some((r, w));
        }
        this.ring
            .submitter()
            .register_files(&fds)
            .context("registering the file, the socket and the pipe")?;
        Ok(this)
    }

    /// Buffer `i` (`i < 2 * depth`; set `s` holds buffers `s * depth ..`).
    fn buf(&self, i: usize) -> *mut u8 {
        debug_assert!(i < 2 * self.depth);
        // SAFETY: i < 2 * depth, so the offset stays inside the arena.
        unsafe { self.arena.add(i * self.stride) }
    }

    /// Submits what is queued and waits for at least one completion (retrying on EINTR), then
    /// accounts for every completion there is. A failed wait poisons the ring.
    fn wait_and_reap(&mut self) -> anyhow::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    self.poisoned = true;
                    return Err(anyhow::Error::new(e).context("io_uring_enter"));
                }
            }
        }
        let cqes: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (ud, res, fl) in cqes {
            let set = usize::from(ud & UD_SET != 0);
            if fl & CQE_F_NOTIF != 0 {
                self.notifs[set] = self.notifs[set].saturating_sub(1);
                self.notified += 1;
                if res as u32 & NOTIF_USAGE_ZC_COPIED != 0 {
                    self.copied += 1;
                }
            } else if ud & UD_READ != 0 {
                self.reads = self.reads.saturating_sub(1);
                if res != self.block as i32 {
                    self.bad.get_or_insert(res);
                }
            } else {
                self.sends = self.sends.saturating_sub(1);
                if io_uring::cqueue::more(fl) {
                    self.notifs[set] += 1;
                }
                if res < 0 {
                    self.bad.get_or_insert(res);
                } else {
                    self.sent += res as u64;
                }
            }
        }
        Ok(())
    }

    /// Reads the blocks at `offs` (at most `depth`) and sends them. The totals (bytes sent,
    /// zero-copy notifications, "copied" ones) accumulate in `sent`, `notified`, `copied`.
    fn batch(&mut self, offs: &[u64], zc: bool) -> anyhow::Result<()> {
        let n = offs.len().min(self.depth);
        let set = self.next_set;
        self.next_set ^= 1;
        while self.notifs[set] > 0 {
            self.wait_and_reap()?;
        }
        let first = set * self.depth;
        let tag = if set == 1 { UD_SET } else { 0 };
        let block = self.block;
        let bufs: Vec<*mut u8> = (first..first + n).map(|i| self.buf(i)).collect();
        {
            let mut sq = self.ring.submission();
            for (k, (&off, &dst)) in offs.iter().zip(&bufs).enumerate() {
                let e = io_uring::opcode::ReadFixed::new(
                    io_uring::types::Fixed(0),
                    dst,
                    block,
                    (first + k) as u16,
                )
                .offset(off)
                .build()
                .user_data(UD_READ | tag | k as u64);
                // SAFETY: the buffer (registered at index first + k, not in use: its set's
                // notifications are all in) and the registered file outlive the read, which
                // is reaped below before this returns.
                unsafe { sq.push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
            }
        }
        self.reads += n;
        while self.reads > 0 {
            self.wait_and_reap()?;
        }
        if let Some(r) = self.bad.take() {
            bail!("ring read: result {r}");
        }
        let flags = libc::MSG_WAITALL | libc::MSG_NOSIGNAL;
        {
            let mut sq = self.ring.submission();
            for (k, &buf) in bufs.iter().enumerate() {
                let e = if zc {
                    io_uring::opcode::SendZc::new(io_uring::types::Fixed(1), buf, block)
                        .buf_index(Some((first + k) as u16))
                        .flags(flags)
                        .zc_flags(SEND_ZC_REPORT_USAGE)
                        .build()
                } else {
                    io_uring::opcode::Send::new(io_uring::types::Fixed(1), buf, block)
                        .flags(flags)
                        .build()
                };
                let e = e.user_data(UD_SEND | tag | k as u64);
                // Linked: each send starts after the one before it completed in full.
                let e = if k + 1 < n {
                    e.flags(io_uring::squeue::Flags::IO_LINK)
                } else {
                    e
                };
                // SAFETY: the buffer and the registered socket outlive the send, reaped below,
                // and (zero-copy) its notification, reaped before the set is reused or freed.
                unsafe { sq.push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
            }
        }
        self.sends += n;
        while self.sends > 0 {
            self.wait_and_reap()?;
        }
        if let Some(r) = self.bad.take() {
            bail!(
                "ring {}: {}",
                if zc { "send_zc" } else { "send" },
                std::io::Error::from_raw_os_error(-r)
            );
        }
        Ok(())
    }
}

impl RingSender {
    /// Sends the blocks at `offs` (at most `depth`) without copying them to user space: one
    /// linked chain of a `Splice` per block from the registered file into the pipe (slot 3),
    /// then one `Splice` of the whole batch from the pipe (slot 2) to the socket (slot 1).
    /// io_uring runs splices in its io-wq workers (never inline), so their CPU is the
    /// process's "rest", counted with the sender's in the floor.
    fn splice_batch(&mut self, offs: &[u64]) -> anyhow::Result<()> {
        let n = offs.len().min(self.depth);
        if n == 0 || self.pipe.is_none() {
            return Ok(());
        }
        let block = self.block;
        let total = block * n as u32;
        {
            let mut sq = self.ring.submission();
            for (k, &off) in offs[..n].iter().enumerate() {
                let e = io_uring::opcode::Splice::new(
                    io_uring::types::Fixed(0),
                    off as i64,
                    io_uring::types::Fixed(3),
                    -1,
                    block,
                )
                .build()
                .user_data(UD_READ | k as u64)
                .flags(io_uring::squeue::Flags::IO_LINK);
                // SAFETY: a splice names no user memory; the registered file and pipe outlive
                // it (reaped below before this returns).
                unsafe { sq.push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
            }
            let e = io_uring::opcode::Splice::new(
                io_uring::types::Fixed(2),
                -1,
                io_uring::types::Fixed(1),
                -1,
                total,
            )
            .build()
            .user_data(UD_SEND);
            // SAFETY: as above: no user memory; the socket and the pipe outlive the op.
            unsafe { sq.push(&e) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        self.reads += n;
        self.sends += 1;
        while self.reads + self.sends > 0 {
            self.wait_and_reap()?;
        }
        if let Some(r) = self.bad.take() {
            bail!("ring splice: {}", std::io::Error::from_raw_os_error(-r));
        }
        Ok(())
    }
}

impl Drop for RingSender {
    fn drop(&mut self) {
        // Zero-copy notifications may still be due: the kernel holds those buffers until then.
        while !self.poisoned && self.reads + self.sends + self.notifs[0] + self.notifs[1] > 0 {
            if self.wait_and_reap().is_err() {
                break;
            }
        }
        if self.poisoned {
            return; // operations may still be in flight: leak the buffers rather than free them
        }
        // SAFETY: allocated in `new` with this layout; every operation submitted has been
        // reaped (above, or in `batch`), so nothing in the ring (dropped after this) can
        // touch the buffers.
        unsafe { std::alloc::dealloc(self.arena, self.layout) };
    }
}

/// One sender thread: set up, wait for the others, send for `seconds`, then collect the
/// receiver's report. The barrier is always reached, even when the set-up fails.
fn sender(
    plan: &Plan<'_>,
    path: SendPath,
    idx: usize,
    stream: TcpStream,
    barrier: &Barrier,
) -> anyhow::Result<StreamResult> {
    let block = plan.block as usize;
    let batch = plan.batch();
    let seed = 0x5eed_0000 + idx as u64;
    let offsets = match path {
        SendPath::Send => Vec::new(),
        SendPath::Batched => random_offsets(plan.file_size, batch as u32, OFFSETS, seed),
        _ => random_offsets(plan.file_size, plan.block, OFFSETS, seed),
    };
    let ring = match path {
        SendPath::RingSend | SendPath::RingSendZc | SendPath::RingSplice => Some(RingSender::new(
            plan.file,
            &stream,
            plan.block,
            plan.ring_depth(),
            path == SendPath::RingSplice,
        )),
        _ => None,
    };
    barrier.wait();
    let mut ring = ring.transpose()?;

    let mut stream = stream;
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(plan.seconds);
    let mut sent = 0u64;
    let mut zc = (0u64, 0u64);
    let mut i = 0usize;
    match path {
        SendPath::Send => {
            let buf = vec![0xA5u8; block];
            while Instant::now() < deadline {
                stream.write_all(&buf)?;
                sent += block as u64;
            }
        }
        SendPath::PreadSend | SendPath::Batched => {
            let len = if path == SendPath::Batched {
                batch
            } else {
                block
            };
            let mut buf = vec![0u8; len];
            while Instant::now() < deadline {
                plan.file
                    .read_exact_at(&mut buf, offsets[i % offsets.len()])
                    .context("pread")?;
                stream.write_all(&buf)?;
                sent += len as u64;
                i += 1;
            }
        }
        SendPath::Sendfile => {
            while Instant::now() < deadline {
                sendfile_all(&stream, plan.file, offsets[i % offsets.len()], block)
                    .context("sendfile")?;
                sent += block as u64;
                i += 1;
            }
        }
        SendPath::RingSend | SendPath::RingSendZc | SendPath::RingSplice => {
            let r = ring.as_mut().ok_or_else(|| anyhow::anyhow!("no ring"))?;
            let depth = plan.ring_depth();
            while Instant::now() < deadline {
                let lo = (i * depth) % offsets.len();
                let hi = (lo + depth).min(offsets.len());
                if path == SendPath::RingSplice {
                    r.splice_batch(&offsets[lo..hi])?;
                } else {
                    r.batch(&offsets[lo..hi], path == SendPath::RingSendZc)?;
                }
                i += 1;
            }
        }
    }
    if let Some(mut r) = ring.take() {
        // Every notification is in before the figures are read and the buffers freed.
        while r.notifs[0] + r.notifs[1] > 0 {
            r.wait_and_reap()?;
        }
        sent = r.sent;
        zc = (r.notified, r.copied);
    }
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .take(4096)
        .read_line(&mut line)
        .context("waiting for the receiver's report")?;
    let elapsed = t0.elapsed();
    let cpu = thread_cpu() - cpu0;
    let reply: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the receiver's report is not JSON: {:?}", line.trim()))?;
    let received = reply["bytes"]
        .as_u64()
        .context("the receiver's report has no byte count")?;
    let receiver_cpu = reply["cpu_s"].as_f64().unwrap_or(0.0);
    Ok(StreamResult {
        sent,
        elapsed,
        cpu,
        received,
        receiver_cpu,
        zc,
    })
}

fn try_path(plan: &Plan<'_>, path: SendPath) -> anyhow::Result<PathResult> {
    let mut streams = Vec::with_capacity(plan.streams);
    for _ in 0..plan.streams {
        let s = TcpStream::connect_timeout(&plan.target, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {}", plan.target))?;
        streams.push(s);
    }
    let barrier = Barrier::new(plan.streams);
    let cpu0 = process_cpu();
    let results: Vec<anyhow::Result<StreamResult>> = std::thread::scope(|sc| {
        let hs: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let b = &barrier;
                sc.spawn(move || sender(plan, path, i, s, b))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender thread panicked")))
            })
            .collect()
    });
    let process = process_cpu() - cpu0;
    let mut r = PathResult {
        path,
        bytes: 0,
        seconds: 0.0,
        sender_cpu: 0.0,
        receiver_cpu: 0.0,
        other_cpu: 0.0,
        zc: (path == SendPath::RingSendZc).then_some((0, 0)),
        error: None,
    };
    for s in results {
        let s = s?;
        if s.received != s.sent {
            bail!("the receiver got {} of {} bytes", s.received, s.sent);
        }
        r.bytes += s.sent;
        r.seconds = r.seconds.max(s.elapsed.as_secs_f64());
        r.sender_cpu += s.cpu;
        r.receiver_cpu += s.receiver_cpu;
        if let Some(z) = r.zc.as_mut() {
            z.0 += s.zc.0;
            z.1 += s.zc.1;
        }
    }
    let in_process = r.sender_cpu + if plan.loopback { r.receiver_cpu } else { 0.0 };
    r.other_cpu = (process - in_process).max(0.0);
    Ok(r)
}

fn run_path(plan: &Plan<'_>, path: SendPath) -> PathResult {
    try_path(plan, path).unwrap_or_else(|e| PathResult {
        path,
        bytes: 0,
        seconds: 0.0,
        sender_cpu: 0.0,
        receiver_cpu: 0.0,
        other_cpu: 0.0,
        zc: None,
        error: Some(format!("{e:#}")),
    })
}

// ---------------------------------------------------------------------------------------------
// iperf3
// ---------------------------------------------------------------------------------------------

/// What iperf3 measured (one stream, loopback).
#[derive(Debug, Clone)]
pub struct Iperf3 {
    pub mb_per_s: f64,
    pub seconds: f64,
    pub bytes: u64,
    /// iperf3's own CPU use, percent of one core: the client (sender) and server (receiver).
    pub sender_cpu_percent: f64,
    pub receiver_cpu_percent: f64,
}

impl Iperf3 {
    pub fn sender_cpu_per_gib(&self) -> f64 {
        self.sender_cpu_percent / 100.0 * self.seconds / (self.bytes.max(1) as f64 / GIB)
    }
    pub fn receiver_cpu_per_gib(&self) -> f64 {
        self.receiver_cpu_percent / 100.0 * self.seconds / (self.bytes.max(1) as f64 / GIB)
    }
}

/// Reads `iperf3 -J` output: the receiver's throughput and both ends' CPU.
pub fn parse_iperf3(json: &str) -> Result<Iperf3, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    let end = &v["end"];
    let recv = &end["sum_received"];
    let cpu = &end["cpu_utilization_percent"];
    let field = |x: &serde_json::Value, name: &str| {
        x[name]
            .as_f64()
            .ok_or_else(|| format!("iperf3 output lacks {name}"))
    };
    Ok(Iperf3 {
        mb_per_s: field(recv, "bits_per_second")? / 8.0 / 1e6,
        seconds: field(recv, "seconds")?,
        bytes: field(recv, "bytes")? as u64,
        sender_cpu_percent: field(cpu, "host_total")?,
        receiver_cpu_percent: field(cpu, "remote_total")?,
    })
}

/// A child process killed (by its PID) and reaped when dropped.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, read back, released).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `iperf3 -s -1` on 127.0.0.1 and waits until it listens.
fn iperf3_server() -> Result<(KillOnDrop, u16), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let mut child = Command::new("iperf3")
            // --forceflush: the "listening" line reaches the pipe at once.
            .args([
                "-s",
                "-1",
                "-p",
                &port.to_string(),
                "-B",
                "127.0.0.1",
                "--forceflush",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "not installed".to_string(),
                _ => format!("cannot start iperf3: {e}"),
            })?;
        let out = child.stdout.take();
        let child = KillOnDrop(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(out) = out {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening") => return Ok((child, port)),
                Ok(line) => last = line,
                Err(_) => break,
            }
        }
        let mut child = child;
        if matches!(child.0.try_wait(), Ok(None)) {
            return Err("iperf3 -s did not say it listens within 5 s".into());
        }
        // It exited: most likely another process took the port meanwhile; try another.
        if last.is_empty() {
            last = "iperf3 -s exited".into();
        }
    }
    Err(last)
}

/// `iperf3 -c 127.0.0.1 -t N -J` against our own `iperf3 -s -1 -B 127.0.0.1`.
pub fn iperf3(seconds: u64) -> Result<Iperf3, String> {
    let (mut server, port) = iperf3_server()?;
    let (_, out) = output_within(
        Stdio::null(),
        Command::new("iperf3").args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ]),
        Duration::from_secs(seconds + 20),
    )?;
    // `-1`: the server exits after one test; give it a moment, then `server` is killed by PID.
    let deadline = Instant::now() + Duration::from_secs(3);
    while matches!(server.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    parse_iperf3(&out)
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

/// What `bench net` measured.
#[derive(Debug, Clone)]
pub struct NetReport {
    pub target: SocketAddr,
    pub loopback: bool,
    pub block: u32,
    pub batch: usize,
    pub ring_depth: usize,
    pub streams: usize,
    pub seconds: f64,
    pub file: PathBuf,
    pub file_size: u64,
    pub fs: String,
    pub resident_before: (u64, u64),
    pub resident_after: (u64, u64),
    pub paths: Vec<PathResult>,
    pub iperf3: Result<Iperf3, String>,
}

impl NetReport {
    /// The cheapest sender CPU per GiB among the paths that ran.
    pub fn floor(&self) -> Option<&PathResult> {
        self.paths
            .iter()
            .filter(|p| p.ok())
            .min_by(|a, b| a.send_cost_per_gib().total_cmp(&b.send_cost_per_gib()))
    }

    /// The cheapest sender CPU per GiB among the paths that read the file (all but `send`).
    pub fn floor_from_file(&self) -> Option<&PathResult> {
        self.paths
            .iter()
            .filter(|p| p.ok() && p.path != SendPath::Send)
            .min_by(|a, b| a.send_cost_per_gib().total_cmp(&b.send_cost_per_gib()))
    }

    /// The best throughput among the paths that ran.
    pub fn ceiling(&self) -> Option<&PathResult> {
        self.paths
            .iter()
            .filter(|p| p.ok())
            .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()))
    }

    pub fn json(&self) -> serde_json::Value {
        let paths: Vec<_> = self
            .paths
            .iter()
            .map(|p| {
                let fig = |x: f64| {
                    if p.ok() {
                        serde_json::json!(x)
                    } else {
                        serde_json::Value::Null
                    }
                };
                serde_json::json!({
                    "path": p.path.key(), "what": p.path.what(),
                    "bytes": p.bytes, "seconds": p.seconds,
                    "mb_per_s": fig(p.mb_per_s()),
                    "sender_cpu_s": p.sender_cpu, "receiver_cpu_s": p.receiver_cpu,
                    "other_cpu_s": p.other_cpu,
                    "sender_cpu_s_per_gib": fig(p.sender_cpu_per_gib()),
                    "receiver_cpu_s_per_gib": fig(p.receiver_cpu_per_gib()),
                    "other_cpu_s_per_gib": fig(p.other_cpu_per_gib()),
                    "zc_notifications": p.zc.map(|z| z.0),
                    "zc_copied": p.zc.map(|z| z.1),
                    "error": p.error,
                })
            })
            .collect();
        let ip = self.iperf3.as_ref().ok();
        let iperf3 = ip.map(|i| {
            serde_json::json!({
                "streams": 1, "seconds": i.seconds, "bytes": i.bytes, "mb_per_s": i.mb_per_s,
                "sender_cpu_percent": i.sender_cpu_percent,
                "receiver_cpu_percent": i.receiver_cpu_percent,
                "sender_cpu_s_per_gib": i.sender_cpu_per_gib(),
                "receiver_cpu_s_per_gib": i.receiver_cpu_per_gib(),
            })
        });
        let floor = self.floor();
        let ceiling = self.ceiling();
        serde_json::json!({
            "mode": if self.loopback { "loopback" } else { "remote" },
            "target": self.target.to_string(),
            "block": self.block, "batch_bytes": self.batch, "ring_depth": self.ring_depth,
            "streams": self.streams, "seconds_per_path": self.seconds,
            "file": self.file.display().to_string(), "file_size": self.file_size, "fs": self.fs,
            "resident_pages_before": self.resident_before.0,
            "resident_pages_after": self.resident_after.0, "pages": self.resident_before.1,
            "paths": paths,
            "floor": floor.map(|p| serde_json::json!({
                "path": p.path.key(), "sender_cpu_s_per_gib": p.send_cost_per_gib(),
            })),
            "floor_from_file": self.floor_from_file().map(|p| serde_json::json!({
                "path": p.path.key(), "sender_cpu_s_per_gib": p.send_cost_per_gib(),
            })),
            "ceiling": ceiling.map(|p| serde_json::json!({
                "path": p.path.key(), "mb_per_s": p.mb_per_s(),
            })),
            "iperf3": iperf3,
            "iperf3_error": self.iperf3.as_ref().err(),
            "ceiling_vs_iperf3": ceiling.zip(ip).map(|(c, i)| c.mb_per_s() / i.mb_per_s),
            "floor_vs_iperf3": floor.zip(ip).map(|(f, i)| f.send_cost_per_gib() / i.sender_cpu_per_gib()),
        })
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{} {}, {} stream(s) (sender threads, one connection each), {}-byte blocks, \
             {:.1} s per path\n\
             file {} ({} MiB, {}), page cache: {}/{} pages resident before, {}/{} after\n\
             CPU seconds per GiB sent: of the sender threads, the receiver threads, the rest \
             of this process\n\
             {:<34} {:>9} {:>11} {:>11} {:>11}\n",
            if self.loopback { "loopback" } else { "to" },
            self.target,
            self.streams,
            self.block,
            self.seconds,
            self.file.display(),
            self.file_size >> 20,
            self.fs,
            self.resident_before.0,
            self.resident_before.1,
            self.resident_after.0,
            self.resident_after.1,
            "path",
            "MB/s",
            "sender",
            "receiver",
            "rest"
        );
        for p in &self.paths {
            if let Some(e) = &p.error {
                s.push_str(&format!("{:<34} failed: {e}\n", p.path.what()));
                continue;
            }
            s.push_str(&format!(
                "{:<34} {:>9.0} {:>11.3} {:>11.3} {:>11.3}",
                p.path.what(),
                p.mb_per_s(),
                p.sender_cpu_per_gib(),
                p.receiver_cpu_per_gib(),
                p.other_cpu_per_gib()
            ));
            if let Some((n, c)) = p.zc {
                s.push_str(&format!("  (kernel copied {c} of {n} zero-copy sends)"));
            }
            s.push('\n');
        }
        match &self.iperf3 {
            Ok(i) => s.push_str(&format!(
                "{:<34} {:>9.0} {:>11.3} {:>11.3} {:>11}  ({:.0}% + {:.0}% of a core)\n",
                "iperf3, 1 stream",
                i.mb_per_s,
                i.sender_cpu_per_gib(),
                i.receiver_cpu_per_gib(),
                "-",
                i.sender_cpu_percent,
                i.receiver_cpu_percent
            )),
            Err(e) => s.push_str(&format!("{:<34} not run: {e}\n", "iperf3")),
        }
        let ip = self.iperf3.as_ref().ok();
        if let Some(f) = self.floor() {
            s.push_str(&format!(
                "floor: {:.3} sender CPU-s per GiB ({})",
                f.send_cost_per_gib(),
                f.path.what()
            ));
            if let Some(i) = ip {
                s.push_str(&format!(
                    ", {:.2} x iperf3's",
                    f.send_cost_per_gib() / i.sender_cpu_per_gib()
                ));
            }
            s.push('\n');
        }
        if let Some(f) = self.floor_from_file() {
            s.push_str(&format!(
                "floor from the file: {:.3} sender CPU-s per GiB ({})\n",
                f.send_cost_per_gib(),
                f.path.what()
            ));
        }
        if let Some(c) = self.ceiling() {
            s.push_str(&format!(
                "ceiling: {:.0} MB/s ({})",
                c.mb_per_s(),
                c.path.what()
            ));
            if let Some(i) = ip {
                s.push_str(&format!(", {:.2} x iperf3's", c.mb_per_s() / i.mb_per_s));
            }
            s.push('\n');
        }
        s
    }
}

/// Resolves `HOST:PORT`; a bad address is a usage error.
fn resolve(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(UsageError(format!("{flag} {addr}: no address")).into()),
        Err(e) => Err(UsageError(format!("{flag} {addr}: not HOST:PORT ({e})")).into()),
    }
}

/// Validates the arguments (every limit explicit).
pub fn check_args(args: &BenchNetArgs) -> anyhow::Result<()> {
    let usage = |m: &str| Err(UsageError(m.to_string()).into());
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return usage("--seconds must be in (0, 600]");
    }
    if args.block == 0 || args.block > 1 << 20 {
        return usage("--block must be in 1..=1048576");
    }
    if args.streams.is_some_and(|s| s == 0 || s > 256) {
        return usage("--streams must be in 1..=256");
    }
    if args.size_mib == 0 || args.size_mib > 1 << 16 {
        return usage("--size-mib must be in 1..=65536");
    }
    if let Some(d) = &args.dir {
        if !d.is_dir() {
            return Err(UsageError(format!("--dir {}: not a directory", d.display())).into());
        }
    }
    if let Some(a) = &args.to {
        resolve("--to", a)?;
    }
    if let Some(a) = &args.serve {
        resolve("--serve", a)?;
    }
    Ok(())
}

/// A directory of our own for the data file, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A new directory `uring-bt-bench.<pid>.<nanos>` under `parent`.
    pub fn new(parent: &Path) -> anyhow::Result<ScratchDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("uring-bt-bench.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Measures every path (and iperf3 on loopback). `file`: an existing data file to send from
/// (used as is); otherwise one of `--size-mib` is made in a scratch directory under `--dir`.
pub fn measure(
    args: &BenchNetArgs,
    file: Option<&Path>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<NetReport> {
    check_args(args)?;
    let streams = args.streams.unwrap_or_else(cores);
    let (scratch, path) = match file {
        Some(f) => (None, f.to_path_buf()),
        None => {
            let parent = args
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let d = ScratchDir::new(&parent)?;
            let p = d.0.join("data.bin");
            progress(&format!(
                "net: creating {} ({} MiB)",
                p.display(),
                args.size_mib
            ));
            ensure_file(&p, args.size_mib << 20)?;
            (Some(d), p)
        }
    };
    let fs = fs_name(&path);
    if fs == "tmpfs" {
        eprintln!(
            "note: {} is on tmpfs; use an ext4 directory (--dir) to measure what a seeder reads",
            path.display()
        );
    }
    let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let file_size = f.metadata()?.len();
    let batch_need = (BATCH as u64).max(u64::from(args.block));
    if file_size < batch_need {
        bail!("{} is smaller than {batch_need} bytes", path.display());
    }
    let (target, loopback, receiver) = match &args.to {
        Some(a) => (resolve("--to", a)?, false, None),
        None => {
            let r = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            (r.addr, true, Some(r))
        }
    };
    progress(&format!("net: warming {}", path.display()));
    warm(&path)?;
    let resident_before = residency(&path)?;
    let plan = Plan {
        target,
        loopback,
        file: &f,
        file_size,
        block: args.block,
        streams,
        seconds: args.seconds,
    };
    let mut paths = Vec::with_capacity(SendPath::ALL.len());
    for p in SendPath::ALL {
        progress(&format!("net: {}", p.what()));
        paths.push(run_path(&plan, p));
    }
    let resident_after = residency(&path)?;
    drop(receiver);
    let iperf3 = if loopback {
        let secs = (args.seconds.round() as u64).max(1);
        progress(&format!("net: iperf3 -c 127.0.0.1 -t {secs}"));
        iperf3(secs)
    } else {
        Err("not run with --to (run iperf3 -s there and iperf3 -c here yourself)".into())
    };
    drop(scratch);
    Ok(NetReport {
        target,
        loopback,
        block: args.block,
        batch: plan.batch(),
        ring_depth: plan.ring_depth(),
        streams,
        seconds: args.seconds,
        file: path,
        file_size,
        fs,
        resident_before,
        resident_after,
        paths,
        iperf3,
    })
}

/// Runs `uring-bt bench net`.
pub fn run_net(args: BenchNetArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    if let Some(a) = &args.serve {
        return serve(resolve("--serve", a)?);
    }
    let quiet = |_: &str| {};
    let r = measure(&args, None, &quiet).context("bench net")?;
    let text = if args.json {
        format!("{}\n", r.json())
    } else {
        r.table()
    };
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchNetArgs {
        BenchNetArgs {
            seconds: 1.0,
            block: 16_384,
            streams: None,
            dir: None,
            size_mib: 16,
            json: false,
            serve: None,
            to: None,
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert!(check_args(&args()).is_ok());
        for bad in [
            BenchNetArgs {
                seconds: 0.0,
                ..args()
            },
            BenchNetArgs { block: 0, ..args() },
            BenchNetArgs {
                block: 2 << 20,
                ..args()
            },
            BenchNetArgs {
                streams: Some(0),
                ..args()
            },
            BenchNetArgs {
                size_mib: 0,
                ..args()
            },
            BenchNetArgs {
                to: Some("no-port-here".into()),
                ..args()
            },
            BenchNetArgs {
                dir: Some("/nonexistent/dir".into()),
                ..args()
            },
        ] {
            let e = check_args(&bad).unwrap_err();
            assert_eq!(crate::cli::exit_code_for(&e), 2, "{bad:?}");
        }
    }

    #[test]
    fn parses_iperf3_json() {
        let j = r#"{"start":{},"end":{"sum_sent":{"seconds":1.0,"bytes":2000000000,
            "bits_per_second":16e9},"sum_received":{"seconds":1.0,"bytes":2000000000,
            "bits_per_second":16e9},"cpu_utilization_percent":{"host_total":90.0,
            "remote_total":40.0}}}"#;
        let i = parse_iperf3(j).unwrap();
        assert_eq!(i.mb_per_s.round(), 2000.0);
        let per_gib = 0.9 / (2e9 / GIB);
        assert!((i.sender_cpu_per_gib() - per_gib).abs() < 1e-9);
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf3("{}").is_err());
    }

    #[test]
    fn every_path_moves_bytes_over_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        ensure_file(&p, 4 << 20).unwrap();
        let f = File::open(&p).unwrap();
        let recv = Receiver::start(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let plan = Plan {
            target: recv.addr,
            loopback: true,
            file: &f,
            file_size: 4 << 20,
            block: 16_384,
            streams: 2,
            seconds: 0.05,
        };
        for path in SendPath::ALL {
            let r = run_path(&plan, path);
            assert!(r.ok(), "{path:?}: {:?}", r.error);
            assert!(r.bytes > 0 && r.sender_cpu >= 0.0, "{path:?}");
        }
    }
}
