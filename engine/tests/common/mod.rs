//! Shared helpers of the interop tests: real-client drivers, our binary, deterministic data.
//!
//! Rules every helper keeps (see TEAM.md): loopback only (127.0.0.0/8); every wait bounded;
//! every process started here is killed by PID (its whole process group: the python drivers
//! start rtorrent/qbittorrent-nox children) when its guard drops; temp dirs via `tempfile`.
//! A test that needs a real client fails with a clear message when the client is missing.
#![allow(dead_code)] // each test binary uses a subset of these helpers

pub mod opentracker;

use opentracker::{bdecode_prefix, Bval};
use sha1::{Digest, Sha1};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Debian's python: python3-libtorrent is built for it, not for another python on PATH.
pub const PYTHON: &str = "/usr/bin/python3";

/// Our binary, built by cargo for the integration tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uring-bt"))
}

/// `engine/tests/clients`: the python drivers of the real clients.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

pub fn client_script(name: &str) -> PathBuf {
    let p = clients_dir().join(name);
    assert!(p.is_file(), "driver script {} is missing", p.display());
    p
}

/// `PYTHON engine/tests/clients/SCRIPT [SUB]`: the start of a driver's command line.
pub fn driver_cmd(script: &str, sub: Option<&str>) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script(script)).args(sub);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Real clients: presence checks (fail, never skip)
// ---------------------------------------------------------------------------------------------

fn on_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Panics (fails the test) with an install hint when `cmd` is not on PATH.
pub fn require_tool(cmd: &str, debian_package: &str) -> PathBuf {
    match on_path(cmd) {
        Some(p) => p,
        None => panic!(
            "this interop test needs `{cmd}`, which is not installed: \
             `apt-get install {debian_package}` (or run scripts/test, which installs it)"
        ),
    }
}

/// Panics unless Debian's /usr/bin/python3 can import libtorrent.
pub fn require_libtorrent() {
    let out = Command::new(PYTHON)
        .args(["-c", "import libtorrent; print(libtorrent.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this interop test needs python3-libtorrent for {PYTHON}: `apt-get install \
             python3-libtorrent` ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this interop test needs {PYTHON} with python3-libtorrent: {e}"),
    }
}

/// The real BitTorrent clients the seeding tests drive as leechers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Libtorrent,
    Rtorrent,
    Qbittorrent,
}

