//! The command line: `uring-bt create | info | verify | seed | bench`.
//!
//! In the manner of ripgrep: parse and validate everything first, then do the work.
//!
//! Exit codes: 0 success; 1 the work failed (bad data, a failed check, a read error while
//! hashing); 2 a usage or input error (bad arguments, a missing or malformed .torrent, a missing
//! input path). Errors are one line on stderr, `error: ...`, naming what is wrong. A closed
//! stdout (`uring-bt info x.torrent | head -1`) is not an error: output stops quietly and the exit
//! code is that of the work. Progress bars are drawn on stderr only when it is a terminal.
//!
//! Output formats (stdout; every line `key: value`, so they grep and parse simply):
//! - `create`: `info_hash: <40 hex>`, `magnet: <uri>`; a summary on stderr.
//! - `info`: `name`, `info_hash`, `piece_length`, `pieces`, `total_length`, `private`, then the
//!   optional `comment`, `created_by`, `creation_date`, then one `tracker: <tier> <url>` per URL
//!   (tiers from 1), `web_seed: <url>`, `files: <count>`, one `file: <length> <path>` per file
//!   (padding files left out), and `magnet`. `--json`: one JSON object (see [`info_json`]).
//! - `verify`: `info_hash`, `pieces`, `good`, `bad`, then when some are bad `bad_pieces: <ranges>`
//!   and one `bad_file: <path> (<problem>; pieces <ranges>)` per file, then
//!   `result: complete|incomplete`. `--json`: see [`verify_json`].

pub mod seed;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::torrent::create::{self, CreateError, CreateOptions, Source};
use crate::torrent::verify::{self, ranges, VerifyReport};
use uring_bt_proto::metainfo::{Metainfo, MetainfoError};

const ABOUT: &str = "A thread-per-core io_uring BitTorrent engine: create, inspect and verify \
torrents, and seed them fast.";

const AFTER_HELP: &str = "\
Examples:
  uring-bt create /srv/isos/debian.iso -o debian.torrent --tracker http://tracker.example/announce
  uring-bt info debian.torrent
  uring-bt info debian.torrent --json
  uring-bt verify debian.torrent /srv/isos          (data at /srv/isos/<name>)
  uring-bt seed debian.torrent --data /srv/isos

Exit codes: 0 success, 1 the work failed (bad data, a failed check), 2 usage or input error.
Run `uring-bt <COMMAND> --help` for each command's options.";

#[derive(Debug, Parser)]
#[command(
    name = "uring-bt",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a .torrent from a file or a directory, hashing on all cores.
    Create(CreateArgs),
    /// Show what a .torrent holds: name, info hash, pieces, files, trackers, magnet link.
    Info(InfoArgs),
    /// Check data on disk against a .torrent; exit 0 when every piece is good, 1 otherwise.
    Verify(VerifyArgs),
    /// Seed torrents to peers (thread-per-core, io_uring).
    Seed(crate::cli::seed::SeedArgs),
    /// Measure throughput against this machine's limits.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Read a file block by block through the storage engine (io_uring) and report MB/s.
    Disk(crate::bench::disk::BenchDiskArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "\
The torrent is a v1 torrent. Files of a directory are ordered by path, byte-wise; regular files
and links to regular files are included; links to directories, FIFOs, sockets and devices are
skipped with a warning. Hashing uses every core (see --threads).

Examples:
  uring-bt create movie.mkv -o movie.torrent
  uring-bt create photos/ -o photos.torrent --tracker http://a/announce --tracker udp://b:6969
  uring-bt create data/ -o d.torrent --tracker http://a/ann,http://a2/ann --piece-length 4MiB --private")]
struct CreateArgs {
    /// The file or directory to make a torrent of (its name becomes the torrent's name).
    path: PathBuf,
    /// Where to write the .torrent (replaced if it exists).
    #[arg(short, long, value_name = "FILE.torrent")]
    output: PathBuf,
    /// A tracker announce URL. Repeat for more tiers (BEP 12); URLs joined by commas in one
    /// value share a tier.
    #[arg(short, long = "tracker", value_name = "URL")]
    trackers: Vec<String>,
    /// Bytes per piece: a power of two from 16 KiB to 64 MiB (suffixes K, KiB, M, MiB accepted).
    /// Default: the smallest power of two giving at most 2048 pieces, 16 KiB to 16 MiB.
    #[arg(short = 'l', long, value_name = "BYTES", value_parser = parse_size)]
    piece_length: Option<u64>,
    /// Mark the torrent private (BEP 27: no DHT, PEX or LSD for it).
    #[arg(short, long)]
    private: bool,
    /// A comment stored in the torrent.
    #[arg(short, long, value_name = "TEXT")]
    comment: Option<String>,
    /// Leave out the creation date (for reproducible output).
    #[arg(long)]
    no_date: bool,
    /// Hashing threads. Default: one per core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// The .torrent file.
    #[arg(value_name = "FILE.torrent")]
    torrent: PathBuf,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
DIR is the save directory: the data is at DIR/<name> (DIR/<name>/<path> for a multi-file
torrent), as other clients lay it out. Bad pieces are listed as ranges with the files they touch;
missing, short and unreadable files are reported as such.

Exit codes: 0 every piece is good, 1 some piece is bad or missing, 2 usage or input error.")]
struct VerifyArgs {
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

/// Marks an error as a usage or input error (exit code 2) when it travels inside an
/// `anyhow::Error` (for commands implemented elsewhere, e.g. `seed`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error: 2 when any cause in its chain is an input error (a
/// [`UsageError`], a [`MetainfoError`], a [`CreateError`] about the input, a clap error), else 1.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    let input = err.chain().any(|c| {
        c.is::<UsageError>()
            || c.is::<MetainfoError>()
            || c.is::<clap::Error>()
            || c.downcast_ref::<CreateError>()
                .is_some_and(CreateError::is_input_error)
    });
    if input {
        2
    } else {
        1
    }
}

