//! Metainfo (.torrent, BitTorrent v1): parsing, validation, the info hash, magnet links.
//!
//! Parsing order, so that a hostile file cannot hurt us:
//! 1. size check against [`MAX_TORRENT_SIZE`] (before reading more than that from a file);
//! 2. [`bencode::validate`] with [`Limits::TORRENT`]: iterative, depth/token/size limits, strict
//!    integers and string lengths; the whole file must be exactly one dictionary;
//! 3. [`bencode::dict_entries`] finds the raw bytes of the `info` value: the info hash is SHA-1
//!    over those exact bytes (key order and unknown keys preserved), never over a re-encoding;
//! 4. only then `serde_bencode` (which recurses, at most `max_depth` levels now) reads typed
//!    fields; every value is range-checked and every path element checked before use.
//!
//! Supported: single- and multi-file torrents, `announce` and `announce-list` (BEP 12),
//! `private` (BEP 27), `url-list` (BEP 19, kept), padding files and file attributes (BEP 47),
//! `creation date`, `comment`, `created by`, and `name.utf-8` / `path.utf-8` when present.
//!
//! # Limits (all refused with a typed error)
//! - [`MAX_TORRENT_SIZE`]: 64 MiB of .torrent.
//! - [`MAX_PIECE_LENGTH`]: piece length must be in `1..=64 MiB`. BEP 3 does not require a power
//!   of two and neither do we (many creators use one; libtorrent accepts others for v1).
//! - [`MAX_PIECES`]: 2,097,152 pieces (40 MiB of hashes); `pieces` must be a multiple of 20
//!   bytes and hold exactly `ceil(total_length / piece_length)` hashes.
//! - [`MAX_FILES`], [`MAX_PATH_DEPTH`] (elements below the torrent's directory),
//!   [`MAX_NAME_LEN`] (bytes of one element, the filesystem's NAME_MAX), [`MAX_PATH_LEN`].
//! - Paths are untrusted: an element that is empty, `.`, `..`, or holds `/`, `\` or NUL is
//!   refused (so no element can be absolute or climb out of the save directory), as are two
//!   files with the same path and a file whose path is another file's directory. BEP 47 padding
//!   files are exempt from the duplicate check (libtorrent names them `.pad/<size>`, so several
//!   share a path); they are never opened.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::layout::{FileEntry, Layout, LayoutError};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_bencode::value::Value;
use serde_bytes::ByteBuf;
use sha1::{Digest, Sha1};

use crate::bencode::{self, BencodeError, Limits};

/// Largest .torrent file accepted, in bytes.
pub const MAX_TORRENT_SIZE: usize = 64 << 20;
/// Largest piece length accepted, in bytes.
pub const MAX_PIECE_LENGTH: u64 = 64 << 20;
/// Most pieces a torrent may have.
pub const MAX_PIECES: u64 = 1 << 21;
/// Most files (padding files included) a torrent may list.
pub const MAX_FILES: usize = 1 << 20;
/// Most path elements of one file below the torrent's directory.
pub const MAX_PATH_DEPTH: usize = 64;
/// Longest name of one path element (and of the torrent's name), in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest path of one file (name, elements and separators), in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a .torrent is refused. Each message names what is wrong (and which file, for paths).
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("torrent file is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("malformed bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("the torrent is not a dictionary")]
    NotADictionary,
    #[error("{0} bytes of trailing data after the torrent dictionary")]
    TrailingData(usize),
    #[error("key `{0}` appears twice")]
    DuplicateKey(String),
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("`{key}` is not {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("bad `info` dictionary: {0}")]
    BadInfo(String),
    #[error("piece length {0} is out of range (1 to {MAX_PIECE_LENGTH} bytes)")]
    BadPieceLength(i64),
    #[error("`pieces` is {0} bytes long, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    #[error(
        "`pieces` holds {actual} hashes but the total length and piece length need {expected}"
    )]
    PieceCountMismatch { expected: u64, actual: u64 },
    #[error("{0} pieces, more than the limit of {MAX_PIECES}")]
    TooManyPieces(u64),
    #[error("`info` has both `length` and `files`")]
    BothLengthAndFiles,
    #[error("`info` has neither `length` nor `files`")]
    NoLengthNorFiles,
    #[error("{0} files, more than the limit of {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("file {file}: bad length {length}")]
    BadLength { file: String, length: i64 },
    #[error("file {file}: {reason}")]
    BadPath { file: String, reason: String },
    #[error("torrent name: {0}")]
    BadName(String),
    #[error("duplicate file path {0}")]
    DuplicatePath(String),
    #[error("file path {0} is also used as a directory by another file")]
    PathConflict(String),
    #[error("the total length overflows 64 bits")]
    LengthOverflow,
    #[error("the torrent has no data (total length 0)")]
    NoData,
    #[error("{0}")]
    Layout(#[from] LayoutError),
}

