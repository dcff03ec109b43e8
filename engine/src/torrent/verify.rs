//! Checking data on disk against a torrent: every piece hashed on all cores
//! ([`uring_bt_storage::hash`]), then a report of the bad pieces and the files they touch.
//!
//! The data lives at `DIR/<name>` (the layout other clients use): `DIR/name` for a single-file
//! torrent, `DIR/name/a/b` for a multi-file one. A missing, short or unreadable file is not an
//! error of the command: its pieces are bad and the file is listed with the reason.

use std::collections::BTreeMap;
use std::path::Path;

use uring_bt_storage::hash::{hash_pieces, HashError};

use uring_bt_proto::metainfo::Metainfo;

/// What is wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// The file does not exist.
    Missing,
    /// The file holds fewer bytes than the torrent says.
    Short { expected: u64, actual: u64 },
    /// The file could not be read.
    Unreadable(String),
    /// The file is readable, but pieces touching it do not match their hashes.
    BadData,
    /// The file is fine as far as can be told, but shares a piece with a missing, short or
    /// unreadable file, so that piece cannot be checked.
    SharesBadPiece,
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileProblem::Missing => f.write_str("missing"),
            FileProblem::Short { expected, actual } => {
                write!(f, "short: {actual} of {expected} bytes")
            }
            FileProblem::Unreadable(m) => write!(f, "unreadable: {m}"),
            FileProblem::BadData => f.write_str("bad data"),
            FileProblem::SharesBadPiece => f.write_str("shares a piece with a bad file"),
        }
    }
}

/// One file touched by bad pieces (or missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    /// Index in [`Metainfo::files`].
    pub index: usize,
    /// Path relative to the torrent's root, joined with `/` (as `info` shows it).
    pub path: String,
    pub problem: FileProblem,
    /// The bad pieces that touch this file.
    pub bad_pieces: Vec<u32>,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub pieces: u32,
    pub good: u32,
    /// Bad or missing pieces, ascending.
    pub bad_pieces: Vec<u32>,
    /// Files touched by bad pieces, and files that are missing (even empty ones), in torrent
    /// order. Padding files are never listed.
    pub bad_files: Vec<BadFile>,
    /// Bytes hashed (the torrent's total length).
    pub bytes: u64,
}

impl VerifyReport {
    /// True when every piece is good.
    pub fn complete(&self) -> bool {
        self.bad_pieces.is_empty()
    }
}

