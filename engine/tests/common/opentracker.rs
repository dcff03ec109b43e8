//! Debian's `opentracker` on loopback, for the tracker and magnet interop tests.
//!
//! `OpenTracker::start(&[info_hash_hex])` runs one opentracker on 127.0.0.1 with a free port
//! for both TCP (HTTP announce/scrape) and UDP (BEP 15), in Debian's whitelist mode: the
//! access list (hex info hashes, one a line) is written before start, chrooted with it (`-d`,
//! `-w` relative to that dir; opentracker drops to user `nobody`, so the dir is 0755 and the
//! file 0644). `allow()` adds a hash later: rewrite the file, SIGHUP (opentracker's
//! accesslist thread `sigwait`s SIGHUP and reloads), and wait until the tracker accepts it.
//! Dropping the guard terminates opentracker by its PID.
//!
//! Facts measured with Debian's opentracker (bookworm), see LAB-NOTES:
//! - peers are recorded by the *source address* of the announce; the `ip=` parameter is
//!   ignored; 127.0.0.0/8 is not treated specially (no filtering, no substitution);
//! - peers are keyed by ip:port: two announcers on one IP with two ports are two peers;
//! - the announcer's own address is in the peer list it gets back (first, usually);
//! - `event=stopped` removes the peer and answers an empty peer list;
//! - a hash not in the access list gets `failure reason` "Requested download is not
//!   authorized for use with this tracker."; a scrape of it answers `d5:filesdee`;
//! - `/stats` answers "Access Denied" unless the asker is blessed with `-A IP`
//!   (WANT_RESTRICT_STATS): this harness uses `/scrape` instead and blesses no one;
//! - the announce interval is ~30 min (~1,650-1,980 s, randomised), min interval half: a
//!   client learns of peers that announce after it only if it re-announces (aria2
//!   `--bt-tracker-interval`, libtorrent `force_reannounce`), or when they dial it.

use super::{on_path, require_tool, run, unhex20, Proc};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The seeders/leechers/downloaded counts a scrape reports for one torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Scrape {
    /// `complete`: peers that announced `left=0`
    pub seeders: u64,
    /// `incomplete`
    pub leechers: u64,
    /// `downloaded`: completed events seen
    pub downloaded: u64,
}

pub struct OpenTracker {
    proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
    /// the address the probe announces of `peers()` come from (never a real peer's)
    probe_ip: Ipv4Addr,
    hashes: Mutex<Vec<String>>,
}

const WHITELIST: &str = "whitelist.txt";

/// Fails the test (never skips) when `cmd` cannot be had: tries `apt-get install PACKAGE`
/// first when missing and we are root (the tests run as root here and in CI).
pub fn require_or_install(cmd: &str, debian_package: &str) -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _g = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = on_path(cmd) {
        return p;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("`{cmd}` is missing: apt-get install {debian_package}");
        let apt = |args: &[&str]| {
            let mut c = Command::new("apt-get");
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run("apt-get", c, Duration::from_secs(600)).status.success()
        };
        let install = [
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            debian_package,
        ];
        if !apt(&install) {
            apt(&["update", "-q"]);
            apt(&install);
        }
    }
    require_tool(cmd, debian_package)
}

fn check_hash(h: &str) -> String {
    let h = h.trim().to_ascii_lowercase();
    assert!(
        h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a hex v1 info hash: {h:?}"
    );
    h
}

fn hash_bytes(hex: &str) -> [u8; 20] {
    unhex20(&check_hash(hex))
}

/// `%XX` for every byte that is not unreserved (what a tracker query wants for binary).
pub fn url_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
fn free_tcp_udp_port() -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1");
}

