//! `uring-bt bench hash`, `bench net` (loopback, and `--serve`/`--to` on 127.0.0.1) and the
//! `bench` overview, run as the built binary in their short modes: the JSON has every field,
//! with sane positive figures; the floor is the cheapest sender CPU per GiB of the paths; the
//! external tools ran (`openssl`, `iperf3`: scripts/test installs them; a missing one fails
//! the test, never skips it); a bad argument exits 2. Loopback only. The benchmarks run one
//! at a time (a lock), so that they do not take each other's cores.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::bin;
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run uring-bt")
}

fn run_json(args: &[&str]) -> Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{args:?}: {:.1} s", t.elapsed().as_secs_f64());
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
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
fn bench_hash_json() {
    common::require_tool("openssl", "openssl");
    let v = run_json(&["bench", "hash", "--seconds", "0.5", "--json"]);
    assert!(v["threads"].as_u64().is_some_and(|t| t >= 1), "{v}");
    let paths = &v["paths"];
    for key in ["sha1_one_core", "sha1_all_cores"] {
        positive(&paths[key]["mb_per_s"], key);
        positive(&paths[key]["vs_openssl"], key);
    }
    for key in ["sha1x16_one_core", "sha1x16_all_cores"] {
        // Without AVX-512 the sixteen-lane figures say why they are missing.
        if paths[key]["error"].is_string() {
            assert!(paths[key]["mb_per_s"].is_null());
        } else {
            positive(&paths[key]["mb_per_s"], key);
        }
    }
    positive(&v["openssl"]["one_core_mb_per_s"], "openssl one core");
    positive(&v["openssl"]["multi_mb_per_s"], "openssl -multi");
    assert!(v["openssl"]["error"].is_null(), "{v}");
}

/// Every path's figures, the floor and the ceiling; returns the paths.
fn check_net(v: &Value, loopback: bool) -> Vec<Value> {
    let paths = v["paths"].as_array().expect("paths").clone();
    let keys: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    assert_eq!(
        keys,
        [
            "send",
            "pread_send",
            "batched",
            "sendfile",
            "ring_send",
            "ring_send_zc",
            "ring_splice"
        ]
    );
    for p in &paths {
        let k = p["path"].as_str().unwrap_or_default();
        assert!(p["error"].is_null(), "{k}: {p}");
        positive(&p["mb_per_s"], k);
        positive(&p["sender_cpu_s_per_gib"], k);
        positive(&p["receiver_cpu_s_per_gib"], k);
        assert!(num(&p["other_cpu_s_per_gib"], k) >= 0.0);
        assert!(p["bytes"].as_u64().is_some_and(|b| b > 0), "{k}");
    }
    let zc = &paths[5];
    assert!(
        zc["zc_notifications"].as_u64().is_some_and(|n| n > 0),
        "{zc}"
    );
    if loopback {
        // Over loopback the kernel copies what a zero-copy send hands it.
        assert_eq!(zc["zc_copied"], zc["zc_notifications"], "{zc}");
    }
    // io_uring runs splices in io-wq workers: their CPU is the path's "rest", and it counts.
    let splice = &paths[6];
    assert!(
        num(&splice["other_cpu_s_per_gib"], "splice rest") > 0.0,
        "{splice}"
    );
    // The floor is the cheapest send cost: sender threads plus the rest.
    let cost = |p: &Value| {
        num(&p["sender_cpu_s_per_gib"], "sender") + num(&p["other_cpu_s_per_gib"], "rest")
    };
    let min = paths.iter().map(cost).fold(f64::INFINITY, f64::min);
    let floor = &v["floor"];
    let f = num(&floor["sender_cpu_s_per_gib"], "floor");
    assert!(
        (f - min).abs() < 1e-9 * min.max(1.0),
        "{floor} against {min}"
    );
    let at = paths
        .iter()
        .find(|p| p["path"] == floor["path"])
        .expect("the floor names a path");
    assert!((cost(at) - min).abs() < 1e-9 * min.max(1.0));
    let max = paths
        .iter()
        .map(|p| num(&p["mb_per_s"], "mb"))
        .fold(0.0, f64::max);
    assert_eq!(num(&v["ceiling"]["mb_per_s"], "ceiling"), max);
    assert!(v["streams"].as_u64().is_some_and(|s| s >= 1));
    assert_eq!(v["block"], 16_384);
    paths
}

