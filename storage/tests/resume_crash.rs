//! A crash during a resume-data write loses nothing: the file on disk is always one complete
//! version, old or new, never a torn one.
//!
//! The test runs itself twice: as the parent (no arguments) it spawns this same binary with
//! `--writer PATH`, which saves two alternating versions of resume data to PATH as fast as it
//! can, kills that writer with SIGKILL after a random few milliseconds (mid-write, most of the
//! time), then loads PATH: it must decode and equal one of the two versions. 40 rounds. A
//! custom harness (`harness = false`) because the writer must be a process of its own: only a
//! real crash shows what a crash leaves.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use uring_bt_storage::resume::{self, FileStamp, ResumeData};

fn version(k: u8) -> ResumeData {
    // Large enough (~2.4 MB) that a kill lands inside the write most of the time.
    let files = (0..100_000u64)
        .map(|i| FileStamp {
            exists: true,
            size: i * 7 + u64::from(k),
            mtime_sec: 1_700_000_000 + i as i64,
            mtime_nsec: u32::from(k),
        })
        .collect();
    ResumeData {
        info_hash: [k; 20],
        piece_length: 16384,
        num_pieces: 8 * 1024,
        have: vec![k; 1024],
        files,
    }
}

fn writer(path: &Path) -> ExitCode {
    let (a, b) = (version(1), version(2));
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        for v in [&a, &b] {
            if let Err(e) = resume::save(path, v) {
                eprintln!("writer: save failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

fn parent() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("resume_crash: no temporary directory: {e}");
            return ExitCode::from(1);
        }
    };
    let path = dir.path().join("t.resume");
    let (a, b) = (version(1), version(2));
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let (mut saw_a, mut saw_b, mut torn) = (0, 0, 0);
    for round in 0..40 {
        let mut child = Command::new(&exe)
            .arg("--writer")
            .arg(&path)
            .spawn()
            .expect("spawn the writer");
        // Let it write at least one whole version, then kill it at a random moment.
        let started = Instant::now();
        while !path.exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(500 + seed % 20_000));
        // SIGKILL (std's kill): no chance to clean up, as in a crash.
        child.kill().expect("kill the writer");
        let _ = child.wait();
        // A half-written temporary file left behind: this kill landed inside a write.
        let pid = child.id();
        let tmp = dir.path().join(format!("t.resume.tmp{pid}"));
        if tmp.exists() {
            torn += 1;
        }
        match resume::load(&path) {
            Ok(got) if got == a => saw_a += 1,
            Ok(got) if got == b => saw_b += 1,
            Ok(_) => {
                eprintln!("round {round}: the resume file decodes to neither version");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("round {round}: the resume file is unusable after a crash: {e}");
                return ExitCode::from(1);
            }
        }
    }
    // Some kills landed inside a write (else this tested nothing), and both versions were seen.
    if torn == 0 || saw_a == 0 || saw_b == 0 {
        eprintln!("the kills never tore a write ({torn} torn; versions {saw_a} / {saw_b})");
        return ExitCode::from(1);
    }
    println!(
        "resume_crash: 40 writers killed, {torn} inside a write; the file was whole every time \
         ({saw_a} old, {saw_b} new)"
    );
    println!("1 passed, 0 failed");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--writer") => match args.get(2) {
            Some(p) => writer(Path::new(p)),
            None => ExitCode::from(2),
        },
        // cargo test passes harness flags (e.g. --include-ignored, a filter): run the test.
        _ => parent(),
    }
}
