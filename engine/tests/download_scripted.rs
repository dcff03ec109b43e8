//! `uring-bt download` against scripted seeders that connect to *us* (inbound connections):
//! with two shards the kernel spreads them over both listeners, and the ones that land on the
//! shard that is not the download's home must be handed to it (`conn::hand_off`), or they
//! would only be served, never downloaded from. Every peer must contribute pieces.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{bin, unhex20, unique_ip, write_random_file, Proc};
use uring_bt_proto::wire::{self, Handshake, Message, OwnedMessage};

/// A torrent's data and a downloader of it that seeders dial.
struct Target {
    /// the downloader's `listening:` address
    addr: SocketAddr,
    info_hash: [u8; 20],
    data: Arc<Vec<u8>>,
    piece_len: u32,
}

impl Target {
    /// A seeder from a fresh address, for 30 s at most (see `dialing_seeder`).
    fn seeder(&self, rate: u64, unchoke: bool) -> JoinHandle<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        dialing_seeder(unique_ip(), self, rate, deadline, unchoke, false)
    }

    /// A seeder like [`Target::seeder`] that answers each batch of requests it reads in the
    /// reverse order (as a seeder whose disk reads complete out of order does).
    fn reversing_seeder(&self) -> JoinHandle<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        dialing_seeder(unique_ip(), self, 1 << 30, deadline, true, true)
    }
}

/// A seeder that dials `t` from `ip`, offers every piece (unchoking, or else allowing every
/// piece fast) and answers requests from its data, at most `rate` bytes per second (with
/// `reverse`, each batch of requests read at once in the reverse order); it stops at
/// `deadline` or when the peer closes.
fn dialing_seeder(
    ip: Ipv4Addr,
    t: &Target,
    rate: u64,
    deadline: Instant,
    unchoke: bool,
    reverse: bool,
) -> JoinHandle<()> {
    let (target, info_hash, data, piece_len) = (t.addr, t.info_hash, t.data.clone(), t.piece_len);
    std::thread::spawn(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::new(ip.into(), 0).into())
            .expect("bind");
        sock.connect(&target.into())
            .expect("connect to our downloader");
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut id = [b'x'; 20];
        id[..8].copy_from_slice(b"-SC0001-");
        id[8..12].copy_from_slice(&ip.octets());
        let hs = Handshake::new(info_hash, id);
        let mut out = Vec::new();
        wire::encode_handshake(&hs, &mut out);
        wire::encode(&OwnedMessage::HaveAll.as_message(), &mut out);
        if unchoke {
            wire::encode(&OwnedMessage::Unchoke.as_message(), &mut out);
        } else {
            // Never unchoke; allow every piece fast instead (BEP 6).
            let pieces = (data.len() as u64).div_ceil(u64::from(piece_len)) as u32;
            for p in 0..pieces {
                wire::encode(&OwnedMessage::AllowedFast(p).as_message(), &mut out);
            }
        }
        s.write_all(&out).expect("write opening");
        let mut buf = Vec::new();
        let mut got_hs = false;
        let started = Instant::now();
        let mut budget_sent = 0u64;
        let mut tmp = vec![0u8; 64 << 10];
        // With `reverse`: requests answered in batches of REVERSED_BATCH, each last first
        // (what is pending when a read waits 200 ms, too).
        const REVERSED_BATCH: usize = 48;
        let mut asked = Vec::new();
        while Instant::now() < deadline {
            let mut idle = false;
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    idle = true
                }
                Err(_) => return,
            }
            if !got_hs {
                if buf.len() < 68 {
                    continue;
                }
                buf.drain(..68);
                got_hs = true;
            }
            while let Ok(Some((msg, n))) = wire::decode(&buf, 1 << 20) {
                if let Message::Request(b) = msg {
                    asked.push(b);
                }
                buf.drain(..n);
            }
            let answer: Vec<_> = if !reverse {
                std::mem::take(&mut asked)
            } else if idle {
                asked.drain(..).rev().collect()
            } else {
                // Whole batches only, each last first; the rest waits for more requests.
                let whole = asked.len() / REVERSED_BATCH * REVERSED_BATCH;
                let mut v: Vec<_> = asked.drain(..whole).collect();
                for batch in v.chunks_mut(REVERSED_BATCH) {
                    batch.reverse();
                }
                v
            };
            let mut replies = Vec::new();
            for b in answer {
                let start = u64::from(b.piece) * u64::from(piece_len) + u64::from(b.begin);
                let end = start + u64::from(b.len);
                if let Some(d) = data.get(start as usize..end as usize) {
                    wire::encode(
                        &Message::Piece {
                            piece: b.piece,
                            begin: b.begin,
                            data: d,
                        },
                        &mut replies,
                    );
                    budget_sent += u64::from(b.len);
                }
            }
            if !replies.is_empty() {
                if s.write_all(&replies).is_err() {
                    return;
                }
                // Pace: never ahead of `rate`.
                let due = Duration::from_secs_f64(budget_sent as f64 / rate as f64);
                let el = started.elapsed();
                if due > el {
                    std::thread::sleep(due - el);
                }
            }
        }
    })
}

