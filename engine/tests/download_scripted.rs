//! `uring-bt download` against scripted seeders that connect to *us* (inbound connections):
//! with two shards the kernel spreads them over both listeners, and the ones that land on the
//! shard that is not the download's home must be handed to it (`conn::hand_off`), or they
//! would only be served, never downloaded from. Every peer must contribute pieces.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bin, unique_ip, write_random_file, Proc};
use uring_bt_proto::wire::{self, Handshake, Message, OwnedMessage};

/// A seeder that dials `target` from `ip`, offers every piece and answers requests from `data`,
/// at most `rate` bytes per second; it stops at `deadline` or when the peer closes.
#[allow(clippy::too_many_arguments)]
fn dialing_seeder(
    ip: Ipv4Addr,
    target: SocketAddr,
    info_hash: [u8; 20],
    data: Arc<Vec<u8>>,
    piece_len: u32,
    rate: u64,
    deadline: Instant,
    sent: Arc<AtomicU64>,
    unchoke: bool,
) -> std::thread::JoinHandle<()> {
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
        while Instant::now() < deadline {
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
            if !got_hs {
                if buf.len() < 68 {
                    continue;
                }
                buf.drain(..68);
                got_hs = true;
            }
            let mut replies = Vec::new();
            while let Ok(Some((msg, n))) = wire::decode(&buf, 1 << 20) {
                if let Message::Request(b) = msg {
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
                buf.drain(..n);
            }
            if !replies.is_empty() {
                if s.write_all(&replies).is_err() {
                    return;
                }
                sent.fetch_add(replies.len() as u64, Ordering::Relaxed);
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

fn info_hash_hex(p: &Proc) -> [u8; 20] {
    let line = p
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("info_hash:"))
        .expect("info_hash line");
    let hex = line.split_whitespace().nth(1).expect("hex");
    let mut ih = [0u8; 20];
    for (i, b) in ih.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digit");
    }
    ih
}

#[test]
fn inbound_seeders_on_both_shards_all_contribute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let file = src.join("in.bin");
    let size = 24u64 << 20;
    write_random_file(&file, size, 7);
    let torrent = dir.path().join("in.torrent");
    let mut c = std::process::Command::new(bin());
    c.args(["create", "--piece-length", "65536"])
        .arg(&file)
        .arg("-o")
        .arg(&torrent);
    common::run_ok("create", c, Duration::from_secs(60));
    let out = dir.path().join("out");
    let ip = unique_ip();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out)
        .args([
            "--shards",
            "2",
            "--no-resume",
            "--no-announce",
            "--status-interval",
            "0.5",
        ])
        .arg("--listen")
        .arg(format!("{ip}:0"));
    let mut dl = Proc::spawn("uring-bt download", cmd);
    let listening = dl.wait_line("listening:", Duration::from_secs(20));
    let target: SocketAddr = listening
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    let ih = info_hash_hex(&dl);
    let data = Arc::new(std::fs::read(&file).expect("read source"));
    let deadline = Instant::now() + Duration::from_secs(60);
    // Eight seeders from eight addresses: with two SO_REUSEPORT listeners, the chance that all
    // land on the home shard (and the hand-off goes untested) is 1 / 2^8.
    let mut ips = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..8 {
        let sip = unique_ip();
        ips.push(sip);
        threads.push(dialing_seeder(
            sip,
            target,
            ih,
            data.clone(),
            65536,
            2 << 20,
            deadline,
            Arc::new(AtomicU64::new(0)),
            true,
        ));
    }
    let complete = dl.wait_line("complete:", Duration::from_secs(60));
    assert_eq!(kv(&complete, "resumed"), Some("0"), "{complete}");
    let status = dl.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "download failed: {}", dl.logs());
    common::assert_same_file(&file, &out.join("in.bin"));
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
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.bin");
    write_random_file(&file, 16 << 20, 11);
    let torrent = dir.path().join("big.torrent");
    let mut c = std::process::Command::new(bin());
    c.args(["create", "--piece-length", "65536"])
        .arg(&file)
        .arg("-o")
        .arg(&torrent);
    common::run_ok("create", c, Duration::from_secs(60));
    // 16 MiB of data onto a 6 MiB file system.
    let mnt = dir.path().join("small");
    let fs = Tmpfs::mount(&mnt, "6m");
    let ip = unique_ip();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&mnt)
        .args([
            "--shards",
            "1",
            "--no-resume",
            "--no-announce",
            "--status-interval",
            "0.2",
        ])
        .arg("--listen")
        .arg(format!("{ip}:0"));
    let mut dl = Proc::spawn("uring-bt download", cmd);
    let listening = dl.wait_line("listening:", Duration::from_secs(20));
    let target: SocketAddr = listening
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    let ih = info_hash_hex(&dl);
    let data = Arc::new(std::fs::read(&file).expect("read source"));
    let seeder = dialing_seeder(
        unique_ip(),
        target,
        ih,
        data,
        65536,
        64 << 20,
        Instant::now() + Duration::from_secs(30),
        Arc::new(AtomicU64::new(0)),
        true,
    );
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
    let have: u64 = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("progress:"))
        .and_then(|l| kv(l, "have"))
        .and_then(|v| v.parse().ok())
        .expect("a progress line");
    assert!(have > 0, "some pieces were verified before the disk filled");
    // What it reported as verified is intact on disk.
    let mut v = std::process::Command::new(bin());
    v.args(["verify", "--json"]).arg(&torrent).arg(&mnt);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("slow.bin");
    write_random_file(&file, 8 << 20, 13);
    let torrent = dir.path().join("slow.torrent");
    let mut c = std::process::Command::new(bin());
    c.args(["create", "--piece-length", "65536"])
        .arg(&file)
        .arg("-o")
        .arg(&torrent);
    common::run_ok("create", c, Duration::from_secs(60));
    let ip = unique_ip();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(dir.path().join("out"))
        .args(["--shards", "1", "--no-resume", "--no-announce"])
        .args(["--max-download-rate", "2M"])
        .arg("--listen")
        .arg(format!("{ip}:0"));
    let mut dl = Proc::spawn("uring-bt download", cmd);
    let listening = dl.wait_line("listening:", Duration::from_secs(20));
    let target: SocketAddr = listening
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    let ih = info_hash_hex(&dl);
    let data = Arc::new(std::fs::read(&file).expect("read source"));
    let started = Instant::now();
    let seeder = dialing_seeder(
        unique_ip(),
        target,
        ih,
        data,
        65536,
        1 << 30,
        Instant::now() + Duration::from_secs(30),
        Arc::new(AtomicU64::new(0)),
        true,
    );
    let complete = dl.wait_line("complete:", Duration::from_secs(30));
    let secs = started.elapsed().as_secs_f64();
    // 8 MiB at 2 MiB/s: 4 s, less the one second's worth the bucket may start with.
    assert!(
        secs >= 2.8,
        "8 MiB in {secs:.2} s under a 2 MiB/s limit: {complete}"
    );
    assert!(dl.wait_exit(Duration::from_secs(20)).success());
    common::assert_same_file(&file, &dir.path().join("out/slow.bin"));
    let _ = seeder.join();
}

