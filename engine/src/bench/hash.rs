//! `uring-bt bench hash`: SHA-1 throughput against `openssl speed`, on one core and on all.
//!
//! Four figures of ours, each measured for `--seconds`:
//! - **single stream** (the `sha1` crate, SHA-NI when the CPU has it): one 256 KiB piece after
//!   another out of a 1 MiB buffer, fed in 16 KiB updates (what hashing a piece block by block
//!   costs), on one thread and on `--threads` threads;
//! - **sixteen lanes** ([`Sha1x16`], AVX-512): sixteen pieces at once, each advanced by one
//!   64 KiB chunk at a time out of a 1 MiB lane buffer ([`READ_CHUNK`] per lane, as
//!   `storage::hash` feeds it), on one thread and on all.
//!
//! Beside them, in the same invocation, `openssl speed -seconds S -bytes 16384 -evp sha1` and
//! the same with `-multi N` (the 16384-byte column: `-bytes` runs only that size, so one figure
//! takes S seconds instead of six times S), and each of ours as a ratio of openssl's. A machine
//! without `openssl` reports the figure as missing, with the reason.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Context;
use sha1::{Digest, Sha1};
use uring_bt_storage::hash::READ_CHUNK;
use uring_bt_storage::sha1x16::{Sha1x16, LANES};

use crate::cli::UsageError;

/// Arguments of `uring-bt bench hash`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchHashArgs {
    /// Seconds per measurement (0 < S <= 600): four of ours and two of openssl's, which takes
    /// whole seconds (at least 1).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Threads for the all-core figures and `openssl speed -multi` (default: the number of
    /// cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Bytes of one piece in the benchmark.
pub const PIECE: usize = 256 * 1024;
/// Bytes per `update` on the single-stream path (one block).
pub const UPDATE: usize = 16 * 1024;
/// Pieces in the single-stream buffer (1 MiB: L2-sized, like the hasher's lane buffer).
const PIECES_IN_BUFFER: usize = 4;

/// Bytes hashed in a time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    pub bytes: u64,
    pub seconds: f64,
}

impl Rate {
    pub fn mb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }
}

/// What `bench hash` measured.
#[derive(Debug, Clone)]
pub struct HashReport {
    pub threads: usize,
    pub seconds: f64,
    pub single_one: Rate,
    pub single_all: Rate,
    /// `Err(reason)` when the CPU has no AVX-512F/BW.
    pub lanes_one: Result<Rate, String>,
    pub lanes_all: Result<Rate, String>,
    /// MB/s of `openssl speed` at 16384 bytes, or why there is none.
    pub openssl_one: Result<f64, String>,
    pub openssl_all: Result<f64, String>,
    pub openssl_seconds: u64,
}

/// Validates the arguments (every limit explicit).
pub fn check_args(args: &BenchHashArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err(UsageError("--seconds must be in (0, 600]".into()).into());
    }
    if args.threads.is_some_and(|t| t == 0 || t > 1024) {
        return Err(UsageError("--threads must be in 1..=1024".into()).into());
    }
    Ok(())
}

/// Deterministic non-zero bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Single stream until `deadline`: whole pieces, in 16 KiB updates.
fn single_stream(buf: &[u8], deadline: Instant) -> u64 {
    let mut bytes = 0u64;
    loop {
        for piece in buf.chunks_exact(PIECE) {
            let mut h = Sha1::new();
            for block in piece.chunks(UPDATE) {
                h.update(block);
            }
            std::hint::black_box(h.finalize());
            bytes += PIECE as u64;
        }
        if Instant::now() >= deadline {
            return bytes;
        }
    }
}

/// Sixteen lanes until `deadline`: sixteen pieces at a time, one 64 KiB chunk of each per
/// update, as `storage::hash` does it.
fn sixteen_lanes(fresh: &Sha1x16, lanes: &[u8], deadline: Instant) -> u64 {
    let mut bytes = 0u64;
    loop {
        let mut h = fresh.clone();
        for _ in 0..PIECE / READ_CHUNK {
            h.update(lanes, READ_CHUNK, READ_CHUNK);
        }
        std::hint::black_box(h.finalize());
        bytes += (LANES * PIECE) as u64;
        if Instant::now() >= deadline {
            return bytes;
        }
    }
}