impl Client {
    pub fn require(self) {
        require_libtorrent(); // the drivers are python scripts run by Debian's python
        match self {
            Client::Libtorrent => {}
            Client::Rtorrent => {
                require_tool("rtorrent", "rtorrent");
            }
            Client::Qbittorrent => {
                require_tool("qbittorrent-nox", "qbittorrent-nox");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loopback addresses and serialization
// ---------------------------------------------------------------------------------------------

/// A fresh loopback address for one peer of one test: `127.<pid-derived>.<n/250>.<n%250+2>`.
/// Per process unique, and unlikely to clash with another test process running at the same
/// time (real clients key peers by IP: each leecher needs its own address).
pub fn unique_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(n < 250 * 250, "out of loopback addresses");
    let a = 100 + (std::process::id() % 150) as u8;
    Ipv4Addr::new(127, a, (n / 250) as u8, (n % 250 + 2) as u8)
}

/// Tests that move a lot of data or start heavy clients take this lock, so that they do not
/// fight over the two cores (their timeouts stay meaningful). Poisoning is ignored: a failed
/// test must not fail the next one.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints how long a test took when dropped (visible with `--nocapture`, and in failures).
pub struct Timed {
    name: &'static str,
    start: Instant,
}

impl Timed {
    pub fn new(name: &'static str) -> Timed {
        eprintln!("[{name}] start");
        Timed {
            name,
            start: Instant::now(),
        }
    }
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        eprintln!(
            "[{}] took {:.1} s",
            self.name,
            self.start.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process in its own process group, with stdout lines and stderr captured.
/// Dropping it kills the whole group (SIGKILL, by the group id = the child's PID) and reaps it.
pub struct Proc {
    name: String,
    child: Child,
    stdout_log: Arc<Mutex<Vec<String>>>,
    stderr_log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with piped stdout/stderr in a new process group.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout_log = Arc::new(Mutex::new(Vec::new()));
        let stderr_log = Arc::new(Mutex::new(String::new()));
        let so = Arc::clone(&stdout_log);
        let r1 = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                so.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let se = Arc::clone(&stderr_log);
        let r2 = thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let mut log = se.lock().unwrap_or_else(|e| e.into_inner());
                        // keep the tail only: a chatty client must not eat the memory
                        if log.len() > 256 * 1024 {
                            let cut = log.len() - 128 * 1024;
                            let cut = (cut..log.len())
                                .find(|i| log.is_char_boundary(*i))
                                .unwrap_or(log.len());
                            log.replace_range(..cut, "[...]\n");
                        }
                        log.push_str(&String::from_utf8_lossy(&buf));
                    }
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            stdout_log,
            stderr_log,
            readers: vec![r1, r2],
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything captured so far, for failure messages.
    pub fn logs(&self) -> String {
        let out = self
            .stdout_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n");
        let err = self
            .stderr_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tail = |s: &str| {
            let mut start = s.len().saturating_sub(6000);
            while !s.is_char_boundary(start) {
                start += 1;
            }
            s[start..].to_string()
        };
        format!(
            "--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            tail(&out),
            self.name,
            tail(&err)
        )
    }

    /// Everything the process wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (bounded) for the first stdout line (ever printed) that starts with `prefix`;
    /// returns the rest of the line, trimmed.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .stdout_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()));
            if let Some(rest) = found {
                return rest;
            }
            if let Some(st) = self.try_status() {
                // the reader may still hold the last lines: one more look after joining it
                self.reap_group();
                let found = self
                    .stdout_log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_string()));
                if let Some(rest) = found {
                    return rest;
                }
                panic!(
                    "{} exited ({st}) without printing `{prefix}`\n{}",
                    self.name,
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not print `{prefix}` within {:?}\n{}",
                    self.name,
                    timeout,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) for the stdout line `PREFIX IP:PORT ...` (`listening:`, `seeding:`) and
    /// returns the address, which must be a loopback one with a port.
    pub fn wait_addr(&mut self, prefix: &str, timeout: Duration) -> SocketAddr {
        let line = self.wait_line(prefix, timeout);
        let s = line.split_whitespace().next().unwrap_or("");
        let addr: SocketAddr = s
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad `{prefix} {s}` ({e})\n{}", self.name, self.logs()));
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "{}: `{prefix} {addr}` is not a loopback address with a port",
            self.name
        );
        addr
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits (bounded) for the process to exit; on timeout kills its group and panics.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                self.reap_group();
                return st;
            }
            if Instant::now() >= deadline {
                self.kill_group();
                panic!(
                    "{} did not exit within {:?} (killed)\n{}",
                    self.name,
                    timeout,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for a zero exit status; panics with the logs otherwise.
    pub fn expect_success(&mut self, timeout: Duration) {
        let st = self.wait_exit(timeout);
        assert!(st.success(), "{} failed ({st})\n{}", self.name, self.logs());
    }

    /// SIGTERM, then (bounded) wait; SIGKILL to the group if it does not go.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_status() {
            return Some(st);
        }
        signal(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.try_status() {
                self.reap_group();
                return Some(st);
            }
            thread::sleep(Duration::from_millis(25));
        }
        self.kill_group();
        None
    }

    /// SIGTERM: the process must exit 0 within `timeout` (else it is killed and the test fails,
    /// with its logs).
    pub fn stop_cleanly(&mut self, timeout: Duration) {
        match self.terminate(timeout) {
            Some(st) => assert!(
                st.success(),
                "{} exited {st} on SIGTERM\n{}",
                self.name,
                self.logs()
            ),
            None => panic!(
                "{} did not stop within {timeout:?} of SIGTERM\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    fn kill_group(&mut self) {
        // The group id is the child's PID (process_group(0)): this reaches exactly the
        // processes this guard started, including a driver's rtorrent/qbittorrent child.
        signal(-(self.child.id() as i32), libc::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.join_readers();
    }

    /// After the leader exited: kill what is left of its group (a driver's client that
    /// outlived it would hold our pipes open), then collect the output.
    fn reap_group(&mut self) {
        if !self.readers.is_empty() {
            signal(-(self.child.id() as i32), libc::SIGKILL);
        }
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let running = self.try_status().is_none();
        if running {
            // a graceful chance first: the drivers shut their client down on SIGTERM
            signal(self.child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.try_status().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(25));
            }
        }
        signal(-(self.child.id() as i32), libc::SIGKILL);
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // reader threads end when the pipes close; do not block a panicking test on them
        if !thread::panicking() {
            self.join_readers();
        }
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a process (or, negative,
    // a process group) that this module started and has not reaped yet, or ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs a command to completion (bounded), capturing its output.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(name: &str, cmd: Command, timeout: Duration) -> Output {
    let mut p = Proc::spawn(name, cmd);
    let status = p.wait_exit(timeout);
    let stdout = p.stdout_lines().join("\n");
    let stderr = p
        .stderr_log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(name: &str, cmd: Command, timeout: Duration) -> String {
    let out = run(name, cmd, timeout);
    assert!(
        out.status.success(),
        "{name} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// The value of the first `key: value` line of `text`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny seeded generator; the same seed gives the same bytes everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }
}

/// Writes `len` seeded pseudo-random bytes to `path` (parents created).
pub fn write_random_file(path: &Path, len: u64, seed: u64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// A generated tree: relative paths (from the tree's root) and lengths.
#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub files: BTreeMap<PathBuf, u64>,
}

impl Tree {
    pub fn total(&self) -> u64 {
        self.files.values().sum()
    }
}

/// Generates `nfiles` files under `root` in nested directories (depth 0..=3), with sizes
/// from 0 to `max_len`: about 1 in 16 empty, some of 1 byte, some at and around 16 KiB
/// (block size) and powers of two, the rest uniform. Deterministic for a given seed.
pub fn gen_tree(root: &Path, nfiles: usize, max_len: u64, seed: u64) -> Tree {
    let mut rng = Rng::new(seed);
    let mut files = BTreeMap::new();
    fs::create_dir_all(root).unwrap();
    for i in 0..nfiles {
        let len = match i % 16 {
            0 => 0,
            1 => 1,
            2 => 16 * 1024,
            3 => 16 * 1024 + 1,
            4 => (16 * 1024 - 1).min(max_len),
            5 => 1 << rng.below(16),
            _ => rng.below(max_len + 1),
        }
        .min(max_len);
        let depth = rng.below(4);
        let mut rel = PathBuf::new();
        for d in 0..depth {
            rel.push(format!("d{}_{}", d, rng.below(6)));
        }
        rel.push(format!("f{i:05}_{}.bin", rng.below(1000)));
        write_random_file(
            &root.join(&rel),
            len,
            seed.wrapping_mul(1_000_003) + i as u64,
        );
        files.insert(rel, len);
    }
    Tree {
        root: root.to_path_buf(),
        files,
    }
}

/// All regular files under `root`, relative paths -> length.
pub fn list_tree(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, e.metadata().unwrap().len());
            }
        }
    }
    out
}

/// Byte-by-byte comparison of two files; panics naming the first differing offset.
pub fn assert_same_file(a: &Path, b: &Path) {
    let fa = File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let fb = File::open(b).unwrap_or_else(|e| panic!("{} is missing: {e}", b.display()));
    let (la, lb) = (fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    assert_eq!(
        la,
        lb,
        "{} has {lb} bytes, {} has {la}",
        b.display(),
        a.display()
    );
    let mut ra = BufReader::with_capacity(1 << 20, fa);
    let mut rb = BufReader::with_capacity(1 << 20, fb);
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut ra, &mut ba);
        let m = read_full(&mut rb, &mut bb);
        assert_eq!(n, m, "{}: short read at {off}", b.display());
        if n == 0 {
            return;
        }
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{} differs from {} at byte {}",
                b.display(),
                a.display(),
                off + i as u64
            );
        }
        off += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

/// `dst` holds exactly the files of `src` (same relative paths), with the same bytes.
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let a = list_tree(src);
    let b = list_tree(dst);
    let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} differs from {}: {} missing (first: {:?}), {} extra (first: {:?})",
        dst.display(),
        src.display(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for rel in a.keys() {
        assert_same_file(&src.join(rel), &dst.join(rel));
    }
}

/// Copies a file or a directory tree.
pub fn copy_tree(src: &Path, dst: &Path) {
    if src.is_file() {
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p).unwrap();
        }
        fs::copy(src, dst).unwrap();
        return;
    }
    for (rel, _) in list_tree(src) {
        let to = dst.join(&rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(src.join(&rel), to).unwrap();
    }
    // empty directories do not matter to a torrent
}

/// Flips one byte of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xA5;
    f.write_all_at(&b, offset).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Torrents
// ---------------------------------------------------------------------------------------------

/// libtorrent creates a v1 torrent of `path` into `out`; returns libtorrent's info hash.
pub fn lt_create(path: &Path, out: &Path, piece_length: u32) -> String {
    require_libtorrent();
    let mut cmd = driver_cmd("lt_create.py", None);
    cmd.arg(path)
        .arg("-o")
        .arg(out)
        .arg("--piece-length")
        .arg(piece_length.to_string());
    let stdout = run_ok("lt_create.py", cmd, Duration::from_secs(300));
    let h = field(&stdout, "info_hash").expect("lt_create.py prints info_hash");
    h.to_string()
}

/// libtorrent's view of a torrent (and, with `check`, of its data in `check`/<name>).
pub fn lt_info(torrent: &Path, check: Option<&Path>) -> serde_json::Value {
    require_libtorrent();
    let mut cmd = driver_cmd("lt_info.py", None);
    cmd.arg(torrent);
    if let Some(dir) = check {
        cmd.arg("--check").arg(dir);
    }
    let stdout = run_ok("lt_info.py", cmd, Duration::from_secs(300));
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("lt_info.py printed no JSON ({e}): {stdout}"))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The 20 bytes of a hex v1 info hash.
pub fn unhex20(h: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// The exact bytes of a torrent's top-level `info` value (read with the harness's own
/// bencode decoder).
pub fn info_bytes(torrent: &[u8]) -> &[u8] {
    let mut i = 1;
    while torrent.get(i) != Some(&b'e') {
        let (k, n) = bdecode_prefix(&torrent[i..]).expect("torrent key");
        i += n;
        let (_, m) = bdecode_prefix(&torrent[i..]).expect("torrent value");
        if k == Bval::Bytes(b"info".to_vec()) {
            return &torrent[i..i + m];
        }
        i += m;
    }
    panic!("torrent has no info dictionary");
}

/// SHA-1 of the exact bytes of the top-level `info` value, hex.
pub fn info_hash_of(torrent: &[u8]) -> String {
    let h: [u8; 20] = Sha1::digest(info_bytes(torrent)).into();
    hex(&h)
}

fn bstr(s: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", s.len()).into_bytes();
    v.extend_from_slice(s);
    v
}

/// Writes a copy of the torrent `src` with top-level `announce` = urls[0] and `announce-list`
/// = one tier per URL, spliced in front of its keys: the info dict's bytes (and so the info
/// hash) do not change. `src` must have no tracker yet (libtorrent's torrents start with
/// `created by`, which sorts after `announce-list`).
pub fn with_trackers(src: &Path, dst: &Path, urls: &[String]) {
    assert!(!urls.is_empty());
    let data = fs::read(src).unwrap();
    assert_eq!(
        data.first(),
        Some(&b'd'),
        "{} is not a dictionary",
        src.display()
    );
    let (first_key, _) = bdecode_prefix(&data[1..]).expect("torrent's first key");
    let Bval::Bytes(k) = first_key else {
        panic!("torrent key is not a string")
    };
    assert!(
        k.as_slice() > b"announce-list".as_slice(),
        "{} already starts with key {:?}",
        src.display(),
        String::from_utf8_lossy(&k)
    );
    let mut out = b"d".to_vec();
    out.extend(bstr(b"announce"));
    out.extend(bstr(urls[0].as_bytes()));
    out.extend(bstr(b"announce-list"));
    out.push(b'l');
    for u in urls {
        out.push(b'l');
        out.extend(bstr(u.as_bytes()));
        out.push(b'e');
    }
    out.push(b'e');
    out.extend_from_slice(&data[1..]);
    fs::write(dst, &out).unwrap();
    assert_eq!(info_hash_of(&out), info_hash_of(&data));
}

// ---------------------------------------------------------------------------------------------
// Seeders
// ---------------------------------------------------------------------------------------------

/// A running seeder and the address it listens on.
pub struct Seeder {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// `PYTHON SCRIPT [SUB] TORRENTS... --data DATA --listen IP:0 --timeout 1800`: the command line
/// of a seeder driver (engine/tests/clients), which serves whoever connects until it is stopped.
pub fn seeder_cmd(
    script: &str,
    sub: Option<&str>,
    torrents: &[&Path],
    data: &Path,
    ip: Ipv4Addr,
) -> Command {
    let mut cmd = driver_cmd(script, sub);
    cmd.args(torrents)
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("{ip}:0"))
        .arg("--timeout")
        .arg("1800");
    cmd
}

/// `uring-bt seed <torrents> --data <data> --listen 127.0.0.1:0`, optionally under an
/// RLIMIT_NOFILE cap (soft and hard) set in the child before exec.
pub fn spawn_our_seeder(torrents: &[&Path], data: &Path, nofile: Option<u64>) -> Seeder {
    spawn_our_seeder_with(torrents, data, nofile, &[])
}

/// [`spawn_our_seeder`] with more arguments for `uring-bt seed`.
pub fn spawn_our_seeder_with(
    torrents: &[&Path],
    data: &Path,
    nofile: Option<u64>,
    extra: &[&str],
) -> Seeder {
    let mut cmd = Command::new(bin());
    cmd.arg("seed");
    for t in torrents {
        cmd.arg(t);
    }
    cmd.arg("--data")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        // Tests leave nothing behind in the user's state directory.
        .arg("--no-resume")
        .args(extra);
    cmd.env("RUST_BACKTRACE", "1");
    // Each peer's disconnect and its reason end up in the logs a failing test prints.
    cmd.env("RUST_LOG", "uring_bt=debug");
    if let Some(cap) = nofile {
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setrlimit(2), which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: cap as libc::rlim_t,
                    rlim_max: cap as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut proc = Proc::spawn("uring-bt seed", cmd);
    let addr = proc.wait_addr("listening:", Duration::from_secs(120));
    Seeder { proc, addr }
}

/// The libtorrent reference seeder (engine/tests/clients/lt_seed.py) on `ip`.
pub fn spawn_lt_seeder(torrents: &[&Path], data: &Path, ip: Ipv4Addr) -> Seeder {
    require_libtorrent();
    let cmd = seeder_cmd("lt_seed.py", None, torrents, data, ip);
    let mut proc = Proc::spawn("lt_seed.py", cmd);
    let addr = proc.wait_addr("listening:", Duration::from_secs(120));
    Seeder { proc, addr }
}

/// libtorrent with ut_metadata (BEP 9; engine/tests/clients/lt_seed_meta.py) on `ip`,
/// announcing to `trackers`; returns it and the magnet link it prints (`xt`, `dn`, `tr=` its
/// trackers, `x.pe=` its listening address).
pub fn spawn_lt_meta_seeder(
    torrent: &Path,
    data: &Path,
    ip: Ipv4Addr,
    trackers: &[String],
) -> (Seeder, String) {
    require_libtorrent();
    let mut cmd = seeder_cmd("lt_seed_meta.py", None, &[torrent], data, ip);
    for t in trackers {
        cmd.arg("--tracker").arg(t);
    }
    let mut proc = Proc::spawn(&format!("lt_seed_meta.py @{ip}"), cmd);
    let addr = proc.wait_addr("listening:", Duration::from_secs(120));
    let magnet = proc.wait_line("magnet:", Duration::from_secs(5));
    (Seeder { proc, addr }, magnet)
}

/// Open descriptors of a process right now (None once it is gone).
pub fn count_fds(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Samples /proc/<pid>/fd every `every` in a thread; `stop()` returns (max, samples).
pub struct FdSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl FdSampler {
    pub fn start(pid: u32, every: Duration) -> FdSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, m, n) = (Arc::clone(&stop), Arc::clone(&max), Arc::clone(&samples));
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match count_fds(pid) {
                    Some(c) => {
                        m.fetch_max(c, Ordering::Relaxed);
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
                thread::sleep(every);
            }
        });
        FdSampler {
            stop,
            max,
            samples,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.max.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Leechers
// ---------------------------------------------------------------------------------------------

/// `PYTHON SCRIPT [SUB] TARGET --save SAVE --bind BIND --timeout SECS`, and with `workdir`
/// `--workdir SAVE-work-BIND` (the client's profile/session dir: inside the test's temp dir, so
/// that it goes away with the test even if the driver is killed): the command line of a leecher
/// driver (engine/tests/clients). Creates `save`.
pub fn leecher_cmd(
    script: &str,
    sub: Option<&str>,
    target: impl AsRef<OsStr>,
    save: &Path,
    bind: Ipv4Addr,
    timeout: Duration,
    workdir: bool,
) -> Command {
    fs::create_dir_all(save).unwrap();
    let mut cmd = driver_cmd(script, sub);
    cmd.arg(target)
        .arg("--save")
        .arg(save)
        .arg("--bind")
        .arg(bind.to_string())
        .arg("--timeout")
        .arg(timeout.as_secs().to_string());
    if workdir {
        let mut work = save.as_os_str().to_owned();
        work.push(format!("-work-{bind}"));
        cmd.arg("--workdir").arg(work);
    }
    cmd
}

/// Starts a real-client leecher of `torrent` into `save` from `peer`, bound to `bind`.
/// The driver exits 0 once the client reports the torrent complete (every piece checked).
pub fn spawn_leecher(
    client: Client,
    torrent: &Path,
    save: &Path,
    peer: SocketAddr,
    bind: Ipv4Addr,
    timeout: Duration,
) -> Proc {
    client.require();
    assert!(peer.ip().is_loopback() && bind.is_loopback());
    let (script, sub, name) = match client {
        Client::Libtorrent => ("lt_leech.py", None, "libtorrent leecher"),
        Client::Rtorrent => ("rtorrent_client.py", Some("leech"), "rtorrent leecher"),
        Client::Qbittorrent => ("qbt_client.py", Some("leech"), "qbittorrent-nox leecher"),
    };
    // a profile/session/socket dir for the clients other than the driver's own libtorrent
    let workdir = client != Client::Libtorrent;
    let mut cmd = leecher_cmd(script, sub, torrent, save, bind, timeout, workdir);
    cmd.arg("--peer").arg(peer.to_string());
    Proc::spawn(&format!("{name} @{bind}"), cmd)
}

/// Waits for a leecher started with `timeout` (plus slack for start-up and shutdown).
pub fn wait_leecher(p: &mut Proc, timeout: Duration) {
    p.expect_success(timeout + Duration::from_secs(60));
    let result = p
        .stdout_lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with("result:"));
    eprintln!(
        "{}: {}",
        p.name(),
        result.as_deref().unwrap_or("(no result line)")
    );
}

/// A payload for the interop tests: content at `data/<name>`, a torrent made by libtorrent (v1).
pub struct Case {
    pub dir: tempfile::TempDir,
    /// the seeder's data dir: content at `data/<name>`
    pub data: PathBuf,
    pub name: String,
    pub torrent: PathBuf,
    pub info_hash: String,
}

impl Case {
    pub fn content(&self) -> PathBuf {
        self.data.join(&self.name)
    }
    pub fn save_dir(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("dl-{label}"))
    }
    pub fn assert_downloaded(&self, save: &Path) {
        let got = save.join(&self.name);
        if self.content().is_dir() {
            assert_same_tree(&self.content(), &got);
        } else {
            assert_same_file(&self.content(), &got);
        }
    }
    /// A copy of the (tracker-less) torrent that names `urls` as its trackers, at
    /// `tracked-<label>.torrent`: the same info hash, libtorrent's.
    pub fn tracked(&self, urls: &[String], label: &str) -> PathBuf {
        let out = self.dir.path().join(format!("tracked-{label}.torrent"));
        with_trackers(&self.torrent, &out, urls);
        assert_eq!(info_hash_of(&fs::read(&out).unwrap()), self.info_hash);
        out
    }
}

/// A single file of `mib` MiB (+ 777 bytes: the last piece is short), 256 KiB pieces.
pub fn single_case(mib: u64, seed: u64) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let name = format!("file-{mib}mib.bin");
    write_random_file(&data.join(&name), mib * MIB + 777, seed);
    let torrent = dir.path().join("single.torrent");
    let info_hash = lt_create(&data.join(&name), &torrent, 256 * 1024);
    Case {
        dir,
        data,
        name,
        torrent,
        info_hash,
    }
}

/// `n` files of 0..=48 KiB in nested directories (empty ones included), 64 KiB pieces.
pub fn tree_case(n: usize, seed: u64) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let name = "tree".to_string();
    let t = gen_tree(&data.join(&name), n, 48 * 1024, seed);
    assert_eq!(t.files.len(), n);
    let torrent = dir.path().join("tree.torrent");
    let info_hash = lt_create(&data.join(&name), &torrent, 64 * 1024);
    Case {
        dir,
        data,
        name,
        torrent,
        info_hash,
    }
}

/// A mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Stops our seeder with SIGTERM: it must exit 0 (the CLI contract) and its `stopped:` line
/// must count 0 peers dropped for misbehaving (real clients never are). Returns its stderr.
pub fn stop_our_seeder(mut s: Seeder) -> String {
    s.proc.stop_cleanly(Duration::from_secs(20));
    let err = s.proc.stderr_text();
    let Some(stopped) = err.lines().rev().find(|l| l.starts_with("stopped:")) else {
        panic!(
            "uring-bt seed printed no `stopped:` line\n{}",
            s.proc.logs()
        );
    };
    // "stopped: 16.0 MiB served to 2 peers; 0 dropped for misbehaving; ..."
    let label = " dropped for misbehaving";
    let dropped: u64 = stopped
        .find(label)
        .and_then(|at| stopped[..at].split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of peers dropped for misbehaving in {stopped:?}"));
    assert_eq!(
        dropped,
        0,
        "uring-bt seed dropped real clients as misbehaving: {stopped}\n{}",
        s.proc.logs()
    );
    err
}
