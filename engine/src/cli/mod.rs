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

mod common;
mod create;
pub mod download;
mod info;
pub mod seed;
mod verify;

pub use common::{exit_code_for, UsageError};
use common::{note, Fail};

pub use info::info_json;
pub use verify::verify_json;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    Seed(Box<crate::cli::seed::SeedArgs>),
    /// Download a torrent (.torrent or magnet link) from peers, then stop or seed on.
    Download(Box<crate::cli::download::DownloadArgs>),
    /// Measure throughput against this machine's limits (no subcommand: hash, disk and net in
    /// turn, one table beside openssl and iperf3).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    all: crate::bench::BenchAllArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Read a file block by block through the storage engine (io_uring) and report MB/s.
    Disk(crate::bench::disk::BenchDiskArgs),
    /// SHA-1 throughput on one core and all, single stream and sixteen lanes, beside openssl.
    Hash(crate::bench::hash::BenchHashArgs),
    /// The ceiling of the network send path: MB/s and CPU-s per GiB of six ways to send a
    /// cached file's blocks, beside iperf3 (loopback, or --to a `bench net --serve`).
    Net(crate::bench::net::BenchNetArgs),
    /// The real seeder (a child `uring-bt seed`) against K cheap peers of our own on loopback:
    /// aggregate MB/s and the seeder's CPU per GiB, beside bench net's ceiling and floor.
    Swarm(crate::bench::swarm::BenchSwarmArgs),
}

/// Diagnostics (`tracing` events) go to stderr, filtered by `RUST_LOG` (default: warnings and
/// errors, e.g. a piece that failed its hash check or a refused buffer registration);
/// `RUST_LOG=uring_bt=debug` shows each peer's connect and disconnect with its reason.
fn init_logging() {
    // An empty or blank RUST_LOG counts as unset (it would otherwise silence warnings too).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal, and never with NO_COLOR set (no-color.org: non-empty).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A second initialisation (only possible from tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
        Command::Seed(a) => Ok(crate::cli::seed::run(*a)?),
        Command::Download(a) => Ok(crate::cli::download::run(*a)?),
        Command::Bench(b) => match b.command {
            Some(BenchCommand::Disk(a)) => Ok(crate::bench::disk::run_disk(a)?),
            Some(BenchCommand::Hash(a)) => Ok(crate::bench::hash::run_hash(a)?),
            Some(BenchCommand::Net(a)) => Ok(crate::bench::net::run_net(a)?),
            Some(BenchCommand::Swarm(a)) => Ok(crate::bench::swarm::run_swarm(a)?),
            None => Ok(crate::bench::run_all(b.all)?),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
