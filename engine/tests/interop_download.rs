//! Interop of `uring-bt download` with real seeders on loopback: libtorrent
//! (python3-libtorrent), rtorrent, qbittorrent-nox, aria2 and transmission serve, and what we
//! write is compared with the source byte by byte.
//!
//! - `download_*_by_peer`: libtorrent, rtorrent and qBittorrent seed a 64 MiB file and a tree
//!   of 1,000 files; we are given the seeder with `--peer`;
//! - `download_*_via_tracker`: aria2 and transmission only accept incoming connections and
//!   announce to the torrent's tracker (Debian's opentracker, `common::opentracker`): we know
//!   only the torrent, get them from the tracker and dial them; the same with a libtorrent
//!   seeder (`download_via_opentracker_tracker_only_torrent`);
//! - a magnet link whose `x.pe=` is a libtorrent seeder that serves the metadata (BEP 9);
//! - three real seeders at once, each rate-limited, each completing pieces for us;
//! - SIGKILL halfway, then a restart that finds the verified pieces on disk and fetches only
//!   the rest;
//! - a scripted seeder that corrupts every 3rd piece (hash failures, a ban, no redial) beside an
//!   honest libtorrent seeder;
//! - `--seed`: after completing we serve a libtorrent leecher, and the tracker counted our
//!   `completed` announce; SIGTERM ends us with exit 0.
//! - `reference_*`: the harness proven without our downloader (transmission and aria2 seeders
//!   serve real leechers through the tracker; every seeder driver honours `--rate`). If one of
//!   these fails, the harness or a client is broken, not `uring-bt download`.
//!
//! The contract under test (stdout of `uring-bt download TARGET -o DIR ...`, one line each):
//! `listening: IP:PORT`, `info_hash: HEX40`, `progress: have= of= bytes= downloaded= rate=
//! peers=` every `--status-interval`, `complete: pieces= bytes= secs= downloaded= resumed=
//! partial= wasted=`, then one `peer: addr= client= downloaded= pieces= hashfails= banned=` per peer
//! that connected, and with `--seed` `seeding: IP:PORT`; exit 0 complete and verified, 1
//! failure, 2 usage. The content lands at DIR/<name>, as `seed --data DIR` reads it.
//!
//! Every peer has its own 127.x.y.z (`unique_ip`: real clients key peers by IP). Our downloader
//! gets `XDG_STATE_HOME` inside the test's temp dir (nothing lands in the user's state dir).
//! Heavy tests take `heavy_lock()`. A missing client fails its test, never skips it.

mod common;

use common::opentracker::{bdecode, Bval, OpenTracker};
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use uring_bt_proto::wire::{self, Handshake, Message};

/// Bound on one download by our binary (and on a real leecher's, in the reference tests).
const DL_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on a seeder's start-up (its full hash check of 64 MiB included).
const SEEDER_START: Duration = Duration::from_secs(120);
/// `--status-interval` of our downloader in most tests.
const STATUS_INTERVAL: &str = "0.5";
/// A seeder's upload limit when a test must act while the download runs: 64 MiB take ~16 s.
const SLOW_SEEDER: u64 = 4 * MIB;

// ---------------------------------------------------------------------------------------------
// Torrents: geometry (read with the harness's own bencode decoder)
// ---------------------------------------------------------------------------------------------

/// Piece length, piece count and total length of a v1 torrent.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    piece_length: u64,
    pieces: u64,
    total: u64,
}

impl Geometry {
    fn of(torrent: &Path) -> Geometry {
        let meta = bdecode(&fs::read(torrent).unwrap())
            .unwrap_or_else(|| panic!("{} is not bencode", torrent.display()));
        let info = meta.get("info").expect("torrent has an info dict");
        let piece_length = info
            .get("piece length")
            .and_then(Bval::int)
            .expect("piece length") as u64;
        let pieces = match info.get("pieces") {
            Some(Bval::Bytes(b)) => b.len() as u64 / 20,
            _ => panic!("torrent has no pieces"),
        };
        let total = match (info.get("length"), info.get("files")) {
            (Some(Bval::Int(n)), _) => *n as u64,
            (_, Some(Bval::List(files))) => files
                .iter()
                .map(|f| f.get("length").and_then(Bval::int).unwrap_or(0) as u64)
                .sum(),
            _ => panic!("torrent has neither length nor files"),
        };
        assert_eq!(pieces, total.div_ceil(piece_length), "torrent geometry");
        Geometry {
            piece_length,
            pieces,
            total,
        }
    }