/// A failed command: the error and its exit code.
struct Fail {
    code: u8,
    err: anyhow::Error,
}

impl Fail {
    fn input(err: impl Into<anyhow::Error>) -> Fail {
        Fail {
            code: 2,
            err: err.into(),
        }
    }
    fn work(err: impl Into<anyhow::Error>) -> Fail {
        Fail {
            code: 1,
            err: err.into(),
        }
    }
}

impl From<anyhow::Error> for Fail {
    fn from(err: anyhow::Error) -> Fail {
        Fail {
            code: exit_code_for(&err),
            err,
        }
    }
}

/// Stdout, where a closed pipe stops output quietly.
struct Out {
    inner: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    fn new() -> Out {
        Out {
            inner: std::io::stdout().lock(),
            closed: false,
        }
    }

    fn line(&mut self, s: impl std::fmt::Display) -> Result<(), Fail> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.inner, "{s}") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Fail::work(
                anyhow::Error::new(e).context("writing to stdout"),
            )),
        }
    }

    fn flush(&mut self) -> Result<(), Fail> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Fail::work(
                anyhow::Error::new(e).context("writing to stdout"),
            )),
            _ => Ok(()),
        }
    }
}

/// Prints a line on stderr, ignoring errors (there is nowhere else to report them).
fn note(s: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

/// Diagnostics (`tracing` events) go to stderr, filtered by `RUST_LOG` (default: warnings and
/// errors, e.g. a piece that failed its hash check or a refused buffer registration);
/// `RUST_LOG=uring_bt=debug` shows each peer's connect and disconnect with its reason.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second initialisation (only possible from tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        // One line, no backtrace: a panic is a bug, say so and where.
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        note(format_args!("error: internal error (a bug){at}: {msg}"));
    }));
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout (exit 0); usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            note(format_args!("error: {}", one_line(&f.err)));
            ExitCode::from(f.code)
        }
    }
}

/// The error and its causes on one line: `outer: inner: root`. A cause whose text the message
/// before it already contains (thiserror messages often embed their source) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in err.chain() {
        let msg = cause.to_string();
        if !last.is_empty() && last.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
        last = msg;
    }
    out.replace('\n', " ")
}

fn run(cli: Cli) -> Result<ExitCode, Fail> {
    match cli.command {
        Command::Create(a) => create_cmd(a),
        Command::Info(a) => info_cmd(a),
        Command::Verify(a) => verify_cmd(a),
        Command::Seed(a) => Ok(crate::cli::seed::run(a)?),
        Command::Bench(BenchCommand::Disk(a)) => Ok(crate::bench::disk::run_disk(a)?),
    }
}