/// The value of `key=value` in a line of `download`'s output.
fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn info_hash_hex(p: &mut Proc) -> [u8; 20] {
    let line = p.wait_line("info_hash:", Duration::from_secs(20));
    unhex20(line.split_whitespace().next().expect("hex"))
}

/// The `have=` of the last `progress:` line printed so far.
fn last_have(p: &Proc) -> Option<u64> {
    p.stdout_lines()
        .iter()
        .rev()
        .find(|l| l.starts_with("progress:"))
        .and_then(|l| kv(l, "have"))
        .and_then(|v| v.parse().ok())
}

/// A temp dir with `<name>.bin`, `len` seeded random bytes, and `<name>.torrent` of it made by
/// `uring-bt create` in `piece_len` pieces.
struct Payload {
    dir: tempfile::TempDir,
    file: PathBuf,
    torrent: PathBuf,
    piece_len: u32,
    /// where downloads of it go (`out` in the temp dir)
    out: PathBuf,
}

impl Payload {
    fn new(name: &str, len: u64, seed: u64, piece_len: u32) -> Payload {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(format!("{name}.bin"));
        write_random_file(&file, len, seed);
        let torrent = dir.path().join(format!("{name}.torrent"));
        let mut c = std::process::Command::new(bin());
        c.args(["create", "--piece-length", &piece_len.to_string()])
            .arg(&file)
            .arg("-o")
            .arg(&torrent);
        common::run_ok("create", c, Duration::from_secs(60));
        let out = dir.path().join("out");
        Payload {
            dir,
            file,
            torrent,
            piece_len,
            out,
        }
    }

    /// Starts `uring-bt download <torrent> -o OUT --no-announce ARGS... --listen <fresh
    /// 127.x>:0`; returns it, once it printed `listening:` and `info_hash:`, and what seeders
    /// need to dial it.
    fn download(&self, out: &Path, args: &[&str]) -> (Proc, Target) {
        self.download_env(out, args, &[])
    }

    /// [`Payload::download`] with environment variables set for the downloader.
    fn download_env(&self, out: &Path, args: &[&str], env: &[(&str, &str)]) -> (Proc, Target) {
        let ip = unique_ip();
        let mut cmd = std::process::Command::new(bin());
        cmd.envs(env.iter().copied());
        cmd.arg("download")
            .arg(&self.torrent)
            .arg("-o")
            .arg(out)
            .arg("--no-announce")
            .args(args)
            .arg("--listen")
            .arg(format!("{ip}:0"));
        let mut dl = Proc::spawn("uring-bt download", cmd);
        let addr = dl.wait_addr("listening:", Duration::from_secs(20));
        let t = Target {
            addr,
            info_hash: info_hash_hex(&mut dl),
            data: Arc::new(std::fs::read(&self.file).expect("read source")),
            piece_len: self.piece_len,
        };
        (dl, t)
    }
}

