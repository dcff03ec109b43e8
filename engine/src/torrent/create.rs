//! Building .torrent files (v1): scan a file or directory, hash every piece on all cores, encode
//! canonical bencode.
//!
//! Decisions:
//! - **File order** is deterministic: files sorted by their `/`-joined relative path, byte-wise
//!   (as `strcmp` orders them, which is also mktorrent's order, so the same tree and piece length
//!   give mktorrent's info hash).
//! - **What is included**: regular files, and relative symbolic links that resolve to a regular
//!   file inside the save directory (their content is hashed, as mktorrent does); a link that is
//!   absolute or leaves the save directory is skipped, since our seeder (which opens beneath the
//!   save directory, RESOLVE_BENEATH) would refuse it. Directories are walked iteratively; symbolic links to
//!   directories are not followed (no loops), and those, broken links, FIFOs, sockets and devices
//!   are skipped, each reported in [`Source::skipped`] for the caller to print. Zero-length
//!   files are included. File names must be valid UTF-8 and pass the same checks as parsed
//!   torrents ([`uring_bt_proto::metainfo`]); anything else is refused, naming the file.
//! - **Piece length**: given, it must be a power of two from 16 KiB to 64 MiB; by default the
//!   smallest power of two that gives at most 2,048 pieces, clamped to 16 KiB..=16 MiB
//!   (libtorrent's rule; mktorrent's table gives the same for most sizes, e.g. 1 MiB for 2 GiB).
//! - **Trackers**: each tier is a list of URLs; one URL in all: `announce` only; more:
//!   `announce` = the first URL and `announce-list` = the tiers (BEP 12).
//! - The output is canonical bencode (keys sorted by `serde_bencode`); it is parsed back with
//!   [`Metainfo::from_bytes`] so a created torrent always passes our own checks.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_bytes::Bytes;
use uring_bt_proto::layout::{FileEntry, Layout, LayoutError};
use uring_bt_storage::hash::{hash_pieces, HashError};

use uring_bt_proto::metainfo::{self, Metainfo, MetainfoError, MAX_FILES, MAX_PIECES};

/// Smallest piece length `create` accepts or chooses.
pub const MIN_PIECE_LENGTH: u32 = 16 << 10;
/// Largest piece length `create` accepts when given explicitly.
pub const MAX_CREATE_PIECE_LENGTH: u32 = 64 << 20;
/// Largest piece length chosen automatically.
pub const MAX_AUTO_PIECE_LENGTH: u32 = 16 << 20;
/// The automatic piece length aims at no more than this many pieces.
pub const TARGET_PIECES: u64 = 2048;

/// Why a torrent could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no name (give a path that ends in a file or directory name)", .0.display())]
    NoName(PathBuf),
    #[error("{}: {reason}", path.display())]
    BadName { path: PathBuf, reason: String },
    #[error("{}: not a regular file or directory", .0.display())]
    NotAFileOrDirectory(PathBuf),
    #[error("{}: no data to hash (no files, or only empty ones)", .0.display())]
    Empty(PathBuf),
    #[error("{0} files, more than the limit of {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("piece length {0} must be a power of two from {MIN_PIECE_LENGTH} to {MAX_CREATE_PIECE_LENGTH}")]
    BadPieceLength(u64),
    #[error("{pieces} pieces of {piece_length} bytes, more than the limit of {MAX_PIECES}: use a larger piece length")]
    TooManyPieces { pieces: u64, piece_length: u32 },
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("reading {0}")]
    Hash(#[from] HashError),
    #[error("the new torrent does not parse back: {0}")]
    Metainfo(#[from] MetainfoError),
    #[error("encoding the torrent: {0}")]
    Encode(String),
}

impl CreateError {
    /// True when the error is about the input (a usage or input error, exit code 2) rather than
    /// a failure while doing the work (reading data, exit code 1).
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            CreateError::Hash(_) | CreateError::Encode(_) | CreateError::Metainfo(_)
        )
    }
}

/// One file to include.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Path elements below the torrent's directory (`[name]` for a single file).
    pub path: Vec<String>,
    /// Where it is on disk.
    pub disk_path: PathBuf,
    pub length: u64,
}

