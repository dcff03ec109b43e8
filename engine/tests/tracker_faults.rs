//! `uring-bt seed` keeps serving through every kind of broken tracker: each fault is a tracker
//! of its own (one tier each, so the announcer fails over through all of them), run by this
//! test on 127.0.0.1, while a real libtorrent leecher given the seeder's address downloads the
//! data intact. The status line names each tracker's error, and the process stops cleanly.
//!
//! Faults: unreachable (a closed port), HTTP 500, a `failure reason`, a malformed body, a
//! truncated body, an oversized body, a redirect loop; a UDP tracker that never answers, and
//! one that answers with a wrong transaction id and a wrong action only.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Http500,
    Failure,
    Malformed,
    Truncated,
    Oversized,
    RedirectLoop,
}

/// One fake HTTP tracker answering every request with `fault`; counts the requests.
fn http_tracker(fault: Fault, stop: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let (mut s, _) = match l.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            hits.fetch_add(1, Ordering::Relaxed);
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let _ = answer(&mut s, fault, port);
        }
    });
    format!("http://127.0.0.1:{port}/announce")
}

fn answer(s: &mut TcpStream, fault: Fault, port: u16) -> std::io::Result<()> {
    let ok = |body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let bytes = match fault {
        Fault::Http500 => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        Fault::Failure => ok(b"d14:failure reason19:torrent not allowede"),
        Fault::Malformed => ok(b"d8:intervali1800e5:peers6:abce"),
        Fault::Truncated => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\nd8:intervali1800e5:peers"
                .to_vec()
        }
        Fault::Oversized => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                64 << 20
            );
            s.write_all(head.as_bytes())?;
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..1024 {
                s.write_all(&chunk)?;
            }
            return Ok(());
        }
        Fault::RedirectLoop => format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{port}/announce?again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    };
    s.write_all(&bytes)
}

/// A UDP tracker that never answers (`mode` 0), or answers every datagram with a wrong
/// transaction id and then a wrong action (`mode` 1). Counts datagrams.
fn udp_tracker(mode: u8, stop: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = s.recv_from(&mut buf) else {
                continue;
            };
            hits.fetch_add(1, Ordering::Relaxed);
            if mode == 1 && n >= 16 {
                let txid = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
                // A connect reply with another transaction id...
                let mut r = Vec::new();
                r.extend_from_slice(&0u32.to_be_bytes());
                r.extend_from_slice(&txid.wrapping_add(1).to_be_bytes());
                r.extend_from_slice(&7u64.to_be_bytes());
                let _ = s.send_to(&r, from);
                // ...and one with the right id but the scrape action.
                let mut r = Vec::new();
                r.extend_from_slice(&2u32.to_be_bytes());
                r.extend_from_slice(&txid.to_be_bytes());
                r.extend_from_slice(&7u64.to_be_bytes());
                let _ = s.send_to(&r, from);
            }
        }
    });
    format!("udp://127.0.0.1:{port}/announce")
}

