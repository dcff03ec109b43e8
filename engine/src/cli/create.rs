//! `uring-bt create`: its arguments, byte-count parsing, and writing the .torrent atomically.
//!
//! Output (stdout): `info_hash: <40 hex>`, `magnet: <uri>`; a summary on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;

use super::common::{note, progress_bar, threads, Fail, Out};
use crate::torrent::create::{self, CreateError, CreateOptions, Source};

#[derive(Debug, Args)]
#[command(after_help = "\
The torrent is a v1 torrent. Files of a directory are ordered by path, byte-wise; regular files
and links to regular files are included; links to directories, FIFOs, sockets and devices are
skipped with a warning. Hashing uses every core (see --threads).

Examples:
  uring-bt create movie.mkv -o movie.torrent
  uring-bt create photos/ -o photos.torrent --tracker http://a/announce --tracker udp://b:6969
  uring-bt create data/ -o d.torrent --tracker http://a/ann,http://a2/ann --piece-length 4MiB --private")]
pub(super) struct CreateArgs {
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

pub(super) fn create_cmd(a: CreateArgs) -> Result<ExitCode, Fail> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
