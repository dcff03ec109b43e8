//! Resume data: per torrent, the have-bitfield plus each file's size and modification time.
//!
//! Written atomically ([`save`]): a temporary file in the same directory, `fsync`, `rename`
//! over the old one, `fsync` of the directory. A crash leaves either the old or the new file.
//!
//! On start-up ([`plan`]): a missing, unreadable or corrupt resume file (bad magic, version,
//! checksum, or a torrent/shape mismatch) means a **full check**, never a crash; otherwise the
//! saved bitfield is trusted except for the pieces of files whose size or mtime changed (or
//! that appeared/disappeared), which are re-checked.
//!
//! Format (little-endian), followed by a SHA-1 of everything before it:
//! ```text
//! "UBTRESUM" | version u32 = 1 | info_hash [20] | piece_length u32 | num_pieces u32 |
//! num_files u32 | per file: flags u8 (1 = exists), size u64, mtime_sec i64, mtime_nsec u32 |
//! bitfield (ceil(num_pieces / 8) bytes, BEP 3 order: piece 0 = high bit of byte 0) |
//! version 2 only: num_partials u32 | per partial piece: piece u32, len u32, block bitmap [len]
//! (block 0 = high bit of byte 0; the blocks written of a piece not complete) | sha1 [20]
//! ```
//! Version 1 files (no partial pieces) are still read.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::layout::Layout;

const MAGIC: &[u8; 8] = b"UBTRESUM";
const VERSION: u32 = 2;
/// Largest block bitmap of a partial piece (65,536 blocks: the picker's bound).
const MAX_PARTIAL_BITMAP: usize = 8192;
/// Largest resume file accepted (a sanity limit: 64 MiB).
pub const MAX_RESUME_SIZE: u64 = 64 << 20;

/// Size and modification time of one file as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStamp {
    pub exists: bool,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// The resume data of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeData {
    pub info_hash: [u8; 20],
    pub piece_length: u32,
    pub num_pieces: u32,
    /// BEP 3 bitfield: piece `i` is bit `7 - i % 8` of byte `i / 8`.
    pub have: Vec<u8>,
    pub files: Vec<FileStamp>,
    /// Downloading: pieces not complete whose written blocks are kept, as block bitmaps.
    pub partials: Vec<(u32, Vec<u8>)>,
}

/// Why a resume file was not used.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{}: no resume data", path.display())]
    Missing { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt resume data: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error("{}: resume data of another torrent or shape", path.display())]
    Mismatch { path: PathBuf },
}

