//! Interop of `uring-bt create` / `info` / `verify` with real torrent tools.
//!
//! - a torrent made by `uring-bt create` is loaded by libtorrent, which computes the same info
//!   hash and, checking the data, finds it complete;
//! - torrents made by mktorrent, transmission-create and libtorrent are read by
//!   `uring-bt info --json` with the info hash those tools (and libtorrent, the oracle) report,
//!   and `uring-bt verify` accepts their data (exit 0) and rejects a corrupted copy (exit 1),
//!   naming the bad piece and file.
//!
//! One single-file and one multi-file (hundreds of files, nested, empty files, sizes that are
//! not multiples of the piece size) case each. Data is seeded pseudo-random bytes.
//! Every tool these tests need must be installed: a missing one fails the test.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(300);
/// A loopback announce URL on a closed port, for tools that want a tracker (mktorrent).
const DUMMY_TRACKER: &str = "http://127.0.0.1:1/announce";

/// The data of one case: `parent/<name>` is the file or the tree's root directory.
struct Data {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    name: String,
    piece_length: u32,
}

impl Data {
    fn content(&self) -> PathBuf {
        self.parent.join(&self.name)
    }
    fn work(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }
}

/// One file of 5 MiB + 12,345 bytes (not a multiple of the 256 KiB piece).
fn single(seed: u64) -> Data {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("data");
    let name = "single-file.bin".to_string();
    write_random_file(&parent.join(&name), 5 * 1024 * 1024 + 12_345, seed);
    Data {
        _dir: dir,
        parent,
        name,
        piece_length: 256 * 1024,
    }
}

/// 300 files in nested directories, 0..=64 KiB each (many empty), 32 KiB pieces: pieces
/// straddle many files.
fn tree(seed: u64) -> Data {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("data");
    let name = "tree".to_string();
    let t = gen_tree(&parent.join(&name), 300, 64 * 1024, seed);
    assert!(t.files.values().filter(|l| **l == 0).count() >= 10);
    Data {
        _dir: dir,
        parent,
        name,
        piece_length: 32 * 1024,
    }
}

fn ours(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(bin());
    c.args(args);
    c
}

/// `uring-bt info <torrent> --json`, parsed.
fn our_info(torrent: &Path) -> Value {
    let mut c = Command::new(bin());
    c.arg("info").arg(torrent).arg("--json");
    let out = run_ok("uring-bt info --json", c, T);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("uring-bt info --json printed no JSON ({e}):\n{out}"))
}

/// `uring-bt verify <torrent> <dir> --json`: (exit code, parsed JSON).
fn our_verify(torrent: &Path, dir: &Path) -> (i32, Value) {
    let mut c = Command::new(bin());
    c.arg("verify").arg(torrent).arg(dir).arg("--json");
    let out = run("uring-bt verify --json", c, T);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "uring-bt verify exited {} (want 0 or 1)\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let v = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "uring-bt verify --json printed no JSON ({e}):\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        )
    });
    (code, v)
}

fn hex40(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    assert!(
        s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a hex info hash: {s:?}"
    );
    s
}

/// The files of a torrent as libtorrent sees them, without BEP 47 pad files, with paths
/// relative to the torrent root (the name itself for a single-file torrent), plus each file's
/// offset in the torrent's byte stream.
fn lt_files(lt: &Value) -> Vec<(String, u64, u64)> {
    let name = lt["name"].as_str().unwrap();
    let single =
        lt["num_files"].as_u64() == Some(1) && lt["files"][0]["path"].as_str() == Some(name);
    let mut off = 0u64;
    let mut out = Vec::new();
    for f in lt["files"].as_array().unwrap() {
        let size = f["size"].as_u64().unwrap();
        let path = f["path"].as_str().unwrap();
        if !f["pad"].as_bool().unwrap() {
            let rel = if single {
                path.to_string()
            } else {
                path.strip_prefix(&format!("{name}/"))
                    .unwrap_or_else(|| panic!("libtorrent path {path} outside {name}/"))
                    .to_string()
            };
            out.push((rel, size, off));
        }
        off += size;
    }
    out
}

