//! `uring-bt info`: its arguments and both output forms (`key: value` lines and JSON).
//!
//! Output (stdout; every line `key: value`): `name`, `info_hash`, `piece_length`, `pieces`,
//! `total_length`, `private`, then the optional `comment`, `created_by`, `creation_date`, then one
//! `tracker: <tier> <url>` per URL (tiers from 1), `web_seed: <url>`, `files: <count>`, one
//! `file: <length> <path>` per file (padding files left out), and `magnet`. `--json`: one JSON
//! object (see [`info_json`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use uring_bt_proto::metainfo::Metainfo;

use super::common::{load, Fail, Out};

#[derive(Debug, Args)]
pub(super) struct InfoArgs {
    /// The .torrent file.
    #[arg(value_name = "FILE.torrent")]
    torrent: PathBuf,
    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    json: bool,
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

pub(super) fn info_cmd(a: InfoArgs) -> Result<ExitCode, Fail> {
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