#[test]
fn inbound_seeders_on_both_shards_all_contribute() {
    let p = Payload::new("in", 24 << 20, 7, 65536);
    let args = ["--shards", "2", "--no-resume", "--status-interval", "0.5"];
    let (mut dl, t) = p.download(&p.out, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Eight seeders from eight addresses: with two SO_REUSEPORT listeners, the chance that all
    // land on the home shard (and the hand-off goes untested) is 1 / 2^8.
    let mut ips = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..8 {
        let sip = unique_ip();
        ips.push(sip);
        threads.push(dialing_seeder(sip, &t, 2 << 20, deadline, true, false));
    }
    // Peers that connect and send nothing but a handshake get no record (a peer connecting
    // from ever new ports must not grow the download's per-address records).
    let mut silent = Vec::new();
    let silent_ip = unique_ip();
    for _ in 0..20 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::new(silent_ip.into(), 0).into())
            .expect("bind");
        sock.connect(&t.addr.into()).expect("connect");
        let mut s: TcpStream = sock.into();
        let mut hs = Vec::new();
        wire::encode_handshake(&Handshake::new(t.info_hash, [b's'; 20]), &mut hs);
        s.write_all(&hs).expect("handshake");
        silent.push(s);
    }
    let complete = dl.wait_line("complete:", Duration::from_secs(60));
    assert_eq!(kv(&complete, "resumed"), Some("0"), "{complete}");
    let status = dl.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "download failed: {}", dl.logs());
    common::assert_same_file(&p.file, &p.out.join("in.bin"));
    let lines = dl.stdout_lines();
    let peers: Vec<&String> = lines.iter().filter(|l| l.starts_with("peer:")).collect();
    for sip in &ips {
        let line = peers
            .iter()
            .find(|l| kv(l, "addr").is_some_and(|a| a.starts_with(&format!("{sip}:"))))
            .unwrap_or_else(|| panic!("no peer line for {sip}: {peers:?}\n{}", dl.logs()));
        let pieces: u64 = kv(line, "pieces").and_then(|p| p.parse().ok()).unwrap_or(0);
        assert!(
            pieces > 0,
            "{sip} contributed nothing (not handed to the home shard?): {line}"
        );
    }
    assert!(
        !peers
            .iter()
            .any(|l| kv(l, "addr").is_some_and(|a| a.starts_with(&format!("{silent_ip}:")))),
        "silent peers got records: {peers:?}"
    );
    drop(silent);
    for t in threads {
        let _ = t.join();
    }
}

/// A tmpfs of `size` mounted at `at` for the test's life (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir mount point");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {} (needs root)", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root to mount a tmpfs: scripts/test runs it (cargo test -- --include-ignored)"]
fn a_full_disk_stops_the_download_with_a_clear_error_and_keeps_verified_pieces() {
    let p = Payload::new("big", 16 << 20, 11, 65536);
    // 16 MiB of data onto a 6 MiB file system.
    let mnt = p.dir.path().join("small");
    let fs = Tmpfs::mount(&mnt, "6m");
    let args = ["--shards", "1", "--no-resume", "--status-interval", "0.2"];
    let (mut dl, t) = p.download(&mnt, &args);
    let seeder = t.seeder(64 << 20, true);
    let status = dl.wait_exit(Duration::from_secs(40));
    assert_eq!(
        status.code(),
        Some(1),
        "exit 1 on a full disk: {}",
        dl.logs()
    );
    let err = dl.stderr_text();
    assert!(
        err.contains("cannot write big.bin") && err.to_lowercase().contains("space"),
        "a clear error naming the file and the full disk: {err}"
    );
    let lines = dl.stdout_lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("complete:")),
        "never complete"
    );
    let have = last_have(&dl).expect("a progress line");
    assert!(have > 0, "some pieces were verified before the disk filled");
    // What it reported as verified is intact on disk.
    let mut v = std::process::Command::new(bin());
    v.args(["verify", "--json"]).arg(&p.torrent).arg(&mnt);
    let out = common::run("verify", v, Duration::from_secs(60));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("verify --json output");
    let good = json["good"].as_u64().expect("good count");
    assert!(
        good >= have,
        "{good} good pieces on disk, {have} reported verified"
    );
    let _ = seeder.join();
    drop(fs);
}

