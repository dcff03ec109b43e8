//! A crash during a resume-data write loses nothing: the file on disk is always one complete
//! version, old or new, never a torn one.
//!
//! The test runs itself twice: as the parent (no arguments) it spawns this same binary with
//! `--writer PATH`, which saves the version of resume data the parent names on its stdin and
//! reports each finished save. The parent has one version saved, asks for the other, and kills
//! the writer with SIGKILL after a random fraction of one measured save time (mid-write, most
//! of the time, on a fast or a slow disk), then loads PATH: it must decode and equal the saved
//! version or the one being written. 40 rounds. A
//! custom harness (`harness = false`) because the writer must be a process of its own: only a
//! real crash shows what a crash leaves.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, ExitCode, Stdio};
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
        partials: vec![(3, vec![k; 8])],
    }
}

/// The writer: saves the version named by each line on stdin ("1" or "2") and reports "saved"
/// on stdout when the save has returned, so the parent knows what is on disk before it kills.
fn writer(path: &Path) -> ExitCode {
    let (a, b) = (version(1), version(2));
    let mut out = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            return ExitCode::from(1);
        };
        let v = if line.trim() == "1" { &a } else { &b };
        if let Err(e) = resume::save(path, v) {
            eprintln!("writer: save failed: {e}");
            return ExitCode::from(1);
        }
        if writeln!(out, "saved").and_then(|()| out.flush()).is_err() {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn fail(msg: String) -> ExitCode {
    eprintln!("resume_crash: {msg}");
    ExitCode::from(1)
}

/// Asks the writer to save version `k` and waits for it to report the save done; returns how
/// long the save took.
fn save_and_wait(
    stdin: &mut ChildStdin,
    stdout: &mut BufReader<ChildStdout>,
    k: u8,
) -> Result<Duration, String> {
    let t = Instant::now();
    writeln!(stdin, "{k}")
        .and_then(|()| stdin.flush())
        .map_err(|e| format!("writing to the writer: {e}"))?;
    let mut line = String::new();
    match stdout.read_line(&mut line) {
        Ok(n) if n > 0 && line.trim() == "saved" => Ok(t.elapsed()),
        Ok(_) => Err(format!("the writer stopped early (said {line:?})")),
        Err(e) => Err(format!("reading from the writer: {e}")),
    }
}

fn parent() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(format!("no temporary directory: {e}")),
    };
    let path = dir.path().join("t.resume");
    let (a, b) = (version(1), version(2));
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("the test binary's path: {e}")),
    };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let (mut saw_a, mut saw_b, mut torn) = (0, 0, 0);
    for round in 0..40u32 {
        let mut child = match Command::new(&exe)
            .arg("--writer")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return fail(format!("spawn the writer: {e}")),
        };
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return fail("the writer has no pipes".into());
        };
        let mut stdout = BufReader::new(stdout);
        // Even rounds: version 1 is on disk and 2 is being written; odd rounds the reverse.
        // Whether a kill lands before or after the rename, both versions are seen.
        let (old, new) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        // One whole save of each, in an order that leaves `old` on disk; the second one
        // measures how long a save takes on this disk (fsync included).
        let took = match save_and_wait(&mut stdin, &mut stdout, new)
            .and_then(|_| save_and_wait(&mut stdin, &mut stdout, old))
        {
            Ok(t) => t,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return fail(format!("round {round}: {e}"));
            }
        };
        // Ask for `new` and kill the writer somewhere in [0, 1.5 x one save): inside the
        // write most of the time, whatever this disk's speed.
        if writeln!(stdin, "{new}")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return fail(format!("round {round}: the writer closed its input"));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let span = (took.as_micros() as u64).max(100) * 3 / 2;
        std::thread::sleep(Duration::from_micros(seed % span));
        // SIGKILL (std's kill): no chance to clean up, as in a crash.
        if let Err(e) = child.kill() {
            return fail(format!("round {round}: kill the writer: {e}"));
        }
        let _ = child.wait();
        // A half-written temporary file left behind: this kill landed inside a write.
        let tmp = dir.path().join(format!("t.resume.tmp{}", child.id()));
        if tmp.exists() {
            torn += 1;
            let _ = std::fs::remove_file(&tmp);
        }
        let (want_old, want_new) = if old == 1 { (&a, &b) } else { (&b, &a) };
        match resume::load(&path) {
            Ok(got) if got == *want_old || got == *want_new => {
                if got == a {
                    saw_a += 1;
                } else {
                    saw_b += 1;
                }
            }
            Ok(_) => {
                return fail(format!(
                    "round {round}: the resume file decodes to neither the saved version nor the one being written"
                ))
            }
            Err(e) => {
                return fail(format!(
                    "round {round}: the resume file is unusable after a crash: {e}"
                ))
            }
        }
    }
    // Some kills landed inside a write (else this tested nothing), and both versions were seen.
    if torn == 0 || saw_a == 0 || saw_b == 0 {
        return fail(format!(
            "the kills never tore a write or one version was never seen ({torn} torn; versions {saw_a} / {saw_b})"
        ));
    }
    println!(
        "resume_crash: 40 writers killed, {torn} inside a write; the file was whole every time \
         ({saw_a} version 1, {saw_b} version 2)"
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