/// `uring-bt info --json` agrees with libtorrent on everything both report.
fn assert_info_matches(torrent: &Path, lt: &Value, want_hash: &str) {
    let info = our_info(torrent);
    assert_eq!(
        hex40(info["info_hash"].as_str().expect("info_hash string")),
        want_hash,
        "uring-bt info: info hash of {}",
        torrent.display()
    );
    assert_eq!(info["name"], lt["name"], "name");
    assert_eq!(info["piece_length"], lt["piece_length"], "piece_length");
    assert_eq!(info["pieces"], lt["num_pieces"], "pieces");
    assert_eq!(info["total_length"], lt["total_size"], "total_length");
    let ours: Vec<(String, u64)> = info["files"]
        .as_array()
        .expect("files array")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("file path").to_string(),
                f["length"].as_u64().expect("file length"),
            )
        })
        .filter(|(p, _)| !is_pad_path(p))
        .collect();
    let theirs: Vec<(String, u64)> = lt_files(lt).into_iter().map(|(p, l, _)| (p, l)).collect();
    assert_eq!(ours.len(), theirs.len(), "number of files");
    assert_eq!(ours, theirs, "files (path, length), in torrent order");
    let magnet = info["magnet"].as_str().expect("magnet string");
    assert!(
        magnet
            .to_ascii_lowercase()
            .contains(&format!("xt=urn:btih:{want_hash}")),
        "magnet {magnet} lacks the info hash"
    );
}

fn is_pad_path(p: &str) -> bool {
    p.starts_with(".pad/") || p.contains("/.pad/") || p.contains("_____padding_file_")
}

/// verify accepts the data, rejects a copy with one flipped byte (naming that piece and file),
/// and rejects a copy with a file missing.
fn assert_verify_behaves(torrent: &Path, d: &Data, lt: &Value) {
    let pieces = lt["num_pieces"].as_u64().unwrap();
    let (code, v) = our_verify(torrent, &d.parent);
    assert_eq!(code, 0, "verify of intact data: {v}");
    assert_eq!(v["complete"], Value::Bool(true), "{v}");
    assert_eq!(v["pieces"].as_u64(), Some(pieces), "{v}");
    assert_eq!(v["good"].as_u64(), Some(pieces), "{v}");
    assert_eq!(v["bad_pieces"], Value::Array(vec![]), "{v}");
    assert_eq!(
        hex40(v["info_hash"].as_str().expect("info_hash")),
        hex40(lt["info_hash"].as_str().unwrap())
    );

    // a corrupted copy: flip a byte in the middle of the largest file
    let files = lt_files(lt);
    let (rel, size, off) = files
        .iter()
        .max_by_key(|(p, size, _)| (*size, std::cmp::Reverse(p.clone())))
        .cloned()
        .unwrap();
    assert!(size > 0);
    let copy_parent = d.work().join("corrupt");
    copy_tree(&d.content(), &copy_parent.join(&d.name));
    let single = lt["num_files"].as_u64() == Some(1);
    let target = if single {
        copy_parent.join(&d.name)
    } else {
        copy_parent.join(&d.name).join(&rel)
    };
    let at = size / 2;
    flip_byte(&target, at);
    let bad_piece = (off + at) / lt["piece_length"].as_u64().unwrap();
    let (code, v) = our_verify(torrent, &copy_parent);
    assert_eq!(code, 1, "verify of a corrupted copy must exit 1: {v}");
    assert_eq!(v["complete"], Value::Bool(false), "{v}");
    assert_eq!(v["good"].as_u64(), Some(pieces - 1), "{v}");
    assert_eq!(
        v["bad_pieces"],
        Value::Array(vec![Value::from(bad_piece)]),
        "the flipped byte is in piece {bad_piece}: {v}"
    );
    let bad_files: Vec<&str> = v["bad_files"]
        .as_array()
        .expect("bad_files")
        .iter()
        .map(|f| f.as_str().expect("bad file path"))
        .collect();
    assert!(
        bad_files.iter().any(|f| f.ends_with(rel.as_str())),
        "bad_files {bad_files:?} should name {rel}"
    );
    // libtorrent agrees that exactly one piece is bad
    let ltc = lt_info(torrent, Some(&copy_parent));
    assert_eq!(
        ltc["pieces_have"].as_u64(),
        Some(pieces - 1),
        "libtorrent: {ltc}"
    );

    // a copy with a file missing (multi-file: the largest one goes; single: the file)
    std::fs::remove_file(&target).unwrap();
    let (code, v) = our_verify(torrent, &copy_parent);
    assert_eq!(code, 1, "verify with a missing file must exit 1: {v}");
    assert_eq!(v["complete"], Value::Bool(false), "{v}");
    let bad = v["bad_pieces"].as_array().expect("bad_pieces").len() as u64;
    assert!(bad >= 1, "{v}");
}

