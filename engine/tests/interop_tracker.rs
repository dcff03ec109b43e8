//! Trackers and magnet links against real clients, on loopback, with Debian's opentracker
//! (`common::opentracker`) as the tracker.
//!
//! - `reference_*`: the harness proven against libtorrent seeders (lt_seed.py, and
//!   lt_seed_meta.py where the metadata must be served: lt_seed.py's session has no
//!   ut_metadata): aria2 and transmission and libtorrent leechers that know only the tracker,
//!   libtorrent, qBittorrent and aria2 from magnet links, the scrape, the whitelist reload, and
//!   the scripted raw peer of the private-torrent test. If one of these fails, the harness or
//!   a client is broken, not `uring-bt seed`.
//! - `seed_*`: the acceptance tests of `uring-bt seed --tracker URL`: the same leechers
//!   download from our seeder through an HTTP and a UDP tracker (data compared byte by byte),
//!   the scrape follows its `started`/`stopped`, magnet-only leechers get the metadata from
//!   it, and a private torrent is downloaded through the tracker while a scripted peer gets
//!   neither metadata nor PEX.
//!
//! Facts these tests rely on (see LAB-NOTES): transmission never dials a loopback peer a
//! tracker hands it, so it is started first and the seeder, which learns it from its first
//! announce, must dial it; aria2 finds peers only through the tracker; opentracker's announce
//! interval is ~30 min, so a seeder started before a leecher is found by the leecher's
//! announce, and a leecher started before the seeder is found by the seeder's.
//! Heavy tests take `heavy_lock()`. A missing client fails its test (opentracker and the
//! clients are installed with apt-get when missing and we are root).

mod common;

use common::opentracker::{
    bdecode, bdecode_prefix, require_or_install, url_encode, Bval, OpenTracker,
};
use common::*;
use sha1::{Digest, Sha1};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Bound on one leecher's download (the driver gives up after it; we wait a little longer).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(240);

// ---------------------------------------------------------------------------------------------
// Cases: `common::Case` (single_case, tree_case), and what these tests add to it
// ---------------------------------------------------------------------------------------------

impl Case {
    /// As `assert_downloaded`, for transmission 3.00, which never creates a zero-length file
    /// on disk (it only opens a file to write a block into it, and a 0-byte file gets none;
    /// transmission/transmission#417, fixed in 4.1 only): the files it did not create must
    /// all be zero-length in the source, and everything else is compared byte by byte.
    fn assert_downloaded_by_transmission(&self, save: &Path) {
        if !self.content().is_dir() {
            self.assert_downloaded(save);
            return;
        }
        let got = save.join(&self.name);
        let src = list_tree(&self.content());
        let dst = if got.is_dir() {
            list_tree(&got)
        } else {
            Default::default()
        };
        let missing: Vec<_> = src.keys().filter(|k| !dst.contains_key(*k)).collect();
        let extra: Vec<_> = dst.keys().filter(|k| !src.contains_key(*k)).collect();
        let missing_data: Vec<_> = missing.iter().filter(|k| src[**k] > 0).collect();
        assert!(
            missing_data.is_empty() && extra.is_empty(),
            "{} differs from {}: {} non-empty files missing (first: {:?}), {} extra (first: {:?})",
            got.display(),
            self.content().display(),
            missing_data.len(),
            missing_data.first(),
            extra.len(),
            extra.first()
        );
        let empty = src.values().filter(|l| **l == 0).count();
        eprintln!(
            "transmission: {} of the {} files identical; {} of the {empty} zero-length files \
             not created (transmission 3.00 creates none)",
            src.len() - missing.len(),
            src.len(),
            missing.len()
        );
        for rel in src.keys().filter(|k| dst.contains_key(*k)) {
            assert_same_file(&self.content().join(rel), &got.join(rel));
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A magnet link's parameters, in order, values percent-decoded.
fn magnet_params(link: &str) -> Vec<(String, String)> {
    let q = link
        .strip_prefix("magnet:?")
        .unwrap_or_else(|| panic!("not a magnet link: {link}"));
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

/// `magnet:?xt=urn:btih:HASH&tr=URL`: nothing but the info hash and one tracker.
fn tracker_only_magnet(info_hash: &str, tracker: &str) -> String {
    format!(
        "magnet:?xt=urn:btih:{info_hash}&tr={}",
        url_encode(tracker.as_bytes())
    )
}

// ---------------------------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------------------------

/// python3-libtorrent for Debian's python, installed with apt-get when missing (as root).
fn require_lt() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if !ok && unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("apt-get");
        c.args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "python3-libtorrent",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive");
        run("apt-get", c, Duration::from_secs(600));
    }
    require_libtorrent();
}

/// The drivers of this file (engine/tests/clients/*.py).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// aria2_leech.py: a .torrent with a tracker, or a magnet
    Aria2,
    /// transmission_leech.py: a .torrent with a tracker, or a magnet; never dials loopback peers
    Transmission,
    /// lt_tracker_leech.py: libtorrent, a .torrent with a tracker, no --peer
    LtTracker,
    /// lt_magnet.py: libtorrent from a magnet alone
    LtMagnet,
    /// qbt_magnet.py: qbittorrent-nox from a magnet alone
    QbtMagnet,
}

impl Driver {
    fn require(self) {
        require_lt();
        match self {
            Driver::Aria2 => {
                require_or_install("aria2c", "aria2");
            }
            Driver::Transmission => {
                require_or_install("transmission-daemon", "transmission-daemon");
            }
            Driver::QbtMagnet => {
                require_or_install("qbittorrent-nox", "qbittorrent-nox");
            }
            Driver::LtTracker | Driver::LtMagnet => {}
        }
    }
    fn script(self) -> &'static str {
        match self {
            Driver::Aria2 => "aria2_leech.py",
            Driver::Transmission => "transmission_leech.py",
            Driver::LtTracker => "lt_tracker_leech.py",
            Driver::LtMagnet => "lt_magnet.py",
            Driver::QbtMagnet => "qbt_magnet.py",
        }
    }
}

