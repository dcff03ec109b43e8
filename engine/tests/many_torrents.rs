//! 1,000 torrents seeded by one process announce to one real opentracker: the `started`
//! announces are spread over time by the announcer's rate bound (never a burst of all at once),
//! none is lost (each torrent shows our seeder in the tracker's scrape), and every one gets its
//! `stopped` at SIGTERM. Prints the per-second histogram of the announces, and the seeder's RSS
//! and open descriptors, for docs/benchmarks.md.

mod common;

use common::opentracker::OpenTracker;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const TORRENTS: usize = 1000;
/// Announces a second the seeder is told to start at most.
const RATE: f64 = 100.0;

/// The seeder, killed (by PID) if the test fails before it stops it.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_thousand_torrents_announce_spread_out_and_stop() {
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // 1,000 single-file torrents of 5 KiB each, made with the library (one process).
    let mut torrents = Vec::with_capacity(TORRENTS);
    let mut hashes = Vec::with_capacity(TORRENTS);
    for i in 0..TORRENTS {
        let name = format!("f{i:04}.bin");
        let path = data.join(&name);
        let bytes: Vec<u8> = (0..5000u32)
            .map(|j| (j.wrapping_mul(31) ^ i as u32) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let source = uring_bt::torrent::create::Source::scan(&path).unwrap();
        let opts = uring_bt::torrent::create::CreateOptions {
            threads: 1,
            ..Default::default()
        };
        let created = uring_bt::torrent::create::build(&source, &opts, &|_| {}).unwrap();
        let tpath = dir.path().join(format!("t{i:04}.torrent"));
        std::fs::write(&tpath, &created.bytes).unwrap();
        hashes.push(uring_bt_proto::metainfo::hex(&created.metainfo.info_hash));
        torrents.push(tpath);
    }
    let tracker = OpenTracker::start(&hashes);

    let mut cmd = Command::new(bin());
    cmd.arg("seed")
        .args(&torrents)
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0", "--no-pin", "--no-resume"])
        .args(["--status-interval", "60"])
        .args(["--tracker", &tracker.http_announce()])
        .args(["--announce-rate", &RATE.to_string()])
        .env("RUST_LOG", "uring_bt::announce=info")
        .env("NO_COLOR", "1");
    // Its whole stderr goes to a file (the histogram needs every announce line).
    let err_path = dir.path().join("seed.err");
    let out_path = dir.path().join("seed.out");
    cmd.stderr(std::fs::File::create(&err_path).unwrap())
        .stdout(std::fs::File::create(&out_path).unwrap());
    let started = Instant::now();
    let mut seeder = Killed(cmd.spawn().expect("start uring-bt seed"));
    let pid = seeder.0.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .contains("listening:")
    {
        assert!(
            Instant::now() < deadline,
            "the seeder did not start:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = || std::fs::read_to_string(&err_path).unwrap_or_default();

    // Every torrent announced `started` and the tracker lists our seeder for it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut missing: Vec<&String> = hashes.iter().collect();
    while !missing.is_empty() && Instant::now() < deadline {
        missing.retain(|h| tracker.counts(h).0 == 0);
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    assert!(
        missing.is_empty(),
        "{} torrents never showed our seeder in the scrape (first: {:?})\n{}",
        missing.len(),
        missing.first(),
        logs()
    );
    let rss = proc_kib(pid, "VmRSS:");
    let hwm = proc_kib(pid, "VmHWM:");
    let open = fds(pid);

    // Stop: every torrent's `stopped` reaches the tracker.
    // SAFETY: kill(2) on the PID of the child we started and have not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = seeder.0.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = logs();
    assert!(
        status.is_some_and(|s| s.success()),
        "the seeder did not stop cleanly: {status:?}\n{err}"
    );
    let stops: Vec<&str> = err
        .lines()
        .filter(|l| {
            (l.contains("event=Stopped") && !l.contains("ok=true")) || l.contains("stop timeout")
        })
        .collect();
    eprintln!(
        "stops: {} lines: {:?}",
        stops.len(),
        &stops[..stops.len().min(5)]
    );
    assert!(
        err.contains(&format!(
            "`stopped` announced to {TORRENTS} of {TORRENTS} tracker(s)"
        )),
        "not every torrent announced stopped:\n{}",
        err.lines()
            .filter(|l| l.starts_with("stopped:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let still: Vec<&String> = hashes.iter().filter(|h| tracker.counts(h).0 != 0).collect();
    assert!(
        still.is_empty(),
        "{} torrents still list our seeder after stopped",
        still.len()
    );

    // The histogram of `started` announces, per second since the first.
    let mut times = Vec::new();
    for line in err.lines() {
        if !(line.contains(" announce ") && line.contains("event=Started")) {
            continue;
        }
        assert!(line.contains("ok=true"), "a failed announce: {line}");
        // tracing's timestamp: 2026-12-02T01:42:45.918890Z
        let ts = line.split_whitespace().next().unwrap_or("");
        let Some(t) = ts.get(11..26) else { continue };
        let mut parts = t.split(':');
        let (h, m, s) = (
            parts
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0),
            parts
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0),
            parts
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0),
        );
        times.push(h * 3600.0 + m * 60.0 + s);
    }
    assert_eq!(times.len(), TORRENTS, "one started announce per torrent");
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let first = times[0];
    let span = times[TORRENTS - 1] - first;
    let mut hist: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &times {
        *hist.entry((t - first) as u64).or_default() += 1;
    }
    let peak = hist.values().copied().max().unwrap_or(0);
    println!(
        "many_torrents: {TORRENTS} torrents, rate {RATE}/s: started announces over {span:.1} s, \
         peak {peak} in one second; histogram (second: announces) {hist:?}; seeder RSS {rss} KiB \
         (peak {hwm} KiB), {open} open descriptors; whole run {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Spread by the rate bound: 1,000 at 100/s take about 10 s, and no second holds a burst.
    assert!(
        span >= 0.8 * TORRENTS as f64 / RATE,
        "announces bunched up: {span:.1} s"
    );
    assert!(
        peak as f64 <= RATE * 1.3 + 2.0,
        "a burst of {peak} announces in one second"
    );
}