// ---------------------------------------------------------------------------------------------
// uring-bt create -> libtorrent
// ---------------------------------------------------------------------------------------------

fn create_loaded_by_libtorrent(d: &Data, label: &'static str) {
    let _t = Timed::new(label);
    require_libtorrent();
    let torrent = d.work().join("ours.torrent");
    let mut c = ours(&[
        "create".as_ref(),
        d.content().as_os_str(),
        "-o".as_ref(),
        torrent.as_os_str(),
        "--piece-length".as_ref(),
        d.piece_length.to_string().as_ref(),
    ]);
    c.current_dir(d.work());
    let out = run_ok("uring-bt create", c, T);
    let our_hash = hex40(
        field(&out, "info_hash")
            .unwrap_or_else(|| panic!("uring-bt create printed no `info_hash:` line:\n{out}")),
    );
    let magnet = field(&out, "magnet").expect("uring-bt create prints a `magnet:` line");
    assert!(magnet.to_ascii_lowercase().contains(&our_hash), "{magnet}");

    let lt = lt_info(&torrent, Some(&d.parent));
    assert_eq!(
        hex40(lt["info_hash"].as_str().unwrap()),
        our_hash,
        "libtorrent computes another info hash for our torrent"
    );
    assert_eq!(lt["name"].as_str(), Some(d.name.as_str()));
    assert_eq!(lt["piece_length"].as_u64(), Some(u64::from(d.piece_length)));
    let on_disk = if d.content().is_file() {
        std::fs::metadata(d.content()).unwrap().len()
    } else {
        list_tree(&d.content()).values().sum()
    };
    assert_eq!(lt["total_size"].as_u64(), Some(on_disk), "total size");
    if d.content().is_dir() {
        let n_on_disk = list_tree(&d.content()).len() as u64;
        let n = lt_files(&lt).len() as u64;
        assert_eq!(
            n, n_on_disk,
            "every file (empty ones too) is in the torrent"
        );
    }
    assert_eq!(
        lt["is_seed"],
        Value::Bool(true),
        "libtorrent's check of the data: {lt}"
    );
    assert_eq!(lt["progress"].as_f64(), Some(1.0));
    assert_eq!(lt["pieces_have"], lt["num_pieces"]);
}

#[test]
fn create_single_file_libtorrent_loads_and_checks_it() {
    create_loaded_by_libtorrent(&single(1), "create_single_file_libtorrent");
}

#[test]
fn create_tree_libtorrent_loads_and_checks_it() {
    create_loaded_by_libtorrent(&tree(2), "create_tree_libtorrent");
}

// ---------------------------------------------------------------------------------------------
// foreign torrents -> uring-bt info / verify
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Tool {
    Mktorrent,
    TransmissionCreate,
    Libtorrent,
}

