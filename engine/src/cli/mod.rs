//! The command line: the clap parser, `main`, logging, and the error and exit-code machinery
//! the commands share. One file per command:
//! - `create.rs`: `uring-bt create` (make a .torrent).
//! - `info.rs`: `uring-bt info` (show a .torrent; JSON form [`info_json`]).
//! - `verify.rs`: `uring-bt verify` (check data against a .torrent; JSON form [`verify_json`]).
//! - [`seed`]: `uring-bt seed` (the seeding server).
//! - `uring-bt bench` lives in `crate::bench`.
//!
//! In the manner of ripgrep: parse and validate everything first, then do the work.
//!
//! Exit codes: 0 success; 1 the work failed (bad data, a failed check, a read error while
//! hashing); 2 a usage or input error (bad arguments, a missing or malformed .torrent, a missing
//! input path). Errors are one line on stderr, `error: ...`, naming what is wrong. A closed
//! stdout (`uring-bt info x.torrent | head -1`) is not an error: output stops quietly and the exit
//! code is that of the work. Progress bars are drawn on stderr only when it is a terminal.
//!
//! Output formats (stdout; every line `key: value`, so they grep and parse simply) are described
//! in each command's file.

mod create;
mod info;
pub mod seed;
mod verify;

pub use info::info_json;
pub use verify::verify_json;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::torrent::create::CreateError;
use uring_bt_proto::metainfo::{Metainfo, MetainfoError};

use create::{create_cmd, CreateArgs};
use info::{info_cmd, InfoArgs};
use verify::{verify_cmd, VerifyArgs};

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

fn load(path: &Path) -> Result<Metainfo, Fail> {
    crate::torrent::load::metainfo_from_file(path).map_err(|e| match e {
        MetainfoError::Io { .. } => Fail::input(e),
        e => Fail::input(anyhow::Error::new(e).context(path.display().to_string())),
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
    fn exit_codes_classify_errors() {
        let e = anyhow::Error::new(UsageError("bad".into())).context("outer");
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::Error::new(MetainfoError::NoData);
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::anyhow!("disk on fire");
        assert_eq!(exit_code_for(&e), 1);
    }
}