#[test]
fn a_choking_peer_that_allows_pieces_fast_is_downloaded_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fast.bin");
    write_random_file(&file, 1 << 20, 17);
    let torrent = dir.path().join("fast.torrent");
    let mut c = std::process::Command::new(bin());
    c.args(["create", "--piece-length", "65536"])
        .arg(&file)
        .arg("-o")
        .arg(&torrent);
    common::run_ok("create", c, Duration::from_secs(60));
    let ip = unique_ip();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(dir.path().join("out"))
        .args(["--shards", "1", "--no-resume", "--no-announce"])
        .arg("--listen")
        .arg(format!("{ip}:0"));
    let mut dl = Proc::spawn("uring-bt download", cmd);
    let listening = dl.wait_line("listening:", Duration::from_secs(20));
    let target: SocketAddr = listening
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    let ih = info_hash_hex(&dl);
    let data = Arc::new(std::fs::read(&file).expect("read source"));
    let seeder = dialing_seeder(
        unique_ip(),
        target,
        ih,
        data,
        65536,
        1 << 30,
        Instant::now() + Duration::from_secs(30),
        Arc::new(AtomicU64::new(0)),
        false,
    );
    dl.wait_line("complete:", Duration::from_secs(30));
    assert!(dl.wait_exit(Duration::from_secs(20)).success());
    common::assert_same_file(&file, &dir.path().join("out/fast.bin"));
    let _ = seeder.join();
}