fn threads(n: Option<u32>) -> usize {
    match n {
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

/// A byte-count progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Parses a byte count: `262144`, `256K`, `256KiB`, `4M`, `4MiB` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (e.g. 262144, 256K, 4MiB)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use K, KiB, M, MiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn create_cmd(a: CreateArgs) -> Result<ExitCode, Fail> {
    // Validate everything before hashing.
    let piece_length = a
        .piece_length
        .map(create::check_piece_length)
        .transpose()
        .map_err(Fail::input)?;
    let out_dir = match a.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(Fail::input(anyhow::anyhow!(
            "{}: the output's directory {} does not exist",
            a.output.display(),
            out_dir.display()
        )));
    }
    if a.output.is_dir() {
        return Err(Fail::input(anyhow::anyhow!(
            "{}: is a directory (give the .torrent file name)",
            a.output.display()
        )));
    }
    let trackers: Vec<Vec<String>> = a
        .trackers
        .iter()
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect()
        })
        .collect();
    let source = Source::scan(&a.path).map_err(Fail::from_create)?;
    for (path, why) in &source.skipped {
        note(format_args!("warning: skipped {}: {why}", path.display()));
    }
    let opts = CreateOptions {
        trackers,
        piece_length: piece_length.map(u64::from),
        private: a.private,
        comment: a.comment,
        created_by: None,
        creation_date: if a.no_date {
            None
        } else {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        },
        threads: threads(a.threads),
    };
    let pb = progress_bar(source.total_length, "hashing");
    let start = Instant::now();
    let created = create::build(&source, &opts, &|n| pb.inc(n)).map_err(Fail::from_create)?;
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    write_atomically(&a.output, &created.bytes)
        .with_context(|| format!("writing {}", a.output.display()))
        .map_err(Fail::work)?;
    let m = &created.metainfo;
    note(format_args!(
        "created {}: {} file(s), {}, {} pieces of {}, hashed in {:.2} s ({:.0} MB/s, {} threads)",
        a.output.display(),
        source.files.len(),
        crate::control::status::human_bytes(m.total_length),
        m.num_pieces(),
        crate::control::status::human_bytes(u64::from(m.piece_length)),
        secs,
        m.total_length as f64 / secs.max(1e-9) / 1e6,
        opts.threads,
    ));
    let mut out = Out::new();
    out.line(format_args!("info_hash: {}", m.info_hash_hex()))?;
    out.line(format_args!("magnet: {}", m.magnet(&[])))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

impl Fail {
    fn from_create(e: CreateError) -> Fail {
        if e.is_input_error() {
            Fail::input(e)
        } else {
            Fail::work(e)
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn load(path: &Path) -> Result<Metainfo, Fail> {
    crate::torrent::load::metainfo_from_file(path).map_err(|e| match e {
        MetainfoError::Io { .. } => Fail::input(e),
        e => Fail::input(anyhow::Error::new(e).context(path.display().to_string())),
    })
}

/// The JSON form of `info`: `info_hash`, `name`, `piece_length`, `pieces`, `total_length`,
/// `files` (each `path` relative to the torrent's root and `length`; padding files left out),
/// `trackers` (tiers of URLs), `private`, `magnet`, and also `comment`, `created_by`,
/// `creation_date` (null when absent) and `url_list`.
pub fn info_json(m: &Metainfo) -> serde_json::Value {
    let files: Vec<serde_json::Value> = m
        .files
        .iter()
        .filter(|f| !f.attr.padding)
        .map(|f| json!({"path": f.display_path(), "length": f.length}))
        .collect();
    json!({
        "info_hash": m.info_hash_hex(),
        "name": m.name,
        "piece_length": m.piece_length,
        "pieces": m.num_pieces(),
        "total_length": m.total_length,
        "files": files,
        "trackers": m.trackers,
        "private": m.private,
        "magnet": m.magnet(&[]),
        "comment": m.comment,
        "created_by": m.created_by,
        "creation_date": m.creation_date,
        "url_list": m.url_list,
    })
}

fn info_cmd(a: InfoArgs) -> Result<ExitCode, Fail> {
    let m = load(&a.torrent)?;
    let mut out = Out::new();
    if a.json {
        out.line(info_json(&m))?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    out.line(format_args!("name: {}", m.name))?;
    out.line(format_args!("info_hash: {}", m.info_hash_hex()))?;
    out.line(format_args!("piece_length: {}", m.piece_length))?;
    out.line(format_args!("pieces: {}", m.num_pieces()))?;
    out.line(format_args!("total_length: {}", m.total_length))?;
    out.line(format_args!("private: {}", m.private))?;
    if let Some(c) = &m.comment {
        out.line(format_args!("comment: {}", c.replace('\n', " ")))?;
    }
    if let Some(c) = &m.created_by {
        out.line(format_args!("created_by: {c}"))?;
    }
    if let Some(d) = m.creation_date {
        out.line(format_args!("creation_date: {d}"))?;
    }
    for (tier, urls) in m.trackers.iter().enumerate() {
        for u in urls {
            out.line(format_args!("tracker: {} {u}", tier + 1))?;
        }
    }
    for u in &m.url_list {
        out.line(format_args!("web_seed: {u}"))?;
    }
    let files: Vec<_> = m.files.iter().filter(|f| !f.attr.padding).collect();
    out.line(format_args!("files: {}", files.len()))?;
    for f in files {
        out.line(format_args!("file: {} {}", f.length, f.display_path()))?;
    }
    out.line(format_args!("magnet: {}", m.magnet(&[])))?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
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

fn verify_cmd(a: VerifyArgs) -> Result<ExitCode, Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("262144"), Ok(262144));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn exit_codes_classify_errors() {
        let e = anyhow::Error::new(UsageError("bad".into())).context("outer");
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::Error::new(MetainfoError::NoData);
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::anyhow!("disk on fire");
        assert_eq!(exit_code_for(&e), 1);
    }
}