/// Runs `work(deadline)` on `threads` threads started together; total bytes over the wall time.
fn on_threads(threads: usize, seconds: f64, work: &(dyn Fn(Instant) -> u64 + Sync)) -> Rate {
    let barrier = Barrier::new(threads);
    let run = || {
        barrier.wait();
        let start = Instant::now();
        let bytes = work(start + Duration::from_secs_f64(seconds));
        (bytes, start.elapsed())
    };
    let results: Vec<(u64, Duration)> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..threads).map(|_| s.spawn(run)).collect();
        let mut out = vec![run()];
        out.extend(hs.into_iter().filter_map(|h| h.join().ok()));
        out
    });
    Rate {
        bytes: results.iter().map(|r| r.0).sum(),
        seconds: results
            .iter()
            .map(|r| r.1.as_secs_f64())
            .fold(0.0, f64::max),
    }
}

/// The number of cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Writes `text` to stdout; a closed pipe is a quiet success.
pub fn print_stdout(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// Output of a command run for at most `timeout` (then killed by its PID), or why it failed.
/// `stderr`: where the command's stderr goes.
pub fn output_within(
    stderr: Stdio,
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(i32, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not installed".to_string(),
            _ => format!("cannot start: {e}"),
        })?;
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                // Child::kill signals this child's own PID.
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("no answer within {} s", timeout.as_secs()));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("waiting: {e}"));
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    let status = status?;
    Ok((status.code().unwrap_or(-1), out))
}

/// The 16384-byte figure of `openssl speed` output, in MB/s (openssl prints 1000s of bytes/s).
pub fn parse_openssl_speed(out: &str) -> Option<f64> {
    // The column of "16384 bytes" in the header, when there is one (not with -multi).
    let col = out.lines().find(|l| l.starts_with("type")).and_then(|h| {
        let cols: Vec<&str> = h.split("bytes").map(str::trim).collect();
        cols.iter().position(|c| c.ends_with("16384"))
    });
    let line = out.lines().rev().find(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("sha1") && f.next().is_some_and(|v| v.ends_with('k'))
    })?;
    let vals: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.trim_end_matches('k').parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    let v = match col {
        Some(i) => *vals.get(i)?,
        None => *vals.last()?,
    };
    Some(v * 1e3 / 1e6)
}

/// `openssl speed -seconds S -bytes 16384 [-multi N] -evp sha1`, in MB/s.
pub fn openssl_speed(seconds: u64, multi: Option<usize>) -> Result<f64, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-seconds", &seconds.to_string(), "-bytes", "16384"]);
    if let Some(n) = multi {
        cmd.args(["-multi", &n.to_string()]);
    }
    cmd.args(["-evp", "sha1"]);
    let (code, out) = output_within(Stdio::null(), &mut cmd, Duration::from_secs(seconds + 30))?;
    if code != 0 {
        return Err(format!("openssl speed exited with {code}"));
    }
    parse_openssl_speed(&out).ok_or_else(|| "no 16384-byte sha1 figure in its output".into())
}