/// What `create` will hash: the scanned file or directory.
#[derive(Debug, Clone)]
pub struct Source {
    /// The torrent's name (the file or directory name).
    pub name: String,
    /// True for a directory (a multi-file torrent).
    pub multi_file: bool,
    /// Files in torrent order.
    pub files: Vec<SourceFile>,
    /// Entries left out, with the reason (for the caller to report).
    pub skipped: Vec<(PathBuf, String)>,
    pub total_length: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn element(path: &Path, name: &std::ffi::OsStr) -> Result<String, CreateError> {
    use std::os::unix::ffi::OsStrExt;
    metainfo::check_element(name.as_bytes()).map_err(|reason| CreateError::BadName {
        path: path.to_path_buf(),
        reason,
    })
}

/// Whether the symlink `link` is relative and resolves beneath `save_root`, as
/// `RESOLVE_BENEATH` demands.
fn link_stays_beneath(link: &Path, save_root: &Option<PathBuf>) -> bool {
    let relative = std::fs::read_link(link).is_ok_and(|t| t.is_relative());
    let inside = match (save_root, std::fs::canonicalize(link)) {
        (Some(root), Ok(target)) => target.starts_with(root),
        _ => false,
    };
    relative && inside
}

impl Source {
    /// Scans `path` (a file or a directory). Walks directories iteratively.
    pub fn scan(path: &Path) -> Result<Source, CreateError> {
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let name_os = match path.file_name() {
            Some(n) => n.to_os_string(),
            // `.`, `..`, `/`: name it after the directory it resolves to.
            None => std::fs::canonicalize(path)
                .map_err(io(path))?
                .file_name()
                .map(|n| n.to_os_string())
                .ok_or_else(|| CreateError::NoName(path.to_path_buf()))?,
        };
        let name = element(path, &name_os)?;
        if meta.is_file() {
            let length = meta.len();
            if length == 0 {
                return Err(CreateError::Empty(path.to_path_buf()));
            }
            return Ok(Source {
                files: vec![SourceFile {
                    path: vec![name.clone()],
                    disk_path: path.to_path_buf(),
                    length,
                }],
                name,
                multi_file: false,
                skipped: Vec::new(),
                total_length: length,
            });
        }
        if !meta.is_dir() {
            return Err(CreateError::NotAFileOrDirectory(path.to_path_buf()));
        }
        let mut files: Vec<SourceFile> = Vec::new();
        let mut skipped = Vec::new();
        // A seeder opens data beneath its save directory (the parent of this directory) and
        // follows no symlink out of it, nor any absolute one (RESOLVE_BENEATH): a link it would
        // refuse is left out here, so that `create` never makes a torrent our seeder refuses.
        let save_root = std::fs::canonicalize(path)
            .map_err(io(path))?
            .parent()
            .map(Path::to_path_buf);
        // (directory on disk, its path elements below the root)
        let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(path.to_path_buf(), Vec::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(io(&dir))?;
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let disk_path = entry.path();
                let ft = entry.file_type().map_err(io(&disk_path))?;
                let mut rel = prefix.clone();
                rel.push(element(&disk_path, &entry.file_name())?);
                if ft.is_dir() {
                    stack.push((disk_path, rel));
                    continue;
                }
                let meta = if ft.is_symlink() {
                    match std::fs::metadata(&disk_path) {
                        Ok(m) if m.is_file() && !link_stays_beneath(&disk_path, &save_root) => {
                            skipped.push((
                                disk_path,
                                "link that is absolute or leaves the save directory (a seeder \
                                 would refuse it)"
                                    .into(),
                            ));
                            continue;
                        }
                        Ok(m) if m.is_file() => m,
                        Ok(m) if m.is_dir() => {
                            skipped.push((disk_path, "link to a directory, not followed".into()));
                            continue;
                        }
                        Ok(_) => {
                            skipped.push((disk_path, "link to a special file".into()));
                            continue;
                        }
                        Err(e) => {
                            skipped.push((disk_path, format!("broken link ({e})")));
                            continue;
                        }
                    }
                } else if ft.is_file() {
                    entry.metadata().map_err(io(&disk_path))?
                } else {
                    skipped.push((disk_path, "not a regular file".into()));
                    continue;
                };
                files.push(SourceFile {
                    path: rel,
                    disk_path,
                    length: meta.len(),
                });
                if files.len() > MAX_FILES {
                    return Err(CreateError::TooManyFiles(files.len()));
                }
            }
        }
        // Byte-wise order of the `/`-joined path (strcmp order).
        files.sort_by_cached_key(|f| f.path.join("/").into_bytes());
        skipped.sort();
        let total_length = files.iter().map(|f| f.length).sum::<u64>();
        if total_length == 0 {
            return Err(CreateError::Empty(path.to_path_buf()));
        }
        Ok(Source {
            name,
            multi_file: true,
            files,
            skipped,
            total_length,
        })
    }
}