/// Starts `driver` on `target` (a .torrent path or a magnet link) into `save`, bound to its
/// own fresh 127.x address.
fn spawn_driver(driver: Driver, target: &str, save: &Path, extra: &[&str]) -> Proc {
    driver.require();
    let bind = unique_ip();
    // the client's profile/config dir, for all but libtorrent
    let workdir = matches!(
        driver,
        Driver::Aria2 | Driver::Transmission | Driver::QbtMagnet
    );
    let script = driver.script();
    let mut cmd = leecher_cmd(script, None, target, save, bind, DOWNLOAD_TIMEOUT, workdir);
    cmd.args(extra);
    Proc::spawn(&format!("{} @{bind}", driver.script()), cmd)
}

fn parse_v4(p: &Proc, s: &str) -> SocketAddrV4 {
    let first = s.split_whitespace().next().unwrap_or("");
    first
        .parse()
        .unwrap_or_else(|e| panic!("{}: bad address {first:?} ({e})\n{}", p.name(), p.logs()))
}

/// transmission_leech.py on `target`, started first: returns once the tracker lists it at its
/// peer port (what a seeder that must dial it will be handed).
fn start_transmission(
    tracker: &OpenTracker,
    info_hash: &str,
    target: &str,
    save: &Path,
) -> (Proc, SocketAddrV4) {
    let mut p = spawn_driver(Driver::Transmission, target, save, &[]);
    let line = p.wait_line("listening:", Duration::from_secs(60));
    let addr = parse_v4(&p, &line);
    let seen = Instant::now();
    tracker.wait_peer(
        info_hash,
        Duration::from_secs(30),
        "transmission's announce",
        |a| *a == addr,
    );
    eprintln!(
        "transmission listens on {addr}; the tracker lists it {:.1} s later",
        seen.elapsed().as_secs_f64()
    );
    (p, addr)
}

// ---------------------------------------------------------------------------------------------
// Seeders
// ---------------------------------------------------------------------------------------------