impl OpenTracker {
    /// Starts opentracker on 127.0.0.1 (TCP and UDP, one free port) with `info_hashes`
    /// (hex) in its access list; returns once it answers on both and accepts those hashes.
    /// Fails the test when opentracker cannot be installed or does not come up.
    pub fn start(info_hashes: &[String]) -> OpenTracker {
        let exe = require_or_install("opentracker", "opentracker");
        let hashes: Vec<String> = info_hashes.iter().map(|h| check_hash(h)).collect();
        let probe_ip = super::unique_ip();
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("opentracker-")
                .tempdir()
                .unwrap();
            // opentracker chroots here and reads the list as `nobody`
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
            write_whitelist(dir.path(), &hashes);
            let port = free_tcp_udp_port();
            let mut cmd = Command::new(&exe);
            // -i applies to the -p/-P that follow it
            cmd.arg("-i")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(port.to_string())
                .arg("-P")
                .arg(port.to_string())
                .arg("-d")
                .arg(dir.path())
                .arg("-w")
                .arg(WHITELIST);
            let proc = Proc::spawn("opentracker", cmd);
            let mut t = OpenTracker {
                proc,
                dir,
                port,
                probe_ip,
                hashes: Mutex::new(hashes.clone()),
            };
            match t.wait_ready(Duration::from_secs(10)) {
                Ok(()) => {
                    eprintln!(
                        "opentracker pid {} on 127.0.0.1:{port} (tcp+udp), {} hashes allowed",
                        t.pid(),
                        hashes.len()
                    );
                    return t;
                }
                Err(e) => {
                    last_err = format!("{e}\n{}", t.proc.logs());
                    // drop: kills it; try another port (a race for the port is the usual cause)
                }
            }
        }
        panic!("opentracker did not come up in 5 attempts: {last_err}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.proc.is_running() {
                return Err("opentracker exited at start".into());
            }
            let tcp = http_get(self.port, "/scrape", self.probe_ip).is_ok();
            let udp = self.udp_connect_id().is_ok();
            let allowed = self
                .hashes
                .lock()
                .unwrap()
                .first()
                .cloned()
                .map(|h| self.is_allowed(&h))
                .unwrap_or(true);
            if tcp && udp && allowed {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready within {timeout:?}: tcp {tcp}, udp {udp}, whitelist read {allowed}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `http://127.0.0.1:PORT/announce`
    pub fn http_announce(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// `udp://127.0.0.1:PORT/announce`
    pub fn udp_announce(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.port)
    }

    /// What opentracker printed (for failure messages).
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Adds `info_hash` to the access list: rewrites the file, sends SIGHUP, and waits
    /// (bounded, SIGHUP again every 500 ms) until the tracker accepts announces of it.
    pub fn allow(&self, info_hash: &str) {
        let h = check_hash(info_hash);
        {
            let mut hs = self.hashes.lock().unwrap();
            if !hs.contains(&h) {
                hs.push(h.clone());
            }
            write_whitelist(self.dir.path(), &hs);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: kill(2) has no memory-safety preconditions; the PID is our running child.
            unsafe {
                libc::kill(self.pid() as i32, libc::SIGHUP);
            }
            thread::sleep(Duration::from_millis(100));
            if self.is_allowed(&h) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "opentracker did not accept {h} within 10 s of SIGHUP\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(400));
        }
    }

    /// Whether the tracker accepts announces of `info_hash`: the probe announces `started`
    /// from its own address (port 9, where nothing listens), then `stopped`. (A `stopped`
    /// alone is answered without the access-list check.)
    pub fn is_allowed(&self, info_hash: &str) -> bool {
        let ok = match self.announce_raw(info_hash, 9, "started", 1) {
            Ok(body) => !contains(&body, b"failure reason"),
            Err(_) => false,
        };
        if ok {
            let _ = self.announce_raw(info_hash, 9, "stopped", 1);
        }
        ok
    }

    fn announce_raw(
        &self,
        info_hash: &str,
        port: u16,
        event: &str,
        left: u64,
    ) -> Result<Vec<u8>, String> {
        let ih = hash_bytes(info_hash);
        let peer_id = *b"-HP0001-harnessprobe";
        let path = format!(
            "/announce?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}\
             &compact=1&numwant=200&event={event}",
            url_encode(&ih),
            url_encode(&peer_id)
        );
        http_get(self.port, &path, self.probe_ip)
    }

    /// The peers the tracker knows for `info_hash` right now (compact IPv4), as it answers
    /// an announce: the probe announces `started` then `stopped` from its own 127.x address
    /// on port 9 (discard: nothing listens there), and is left out of the answer.
    pub fn peers(&self, info_hash: &str) -> Vec<SocketAddrV4> {
        let body = self
            .announce_raw(info_hash, 9, "started", 1)
            .unwrap_or_else(|e| panic!("announce to opentracker: {e}\n{}", self.logs()));
        let _ = self.announce_raw(info_hash, 9, "stopped", 1);
        let v = bdecode(&body)
            .unwrap_or_else(|| panic!("opentracker announce answer is not bencode: {body:?}"));
        if let Some(f) = v.get("failure reason") {
            panic!("opentracker refused the probe announce: {f:?}");
        }
        let mut out = Vec::new();
        if let Some(Bval::Bytes(p)) = v.get("peers") {
            for c in p.chunks_exact(6) {
                let a = SocketAddrV4::new(
                    Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                    u16::from_be_bytes([c[4], c[5]]),
                );
                if *a.ip() != self.probe_ip {
                    out.push(a);
                }
            }
        }
        out
    }

    /// Scrape over HTTP: `None` when the tracker has no entry for the torrent (never
    /// announced, or every peer gone and the entry dropped).
    pub fn scrape(&self, info_hash: &str) -> Option<Scrape> {
        let ih = hash_bytes(info_hash);
        let body = http_get(
            self.port,
            &format!("/scrape?info_hash={}", url_encode(&ih)),
            self.probe_ip,
        )
        .unwrap_or_else(|e| panic!("scrape opentracker: {e}\n{}", self.logs()));
        let v = bdecode(&body)
            .unwrap_or_else(|| panic!("opentracker scrape answer is not bencode: {body:?}"));
        let files = match v.get("files") {
            Some(Bval::Dict(d)) => d,
            _ => panic!("opentracker scrape answer has no `files`: {v:?}"),
        };
        let t = files.get(&ih[..])?;
        let n = |k: &str| match t.get(k) {
            Some(Bval::Int(i)) => *i as u64,
            _ => 0,
        };
        Some(Scrape {
            seeders: n("complete"),
            leechers: n("incomplete"),
            downloaded: n("downloaded"),
        })
    }

    /// Scrape as (seeders, leechers, downloaded), no entry = all zero.
    pub fn counts(&self, info_hash: &str) -> (u64, u64, u64) {
        let s = self.scrape(info_hash).unwrap_or_default();
        (s.seeders, s.leechers, s.downloaded)
    }

    /// Polls the scrape (every 200 ms) until `pred` holds; panics after `timeout` with the
    /// last scrape seen.
    pub fn wait_scrape(
        &self,
        info_hash: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(Scrape) -> bool,
    ) -> Scrape {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.scrape(info_hash).unwrap_or_default();
            if pred(s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "opentracker scrape of {info_hash}: not {what} within {timeout:?} (last {s:?})"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `peers()` (every 300 ms) until one satisfies `pred`; returns it.
    pub fn wait_peer(
        &self,
        info_hash: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&SocketAddrV4) -> bool,
    ) -> SocketAddrV4 {
        let deadline = Instant::now() + timeout;
        loop {
            let ps = self.peers(info_hash);
            if let Some(p) = ps.iter().find(|p| pred(p)) {
                return *p;
            }
            assert!(
                Instant::now() < deadline,
                "opentracker never listed {what} for {info_hash} within {timeout:?} (peers {ps:?})"
            );
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// BEP 15 connect over UDP: returns the connection id (proves the UDP side answers).
    pub fn udp_connect_id(&self) -> Result<u64, String> {
        let s = UdpSocket::bind((self.probe_ip, 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let tx: u32 = 0x5eed_0001;
        let mut req = Vec::with_capacity(16);
        req.extend_from_slice(&0x0417_2710_1980u64.to_be_bytes());
        req.extend_from_slice(&0u32.to_be_bytes());
        req.extend_from_slice(&tx.to_be_bytes());
        s.send_to(&req, ("127.0.0.1", self.port))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if n < 16 || buf[..4] != [0, 0, 0, 0] || buf[4..8] != tx.to_be_bytes() {
            return Err(format!("bad UDP connect answer {:?}", &buf[..n]));
        }
        Ok(u64::from_be_bytes(buf[8..16].try_into().unwrap()))
    }
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        // SIGTERM ends opentracker at once; the guard SIGKILLs its group if not
        self.proc.terminate(Duration::from_secs(3));
    }
}

fn write_whitelist(dir: &std::path::Path, hashes: &[String]) {
    let mut text = String::new();
    for h in hashes {
        text.push_str(h);
        text.push('\n');
    }
    let tmp = dir.join(".whitelist.tmp");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, dir.join(WHITELIST)).unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One HTTP/1.0 GET to opentracker on 127.0.0.1:`port` from `src`; returns the body of a
/// 200 answer (bounded: 3 s to connect, 5 s to read).
fn http_get(port: u16, path: &str, src: Ipv4Addr) -> Result<Vec<u8>, String> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::from((src, 0)).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    sock.connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(),
        Duration::from_secs(3),
    )
    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {resp:?}"))?;
    let head = String::from_utf8_lossy(&resp[..at]).to_string();
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("HTTP answer {head:?}"));
    }
    Ok(resp[at + 4..].to_vec())
}

// ---------------------------------------------------------------------------------------------
// A minimal bencode decoder (tracker answers, BEP 10 extended handshakes)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
pub enum Bval {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Bval>),
    Dict(BTreeMap<Vec<u8>, Bval>),
}