/// The piece length chosen when none is given: the smallest power of two that gives at most
/// [`TARGET_PIECES`] pieces, clamped to `MIN_PIECE_LENGTH..=MAX_AUTO_PIECE_LENGTH`.
pub fn auto_piece_length(total_length: u64) -> u32 {
    let want = total_length.div_ceil(TARGET_PIECES).max(1);
    let p = want
        .checked_next_power_of_two()
        .unwrap_or(u64::from(MAX_AUTO_PIECE_LENGTH));
    // Clamped into u32 range.
    p.clamp(
        u64::from(MIN_PIECE_LENGTH),
        u64::from(MAX_AUTO_PIECE_LENGTH),
    ) as u32
}

/// Checks a piece length given by the user.
pub fn check_piece_length(p: u64) -> Result<u32, CreateError> {
    if p.is_power_of_two()
        && (u64::from(MIN_PIECE_LENGTH)..=u64::from(MAX_CREATE_PIECE_LENGTH)).contains(&p)
    {
        Ok(p as u32)
    } else {
        Err(CreateError::BadPieceLength(p))
    }
}

/// Options of [`build`].
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Tracker tiers, in order; each a list of URLs.
    pub trackers: Vec<Vec<String>>,
    /// `None`: [`auto_piece_length`].
    pub piece_length: Option<u64>,
    pub private: bool,
    pub comment: Option<String>,
    /// `None`: "uring-bt <version>".
    pub created_by: Option<String>,
    /// `None`: no `creation date`.
    pub creation_date: Option<i64>,
    /// Hashing threads (at least 1).
    pub threads: usize,
}

/// A created torrent: its bytes and the parsed form.
#[derive(Debug, Clone)]
pub struct Created {
    pub bytes: Vec<u8>,
    pub metainfo: Metainfo,
}

#[derive(Serialize)]
struct OutTorrent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<&'a str>,
    #[serde(rename = "announce-list", skip_serializing_if = "Option::is_none")]
    announce_list: Option<&'a [Vec<String>]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(rename = "created by")]
    created_by: &'a str,
    #[serde(rename = "creation date", skip_serializing_if = "Option::is_none")]
    creation_date: Option<i64>,
    info: OutInfo<'a>,
}

#[derive(Serialize)]
struct OutInfo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<OutFile<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    name: &'a str,
    #[serde(rename = "piece length")]
    piece_length: u32,
    pieces: &'a Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    private: Option<u8>,
}

#[derive(Serialize)]
struct OutFile<'a> {
    length: u64,
    path: &'a [String],
}

/// The piece length `build` will use for `source` with `opts` (checked).
pub fn piece_length_for(source: &Source, opts: &CreateOptions) -> Result<u32, CreateError> {
    match opts.piece_length {
        Some(p) => check_piece_length(p),
        None => Ok(auto_piece_length(source.total_length)),
    }
}

