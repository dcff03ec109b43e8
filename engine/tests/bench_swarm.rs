//! `uring-bt bench swarm` run as the built binary in a short mode: the real seeder (a child)
//! serves two peers of our own over loopback; the JSON has every field with sane figures, the
//! sampled blocks all matched, the seeder is gone and the scratch directory removed afterwards.
//! A byte flipped in the generated data before the torrent is made (the test-only switch
//! `URING_BT_TEST_SWARM_CORRUPT`: the seeder's hashes agree with it, so it serves it) must fail
//! the run with exit 1, naming the block. `--against` a real libtorrent seeder checks the
//! blocks against the file instead. Bad arguments exit 2. Loopback only; the runs take
//! turns (a lock), so that they do not take each other's cores.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use common::bin;
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SMALL: &[&str] = &[
    "bench",
    "swarm",
    "--peers",
    "2",
    "--size-mib",
    "16",
    "--duration",
    "2",
    "--net-seconds",
    "0.2",
];

fn run(args: &[&str], env: Option<(&str, &str)>) -> Output {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run uring-bt");
    eprintln!("{args:?}: {:.1} s", t.elapsed().as_secs_f64());
    o
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = num(v, what);
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn a_small_swarm_is_served_and_checked() {
    let mut args = SMALL.to_vec();
    args.push("--json");
    let o = run(&args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["peers"], 2);
    let shards = positive(&v["shards"], "shards");
    assert_eq!(num(&v["upload_slots"], "slots"), 2.0 * shards, "{v}");
    assert_eq!(v["size"], 16u64 << 20);
    assert!(
        v["seeder_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
    // The window: bytes served, at a sane rate, every sampled block right.
    let secs = positive(&v["seconds"], "seconds");
    assert!((1.9..10.0).contains(&secs), "window {secs} s");
    let bytes = positive(&v["bytes"], "bytes");
    assert!(num(&v["bytes_total"], "bytes_total") >= bytes);
    assert!(positive(&v["blocks"], "blocks") * 16_384.0 >= bytes);
    let mb = positive(&v["mb_per_s"], "mb_per_s");
    assert!((mb - bytes / secs / 1e6).abs() < 1e-6 * mb, "{v}");
    assert!(positive(&v["samples_checked"], "samples") >= 1.0);
    assert_eq!(v["mismatches"], 0);
    assert_eq!(v["sample_every"], 64);
    // The seeder's figures: CPU in the window, its memory and descriptors.
    let seeder = &v["seeder"];
    positive(&seeder["cpu_s"], "seeder cpu");
    positive(&seeder["cpu_s_per_gib"], "seeder cpu per GiB");
    let rss = positive(&seeder["peak_rss_kib"], "peak RSS");
    assert!(rss < 1024.0 * 1024.0, "peak RSS {rss} KiB");
    // stdio, rings, listeners, the data file, the two peers' connections at least.
    let fds = positive(&seeder["open_fds"], "fds");
    assert!((5.0..1000.0).contains(&fds), "{fds} descriptors");
    assert!(num(&v["peers_cpu_s"], "peers cpu") >= 0.0);
    // bench net in the same invocation, and the ratios against it.
    positive(&v["net_ceiling"]["mb_per_s"], "ceiling");
    positive(&v["net_floor"]["sender_cpu_s_per_gib"], "floor");
    positive(
        &v["net_floor_from_file"]["sender_cpu_s_per_gib"],
        "floor from file",
    );
    assert!(v["net_ceiling"]["path"].is_string() && v["net_floor"]["path"].is_string());
    assert!(v["net"]["paths"].as_array().is_some_and(|p| p.len() == 7));
    assert_eq!(v["send_path"], "copy");
    let r = positive(&v["throughput_vs_ceiling"], "vs ceiling");
    let ceiling = num(&v["net_ceiling"]["mb_per_s"], "ceiling");
    assert!((r - mb / ceiling).abs() < 1e-9, "{v}");
    let c = positive(&v["cpu_vs_floor"], "vs floor");
    let floor = num(&v["net_floor"]["sender_cpu_s_per_gib"], "floor");
    assert!(
        (c - num(&seeder["cpu_s_per_gib"], "cpu") / floor).abs() < 1e-9,
        "{v}"
    );
    positive(&v["cpu_vs_floor_from_file"], "vs floor from file");
    assert_eq!(num(&v["target_throughput_vs_ceiling"], "t"), 0.70);
    assert_eq!(num(&v["target_cpu_vs_floor"], "t"), 1.15);
    // Cached ext4 under /var/tmp, removed afterwards; the seeder killed and reaped.
    assert_eq!(v["fs"], "ext4", "{v}");
    let file = v["file"].as_str().expect("file");
    assert!(file.starts_with("/var/tmp/"), "{file}");
    assert!(!std::path::Path::new(file).exists(), "{file} left behind");
    let pages = positive(&v["pages"], "pages");
    assert!(num(&v["resident_pages_before"], "resident") <= pages);
    let pid = positive(&v["seeder_pid"], "pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the seeder {pid} is still running"
    );
    // Progress went to stderr.
    assert!(err.contains("swarm: measuring"), "{err}");
}

/// The same swarm against `seed --send-path splice`: every sampled block right, and the
/// seeder's pipes among its descriptors.
#[test]
fn a_small_swarm_through_the_splice_path_is_served_and_checked() {
    let mut args = SMALL.to_vec();
    args.extend(["--send-path", "splice", "--json"]);
    let o = run(&args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["send_path"], "splice", "{v}");
    assert_eq!(v["mismatches"], 0);
    assert!(positive(&v["samples_checked"], "samples") >= 1.0);
    positive(&v["mb_per_s"], "mb_per_s");
    positive(&v["seeder"]["cpu_s_per_gib"], "seeder cpu per GiB");
}

#[test]
fn a_wrong_block_fails_the_run_and_is_named() {
    // Byte 100 of block 64 (16 KiB blocks): a sampled block (every 64th).
    let offset = 64 * 16_384 + 100;
    let o = run(
        SMALL,
        Some(("URING_BT_TEST_SWARM_CORRUPT", &offset.to_string())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 64 (piece 64, begin 0") && err.contains(&format!("offset {offset}")),
        "{err}"
    );
    assert!(!err.contains("panic"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `bench swarm --against` a real seeder (python-libtorrent, its own 127.0.0.x): our peers are
/// unchoked and served by it, every sampled block equals the file, and the seeder's figures
/// come from its process. The same run checked against a copy of the file with one byte
/// flipped fails with exit 1, naming the block.
#[test]
fn against_a_libtorrent_seeder_blocks_are_checked_against_the_file() {
    let case = common::single_case(8, 0x5EED_0014);
    let seeder = common::spawn_lt_seeder(&[&case.torrent], &case.data, common::unique_ip());
    let (addr, pid) = (seeder.addr.to_string(), seeder.proc.pid().to_string());
    let torrent = case.torrent.to_str().expect("utf-8 path");
    let against = |data: &std::path::Path| {
        let data = data.to_str().expect("utf-8 path");
        run(
            &[
                "bench",
                "swarm",
                "--against",
                &addr,
                "--torrent",
                torrent,
                "--data",
                data,
                "--seeder-pid",
                &pid,
                "--peers",
                "3",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--sample-every",
                "1",
                "--no-net",
                "--json",
            ],
            None,
        )
    };
    let o = against(&case.data);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}\n{}", seeder.proc.logs());
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["seeder_kind"], "external", "{v}");
    assert_eq!(v["seeder_pid"].as_u64(), Some(u64::from(seeder.proc.pid())));
    assert!(num(&v["unchoked"], "unchoked") >= 1.0, "{v}");
    assert_eq!(v["mismatches"], 0);
    // Every block received is checked (--sample-every 1): at least the whole file once.
    let blocks = (8 * common::MIB + 777).div_ceil(16_384) as f64;
    assert!(positive(&v["samples_checked"], "samples") >= blocks, "{v}");
    positive(&v["mb_per_s"], "mb_per_s");
    positive(&v["seeder"]["cpu_s_per_gib"], "seeder cpu per GiB");
    positive(&v["seeder"]["peak_rss_kib"], "seeder peak RSS");
    assert!(v["net_ceiling"].is_null(), "--no-net: {v}");

    // A reference that differs from what the seeder serves in one byte of block 5.
    let wrong = case.dir.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(case.content(), wrong.join(&case.name)).unwrap();
    let offset = 5 * 16_384 + 3;
    common::flip_byte(&wrong.join(&case.name), offset);
    let o = against(&wrong);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("block 5 (piece 0, begin 81920") && err.contains(&format!("offset {offset}")),
        "{err}"
    );
    assert!(!err.contains("panic"), "{err}");
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["bench", "swarm", "--peers", "0"][..],
        &["bench", "swarm", "--peers", "65"],
        &["bench", "swarm", "--size-mib", "0"],
        &["bench", "swarm", "--size-mib", "lots"],
        &["bench", "swarm", "--duration", "0"],
        &["bench", "swarm", "--pipeline", "0"],
        &["bench", "swarm", "--sample-every", "0"],
        &["bench", "swarm", "--dir", "/nonexistent/dir"],
        &["bench", "swarm", "--against", "127.0.0.1:6881"],
        &[
            "bench",
            "swarm",
            "--against",
            "192.0.2.1:6881",
            "--torrent",
            "t",
            "--data",
            "d",
            "--seeder-pid",
            "1",
        ],
        &["bench", "swarm", "--seeder-pid", "1"],
    ] {
        let o = run(args, None);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panic"), "{args:?}: {err}");
    }
    let o = run(&["bench", "swarm", "--peers", "0"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--peers"));
    let o = run(&["bench", "swarm", "--help"], None);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: uring-bt bench swarm"));
}
