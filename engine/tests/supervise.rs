//! The shard supervisor of `uring-bt seed`, end to end, with the test-only panic switch
//! (`URING_BT_TEST_PANIC=1`: a peer whose handshake peer id is `-XPANIC<d>...` makes shard `d`
//! panic when its connection lands there, and is just closed on another shard):
//!
//! - a shard that panics is restarted while the other shard keeps serving: a libtorrent
//!   leecher (held to a download rate, so that its transfer spans the restart) on the other
//!   shard goes on over the same connection without a stall and completes byte-identical, and
//!   the restarted shard then serves new connections;
//! - more restarts than `--max-restarts` within `--restart-window` stop the process: exit 1
//!   with a message naming the shard and the limit.
//!
//! The seeder runs with `--shards 2` on 127.0.0.1:0; SO_REUSEPORT spreads connections over
//! the shards at random, so the tests read which shard holds what from the status lines
//! (`peers by shard [a, b]`, `shard restarts [a, b]`, one a second with `--status-interval 1`)
//! and retry a bounded number of fresh connections until one lands where it must.

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uring_bt_proto::wire::{self, BlockRef, Handshake, Message, OwnedMessage};

const MIB: u64 = 1024 * 1024;
const PANIC_ENV: &str = "URING_BT_TEST_PANIC";

// ---------------------------------------------------------------------------------------------
// The seeder and its status lines
// ---------------------------------------------------------------------------------------------

/// `uring-bt seed TORRENT --data DATA --listen 127.0.0.1:0 --shards 2 ...` with the panic
/// switch on; returns it once it listens, with its address.
fn spawn_seeder(torrent: &Path, data: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(bin());
    cmd.arg("seed")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"])
        .args(["--no-announce", "--no-resume", "--status-interval", "1"])
        .args(extra)
        .env(PANIC_ENV, "1")
        // the supervisor's `child ended` / `child restarted` lines
        .env("RUST_LOG", "uring_bt=info")
        .env("RUST_BACKTRACE", "0");
    let mut p = Proc::spawn("uring-bt seed", cmd);
    let line = p.wait_line("listening:", Duration::from_secs(120));
    let addr: SocketAddr = line
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad `listening: {line}`\n{}", p.logs()));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    (p, addr)
}

/// The `status:` lines the seeder printed so far (stderr).
fn status_lines(p: &Proc) -> Vec<String> {
    p.stderr_text()
        .lines()
        .filter(|l| l.starts_with("status: "))
        .map(str::to_string)
        .collect()
}

/// The list after `label` in a status line: `peers by shard [1, 0]` -> `[1, 0]`.
fn list_after(line: &str, label: &str) -> Option<Vec<u64>> {
    let rest = &line[line.find(label)? + label.len()..];
    let rest = rest.trim_start().strip_prefix('[')?;
    let inner = &rest[..rest.find(']')?];
    inner
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect::<Option<Vec<u64>>>()
}

/// Connections per shard, as a status line tells them.
fn peers_by_shard(line: &str) -> Vec<u64> {
    list_after(line, "peers by shard")
        .unwrap_or_else(|| panic!("a status line of 2 shards without `peers by shard`: {line}"))
}

/// Restarts per shard (the part is absent before the first restart: all zero).
fn restarts(line: &str) -> Vec<u64> {
    list_after(line, "shard restarts").unwrap_or_else(|| vec![0, 0])
}