/// `uring-bt seed TORRENT --data DIR --listen 127.0.0.1:0 --tracker URL...`, once it printed
/// `listening:` and `info_hash:` (checked against `info_hash`).
fn spawn_ours(torrent: &Path, data: &Path, trackers: &[String], info_hash: &str) -> Seeder {
    let mut cmd = Command::new(bin());
    cmd.arg("seed")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--no-resume")
        .arg("--status-interval")
        .arg("1");
    for t in trackers {
        cmd.arg("--tracker").arg(t);
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd.env("RUST_LOG", "uring_bt=debug");
    let mut proc = Proc::spawn("uring-bt seed", cmd);
    let l = proc.wait_line("listening:", Duration::from_secs(120));
    let addr: SocketAddr = parse_v4(&proc, &l).into();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let line = proc.wait_line("info_hash:", Duration::from_secs(30));
    let h = line.split_whitespace().next().unwrap_or("");
    assert_eq!(
        h.to_ascii_lowercase(),
        info_hash,
        "uring-bt seed prints another info hash: {line}"
    );
    Seeder { proc, addr }
}

fn stop_lt(mut s: Seeder) {
    s.proc.stop_cleanly(Duration::from_secs(20));
}

/// The tracker lists `seeder` at exactly the address it listens on (the announce carried the
/// real port, and left from that IP).
fn wait_listed(tracker: &OpenTracker, info_hash: &str, seeder: &Seeder, who: &str) {
    let SocketAddr::V4(want) = seeder.addr else {
        panic!("{who} listens on IPv6")
    };
    tracker.wait_peer(info_hash, Duration::from_secs(30), who, |a| *a == want);
}

fn finish(leechers: Vec<(Proc, PathBuf)>, case: &Case) {
    let mut leechers = leechers;
    for (l, _) in &mut leechers {
        wait_leecher(l, DOWNLOAD_TIMEOUT);
    }
    for (l, save) in &leechers {
        if l.name().starts_with(Driver::Transmission.script()) {
            case.assert_downloaded_by_transmission(save);
        } else {
            case.assert_downloaded(save);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A scripted raw peer (private torrents: no metadata, no PEX)
// ---------------------------------------------------------------------------------------------

/// What one scripted connection saw.
#[derive(Default)]
struct RawPeer {
    /// the seeder set the BEP 10 extension bit (reserved[5] & 0x10)
    ext_bit: bool,
    /// the seeder's extended handshake
    ext_handshake: Option<Bval>,
    /// ids the seeder advertised in `m`
    ut_metadata: Option<i64>,
    ut_pex: Option<i64>,
    /// the seeder's answer to our ut_metadata request of piece 0: msg_type, total_size, data
    metadata_reply: Option<(i64, Option<i64>, Vec<u8>)>,
    /// ut_pex messages the seeder sent us (to our id 4)
    pex_messages: usize,
    /// the seeder closed the connection
    closed: bool,
}

impl std::fmt::Debug for RawPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPeer")
            .field("ext_bit", &self.ext_bit)
            .field("ext_handshake", &self.ext_handshake)
            .field("ut_metadata", &self.ut_metadata)
            .field("ut_pex", &self.ut_pex)
            .field(
                "metadata_reply (msg_type, total_size, data bytes)",
                &self
                    .metadata_reply
                    .as_ref()
                    .map(|(t, n, d)| (*t, *n, d.len())),
            )
            .field("pex_messages", &self.pex_messages)
            .field("closed", &self.closed)
            .finish()
    }
}

const OUR_UT_METADATA: u8 = 3;
const OUR_UT_PEX: u8 = 4;

/// Connects to `addr` from a fresh 127.x, handshakes for `info_hash` with the extension bit,
/// sends a BEP 10 handshake `m: {ut_metadata: 3, ut_pex: 4}`, requests metadata piece 0 from
/// the id the seeder advertised (if any), and watches what arrives for `watch`.
fn raw_peer(addr: SocketAddr, info_hash: &str, watch: Duration) -> RawPeer {
    use socket2::{Domain, Socket, Type};
    let bind = unique_ip();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((bind, 0)).into()).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("raw peer: connect {addr}: {e}"));
    let mut s: TcpStream = sock.into();
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let ih = unhex20(info_hash);
    let mut hs = Vec::with_capacity(68);
    hs.push(19);
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    hs.extend_from_slice(&ih);
    hs.extend_from_slice(b"-RP0001-");
    hs.extend_from_slice(&(std::process::id() as u64 ^ 0x5eed_cafe_f00d).to_be_bytes()[..8]);
    hs.extend_from_slice(b"raw!");
    assert_eq!(hs.len(), 68);
    s.write_all(&hs).unwrap();
    let mut theirs = [0u8; 68];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut theirs)
        .unwrap_or_else(|e| panic!("raw peer: no handshake from {addr}: {e}"));
    assert_eq!(&theirs[..20], &hs[..20], "not a BitTorrent handshake");
    assert_eq!(&theirs[28..48], &ih, "handshake for another torrent");
    let mut r = RawPeer {
        ext_bit: theirs[25] & 0x10 != 0,
        ..RawPeer::default()
    };
    let send_ext = |s: &mut TcpStream, id: u8, payload: &[u8]| {
        let mut m = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
        m.push(20);
        m.push(id);
        m.extend_from_slice(payload);
        s.write_all(&m)
    };
    if r.ext_bit {
        send_ext(
            &mut s,
            0,
            b"d1:md11:ut_metadatai3e6:ut_pexi4ee1:v17:uring-bt raw peere",
        )
        .unwrap();
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + watch;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => {
                r.closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                r.closed = true;
                break;
            }
        }
        // whole messages
        loop {
            if buf.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            assert!(len < 1 << 20, "raw peer: absurd message length {len}");
            if buf.len() < 4 + len {
                break;
            }
            let msg: Vec<u8> = buf[4..4 + len].to_vec();
            buf.drain(..4 + len);
            if msg.len() < 2 || msg[0] != 20 {
                continue; // keep-alive, bitfield, have, unchoke...
            }
            let payload = &msg[2..];
            match msg[1] {
                0 => {
                    let v = bdecode(payload).unwrap_or_else(|| {
                        panic!("raw peer: extended handshake is not bencode: {payload:?}")
                    });
                    let id = |k: &str| {
                        v.get("m")
                            .and_then(|m| m.get(k))
                            .and_then(Bval::int)
                            .filter(|i| *i > 0)
                    };
                    r.ut_metadata = id("ut_metadata");
                    r.ut_pex = id("ut_pex");
                    r.ext_handshake = Some(v);
                    if let Some(mid) = r.ut_metadata {
                        send_ext(&mut s, mid as u8, b"d8:msg_typei0e5:piecei0ee").unwrap();
                    }
                }
                OUR_UT_METADATA => {
                    let (v, n) = bdecode_prefix(payload).unwrap_or_else(|| {
                        panic!("raw peer: ut_metadata message is not bencode: {payload:?}")
                    });
                    let mt = v.get("msg_type").and_then(Bval::int).unwrap_or(-1);
                    let total = v.get("total_size").and_then(Bval::int);
                    r.metadata_reply = Some((mt, total, payload[n..].to_vec()));
                }
                OUR_UT_PEX => r.pex_messages += 1,
                _ => {}
            }
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Reference tests: the harness against libtorrent seeders (these pass today)
// ---------------------------------------------------------------------------------------------

/// opentracker alone: whitelist refusals, adding a hash later (file rewrite + SIGHUP), UDP
/// connect, scrape of an allowed hash nobody announced, and what it answers an announcer.
#[test]
fn reference_opentracker_whitelist_reload_udp_and_scrape() {
    let _t = Timed::new("reference_opentracker");
    let a = "0123456789abcdef0123456789abcdef01234567".to_string();
    let b = "fedcba9876543210fedcba9876543210fedcba98".to_string();
    let t = OpenTracker::start(std::slice::from_ref(&a));
    assert!(t.is_allowed(&a));
    assert!(
        !t.is_allowed(&b),
        "opentracker accepts a hash not in its list"
    );
    t.allow(&b);
    assert!(t.is_allowed(&b) && t.is_allowed(&a));
    t.udp_connect_id()
        .expect("opentracker answers a BEP 15 connect");
    assert_eq!(t.counts(&b), (0, 0, 0));
    assert!(t.peers(&b).is_empty());
    assert!(t.http_announce().starts_with("http://127.0.0.1:"));
    assert!(t.udp_announce().starts_with("udp://127.0.0.1:"));
    assert!(t.pid() > 0);
}

/// lt_seed.py (the torrent names the tracker) + aria2, which knows only the tracker.
#[test]
fn reference_aria2_via_http_tracker_from_libtorrent() {
    Driver::Aria2.require();
    let _g = heavy_lock();
    let _t = Timed::new("reference_aria2_tracker");
    let case = single_case(8, 0xA12);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let tracked = case.tracked(&[tracker.http_announce()], "http");
    let seeder = spawn_lt_seeder(&[&tracked], &case.data, unique_ip());
    wait_listed(&tracker, &case.info_hash, &seeder, "lt_seed.py");
    let save = case.save_dir("aria2");
    let l = spawn_driver(Driver::Aria2, tracked.to_str().unwrap(), &save, &[]);
    finish(vec![(l, save)], &case);
    stop_lt(seeder);
}

/// transmission (started first; it never dials loopback peers) is dialed by lt_seed.py, which
/// learns it from the tracker's answer to its first announce.
#[test]
fn reference_transmission_via_http_tracker_from_libtorrent() {
    Driver::Transmission.require();
    let _g = heavy_lock();
    let _t = Timed::new("reference_transmission_tracker");
    let case = single_case(8, 0x7245);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let tracked = case.tracked(&[tracker.http_announce()], "http");
    let save = case.save_dir("transmission");
    let (tr, _tr_addr) =
        start_transmission(&tracker, &case.info_hash, tracked.to_str().unwrap(), &save);
    let seeder = spawn_lt_seeder(&[&tracked], &case.data, unique_ip());
    finish(vec![(tr, save)], &case);
    stop_lt(seeder);
}

/// The UDP tracker side of the harness: lt_seed.py and a libtorrent leecher that knows only
/// the tracker, both announcing over BEP 15.
#[test]
fn reference_libtorrent_via_udp_tracker_from_libtorrent() {
    Driver::LtTracker.require();
    let _g = heavy_lock();
    let _t = Timed::new("reference_lt_udp_tracker");
    let case = single_case(8, 0x0D9);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let tracked = case.tracked(&[tracker.udp_announce()], "udp");
    let seeder = spawn_lt_seeder(&[&tracked], &case.data, unique_ip());
    wait_listed(&tracker, &case.info_hash, &seeder, "lt_seed.py (udp)");
    let save = case.save_dir("lt-udp");
    let l = spawn_driver(Driver::LtTracker, tracked.to_str().unwrap(), &save, &[]);
    finish(vec![(l, save)], &case);
    stop_lt(seeder);
}

/// libtorrent from a magnet with only xt= and tr=: it gets peers from the tracker and the
/// metadata (BEP 9) from lt_seed_meta.py.
#[test]
fn reference_libtorrent_magnet_tracker_only_from_libtorrent() {
    Driver::LtMagnet.require();
    let _g = heavy_lock();
    let _t = Timed::new("reference_lt_magnet");
    let case = tree_case(200, 0x3A6);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let (seeder, _magnet) = spawn_lt_meta_seeder(
        &case.torrent,
        &case.data,
        unique_ip(),
        &[tracker.http_announce()],
    );
    wait_listed(&tracker, &case.info_hash, &seeder, "lt_seed_meta.py");
    let save = case.save_dir("lt-magnet");
    let m = tracker_only_magnet(&case.info_hash, &tracker.http_announce());
    let l = spawn_driver(Driver::LtMagnet, &m, &save, &[]);
    finish(vec![(l, save)], &case);
    stop_lt(seeder);
}

/// qBittorrent from the magnet lt_seed_meta.py prints (xt, dn, tr=, x.pe=), and aria2 from a
/// magnet with only tr=.
#[test]
fn reference_qbittorrent_and_aria2_magnet_from_libtorrent() {
    Driver::QbtMagnet.require();
    Driver::Aria2.require();
    let _g = heavy_lock();
    let _t = Timed::new("reference_qbt_aria2_magnet");
    let case = tree_case(200, 0x0B7);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let (seeder, magnet) = spawn_lt_meta_seeder(
        &case.torrent,
        &case.data,
        unique_ip(),
        &[tracker.http_announce()],
    );
    wait_listed(&tracker, &case.info_hash, &seeder, "lt_seed_meta.py");
    let qsave = case.save_dir("qbt-magnet");
    let q = spawn_driver(Driver::QbtMagnet, &magnet, &qsave, &[]);
    let asave = case.save_dir("aria2-magnet");
    let m = tracker_only_magnet(&case.info_hash, &tracker.http_announce());
    let a = spawn_driver(Driver::Aria2, &m, &asave, &[]);
    finish(vec![(q, qsave), (a, asave)], &case);
    stop_lt(seeder);
}

/// The scrape shows lt_seed.py as a seeder once it announced `started` (at its listening
/// address), and no longer after it stopped (libtorrent announces `stopped` on a clean exit).
/// The hash is added to the whitelist after opentracker started (SIGHUP reload).
#[test]
fn reference_scrape_shows_libtorrent_seeder_until_it_stops() {
    require_lt();
    let _g = heavy_lock();
    let _t = Timed::new("reference_scrape");
    let case = single_case(1, 0x5C);
    let tracker = OpenTracker::start(&[]);
    tracker.allow(&case.info_hash);
    let tracked = case.tracked(&[tracker.http_announce()], "http");
    assert_eq!(tracker.counts(&case.info_hash).0, 0);
    let seeder = spawn_lt_seeder(&[&tracked], &case.data, unique_ip());
    let s = tracker.wait_scrape(
        &case.info_hash,
        Duration::from_secs(30),
        "one seeder",
        |s| s.seeders == 1,
    );
    assert_eq!(s.leechers, 0, "{s:?}");
    wait_listed(&tracker, &case.info_hash, &seeder, "lt_seed.py");
    stop_lt(seeder);
    tracker.wait_scrape(
        &case.info_hash,
        Duration::from_secs(15),
        "zero seeders",
        |s| s.seeders == 0,
    );
}

/// The scripted raw peer against libtorrent: a public torrent's metadata piece 0 comes back
/// (msg_type 1, its SHA-1 is the info hash), and a private torrent's does not.
#[test]
fn reference_raw_peer_metadata_public_and_private_from_libtorrent() {
    require_lt();
    let mktorrent = require_or_install("mktorrent", "mktorrent");
    let _g = heavy_lock();
    let _t = Timed::new("reference_raw_peer");
    let case = single_case(2, 0x9A);
    // public
    let (seeder, _) = spawn_lt_meta_seeder(&case.torrent, &case.data, unique_ip(), &[]);
    let r = raw_peer(seeder.addr, &case.info_hash, Duration::from_secs(3));
    eprintln!("libtorrent, public torrent: {r:?}");
    assert!(r.ext_bit && r.ut_metadata.is_some(), "{r:?}");
    let (mt, total, data) = r.metadata_reply.clone().expect("no ut_metadata answer");
    assert_eq!(mt, 1, "{r:?}");
    assert_eq!(total, Some(data.len() as i64));
    let h: [u8; 20] = Sha1::digest(&data).into();
    assert_eq!(
        hex(&h),
        case.info_hash,
        "metadata piece 0 is not the info dict"
    );
    stop_lt(seeder);
    // private (mktorrent -p): the same peer gets no metadata
    let tracker = OpenTracker::start(&[]);
    let private = case.dir.path().join("private.torrent");
    let mut cmd = Command::new(mktorrent);
    cmd.arg("-p")
        .arg("-a")
        .arg(tracker.http_announce())
        .arg("-l")
        .arg("16")
        .arg("-o")
        .arg(&private)
        .arg(case.content());
    run_ok("mktorrent", cmd, Duration::from_secs(60));
    let ph = info_hash_of(&fs::read(&private).unwrap());
    tracker.allow(&ph);
    let (seeder, _) = spawn_lt_meta_seeder(&private, &case.data, unique_ip(), &[]);
    let r = raw_peer(seeder.addr, &ph, Duration::from_secs(3));
    eprintln!("libtorrent, private torrent: {r:?}");
    assert_no_metadata_no_pex(&r);
    stop_lt(seeder);
}

fn assert_no_metadata_no_pex(r: &RawPeer) {
    if let Some(id) = r.ut_metadata {
        let reply = r
            .metadata_reply
            .as_ref()
            .unwrap_or_else(|| panic!("ut_metadata advertised (id {id}) but no answer: {r:?}"));
        assert_eq!(
            reply.0, 2,
            "a private torrent's metadata request must be rejected: {r:?}"
        );
    } else {
        assert!(r.metadata_reply.is_none(), "{r:?}");
    }
    assert_eq!(
        r.ut_pex, None,
        "ut_pex advertised for a private torrent: {r:?}"
    );
    assert_eq!(r.pex_messages, 0, "PEX sent for a private torrent: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// Acceptance tests of `uring-bt seed --tracker` (fail until the tracker work lands)
// ---------------------------------------------------------------------------------------------

/// transmission first (it must be dialed: the seeder learns it from its first announce),
/// then our seeder with `--tracker announce` on the tracker-less torrent, then aria2 and
/// libtorrent, which find the seeder through the tracker.
///
/// aria2 1.36 has no UDP tracker without its DHT ("udp is not supported yet"): with a UDP
/// `announce` it gets a torrent naming the same opentracker over HTTP, and so finds a seeder
/// that announced over UDP only (opentracker keeps one swarm for both).
fn ours_to_tracker_leechers(case: &Case, tracker: &OpenTracker, announce: &str, label: &str) {
    let tracked = case.tracked(&[announce.to_string()], label);
    let target = tracked.to_str().unwrap();
    let aria2_torrent = if announce.starts_with("udp://") {
        case.tracked(&[tracker.http_announce()], &format!("{label}-aria2-http"))
    } else {
        tracked.clone()
    };
    let tsave = case.save_dir(&format!("{label}-transmission"));
    let (tr, _) = start_transmission(tracker, &case.info_hash, target, &tsave);
    let seeder = spawn_ours(
        &case.torrent,
        &case.data,
        &[announce.to_string()],
        &case.info_hash,
    );
    wait_listed(tracker, &case.info_hash, &seeder, "uring-bt seed");
    let asave = case.save_dir(&format!("{label}-aria2"));
    let a = spawn_driver(Driver::Aria2, aria2_torrent.to_str().unwrap(), &asave, &[]);
    let lsave = case.save_dir(&format!("{label}-lt"));
    let l = spawn_driver(Driver::LtTracker, target, &lsave, &[]);
    finish(vec![(tr, tsave), (a, asave), (l, lsave)], case);
    stop_our_seeder(seeder);
}

fn seed_tracker_three_clients(udp: bool, label: &'static str) {
    for d in [Driver::Aria2, Driver::Transmission, Driver::LtTracker] {
        d.require();
    }
    let _g = heavy_lock();
    let _t = Timed::new(label);
    let single = single_case(64, 0x64 ^ udp as u64);
    let tree = tree_case(1000, 0x1000 ^ udp as u64);
    let tracker = OpenTracker::start(&[single.info_hash.clone(), tree.info_hash.clone()]);
    let announce = if udp {
        tracker.udp_announce()
    } else {
        tracker.http_announce()
    };
    ours_to_tracker_leechers(&single, &tracker, &announce, "single");
    ours_to_tracker_leechers(&tree, &tracker, &announce, "tree");
}

#[test]
fn seed_http_tracker_aria2_transmission_libtorrent() {
    seed_tracker_three_clients(false, "seed_http_tracker");
}

#[test]
fn seed_udp_tracker_aria2_transmission_libtorrent() {
    seed_tracker_three_clients(true, "seed_udp_tracker");
}

/// The scrape shows our seeder (at its listening address) after it started, and not after
/// SIGTERM (it announces `stopped`): over HTTP, then over UDP.
#[test]
fn seed_scrape_shows_seeder_until_sigterm() {
    require_lt();
    let _g = heavy_lock();
    let _t = Timed::new("seed_scrape");
    let case = single_case(4, 0x5C5C);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    for announce in [tracker.http_announce(), tracker.udp_announce()] {
        assert_eq!(tracker.counts(&case.info_hash).0, 0);
        let seeder = spawn_ours(
            &case.torrent,
            &case.data,
            std::slice::from_ref(&announce),
            &case.info_hash,
        );
        let s = tracker.wait_scrape(
            &case.info_hash,
            Duration::from_secs(30),
            &format!("one seeder after `started` over {announce}"),
            |s| s.seeders == 1,
        );
        assert_eq!(s.leechers, 0, "{s:?}");
        wait_listed(&tracker, &case.info_hash, &seeder, "uring-bt seed");
        stop_our_seeder(seeder);
        // `stopped` is sent during the clean stop: once the process exited it is processed
        // (allow a little for the tracker)
        tracker.wait_scrape(
            &case.info_hash,
            Duration::from_secs(5),
            &format!("zero seeders after SIGTERM ({announce})"),
            |s| s.seeders == 0,
        );
        assert!(
            tracker.peers(&case.info_hash).is_empty(),
            "the tracker still lists a peer after our seeder stopped"
        );
    }
}

/// Magnet only: libtorrent and qBittorrent from the `magnet:` line our seeder prints (it
/// carries `x.pe=` = its listening address and `tr=`), aria2 from a magnet with only the
/// tracker. The 1,000-file tree's metadata spans several 16 KiB pieces.
#[test]
fn seed_magnet_libtorrent_qbittorrent_aria2() {
    for d in [Driver::LtMagnet, Driver::QbtMagnet, Driver::Aria2] {
        d.require();
    }
    let _g = heavy_lock();
    let _t = Timed::new("seed_magnet");
    let case = tree_case(1000, 0x3A63);
    let tracker = OpenTracker::start(std::slice::from_ref(&case.info_hash));
    let announce = tracker.http_announce();
    let mut seeder = spawn_ours(
        &case.torrent,
        &case.data,
        std::slice::from_ref(&announce),
        &case.info_hash,
    );
    let magnet = seeder.proc.wait_line("magnet:", Duration::from_secs(10));
    let params = magnet_params(&magnet);
    let get = |k: &str| -> Vec<&str> {
        params
            .iter()
            .filter(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("xt"),
        vec![format!("urn:btih:{}", case.info_hash).as_str()],
        "{magnet}"
    );
    assert!(
        get("tr").contains(&announce.as_str()),
        "no tr={announce}: {magnet}"
    );
    assert!(
        get("x.pe").contains(&seeder.addr.to_string().as_str()),
        "no x.pe={}: {magnet}",
        seeder.addr
    );
    wait_listed(&tracker, &case.info_hash, &seeder, "uring-bt seed");
    let lsave = case.save_dir("lt-magnet");
    let l = spawn_driver(Driver::LtMagnet, &magnet, &lsave, &[]);
    let qsave = case.save_dir("qbt-magnet");
    let q = spawn_driver(Driver::QbtMagnet, &magnet, &qsave, &[]);
    let asave = case.save_dir("aria2-magnet");
    let a = spawn_driver(
        Driver::Aria2,
        &tracker_only_magnet(&case.info_hash, &announce),
        &asave,
        &[],
    );
    finish(vec![(l, lsave), (q, qsave), (a, asave)], &case);
    stop_our_seeder(seeder);
}

/// A private torrent made by `uring-bt create --private --tracker URL`: libtorrent downloads
/// it through the tracker; a scripted peer gets no metadata (no ut_metadata advertised, or a
/// reject) and no PEX (ut_pex not advertised, no ut_pex message in ~3 s; the engine has no
/// option for a shorter PEX interval, and PEX goes out at most once a minute).
#[test]
fn seed_private_torrent_via_tracker_no_metadata_no_pex() {
    Driver::LtTracker.require();
    let _g = heavy_lock();
    let _t = Timed::new("seed_private");
    let case = single_case(16, 0x9817);
    let tracker = OpenTracker::start(&[]);
    let private = case.dir.path().join("private.torrent");
    let mut cmd = Command::new(bin());
    cmd.arg("create")
        .arg("--private")
        .arg("--tracker")
        .arg(tracker.http_announce())
        .arg(case.content())
        .arg("-o")
        .arg(&private);
    run_ok("uring-bt create --private", cmd, Duration::from_secs(120));
    let bytes = fs::read(&private).unwrap();
    let meta = bdecode(&bytes).expect("uring-bt create wrote bencode");
    assert_eq!(
        meta.get("info")
            .and_then(|i| i.get("private"))
            .and_then(Bval::int),
        Some(1),
        "not private"
    );
    assert_eq!(
        meta.get("announce"),
        Some(&Bval::Bytes(tracker.http_announce().into_bytes()))
    );
    let ph = info_hash_of(&bytes);
    tracker.allow(&ph);
    // the torrent names the tracker: no --tracker on the command line
    let seeder = spawn_ours(&private, &case.data, &[], &ph);
    wait_listed(&tracker, &ph, &seeder, "uring-bt seed (private)");
    let r = raw_peer(seeder.addr, &ph, Duration::from_secs(3));
    eprintln!("uring-bt seed, private torrent: {r:?}");
    assert_no_metadata_no_pex(&r);
    let save = case.save_dir("lt-private");
    let l = spawn_driver(Driver::LtTracker, private.to_str().unwrap(), &save, &[]);
    finish(vec![(l, save)], &case);
    stop_our_seeder(seeder);
}