/// Measures everything `bench hash` reports; `progress` hears what runs next.
pub fn measure(args: &BenchHashArgs, progress: &dyn Fn(&str)) -> anyhow::Result<HashReport> {
    check_args(args)?;
    let threads = args.threads.unwrap_or_else(cores);
    let secs = args.seconds;
    let buf = data(PIECE * PIECES_IN_BUFFER, 0x5a17);
    let lanes = data(LANES * READ_CHUNK, 0x1a4e);

    // The sixteen-lane kernel must agree with the sha1 crate before its speed means anything:
    // lane i's message is its 64 KiB chunk, PIECE / READ_CHUNK times over.
    let fresh = Sha1x16::new();
    if let Some(f) = &fresh {
        let mut h = f.clone();
        for _ in 0..PIECE / READ_CHUNK {
            h.update(&lanes, READ_CHUNK, READ_CHUNK);
        }
        let got = h.finalize();
        for (i, digest) in got.iter().enumerate() {
            let chunk = &lanes[i * READ_CHUNK..(i + 1) * READ_CHUNK];
            let mut want = Sha1::new();
            for _ in 0..PIECE / READ_CHUNK {
                want.update(chunk);
            }
            let want: [u8; 20] = want.finalize().into();
            if *digest != want {
                anyhow::bail!("the sixteen-lane SHA-1 disagrees with the sha1 crate (lane {i})");
            }
        }
    }
    let no_lanes = || "the CPU lacks AVX-512F/BW (the hasher uses the single stream)".to_string();

    progress("hash: sha1 crate, 1 thread");
    let single_one = on_threads(1, secs, &|d| single_stream(&buf, d));
    progress(&format!("hash: sha1 crate, {threads} threads"));
    let single_all = on_threads(threads, secs, &|d| single_stream(&buf, d));
    let (lanes_one, lanes_all) = match &fresh {
        Some(f) => {
            progress("hash: sixteen lanes, 1 thread");
            let one = on_threads(1, secs, &|d| sixteen_lanes(f, &lanes, d));
            progress(&format!("hash: sixteen lanes, {threads} threads"));
            let all = on_threads(threads, secs, &|d| sixteen_lanes(f, &lanes, d));
            (Ok(one), Ok(all))
        }
        None => (Err(no_lanes()), Err(no_lanes())),
    };
    let openssl_seconds = (secs.round() as u64).max(1);
    progress("hash: openssl speed -evp sha1");
    let openssl_one = openssl_speed(openssl_seconds, None);
    progress(&format!("hash: openssl speed -multi {threads} -evp sha1"));
    let openssl_all = openssl_speed(openssl_seconds, Some(threads));
    Ok(HashReport {
        threads,
        seconds: secs,
        single_one,
        single_all,
        lanes_one,
        lanes_all,
        openssl_one,
        openssl_all,
        openssl_seconds,
    })
}

fn ratio(ours: f64, theirs: &Result<f64, String>) -> Option<f64> {
    theirs.as_ref().ok().filter(|t| **t > 0.0).map(|t| ours / t)
}

/// One figure of ours and openssl's it compares with.
pub struct HashRow<'a> {
    pub key: &'static str,
    pub what: String,
    pub rate: Result<Rate, String>,
    pub openssl: &'a Result<f64, String>,
}

impl HashReport {
    /// The four figures, each with openssl's figure for the same cores.
    pub fn rows(&self) -> Vec<HashRow<'_>> {
        let row = |key, what, rate, openssl| HashRow {
            key,
            what,
            rate,
            openssl,
        };
        vec![
            row(
                "sha1_one_core",
                "sha1 crate, 1 thread".to_string(),
                Ok(self.single_one),
                &self.openssl_one,
            ),
            row(
                "sha1x16_one_core",
                "sixteen lanes, 1 thread".to_string(),
                self.lanes_one.clone(),
                &self.openssl_one,
            ),
            row(
                "sha1_all_cores",
                format!("sha1 crate, {} threads", self.threads),
                Ok(self.single_all),
                &self.openssl_all,
            ),
            row(
                "sha1x16_all_cores",
                format!("sixteen lanes, {} threads", self.threads),
                self.lanes_all.clone(),
                &self.openssl_all,
            ),
        ]
    }

    pub fn json(&self) -> serde_json::Value {
        let openssl = |r: &Result<f64, String>| match r {
            Ok(v) => serde_json::json!(v),
            Err(_) => serde_json::Value::Null,
        };
        let mut paths = serde_json::Map::new();
        for HashRow {
            key,
            what,
            rate,
            openssl: theirs,
        } in self.rows()
        {
            let v = match rate {
                Ok(r) => serde_json::json!({
                    "what": what, "bytes": r.bytes, "seconds": r.seconds,
                    "mb_per_s": r.mb_per_s(), "vs_openssl": ratio(r.mb_per_s(), theirs),
                }),
                Err(e) => serde_json::json!({"what": what, "error": e, "mb_per_s": null}),
            };
            paths.insert(key.to_string(), v);
        }
        serde_json::json!({
            "threads": self.threads,
            "seconds": self.seconds,
            "piece_bytes": PIECE,
            "update_bytes": UPDATE,
            "lane_chunk_bytes": READ_CHUNK,
            "paths": paths,
            "openssl": {
                "seconds": self.openssl_seconds,
                "one_core_mb_per_s": openssl(&self.openssl_one),
                "multi_mb_per_s": openssl(&self.openssl_all),
                "multi": self.threads,
                "error": self.openssl_one.as_ref().err().or(self.openssl_all.as_ref().err()),
            },
        })
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "SHA-1, {} KiB pieces ({} KiB updates; sixteen lanes: {} KiB chunks), {:.1} s per \
             figure; openssl speed -bytes 16384, {} s each\n{:<28} {:>10} {:>14} {:>9}\n",
            PIECE / 1024,
            UPDATE / 1024,
            READ_CHUNK / 1024,
            self.seconds,
            self.openssl_seconds,
            "path",
            "MB/s",
            "openssl MB/s",
            "ratio"
        );
        for HashRow {
            what,
            rate,
            openssl: theirs,
            ..
        } in self.rows()
        {
            let t = match theirs {
                Ok(v) => format!("{v:.0}"),
                Err(e) => format!("({e})"),
            };
            match rate {
                Ok(r) => {
                    let q = ratio(r.mb_per_s(), theirs)
                        .map(|q| format!("{q:.2}"))
                        .unwrap_or_else(|| "-".into());
                    s.push_str(&format!(
                        "{what:<28} {:>10.0} {t:>14} {q:>9}\n",
                        r.mb_per_s()
                    ));
                }
                Err(e) => s.push_str(&format!("{what:<28} {:>10} ({e})\n", "-")),
            }
        }
        s
    }
}