#[test]
fn the_download_rate_limit_holds() {
    let p = Payload::new("slow", 8 << 20, 13, 65536);
    let args = ["--shards", "1", "--no-resume", "--max-download-rate", "2M"];
    let (mut dl, t) = p.download(&p.out, &args);
    let started = Instant::now();
    let seeder = t.seeder(1 << 30, true);
    let complete = dl.wait_line("complete:", Duration::from_secs(30));
    let secs = started.elapsed().as_secs_f64();
    // 8 MiB at 2 MiB/s: 4 s, less the one second's worth the bucket may start with.
    assert!(
        secs >= 2.8,
        "8 MiB in {secs:.2} s under a 2 MiB/s limit: {complete}"
    );
    assert!(dl.wait_exit(Duration::from_secs(20)).success());
    common::assert_same_file(&p.file, &p.out.join("slow.bin"));
    let _ = seeder.join();
}

#[test]
fn a_choking_peer_that_allows_pieces_fast_is_downloaded_from() {
    let p = Payload::new("fast", 1 << 20, 17, 65536);
    let (mut dl, t) = p.download(&p.out, &["--shards", "1", "--no-resume"]);
    // a seeder that never unchokes
    let seeder = t.seeder(1 << 30, false);
    dl.wait_line("complete:", Duration::from_secs(30));
    assert!(dl.wait_exit(Duration::from_secs(20)).success());
    common::assert_same_file(&p.file, &p.out.join("fast.bin"));
    let _ = seeder.join();
}

/// The numbers after `key` on the download's debug line (up to `stop`, or the line's end).
fn debug_figures(stderr: &str, key: &str, stop: Option<char>, want: usize) -> Vec<u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no `{key}` line in the downloader's stderr:\n{stderr}"));
    let after = line.split(key).nth(1).unwrap_or_default();
    let part = stop.map_or(after, |c| after.split(c).next().unwrap_or_default());
    let nums: Vec<u64> = part
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() >= want, "unexpected `{key}` line: {line}");
    nums
}

/// The `hashing:` figures of a download's debug line: (sixteen at once, one by one, bytes read
/// back, blocks written, writes).
fn hashing_figures(stderr: &str) -> (u64, u64, u64, u64, u64) {
    // "N blocks sixteen at once, M one by one, B bytes read back; writing: W blocks in O
    // writes" ("sixteen" is a word).
    let n = debug_figures(stderr, "hashing: ", None, 5);
    (n[0], n[1], n[2], n[3], n[4])
}