/// Hashes `source` and encodes the torrent. `progress` gets byte counts as pieces are hashed.
pub fn build(
    source: &Source,
    opts: &CreateOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Created, CreateError> {
    let piece_length = piece_length_for(source, opts)?;
    let pieces = source.total_length.div_ceil(u64::from(piece_length));
    if pieces > MAX_PIECES {
        return Err(CreateError::TooManyPieces {
            pieces,
            piece_length,
        });
    }
    // Hash from the disk paths as scanned (root "" leaves them as they are).
    let layout = Layout::new(
        source
            .files
            .iter()
            .map(|f| FileEntry {
                path: f.disk_path.clone(),
                length: f.length,
                padding: false,
            })
            .collect(),
        piece_length,
    )?;
    let results = hash_pieces(&layout, Path::new(""), opts.threads.max(1), progress);
    let mut hashes = Vec::with_capacity(results.len() * 20);
    for r in results {
        hashes.extend_from_slice(&r?);
    }

    let default_by = concat!("uring-bt ", env!("CARGO_PKG_VERSION"));
    let tiers: Vec<Vec<String>> = opts
        .trackers
        .iter()
        .map(|t| t.iter().filter(|u| !u.is_empty()).cloned().collect())
        .filter(|t: &Vec<String>| !t.is_empty())
        .collect();
    let url_count: usize = tiers.iter().map(Vec::len).sum();
    let files: Option<Vec<OutFile>> = source.multi_file.then(|| {
        source
            .files
            .iter()
            .map(|f| OutFile {
                length: f.length,
                path: &f.path,
            })
            .collect()
    });
    let out = OutTorrent {
        announce: tiers.first().and_then(|t| t.first()).map(String::as_str),
        announce_list: (url_count > 1).then_some(tiers.as_slice()),
        comment: opts.comment.as_deref().filter(|c| !c.is_empty()),
        created_by: opts.created_by.as_deref().unwrap_or(default_by),
        creation_date: opts.creation_date,
        info: OutInfo {
            length: (!source.multi_file).then_some(source.total_length),
            files,
            name: &source.name,
            piece_length,
            pieces: Bytes::new(&hashes),
            private: opts.private.then_some(1),
        },
    };
    let bytes = serde_bencode::to_bytes(&out).map_err(|e| CreateError::Encode(e.to_string()))?;
    let metainfo = Metainfo::from_bytes(&bytes)?;
    Ok(Created { bytes, metainfo })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};

    #[test]
    fn auto_piece_length_rule() {
        assert_eq!(auto_piece_length(1), 16 << 10);
        assert_eq!(auto_piece_length(32 << 20), 16 << 10);
        assert_eq!(auto_piece_length((32 << 20) + 1), 32 << 10);
        assert_eq!(auto_piece_length(2 << 30), 1 << 20);
        assert_eq!(auto_piece_length(1 << 50), 16 << 20);
        assert!(check_piece_length(16384).is_ok());
        assert!(check_piece_length(64 << 20).is_ok());
        for bad in [0, 8192, 20000, 128 << 20] {
            assert!(matches!(
                check_piece_length(bad),
                Err(CreateError::BadPieceLength(_))
            ));
        }
    }

    #[test]
    fn directory_torrent_is_sorted_canonical_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("content");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a-c"), vec![1u8; 30000]).unwrap();
        std::fs::write(root.join("a/b"), vec![2u8; 20000]).unwrap();
        std::fs::write(root.join("Z"), b"").unwrap();
        std::os::unix::fs::symlink("a-c", root.join("link")).unwrap();
        std::os::unix::fs::symlink("a", root.join("dirlink")).unwrap();
        let src = Source::scan(&root).unwrap();
        let names: Vec<String> = src.files.iter().map(|f| f.path.join("/")).collect();
        // strcmp order: "Z" < "a-c" < "a/b" < "link".
        assert_eq!(names, ["Z", "a-c", "a/b", "link"]);
        assert_eq!(src.skipped.len(), 1);
        assert!(src.skipped[0].1.contains("directory"));
        let opts = CreateOptions {
            trackers: vec![
                vec!["http://t1/a".into(), "http://t2/a".into()],
                vec!["udp://t3:1".into()],
            ],
            piece_length: Some(16384),
            private: true,
            comment: Some("hello".into()),
            creation_date: Some(1_700_000_000),
            threads: 2,
            ..Default::default()
        };
        let c = build(&src, &opts, &|_| {}).unwrap();
        let m = &c.metainfo;
        assert_eq!(m.name, "content");
        assert!(m.private && m.multi_file);
        assert_eq!(m.total_length, 80000);
        assert_eq!(m.trackers.len(), 2);
        assert_eq!(m.comment.as_deref(), Some("hello"));
        // Canonical: re-encoding the parsed value gives the same bytes.
        let v: serde_bencode::value::Value = serde_bencode::from_bytes(&c.bytes).unwrap();
        assert_eq!(serde_bencode::to_bytes(&v).unwrap(), c.bytes);
        // The hashes are those of the concatenated stream.
        let mut stream = vec![1u8; 30000];
        stream.extend(vec![2u8; 20000]);
        stream.extend(vec![1u8; 30000]);
        let want: Vec<[u8; 20]> = stream
            .chunks(16384)
            .map(|c| Sha1::digest(c).into())
            .collect();
        assert_eq!(m.pieces, want);
        let s = String::from_utf8_lossy(&c.bytes);
        assert!(s.starts_with("d8:announce11:http://t1/a13:announce-listll11:http://t1/a11:http://t2/ael10:udp://t3:1ee7:comment5:hello10:created by"), "{s}");
    }

    #[test]
    fn single_file_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("one.bin");
        std::fs::write(&f, vec![9u8; 50000]).unwrap();
        let src = Source::scan(&f).unwrap();
        let c = build(
            &src,
            &CreateOptions {
                trackers: vec![vec!["http://t/".into()]],
                threads: 1,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap();
        assert!(!c.metainfo.multi_file);
        assert_eq!(c.metainfo.piece_length, 16384);
        assert!(!String::from_utf8_lossy(&c.bytes).contains("announce-list"));
        assert!(!String::from_utf8_lossy(&c.bytes).contains("creation date"));

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(matches!(Source::scan(&empty), Err(CreateError::Empty(_))));
        let missing = dir.path().join("nope");
        let e = Source::scan(&missing).unwrap_err();
        assert!(e.is_input_error());
        assert!(e.to_string().contains("nope: No such file"), "{e}");
        let bad = dir.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("a\\b"), b"x").unwrap();
        let e = Source::scan(&bad).unwrap_err().to_string();
        assert!(
            e.ends_with("a\\b: path element `a\\b` contains `\\`"),
            "{e}"
        );
    }
}