/// Bit `i` of a BEP 3 bitfield.
pub fn bit(bits: &[u8], i: u32) -> bool {
    bits.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// Sets bit `i` of a BEP 3 bitfield.
pub fn set_bit(bits: &mut [u8], i: u32, on: bool) {
    if let Some(b) = bits.get_mut((i / 8) as usize) {
        if on {
            *b |= 0x80 >> (i % 8);
        } else {
            *b &= !(0x80 >> (i % 8));
        }
    }
}

/// Stamps (size, mtime) of every file of `layout` under `root`; padding files and files that
/// cannot be stat'ed read as not existing. Symlinks are followed, as the server and the check
/// follow the ones that stay inside the save directory (`files::open_data_file`): a link whose
/// target changed must not pass for unchanged (one that leaves the directory is refused when
/// opened, whatever its stamp says).
pub fn stamp_files(layout: &Layout, root: &Path) -> Vec<FileStamp> {
    layout
        .files()
        .iter()
        .map(|f| {
            if f.padding {
                return FileStamp::default();
            }
            match std::fs::metadata(root.join(&f.path)) {
                Ok(m) if m.is_file() => FileStamp {
                    exists: true,
                    size: m.len(),
                    mtime_sec: m.mtime(),
                    mtime_nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
                },
                _ => FileStamp::default(),
            }
        })
        .collect()
}

/// Encodes resume data (see the module docs for the format).
pub fn encode(r: &ResumeData) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + r.files.len() * 21 + r.have.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(&r.info_hash);
    v.extend_from_slice(&r.piece_length.to_le_bytes());
    v.extend_from_slice(&r.num_pieces.to_le_bytes());
    v.extend_from_slice(&(r.files.len() as u32).to_le_bytes());
    for f in &r.files {
        v.push(u8::from(f.exists));
        v.extend_from_slice(&f.size.to_le_bytes());
        v.extend_from_slice(&f.mtime_sec.to_le_bytes());
        v.extend_from_slice(&f.mtime_nsec.to_le_bytes());
    }
    v.extend_from_slice(&r.have);
    v.extend_from_slice(&(r.partials.len() as u32).to_le_bytes());
    for (p, bits) in &r.partials {
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&(bits.len() as u32).to_le_bytes());
        v.extend_from_slice(bits);
    }
    let sum = Sha1::digest(&v);
    v.extend_from_slice(&sum);
    v
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes resume data; every malformation is a `Corrupt` error, never a panic.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<ResumeData, ResumeError> {
    let corrupt = |reason| ResumeError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < MAGIC.len() + 4 + 20 + 12 + 20 {
        return Err(corrupt("too short"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 20);
    if Sha1::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader { b: body };
    if r.take(8) != Some(&MAGIC[..]) {
        return Err(corrupt("bad magic"));
    }
    let version = r.u32();
    if version != Some(1) && version != Some(VERSION) {
        return Err(corrupt("unknown version"));
    }
    let mut info_hash = [0u8; 20];
    info_hash.copy_from_slice(r.take(20).ok_or_else(|| corrupt("truncated"))?);
    let piece_length = r.u32().ok_or_else(|| corrupt("truncated"))?;
    let num_pieces = r.u32().ok_or_else(|| corrupt("truncated"))?;
    let num_files = r.u32().ok_or_else(|| corrupt("truncated"))? as usize;
    // Each file record is 21 bytes: refuse counts the body cannot hold before allocating.
    if num_files > r.b.len() / 21 {
        return Err(corrupt("file count larger than the data"));
    }
    let mut files = Vec::with_capacity(num_files);
    for _ in 0..num_files {
        let flags = r.take(1).ok_or_else(|| corrupt("truncated"))?[0];
        let size = r.u64().ok_or_else(|| corrupt("truncated"))?;
        let mtime_sec = r.u64().ok_or_else(|| corrupt("truncated"))? as i64;
        let mtime_nsec = r.u32().ok_or_else(|| corrupt("truncated"))?;
        if flags > 1 || mtime_nsec > 999_999_999 {
            return Err(corrupt("bad file record"));
        }
        files.push(FileStamp {
            exists: flags == 1,
            size,
            mtime_sec,
            mtime_nsec,
        });
    }
    let have_len = (num_pieces as usize).div_ceil(8);
    let have = r
        .take(have_len)
        .ok_or_else(|| corrupt("truncated bitfield"))?;
    let mut partials = Vec::new();
    if version == Some(VERSION) {
        let n = r.u32().ok_or_else(|| corrupt("truncated"))? as usize;
        // Each record is at least 9 bytes: refuse counts the body cannot hold.
        if n > num_pieces as usize || n > r.b.len() / 9 {
            return Err(corrupt("partial count larger than the data"));
        }
        for _ in 0..n {
            let p = r.u32().ok_or_else(|| corrupt("truncated"))?;
            let len = r.u32().ok_or_else(|| corrupt("truncated"))? as usize;
            if p >= num_pieces || len == 0 || len > MAX_PARTIAL_BITMAP {
                return Err(corrupt("bad partial piece record"));
            }
            let bits = r.take(len).ok_or_else(|| corrupt("truncated"))?;
            partials.push((p, bits.to_vec()));
        }
    }
    if !r.b.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    // Spare bits past the last piece must be zero (BEP 3).
    if num_pieces % 8 != 0 {
        let mask = 0xFFu8 >> (num_pieces % 8);
        if have.last().is_some_and(|b| b & mask != 0) {
            return Err(corrupt("spare bits set"));
        }
    }
    Ok(ResumeData {
        info_hash,
        piece_length,
        num_pieces,
        have: have.to_vec(),
        files,
        partials,
    })
}

/// Writes `data` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, data: &ResumeData) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(data))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Reads and decodes a resume file.
pub fn load(path: &Path) -> Result<ResumeData, ResumeError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ResumeError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(ResumeError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    if meta.len() > MAX_RESUME_SIZE {
        return Err(ResumeError::Corrupt {
            path: path.to_path_buf(),
            reason: "larger than the limit",
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ResumeError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode(path, &bytes)
}

/// What to do at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecheckPlan {
    /// Pieces trusted as complete without reading them.
    pub have: Vec<u8>,
    /// Pieces to hash now (ascending).
    pub recheck: Vec<u32>,
    /// Why (None when the resume data was used).
    pub full_check_reason: Option<String>,
    /// Partial pieces whose files are unchanged (their written blocks may be trusted).
    pub partials: Vec<(u32, Vec<u8>)>,
}

/// Builds the start-up plan for a torrent from its resume file (see the module docs).
pub fn plan(path: &Path, info_hash: &[u8; 20], layout: &Layout, root: &Path) -> RecheckPlan {
    let n = layout.num_pieces();
    let full = |reason: String| RecheckPlan {
        have: vec![0; (n as usize).div_ceil(8)],
        recheck: (0..n).collect(),
        full_check_reason: Some(reason),
        partials: Vec::new(),
    };
    let r = match load(path) {
        Ok(r) => r,
        Err(e) => return full(e.to_string()),
    };
    if &r.info_hash != info_hash
        || r.piece_length != layout.piece_length()
        || r.num_pieces != n
        || r.files.len() != layout.files().len()
    {
        return full(
            ResumeError::Mismatch {
                path: path.to_path_buf(),
            }
            .to_string(),
        );
    }
    let now = stamp_files(layout, root);
    let mut have = r.have.clone();
    let mut recheck = std::collections::BTreeSet::new();
    for (i, (old, new)) in r.files.iter().zip(&now).enumerate() {
        if layout.files()[i].padding || old == new {
            continue;
        }
        for p in layout.file_pieces(i) {
            set_bit(&mut have, p, false);
            recheck.insert(p);
        }
    }
    let partials = r
        .partials
        .iter()
        .filter(|(p, _)| !recheck.contains(p) && !bit(&have, *p))
        .cloned()
        .collect();
    RecheckPlan {
        have,
        recheck: recheck.into_iter().collect(),
        full_check_reason: None,
        partials,
    }
}

/// Resume data for a torrent whose complete pieces are `have`, stamping its files now.
pub fn snapshot(info_hash: [u8; 20], layout: &Layout, root: &Path, have: &[u8]) -> ResumeData {
    let mut have = have.to_vec();
    have.resize((layout.num_pieces() as usize).div_ceil(8), 0);
    for p in layout.num_pieces()..(have.len() as u32 * 8) {
        set_bit(&mut have, p, false);
    }
    ResumeData {
        info_hash,
        piece_length: layout.piece_length(),
        num_pieces: layout.num_pieces(),
        have,
        files: stamp_files(layout, root),
        partials: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::FileEntry;

    fn setup() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let fe = |p: &str, length| FileEntry {
            path: p.into(),
            length,
            padding: false,
        };
        let l = Layout::new(vec![fe("t/a", 1000), fe("t/b", 1500), fe("t/c", 10)], 512).unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        for f in l.files() {
            std::fs::write(dir.path().join(&f.path), vec![1u8; f.length as usize]).unwrap();
        }
        (dir, l)
    }

    #[test]
    fn round_trip_and_unchanged_files_trust_the_bitfield() {
        let (dir, l) = setup();
        let mut have = vec![0u8; 1];
        for p in [0, 2, 4] {
            set_bit(&mut have, p, true);
        }
        let snap = snapshot([7; 20], &l, dir.path(), &have);
        let rp = dir.path().join("x.resume");
        save(&rp, &snap).unwrap();
        assert_eq!(load(&rp).unwrap(), snap);
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.full_check_reason, None);
        assert!(p.recheck.is_empty());
        assert_eq!(p.have, have);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn partial_pieces_round_trip_and_follow_their_files_and_version_1_still_reads() {
        let (dir, l) = setup();
        let have = vec![0b1000_0000];
        let mut snap = snapshot([7; 20], &l, dir.path(), &have);
        snap.partials = vec![(1, vec![0b1100_0000]), (4, vec![0b1000_0000])];
        let rp = dir.path().join("x.resume");
        save(&rp, &snap).unwrap();
        assert_eq!(load(&rp).unwrap(), snap);
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.partials, snap.partials);
        // File c (piece 4) changed: its partial piece is not trusted; piece 1's still is.
        std::fs::write(dir.path().join("t/c"), vec![3u8; 7]).unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.partials, vec![(1, vec![0b1100_0000])]);
        // A version 1 file: the same without the partial section.
        let mut v1 = encode(&ResumeData {
            partials: Vec::new(),
            ..snap.clone()
        });
        v1.truncate(v1.len() - 20 - 4);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sum = Sha1::digest(&v1);
        v1.extend_from_slice(&sum);
        let d = decode(&rp, &v1).unwrap();
        assert!(d.partials.is_empty());
        assert_eq!(d.have, snap.have);
        // Bounds: a piece out of range or an empty bitmap is corrupt.
        for bad in [(99u32, vec![1u8]), (1, vec![])] {
            let e = encode(&ResumeData {
                partials: vec![bad],
                ..snap.clone()
            });
            assert!(decode(&rp, &e).is_err());
        }
    }

    #[test]
    fn changed_file_rechecks_its_pieces_only() {
        let (dir, l) = setup();
        let have = vec![0b1111_1000];
        let rp = dir.path().join("x.resume");
        save(&rp, &snapshot([7; 20], &l, dir.path(), &have)).unwrap();
        // File b covers bytes 1000..2500 = pieces 1..=4; change its size.
        std::fs::write(dir.path().join("t/b"), vec![2u8; 1499]).unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, vec![1, 2, 3, 4]);
        assert!(bit(&p.have, 0));
        for i in 1..=4 {
            assert!(!bit(&p.have, i));
        }
        // Only the mtime changes: rechecked too.
        save(&rp, &snapshot([7; 20], &l, dir.path(), &have)).unwrap();
        let f = File::options()
            .write(true)
            .open(dir.path().join("t/c"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5))
            .unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, vec![4]);
        // A deleted file too.
        std::fs::remove_file(dir.path().join("t/a")).unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, vec![0, 1, 4]);
    }

    #[test]
    fn a_symlinked_file_whose_target_changed_is_rechecked() {
        // t/c is a link inside the save directory (the server follows it): a change of its
        // target's content between runs must not pass for unchanged.
        let (dir, l) = setup();
        std::fs::write(dir.path().join("t/c.real"), vec![1u8; 10]).unwrap();
        std::fs::remove_file(dir.path().join("t/c")).unwrap();
        std::os::unix::fs::symlink("c.real", dir.path().join("t/c")).unwrap();
        let have = vec![0b1111_1000];
        let rp = dir.path().join("x.resume");
        save(&rp, &snapshot([7; 20], &l, dir.path(), &have)).unwrap();
        assert!(plan(&rp, &[7; 20], &l, dir.path()).recheck.is_empty());
        let f = File::options()
            .write(true)
            .open(dir.path().join("t/c.real"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(plan(&rp, &[7; 20], &l, dir.path()).recheck, vec![4]);
    }

    #[test]
    fn missing_corrupt_or_foreign_means_full_check() {
        let (dir, l) = setup();
        let rp = dir.path().join("x.resume");
        let all: Vec<u32> = (0..l.num_pieces()).collect();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, all);
        assert!(p.full_check_reason.unwrap().contains("no resume data"));
        let snap = snapshot([7; 20], &l, dir.path(), &[0xF8]);
        let good = encode(&snap);
        // Every truncation and every single-byte corruption is refused, never a panic.
        for cut in 0..good.len() {
            assert!(decode(&rp, &good[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            assert!(decode(&rp, &b).is_err(), "flip {i}");
        }
        std::fs::write(&rp, &good[..good.len() - 1]).unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, all);
        assert!(p.full_check_reason.unwrap().contains("corrupt"));
        // Another torrent's resume data.
        save(&rp, &snap).unwrap();
        let p = plan(&rp, &[8; 20], &l, dir.path());
        assert_eq!(p.recheck, all);
        // A directory where the file should be.
        std::fs::remove_file(&rp).unwrap();
        std::fs::create_dir(&rp).unwrap();
        let p = plan(&rp, &[7; 20], &l, dir.path());
        assert_eq!(p.recheck, all);
    }

    #[test]
    fn bit_helpers() {
        let mut b = vec![0u8; 2];
        set_bit(&mut b, 0, true);
        set_bit(&mut b, 9, true);
        assert_eq!(b, vec![0x80, 0x40]);
        assert!(bit(&b, 9) && !bit(&b, 8) && !bit(&b, 100));
        set_bit(&mut b, 100, true); // out of range: ignored
        set_bit(&mut b, 0, false);
        assert_eq!(b, vec![0, 0x40]);
    }
}