/// A seeder that sends each batch of blocks in the reverse order of our requests: the blocks
/// that come before their gap wait in the stage (bounded) until it fills, so almost nothing is
/// read back from disk to hash, with the sixteen-lane hash and without; contiguous blocks are
/// written as runs (fewer writes than blocks); the data is intact.
#[test]
fn blocks_sent_out_of_order_are_hashed_as_they_arrive_not_read_back() {
    // (hash lanes, pool buffers): with 8 buffers the stage holds at most 2 blocks (a quarter
    // of the pool), far fewer than a reversed batch: early blocks past the bound are written
    // unhashed and their pieces hashed from disk at the end, intact all the same.
    for (lanes, buffers) in [("off", "256"), ("on", "256"), ("off", "8")] {
        let p = Payload::new("rev", 16 << 20, 23, 262_144);
        let args = [
            "--shards",
            "1",
            "--no-resume",
            "--hash-lanes",
            lanes,
            "--buffers",
            buffers,
        ];
        let env = [("RUST_LOG", "uring_bt::server::download=debug")];
        let (mut dl, t) = p.download_env(&p.out, &args, &env);
        let seeder = t.reversing_seeder();
        dl.wait_line("complete:", Duration::from_secs(60));
        assert!(dl.wait_exit(Duration::from_secs(20)).success());
        common::assert_same_file(&p.file, &p.out.join("rev.bin"));
        let _ = seeder.join();
        let (sixteen, single, read_back, written, writes) = hashing_figures(&dl.stderr_text());
        let blocks = (16u64 << 20) / 16_384;
        eprintln!(
            "lanes {lanes}, {buffers} buffers: {sixteen} blocks sixteen at once, {single} one by one, {read_back} bytes read back; {written} blocks in {writes} writes"
        );
        assert_eq!(written, blocks, "every block written once");
        assert!(writes <= blocks, "{writes} writes for {blocks} blocks");
        // Everything hashed exactly once: in memory, or read back.
        assert_eq!(
            (sixteen + single) * 16_384 + read_back,
            16 << 20,
            "lanes {lanes}: {sixteen} + {single} blocks hashed and {read_back} bytes read back"
        );
        if buffers == "8" {
            assert!(
                read_back > 0,
                "a 2-block stage cannot hold a reversed batch, yet nothing was read back ({sixteen} sixteen at once, {single} one by one)"
            );
            continue;
        }
        // Reordering within a batch is what the stage absorbs: at most 1/8 read back (before
        // the stage held early blocks, a piece's first late block sent the rest to disk).
        assert!(
            read_back <= (16 << 20) / 8,
            "lanes {lanes}: {read_back} bytes read back of {} blocks ({sixteen} sixteen at once, {single} one by one)",
            blocks
        );
        if lanes == "off" {
            // One piece at a time: contiguous blocks are written as runs of up to 16.
            assert!(
                writes * 4 <= blocks,
                "lanes off: {writes} writes for {blocks} blocks: runs were not coalesced"
            );
        }
        if lanes == "on" {
            assert!(
                sixteen >= blocks / 2,
                "lanes on: only {sixteen} of {blocks} blocks hashed sixteen at once"
            );
        }
    }
}

/// The `receiving:` figures of a download's debug line: (blocks received straight into pool
/// buffers, blocks copied there).
fn receiving_figures(stderr: &str) -> (u64, u64) {
    let n = debug_figures(stderr, "receiving: ", Some(';'), 2);
    (n[0], n[1])
}

/// `--recv-path direct`: PIECE payloads land straight in pool buffers (vectored reads, the
/// headers into the receive buffer), from seeders that answer in order and in reverse, each
/// dialing in from its own address; with 8 buffers the scattered reads hold at most one of
/// them (a sixteenth of the pool, at least one). The data is intact every way, and the default
/// path copies.
#[test]
fn payloads_received_straight_into_pool_buffers_arrive_intact() {
    let blocks = (16u64 << 20) / 16_384;
    for (path, buffers) in [("direct", "256"), ("direct", "8"), ("copy", "256")] {
        let p = Payload::new("direct", 16 << 20, 29, 262_144);
        let args = [
            "--shards",
            "1",
            "--no-resume",
            "--recv-path",
            path,
            "--buffers",
            buffers,
        ];
        let env = [("RUST_LOG", "uring_bt::server::download=debug")];
        let (mut dl, t) = p.download_env(&p.out, &args, &env);
        let seeders = [t.reversing_seeder(), t.seeder(1 << 30, true)];
        dl.wait_line("complete:", Duration::from_secs(60));
        assert!(dl.wait_exit(Duration::from_secs(20)).success());
        common::assert_same_file(&p.file, &p.out.join("direct.bin"));
        for s in seeders {
            let _ = s.join();
        }
        let (direct, copied) = receiving_figures(&dl.stderr_text());
        eprintln!("{path}, {buffers} buffers: {direct} blocks straight into pool buffers, {copied} copied");
        assert!(
            direct + copied >= blocks,
            "{direct} + {copied} of {blocks} blocks"
        );
        match (path, buffers) {
            ("copy", _) => assert_eq!(direct, 0, "the copy path received {direct} in place"),
            (_, "256") => assert!(
                direct * 10 >= blocks * 9,
                "only {direct} of {blocks} blocks straight into pool buffers ({copied} copied)"
            ),
            // One scattered read of one block at a time on the shard (a sixteenth of 8
            // buffers, at least one): still most blocks (measured: all 1,024).
            _ => assert!(
                direct * 2 >= blocks,
                "8 buffers: only {direct} of {blocks} blocks straight into pool buffers"
            ),
        }
    }
}

