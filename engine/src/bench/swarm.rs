//! `uring-bt bench swarm`: the real seeder against K cheap downloading peers of our own.
//!
//! In one invocation, on loopback (127.0.0.1) only:
//! 1. A data file of `--size-mib` is generated in a scratch directory (ext4, `/var/tmp` by
//!    default, `--dir`), with `bench disk`'s pattern: the byte at offset `o` is a function of
//!    `o`, so a peer can check any block without the file.
//! 2. `bench net` runs on that file (its API, `--net-seconds` per path): its **ceiling** (best
//!    MB/s) and **floor** (cheapest sender CPU-s per GiB).
//! 3. A torrent of the file is made in-process (`torrent::create`), and the real seeder starts
//!    as a child: `uring-bt seed T --data DIR --listen 127.0.0.1:0 --no-announce --no-resume
//!    --shards S --upload-slots K x S` (K slots on every shard, so no peer waits for one
//!    wherever SO_REUSEPORT puts it). Its `listening:` line gives the port.
//! 4. The file is read once more (page cache warm), then K peer threads connect over
//!    `std::net::TcpStream` and speak the wire protocol with the engine's own codec
//!    (`uring_bt_proto::wire`): handshake, HAVE NONE (FAST), INTERESTED, wait for UNCHOKE, then
//!    keep `--pipeline` requests outstanding, walking the torrent's blocks in order from a
//!    start of their own and wrapping around for as long as the run lasts (a block is asked for
//!    again and again: this measures the seeder, not a download). Every `--sample-every`-th
//!    block of the torrent is compared with the generated data; the others are only counted.
//!    A wrong block (content or length) fails the run (exit 1), naming the block.
//! 5. After `--warmup` seconds, a window of `--duration` seconds is measured: the bytes of
//!    block data the peers received, the seeder's CPU (utime + stime of the whole process from
//!    `/proc/PID/stat`, at the window's start and end), this process's CPU (the peers), the
//!    seeder's peak RSS (VmHWM) and its open descriptors (`/proc/PID/fd`, the most seen in
//!    samples every 100 ms).
//!
//! The ratios printed are the swarm's MB/s over bench net's ceiling and the seeder's CPU-s per
//! GiB over bench net's floor (and over its floor among the paths that read the file).
//!
//! Test-only: [`TEST_CORRUPT_ENV`] set to a byte offset flips that byte of the generated file
//! before the torrent is made, so the seeder serves it (its hashes agree) and the peers' sample
//! check must catch it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use uring_bt_proto::metainfo::Metainfo;
use uring_bt_proto::wire::{self, BlockRef, Handshake, Message, BLOCK_SIZE};

use super::disk::{ensure_file, pattern, residency, warm, PATTERN_LEN};
use super::hash::{cores, print_stdout};
use super::net::{self, fs_name, process_cpu, KillOnDrop, NetReport};
use crate::cli::UsageError;
use crate::torrent::create::{self, CreateOptions, Source};

/// Test-only fault injection: a byte offset of the generated file to flip before the torrent
/// is made (the seeder then serves wrong data that its hashes call right).
pub const TEST_CORRUPT_ENV: &str = "URING_BT_TEST_SWARM_CORRUPT";

/// Arguments of `uring-bt bench swarm`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchSwarmArgs {
    /// Downloading peers of our own, one thread and one connection each (1..=64).
    #[arg(long, default_value_t = 8)]
    pub peers: usize,
    /// Size of the generated data file in MiB (1..=65536).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Seconds measured (0 < S <= 600), after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of transfer before the measured window (0..=60).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Requests each peer keeps outstanding (1..=1000; the seeder queues up to its reqq, 2000).
    #[arg(long, default_value_t = 128)]
    pub pipeline: u32,
    /// Check every Nth block of the torrent against the generated data (1..=1048576).
    #[arg(long, default_value_t = 64)]
    pub sample_every: u64,
    /// Seconds per path of the bench net run made in the same invocation (0 < S <= 60).
    #[arg(long, default_value_t = 1.0)]
    pub net_seconds: f64,
    /// Directory for the data file: an ext4 path, never tmpfs (default: /var/tmp). The file
    /// lives in a new subdirectory, removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The seeder's `--send-path` (copy or splice).
    #[arg(long, value_enum, default_value_t = crate::cli::seed::SendPathArg::Copy)]
    pub send_path: crate::cli::seed::SendPathArg,
    /// Measure another seeder instead of starting `uring-bt seed`: the address it listens on
    /// (loopback only). Needs --torrent, --data and --seeder-pid; no data file is made, peers
    /// it keeps choked wait (they do not fail the run), and each peer connects from its own
    /// 127.0.2.x (some clients take one connection per IP address).
    #[arg(long, value_name = "ADDR")]
    pub against: Option<SocketAddr>,
    /// With --against: the single-file torrent that seeder serves.
    #[arg(long, value_name = "FILE")]
    pub torrent: Option<PathBuf>,
    /// With --against: the torrent's data (its file, or the directory holding it): the sampled
    /// blocks are checked against it.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// With --against: the process that serves (its CPU, peak RSS and descriptors are
    /// measured).
    #[arg(long, value_name = "PID")]
    pub seeder_pid: Option<u32>,
    /// Skip bench net (the swarm's figures are then printed without its ceiling and floor).
    #[arg(long)]
    pub no_net: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The acceptance targets of issue 14, printed beside the ratios.
pub const TARGET_THROUGHPUT_VS_CEILING: f64 = 0.70;
pub const TARGET_CPU_VS_FLOOR: f64 = 1.15;

const GIB: f64 = (1u64 << 30) as f64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a blocked read wakes to look at the stop flag.
const READ_TICK: Duration = Duration::from_millis(200);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer choked (or not yet unchoked) for this long fails the run.
const UNCHOKE_TIMEOUT: Duration = Duration::from_secs(15);
/// A peer with requests outstanding that gets no block for this long fails the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer's receive buffer: the largest message the codec accepts, and its length prefix.
const RECV_BUF: usize = wire::MAX_MESSAGE_LEN as usize + 4;
/// Reads of at most this much: what one `read` may return.
const READ_CHUNK: usize = 256 * 1024;
/// The seeder's `listening:` line must come within this (it checks the data first).
const SEEDER_START_BASE: Duration = Duration::from_secs(60);
/// How long the seeder's log tail quoted in an error may be.
const LOG_TAIL: usize = 2000;