/// BEP 47 attributes of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileAttr {
    /// `p`: a padding file (zeros, never stored).
    pub padding: bool,
    /// `x`: executable.
    pub executable: bool,
    /// `h`: hidden.
    pub hidden: bool,
    /// `l`: a symbolic link to `symlink_path` (elements relative to the torrent's root).
    pub symlink: Option<Vec<String>>,
}

/// One file as the metainfo lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path elements relative to the torrent's root: `[name]` for a single-file torrent, the
    /// `path` list (without the torrent's name) for a multi-file one.
    pub path: Vec<String>,
    /// Length in bytes.
    pub length: u64,
    /// BEP 47 attributes.
    pub attr: FileAttr,
}

impl FileInfo {
    /// The path joined with `/` (relative to the torrent's root, as `info --json` shows it).
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// A parsed, validated v1 torrent. Built only by [`Metainfo::from_bytes`] (and
/// `uring-bt`'s `torrent::load`); the fields are public for reading and must be treated as read-only
/// (the info hash, pieces and layout are consistent with each other by construction).
#[derive(Debug, Clone)]
pub struct Metainfo {
    /// SHA-1 of the raw bytes of the `info` value as they stand in the file.
    pub info_hash: [u8; 20],
    /// The raw bytes of the `info` value (served to peers by BEP 9 metadata exchange).
    pub info_bytes: Vec<u8>,
    /// The torrent's name: the file name (single-file) or the directory name (multi-file).
    pub name: String,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u32,
    /// One SHA-1 hash per piece.
    pub pieces: Vec<[u8; 20]>,
    /// Files in metainfo order (padding files included).
    pub files: Vec<FileInfo>,
    /// True when `info` has `files` (a directory), false when it has `length`.
    pub multi_file: bool,
    /// Sum of all file lengths (padding included).
    pub total_length: u64,
    /// Tracker tiers (BEP 12): `announce-list` when present and usable, else `[[announce]]`.
    pub trackers: Vec<Vec<String>>,
    /// BEP 27 private flag.
    pub private: bool,
    /// BEP 19 web seeds (`url-list`), kept but not used.
    pub url_list: Vec<String>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// Seconds since the Unix epoch.
    pub creation_date: Option<i64>,
    layout: Layout,
}

#[derive(Deserialize)]
struct RawInfo {
    #[serde(default)]
    name: Option<ByteBuf>,
    #[serde(rename = "name.utf-8", default)]
    name_utf8: Option<ByteBuf>,
    #[serde(rename = "piece length", default)]
    piece_length: Option<i64>,
    #[serde(default)]
    pieces: Option<ByteBuf>,
    #[serde(default)]
    length: Option<i64>,
    #[serde(default)]
    files: Option<Vec<RawFile>>,
    #[serde(default)]
    private: Option<i64>,
    #[serde(default)]
    attr: Option<ByteBuf>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    length: Option<i64>,
    #[serde(default)]
    path: Option<Vec<ByteBuf>>,
    #[serde(rename = "path.utf-8", default)]
    path_utf8: Option<Vec<ByteBuf>>,
    #[serde(default)]
    attr: Option<ByteBuf>,
    #[serde(rename = "symlink path", default)]
    symlink_path: Option<Vec<ByteBuf>>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks one untrusted path element. Returns the reason it is refused.
pub fn check_element(e: &[u8]) -> Result<String, String> {
    let shown = lossy(e);
    if e.is_empty() {
        return Err("empty path element".into());
    }
    if e == b"." || e == b".." {
        return Err(format!("path element `{shown}` is not allowed"));
    }
    if e.contains(&b'/') {
        return Err(format!("path element `{shown}` contains `/`"));
    }
    if e.contains(&b'\\') {
        return Err(format!("path element `{shown}` contains `\\`"));
    }
    if e.contains(&0) {
        return Err(format!(
            "path element `{}` contains NUL",
            shown.escape_debug()
        ));
    }
    if e.len() > MAX_NAME_LEN {
        return Err(format!(
            "path element of {} bytes is longer than {MAX_NAME_LEN}",
            e.len()
        ));
    }
    String::from_utf8(e.to_vec()).map_err(|_| format!("path element `{shown}` is not UTF-8"))
}

fn parse_attr(attr: Option<&ByteBuf>, symlink: Option<Vec<String>>) -> FileAttr {
    let a = attr.map(|a| a.as_slice()).unwrap_or(b"");
    FileAttr {
        padding: a.contains(&b'p'),
        executable: a.contains(&b'x'),
        hidden: a.contains(&b'h'),
        symlink: if a.contains(&b'l') { symlink } else { None },
    }
}

/// Reads a typed value from its raw bencoded bytes (already validated).
fn typed<'de, T: Deserialize<'de>>(raw: &'de [u8]) -> Result<T, serde_bencode::Error> {
    serde_bencode::from_bytes(raw)
}

fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

impl Metainfo {
    /// Parses and validates a .torrent held in memory.
    pub fn from_bytes(buf: &[u8]) -> Result<Metainfo, MetainfoError> {
        if buf.len() > MAX_TORRENT_SIZE {
            return Err(MetainfoError::TooLarge {
                size: buf.len() as u64,
                limit: MAX_TORRENT_SIZE,
            });
        }
        let limits = Limits::TORRENT;
        let len = bencode::validate(buf, &limits)?;
        if buf.first() != Some(&b'd') {
            return Err(MetainfoError::NotADictionary);
        }
        if len != buf.len() {
            return Err(MetainfoError::TrailingData(buf.len() - len));
        }
        let entries = bencode::dict_entries(buf, &limits)?;
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for (k, _) in &entries {
            if !seen.insert(k) {
                return Err(MetainfoError::DuplicateKey(lossy(k)));
            }
        }
        let get = |key: &[u8]| entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);

