//! `uring-bt verify`: its arguments and both output forms (`key: value` lines and JSON).
//!
//! Output (stdout; every line `key: value`): `info_hash`, `pieces`, `good`, `bad`, then when some
//! are bad `bad_pieces: <ranges>` and one `bad_file: <path> (<problem>; pieces <ranges>)` per
//! file, then `result: complete|incomplete`. `--json`: one JSON object (see [`verify_json`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use serde_json::json;
use uring_bt_proto::metainfo::Metainfo;

use super::common::{load, note, progress_bar, threads, Fail, Out};
use crate::torrent::verify::{self, ranges, VerifyReport};

#[derive(Debug, Args)]
#[command(after_help = "\
DIR is the save directory: the data is at DIR/<name> (DIR/<name>/<path> for a multi-file
torrent), as other clients lay it out. Bad pieces are listed as ranges with the files they touch;
missing, short and unreadable files are reported as such.

Exit codes: 0 every piece is good, 1 some piece is bad or missing, 2 usage or input error.")]
pub(super) struct VerifyArgs {
    /// The .torrent file.
    #[arg(value_name = "FILE.torrent")]
    torrent: PathBuf,
    /// The save directory (content at DIR/<name>).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    json: bool,
    /// Hashing threads. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

/// The JSON form of `verify`: `info_hash`, `pieces`, `good`, `bad_pieces` (piece numbers),
/// `bad_files` (paths relative to the torrent's root), `complete`, and `problems` (one
/// `{path, problem, bad_pieces}` per bad file; problem is `missing`, `short: ...`,
/// `unreadable: ...` or `bad data`).
pub fn verify_json(m: &Metainfo, r: &VerifyReport) -> serde_json::Value {
    json!({
        "info_hash": m.info_hash_hex(),
        "pieces": r.pieces,
        "good": r.good,
        "bad_pieces": r.bad_pieces,
        "bad_files": r.bad_files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        "complete": r.complete(),
        "problems": r.bad_files.iter().map(|f| json!({
            "path": f.path,
            "problem": f.problem.to_string(),
            "bad_pieces": f.bad_pieces,
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn verify_cmd(a: VerifyArgs) -> Result<ExitCode, Fail> {
    let m = load(&a.torrent)?;
    match std::fs::metadata(&a.dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Fail::input(anyhow::anyhow!(
                "{}: not a directory (give the save directory; the data is at DIR/{})",
                a.dir.display(),
                m.name
            )))
        }
        Err(e) => {
            return Err(Fail::input(
                anyhow::Error::new(e).context(format!("save directory {}", a.dir.display())),
            ))
        }
    }
    let threads = threads(a.threads);
    let pb = progress_bar(m.total_length, "verifying");
    let start = Instant::now();
    let report = verify::verify(&m, &a.dir, threads, &|n| pb.inc(n));
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    note(format_args!(
        "verified {} in {:.2} s ({:.0} MB/s, {threads} threads)",
        crate::control::status::human_bytes(report.bytes),
        secs,
        report.bytes as f64 / secs.max(1e-9) / 1e6,
    ));
    let mut out = Out::new();
    if a.json {
        out.line(verify_json(&m, &report))?;
    } else {
        out.line(format_args!("info_hash: {}", m.info_hash_hex()))?;
        out.line(format_args!("pieces: {}", report.pieces))?;
        out.line(format_args!("good: {}", report.good))?;
        out.line(format_args!("bad: {}", report.bad_pieces.len()))?;
        if !report.bad_pieces.is_empty() {
            out.line(format_args!("bad_pieces: {}", ranges(&report.bad_pieces)))?;
        }
        for f in &report.bad_files {
            if f.bad_pieces.is_empty() {
                out.line(format_args!("bad_file: {} ({})", f.path, f.problem))?;
            } else {
                out.line(format_args!(
                    "bad_file: {} ({}; pieces {})",
                    f.path,
                    f.problem,
                    ranges(&f.bad_pieces)
                ))?;
            }
        }
        out.line(format_args!(
            "result: {}",
            if report.complete() {
                "complete"
            } else {
                "incomplete"
            }
        ))?;
    }
    out.flush()?;
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