/// Validates the arguments (every limit explicit).
pub fn check_args(args: &BenchSwarmArgs) -> anyhow::Result<()> {
    let usage = |m: &str| Err(UsageError(m.to_string()).into());
    if args.peers == 0 || args.peers > 64 {
        return usage("--peers must be in 1..=64");
    }
    if args.size_mib == 0 || args.size_mib > 1 << 16 {
        return usage("--size-mib must be in 1..=65536");
    }
    if !(args.duration > 0.0 && args.duration <= 600.0) {
        return usage("--duration must be in (0, 600]");
    }
    if !(args.warmup >= 0.0 && args.warmup <= 60.0) {
        return usage("--warmup must be in [0, 60]");
    }
    if args.pipeline == 0 || args.pipeline > 1000 {
        return usage("--pipeline must be in 1..=1000");
    }
    if args.sample_every == 0 || args.sample_every > 1 << 20 {
        return usage("--sample-every must be in 1..=1048576");
    }
    if !(args.net_seconds > 0.0 && args.net_seconds <= 60.0) {
        return usage("--net-seconds must be in (0, 60]");
    }
    if let Some(d) = &args.dir {
        if !d.is_dir() {
            return Err(UsageError(format!("--dir {}: not a directory", d.display())).into());
        }
    }
    match args.against {
        Some(a) => {
            if !a.ip().is_loopback() {
                return usage("--against must be a loopback address (127.0.0.0/8 or ::1)");
            }
            if args.torrent.is_none() || args.data.is_none() || args.seeder_pid.is_none() {
                return usage("--against needs --torrent, --data and --seeder-pid");
            }
            if args.seeder_pid == Some(0) {
                return usage("--seeder-pid must be a process id");
            }
        }
        None => {
            if args.torrent.is_some() || args.data.is_some() || args.seeder_pid.is_some() {
                return usage("--torrent, --data and --seeder-pid go with --against");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The seeder: a child process, and what /proc says of it
// ---------------------------------------------------------------------------------------------

/// The running seeder; killed (by its PID) and reaped when dropped, on every path.
struct Seeder {
    /// None for a seeder of `--against` (not ours to stop).
    child: Option<KillOnDrop>,
    pid: u32,
    addr: SocketAddr,
    log: Option<PathBuf>,
    shards: usize,
    upload_slots: usize,
}

impl Seeder {
    fn start(
        torrent: &Path,
        data_dir: &Path,
        log: &Path,
        shards: usize,
        upload_slots: usize,
        size: u64,
        send_path: crate::cli::seed::SendPathArg,
    ) -> anyhow::Result<Seeder> {
        let exe = std::env::current_exe().context("cannot find our own binary")?;
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("seed")
            .arg(torrent)
            .arg("--data")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--no-announce", "--no-resume"])
            .args(["--shards", &shards.to_string()])
            .args(["--upload-slots", &upload_slots.to_string()])
            .args([
                "--send-path",
                match send_path {
                    crate::cli::seed::SendPathArg::Copy => "copy",
                    crate::cli::seed::SendPathArg::Splice => "splice",
                },
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .context("starting the seeder (uring-bt seed)")?;
        let pid = child.id();
        let out = child.stdout.take();
        let mut guard = KillOnDrop(child);
        let (tx, rx) = mpsc::channel();
        // Reads the seeder's stdout to its end (so it never blocks on a full pipe); hands over
        // the lines until nobody listens.
        std::thread::Builder::new()
            .name("swarm-seeder-out".into())
            .spawn(move || {
                if let Some(out) = out {
                    let mut tx = Some(tx);
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        if tx.as_ref().is_some_and(|t| t.send(line).is_err()) {
                            tx = None;
                        }
                    }
                }
            })
            .context("starting a thread")?;
        // It checks the data before it listens: allow ~50 MB/s for that.
        let wait = SEEDER_START_BASE + Duration::from_secs(size / 50_000_000);
        let deadline = Instant::now() + wait;
        let addr = loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                bail!(
                    "the seeder did not say it listens within {} s; its log: {}",
                    wait.as_secs(),
                    log_tail(log)
                );
            };
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening: ") {
                        let a = rest.split_whitespace().next().unwrap_or_default();
                        let addr: SocketAddr = a
                            .parse()
                            .with_context(|| format!("the seeder's line {line:?}"))?;
                        if !addr.ip().is_loopback() {
                            bail!("the seeder listens on {addr}, not on loopback");
                        }
                        break addr;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Ok(Some(st)) = guard.0.try_wait() {
                bail!(
                    "the seeder exited ({st}) before listening; its log: {}",
                    log_tail(log)
                );
            }
        };
        Ok(Seeder {
            child: Some(guard),
            pid,
            addr,
            log: Some(log.to_path_buf()),
            shards,
            upload_slots,
        })
    }

    /// Another seeder (`--against`): watched through /proc, never stopped by us.
    fn external(addr: SocketAddr, pid: u32) -> anyhow::Result<Seeder> {
        let s = Seeder {
            child: None,
            pid,
            addr,
            log: None,
            shards: 0,
            upload_slots: 0,
        };
        s.cpu()
            .with_context(|| format!("--seeder-pid {pid}: no such process"))?;
        Ok(s)
    }

    /// An error when the seeder has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                bail!("the seeder (pid {}) is gone", self.pid);
            }
            return Ok(());
        };
        match child.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => bail!(
                "the seeder exited ({st}); its log: {}",
                self.log.as_deref().map(log_tail).unwrap_or_default()
            ),
            Err(e) => bail!("waiting for the seeder: {e}"),
        }
    }

    /// utime + stime of the whole process (every thread, live or gone), in seconds.
    fn cpu(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("reading the seeder's /proc/PID/stat")?;
        parse_stat_cpu(&stat, clock_ticks())
            .with_context(|| format!("the seeder's /proc/PID/stat: {stat:?}"))
    }

    /// VmHWM in KiB.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the seeder's /proc/PID/status")?;
        parse_status_kib(&status, "VmHWM:").context("no VmHWM in the seeder's /proc/PID/status")
    }

    /// Open descriptors.
    fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .context("reading the seeder's /proc/PID/fd")?
            .count())
    }
}

/// The last [`LOG_TAIL`] bytes of the seeder's stderr, on one line.
fn log_tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let start = s.len().saturating_sub(LOG_TAIL);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    let t = s[start..].trim().replace('\n', " | ");
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds. The command name
/// (field 2) may hold spaces and parentheses: the fields are counted after its last `)`.
fn parse_stat_cpu(stat: &str, ticks: f64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks)
}

/// The value in kB of `key` (`VmHWM:`) in a `/proc/PID/status` text.
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// The peers
// ---------------------------------------------------------------------------------------------

/// What every peer shares with the others and with the main thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Set by a peer that failed: the others stop, the run fails.
    failed: AtomicBool,
    /// Bytes of block data received, by all peers.
    bytes: AtomicU64,
    blocks: AtomicU64,
    samples: AtomicU64,
    /// Peers unchoked at least once.
    unchoked: AtomicUsize,
}