        let info_raw = get(b"info").ok_or(MetainfoError::Missing("info"))?;
        if info_raw.first() != Some(&b'd') {
            return Err(MetainfoError::WrongType {
                key: "info",
                expected: "a dictionary",
            });
        }
        let info_hash: [u8; 20] = Sha1::digest(info_raw).into();
        let info: RawInfo = typed(info_raw).map_err(|e| MetainfoError::BadInfo(e.to_string()))?;

        // Name.
        let name_raw = info
            .name_utf8
            .as_ref()
            .or(info.name.as_ref())
            .ok_or(MetainfoError::Missing("info.name"))?;
        let name = check_element(name_raw).map_err(MetainfoError::BadName)?;

        // Piece length and hashes.
        let piece_length = info
            .piece_length
            .ok_or(MetainfoError::Missing("info.piece length"))?;
        if piece_length <= 0 || piece_length as u64 > MAX_PIECE_LENGTH {
            return Err(MetainfoError::BadPieceLength(piece_length));
        }
        // In range 1..=64 MiB, so it fits a u32.
        let piece_length = piece_length as u32;
        let pieces_raw = info
            .pieces
            .as_ref()
            .ok_or(MetainfoError::Missing("info.pieces"))?;
        if pieces_raw.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces_raw.len()));
        }

        // Files.
        let (files, multi_file) = match (info.length, info.files) {
            (Some(_), Some(_)) => return Err(MetainfoError::BothLengthAndFiles),
            (None, None) => return Err(MetainfoError::NoLengthNorFiles),
            (Some(length), None) => {
                let length = u64::try_from(length).map_err(|_| MetainfoError::BadLength {
                    file: name.clone(),
                    length,
                })?;
                let file = FileInfo {
                    path: vec![name.clone()],
                    length,
                    attr: parse_attr(info.attr.as_ref(), None),
                };
                (vec![file], false)
            }
            (None, Some(raw_files)) => (Self::parse_files(&name, raw_files)?, true),
        };
        let mut total_length: u64 = 0;
        for f in &files {
            total_length = total_length
                .checked_add(f.length)
                .ok_or(MetainfoError::LengthOverflow)?;
        }
        if total_length == 0 {
            return Err(MetainfoError::NoData);
        }
        let expected = total_length.div_ceil(u64::from(piece_length));
        if expected > MAX_PIECES {
            return Err(MetainfoError::TooManyPieces(expected));
        }
        let actual = (pieces_raw.len() / 20) as u64;
        if actual != expected {
            return Err(MetainfoError::PieceCountMismatch { expected, actual });
        }
        let pieces: Vec<[u8; 20]> = pieces_raw
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();

        let entries_for_layout = files
            .iter()
            .map(|f| FileEntry {
                path: if multi_file {
                    let mut p = PathBuf::from(&name);
                    p.extend(&f.path);
                    p
                } else {
                    PathBuf::from(&name)
                },
                length: f.length,
                padding: f.attr.padding,
            })
            .collect();
        let layout = Layout::new(entries_for_layout, piece_length)?;

        // Outside `info`: lenient (a wrong type is ignored), as other clients are.
        let str_at = |key: &[u8]| -> Option<String> {
            get(key)
                .and_then(|raw| typed::<ByteBuf>(raw).ok())
                .map(|b| lossy(&b))
        };
        let announce = get(b"announce")
            .and_then(|raw| typed::<ByteBuf>(raw).ok())
            .and_then(|b| String::from_utf8(b.into_vec()).ok())
            .filter(|s| !s.is_empty());
        let mut trackers: Vec<Vec<String>> = Vec::new();
        if let Some(Value::List(tiers)) = get(b"announce-list").and_then(|r| typed(r).ok()) {
            for tier in tiers {
                if let Value::List(urls) = tier {
                    let mut t: Vec<String> = Vec::new();
                    for u in urls.iter().filter_map(value_string) {
                        if !u.is_empty() && !t.contains(&u) {
                            t.push(u);
                        }
                    }
                    if !t.is_empty() {
                        trackers.push(t);
                    }
                }
            }
        }
        if trackers.is_empty() {
            if let Some(a) = announce {
                trackers.push(vec![a]);
            }
        }
        let url_list = match get(b"url-list").and_then(|r| typed::<Value>(r).ok()) {
            Some(Value::Bytes(b)) => String::from_utf8(b).ok().into_iter().collect(),
            Some(Value::List(l)) => l.iter().filter_map(value_string).collect(),
            _ => Vec::new(),
        }
        .into_iter()
        .filter(|u: &String| !u.is_empty())
        .collect();
        let comment = str_at(b"comment.utf-8").or_else(|| str_at(b"comment"));
        let created_by = str_at(b"created by");
        let creation_date = get(b"creation date").and_then(|r| typed::<i64>(r).ok());

        Ok(Metainfo {
            info_hash,
            info_bytes: info_raw.to_vec(),
            name,
            piece_length,
            pieces,
            files,
            multi_file,
            total_length,
            trackers,
            private: info.private.is_some_and(|p| p != 0),
            url_list,
            comment,
            created_by,
            creation_date,
            layout,
        })
    }

    fn parse_files(name: &str, raw_files: Vec<RawFile>) -> Result<Vec<FileInfo>, MetainfoError> {
        if raw_files.len() > MAX_FILES {
            return Err(MetainfoError::TooManyFiles(raw_files.len()));
        }
        let mut files = Vec::with_capacity(raw_files.len());
        let mut seen: HashSet<Vec<String>> = HashSet::new();
        for (index, rf) in raw_files.into_iter().enumerate() {
            let raw_path = rf.path_utf8.as_ref().or(rf.path.as_ref());
            // How the file is named in errors: its index and its path as far as it is readable.
            let shown = || {
                let p = raw_path
                    .map(|p| {
                        p.iter()
                            .map(|e| lossy(e).escape_debug().to_string())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .unwrap_or_default();
                format!("#{index} `{name}/{p}`")
            };
            let raw_path = raw_path.ok_or_else(|| MetainfoError::BadPath {
                file: shown(),
                reason: "no `path`".into(),
            })?;
            if raw_path.is_empty() {
                return Err(MetainfoError::BadPath {
                    file: shown(),
                    reason: "empty `path` list".into(),
                });
            }
            if raw_path.len() > MAX_PATH_DEPTH {
                return Err(MetainfoError::BadPath {
                    file: shown(),
                    reason: format!(
                        "{} path elements, more than the limit of {MAX_PATH_DEPTH}",
                        raw_path.len()
                    ),
                });
            }
            let path_len: usize = name.len() + raw_path.iter().map(|e| e.len() + 1).sum::<usize>();
            if path_len > MAX_PATH_LEN {
                return Err(MetainfoError::BadPath {
                    file: shown(),
                    reason: format!(
                        "path of {path_len} bytes is longer than the limit of {MAX_PATH_LEN}"
                    ),
                });
            }
            let path = raw_path
                .iter()
                .map(|e| check_element(e))
                .collect::<Result<Vec<String>, String>>()
                .map_err(|reason| MetainfoError::BadPath {
                    file: shown(),
                    reason,
                })?;
            let length = rf.length.ok_or_else(|| MetainfoError::BadPath {
                file: shown(),
                reason: "no `length`".into(),
            })?;
            let length = u64::try_from(length).map_err(|_| MetainfoError::BadLength {
                file: shown(),
                length,
            })?;
            let symlink = match rf.symlink_path {
                Some(sp) if sp.len() <= MAX_PATH_DEPTH => sp
                    .iter()
                    .map(|e| check_element(e))
                    .collect::<Result<Vec<String>, String>>()
                    .ok(),
                _ => None,
            };
            let attr = parse_attr(rf.attr.as_ref(), symlink);
            if !attr.padding && !seen.insert(path.clone()) {
                return Err(MetainfoError::DuplicatePath(format!(
                    "`{name}/{}`",
                    path.join("/")
                )));
            }
            files.push(FileInfo { path, length, attr });
        }
        // A file's path must not be a directory of another file (`a` and `a/b`).
        let mut dirs: HashSet<&[String]> = HashSet::new();
        for f in files.iter().filter(|f| !f.attr.padding) {
            for depth in 1..f.path.len() {
                dirs.insert(&f.path[..depth]);
            }
        }
        if let Some(f) = files
            .iter()
            .find(|f| !f.attr.padding && dirs.contains(f.path.as_slice()))
        {
            return Err(MetainfoError::PathConflict(format!(
                "`{name}/{}`",
                f.display_path()
            )));
        }
        Ok(files)
    }

    /// The info hash as 40 lowercase hex digits.
    pub fn info_hash_hex(&self) -> String {
        hex(&self.info_hash)
    }

    /// The storage layout: file paths include the torrent's name (`name` for a single-file
    /// torrent, `name/a/b` for a multi-file one).
    pub fn layout(&self) -> Layout {
        self.layout.clone()
    }

    /// The storage layout, borrowed.
    pub fn layout_ref(&self) -> &Layout {
        &self.layout
    }

    /// Number of pieces.
    pub fn num_pieces(&self) -> u32 {
        self.layout.num_pieces()
    }

    /// The tracker URLs, tier by tier, flattened.
    pub fn tracker_urls(&self) -> impl Iterator<Item = &str> {
        self.trackers.iter().flatten().map(String::as_str)
    }

    /// A magnet link (BEP 9): `magnet:?xt=urn:btih:<hex>&dn=<name>&tr=<tracker>...` with one
    /// `x.pe=<ip:port>` parameter per peer in `peers`.
    pub fn magnet(&self, peers: &[SocketAddr]) -> String {
        let mut m = format!(
            "magnet:?xt=urn:btih:{}&dn={}",
            self.info_hash_hex(),
            utf8_percent_encode(&self.name, URI_COMPONENT)
        );
        for url in self.tracker_urls() {
            m.push_str("&tr=");
            m.extend(utf8_percent_encode(url, URI_COMPONENT));
        }
        // `ip:port` and `[ipv6]:port` as they are: ':' and brackets are legal in a query, and
        // libtorrent does not percent-decode x.pe (an encoded colon makes it drop the peer).
        for p in peers {
            m.push_str("&x.pe=");
            m.push_str(&p.to_string());
        }
        m
    }
}

/// What a magnet parameter value may hold unescaped (RFC 3986 unreserved characters).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a bencoded string.
    fn bs(s: &[u8]) -> Vec<u8> {
        let mut v = format!("{}:", s.len()).into_bytes();
        v.extend_from_slice(s);
        v
    }

    /// A single-file torrent of `len` bytes in 16 KiB pieces, with `extra` appended inside
    /// `info` before the closing `e` (raw bencode, to test key order and unknown keys).
    fn single(len: u64, info_extra: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let pieces = len.div_ceil(16384) as usize;
        let mut info = b"d".to_vec();
        info.extend(info_extra);
        info.extend(b"6:lengthi");
        info.extend(len.to_string().bytes());
        info.extend(b"e4:name5:a.bin12:piece lengthi16384e6:pieces");
        info.extend(bs(&vec![7u8; pieces * 20]));
        info.push(b'e');
        let mut t = b"d8:announce16:http://t.example4:info".to_vec();
        t.extend(&info);
        t.push(b'e');
        (t, info)
    }

    fn multi(files: &[(&[&[u8]], u64)]) -> Vec<u8> {
        let total: u64 = files.iter().map(|f| f.1).sum();
        let pieces = total.div_ceil(16384) as usize;
        let mut info = b"d5:filesl".to_vec();
        for (path, len) in files {
            info.extend(format!("d6:lengthi{len}e4:pathl").bytes());
            for e in *path {
                info.extend(bs(e));
            }
            info.extend(b"ee");
        }
        info.extend(b"e4:name3:dir12:piece lengthi16384e6:pieces");
        info.extend(bs(&vec![7u8; pieces * 20]));
        info.push(b'e');
        let mut t = b"d4:info".to_vec();
        t.extend(&info);
        t.push(b'e');
        t
    }

    fn err(buf: &[u8]) -> String {
        match Metainfo::from_bytes(buf) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn single_file_parses() {
        let (t, info) = single(40000, b"");
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.name, "a.bin");
        assert_eq!(m.piece_length, 16384);
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.total_length, 40000);
        assert!(!m.multi_file);
        assert_eq!(m.files[0].path, vec!["a.bin".to_string()]);
        assert_eq!(m.trackers, vec![vec!["http://t.example".to_string()]]);
        assert_eq!(m.info_hash, <[u8; 20]>::from(Sha1::digest(&info)));
        assert_eq!(m.layout().files()[0].path, PathBuf::from("a.bin"));
        assert_eq!(m.layout().num_pieces(), 3);
        assert!(!m.private);
    }

    #[test]
    fn info_hash_is_over_raw_non_canonical_bytes() {
        // `zz` (unknown) first, then keys out of order: the hash is over these bytes as they are.
        let (t, info) = single(100, b"2:zzi5e7:privatei1e");
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.info_hash, <[u8; 20]>::from(Sha1::digest(&info)));
        assert_eq!(m.info_bytes, info);
        assert!(m.private);
        // Re-encoding would have sorted the keys and given another hash.
        let v: Value = serde_bencode::from_bytes(&info).unwrap();
        let canonical = serde_bencode::to_bytes(&v).unwrap();
        assert_ne!(canonical, info);
        assert_ne!(<[u8; 20]>::from(Sha1::digest(&canonical)), m.info_hash);
    }

    #[test]
    fn multi_file_parses_with_layout() {
        let t = multi(&[(&[b"a", b"x.txt"], 20000), (&[b"b.txt"], 5)]);
        let m = Metainfo::from_bytes(&t).unwrap();
        assert!(m.multi_file);
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].display_path(), "a/x.txt");
        assert_eq!(m.total_length, 20005);
        let l = m.layout();
        assert_eq!(l.files()[0].path, PathBuf::from("dir/a/x.txt"));
        assert_eq!(l.files()[1].path, PathBuf::from("dir/b.txt"));
        assert!(m.trackers.is_empty());
    }

    #[test]
    fn announce_list_tiers_and_url_list_and_metadata() {
        let (t, _) = single(10, b"");
        let mut t = t[..t.len() - 1].to_vec();
        t.extend(b"13:announce-listll3:u:13:u:2el3:u:3ee");
        t.extend(b"7:comment2:hi10:created by3:me!13:creation datei1700000000e");
        t.extend(b"8:url-list3:w:1e");
        // Keys are out of order in this file on purpose: accepted.
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(
            m.trackers,
            vec![
                vec!["u:1".to_string(), "u:2".to_string()],
                vec!["u:3".to_string()]
            ]
        );
        assert_eq!(m.comment.as_deref(), Some("hi"));
        assert_eq!(m.created_by.as_deref(), Some("me!"));
        assert_eq!(m.creation_date, Some(1_700_000_000));
        assert_eq!(m.url_list, vec!["w:1".to_string()]);
        let mag = m.magnet(&["127.0.0.1:6881".parse().unwrap()]);
        assert_eq!(
            mag,
            format!(
                "magnet:?xt=urn:btih:{}&dn=a.bin&tr=u%3A1&tr=u%3A2&tr=u%3A3&x.pe=127.0.0.1:6881",
                m.info_hash_hex()
            )
        );
    }

    #[test]
    fn padding_files_and_attributes() {
        let mut info = b"d5:filesl".to_vec();
        info.extend(b"d6:lengthi100e4:pathl1:aee");
        info.extend(b"d4:attr1:p6:lengthi16284e4:pathl4:.pad5:16284ee");
        info.extend(b"d4:attr2:xh6:lengthi100e4:pathl1:bee");
        info.extend(b"d4:attr1:p6:lengthi16284e4:pathl4:.pad5:16284ee");
        info.extend(b"d6:lengthi1e4:pathl1:cee");
        info.extend(b"e4:name1:d12:piece lengthi16384e6:pieces");
        info.extend(bs(&[1u8; 60]));
        info.push(b'e');
        let mut t = b"d4:info".to_vec();
        t.extend(&info);
        t.push(b'e');
        let m = Metainfo::from_bytes(&t).unwrap();
        assert!(m.files[1].attr.padding && m.files[3].attr.padding);
        assert!(m.files[2].attr.executable && m.files[2].attr.hidden);
        assert!(m.layout().files()[1].padding);
        assert_eq!(m.total_length, 100 + 16284 + 100 + 16284 + 1);
    }

    #[test]
    fn refuses_bad_piece_length() {
        for bad in [&b"i0e"[..], b"i-16384e", b"i67108865e"] {
            let (t, _) = single(10, b"");
            let t = String::from_utf8_lossy(&t).replace("i16384e", &String::from_utf8_lossy(bad));
            let e = err(t.as_bytes());
            assert!(e.starts_with("piece length"), "{e}");
        }
    }

    #[test]
    fn refuses_pieces_not_multiple_of_20() {
        let (t, _) = single(10, b"");
        let t = String::from_utf8_lossy(&t).replace("6:pieces20:", "6:pieces19:");
        // Remove one hash byte so the bencode stays valid.
        let t = t.replacen("\u{7}", "", 1);
        assert_eq!(
            err(t.as_bytes()),
            "`pieces` is 19 bytes long, not a multiple of 20"
        );
    }

    #[test]
    fn refuses_wrong_piece_count() {
        let (t, _) = single(40000, b"");
        let t = String::from_utf8_lossy(&t).replace("i40000e", "i50000e");
        assert_eq!(
            err(t.as_bytes()),
            "`pieces` holds 3 hashes but the total length and piece length need 4"
        );
    }

    #[test]
    fn refuses_hostile_paths() {
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"..", b"x"], "path element `..` is not allowed"),
            (&[b"."], "path element `.` is not allowed"),
            (&[b""], "empty path element"),
            (&[b"/etc", b"passwd"], "contains `/`"),
            (&[b"a/b"], "contains `/`"),
            (&[b"a\\b"], "contains `\\`"),
            (&[b"a\0b"], "contains NUL"),
            (&[], "empty `path` list"),
        ];
        for (path, want) in cases {
            let t = multi(&[(&[b"ok"], 10), (path, 10)]);
            let e = err(&t);
            assert!(e.starts_with("file #1 `dir/"), "{e}");
            assert!(e.contains(want), "{e} / {want}");
        }
        let long = vec![b'a'; 256];
        let e = err(&multi(&[(&[&long], 10)]));
        assert!(e.contains("longer than 255"), "{e}");
        let deep: Vec<&[u8]> = vec![b"d"; 65];
        let e = err(&multi(&[(&deep, 10)]));
        assert!(e.contains("65 path elements"), "{e}");
        // The torrent's name follows the same rules.
        let (t, _) = single(10, b"");
        let t = String::from_utf8_lossy(&t).replace("4:name5:a.bin", "4:name2:..");
        assert_eq!(
            err(t.as_bytes()),
            "torrent name: path element `..` is not allowed"
        );
    }

    #[test]
    fn refuses_duplicate_and_conflicting_paths() {
        let e = err(&multi(&[(&[b"a", b"b"], 10), (&[b"a", b"b"], 10)]));
        assert_eq!(e, "duplicate file path `dir/a/b`");
        let e = err(&multi(&[(&[b"a"], 10), (&[b"a", b"b"], 10)]));
        assert_eq!(
            e,
            "file path `dir/a` is also used as a directory by another file"
        );
    }

    #[test]
    fn refuses_structural_problems() {
        assert!(err(b"li1ee").contains("not a dictionary"));
        assert_eq!(err(b"de"), "missing `info`");
        assert_eq!(err(b"d4:infoi1ee"), "`info` is not a dictionary");
        let (t, _) = single(10, b"");
        let mut trailing = t.clone();
        trailing.extend(b"xx");
        assert_eq!(
            err(&trailing),
            "2 bytes of trailing data after the torrent dictionary"
        );
        let mut dup = t[..t.len() - 1].to_vec();
        dup.extend(b"8:announce1:xe");
        assert_eq!(err(&dup), "key `announce` appears twice");
        let neg = String::from_utf8_lossy(&t).replace("6:lengthi10e", "6:lengthi-10e");
        assert_eq!(err(neg.as_bytes()), "file a.bin: bad length -10");
        let zero = String::from_utf8_lossy(&t).replace("6:lengthi10e", "6:lengthi0e");
        assert!(err(zero.as_bytes()).contains("no data"));
        let nolen = String::from_utf8_lossy(&t).replace("6:lengthi10e", "");
        assert_eq!(
            err(nolen.as_bytes()),
            "`info` has neither `length` nor `files`"
        );
        assert!(err(&t[..t.len() - 3]).starts_with("malformed bencode"));
        // Bad integers anywhere are refused by the validator.
        let lz = String::from_utf8_lossy(&t).replace("6:lengthi10e", "6:lengthi010e");
        assert!(err(lz.as_bytes()).contains("leading zero"));
        let nz = String::from_utf8_lossy(&t).replace("6:lengthi10e", "6:lengthi-0e");
        assert!(err(nz.as_bytes()).contains("negative zero"));
        let ov =
            String::from_utf8_lossy(&t).replace("6:lengthi10e", "6:lengthi99999999999999999999e");
        assert!(err(ov.as_bytes()).contains("does not fit 64 bits"));
    }

    #[test]
    fn refuses_deep_nesting_and_huge_strings() {
        let mut deep = b"d4:infod4:name1:x".to_vec();
        deep.extend(b"1:z");
        deep.extend(vec![b'l'; 100_000]);
        deep.extend(vec![b'e'; 100_000]);
        deep.extend(b"ee");
        assert!(
            err(&deep).contains("nesting deeper than 32"),
            "{}",
            err(&deep)
        );
        let huge = b"d4:info99999999999:x";
        assert!(err(huge).contains("runs past the end"), "{}", err(huge));
        let big = vec![b'd'; MAX_TORRENT_SIZE + 1];
        assert!(err(&big).contains("more than the limit"));
    }

    #[test]
    fn refuses_too_many_pieces() {
        // 2^21 + 1 pieces of 1 byte: refused before looking at the hashes.
        let (t, _) = single(10, b"");
        let t = String::from_utf8_lossy(&t)
            .replace("6:lengthi10e", &format!("6:lengthi{}e", MAX_PIECES + 1))
            .replace("i16384e", "i1e");
        assert!(err(t.as_bytes()).contains("more than the limit of 2097152"));
    }
}