/// Starts `uring-bt download` of `torrent` into `out` with resume data in `state`; returns it
/// and the address it listens on.
fn start_download(
    torrent: &std::path::Path,
    out: &std::path::Path,
    state: &std::path::Path,
) -> (Proc, SocketAddr) {
    let ip = unique_ip();
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("download")
        .arg(torrent)
        .arg("-o")
        .arg(out)
        .arg("--state-dir")
        .arg(state)
        .args(["--shards", "1", "--no-announce", "--status-interval", "0.2"])
        .arg("--listen")
        .arg(format!("{ip}:0"));
    let mut dl = Proc::spawn("uring-bt download", cmd);
    let listening = dl.wait_line("listening:", Duration::from_secs(20));
    let target: SocketAddr = listening
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("listening address");
    (dl, target)
}

#[test]
fn a_clean_stop_keeps_the_written_blocks_of_partial_pieces_and_nothing_is_fetched_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("part.bin");
    let total = 16u64 << 20;
    let piece = 1u64 << 20;
    write_random_file(&file, total, 19);
    let torrent = dir.path().join("part.torrent");
    let mut c = std::process::Command::new(bin());
    c.args(["create", "--piece-length", &piece.to_string()])
        .arg(&file)
        .arg("-o")
        .arg(&torrent);
    common::run_ok("create", c, Duration::from_secs(60));
    let out = dir.path().join("out");
    let state = dir.path().join("state");
    let data = Arc::new(std::fs::read(&file).expect("read source"));

    // Run 1: a slow seeder (4 MiB/s, 1 MiB pieces: pieces are in progress at any moment),
    // stopped with SIGTERM once 4 pieces are had.
    let (mut dl, target) = start_download(&torrent, &out, &state);
    let ih = info_hash_hex(&dl);
    let s1 = dialing_seeder(
        unique_ip(),
        target,
        ih,
        data.clone(),
        piece as u32,
        4 << 20,
        Instant::now() + Duration::from_secs(30),
        Arc::new(AtomicU64::new(0)),
        true,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have: u64 = dl
            .stdout_lines()
            .iter()
            .rev()
            .find(|l| l.starts_with("progress:"))
            .and_then(|l| kv(l, "have"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if have >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {}", dl.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = dl
        .terminate(Duration::from_secs(15))
        .expect("stops on SIGTERM");
    assert_eq!(st.code(), Some(1), "stopped before complete: {}", dl.logs());
    let _ = s1.join();

    // Run 2: every byte still missing is fetched once, and only those.
    let (mut dl2, target) = start_download(&torrent, &out, &state);
    let s2 = dialing_seeder(
        unique_ip(),
        target,
        ih,
        data,
        piece as u32,
        1 << 30,
        Instant::now() + Duration::from_secs(30),
        Arc::new(AtomicU64::new(0)),
        true,
    );
    let complete = dl2.wait_line("complete:", Duration::from_secs(30));
    assert!(
        dl2.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        dl2.logs()
    );
    common::assert_same_file(&file, &out.join("part.bin"));
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
    assert!(resumed >= 4, "{complete}");
    assert!(partial > 0, "no partial piece kept: {complete}");
    assert_eq!(
        downloaded - wasted,
        total - resumed * piece - partial,
        "fetched exactly what was missing: {complete}"
    );
    let _ = s2.join();
}