/// The torrent as the peers see it.
struct Target {
    addr: SocketAddr,
    info_hash: [u8; 20],
    piece_length: u64,
    total: u64,
    /// 16 KiB blocks of the torrent (the last may be shorter).
    blocks: u64,
    pipeline: u32,
    sample_every: u64,
    /// What the sampled blocks are compared with.
    reference: Reference,
    /// Peers in the run: peer i starts at block i x blocks / peers.
    peers: usize,
    /// A peer kept choked waits instead of failing the run (another seeder's choker).
    wait_when_choked: bool,
    /// Each peer connects from its own 127.0.2.x ([`connect`]).
    spread_sources: bool,
}

/// The data a sampled block must equal.
enum Reference {
    /// The generated data ([`pattern`]: a function of the offset).
    Pattern(Arc<Vec<u8>>),
    /// The torrent's file as it is on disk (`--against`).
    File(File),
}

impl Target {
    /// The block `b` (0-based over the whole torrent).
    fn block(&self, b: u64) -> BlockRef {
        let off = b * u64::from(BLOCK_SIZE);
        BlockRef {
            piece: (off / self.piece_length) as u32,
            begin: (off % self.piece_length) as u32,
            len: (self.total - off).min(u64::from(BLOCK_SIZE)) as u32,
        }
    }

    /// The block a PIECE message carries, when it is one of the torrent's blocks.
    fn block_of(&self, piece: u32, begin: u32, len: usize) -> Option<u64> {
        let off = u64::from(piece) * self.piece_length + u64::from(begin);
        let b = off / u64::from(BLOCK_SIZE);
        let ok = u64::from(begin) < self.piece_length
            && off.is_multiple_of(u64::from(BLOCK_SIZE))
            && b < self.blocks
            && self.block(b).len as usize == len;
        ok.then_some(b)
    }

    /// Checks block `b`'s bytes against the generated data or the file.
    /// A mismatch is [`PeerFail::Wrong`]; failing to read the file is another failure.
    fn check(&self, b: u64, data: &[u8]) -> Result<(), PeerFail> {
        let start = b * u64::from(BLOCK_SIZE);
        let pattern = match &self.reference {
            Reference::Pattern(p) => p,
            Reference::File(f) => return self.check_file(f, b, start, data),
        };
        let mut done = 0usize;
        while done < data.len() {
            let at = ((start + done as u64) % PATTERN_LEN as u64) as usize;
            let n = (PATTERN_LEN - at).min(data.len() - done);
            let want = &pattern[at..at + n];
            let got = &data[done..done + n];
            if want != got {
                let i = want.iter().zip(got).position(|(w, g)| w != g).unwrap_or(0);
                let r = self.block(b);
                return Err(PeerFail::Wrong(format!(
                    "block {b} (piece {}, begin {}, {} bytes) is wrong: the byte at file \
                     offset {} is 0x{:02x}, the generated data has 0x{:02x}",
                    r.piece,
                    r.begin,
                    r.len,
                    start + (done + i) as u64,
                    got[i],
                    want[i]
                )));
            }
            done += n;
        }
        Ok(())
    }
}

impl Target {
    /// Block `b` against the bytes of the file at the same offset.
    fn check_file(&self, f: &File, b: u64, start: u64, data: &[u8]) -> Result<(), PeerFail> {
        let mut want = vec![0u8; data.len()];
        f.read_exact_at(&mut want, start)
            .map_err(|e| PeerFail::Other(format!("reading block {b} of the data file: {e}")))?;
        if want == data {
            return Ok(());
        }
        let i = want.iter().zip(data).position(|(w, g)| w != g).unwrap_or(0);
        let r = self.block(b);
        Err(PeerFail::Wrong(format!(
            "block {b} (piece {}, begin {}, {} bytes) is wrong: the byte at file offset {} is \
             0x{:02x}, the file has 0x{:02x}",
            r.piece,
            r.begin,
            r.len,
            start + i as u64,
            data[i],
            want[i]
        )))
    }
}

/// A block that differs from the generated data: the run fails with it (exit 1).
#[derive(Debug)]
pub struct WrongBlock(pub String);

impl std::fmt::Display for WrongBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WrongBlock {}

/// Why a peer stopped: a wrong block, or anything else (the text says what).
enum PeerFail {
    Wrong(String),
    Other(String),
}

impl From<String> for PeerFail {
    fn from(s: String) -> PeerFail {
        PeerFail::Other(s)
    }
}

impl From<&str> for PeerFail {
    fn from(s: &str) -> PeerFail {
        PeerFail::Other(s.to_string())
    }
}

/// One peer's totals over its whole run.
#[derive(Debug, Default, Clone, Copy)]
struct PeerStats {
    bytes: u64,
    blocks: u64,
    samples: u64,
    rejects: u64,
    chokes: u64,
}