#[test]
fn bench_net_json_on_loopback() {
    common::require_tool("iperf3", "iperf3");
    let v = run_json(&["bench", "net", "--seconds", "0.5", "--json"]);
    assert_eq!(v["mode"], "loopback");
    assert!(
        v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("127.0.0.1:")),
        "{v}"
    );
    check_net(&v, true);
    assert_ne!(
        v["fs"], "tmpfs",
        "the default data file must not be on tmpfs"
    );
    let pages = positive(&v["pages"], "pages");
    assert!(num(&v["resident_pages_before"], "resident") <= pages);
    // The scratch directory under /var/tmp is gone.
    let file = v["file"].as_str().expect("file");
    assert!(file.starts_with("/var/tmp/"), "{file}");
    assert!(!std::path::Path::new(file).exists(), "{file} left behind");
    let ip = &v["iperf3"];
    assert!(v["iperf3_error"].is_null(), "{v}");
    positive(&ip["mb_per_s"], "iperf3 MB/s");
    positive(&ip["sender_cpu_s_per_gib"], "iperf3 sender CPU");
    positive(&ip["receiver_cpu_s_per_gib"], "iperf3 receiver CPU");
    positive(&v["ceiling_vs_iperf3"], "ceiling vs iperf3");
    positive(&v["floor_vs_iperf3"], "floor vs iperf3");
}

/// Kills (by PID) and reaps the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bench_net_to_a_server() {
    let mut child = Command::new(bin())
        .args(["bench", "net", "--serve", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let out = child.stdout.take().expect("stdout");
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server says where it listens");
    let addr = first
        .strip_prefix("listening: ")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let v = run_json(&[
        "bench",
        "net",
        "--to",
        &addr,
        "--seconds",
        "0.2",
        "--streams",
        "1",
        "--size-mib",
        "16",
        "--json",
    ]);
    assert_eq!(v["mode"], "remote");
    assert_eq!(v["target"], addr.as_str());
    check_net(&v, false);
    assert!(
        v["iperf3"].is_null() && v["iperf3_error"].is_string(),
        "{v}"
    );
    // The server logged each connection it received (one per path, one stream each).
    let logged: Vec<String> = (0..6)
        .filter_map(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    assert_eq!(logged.len(), 6, "{logged:?}");
    assert!(logged.iter().all(|l| l.contains("CPU-s/GiB")), "{logged:?}");
    drop(server);
}

#[test]
fn bench_overview_json() {
    common::require_tool("openssl", "openssl");
    common::require_tool("iperf3", "iperf3");
    let v = run_json(&["bench", "--seconds", "0.3", "--size-mib", "32", "--json"]);
    for part in ["hash", "disk", "net", "swarm"] {
        assert!(v[part].is_object(), "{part}: {v}");
        assert!(v[part]["error"].is_null(), "{part}: {}", v[part]);
    }
    assert!(v["disk"]["runs"].as_array().is_some_and(|r| r.len() == 8));
    check_net(&v["net"], true);
    let table = v["table"].as_array().expect("table");
    assert!(v["swarm"]["samples_checked"]
        .as_u64()
        .is_some_and(|n| n > 0));
    assert_eq!(v["swarm"]["mismatches"], 0);
    // Four SHA-1 figures, two disk ones, seven network paths, the floor and two swarm rows.
    assert_eq!(table.len(), 16, "{table:?}");
    for row in table {
        let what = row["what"].as_str().unwrap_or_default();
        if what.contains("sixteen lanes") && row["figure"].is_null() {
            continue; // no AVX-512 on this CPU
        }
        positive(&row["figure"], what);
        positive(&row["ceiling"], what);
        positive(&row["ratio"], what);
        assert!(row["ceiling_source"].is_string());
    }
    assert!(positive(&v["seconds_total"], "seconds") < 120.0);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["bench", "net", "--block", "0"][..],
        &["bench", "net", "--streams", "0"],
        &["bench", "net", "--seconds", "0"],
        &["bench", "net", "--to", "no-port"],
        &[
            "bench",
            "net",
            "--serve",
            "127.0.0.1:1",
            "--to",
            "127.0.0.1:2",
        ],
        &["bench", "hash", "--seconds", "-1"],
        &["bench", "hash", "--threads", "0"],
        &["bench", "--seconds", "0"],
        &["bench", "--json", "hash"],
    ] {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panic"), "{args:?}: {err}");
    }
    let o = run(&["bench", "net", "--block", "0"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--block"));
    for sub in ["hash", "net"] {
        let o = run(&["bench", sub, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: uring-bt bench"));
    }
}