/// The last `progress:` line's `key=` value.
fn last_progress(p: &Proc, key: &str) -> Option<u64> {
    p.stdout_lines()
        .iter()
        .rev()
        .find(|l| l.starts_with("progress:"))
        .and_then(|l| kv(l, key))
        .and_then(|v| v.parse().ok())
}

/// A download stopped by SIGTERM half-way keeps what it had: with pieces fetched one after
/// another (`--hash-lanes off`) whole pieces and the written blocks of the piece in progress;
/// with sixteen pieces striped (`--hash-lanes on`, the default on AVX-512), mostly the written
/// blocks of the sixteen partial pieces. The second run fetches exactly what was missing.
#[test]
fn a_clean_stop_keeps_the_written_blocks_of_partial_pieces_and_nothing_is_fetched_twice() {
    for lanes in ["off", "on"] {
        clean_stop_and_resume(lanes);
    }
}

fn clean_stop_and_resume(lanes: &str) {
    let total = 16u64 << 20;
    let piece = 1u64 << 20;
    let p = Payload::new("part", total, 19, piece as u32);
    let state = p.dir.path().join("state");
    // with resume data in `state`
    let state_arg = state.to_str().unwrap();
    let args = [
        "--state-dir",
        state_arg,
        "--shards",
        "1",
        "--status-interval",
        "0.2",
        "--hash-lanes",
        lanes,
    ];

    // Run 1: a slow seeder (4 MiB/s, 1 MiB pieces: pieces are in progress at any moment),
    // stopped with SIGTERM once 4 pieces are had (lanes off) or 6 MiB arrived (lanes on: the
    // sixteen striped pieces complete together near the end).
    let (mut dl, t) = p.download(&p.out, &args);
    let s1 = t.seeder(4 << 20, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let far = if lanes == "off" {
            last_have(&dl).unwrap_or(0) >= 4
        } else {
            last_progress(&dl, "downloaded").unwrap_or(0) >= 6 << 20
        };
        if far {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {}", dl.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = dl
        .terminate(Duration::from_secs(15))
        .expect("stops on SIGTERM");
    assert_eq!(
        st.code(),
        Some(1),
        "lanes {lanes}: stopped before complete: {}",
        dl.logs()
    );
    let _ = s1.join();

    // Run 2: every byte still missing is fetched once, and only those.
    let (mut dl2, t) = p.download(&p.out, &args);
    let s2 = t.seeder(1 << 30, true);
    let complete = dl2.wait_line("complete:", Duration::from_secs(30));
    assert!(
        dl2.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        dl2.logs()
    );
    common::assert_same_file(&p.file, &p.out.join("part.bin"));
    let num = |k: &str| -> u64 {
        kv(&complete, k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k}= in {complete}"))
    };
    let (resumed, partial, downloaded, wasted) = (
        num("resumed"),
        num("partial"),
        num("downloaded"),
        num("wasted"),
    );
    if lanes == "off" {
        assert!(resumed >= 4, "{complete}");
        assert!(partial > 0, "no partial piece kept: {complete}");
    } else {
        // Most of the 6 MiB is kept, as whole pieces or as written blocks of partial ones
        // (what was in flight, staged or held at the stop is fetched again).
        assert!(
            resumed * piece + partial >= 4 << 20,
            "lanes on: kept too little: {complete}"
        );
    }
    assert_eq!(
        downloaded - wasted,
        total - resumed * piece - partial,
        "lanes {lanes}: fetched exactly what was missing: {complete}"
    );
    let _ = s2.join();
}