fn peer_id(i: usize) -> [u8; 20] {
    let mut id = *b"-UBSWRM-000000000000";
    let n = format!("{:012}", (i as u64) ^ (u64::from(std::process::id()) << 16));
    let n = n.as_bytes();
    id[8..].copy_from_slice(&n[n.len() - 12..]);
    id
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Peer `i`'s connection. With `spread_sources` (another's seeder, on IPv4 loopback) each peer
/// binds its own source address, 127.0.2.(i + 1): rtorrent, for one, takes one connection per
/// IP address, and would close the second peer's during the handshake.
fn connect(i: usize, t: &Target) -> std::io::Result<TcpStream> {
    if !(t.spread_sources && t.addr.is_ipv4()) {
        return TcpStream::connect_timeout(&t.addr, CONNECT_TIMEOUT);
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let host = u8::try_from(i + 1).map_err(|_| std::io::Error::other("too many peers"))?;
    let local = SocketAddr::from(([127, 0, 2, host], 0));
    sock.bind(&local.into())?;
    sock.connect_timeout(&t.addr.into(), CONNECT_TIMEOUT)?;
    Ok(sock.into())
}

/// One peer, from connect to `stop`.
fn run_peer(i: usize, t: &Target, shared: &Shared) -> Result<PeerStats, PeerFail> {
    let mut s = connect(i, t).map_err(|e| format!("connecting to {}: {e}", t.addr))?;
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READ_TICK))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
    };
    setup(&s).map_err(|e| format!("socket options: {e}"))?;
    let mut out: Vec<u8> = Vec::with_capacity(64 + 17 * t.pipeline as usize);
    wire::encode_handshake(&Handshake::new(t.info_hash, peer_id(i)), &mut out);
    s.write_all(&out)
        .map_err(|e| format!("sending the handshake: {e}"))?;

    let mut buf = vec![0u8; RECV_BUF];
    let mut filled = 0usize;
    let started = Instant::now();
    let theirs = loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(PeerStats::default());
        }
        if started.elapsed() > HANDSHAKE_TIMEOUT {
            return Err("no handshake from the seeder within 10 s".into());
        }
        match s.read(&mut buf[filled..wire::HANDSHAKE_LEN]) {
            Ok(0) => return Err("the seeder closed the connection during the handshake".into()),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the handshake: {e}").into()),
        }
        match wire::decode_handshake(&buf[..filled]) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Err(format!("the seeder's handshake: {e}").into()),
        }
    };
    if theirs.info_hash != t.info_hash {
        return Err("the seeder answered with another info hash".into());
    }
    let fast = theirs.supports_fast();
    filled = 0;
    out.clear();
    if fast {
        wire::encode(&Message::HaveNone, &mut out);
    }
    wire::encode(&Message::Interested, &mut out);
    s.write_all(&out)
        .map_err(|e| format!("sending INTERESTED: {e}"))?;

    let mut st = PeerStats::default();
    let mut unchoked = false;
    let mut ever_unchoked = false;
    let mut choked_since = Instant::now();
    let mut last_block = Instant::now();
    let mut outstanding: u32 = 0;
    let mut next = i as u64 * t.blocks / t.peers.max(1) as u64;
    let refill = (t.pipeline / 8).max(1);
    loop {
        if shared.stop.load(Ordering::Relaxed) || shared.failed.load(Ordering::Relaxed) {
            return Ok(st);
        }
        let end = (filled + READ_CHUNK).min(buf.len());
        match s.read(&mut buf[filled..end]) {
            Ok(0) => return Err("the seeder closed the connection".into()),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading: {e}").into()),
        }
        let mut pos = 0usize;
        loop {
            let (msg, used) = match wire::decode(&buf[pos..filled], wire::MAX_MESSAGE_LEN) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(format!("the seeder broke the protocol: {e}").into()),
            };
            pos += used;
            match msg {
                Message::Piece { piece, begin, data } => {
                    let Some(b) = t.block_of(piece, begin, data.len()) else {
                        return Err(format!(
                            "a PIECE that is no block of the torrent: piece {piece}, begin \
                             {begin}, {} bytes",
                            data.len()
                        )
                        .into());
                    };
                    if b % t.sample_every == 0 {
                        t.check(b, data)?;
                        st.samples += 1;
                        shared.samples.fetch_add(1, Ordering::Relaxed);
                    }
                    outstanding = outstanding.saturating_sub(1);
                    st.blocks += 1;
                    st.bytes += data.len() as u64;
                    shared.blocks.fetch_add(1, Ordering::Relaxed);
                    shared.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    last_block = Instant::now();
                }
                Message::Unchoke if !unchoked => {
                    unchoked = true;
                    last_block = Instant::now();
                    if !ever_unchoked {
                        ever_unchoked = true;
                        shared.unchoked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Message::Choke => {
                    if unchoked {
                        unchoked = false;
                        choked_since = Instant::now();
                        st.chokes += 1;
                    }
                    if !fast {
                        // Without FAST a choke drops every request silently (BEP 3).
                        outstanding = 0;
                    }
                }
                Message::Reject(_) => {
                    outstanding = outstanding.saturating_sub(1);
                    st.rejects += 1;
                }
                _ => {} // HAVE ALL, BITFIELD, the extension handshake, keep-alives
            }
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        if unchoked {
            if outstanding > 0 && last_block.elapsed() > STALL_TIMEOUT {
                return Err(format!(
                    "no block for {} s with {outstanding} requests outstanding",
                    STALL_TIMEOUT.as_secs()
                )
                .into());
            }
            if outstanding + refill <= t.pipeline {
                out.clear();
                while outstanding < t.pipeline {
                    wire::encode(&Message::Request(t.block(next)), &mut out);
                    next = (next + 1) % t.blocks;
                    outstanding += 1;
                }
                s.write_all(&out)
                    .map_err(|e| format!("sending requests: {e}"))?;
            }
        } else if !t.wait_when_choked && choked_since.elapsed() > UNCHOKE_TIMEOUT {
            return Err(format!(
                "choked for {} s (not enough upload slots?)",
                UNCHOKE_TIMEOUT.as_secs()
            )
            .into());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// What bench net measured, as far as the swarm compares with it.
#[derive(Debug, Clone)]
pub struct NetFigures {
    pub seconds_per_path: f64,
    pub ceiling: Option<(&'static str, f64)>,
    pub floor: Option<(&'static str, f64)>,
    pub floor_from_file: Option<(&'static str, f64)>,
    pub json: serde_json::Value,
}

impl NetFigures {
    /// No bench net run (`--no-net`).
    pub fn none() -> NetFigures {
        NetFigures {
            seconds_per_path: 0.0,
            ceiling: None,
            floor: None,
            floor_from_file: None,
            json: serde_json::Value::Null,
        }
    }

    pub fn of(n: &NetReport) -> NetFigures {
        NetFigures {
            seconds_per_path: n.seconds,
            ceiling: n.ceiling().map(|p| (p.path.key(), p.mb_per_s())),
            floor: n.floor().map(|p| (p.path.key(), p.send_cost_per_gib())),
            floor_from_file: n
                .floor_from_file()
                .map(|p| (p.path.key(), p.send_cost_per_gib())),
            json: n.json(),
        }
    }
}

/// What one `bench swarm` measured.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    /// False when the seeder was another one's (`--against`): then `shards`, `upload_slots`
    /// and `send_path` say nothing.
    pub ours: bool,
    pub peers: usize,
    /// Peers unchoked at least once (all of them when the seeder is ours).
    pub unchoked: usize,
    /// The seeder's `--send-path`.
    pub send_path: &'static str,
    pub shards: usize,
    pub upload_slots: usize,
    pub pipeline: u32,
    pub sample_every: u64,
    pub seeder_addr: SocketAddr,
    /// The seeder's process id (gone when the report is made: killed and reaped).
    pub seeder_pid: u32,
    pub file: PathBuf,
    pub fs: String,
    pub size: u64,
    pub piece_length: u32,
    pub pieces: u32,
    pub warmup: f64,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Block data the peers received in the window.
    pub bytes: u64,
    pub blocks: u64,
    /// Blocks checked against the generated data over the whole run (all matched).
    pub samples: u64,
    /// Over the whole run.
    pub bytes_total: u64,
    pub rejects: u64,
    pub chokes: u64,
    pub seeder_cpu: f64,
    /// This process (the peers) in the window.
    pub peers_cpu: f64,
    pub seeder_peak_rss_kib: u64,
    pub seeder_fds: usize,
    pub resident_before: (u64, u64),
    pub resident_after: (u64, u64),
    pub net: NetFigures,
}

impl SwarmReport {
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }
    fn per_gib(&self, cpu: f64) -> Option<f64> {
        (self.bytes > 0).then(|| cpu / (self.bytes as f64 / GIB))
    }
    pub fn seeder_cpu_per_gib(&self) -> Option<f64> {
        self.per_gib(self.seeder_cpu)
    }
    pub fn peers_cpu_per_gib(&self) -> Option<f64> {
        self.per_gib(self.peers_cpu)
    }
    pub fn vs_ceiling(&self) -> Option<f64> {
        self.net
            .ceiling
            .filter(|c| c.1 > 0.0)
            .map(|c| self.mb_per_s() / c.1)
    }
    pub fn vs_floor(&self) -> Option<f64> {
        let f = self.net.floor.filter(|f| f.1 > 0.0)?;
        self.seeder_cpu_per_gib().map(|c| c / f.1)
    }
    pub fn vs_floor_from_file(&self) -> Option<f64> {
        let f = self.net.floor_from_file.filter(|f| f.1 > 0.0)?;
        self.seeder_cpu_per_gib().map(|c| c / f.1)
    }
    /// Cores busy in the window (seeder and peers together).
    pub fn cores_busy(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.seeder_cpu + self.peers_cpu) / self.seconds
        } else {
            0.0
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let named = |x: Option<(&'static str, f64)>, key: &str| {
            x.map(|(p, v)| {
                let mut m = serde_json::Map::new();
                m.insert("path".into(), p.into());
                m.insert(key.into(), v.into());
                serde_json::Value::Object(m)
            })
        };
        let mut v = serde_json::json!({
            "peers": self.peers, "shards": self.shards, "upload_slots": self.upload_slots,
            "send_path": self.send_path,
            "pipeline": self.pipeline, "sample_every": self.sample_every,
            "seeder_addr": self.seeder_addr.to_string(), "seeder_pid": self.seeder_pid,
            "file": self.file.display().to_string(), "fs": self.fs, "size": self.size,
            "piece_length": self.piece_length, "pieces": self.pieces,
            "warmup_s": self.warmup, "seconds": self.seconds,
            "bytes": self.bytes, "blocks": self.blocks, "mb_per_s": self.mb_per_s(),
            "bytes_total": self.bytes_total,
            "samples_checked": self.samples, "mismatches": 0,
            "rejects": self.rejects, "chokes": self.chokes,
            "seeder": {
                "cpu_s": self.seeder_cpu, "cpu_s_per_gib": self.seeder_cpu_per_gib(),
                "peak_rss_kib": self.seeder_peak_rss_kib, "open_fds": self.seeder_fds,
            },
            "peers_cpu_s": self.peers_cpu, "peers_cpu_s_per_gib": self.peers_cpu_per_gib(),
            "cores_busy": self.cores_busy(),
            "resident_pages_before": self.resident_before.0,
            "resident_pages_after": self.resident_after.0, "pages": self.resident_before.1,
            "net_seconds_per_path": self.net.seconds_per_path,
            "net_ceiling": named(self.net.ceiling, "mb_per_s"),
            "net_floor": named(self.net.floor, "sender_cpu_s_per_gib"),
            "net_floor_from_file": named(self.net.floor_from_file, "sender_cpu_s_per_gib"),
            "throughput_vs_ceiling": self.vs_ceiling(),
            "cpu_vs_floor": self.vs_floor(),
            "cpu_vs_floor_from_file": self.vs_floor_from_file(),
            "target_throughput_vs_ceiling": TARGET_THROUGHPUT_VS_CEILING,
            "target_cpu_vs_floor": TARGET_CPU_VS_FLOOR,
            "net": self.net.json,
        });
        v["seeder_kind"] = (if self.ours { "uring-bt" } else { "external" }).into();
        v["unchoked"] = self.unchoked.into();
        v
    }

    pub fn table(&self) -> String {
        let f3 = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or("-".into());
        let f2 = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("-".into());
        let who = if self.ours {
            format!(
                "uring-bt seed on {} ({} shard(s), --upload-slots {}: {} per shard, so every \
                 peer is unchoked)",
                self.seeder_addr,
                self.shards,
                self.upload_slots,
                self.upload_slots / self.shards.max(1)
            )
        } else {
            format!(
                "the seeder on {} (pid {}; each peer from its own 127.0.2.x; {} of the peers \
                 unchoked)",
                self.seeder_addr, self.seeder_pid, self.unchoked
            )
        };
        let mut s = format!(
            "swarm: {} peers of our own -> {who}\n\
             file {} ({} MiB, {}; {} pieces of {} KiB), page cache: {}/{} pages resident \
             before, {}/{} after\n\
             {} requests outstanding per peer; every {}th block checked: {} checked, 0 wrong\n\
             window {:.1} s after {:.1} s of warm-up; {} rejects, {} chokes\n",
            self.peers,
            self.file.display(),
            self.size >> 20,
            self.fs,
            self.pieces,
            self.piece_length >> 10,
            self.resident_before.0,
            self.resident_before.1,
            self.resident_after.0,
            self.resident_after.1,
            self.pipeline,
            self.sample_every,
            self.samples,
            self.seconds,
            self.warmup,
            self.rejects,
            self.chokes,
        );
        s.push_str(&format!(
            "aggregate: {:.0} MB/s ({} bytes of blocks)\n\
             seeder: {} CPU-s per GiB served (whole process, {:.2} CPU-s), peak RSS {:.1} MiB, \
             {} open descriptors\n\
             peers (this process): {} CPU-s per GiB; {:.2} cores busy in all\n",
            self.mb_per_s(),
            self.bytes,
            f3(self.seeder_cpu_per_gib()),
            self.seeder_cpu,
            self.seeder_peak_rss_kib as f64 / 1024.0,
            self.seeder_fds,
            f3(self.peers_cpu_per_gib()),
            self.cores_busy(),
        ));
        let name = |x: Option<(&'static str, f64)>, d: usize, unit: &str| {
            x.map(|(p, v)| format!("{v:.d$} {unit} ({p})"))
                .unwrap_or("-".into())
        };
        if self.net.ceiling.is_none() && self.net.floor.is_none() {
            s.push_str("bench net: not run (--no-net)\n");
            return s;
        }
        s.push_str(&format!(
            "bench net, same run ({:.1} s per path): ceiling {}, floor {}, floor from the \
             file {}\n\
             throughput / ceiling: {} (target >= {:.2})\n\
             seeder CPU per GiB / floor: {} (target <= {:.2}); / floor from the file: {}\n",
            self.net.seconds_per_path,
            name(self.net.ceiling, 0, "MB/s"),
            name(self.net.floor, 3, "sender CPU-s/GiB"),
            name(self.net.floor_from_file, 3, "sender CPU-s/GiB"),
            f2(self.vs_ceiling()),
            TARGET_THROUGHPUT_VS_CEILING,
            f2(self.vs_floor()),
            TARGET_CPU_VS_FLOOR,
            f2(self.vs_floor_from_file()),
        ));
        s
    }
}

/// Flips the byte at `offset` of `path` (the test-only fault).
fn corrupt(path: &Path, offset: u64) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .with_context(|| format!("{TEST_CORRUPT_ENV}={offset}: past the end"))?;
    b[0] ^= 0xFF;
    f.write_all_at(&b, offset)?;
    f.sync_all()?;
    Ok(())
}

/// Sleeps `d` in steps of at most `tick`, calling `each` after every step; stops at its error.
fn watch(
    d: Duration,
    tick: Duration,
    mut each: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(tick));
        each()?;
    }
    Ok(())
}

/// The peers' threads; stopped and joined when dropped (each notices within [`READ_TICK`],
/// or its write or connect timeout).
struct Peers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<Result<PeerStats, PeerFail>>>,
}