/// Runs `uring-bt bench hash`.
pub fn run_hash(args: BenchHashArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let quiet = |_: &str| {};
    let r = measure(&args, &quiet).context("bench hash")?;
    let text = if args.json {
        format!("{}\n", r.json())
    } else {
        r.table()
    };
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_speed_output() {
        let one = "The 'numbers' are in 1000s of bytes per second processed.\n\
                   type          16384 bytes\n\
                   sha1           1901487.32k\n";
        assert_eq!(parse_openssl_speed(one).map(|v| v.round()), Some(1901.0));
        let all_sizes = "type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes\n\
                         sha1            102658.13k   378780.48k   922270.98k  1549275.80k  1849810.94k  1853390.85k\n";
        assert_eq!(
            parse_openssl_speed(all_sizes).map(|v| v.round()),
            Some(1853.0)
        );
        let multi = "Forked child 0\nGot: +F:25:sha1:1851949056.00 from 0\nversion: 3.0.19\n\
                     sha1           3717890.05k\n";
        assert_eq!(parse_openssl_speed(multi).map(|v| v.round()), Some(3718.0));
        assert_eq!(parse_openssl_speed("nothing"), None);
        assert_eq!(parse_openssl_speed("sha1 abck\n"), None);
    }

    #[test]
    fn arguments_are_checked() {
        let ok = BenchHashArgs {
            seconds: 1.0,
            threads: None,
            json: false,
        };
        assert!(check_args(&ok).is_ok());
        for bad in [
            BenchHashArgs {
                seconds: 0.0,
                ..ok.clone()
            },
            BenchHashArgs {
                seconds: f64::NAN,
                ..ok.clone()
            },
            BenchHashArgs {
                threads: Some(0),
                ..ok.clone()
            },
        ] {
            let e = check_args(&bad).unwrap_err();
            assert_eq!(crate::cli::exit_code_for(&e), 2, "{bad:?}");
        }
    }

    #[test]
    fn both_paths_hash() {
        let buf = data(PIECE * PIECES_IN_BUFFER, 1);
        assert!(single_stream(&buf, Instant::now()) >= (PIECE * PIECES_IN_BUFFER) as u64);
        if let Some(f) = Sha1x16::new() {
            let lanes = data(LANES * READ_CHUNK, 2);
            assert_eq!(
                sixteen_lanes(&f, &lanes, Instant::now()),
                (LANES * PIECE) as u64
            );
        }
    }
}
