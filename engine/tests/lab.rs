//! The lab scenario (docs/lab.md, "The lab scenario"), as CI runs it: `scripts/lab --bin
//! <our binary> --workdir <temp dir>` with Debian's python. The script starts opentracker,
//! rtorrent and libtorrent seeders, aria2, transmission and two libtorrent leechers around one
//! `uring-bt download --seed` on loopback, checks every copy and our choker log, prints a
//! summary and exits 0 only when every check held. It bounds itself to 4 minutes and stops
//! everything it started; this test allows 5 minutes, then SIGTERMs it (it cleans up) and
//! kills its group.
//!
//! Builds nothing: the binary is cargo's (`common::bin()`). A missing client fails the test.

mod common;

use common::opentracker::require_or_install;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(300);

fn lab_script() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

#[test]
fn lab_scenario() {
    require_or_install("opentracker", "opentracker");
    require_tool("rtorrent", "rtorrent");
    require_tool("aria2c", "aria2");
    require_tool("transmission-daemon", "transmission-daemon");
    require_libtorrent();
    let _g = heavy_lock();
    let _t = Timed::new("lab_scenario");
    let work = tempfile::Builder::new()
        .prefix("uring-bt-lab-")
        .tempdir()
        .unwrap();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(lab_script())
        .arg("--bin")
        .arg(bin())
        .arg("--workdir")
        .arg(work.path());
    let mut p = Proc::spawn("scripts/lab", cmd);
    let deadline = Instant::now() + TIMEOUT;
    while p.is_running() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let timed_out = p.is_running();
    let status = if timed_out {
        // SIGTERM lets the script stop its clients; then its group is killed
        p.terminate(Duration::from_secs(60))
    } else {
        Some(p.wait_exit(Duration::from_secs(10))) // collects the last lines
    };
    let out = p.stdout_lines().join("\n");
    let ok = !timed_out && status.is_some_and(|s| s.success());
    if !ok {
        // keep the logs for a look (the summary names the directory)
        let kept = work.keep();
        panic!(
            "scripts/lab {} (workdir kept: {})\n--- stdout ---\n{out}\n--- stderr ---\n{}",
            if timed_out {
                format!("did not finish within {TIMEOUT:?}")
            } else {
                format!("failed ({status:?})")
            },
            kept.display(),
            p.stderr_text()
        );
    }
    // the summary, visible with --nocapture
    let summary = out
        .split("\nlab scenario:")
        .nth(1)
        .map(|s| format!("lab scenario:{s}"))
        .unwrap_or(out);
    eprintln!("{summary}");
}