/// Makes a torrent of `d` with `tool`; returns (torrent path, the tool's own info hash if it
/// reports one).
fn foreign_torrent(tool: Tool, d: &Data) -> (PathBuf, Option<String>) {
    let out = d.work().join(format!("{tool:?}.torrent"));
    match tool {
        Tool::Mktorrent => {
            require_tool("mktorrent", "mktorrent");
            let log2 = d.piece_length.trailing_zeros();
            let mut c = Command::new("mktorrent");
            c.arg("-l")
                .arg(log2.to_string())
                .arg("-a")
                .arg(DUMMY_TRACKER)
                .arg("-d")
                .arg("-o")
                .arg(&out)
                .arg(d.content());
            run_ok("mktorrent", c, T);
            (out, None) // mktorrent prints no info hash
        }
        Tool::TransmissionCreate => {
            require_tool("transmission-create", "transmission-cli");
            require_tool("transmission-show", "transmission-cli");
            let mut c = Command::new("transmission-create");
            c.arg("-o")
                .arg(&out)
                .arg("-s")
                .arg((d.piece_length / 1024).to_string())
                .arg(d.content());
            run_ok("transmission-create", c, T);
            let mut c = Command::new("transmission-show");
            c.arg(&out);
            let shown = run_ok("transmission-show", c, T);
            let h = field(&shown, "  Hash")
                .or_else(|| {
                    shown
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("Hash:").map(str::trim))
                })
                .unwrap_or_else(|| panic!("transmission-show printed no Hash:\n{shown}"));
            (out, Some(hex40(h)))
        }
        Tool::Libtorrent => {
            let h = lt_create(&d.content(), &out, d.piece_length);
            (out, Some(hex40(&h)))
        }
    }
}

fn foreign_case(tool: Tool, d: &Data, label: &'static str) {
    let _t = Timed::new(label);
    require_libtorrent();
    let (torrent, tool_hash) = foreign_torrent(tool, d);
    // the oracle: libtorrent's reading of the tool's torrent, and its check of the data
    let lt = lt_info(&torrent, Some(&d.parent));
    let lt_hash = hex40(lt["info_hash"].as_str().unwrap());
    if let Some(h) = &tool_hash {
        assert_eq!(
            h, &lt_hash,
            "{tool:?} and libtorrent disagree on the info hash"
        );
    }
    assert_eq!(
        lt["is_seed"],
        Value::Bool(true),
        "{tool:?}'s torrent must match its data: {lt}"
    );
    assert_eq!(lt["piece_length"].as_u64(), Some(u64::from(d.piece_length)));
    assert_info_matches(&torrent, &lt, &lt_hash);
    assert_verify_behaves(&torrent, d, &lt);
}

#[test]
fn mktorrent_single_file_info_and_verify() {
    foreign_case(Tool::Mktorrent, &single(11), "mktorrent_single_file");
}

#[test]
fn mktorrent_tree_info_and_verify() {
    foreign_case(Tool::Mktorrent, &tree(12), "mktorrent_tree");
}

#[test]
fn transmission_create_single_file_info_and_verify() {
    foreign_case(
        Tool::TransmissionCreate,
        &single(21),
        "transmission_create_single_file",
    );
}

#[test]
fn transmission_create_tree_info_and_verify() {
    // transmission-create leaves empty files out of the torrent: libtorrent's view of its
    // torrent is the reference, not the directory listing.
    foreign_case(
        Tool::TransmissionCreate,
        &tree(22),
        "transmission_create_tree",
    );
}

#[test]
fn libtorrent_single_file_info_and_verify() {
    foreign_case(Tool::Libtorrent, &single(31), "libtorrent_single_file");
}

#[test]
fn libtorrent_tree_info_and_verify() {
    foreign_case(Tool::Libtorrent, &tree(32), "libtorrent_tree");
}
