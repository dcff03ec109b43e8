//! CPU pinning honours the process's affinity mask: under `taskset -c 1` the seeder runs one
//! shard by default and pins every shard to CPU 1, never to a CPU outside the mask.
//!
//! Needs util-linux `taskset` and a CPU 1 (a machine with at least 2 CPUs): without them the test
//! fails rather than skipping.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_uring-bt");

/// A child process killed (by PID) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `taskset -c <cpus> uring-bt seed <torrent> --data <data> ...` on 127.0.0.1:0 and waits
/// for its `listening:` line, which it returns with the process.
fn seed_under_taskset(dir: &Path, cpus: &str, extra: &[&str]) -> (Proc, String) {
    let stderr = std::fs::File::create(dir.join("seed.err")).unwrap();
    let mut child = Command::new("taskset")
        .args(["-c", cpus, BIN, "seed"])
        .arg(dir.join("f.torrent"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--skip-check", "--no-resume"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("cannot run `taskset` (util-linux): it is required by this test");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    // Read stdout on a thread (and keep draining it) so a silent seeder cannot hang the test.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.starts_with("listening: ") => return (proc, line),
            Ok(_) => {}
            Err(_) => panic!(
                "seeder did not print its address: {}",
                std::fs::read_to_string(dir.join("seed.err")).unwrap_or_default()
            ),
        }
    }
}

/// `Cpus_allowed_list` of each thread of `pid` named `shard-N`, by N.
fn shard_cpus(pid: u32) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue; // the thread has exited
        };
        let Some(n) = comm.trim().strip_prefix("shard-") else {
            continue;
        };
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/<pid>/task/<tid>/status")
            .trim()
            .to_string();
        out.push((n.parse().unwrap(), cpus));
    }
    out.sort();
    out
}

#[test]
fn shards_stay_inside_the_affinity_mask() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 13 + i / 97) as u8).collect();
    std::fs::write(d.join("data/f.bin"), content).unwrap();
    let o = Command::new(BIN)
        .arg("create")
        .arg(d.join("data/f.bin"))
        .arg("-o")
        .arg(d.join("f.torrent"))
        .output()
        .unwrap();
    assert!(o.status.success(), "create: {o:?}");

    // Default shard count: the number of allowed CPUs (one), pinned to CPU 1.
    let (proc, listening) = seed_under_taskset(d, "1", &[]);
    assert!(listening.contains("(1 shard(s)"), "{listening}");
    assert_eq!(shard_cpus(proc.0.id()), vec![(0, "1".to_string())]);
    drop(proc);

    // More shards than allowed CPUs: they share CPU 1, none escapes to CPU 0.
    let (proc, listening) = seed_under_taskset(d, "1", &["--shards", "2"]);
    assert!(listening.contains("(2 shard(s)"), "{listening}");
    assert_eq!(
        shard_cpus(proc.0.id()),
        vec![(0, "1".to_string()), (1, "1".to_string())]
    );
    let err = std::fs::read_to_string(d.join("seed.err")).unwrap();
    assert!(!err.contains("could not pin"), "{err}");
    drop(proc);
}