impl Peers {
    fn start(k: usize, t: Arc<Target>) -> anyhow::Result<Peers> {
        let shared = Arc::new(Shared::default());
        let mut peers = Peers {
            shared: Arc::clone(&shared),
            handles: Vec::with_capacity(k),
        };
        for i in 0..k {
            let (t, sh) = (Arc::clone(&t), Arc::clone(&shared));
            let h = std::thread::Builder::new()
                .name(format!("swarm-peer-{i}"))
                .spawn(move || {
                    let r = run_peer(i, &t, &sh);
                    if r.is_err() {
                        sh.failed.store(true, Ordering::Release);
                    }
                    r
                })
                .context("starting a peer thread")?;
            peers.handles.push(h);
        }
        Ok(peers)
    }

    /// Stops every peer and returns their totals, or the first peer's error.
    fn finish(mut self) -> anyhow::Result<PeerStats> {
        self.shared.stop.store(true, Ordering::Release);
        let mut sum = PeerStats::default();
        let mut first_err = None;
        for (i, h) in std::mem::take(&mut self.handles).into_iter().enumerate() {
            match h.join() {
                Ok(Ok(s)) => {
                    sum.bytes += s.bytes;
                    sum.blocks += s.blocks;
                    sum.samples += s.samples;
                    sum.rejects += s.rejects;
                    sum.chokes += s.chokes;
                }
                Ok(Err(PeerFail::Wrong(e))) => {
                    // A wrong block outranks any other peer's error.
                    if !matches!(first_err, Some(PeerFail::Wrong(_))) {
                        first_err = Some(PeerFail::Wrong(format!("peer {i}: {e}")));
                    }
                }
                Ok(Err(PeerFail::Other(e))) => {
                    first_err.get_or_insert(PeerFail::Other(format!("peer {i}: {e}")));
                }
                Err(_) => {
                    first_err
                        .get_or_insert(PeerFail::Other(format!("peer {i}: its thread panicked")));
                }
            }
        }
        match first_err {
            Some(PeerFail::Wrong(e)) => Err(WrongBlock(e).into()),
            Some(PeerFail::Other(e)) => bail!("{e}"),
            None => Ok(sum),
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The data file of `--against`'s torrent: `data` itself, or `data/NAME`.
fn external_data(meta: &Metainfo, data: &Path) -> anyhow::Result<PathBuf> {
    if meta.multi_file {
        bail!(
            "bench swarm --against takes a single-file torrent ({} has a directory)",
            meta.name
        );
    }
    if !meta.piece_length.is_multiple_of(BLOCK_SIZE) || meta.total_length == 0 {
        bail!("piece length {} is not whole blocks", meta.piece_length);
    }
    let path = if data.is_dir() {
        data.join(&meta.name)
    } else {
        data.to_path_buf()
    };
    let len = std::fs::metadata(&path)
        .with_context(|| format!("--data: {}", path.display()))?
        .len();
    if len != meta.total_length {
        bail!(
            "--data: {} has {len} bytes, the torrent {}",
            path.display(),
            meta.total_length
        );
    }
    Ok(path)
}

/// The generated data file: `file` when given (the overview's), else a new one in `dir`.
fn generated_data(
    args: &BenchSwarmArgs,
    file: Option<&Path>,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    let p = dir.join("swarm.bin");
    progress(&format!(
        "swarm: creating {} ({} MiB)",
        p.display(),
        args.size_mib
    ));
    ensure_file(&p, args.size_mib << 20)?;
    if let Some(v) = std::env::var_os(TEST_CORRUPT_ENV) {
        let off: u64 = v
            .to_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{TEST_CORRUPT_ENV}: not a byte offset"))?;
        progress(&format!("swarm: test only: flipping the byte at {off}"));
        corrupt(&p, off)?;
    }
    Ok(p)
}

/// A torrent of `path`, made in-process and written into `dir`.
fn make_torrent(
    path: &Path,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(PathBuf, Metainfo)> {
    progress("swarm: making the torrent");
    let source = Source::scan(path)?;
    let opts = CreateOptions {
        trackers: Vec::new(),
        piece_length: None,
        private: false,
        comment: None,
        created_by: None,
        creation_date: None,
        threads: cores(),
    };
    let created = create::build(&source, &opts, &|_| {})?;
    let meta = created.metainfo;
    if !meta.piece_length.is_multiple_of(BLOCK_SIZE) || meta.total_length == 0 {
        bail!("piece length {} is not whole blocks", meta.piece_length);
    }
    let torrent = dir.join("swarm.torrent");
    std::fs::write(&torrent, &created.bytes)
        .with_context(|| format!("writing {}", torrent.display()))?;
    Ok((torrent, meta))
}

/// Runs the swarm. `file`: an existing data file made by [`ensure_file`] (the overview's), used
/// as is, with the torrent written beside it; otherwise one of `--size-mib` is made in a scratch
/// directory under `--dir`. `net`: bench net's figures from the same invocation; otherwise
/// bench net runs here first, `--net-seconds` per path.
pub fn measure(
    args: &BenchSwarmArgs,
    file: Option<&Path>,
    net_figures: Option<NetFigures>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<SwarmReport> {
    check_args(args)?;
    // Declared first, dropped last: after the seeder is gone.
    let mut scratch = None;
    let (path, ext_meta) = match (&args.against, &args.torrent, &args.data) {
        (Some(_), Some(t), Some(d)) => {
            let meta = crate::torrent::load::metainfo_from_file(t)
                .with_context(|| format!("--torrent {}", t.display()))?;
            (external_data(&meta, d)?, Some(meta))
        }
        _ => {
            let parent = args
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/tmp"));
            let dir = scratch
                .insert(net::ScratchDir::new(&parent)?)
                .path()
                .to_path_buf();
            (generated_data(args, file, &dir, progress)?, None)
        }
    };
    let fs = fs_name(&path);
    if fs == "tmpfs" {
        eprintln!(
            "note: {} is on tmpfs; use an ext4 directory (--dir) to measure what a seeder reads",
            path.display()
        );
    }
    let net = match net_figures {
        Some(n) => n,
        None if args.no_net => NetFigures::none(),
        None => {
            let net_args = net::BenchNetArgs {
                seconds: args.net_seconds,
                block: BLOCK_SIZE,
                streams: None,
                dir: None,
                size_mib: args.size_mib,
                json: false,
                serve: None,
                to: None,
            };
            let n = net::measure(&net_args, Some(&path), progress).context("bench net")?;
            NetFigures::of(&n)
        }
    };

    let (mut seeder, meta) = match (args.against, args.seeder_pid, ext_meta, &scratch) {
        (Some(addr), Some(pid), Some(meta), _) => (Seeder::external(addr, pid)?, meta),
        (_, _, None, Some(dir)) => {
            let (torrent, meta) = make_torrent(&path, dir.path(), progress)?;
            let data_dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let shards = cores();
            let upload_slots = args.peers * shards;
            progress(&format!(
                "swarm: starting uring-bt seed ({shards} shard(s), --upload-slots {upload_slots})"
            ));
            let seeder = Seeder::start(
                &torrent,
                &data_dir,
                &dir.path().join("seeder.log"),
                shards,
                upload_slots,
                meta.total_length,
                args.send_path,
            )?;
            (seeder, meta)
        }
        _ => bail!("bench swarm: no seeder to measure"),
    };
    let ours = seeder.child.is_some();
    progress(&format!("swarm: warming {}", path.display()));
    warm(&path)?;
    let resident_before = residency(&path)?;

    let target = Arc::new(Target {
        addr: seeder.addr,
        info_hash: meta.info_hash,
        piece_length: u64::from(meta.piece_length),
        total: meta.total_length,
        blocks: meta.total_length.div_ceil(u64::from(BLOCK_SIZE)),
        pipeline: args.pipeline,
        sample_every: args.sample_every,
        reference: if ours {
            Reference::Pattern(Arc::new(pattern()))
        } else {
            Reference::File(
                File::open(&path).with_context(|| format!("opening {}", path.display()))?,
            )
        },
        peers: args.peers,
        wait_when_choked: !ours,
        spread_sources: !ours,
    });
    progress(&format!(
        "swarm: {} peers -> {} ({} requests each in flight)",
        args.peers, seeder.addr, args.pipeline
    ));
    let peers = Peers::start(args.peers, target)?;
    let sh = Arc::clone(&peers.shared);
    let failed = |seeder: &mut Seeder| -> anyhow::Result<()> {
        if sh.failed.load(Ordering::Acquire) {
            bail!("a peer failed");
        }
        seeder.check_alive()
    };
    let mut fds_max = 0usize;
    let mut window = || -> anyhow::Result<(f64, u64, u64, f64, f64)> {
        // Every peer unchoked (bounded; one at least when the seeder is another's: its
        // choker decides), then the warm-up, then the window.
        let waited = Instant::now();
        let want = if ours { args.peers } else { 1 };
        while sh.unchoked.load(Ordering::Acquire) < want {
            failed(&mut seeder)?;
            if waited.elapsed() > UNCHOKE_TIMEOUT {
                bail!(
                    "{} of {} peers unchoked within {} s",
                    sh.unchoked.load(Ordering::Acquire),
                    args.peers,
                    UNCHOKE_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        watch(
            Duration::from_secs_f64(args.warmup),
            Duration::from_millis(50),
            || failed(&mut seeder),
        )?;
        progress(&format!("swarm: measuring {:.1} s", args.duration));
        let (cpu0, mine0) = (seeder.cpu()?, process_cpu());
        let (bytes0, blocks0) = (
            sh.bytes.load(Ordering::Acquire),
            sh.blocks.load(Ordering::Acquire),
        );
        let t0 = Instant::now();
        watch(
            Duration::from_secs_f64(args.duration),
            Duration::from_millis(100),
            || {
                failed(&mut seeder)?;
                fds_max = fds_max.max(seeder.fds()?);
                Ok(())
            },
        )?;
        let (bytes1, blocks1) = (
            sh.bytes.load(Ordering::Acquire),
            sh.blocks.load(Ordering::Acquire),
        );
        let secs = t0.elapsed().as_secs_f64();
        let (cpu1, mine1) = (seeder.cpu()?, process_cpu());
        Ok((
            secs,
            bytes1 - bytes0,
            blocks1 - blocks0,
            cpu1 - cpu0,
            mine1 - mine0,
        ))
    };
    let measured = window();
    let unchoked = sh.unchoked.load(Ordering::Acquire);
    // A peer's own error says more than the main thread's "a peer failed": finish first.
    let totals = peers.finish();
    let ((seconds, bytes, blocks, seeder_cpu, peers_cpu), totals) = match (measured, totals) {
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
        (Ok(m), Ok(_)) if m.1 == 0 => bail!("the peers received nothing in the window"),
        (Ok(m), Ok(t)) => (m, t),
    };
    // Read again after the peers stopped (totals are final then).
    let seeder_peak_rss_kib = seeder.peak_rss_kib()?;
    fds_max = fds_max.max(seeder.fds().unwrap_or(0));
    let resident_after = residency(&path)?;
    let (seeder_addr, seeder_pid) = (seeder.addr, seeder.pid);
    let (shards, upload_slots) = (seeder.shards, seeder.upload_slots);
    drop(seeder);
    drop(scratch);
    Ok(SwarmReport {
        ours,
        unchoked,
        send_path: match args.send_path {
            _ if !ours => "-",
            crate::cli::seed::SendPathArg::Copy => "copy",
            crate::cli::seed::SendPathArg::Splice => "splice",
        },
        peers: args.peers,
        shards,
        upload_slots,
        pipeline: args.pipeline,
        sample_every: args.sample_every,
        seeder_addr,
        seeder_pid,
        file: path,
        fs,
        size: meta.total_length,
        piece_length: meta.piece_length,
        pieces: meta.num_pieces(),
        warmup: args.warmup,
        seconds,
        bytes,
        blocks,
        samples: totals.samples,
        bytes_total: totals.bytes,
        rejects: totals.rejects,
        chokes: totals.chokes,
        seeder_cpu,
        peers_cpu,
        seeder_peak_rss_kib,
        seeder_fds: fds_max,
        resident_before,
        resident_after,
        net,
    })
}

/// Runs `uring-bt bench swarm`; progress on stderr.
pub fn run_swarm(args: BenchSwarmArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let started = Instant::now();
    let say = |m: &str| {
        eprintln!("bench [{:5.1} s] {m}", started.elapsed().as_secs_f64());
    };
    let r = measure(&args, None, None, &say).context("bench swarm")?;
    say("done");
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

    fn args() -> BenchSwarmArgs {
        BenchSwarmArgs {
            peers: 2,
            size_mib: 16,
            duration: 1.0,
            warmup: 0.0,
            pipeline: 64,
            sample_every: 64,
            net_seconds: 0.2,
            dir: None,
            send_path: crate::cli::seed::SendPathArg::Copy,
            against: None,
            torrent: None,
            data: None,
            seeder_pid: None,
            no_net: false,
            json: false,
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert!(check_args(&args()).is_ok());
        for bad in [
            BenchSwarmArgs { peers: 0, ..args() },
            BenchSwarmArgs {
                peers: 65,
                ..args()
            },
            BenchSwarmArgs {
                size_mib: 0,
                ..args()
            },
            BenchSwarmArgs {
                duration: 0.0,
                ..args()
            },
            BenchSwarmArgs {
                warmup: -1.0,
                ..args()
            },
            BenchSwarmArgs {
                pipeline: 0,
                ..args()
            },
            BenchSwarmArgs {
                sample_every: 0,
                ..args()
            },
            BenchSwarmArgs {
                net_seconds: 0.0,
                ..args()
            },
            BenchSwarmArgs {
                dir: Some("/nonexistent/dir".into()),
                ..args()
            },
        ] {
            let e = check_args(&bad).unwrap_err();
            assert_eq!(crate::cli::exit_code_for(&e), 2, "{bad:?}");
        }
    }

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (uring-bt (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 \
                    3 0 12345 1000 200";
        assert_eq!(parse_stat_cpu(stat, 100.0), Some(2.0));
        assert_eq!(parse_stat_cpu("4242 (x) S 1", 100.0), None);
        let status = "Name:\turing-bt\nVmPeak:\t  9000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    fn target(total: u64) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            info_hash: [0; 20],
            piece_length: 32 * 1024,
            total,
            blocks: total.div_ceil(u64::from(BLOCK_SIZE)),
            pipeline: 8,
            sample_every: 1,
            reference: Reference::Pattern(Arc::new(pattern())),
            peers: 1,
            wait_when_choked: false,
            spread_sources: false,
        }
    }

    /// The text of a wrong-block failure (anything else fails the test).
    fn wrong(r: Result<(), PeerFail>) -> String {
        match r {
            Err(PeerFail::Wrong(e)) => e,
            Err(PeerFail::Other(e)) => panic!("not a wrong block: {e}"),
            Ok(()) => panic!("the block passed"),
        }
    }

    #[test]
    fn against_needs_its_companions_and_loopback() {
        let ext = |against: &str| BenchSwarmArgs {
            against: Some(against.parse().unwrap()),
            torrent: Some("t.torrent".into()),
            data: Some("d".into()),
            seeder_pid: Some(42),
            ..args()
        };
        assert!(check_args(&ext("127.0.0.2:6881")).is_ok());
        assert!(check_args(&ext("[::1]:6881")).is_ok());
        for bad in [
            ext("10.0.0.1:6881"),
            BenchSwarmArgs {
                seeder_pid: None,
                ..ext("127.0.0.1:1")
            },
            BenchSwarmArgs {
                torrent: None,
                ..ext("127.0.0.1:1")
            },
            BenchSwarmArgs {
                seeder_pid: Some(0),
                ..ext("127.0.0.1:1")
            },
            BenchSwarmArgs {
                data: Some("d".into()),
                ..args()
            },
        ] {
            let e = check_args(&bad).unwrap_err();
            assert_eq!(crate::cli::exit_code_for(&e), 2, "{bad:?}");
        }
    }

    #[test]
    fn blocks_are_checked_against_the_file_with_against() {
        let dir = std::env::temp_dir().join(format!("ubt-swarm-ref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.bin");
        let bytes: Vec<u8> = (0..72 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let t = Target {
            reference: Reference::File(File::open(&path).unwrap()),
            ..target(72 * 1024)
        };
        assert!(t.check(4, &bytes[4 * 16_384..]).is_ok());
        let mut bad = bytes[16_384..32_768].to_vec();
        bad[5] ^= 0x10;
        let e = wrong(t.check(1, &bad));
        assert!(e.contains("block 1") && e.contains("offset 16389"), "{e}");
        // Another block's bytes are wrong for this one.
        wrong(t.check(2, &bytes[16_384..32_768]));
        // A file that cannot be read at that offset is no wrong block.
        let short = Target {
            reference: Reference::File(File::open(dir.join("data.bin")).unwrap()),
            ..target(80 * 1024)
        };
        assert!(matches!(
            short.check(4, &[0u8; 16_384]),
            Err(PeerFail::Other(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blocks_map_to_pieces_and_are_checked_against_the_pattern() {
        // Two pieces of 32 KiB and one of 8 KiB: the last block is 8 KiB.
        let t = target(72 * 1024);
        assert_eq!(t.blocks, 5);
        assert_eq!(
            t.block(3),
            BlockRef {
                piece: 1,
                begin: 16_384,
                len: 16_384
            }
        );
        assert_eq!(t.block(4).len, 8192);
        assert_eq!(t.block_of(1, 16_384, 16_384), Some(3));
        assert_eq!(t.block_of(2, 0, 8192), Some(4));
        assert_eq!(t.block_of(2, 0, 16_384), None, "too long");
        assert_eq!(t.block_of(0, 100, 16_384), None, "unaligned");
        assert_eq!(t.block_of(0, 32 * 1024, 16_384), None, "past the piece");
        assert_eq!(t.block_of(9, 0, 16_384), None, "past the torrent");
        let p = pattern();
        let good = p[3 * 16_384..4 * 16_384].to_vec();
        assert!(t.check(3, &good).is_ok());
        let mut bad = good.clone();
        bad[100] ^= 1;
        let e = wrong(t.check(3, &bad));
        assert!(e.contains("block 3") && e.contains("offset 49252"), "{e}");
        // The pattern repeats: the block after its period is its first block again.
        let t = Target {
            piece_length: PATTERN_LEN as u64 * 2,
            ..target(PATTERN_LEN as u64 * 2)
        };
        let b = PATTERN_LEN as u64 / 16_384;
        let mut data = p[..16_384].to_vec();
        assert!(t.check(b, &data).is_ok());
        assert!(t.check(b - 1, &data).is_err());
        data[16_383] ^= 1;
        let e = wrong(t.check(b, &data));
        assert!(
            e.contains(&format!("offset {}", PATTERN_LEN + 16_383)),
            "{e}"
        );
    }
}