    fn piece_size(&self, piece: u64) -> u64 {
        if piece + 1 == self.pieces {
            self.total - piece * self.piece_length
        } else {
            self.piece_length
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real seeders (engine/tests/clients/*.py)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// lt_seed.py (dials nobody: serves whoever connects; announces to the torrent's trackers)
    Libtorrent,
    /// rtorrent_client.py seed
    Rtorrent,
    /// qbt_client.py seed
    Qbittorrent,
    /// aria2_seed.py: only accepts incoming connections, found through a tracker
    Aria2,
    /// transmission_seed.py: only accepts incoming connections, found through a tracker
    Transmission,
}

impl Kind {
    /// Fails the test (never skips) when the client is missing.
    fn require(self) {
        require_libtorrent(); // the drivers run under Debian's python; lt_create makes torrents
        match self {
            Kind::Libtorrent => {}
            Kind::Rtorrent => {
                require_tool("rtorrent", "rtorrent");
            }
            Kind::Qbittorrent => {
                require_tool("qbittorrent-nox", "qbittorrent-nox");
            }
            Kind::Aria2 => {
                require_tool("aria2c", "aria2");
            }
            Kind::Transmission => {
                require_tool("transmission-daemon", "transmission-daemon");
            }
        }
    }

    fn script(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Libtorrent => ("lt_seed.py", None),
            Kind::Rtorrent => ("rtorrent_client.py", Some("seed")),
            Kind::Qbittorrent => ("qbt_client.py", Some("seed")),
            Kind::Aria2 => ("aria2_seed.py", None),
            Kind::Transmission => ("transmission_seed.py", None),
        }
    }

    /// What its `client=` may contain (its BEP 10 `v`, or its peer-id prefix), lowercase.
    fn client_marks(self) -> &'static [&'static str] {
        match self {
            // the harness's sessions set user_agent "uring-bt-harness"; peer id `-LT2080-`
            Kind::Libtorrent => &["libtorrent", "-lt", "uring-bt-harness"],
            // rtorrent runs on rakshasa's libtorrent, peer id `-lt0D80-`
            Kind::Rtorrent => &["rtorrent", "libtorrent", "-lt"],
            Kind::Qbittorrent => &["qbittorrent", "-qb"],
            Kind::Aria2 => &["aria2", "a2-"],
            Kind::Transmission => &["transmission", "-tr"],
        }
    }
}

/// Starts a `kind` seeder of `torrents` (content at `data/<name>`) on its own fresh 127.x,
/// upload-limited to `rate` bytes/s when given; returns once it printed `listening:`.
fn spawn_seeder(kind: Kind, torrents: &[&Path], data: &Path, rate: Option<u64>) -> Seeder {
    kind.require();
    let ip = unique_ip();
    let (script, sub) = kind.script();
    let mut cmd = seeder_cmd(script, sub, torrents, data, ip);
    if kind != Kind::Libtorrent {
        // the client's profile/session dir: beside the data, inside the test's temp dir
        let work = data
            .parent()
            .unwrap_or(data)
            .join(format!("work-{kind:?}-{ip}"));
        cmd.arg("--workdir").arg(work);
    }
    if let Some(r) = rate {
        cmd.arg("--rate").arg(r.to_string());
    }
    let mut proc = Proc::spawn(&format!("{script} @{ip}"), cmd);
    let addr = proc.wait_addr("listening:", SEEDER_START);
    assert_eq!(
        addr.ip(),
        IpAddr::V4(ip),
        "{} listens elsewhere",
        proc.name()
    );
    Seeder { proc, addr }
}

/// SIGTERM: every seeder driver exits 0 on it.
fn stop_seeder(mut s: Seeder) {
    s.proc.stop_cleanly(Duration::from_secs(30));
}

/// Waits until the tracker lists `s` at exactly its listening address (its announce left
/// from its IP with its real port): what our downloader will be handed.
fn wait_listed(tracker: &OpenTracker, info_hash: &str, s: &Seeder) {
    let SocketAddr::V4(want) = s.addr else {
        panic!("{} listens on IPv6", s.proc.name())
    };
    tracker.wait_peer(info_hash, Duration::from_secs(30), s.proc.name(), |a| {
        *a == want
    });
}

// ---------------------------------------------------------------------------------------------
// Our downloader and its lines
// ---------------------------------------------------------------------------------------------

/// `key=value` fields of one line; a value runs until the next known key (of `keys`, apart by
/// spaces), so that a value with spaces (`client=Transmission 3.00`) stays whole.
fn fields(rest: &str, keys: &str) -> BTreeMap<String, String> {
    let keys: Vec<&str> = keys.split_whitespace().collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for tok in rest.split_whitespace() {
        let key = tok
            .split_once('=')
            .map(|(k, _)| k)
            .filter(|k| keys.contains(k));
        match key {
            Some(k) => {
                out.insert(k.to_string(), tok[k.len() + 1..].to_string());
                current = Some(k.to_string());
            }
            None => {
                if let Some(c) = &current {
                    let v = out.get_mut(c).unwrap();
                    v.push(' ');
                    v.push_str(tok);
                }
            }
        }
    }
    out
}

fn num<T: std::str::FromStr>(f: &BTreeMap<String, String>, key: &str, line: &str) -> T {
    f.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number `{key}=` in {line:?}"))
}

/// `progress: have= of= bytes= downloaded= rate= peers=`
#[derive(Clone, Copy, Debug)]
struct ProgressLine {
    have: u64,
    of: u64,
    bytes: u64,
    downloaded: u64,
    peers: u64,
}

fn parse_progress(rest: &str) -> ProgressLine {
    let f = fields(rest, "have of bytes downloaded rate peers");
    let _: f64 = num(&f, "rate", rest);
    ProgressLine {
        have: num(&f, "have", rest),
        of: num(&f, "of", rest),
        bytes: num(&f, "bytes", rest),
        downloaded: num(&f, "downloaded", rest),
        peers: num(&f, "peers", rest),
    }
}

/// `complete: pieces= bytes= secs= downloaded= resumed= partial= wasted=` (`partial=` not read)
#[derive(Clone, Copy, Debug)]
struct CompleteLine {
    pieces: u64,
    bytes: u64,
    secs: f64,
    downloaded: u64,
    resumed: u64,
    wasted: u64,
}

fn parse_complete(rest: &str) -> CompleteLine {
    let f = fields(rest, "pieces bytes secs downloaded resumed partial wasted");
    CompleteLine {
        pieces: num(&f, "pieces", rest),
        bytes: num(&f, "bytes", rest),
        secs: num(&f, "secs", rest),
        downloaded: num(&f, "downloaded", rest),
        resumed: num(&f, "resumed", rest),
        wasted: num(&f, "wasted", rest),
    }
}

/// `peer: addr= client= downloaded= pieces= hashfails= banned=`
#[derive(Clone, Debug)]
struct PeerLine {
    addr: SocketAddr,
    client: String,
    downloaded: u64,
    pieces: u64,
    hashfails: u64,
    banned: bool,
}

fn parse_peer(rest: &str) -> PeerLine {
    let f = fields(rest, "addr client downloaded pieces hashfails banned");
    let banned: u8 = num(&f, "banned", rest);
    assert!(banned <= 1, "banned= is 0 or 1: {rest:?}");
    PeerLine {
        addr: num(&f, "addr", rest),
        client: f.get("client").cloned().unwrap_or_default(),
        downloaded: num(&f, "downloaded", rest),
        pieces: num(&f, "pieces", rest),
        hashfails: num(&f, "hashfails", rest),
        banned: banned == 1,
    }
}

/// A running `uring-bt download`.
struct Ours {
    proc: Proc,
    /// its `listening:` address
    addr: SocketAddr,
    /// its `-o`: the case's `dl-ours`
    out: PathBuf,
}

/// What a finished download printed.
struct Report {
    complete: CompleteLine,
    peers: Vec<PeerLine>,
    progress: Vec<ProgressLine>,
    logs: String,
}

impl Report {
    /// `complete:` counts every piece and every byte of the torrent.
    fn assert_every_piece(&self, g: &Geometry) {
        let c = &self.complete;
        assert_eq!(c.pieces, g.pieces, "complete: pieces\n{}", self.logs);
        assert_eq!(c.bytes, g.total, "complete: bytes\n{}", self.logs);
    }

    /// The `peer:` lines of the peer at `ip` (each peer of a test has its own IP).
    fn of(&self, ip: IpAddr) -> Vec<&PeerLine> {
        self.peers.iter().filter(|p| p.addr.ip() == ip).collect()
    }

    fn pieces_from(&self, ip: IpAddr) -> u64 {
        self.of(ip).iter().map(|p| p.pieces).sum()
    }

    /// The honest seeder `s` (of `kind`) connected, completed pieces for us, failed no hash
    /// check and was not banned; returns the pieces it completed.
    fn assert_honest(&self, s: &Seeder, kind: Kind) -> u64 {
        self.assert_served(s.proc.name(), s.addr, kind, false)
    }

    /// As `assert_honest`; with `shared_failures`, hash failures are allowed (a piece made of
    /// a liar's and this seeder's blocks fails, and the contract does not say whom it is
    /// counted against), a ban is not.
    fn assert_served(&self, name: &str, addr: SocketAddr, kind: Kind, shared: bool) -> u64 {
        let lines = self.of(addr.ip());
        assert!(
            !lines.is_empty(),
            "no `peer:` line for {name} at {addr}\n{}",
            self.logs
        );
        for p in &lines {
            assert!(
                !p.banned && (shared || p.hashfails == 0),
                "honest {name} banned or failing hash checks: {p:?}\n{}",
                self.logs
            );
        }
        let client = lines
            .iter()
            .map(|p| p.client.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            kind.client_marks().iter().any(|m| client.contains(m)),
            "`client=` of {name} is {client:?}: none of {:?}",
            kind.client_marks()
        );
        let pieces = self.pieces_from(addr.ip());
        let bytes: u64 = lines.iter().map(|p| p.downloaded).sum();
        assert!(
            pieces > 0 && bytes > 0,
            "{name} completed no piece for us: {lines:?}\n{}",
            self.logs
        );
        pieces
    }
}

/// `uring-bt download TARGET -o <the case's dl-ours> --listen IP:0 EXTRA...` (and
/// `--status-interval 0.5` unless EXTRA has one), with `XDG_STATE_HOME=<the case's state>`;
/// returns once it printed `listening:` (on IP) and the case's `info_hash:`.
fn spawn_ours(case: &Case, target: &str, ip: Ipv4Addr, extra: &[String]) -> Ours {
    let out = case.save_dir("ours");
    let state = case.dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("download")
        .arg(target)
        .arg("-o")
        .arg(&out)
        .arg("--listen")
        .arg(format!("{ip}:0"))
        .args(extra)
        .env("XDG_STATE_HOME", &state)
        .env("RUST_BACKTRACE", "1")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "uring_bt=info".into()),
        );
    if !extra.iter().any(|a| a == "--status-interval") {
        cmd.arg("--status-interval").arg(STATUS_INTERVAL);
    }
    let mut proc = Proc::spawn(&format!("uring-bt download @{ip}"), cmd);
    let addr = proc.wait_addr("listening:", Duration::from_secs(30));
    assert_eq!(
        addr.ip(),
        IpAddr::V4(ip),
        "uring-bt download listens on {addr}, not on --listen {ip}:0"
    );
    let line = proc.wait_line("info_hash:", Duration::from_secs(30));
    let h = line.split_whitespace().next().unwrap_or("");
    assert_eq!(
        h.to_ascii_lowercase(),
        case.info_hash,
        "uring-bt download prints another info hash: {line}"
    );
    Ours { proc, addr, out }
}

/// The `complete:`, `peer:` and `progress:` lines printed so far.
fn report(p: &Proc) -> Report {
    let lines = p.stdout_lines();
    let complete = lines
        .iter()
        .find_map(|l| l.strip_prefix("complete:"))
        .map(parse_complete)
        .unwrap_or_else(|| panic!("uring-bt download printed no `complete:`\n{}", p.logs()));
    let peers = lines
        .iter()
        .filter_map(|l| l.strip_prefix("peer:"))
        .map(parse_peer)
        .collect();
    let progress = lines
        .iter()
        .filter_map(|l| l.strip_prefix("progress:"))
        .map(parse_progress)
        .collect();
    Report {
        complete,
        peers,
        progress,
        logs: p.logs(),
    }
}

/// The `complete:` line, once printed (bounded wait).
fn report_complete(p: &mut Proc) -> CompleteLine {
    parse_complete(&p.wait_line("complete:", DL_TIMEOUT))
}

/// Waits (bounded) for exit status 0, then reads its report.
fn finish(o: &mut Ours) -> Report {
    o.proc.expect_success(DL_TIMEOUT);
    let r = report(&o.proc);
    eprintln!(
        "{}: {:?}\n  peers: {:?}",
        o.proc.name(),
        r.complete,
        r.peers
    );
    r
}

/// What every completed fresh download asserts: every piece and byte, nothing on disk before
/// (`resumed=0`), at least the whole payload received, the data identical to the source, and
/// the progress lines sane (`of=` the piece count, `have=` never above it nor going back).
fn assert_full_download(case: &Case, out: &Path, r: &Report) -> Geometry {
    let g = Geometry::of(&case.torrent);
    r.assert_every_piece(&g);
    let c = &r.complete;
    assert_eq!(c.resumed, 0, "a fresh download resumed pieces\n{}", r.logs);
    assert!(
        c.downloaded >= g.total,
        "complete: downloaded={} < the {} bytes of the torrent\n{}",
        c.downloaded,
        g.total,
        r.logs
    );
    assert!(c.secs > 0.0, "{c:?}");
    let mut last = 0;
    for p in &r.progress {
        assert_eq!(p.of, g.pieces, "progress: of= {p:?}");
        assert!(p.have <= p.of && p.have >= last, "progress: have= {p:?}");
        assert!(p.bytes <= g.total, "progress: bytes= {p:?}");
        last = p.have;
    }
    case.assert_downloaded(out);
    g
}

/// Only `seeder` served: it completed every piece.
fn assert_sole_source(r: &Report, s: &Seeder, kind: Kind) {
    assert_sole_source_at(r, s.proc.name(), s.addr, kind)
}

fn assert_sole_source_at(r: &Report, name: &str, addr: SocketAddr, kind: Kind) {
    let pieces = r.assert_served(name, addr, kind, false);
    assert_eq!(
        pieces, r.complete.pieces,
        "the only seeder completed {pieces} of the {} pieces\n{}",
        r.complete.pieces, r.logs
    );
}

fn ours_args(peers: &[SocketAddr], more: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    for p in peers {
        v.push("--peer".to_string());
        v.push(p.to_string());
    }
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

/// Fails the test unless the clients of `kinds` are installed; then takes the heavy lock and
/// starts the test's timer, both held while the result lives.
fn heavy(kinds: &[Kind], label: &'static str) -> (Timed, MutexGuard<'static, ()>) {
    for k in kinds {
        k.require();
    }
    let lock = heavy_lock();
    (Timed::new(label), lock)
}

/// We download `target` (the case's torrent, or a magnet of it) from `ip` with `extra`: all
/// of it, and from `seeder` (of `kind`) alone; then the seeder is stopped.
fn download_from_only(
    case: &Case,
    seeder: Seeder,
    kind: Kind,
    target: &str,
    ip: Ipv4Addr,
    extra: &[String],
) {
    let mut o = spawn_ours(case, target, ip, extra);
    let r = finish(&mut o);
    assert_full_download(case, &o.out, &r);
    assert_sole_source(&r, &seeder, kind);
    stop_seeder(seeder);
}

// ---------------------------------------------------------------------------------------------
// Downloads from one real seeder given by --peer
// ---------------------------------------------------------------------------------------------

fn by_peer(kind: Kind, label: &'static str, case: impl FnOnce() -> Case) {
    let _held = heavy(&[kind], label);
    let case = case();
    let seeder = spawn_seeder(kind, &[&case.torrent], &case.data, None);
    let extra = ours_args(&[seeder.addr], &["--no-announce"]);
    let target = case.torrent.to_str().unwrap();
    download_from_only(&case, seeder, kind, target, unique_ip(), &extra);
}

fn single_by_peer(kind: Kind, label: &'static str) {
    by_peer(kind, label, || single_case(64, 0xD0 ^ label.len() as u64));
}

fn tree_by_peer(kind: Kind, label: &'static str) {
    by_peer(kind, label, || tree_case(1000, 0xD1 ^ label.len() as u64));
}

#[test]
fn download_64mib_from_libtorrent_by_peer() {
    single_by_peer(Kind::Libtorrent, "download_64mib_from_libtorrent");
}

#[test]
fn download_64mib_from_rtorrent_by_peer() {
    single_by_peer(Kind::Rtorrent, "download_64mib_from_rtorrent");
}

#[test]
fn download_64mib_from_qbittorrent_by_peer() {
    single_by_peer(Kind::Qbittorrent, "download_64mib_from_qbittorrent");
}

#[test]
fn download_1000_file_tree_from_libtorrent_by_peer() {
    tree_by_peer(Kind::Libtorrent, "download_tree_from_libtorrent");
}

#[test]
fn download_1000_file_tree_from_rtorrent_by_peer() {
    tree_by_peer(Kind::Rtorrent, "download_tree_from_rtorrent");
}

#[test]
fn download_1000_file_tree_from_qbittorrent_by_peer() {
    tree_by_peer(Kind::Qbittorrent, "download_tree_from_qbittorrent");
}

// ---------------------------------------------------------------------------------------------
// Through the tracker only: seeders that never dial (aria2, transmission), and libtorrent
// ---------------------------------------------------------------------------------------------

/// The seeder announces the tracker-only torrent to opentracker; once the tracker lists it, we
/// get only that torrent (no --peer) and `--announce-ip` our own 127.x: the seeder's address
/// can come from nowhere but the tracker's answer, and we must dial it.
fn via_tracker(kind: Kind, label: &'static str, case: impl FnOnce() -> Case) {
    let _held = heavy(&[kind], label);
    let case = case();
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let torrent = case.tracked(&[tracker.http_announce()], "http");
    let seeder = spawn_seeder(kind, &[&torrent], &case.data, None);
    wait_listed(&tracker, &case.info_hash, &seeder);
    let ip = unique_ip();
    let extra = ours_args(&[], &["--announce-ip", &ip.to_string()]);
    download_from_only(&case, seeder, kind, torrent.to_str().unwrap(), ip, &extra);
}

#[test]
fn download_64mib_from_aria2_via_tracker() {
    via_tracker(Kind::Aria2, "download_64mib_from_aria2", || {
        single_case(64, 0xA2A)
    });
}

#[test]
fn download_tree_from_aria2_via_tracker() {
    via_tracker(Kind::Aria2, "download_tree_from_aria2", || {
        tree_case(1000, 0xA2B)
    });
}

#[test]
fn download_64mib_from_transmission_via_tracker() {
    via_tracker(
        Kind::Transmission,
        "download_64mib_from_transmission",
        || single_case(64, 0x7A),
    );
}

#[test]
fn download_tree_from_transmission_via_tracker() {
    via_tracker(
        Kind::Transmission,
        "download_tree_from_transmission",
        || tree_case(1000, 0x7B),
    );
}

/// lt_seed.py announces the tracker-only torrent to opentracker; we are given only the torrent.
#[test]
fn download_via_opentracker_tracker_only_torrent() {
    via_tracker(Kind::Libtorrent, "download_via_opentracker", || {
        single_case(64, 0x0707)
    });
}

// ---------------------------------------------------------------------------------------------
// A magnet link
// ---------------------------------------------------------------------------------------------

/// The magnet lt_seed_meta.py prints (`xt`, `dn`, `x.pe=` its address; no tracker): we get the
/// metadata (BEP 9; the 1,000-file tree's info dict spans several 16 KiB metadata pieces) and
/// then the data from it.
#[test]
fn download_from_magnet_against_libtorrent() {
    let _held = heavy(&[Kind::Libtorrent], "download_from_magnet");
    let case = tree_case(1000, 0x3A9);
    let info_len = info_bytes(&fs::read(&case.torrent).unwrap()).len();
    assert!(
        info_len > 2 * 16 * 1024,
        "the tree's metadata should span several 16 KiB pieces ({info_len} bytes)"
    );
    let (seeder, magnet) = spawn_lt_meta_seeder(&case.torrent, &case.data, unique_ip(), &[]);
    assert!(
        magnet.contains(&format!("x.pe={}", seeder.addr)),
        "lt_seed_meta.py's magnet has no x.pe={}: {magnet}",
        seeder.addr
    );
    assert!(
        !magnet.contains("tr="),
        "the magnet names a tracker: {magnet}"
    );
    download_from_only(&case, seeder, Kind::Libtorrent, &magnet, unique_ip(), &[]);
}

// ---------------------------------------------------------------------------------------------
// Three real seeders at once
// ---------------------------------------------------------------------------------------------

/// libtorrent, rtorrent and qBittorrent, each on its own 127.x and held to 3 MiB/s upload, so
/// that the 64 MiB take ≥ 4 s (~7 s with all three serving, 21 s with one): every one of them
/// completes pieces for us, and the pieces add up.
#[test]
fn download_from_three_real_seeders_at_once() {
    let kinds = [Kind::Libtorrent, Kind::Rtorrent, Kind::Qbittorrent];
    let _held = heavy(&kinds, "download_from_three_seeders");
    const RATE: u64 = 3 * MIB;
    let case = single_case(64, 0x333);
    let seeders: Vec<(Kind, Seeder)> = kinds
        .iter()
        .map(|k| {
            (
                *k,
                spawn_seeder(*k, &[&case.torrent], &case.data, Some(RATE)),
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = seeders.iter().map(|(_, s)| s.addr).collect();
    let extra = ours_args(&addrs, &["--no-announce"]);
    let mut o = spawn_ours(&case, case.torrent.to_str().unwrap(), unique_ip(), &extra);
    let r = finish(&mut o);
    assert_full_download(&case, &o.out, &r);
    assert!(
        r.complete.secs >= 4.0,
        "harness: three seeders at {RATE} B/s each should take >= 4 s for 64 MiB, took {} s \
         (a rate limit did not hold?)",
        r.complete.secs
    );
    // (the pieces= need not add up: the contract does not say how a piece made of two
    // seeders' blocks is counted)
    for (k, s) in &seeders {
        let n = r.assert_honest(s, *k);
        eprintln!(
            "{k:?} at {} completed {n} of {} pieces",
            s.addr, r.complete.pieces
        );
    }
    for (_, s) in seeders {
        stop_seeder(s);
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL and resume
// ---------------------------------------------------------------------------------------------

/// Run 1 is killed (SIGKILL, no chance to save anything) once a progress line shows at least
/// half the pieces; run 2, same command, same output and state dirs, must find on disk at least
/// the pieces run 1 reported verified, fetch only the rest, and complete intact.
#[test]
fn download_killed_with_sigkill_resumes_without_refetching() {
    let _held = heavy(&[Kind::Libtorrent], "download_sigkill_resume");
    let case = single_case(64, 0x9111);
    let g = Geometry::of(&case.torrent);
    // half way is ~8 s in: many progress lines at 0.2 s
    let seeder = spawn_seeder(
        Kind::Libtorrent,
        &[&case.torrent],
        &case.data,
        Some(SLOW_SEEDER),
    );
    let mut args = ours_args(&[seeder.addr], &["--no-announce"]);
    // progress lines every 0.2 s
    args.extend(["--status-interval".to_string(), "0.2".to_string()]);
    let target = case.torrent.to_str().unwrap();

    // both runs: the same output and state dirs (the case's)
    let mut run1 = spawn_ours(&case, target, unique_ip(), &args);
    let deadline = Instant::now() + DL_TIMEOUT;
    let at_kill = loop {
        let lines = run1.proc.stdout_lines();
        assert!(
            !lines.iter().any(|l| l.starts_with("complete:")),
            "harness: run 1 completed before it could be killed half way (rate limit?)\n{}",
            run1.proc.logs()
        );
        let last = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("progress:"))
            .map(parse_progress);
        if let Some(p) = last {
            if 2 * p.have >= p.of {
                // SAFETY: kill(2) on the PID of the child we spawned and have not reaped.
                unsafe {
                    libc::kill(run1.proc.pid() as i32, libc::SIGKILL);
                }
                break p;
            }
        }
        assert!(
            run1.proc.is_running(),
            "run 1 exited before half way\n{}",
            run1.proc.logs()
        );
        assert!(
            Instant::now() < deadline,
            "run 1 did not reach half the pieces within {DL_TIMEOUT:?}\n{}",
            run1.proc.logs()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let st = run1.proc.wait_exit(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "run 1 was not killed: {st}"
    );
    eprintln!("run 1 killed at {at_kill:?}");
    assert!(
        at_kill.have < g.pieces,
        "harness: run 1 had every piece when killed"
    );

    let mut run2 = spawn_ours(&case, target, unique_ip(), &args);
    let r = finish(&mut run2);
    r.assert_every_piece(&g);
    let c = r.complete;
    assert!(
        c.resumed >= at_kill.have,
        "run 2 found {} pieces on disk, run 1 had reported have={} before the kill\n{}",
        c.resumed,
        at_kill.have,
        r.logs
    );
    assert!(c.resumed < g.pieces, "run 2 resumed every piece: {c:?}");
    // What run 2 may receive: the pieces it did not find on disk, plus an allowance of 16
    // pieces (4 MiB) for blocks received twice or thrown away: the seeder is rate-limited and
    // a deep request queue to it can time out, so a block may be requested again while the
    // first answer is still on its way (and the last blocks may go out twice in an endgame).
    // Re-fetching the pieces found on disk would cost at least their size: ≥ 128 pieces here.
    let allowance = 16 * g.piece_length;
    let bound = (g.pieces - c.resumed) * g.piece_length + allowance;
    assert!(
        c.downloaded <= bound,
        "run 2 received {} payload bytes; the {} missing pieces are {} bytes (+ {allowance} \
         allowed): it re-fetched pieces it had\n{}",
        c.downloaded,
        g.pieces - c.resumed,
        (g.pieces - c.resumed) * g.piece_length,
        r.logs
    );
    let from_seeder = r.assert_honest(&seeder, Kind::Libtorrent);
    assert!(
        from_seeder <= g.pieces - c.resumed,
        "run 2 completed {from_seeder} pieces from the seeder, {} were missing",
        g.pieces - c.resumed
    );
    case.assert_downloaded(&run2.out);
    stop_seeder(seeder);
}

// ---------------------------------------------------------------------------------------------
// A scripted liar
// ---------------------------------------------------------------------------------------------

// every field is shown in failure messages (Debug), not all are read
#[allow(dead_code)]
#[derive(Clone, Debug)]
enum LiarEvent {
    Accepted {
        conn: usize,
        at: Instant,
    },
    /// the downloader closed (or reset) the connection
    ClosedByPeer {
        conn: usize,
        at: Instant,
        good_blocks: u64,
        corrupt_blocks: u64,
    },
    /// the liar gave up on the connection (a handshake it does not speak, a bad message)
    ClosedByLiar {
        conn: usize,
        at: Instant,
        why: String,
    },
}

/// A seeder that answers every REQUEST with the file's data, except that the blocks of every
/// 3rd piece (0, 3, 6, ...) come with bytes flipped. One thread accepts (non-blocking, polled),
/// one per connection; every loop is bounded by `deadline` and the stop flag.
struct Liar {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<LiarEvent>>>,
    handle: Option<JoinHandle<()>>,
}

const LIAR_PEER_ID: &[u8; 20] = b"-LR0001-liarliarliar";

impl Liar {
    fn start(ip: Ipv4Addr, content: PathBuf, info_hash: [u8; 20], g: Geometry) -> Liar {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(150);
        let (st, ev) = (Arc::clone(&stop), Arc::clone(&events));
        let handle = thread::spawn(move || {
            let mut conns = Vec::new();
            let mut n = 0;
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        n += 1;
                        ev.lock().unwrap().push(LiarEvent::Accepted {
                            conn: n,
                            at: Instant::now(),
                        });
                        let (st, ev, content) = (Arc::clone(&st), Arc::clone(&ev), content.clone());
                        conns.push(thread::spawn(move || {
                            let e = liar_conn(n, s, &content, info_hash, g, &st, deadline);
                            ev.lock().unwrap().push(e);
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Liar {
            addr,
            stop,
            events,
            handle: Some(handle),
        }
    }

    /// Stops the threads; returns every event.
    fn stop(mut self) -> Vec<LiarEvent> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.events.lock().unwrap().clone()
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            if !thread::panicking() {
                let _ = h.join();
            }
        }
    }
}

fn liar_conn(
    conn: usize,
    mut s: TcpStream,
    content: &Path,
    info_hash: [u8; 20],
    g: Geometry,
    stop: &AtomicBool,
    deadline: Instant,
) -> LiarEvent {
    let by_liar = |why: String| LiarEvent::ClosedByLiar {
        conn,
        at: Instant::now(),
        why,
    };
    let by_downloader = |good_blocks, corrupt_blocks| LiarEvent::ClosedByPeer {
        conn,
        at: Instant::now(),
        good_blocks,
        corrupt_blocks,
    };
    let file = match fs::File::open(content) {
        Ok(f) => f,
        Err(e) => return by_liar(format!("open {}: {e}", content.display())),
    };
    let _ = s.set_nonblocking(false);
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut good, mut corrupt) = (0u64, 0u64);
    let mut shook = false;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return by_liar("stopped".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => return by_downloader(good, corrupt),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return by_downloader(good, corrupt),
        }
        if !shook {
            match wire::decode_handshake(&buf) {
                Ok(None) => continue,
                Err(e) => return by_liar(format!("not a plain BitTorrent handshake: {e:?}")),
                Ok(Some(h)) => {
                    if h.info_hash != info_hash {
                        return by_liar("handshake for another torrent".into());
                    }
                    buf.drain(..wire::HANDSHAKE_LEN);
                    shook = true;
                    // no FAST, no extensions: BITFIELD with every piece, then UNCHOKE
                    let ours = Handshake {
                        reserved: [0; 8],
                        info_hash,
                        peer_id: *LIAR_PEER_ID,
                    };
                    let mut out = ours.to_bytes().to_vec();
                    let mut bits = vec![0u8; g.pieces.div_ceil(8) as usize];
                    for i in 0..g.pieces as usize {
                        bits[i / 8] |= 0x80 >> (i % 8);
                    }
                    wire::encode(&Message::Bitfield(&bits), &mut out);
                    wire::encode(&Message::Unchoke, &mut out);
                    if s.write_all(&out).is_err() {
                        return by_downloader(good, corrupt);
                    }
                }
            }
        }
        loop {
            let (req, used) = match wire::decode(&buf, wire::MAX_MESSAGE_LEN) {
                Ok(None) => break,
                Err(e) => return by_liar(format!("bad message: {e:?}")),
                Ok(Some((m, n))) => (
                    match m {
                        Message::Request(b) => Some(b),
                        _ => None, // interested, have, keep-alive, extended, cancel...
                    },
                    n,
                ),
            };
            buf.drain(..used);
            let Some(b) = req else { continue };
            let (piece, begin, len) = (b.piece as u64, b.begin as u64, b.len as u64);
            if piece >= g.pieces || len == 0 || len > 16384 || begin + len > g.piece_size(piece) {
                continue; // not a block of this torrent: ignored
            }
            let mut data = vec![0u8; len as usize];
            if let Err(e) = file.read_exact_at(&mut data, piece * g.piece_length + begin) {
                return by_liar(format!("read: {e}"));
            }
            if piece % 3 == 0 {
                for x in data.iter_mut().step_by(997) {
                    *x ^= 0xA5;
                }
                corrupt += 1;
            } else {
                good += 1;
            }
            let mut out = Vec::with_capacity(data.len() + 13);
            wire::encode(
                &Message::Piece {
                    piece: b.piece,
                    begin: b.begin,
                    data: &data,
                },
                &mut out,
            );
            if s.write_all(&out).is_err() {
                return by_downloader(good, corrupt);
            }
        }
    }
}

/// The liar (unlimited, on loopback: fast) and an honest libtorrent seeder held to 4 MiB/s.
/// The liar's corrupt pieces fail their hash checks; it must be banned (its connection closed
/// and never dialed again) and every piece must end up intact, the failed ones from the
/// honest seeder.
#[test]
fn corrupt_blocks_from_a_scripted_liar_are_refetched_and_the_liar_banned() {
    let _held = heavy(&[Kind::Libtorrent], "scripted_liar");
    let case = single_case(64, 0x11A2);
    let g = Geometry::of(&case.torrent);
    let liar_ip = unique_ip();
    let liar = Liar::start(liar_ip, case.content(), unhex20(&case.info_hash), g);
    let honest = spawn_seeder(
        Kind::Libtorrent,
        &[&case.torrent],
        &case.data,
        Some(SLOW_SEEDER),
    );
    let extra = ours_args(&[liar.addr, honest.addr], &["--no-announce"]);
    let mut o = spawn_ours(&case, case.torrent.to_str().unwrap(), unique_ip(), &extra);
    let r = finish(&mut o);
    let events = liar.stop();
    eprintln!("liar at {}: {events:?}", liar_summary(&events));
    assert_full_download(&case, &o.out, &r);

    // the liar: banned, with hash failures
    let lines = r.of(liar_ip.into());
    assert!(
        !lines.is_empty(),
        "no `peer:` line for the liar at {liar_ip}\n{}",
        r.logs
    );
    assert!(
        lines.iter().any(|p| p.banned),
        "the liar was not banned: {lines:?}\n{}",
        r.logs
    );
    let hashfails: u64 = lines.iter().map(|p| p.hashfails).sum();
    assert!(
        hashfails >= 1,
        "no hash failure counted for the liar: {lines:?}"
    );
    let good_pieces = (0..g.pieces).filter(|p| p % 3 != 0).count() as u64;
    assert!(
        r.pieces_from(liar_ip.into()) <= good_pieces,
        "the liar's pieces= counts more than the {good_pieces} pieces it did not corrupt: {lines:?}"
    );
    assert!(
        r.complete.wasted >= g.piece_length,
        "a failed piece ({} bytes) was discarded, but complete: wasted={}",
        g.piece_length,
        r.complete.wasted
    );
    // the honest seeder served (at least the pieces the liar corrupted), and was not banned
    r.assert_served(honest.proc.name(), honest.addr, Kind::Libtorrent, true);

    // the ban, seen from the liar's side: the first connection we closed is the ban (the liar
    // answers every request at once, so nothing else makes a downloader drop it), and no
    // connection from us came after it
    let ban_at = events
        .iter()
        .find_map(|e| match e {
            LiarEvent::ClosedByPeer { at, .. } => Some(*at),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the downloader never closed the liar's connection: {events:?}"));
    let after: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, LiarEvent::Accepted { at, .. } if *at > ban_at))
        .collect();
    assert!(
        after.is_empty(),
        "the banned liar saw {} new connection(s) from us after the ban: {events:?}",
        after.len()
    );
    let served_corrupt = events.iter().any(|e| {
        matches!(e, LiarEvent::ClosedByPeer { at, corrupt_blocks, .. }
            if *at == ban_at && *corrupt_blocks > 0)
    });
    assert!(
        served_corrupt,
        "the connection closed as the ban had served no corrupt block: {events:?}"
    );
    stop_seeder(honest);
}

fn liar_summary(events: &[LiarEvent]) -> String {
    let accepts = events
        .iter()
        .filter(|e| matches!(e, LiarEvent::Accepted { .. }))
        .count();
    format!("{accepts} accepted connection(s)")
}

// ---------------------------------------------------------------------------------------------
// --seed after the download
// ---------------------------------------------------------------------------------------------

/// We download from lt_seed.py (given by --peer) with `--seed` and `--tracker` opentracker;
/// once we print `seeding:`, lt_seed.py stops, the tracker's scrape shows our `completed`
/// (downloaded = 1: nobody else announces this torrent) and us as a seeder, and a libtorrent
/// leecher that knows only our address downloads an intact copy from us. SIGTERM: exit 0.
#[test]
fn seed_after_download_serves_a_libtorrent_leecher_and_tracker_saw_completed() {
    let _held = heavy(&[Kind::Libtorrent], "seed_after_download");
    let case = single_case(64, 0x5EED5);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    // the seeder and the leecher get the tracker-less torrent: only we announce
    let source = spawn_seeder(Kind::Libtorrent, &[&case.torrent], &case.data, None);
    let (source_name, source_addr) = (source.proc.name().to_string(), source.addr);
    let ip = unique_ip();
    let (announce, ip_arg) = (tracker.http_announce(), ip.to_string());
    let more = ["--seed", "--tracker", &announce, "--announce-ip", &ip_arg];
    let extra = ours_args(&[source.addr], &more);
    let mut o = spawn_ours(&case, case.torrent.to_str().unwrap(), ip, &extra);
    let seeding = o.proc.wait_addr("seeding:", DL_TIMEOUT);
    assert_eq!(
        seeding, o.addr,
        "`seeding:` names another address than `listening:`"
    );
    assert!(o.proc.is_running(), "--seed: exited after completing");
    let c = report_complete(&mut o.proc);
    assert_eq!(
        (c.pieces, c.resumed),
        (Geometry::of(&case.torrent).pieces, 0),
        "{c:?}"
    );
    case.assert_downloaded(&o.out);
    stop_seeder(source);

    // the scrape, polled (bounded): our `completed` announce counted, and us as a seeder
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = tracker.scrape(&case.info_hash).unwrap_or_default();
        if s.downloaded >= 1 && s.seeders >= 1 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after `seeding:`, opentracker's scrape shows no completed download by us and \
             us not as a seeder: {s:?} (peers {:?})\n{}\n{}",
            tracker.peers(&case.info_hash),
            o.proc.logs(),
            tracker.logs()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        s.downloaded, 1,
        "the tracker counted {} completed downloads, we are the only downloader",
        s.downloaded
    );
    eprintln!("tracker: {s:?}, peers {:?}", tracker.peers(&case.info_hash));

    let lsave = case.save_dir("lt-from-us");
    let mut l = spawn_leecher(
        Client::Libtorrent,
        &case.torrent,
        &lsave,
        seeding,
        unique_ip(),
        DL_TIMEOUT,
    );
    l.expect_success(DL_TIMEOUT);
    case.assert_downloaded(&lsave);
    // our own copy is still intact after serving
    case.assert_downloaded(&o.out);

    o.proc.stop_cleanly(Duration::from_secs(20));
    // the `peer:` lines: printed after `complete:` (before `seeding:`, or at the end: the
    // contract does not say), read once the process is gone. The source completed every
    // piece; the leecher (a peer that connected to us) sent us nothing.
    let r = report(&o.proc);
    assert_full_download(&case, &o.out, &r);
    assert_sole_source_at(&r, &source_name, source_addr, Kind::Libtorrent);
}

// ---------------------------------------------------------------------------------------------
// Reference tests: the harness without our downloader
// ---------------------------------------------------------------------------------------------

/// A real leecher that knows only the tracker: lt_tracker_leech.py or aria2_leech.py.
fn spawn_tracker_leecher(aria2: bool, torrent: &Path, save: &Path) -> Proc {
    require_libtorrent();
    if aria2 {
        require_tool("aria2c", "aria2");
    }
    let bind = unique_ip();
    let script = if aria2 {
        "aria2_leech.py"
    } else {
        "lt_tracker_leech.py"
    };
    // aria2 gets a work dir; libtorrent runs in the driver's own session
    let cmd = leecher_cmd(script, None, torrent, save, bind, DL_TIMEOUT, aria2);
    Proc::spawn(&format!("{script} @{bind}"), cmd)
}

/// transmission_seed.py serves an 8 MiB file and a 200-file tree (one daemon, two torrents)
/// announced to opentracker; a libtorrent and an aria2 leecher that know only the tracker find
/// it there and dial it (transmission itself dials nobody on loopback).
#[test]
fn reference_transmission_seeds_via_tracker() {
    // the leechers: libtorrent and aria2
    let _held = heavy(
        &[Kind::Transmission, Kind::Aria2],
        "reference_transmission_seeds",
    );
    reference_seeds_via_tracker(Kind::Transmission);
}

/// The same with aria2_seed.py (the torrent's own tracker; aria2 dials nobody as a seeder).
#[test]
fn reference_aria2_seeds_via_tracker() {
    let _held = heavy(&[Kind::Aria2], "reference_aria2_seeds");
    reference_seeds_via_tracker(Kind::Aria2);
}

fn reference_seeds_via_tracker(kind: Kind) {
    let single = single_case(8, 0x7E5);
    let tree = tree_case(200, 0x7E5);
    let tracker = OpenTracker::start(&[single.info_hash.clone(), tree.info_hash.clone()]);
    let ts = single.tracked(&[tracker.http_announce()], "http");
    let tt = tree.tracked(&[tracker.http_announce()], "http");
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    copy_tree(&single.content(), &data_dir.join(&single.name));
    copy_tree(&tree.content(), &data_dir.join(&tree.name));
    let mut seeder = spawn_seeder(kind, &[&ts, &tt], &data_dir, None);
    let hashes: Vec<String> = seeder
        .proc
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("info_hash:").map(|h| h.trim().to_string()))
        .collect();
    assert!(
        hashes.contains(&single.info_hash) && hashes.contains(&tree.info_hash),
        "{} seeds {hashes:?}",
        seeder.proc.name()
    );
    assert!(
        seeder
            .proc
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("pid:")),
        "no `pid:` line"
    );
    wait_listed(&tracker, &single.info_hash, &seeder);
    wait_listed(&tracker, &tree.info_hash, &seeder);
    let mut leechers = Vec::new();
    for (case, t) in [(&single, &ts), (&tree, &tt)] {
        for aria2 in [false, true] {
            let save = case.save_dir(&format!("{kind:?}-{}", if aria2 { "aria2" } else { "lt" }));
            leechers.push((spawn_tracker_leecher(aria2, t, &save), save, case));
        }
    }
    for (l, save, case) in &mut leechers {
        l.expect_success(DL_TIMEOUT);
        case.assert_downloaded(save);
    }
    seeder.proc.stop_cleanly(Duration::from_secs(30));
    let up = seeder
        .proc
        .stderr_text()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("uploaded: ").map(|n| n.trim().to_string()));
    eprintln!("{} uploaded {up:?}", seeder.proc.name());
}

/// Every seeder driver's `--rate`: a libtorrent leecher (lt_leech.py, which dials the seeder
/// itself) takes 4 MiB from each held to 1 MiB/s; more than 2 s from the first byte to the
/// last (unlimited on loopback it is well under 1 s; rtorrent lets ~1 s of quota through
/// at once), less than the leecher's bound, and intact.
#[test]
fn reference_seed_drivers_honour_rate() {
    let kinds = [
        Kind::Libtorrent,
        Kind::Rtorrent,
        Kind::Qbittorrent,
        Kind::Aria2,
        Kind::Transmission,
    ];
    let _held = heavy(&kinds, "reference_seed_rates");
    let case = single_case(4, 0x4A7E);
    for k in kinds {
        let seeder = spawn_seeder(k, &[&case.torrent], &case.data, Some(MIB));
        let save = case.save_dir(&format!("rate-{k:?}"));
        let mut l = spawn_leecher(
            Client::Libtorrent,
            &case.torrent,
            &save,
            seeder.addr,
            unique_ip(),
            DL_TIMEOUT,
        );
        l.expect_success(DL_TIMEOUT);
        case.assert_downloaded(&save);
        let result = l
            .stdout_lines()
            .into_iter()
            .rev()
            .find_map(|x| x.strip_prefix("result:").map(str::to_string))
            .expect("lt_leech.py prints result:");
        let v: serde_json::Value = serde_json::from_str(result.trim()).unwrap();
        let secs = v["after_first_byte"].as_f64().expect("after_first_byte");
        eprintln!("{k:?} at 1 MiB/s: 4 MiB in {secs:.2} s after the first byte");
        assert!(
            secs > 2.0,
            "{k:?} --rate 1 MiB/s served 4 MiB in {secs:.2} s: the limit does not hold"
        );
        stop_seeder(seeder);
    }
}

// Keep the helpers honest: parsing of the contract's lines (no clients needed).
#[test]
fn contract_lines_parse() {
    let p = parse_progress("have=3 of=257 bytes=786432 downloaded=800000 rate=1234.5 peers=2");
    assert_eq!(
        (p.have, p.of, p.bytes, p.downloaded, p.peers),
        (3, 257, 786432, 800000, 2)
    );
    let c = parse_complete(
        "pieces=257 bytes=67109641 secs=5.25 downloaded=67109641 resumed=0 wasted=0",
    );
    assert_eq!(
        (c.pieces, c.bytes, c.resumed, c.wasted),
        (257, 67109641, 0, 0)
    );
    assert!((c.secs - 5.25).abs() < 1e-9 && c.downloaded == 67109641);
    let l = parse_peer(
        "addr=127.0.0.5:51413 client=Transmission 3.00 downloaded=1024 pieces=1 hashfails=0 banned=1",
    );
    assert_eq!(l.addr, "127.0.0.5:51413".parse::<SocketAddr>().unwrap());
    assert_eq!(l.client, "Transmission 3.00");
    assert_eq!(
        (l.downloaded, l.pieces, l.hashfails, l.banned),
        (1024, 1, 0, true)
    );
}