#[test]
fn the_seeder_serves_through_every_tracker_fault() {
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let name = "faults.bin";
    write_random_file(&data.join(name), 8 * 1024 * 1024 + 333, 41);
    let torrent = dir.path().join("faults.torrent");
    let info_hash = lt_create(&data.join(name), &torrent, 256 * 1024);

    let stop = Arc::new(AtomicBool::new(false));
    let mut trackers = Vec::new();
    let mut counters = Vec::new();
    // Unreachable: a port bound and closed again.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    trackers.push(format!("http://127.0.0.1:{closed_port}/announce"));
    for fault in [
        Fault::Http500,
        Fault::Failure,
        Fault::Malformed,
        Fault::Truncated,
        Fault::Oversized,
        Fault::RedirectLoop,
    ] {
        let hits = Arc::new(AtomicUsize::new(0));
        trackers.push(http_tracker(fault, stop.clone(), hits.clone()));
        counters.push((format!("{fault:?}"), hits));
    }
    for (mode, what) in [(0u8, "udp-silent"), (1, "udp-wrong")] {
        let hits = Arc::new(AtomicUsize::new(0));
        trackers.push(udp_tracker(mode, stop.clone(), hits.clone()));
        counters.push((what.to_string(), hits));
    }

    let mut cmd = std::process::Command::new(bin());
    cmd.arg("seed")
        .arg(&torrent)
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--no-resume", "--no-pin"])
        .args(["--status-interval", "1", "--stop-timeout", "3"])
        // BEP 15's schedule from 1 s instead of 15 s, one retransmission: 1 + 2 s per tracker.
        .args(["--udp-timeout", "1", "--udp-retries", "1"]);
    for t in &trackers {
        cmd.arg("--tracker").arg(t);
    }
    cmd.env("RUST_LOG", "uring_bt::announce=info")
        .env("NO_COLOR", "1");
    let mut seeder = Proc::spawn("uring-bt seed (faulty trackers)", cmd);
    let line = seeder.wait_line("listening:", Duration::from_secs(60));
    let addr: std::net::SocketAddr = line.split_whitespace().next().unwrap().parse().unwrap();

    // A real leecher given our address downloads intact while the trackers misbehave.
    let save = dir.path().join("dl");
    let timeout = Duration::from_secs(120);
    let mut leech = spawn_leecher(
        Client::Libtorrent,
        &torrent,
        &save,
        addr,
        unique_ip(),
        timeout,
    );
    wait_leecher(&mut leech, timeout);
    assert_same_file(&data.join(name), &save.join(name));

    // Every tracker was tried (the announcer failed over through all the tiers) and the
    // status shows an error for each; the seeder is still serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all_tried = counters.iter().all(|(_, h)| h.load(Ordering::Relaxed) > 0);
        let err = seeder.stderr_text();
        let last_status = err
            .lines()
            .rev()
            .find(|l| l.starts_with("status:"))
            .unwrap_or("")
            .to_string();
        let errors = trackers
            .iter()
            .filter(|t| last_status.contains(&format!("{t} error:")))
            .count();
        if all_tried && errors == trackers.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every tracker tried and failed: hits {:?}; last status: {last_status}",
            counters
                .iter()
                .map(|(n, h)| (n.clone(), h.load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(seeder.is_running(), "the seeder died:\n{}", seeder.logs());
    let err = seeder.stderr_text();
    for want in [
        "HTTP 500",
        "torrent not allowed",
        "malformed",
        "redirect",
        "larger than",
    ] {
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "no `{want}` in the seeder's log:\n{err}"
        );
    }
    let st = seeder.terminate(Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", seeder.logs());
    stop.store(true, Ordering::Relaxed);
    eprintln!("tracker faults: info hash {info_hash}, trackers {trackers:?}");
}

/// What a tracker hears: `--announce-ip`/`--announce-port` in the announce (BEP 3 `ip`,
/// `port`), `left=0` for a seed, `started` then `stopped` at SIGTERM, the other parameters; the
/// magnet link carries the tracker and the announced address.
#[test]
fn announce_parameters_and_magnet_follow_the_announce_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_random_file(&data.join("p.bin"), 300_000, 5);
    let torrent = dir.path().join("p.torrent");
    let info_hash = lt_create(&data.join("p.bin"), &torrent, 32 * 1024);

    // A tracker that records each request line and answers with an empty compact list.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().take(50) {
            let Ok(mut s) = c else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).unwrap_or(0);
            let line = String::from_utf8_lossy(&req[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            seen2.lock().unwrap().push(line);
            let body = b"d8:intervali1800e5:peers0:e";
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(body);
        }
    });
    let url = format!("http://127.0.0.1:{port}/announce");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("seed")
        .arg(&torrent)
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--no-resume", "--no-pin"])
        .args(["--announce-ip", "127.0.0.9", "--announce-port", "7777"])
        .args(["--tracker", &url]);
    let mut seeder = Proc::spawn("uring-bt seed (announce flags)", cmd);
    seeder.wait_line("listening:", Duration::from_secs(60));
    let magnet = seeder.wait_line("magnet:", Duration::from_secs(10));
    assert!(magnet.contains("x.pe=127.0.0.9:7777"), "{magnet}");
    assert!(
        magnet.contains(&format!("tr=http%3A%2F%2F127.0.0.1%3A{port}%2Fannounce")),
        "{magnet}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no announce");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = seeder.terminate(Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    let lines = seen.lock().unwrap().clone();
    let started = lines
        .iter()
        .find(|l| l.contains("event=started"))
        .unwrap_or_else(|| panic!("no started: {lines:?}"));
    for want in [
        "port=7777",
        "ip=127.0.0.9",
        "left=0",
        "uploaded=0",
        "downloaded=0",
        "compact=1",
        "numwant=",
        "key=",
    ] {
        assert!(started.contains(want), "no {want} in {started}");
    }
    // info_hash byte by byte: the hex of the torrent's hash, percent-encoded.
    let ih_param = started
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("info_hash="))
        .unwrap_or_else(|| panic!("no info_hash in {started}"));
    let mut bytes = Vec::new();
    let mut it = ih_param.split(' ').next().unwrap().bytes();
    while let Some(c) = it.next() {
        if c == b'%' {
            let h: String = [it.next().unwrap() as char, it.next().unwrap() as char]
                .iter()
                .collect();
            bytes.push(u8::from_str_radix(&h, 16).unwrap());
        } else {
            bytes.push(c);
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, info_hash, "{started}");
    assert!(
        lines.iter().any(|l| l.contains("event=stopped")),
        "no stopped at SIGTERM: {lines:?}"
    );
}