/// Waits (bounded) for a status line printed after the first `after` ones that `pred` accepts.
fn wait_status(
    p: &mut Proc,
    after: usize,
    timeout: Duration,
    what: &str,
    mut pred: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = status_lines(p).iter().skip(after).find(|l| pred(l)) {
            return l.clone();
        }
        assert!(
            p.is_running(),
            "the seeder exited while waiting for a status line with {what}\n{}",
            p.logs()
        );
        assert!(
            Instant::now() < deadline,
            "no status line with {what} within {timeout:?}\n{}",
            p.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// How many panics of `shard` the seeder reported on stderr: its panic hook's line
/// `error: internal error (a bug) at engine/src/server/conn.rs:N: shard 1: injected panic ...`.
fn panics_of(p: &Proc, shard: usize) -> usize {
    let what = format!(": shard {shard}: injected panic (test switch)");
    p.stderr_text()
        .lines()
        .filter(|l| l.starts_with("error: internal error (a bug)") && l.ends_with(&what))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Scripted peers
// ---------------------------------------------------------------------------------------------

/// A TCP connection to `to` from `from` (its own loopback source address), bounded.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(from.into(), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn peer_id(prefix: &str) -> [u8; 20] {
    let mut id = *b"-XX0001-supervise000";
    let n = prefix.len().min(20);
    id[..n].copy_from_slice(&prefix.as_bytes()[..n]);
    id
}

/// What became of a panic peer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No listener took it (both shards down for a moment, or the process stopping).
    Refused,
    /// The seeder closed it: its shard panicked, or another shard dropped it.
    Closed,
    /// Still open, unanswered, after 5 s: accepted by nobody that serves it.
    Hung,
}

/// One `-XPANIC<shard>` peer: handshake, then wait (bounded) until the seeder closes it.
/// A reset counts as closed (the shard may reset it as it goes down).
fn panic_peer(addr: SocketAddr, info_hash: [u8; 20], shard: usize) -> Outcome {
    let Ok(mut s) = connect_from(unique_ip(), addr) else {
        return Outcome::Refused;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = Vec::new();
    wire::encode_handshake(
        &Handshake::new(info_hash, peer_id(&format!("-XPANIC{shard}-"))),
        &mut out,
    );
    if s.write_all(&out).is_err() {
        return Outcome::Closed;
    }
    let mut tmp = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match s.read(&mut tmp) {
            Ok(0) => return Outcome::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(_) => return Outcome::Closed,
        }
    }
    Outcome::Hung
}

/// A well-behaved scripted peer: a real handshake for the torrent, then messages.
struct Scripted {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Scripted {
    fn connect(from: Ipv4Addr, addr: SocketAddr, info_hash: [u8; 20], n: usize) -> Scripted {
        let s = connect_from(from, addr)
            .unwrap_or_else(|e| panic!("scripted peer {n} from {from}: cannot connect: {e}"));
        let mut p = Scripted { s, buf: Vec::new() };
        let mut out = Vec::new();
        wire::encode_handshake(
            &Handshake::new(info_hash, peer_id(&format!("-XX0001-sv{n:03}-"))),
            &mut out,
        );
        p.s.write_all(&out).unwrap();
        while p.buf.len() < wire::HANDSHAKE_LEN {
            p.fill()
                .unwrap_or_else(|| panic!("scripted peer {n}: closed during the handshake"));
        }
        let theirs = wire::decode_handshake(&p.buf).unwrap().unwrap();
        assert_eq!(theirs.info_hash, info_hash, "scripted peer {n}");
        p.buf.drain(..wire::HANDSHAKE_LEN);
        p
    }

    fn fill(&mut self) -> Option<()> {
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Some(())
            }
        }
    }

    fn send(&mut self, m: &Message<'_>) {
        let mut out = Vec::new();
        wire::encode(m, &mut out);
        self.s.write_all(&out).unwrap();
    }

    fn recv(&mut self) -> Option<OwnedMessage> {
        loop {
            if let Some((m, n)) = wire::decode(&self.buf, wire::MAX_MESSAGE_LEN).unwrap() {
                let owned = m.to_owned_message();
                self.buf.drain(..n);
                return Some(owned);
            }
            self.fill()?;
        }
    }

    /// Reads until a message `pred` accepts; None when the seeder closed (or a read timed out).
    fn recv_until(&mut self, mut pred: impl FnMut(&OwnedMessage) -> bool) -> Option<OwnedMessage> {
        for _ in 0..10_000 {
            let m = self.recv()?;
            if pred(&m) {
                return Some(m);
            }
        }
        None
    }

    /// INTERESTED, wait for UNCHOKE, request one block and return its bytes.
    fn fetch(&mut self, b: BlockRef, n: usize) -> Vec<u8> {
        self.send(&Message::Interested);
        self.recv_until(|m| matches!(m, OwnedMessage::Unchoke))
            .unwrap_or_else(|| panic!("scripted peer {n}: never unchoked"));
        self.send(&Message::Request(b));
        match self.recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_)))
        {
            Some(OwnedMessage::Piece { piece, begin, data }) => {
                assert_eq!((piece, begin), (b.piece, b.begin), "scripted peer {n}");
                data
            }
            other => panic!("scripted peer {n}: {b:?} answered with {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The paced leecher's progress lines
// ---------------------------------------------------------------------------------------------

/// `progress: FRACTION CHECKED PEERS WALL PAYLOAD CONNS` (lt_leech_paced.py).
#[derive(Debug, Clone)]
struct Progress {
    peers: u64,
    wall: f64,
    payload: u64,
    conns: String,
}

fn progress_lines(p: &Proc) -> Vec<Progress> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.strip_prefix("progress: ")?.split_whitespace().collect();
            if f.len() != 6 {
                return None;
            }
            Some(Progress {
                peers: f[2].parse().ok()?,
                wall: f[3].parse().ok()?,
                payload: f[4].parse().ok()?,
                conns: f[5].to_string(),
            })
        })
        .collect()
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn hex20(s: &str) -> [u8; 20] {
    assert_eq!(s.len(), 40, "not a SHA-1 in hex: {s}");
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// (a) a panicked shard restarts while the other keeps serving
// ---------------------------------------------------------------------------------------------

/// 64 MiB (+ 777 bytes) at 4 MiB/s: a transfer of about 16 s, the restart within its first
/// few seconds.
const FILE_LEN: u64 = 64 * MIB + 777;
const PIECE_LEN: u32 = 256 * 1024;
const LEECH_RATE: u64 = 4 * MIB;
const LEECH_TIMEOUT: Duration = Duration::from_secs(180);
/// Fresh connections tried for a panic peer to land on the other shard (each lands on it with
/// probability 1/2).
const PANIC_ATTEMPTS: usize = 40;
/// Scripted peers per batch after the restart, and batches at most (until one lands on the
/// restarted shard).
const BATCH: usize = 8;
const MAX_BATCHES: usize = 4;

#[test]
fn a_panicked_shard_restarts_while_another_shard_keeps_serving() {
    require_libtorrent();
    let _g = heavy_lock();
    let _t = Timed::new("a_panicked_shard_restarts_while_another_shard_keeps_serving");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let content = data.join("payload.bin");
    write_random_file(&content, FILE_LEN, 0x5EED_5AFE);
    let torrent = dir.path().join("payload.torrent");
    let ih_hex = lt_create(&content, &torrent, PIECE_LEN);
    let info_hash = hex20(&ih_hex);
    let num_pieces = FILE_LEN.div_ceil(u64::from(PIECE_LEN)) as u32;

    // 32 upload slots: 16 per shard, more than the leecher and every scripted peer together,
    // so that no peer waits for an optimistic unchoke. `reqq` 32: libtorrent's rate limiter
    // then paces the leecher smoothly (see lt_leech_paced.py; with a deep queue it stalls for
    // seconds between bursts, against any seeder).
    let (mut seeder, addr) =
        spawn_seeder(&torrent, &data, &["--upload-slots", "32", "--reqq", "32"]);
    let announced = seeder.wait_line("info_hash:", Duration::from_secs(60));
    assert!(
        announced.starts_with(&ih_hex),
        "the seeder announces another info hash: {announced}"
    );

    // The leecher, held to LEECH_RATE.
    let save: PathBuf = dir.path().join("dl");
    std::fs::create_dir_all(&save).unwrap();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script("lt_leech_paced.py"))
        .arg(&torrent)
        .arg("--save")
        .arg(&save)
        .arg("--peer")
        .arg(addr.to_string())
        .arg("--bind")
        .arg(unique_ip().to_string())
        .arg("--rate")
        .arg(LEECH_RATE.to_string())
        .arg("--plaintext")
        .arg("--timeout")
        .arg(LEECH_TIMEOUT.as_secs().to_string());
    let mut leecher = Proc::spawn("paced libtorrent leecher", cmd);

    // Its transfer runs: payload received over one connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    let conn = loop {
        if let Some(p) = progress_lines(&leecher)
            .into_iter()
            .find(|p| p.payload > 0 && p.conns != "-")
        {
            break p.conns;
        }
        assert!(
            leecher.is_running(),
            "the leecher exited before its transfer started\n{}\n{}",
            leecher.logs(),
            seeder.logs()
        );
        assert!(
            Instant::now() < deadline,
            "the leecher received nothing within 60 s\n{}\n{}",
            leecher.logs(),
            seeder.logs()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !conn.contains(','),
        "the leecher holds more than one connection: {conn}"
    );

    // Which shard holds it: the seeder's first status line from now on with one connection.
    let seen = status_lines(&seeder).len();
    let line = wait_status(
        &mut seeder,
        seen,
        Duration::from_secs(15),
        "one connection in `peers by shard`",
        |l| peers_by_shard(l).iter().sum::<u64>() == 1,
    );
    let by_shard = peers_by_shard(&line);
    assert_eq!(by_shard.len(), 2, "{line}");
    let x = by_shard.iter().position(|&n| n == 1).unwrap();
    let y = 1 - x;
    eprintln!("leecher on shard {x} ({line}); panicking shard {y}");
    assert_eq!(
        restarts(&line),
        vec![0, 0],
        "a restart before any panic: {line}"
    );

    // Panic peers for shard y, each a fresh connection, until one lands there.
    let mut attempts = 0;
    while panics_of(&seeder, y) == 0 {
        assert!(
            attempts < PANIC_ATTEMPTS,
            "{PANIC_ATTEMPTS} `-XPANIC{y}` connections and shard {y} never panicked\n{}",
            seeder.logs()
        );
        attempts += 1;
        let outcome = panic_peer(addr, info_hash, y);
        if outcome == Outcome::Hung {
            // Not the acceptance of this test, but an engine defect worth seeing: a connection
            // accepted as its shard went down, then neither served nor closed (the shard's
            // in-flight accept completing during its runtime's teardown).
            eprintln!("a `-XPANIC{y}` connection was left open, unanswered, for 5 s");
        }
        // its panic hook writes before the shard's sockets close; give our reader a moment
        let until = Instant::now() + Duration::from_millis(300);
        while panics_of(&seeder, y) == 0 && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let restart_wall = wall_now();
    let at_restart = progress_lines(&leecher).last().cloned().unwrap();
    eprintln!("shard {y} panicked after {attempts} connection(s); leecher at {at_restart:?}");
    assert!(
        leecher.is_running() && at_restart.payload < FILE_LEN,
        "the leecher was done before the restart: the test proves nothing (raise FILE_LEN)\n{}",
        leecher.logs()
    );
    assert_eq!(
        panics_of(&seeder, x),
        0,
        "shard {x} panicked too\n{}",
        seeder.logs()
    );

    // The supervisor restarts it: the status line counts one restart of y, none of x.
    let line = wait_status(
        &mut seeder,
        0,
        Duration::from_secs(15),
        &format!("one restart of shard {y}"),
        |l| restarts(l).get(y) == Some(&1),
    );
    assert_eq!(restarts(&line)[x], 0, "{line}");
    eprintln!("restart seen: {line}");

    // The restarted shard serves new connections: scripted peers, each from its own address,
    // get a block each with the right bytes; a status line shows shard y holding some of them.
    let file = File::open(&content).unwrap();
    let mut peers: Vec<Scripted> = Vec::new();
    let mut on_y = None;
    for batch in 0..MAX_BATCHES {
        for i in 0..BATCH {
            let n = batch * BATCH + i;
            let piece = (7 + 13 * n as u32) % num_pieces;
            let b = BlockRef {
                piece,
                begin: 16384,
                len: 16384,
            };
            let mut p = Scripted::connect(unique_ip(), addr, info_hash, n);
            let got = p.fetch(b, n);
            let mut want = vec![0u8; 16384];
            file.read_exact_at(&mut want, u64::from(piece) * u64::from(PIECE_LEN) + 16384)
                .unwrap();
            assert!(
                got == want,
                "scripted peer {n}: the bytes of {b:?} differ from the file"
            );
            peers.push(p);
        }
        // Hold them open ~2.5 s (at least two status lines, each shard publishing its count
        // once a second) and look at where they are.
        let seen = status_lines(&seeder).len();
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until || status_lines(&seeder).len() < seen + 2 {
            assert!(
                Instant::now() < until + Duration::from_secs(5),
                "no status lines\n{}",
                seeder.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
        let lines = status_lines(&seeder);
        on_y = lines[seen..]
            .iter()
            .find(|l| peers_by_shard(l)[y] >= 1)
            .cloned();
        eprintln!(
            "{} scripted peers served; status: {}",
            peers.len(),
            lines.last().unwrap()
        );
        if on_y.is_some() {
            break;
        }
    }
    let Some(line) = on_y else {
        panic!(
            "{} scripted peers were served, and no status line showed one on the restarted \
             shard {y}\n{}",
            peers.len(),
            seeder.logs()
        );
    };
    assert!(
        restarts(&line)[y] == 1 && restarts(&line)[x] == 0,
        "more restarts: {line}"
    );
    drop(peers);

    // The leecher completes, byte-identical, over the one connection it had all along.
    wait_leecher(&mut leecher, LEECH_TIMEOUT);
    assert_same_file(&content, &save.join("payload.bin"));
    let lines = progress_lines(&leecher);
    let start = lines
        .iter()
        .position(|p| p.payload > 0 && p.conns != "-")
        .expect("progress lines");
    let mut last_inc = lines[start].wall;
    let mut prev = lines[start].payload;
    let mut max_gap = 0f64;
    let mut after_restart = 0u64;
    for p in &lines[start..] {
        assert!(
            p.peers >= 1 && p.conns == conn,
            "the leecher's connection changed ({conn} before; now {} with {} peers): {p:?}\n{}\n{}",
            p.conns,
            p.peers,
            leecher.logs(),
            seeder.logs()
        );
        assert!(p.payload >= prev, "payload went back: {p:?}");
        if p.payload > prev || p.payload >= FILE_LEN {
            max_gap = max_gap.max(p.wall - last_inc);
            last_inc = p.wall;
        }
        if p.wall > restart_wall && p.payload > prev {
            after_restart += p.payload - prev;
        }
        prev = p.payload;
    }
    eprintln!(
        "leecher: {} progress lines, longest stretch without payload {max_gap:.2} s, {} MiB \
         received after the restart",
        lines.len() - start,
        after_restart / MIB
    );
    assert!(
        max_gap <= 3.0,
        "the leecher went {max_gap:.2} s without receiving payload\n{}",
        leecher.logs()
    );
    assert!(
        after_restart > 0,
        "the leecher received nothing after the restart"
    );

    // A clean stop: exit 0, and stderr tells the restart.
    let st = seeder.terminate(Duration::from_secs(20));
    let err = seeder.stderr_text();
    match st {
        Some(st) => assert!(st.success(), "the seeder exited {st} on SIGTERM\n{err}"),
        None => panic!("the seeder did not stop within 20 s of SIGTERM\n{err}"),
    }
    assert!(
        err.contains(&format!("shard {y}: injected panic")) && err.contains("child restarted"),
        "stderr does not show shard {y}'s panic and restart\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("stopped:") && !l.contains("gave up")),
        "no `stopped:` line\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) too many restarts stop the process
// ---------------------------------------------------------------------------------------------

#[test]
fn too_many_restarts_stop_the_process() {
    let _t = Timed::new("too_many_restarts_stop_the_process");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let content = data.join("small.bin");
    write_random_file(&content, MIB + 123, 0xB0B);
    let torrent = dir.path().join("small.torrent");
    let out = Command::new(bin())
        .args(["create", "--piece-length", "32768", "-o"])
        .arg(&torrent)
        .arg(&content)
        .output()
        .unwrap();
    assert!(out.status.success(), "uring-bt create failed: {out:?}");
    let info_hash = uring_bt::torrent::load::metainfo_from_file(&torrent)
        .unwrap()
        .info_hash;

    let (mut seeder, addr) = spawn_seeder(
        &torrent,
        &data,
        &["--max-restarts", "2", "--restart-window", "60"],
    );

    // -XPANIC0, -XPANIC1, ... until the process ends by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0usize;
    let mut hung = 0usize;
    while seeder.is_running() {
        assert!(
            Instant::now() < deadline,
            "still running after {attempts} panic connections in 60 s\n{}",
            seeder.logs()
        );
        let before = panics_of(&seeder, 0) + panics_of(&seeder, 1);
        if panic_peer(addr, info_hash, attempts % 2) == Outcome::Hung {
            // see the same note in the test above
            hung += 1;
        }
        attempts += 1;
        let until = Instant::now() + Duration::from_millis(300);
        while panics_of(&seeder, 0) + panics_of(&seeder, 1) == before && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let st = seeder.wait_exit(Duration::from_secs(30));
    let err = seeder.stderr_text();
    let panics = panics_of(&seeder, 0) + panics_of(&seeder, 1);
    eprintln!(
        "exited ({st}) after {attempts} panic connections, {panics} panics; {hung} \
         connection(s) left open, unanswered, for 5 s"
    );
    assert_eq!(st.code(), Some(1), "exit status {st}\n{err}");
    assert!(panics >= 3, "{panics} panics only\n{err}");

    // `error: gave up restarting `shard N`: it would be the 3rd restart within 60s, more than
    // the 2 allowed; its last exit: panicked: shard N: injected panic (test switch)`
    let Some(gave_up) = err
        .lines()
        .find(|l| l.starts_with("error: gave up restarting `shard "))
    else {
        panic!("no `error: gave up restarting` line\n{err}");
    };
    let shard = gave_up["error: gave up restarting `shard ".len()..]
        .split('`')
        .next()
        .unwrap()
        .to_string();
    assert!(shard == "0" || shard == "1", "{gave_up}");
    eprintln!("{gave_up}");
    for part in [
        "the 3rd restart within 60s",
        "more than the 2 allowed",
        &format!("its last exit: panicked: shard {shard}: injected panic"),
    ] {
        assert!(gave_up.contains(part), "`{part}` missing: {gave_up}\n{err}");
    }
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.starts_with("stopped:")
            && last.contains(&format!("gave up: gave up restarting `shard {shard}`")),
        "the last line does not say it gave up: {last}\n{err}"
    );
    // The restarts it did allow: 2, as the status lines count them.
    if let Some(l) = status_lines(&seeder).last() {
        assert!(
            restarts(l).iter().sum::<u64>() <= 2,
            "more than 2 restarts: {l}"
        );
    }
}