/// Hashes the torrent's data under `dir` on `threads` threads and compares every piece.
pub fn verify(
    m: &Metainfo,
    dir: &Path,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> VerifyReport {
    let layout = m.layout_ref();
    let results = hash_pieces(layout, dir, threads, progress);
    let mut problems: BTreeMap<usize, FileProblem> = BTreeMap::new();
    let mut bad_pieces = Vec::new();
    // Pieces that were read whole but do not match their hash.
    let mut mismatched: std::collections::HashSet<u32> = std::collections::HashSet::new();
    for (piece, r) in results.iter().enumerate() {
        let ok = match r {
            Ok(h) => {
                let ok = m.pieces.get(piece) == Some(h);
                if !ok {
                    mismatched.insert(piece as u32);
                }
                ok
            }
            Err(e) => {
                problems.entry(e.file_index()).or_insert(match e {
                    HashError::Missing { .. } => FileProblem::Missing,
                    HashError::Short {
                        expected, actual, ..
                    } => FileProblem::Short {
                        expected: *expected,
                        actual: *actual,
                    },
                    HashError::Io { message, .. } => FileProblem::Unreadable(message.clone()),
                });
                false
            }
        };
        if !ok {
            // piece < num_pieces, which fits a u32.
            bad_pieces.push(piece as u32);
        }
    }
    // A piece names only the first file that failed it, and empty files are never read: look
    // at every file (one `stat` each) so that each missing or short file is reported.
    for (i, f) in layout.files().iter().enumerate() {
        if f.padding {
            continue;
        }
        match std::fs::metadata(dir.join(&f.path)) {
            Ok(md) if md.is_file() && md.len() < f.length => {
                problems.insert(
                    i,
                    FileProblem::Short {
                        expected: f.length,
                        actual: md.len(),
                    },
                );
            }
            Ok(md) if !md.is_file() => {
                problems.insert(i, FileProblem::Unreadable("not a regular file".into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.insert(i, FileProblem::Missing);
            }
            Err(e) => {
                problems
                    .entry(i)
                    .or_insert(FileProblem::Unreadable(e.to_string()));
            }
        }
    }
    let mut touched: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for &p in &bad_pieces {
        for i in layout.piece_files(p) {
            let f = &layout.files()[i];
            if f.length > 0 && !f.padding {
                touched.entry(i).or_default().push(p);
            }
        }
    }
    for &i in problems.keys() {
        touched.entry(i).or_default();
    }
    let bad_files = touched
        .into_iter()
        .map(|(index, bad_pieces)| BadFile {
            index,
            path: m.files[index].display_path(),
            problem: problems.get(&index).cloned().unwrap_or_else(|| {
                if bad_pieces.iter().any(|p| mismatched.contains(p)) {
                    FileProblem::BadData
                } else {
                    FileProblem::SharesBadPiece
                }
            }),
            bad_pieces,
        })
        .collect();
    let pieces = m.num_pieces();
    VerifyReport {
        pieces,
        good: pieces - bad_pieces.len() as u32,
        bad_pieces,
        bad_files,
        bytes: m.total_length,
    }
}

/// Formats ascending piece numbers as ranges: `0-3, 7, 9-10`.
pub fn ranges(pieces: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i];
        let mut end = start;
        while i + 1 < pieces.len() && pieces[i + 1] == end + 1 {
            i += 1;
            end = pieces[i];
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torrent::create::{build, CreateOptions, Source};

    #[test]
    fn ranges_format() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3, 7, 9-10");
    }

    #[test]
    fn finds_bad_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a"), vec![1u8; 40000]).unwrap();
        std::fs::write(root.join("b"), vec![2u8; 40000]).unwrap();
        std::fs::write(root.join("c"), vec![3u8; 1000]).unwrap();
        std::fs::write(root.join("e"), b"").unwrap();
        let src = Source::scan(&root).unwrap();
        let m = build(
            &src,
            &CreateOptions {
                piece_length: Some(16384),
                threads: 2,
                ..Default::default()
            },
            &|_| {},
        )
        .unwrap()
        .metainfo;
        let r = verify(&m, dir.path(), 2, &|_| {});
        assert!(r.complete());
        assert_eq!(r.good, 5);
        assert!(r.bad_files.is_empty());

        // Corrupt one byte of b (stream offset 40000 + 20000 = piece 3), remove c and e.
        let mut b = std::fs::read(root.join("b")).unwrap();
        b[20000] ^= 0xff;
        std::fs::write(root.join("b"), &b).unwrap();
        std::fs::remove_file(root.join("c")).unwrap();
        std::fs::remove_file(root.join("e")).unwrap();
        let r = verify(&m, dir.path(), 2, &|_| {});
        assert!(!r.complete());
        // Piece 4 covers b[25536..40000] and c[0..1000]: c is missing.
        assert_eq!(r.bad_pieces, vec![3, 4]);
        assert_eq!(r.good, 3);
        let summary: Vec<(&str, &FileProblem, &[u32])> = r
            .bad_files
            .iter()
            .map(|f| (f.path.as_str(), &f.problem, f.bad_pieces.as_slice()))
            .collect();
        assert_eq!(
            summary,
            vec![
                // Piece 3 mismatches inside b; piece 4 fails because c is missing.
                ("b", &FileProblem::BadData, &[3u32, 4][..]),
                ("c", &FileProblem::Missing, &[4u32][..]),
                ("e", &FileProblem::Missing, &[][..]),
            ]
        );
    }
}