/// Strings print as text when they are printable, else as hex (`0x...`, first 64 bytes).
impl std::fmt::Debug for Bval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn bytes(b: &[u8]) -> String {
            match std::str::from_utf8(b) {
                Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
                _ => {
                    let hex: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
                    let more = if b.len() > 64 { "..." } else { "" };
                    format!("0x{hex}{more} ({} bytes)", b.len())
                }
            }
        }
        match self {
            Bval::Int(i) => write!(f, "{i}"),
            Bval::Bytes(b) => write!(f, "{}", bytes(b)),
            Bval::List(l) => f.debug_list().entries(l).finish(),
            Bval::Dict(d) => {
                let mut m = f.debug_map();
                for (k, v) in d {
                    m.entry(&format_args!("{}", bytes(k)), v);
                }
                m.finish()
            }
        }
    }
}

impl Bval {
    pub fn get(&self, key: &str) -> Option<&Bval> {
        match self {
            Bval::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }
    pub fn int(&self) -> Option<i64> {
        match self {
            Bval::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Decodes one complete bencoded value (trailing bytes are an error).
pub fn bdecode(b: &[u8]) -> Option<Bval> {
    let (v, n) = bdecode_prefix(b)?;
    (n == b.len()).then_some(v)
}

/// Decodes the bencoded value at the start of `b`; returns it and its length (BEP 9 data
/// messages carry raw bytes after the dictionary).
pub fn bdecode_prefix(b: &[u8]) -> Option<(Bval, usize)> {
    fn go(b: &[u8], i: usize, depth: u32) -> Option<(Bval, usize)> {
        if depth > 64 {
            return None;
        }
        match *b.get(i)? {
            b'i' => {
                let end = i + 1 + b[i + 1..].iter().position(|&c| c == b'e')?;
                let n: i64 = std::str::from_utf8(&b[i + 1..end]).ok()?.parse().ok()?;
                Some((Bval::Int(n), end + 1))
            }
            b'l' => {
                let mut j = i + 1;
                let mut v = Vec::new();
                while *b.get(j)? != b'e' {
                    let (x, k) = go(b, j, depth + 1)?;
                    v.push(x);
                    j = k;
                }
                Some((Bval::List(v), j + 1))
            }
            b'd' => {
                let mut j = i + 1;
                let mut m = BTreeMap::new();
                while *b.get(j)? != b'e' {
                    let (k, j2) = go(b, j, depth + 1)?;
                    let Bval::Bytes(k) = k else { return None };
                    let (x, j3) = go(b, j2, depth + 1)?;
                    m.insert(k, x);
                    j = j3;
                }
                Some((Bval::Dict(m), j + 1))
            }
            b'0'..=b'9' => {
                let colon = i + b[i..].iter().position(|&c| c == b':')?;
                let n: usize = std::str::from_utf8(&b[i..colon]).ok()?.parse().ok()?;
                let s = colon + 1;
                let bytes = b.get(s..s.checked_add(n)?)?.to_vec();
                Some((Bval::Bytes(bytes), s + n))
            }
            _ => None,
        }
    }
    go(b, 0, 0)
}
