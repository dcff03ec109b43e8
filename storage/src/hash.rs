//! All-core piece hashing with large sequential reads, for `create` and `verify`.
//!
//! The torrent's pieces are cut into *work units* of contiguous pieces (about [`UNIT_BYTES`]
//! each). Worker threads (one per core by default) take units from a shared atomic counter, so
//! a core that runs slower (the two vCPUs here sometimes deliver one core's worth) never leaves
//! the other waiting at the end, and each thread still reads long sequential runs of a file.
//! Inside a unit a thread reads each piece's spans with positional reads (`pread`) of at most
//! [`READ_CHUNK`] bytes into one buffer and feeds them to SHA-1: a chunk that fits the L2 cache
//! is hashed while it is still hot (measured here: 64 KiB chunks beat 1 MiB ones; see
//! `docs/benchmarks.md`). A piece that crosses file boundaries is hashed across its spans;
//! BEP 47 padding files are never opened and hash as zeros.
//!
//! **Sixteen pieces at once.** On a CPU with AVX-512 ([`crate::sha1x16`]) a thread hashes sixteen
//! consecutive full-size pieces together: it reads chunk `k` of each of the sixteen into one
//! buffer of sixteen lanes (16 x [`READ_CHUNK`] = 1 MiB, L2-sized), advances the sixteen SHA-1
//! states over it, and moves on to chunk `k + 1`. Units are then whole multiples of sixteen pieces;
//! the pieces left over (the short last piece, a unit's tail) take the single-stream path. Before
//! a group it asks the kernel to read the group's 16 pieces ahead (`POSIX_FADV_WILLNEED`), so the
//! sixteen interleaved streams do not defeat read-ahead on a cold disk.
//!
//! Failures are per piece: a missing, short or unreadable file makes every piece that touches
//! it an `Err` naming the file, and the other pieces are still hashed.
//!
//! Resources: `threads` threads, each with one buffer of `READ_CHUNK` bytes (plus the 1 MiB lane
//! buffer with AVX-512) and at most [`OPEN_FILES`] open files.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use crate::error::StorageError;
use crate::files;
use crate::layout::Layout;
use crate::sha1x16::{self, Sha1x16, LANES};

/// Bytes read per `pread`.
pub const READ_CHUNK: usize = 64 * 1024;
/// Alignment of the read buffer.
const PAGE: usize = 4096;
/// Approximate bytes of one work unit (at least one piece; sixteen with AVX-512).
pub const UNIT_BYTES: u64 = 8 << 20;
/// Files a hashing thread keeps open (sixteen lanes may read sixteen files).
pub const OPEN_FILES: usize = LANES;

/// Why a piece could not be hashed. Names the file (as `root/<layout path>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("{}: missing", path.display())]
    Missing { file_index: usize, path: PathBuf },
    #[error("{}: {actual} bytes, shorter than the {expected} the torrent says", path.display())]
    Short {
        file_index: usize,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{}: {message}", path.display())]
    Io {
        file_index: usize,
        path: PathBuf,
        message: String,
    },
}

impl HashError {
    /// Index (in the layout) of the file at fault.
    pub fn file_index(&self) -> usize {
        match self {
            HashError::Missing { file_index, .. }
            | HashError::Short { file_index, .. }
            | HashError::Io { file_index, .. } => *file_index,
        }
    }
}

/// The SHA-1 of one piece, or why it could not be computed.
pub type PieceResult = Result<[u8; 20], HashError>;

/// Tuning knobs of [`hash_pieces_with`] (for benchmarks; [`hash_pieces`] uses the defaults).
#[derive(Debug, Clone, Copy)]
pub struct HashOptions {
    /// Worker threads (at least 1 is used).
    pub threads: usize,
    /// Bytes per `pread` (at least 4 KiB is used).
    pub read_chunk: usize,
    /// Hash sixteen pieces at once when the CPU has AVX-512 ([`crate::sha1x16`]).
    pub multi_buffer: bool,
}

/// Hashes every piece of `layout`, whose file paths are relative to `root`, on `threads`
/// threads. `progress` is called with the byte count of each piece as it is done (from any
/// thread). Returns one result per piece, in piece order.
pub fn hash_pieces(
    layout: &Layout,
    root: &Path,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<PieceResult> {
    hash_pieces_with(
        layout,
        root,
        HashOptions {
            threads,
            read_chunk: READ_CHUNK,
            multi_buffer: true,
        },
        progress,
    )
}

/// [`hash_pieces`] with explicit [`HashOptions`].
pub fn hash_pieces_with(
    layout: &Layout,
    root: &Path,
    opts: HashOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<PieceResult> {
    let num_pieces = layout.num_pieces() as usize;
    let plen = layout.piece_length() as usize;
    let multi =
        opts.multi_buffer && plen.is_multiple_of(64) && num_pieces >= LANES && sha1x16::available();
    let mut per_unit = (UNIT_BYTES / u64::from(layout.piece_length())).max(1) as usize;
    if multi {
        per_unit = per_unit.div_ceil(LANES) * LANES;
    }
    let units = num_pieces.div_ceil(per_unit);
    let threads = opts.threads.clamp(1, units.max(1));
    let chunk = opts.read_chunk.max(4096);
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, Vec<PieceResult>)>> = Mutex::new(Vec::with_capacity(units));

    let work = || {
        let mut w = Worker {
            layout,
            root,
            // One page more than needed, so that a page-aligned window of `chunk` bytes fits:
            // the kernel copies into a page-aligned buffer faster.
            buf: vec![0u8; chunk + PAGE],
            chunk,
            open: Vec::with_capacity(OPEN_FILES),
            lanes: Vec::new(),
            root_fd: None,
        };
        loop {
            let unit = next.fetch_add(1, Ordering::Relaxed);
            if unit >= units {
                break;
            }
            let first = unit * per_unit;
            let end = (first + per_unit).min(num_pieces);
            let mut results: Vec<PieceResult> = Vec::with_capacity(end - first);
            let mut p = first;
            while p < end {
                // p < num_pieces, which fits a u32.
                let group_full = p + LANES <= end
                    && layout.piece_size((p + LANES - 1) as u32) == layout.piece_length();
                if multi && group_full {
                    results.extend(w.hash_group(p as u32));
                    for _ in 0..LANES {
                        progress(u64::from(layout.piece_length()));
                    }
                    p += LANES;
                } else {
                    results.push(w.hash_piece(p as u32));
                    progress(u64::from(layout.piece_size(p as u32)));
                    p += 1;
                }
            }
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((unit, results));
        }
    };

    std::thread::scope(|s| {
        for i in 1..threads {
            // If a thread cannot be spawned, the others (at least this one) do its share.
            let _ = std::thread::Builder::new()
                .name(format!("hash-{i}"))
                .spawn_scoped(s, work);
        }
        work();
    });

    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    // Every unit was taken exactly once (the counter hands out each index once), so sorting by
    // unit and concatenating gives one result per piece in piece order.
    done.sort_unstable_by_key(|(unit, _)| *unit);
    let out: Vec<PieceResult> = done.into_iter().flat_map(|(_, r)| r).collect();
    debug_assert_eq!(out.len(), num_pieces);
    out
}

/// Opens `path` as given (links followed): regular files only, and a FIFO never blocks.
fn open_as_given(index: usize, path: PathBuf) -> Result<File, HashError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) if !f.metadata().is_ok_and(|m| m.is_file()) => Err(HashError::Io {
            file_index: index,
            path,
            message: "not a regular file".into(),
        }),
        Ok(f) => {
            advise_sequential(&f);
            Ok(f)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Err(HashError::Missing {
            file_index: index,
            path,
        }),
        Err(e) => Err(HashError::Io {
            file_index: index,
            path,
            message: e.to_string(),
        }),
    }
}

struct Worker<'a> {
    layout: &'a Layout,
    root: &'a Path,
    /// Read buffer; the bytes used are the page-aligned window of `chunk` bytes inside it.
    buf: Vec<u8>,
    chunk: usize,
    /// The files this thread has open, most recent last: (file index, the file or why it could
    /// not be opened). At most [`OPEN_FILES`].
    open: Vec<(usize, Result<File, HashError>)>,
    /// Sixteen lanes of `chunk` bytes (+ a page for alignment), allocated on first use.
    lanes: Vec<u8>,
    /// The save directory, opened on first use (or why it could not be).
    root_fd: Option<Result<std::os::fd::OwnedFd, String>>,
}

impl Worker<'_> {
    fn path(&self, index: usize) -> PathBuf {
        self.root.join(&self.layout.files()[index].path)
    }

    /// Opens file `index` by the serving path's rule ([`files::open_data_file`]: beneath the
    /// save directory, no symlink out of it, regular files only, a FIFO never blocks), so that
    /// what the check hashes is what the server will read. With an empty root (`create`, which
    /// hashes the user's own files by the paths it scanned) the path is opened as given.
    fn open_file(&mut self, index: usize, path: PathBuf) -> Result<File, HashError> {
        if self.root.as_os_str().is_empty() {
            return open_as_given(index, path);
        }
        if self.root_fd.is_none() {
            self.root_fd = Some(files::open_root(self.root).map_err(|e| e.to_string()));
        }
        let root_fd = match &self.root_fd {
            Some(Ok(fd)) => fd.as_raw_fd(),
            Some(Err(_)) | None => {
                return Err(HashError::Missing {
                    file_index: index,
                    path,
                })
            }
        };
        let rel = &self.layout.files()[index].path;
        match files::open_data_file(root_fd, self.root, rel, files::OpenMode::ReadOnly) {
            Ok(fd) => {
                let f = File::from(fd);
                advise_sequential(&f);
                Ok(f)
            }
            Err(StorageError::FileMissing { .. }) => Err(HashError::Missing {
                file_index: index,
                path,
            }),
            Err(e) => Err(HashError::Io {
                file_index: index,
                path,
                message: match e {
                    StorageError::UnsafePath { .. } => {
                        "outside the save directory (a symlink out of it)".into()
                    }
                    StorageError::NotRegularFile { .. } => "not a regular file".into(),
                    e => e.to_string(),
                },
            }),
        }
    }

    fn file(&mut self, index: usize) -> Result<&File, HashError> {
        if let Some(pos) = self.open.iter().position(|(i, _)| *i == index) {
            // Most recent last: a hit moves to the end (at most OPEN_FILES entries to shift).
            let e = self.open.remove(pos);
            self.open.push(e);
        } else {
            if self.open.len() >= OPEN_FILES {
                drop(self.open.remove(0));
            }
            let path = self.path(index);
            let opened = self.open_file(index, path);
            self.open.push((index, opened));
        }
        match self.open.last() {
            Some((_, Ok(f))) => Ok(f),
            Some((_, Err(e))) => Err(e.clone()),
            // Set just above.
            None => Err(HashError::Io {
                file_index: index,
                path: self.path(index),
                message: "internal error: no open file".into(),
            }),
        }
    }

    /// Reads bytes `[begin, begin + out.len())` of `piece` into `out` (padding reads as zeros).
    fn read_range(&mut self, piece: u32, begin: u32, out: &mut [u8]) -> Result<(), HashError> {
        let layout = self.layout;
        let spans = layout
            .spans(piece, begin, out.len() as u32)
            .map_err(|e| HashError::Io {
                file_index: 0,
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        for span in spans {
            let entry = &layout.files()[span.file_index];
            let dst = &mut out[span.buf_offset as usize..(span.buf_offset + span.len) as usize];
            if entry.padding {
                dst.fill(0);
                continue;
            }
            let file = self.file(span.file_index)?;
            if let Err(e) = file.read_exact_at(dst, span.file_offset) {
                let path = self.path(span.file_index);
                return Err(if e.kind() == ErrorKind::UnexpectedEof {
                    HashError::Short {
                        file_index: span.file_index,
                        actual: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                        path,
                        expected: entry.length,
                    }
                } else {
                    HashError::Io {
                        file_index: span.file_index,
                        path,
                        message: e.to_string(),
                    }
                });
            }
        }
        Ok(())
    }

    /// Hashes the sixteen full-size pieces from `first` together (see the module docs).
    fn hash_group(&mut self, first: u32) -> Vec<PieceResult> {
        let layout = self.layout;
        let plen = layout.piece_length() as usize;
        // Whole 64-byte blocks per chunk: plen is a multiple of 64, so every step is too.
        let ch = (self.chunk.min(plen) / 64).max(1) * 64;
        let Some(mut h) = Sha1x16::new() else {
            return (first..first + LANES as u32)
                .map(|p| self.hash_piece(p))
                .collect();
        };
        self.prefetch(first);
        if self.lanes.len() < LANES * ch + PAGE {
            self.lanes = vec![0u8; LANES * ch + PAGE];
        }
        let mut lanes = std::mem::take(&mut self.lanes);
        let start = lanes.as_ptr().align_offset(PAGE).min(PAGE);
        let mut errors: Vec<Option<HashError>> = vec![None; LANES];
        let mut off = 0usize;
        while off < plen {
            let n = ch.min(plen - off);
            for (lane, err) in errors.iter_mut().enumerate() {
                if err.is_some() {
                    continue;
                }
                let a = start + lane * ch;
                // off < plen <= u32::MAX (piece lengths are u32).
                if let Err(e) =
                    self.read_range(first + lane as u32, off as u32, &mut lanes[a..a + n])
                {
                    *err = Some(e);
                }
            }
            h.update(&lanes[start..], ch, n);
            off += n;
        }
        self.lanes = lanes;
        h.finalize()
            .into_iter()
            .zip(errors)
            .map(|(d, e)| match e {
                Some(e) => Err(e),
                None => Ok(d),
            })
            .collect()
    }

    /// Asks the kernel to read the sixteen pieces from `first` ahead (one hint per file run).
    fn prefetch(&mut self, first: u32) {
        let layout = self.layout;
        let plen = layout.piece_length();
        let mut run: Option<(usize, u64, u64)> = None; // (file, offset, len)
        let flush = |w: &mut Self, r: Option<(usize, u64, u64)>| {
            if let Some((file, off, len)) = r {
                if let Ok(f) = w.file(file) {
                    use std::os::fd::AsRawFd;
                    // SAFETY: posix_fadvise only reads its integer arguments; `f` is borrowed
                    // for the call. Advisory: the result is ignored.
                    unsafe {
                        libc::posix_fadvise(
                            f.as_raw_fd(),
                            off as libc::off_t,
                            len as libc::off_t,
                            libc::POSIX_FADV_WILLNEED,
                        );
                    }
                }
            }
        };
        for p in first..first + LANES as u32 {
            let Ok(spans) = layout.spans(p, 0, plen) else {
                return;
            };
            for span in spans {
                if layout.files()[span.file_index].padding {
                    continue;
                }
                match &mut run {
                    Some((f, o, l)) if *f == span.file_index && *o + *l == span.file_offset => {
                        *l += u64::from(span.len);
                    }
                    _ => {
                        let prev = run.take();
                        flush(self, prev);
                        run = Some((span.file_index, span.file_offset, u64::from(span.len)));
                    }
                }
            }
        }
        flush(self, run);
    }

    fn hash_piece(&mut self, piece: u32) -> PieceResult {
        let size = self.layout.piece_size(piece);
        let mut h = Sha1::new();
        let mut whole = std::mem::take(&mut self.buf);
        let start = whole.as_ptr().align_offset(PAGE).min(PAGE);
        let buf = &mut whole[start..start + self.chunk];
        let mut result = Ok(());
        let mut begin = 0u32;
        while begin < size {
            // chunk <= piece length fits u32 once clamped to what is left of the piece.
            let n = (size - begin).min(buf.len() as u32);
            let part = &mut buf[..n as usize];
            result = self.read_range(piece, begin, part);
            if result.is_err() {
                break;
            }
            h.update(&*part);
            begin += n;
        }
        self.buf = whole;
        result.map(|()| h.finalize().into())
    }
}

/// Tells the kernel the file is read sequentially (larger read-ahead). Advisory only.
fn advise_sequential(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is valid for the
    // duration of the call because `f` is borrowed.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::FileEntry;

    fn fe(path: &str, length: u64, padding: bool) -> FileEntry {
        FileEntry {
            path: PathBuf::from(path),
            length,
            padding,
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn sha(b: &[u8]) -> [u8; 20] {
        Sha1::digest(b).into()
    }

    /// Hashes with the defaults (sixteen lanes when the CPU has them) and counts the progress
    /// reported, in bytes.
    fn hash_counting(
        layout: &Layout,
        root: &Path,
        threads: usize,
        read_chunk: usize,
    ) -> (Vec<PieceResult>, usize) {
        let progress = AtomicUsize::new(0);
        let opts = HashOptions {
            threads,
            read_chunk,
            multi_buffer: true,
        };
        let r = hash_pieces_with(layout, root, opts, &|n| {
            progress.fetch_add(n as usize, Ordering::Relaxed);
        });
        (r, progress.into_inner())
    }

    #[test]
    fn pieces_across_files_padding_and_threads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t/sub")).unwrap();
        let a = data(100_000, 1);
        let b = data(7, 2);
        let c = data(250_001, 3);
        std::fs::write(dir.path().join("t/a"), &a).unwrap();
        std::fs::write(dir.path().join("t/sub/b"), &b).unwrap();
        std::fs::write(dir.path().join("t/empty"), b"").unwrap();
        std::fs::write(dir.path().join("t/c"), &c).unwrap();
        let pad = 13;
        let layout = Layout::new(
            vec![
                fe("t/a", a.len() as u64, false),
                fe("t/sub/b", b.len() as u64, false),
                fe("t/.pad/13", pad, true),
                fe("t/empty", 0, false),
                fe("t/c", c.len() as u64, false),
            ],
            32768,
        )
        .unwrap();
        let mut stream = a.clone();
        stream.extend(&b);
        stream.extend(vec![0u8; pad as usize]);
        stream.extend(&c);
        let want: Vec<[u8; 20]> = stream.chunks(32768).map(sha).collect();
        for threads in [1, 2, 5] {
            for chunk in [4096, 10_000, 1 << 20] {
                let (got, progress) = hash_counting(&layout, dir.path(), threads, chunk);
                let got: Vec<[u8; 20]> = got.into_iter().map(|r| r.unwrap()).collect();
                assert_eq!(got, want, "threads {threads} chunk {chunk}");
                assert_eq!(progress, stream.len());
            }
        }
    }

    #[test]
    fn many_units_keep_piece_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = data(3 * (UNIT_BYTES as usize) + 12345, 9);
        std::fs::write(dir.path().join("big"), &a).unwrap();
        let layout = Layout::new(vec![fe("big", a.len() as u64, false)], 1 << 20).unwrap();
        let want: Vec<[u8; 20]> = a.chunks(1 << 20).map(sha).collect();
        let got: Vec<[u8; 20]> = hash_pieces(&layout, dir.path(), 3, &|_| {})
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn special_files_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let layout =
            Layout::new(vec![fe("fifo", 10, false), fe("adir", 10, false)], 16384).unwrap();
        let got = hash_pieces(&layout, dir.path(), 1, &|_| {});
        assert_eq!(
            got,
            vec![Err(HashError::Io {
                file_index: 0,
                path: fifo,
                message: "not a regular file".into()
            })]
        );
    }

    #[test]
    fn symlinks_follow_the_serving_rule() {
        // Inside the save directory: followed. Out of it: refused, as the server refuses it.
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let a = data(20_000, 4);
        std::fs::write(dir.path().join("real"), &a).unwrap();
        std::fs::write(outside.path().join("secret"), &a).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("inside")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        let layout = Layout::new(vec![fe("inside", 20_000, false)], 32768).unwrap();
        assert_eq!(
            hash_pieces(&layout, dir.path(), 1, &|_| {}),
            vec![Ok(sha(&a))]
        );
        let layout = Layout::new(vec![fe("out", 20_000, false)], 32768).unwrap();
        assert_eq!(
            hash_pieces(&layout, dir.path(), 1, &|_| {}),
            vec![Err(HashError::Io {
                file_index: 0,
                path: dir.path().join("out"),
                message: "outside the save directory (a symlink out of it)".into()
            })]
        );
    }

    #[test]
    fn missing_and_short_files_fail_their_pieces_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = data(40_000, 1);
        std::fs::write(dir.path().join("a"), &a).unwrap();
        std::fs::write(dir.path().join("c"), data(10, 3)).unwrap();
        let layout = Layout::new(
            vec![
                fe("a", 40_000, false),
                fe("b", 16384, false),
                fe("c", 20_000, false),
            ],
            16384,
        )
        .unwrap();
        let got = hash_pieces(&layout, dir.path(), 2, &|_| {});
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], Ok(sha(&a[..16384])));
        assert_eq!(got[1], Ok(sha(&a[16384..32768])));
        // Piece 2 = a[32768..40000] + b[0..9152]: b is missing.
        assert_eq!(
            got[2],
            Err(HashError::Missing {
                file_index: 1,
                path: dir.path().join("b")
            })
        );
        assert_eq!(got[2].as_ref().unwrap_err().file_index(), 1);
        assert!(matches!(
            got[3],
            Err(HashError::Missing { file_index: 1, .. })
        ));
        // Piece 4 lies in c, which holds 10 of its 20,000 bytes.
        assert_eq!(
            got[4],
            Err(HashError::Short {
                file_index: 2,
                path: dir.path().join("c"),
                expected: 20_000,
                actual: 10
            })
        );
        assert!(got[4]
            .as_ref()
            .unwrap_err()
            .to_string()
            .ends_with("c: 10 bytes, shorter than the 20000 the torrent says"));
    }

    /// The sixteen-lane path (groups of 16 full pieces) gives the same results as the
    /// single-stream one: pieces crossing files and padding, a group with a missing file (only
    /// its pieces fail), chunk sizes that do not divide the piece, the short last piece.
    #[test]
    fn sixteen_lane_groups_match_single_stream() {
        let dir = tempfile::tempdir().unwrap();
        let plen = 16_384usize;
        let sizes = [70_000usize, 1, 400_000, 5_000, 200_000, 123_457];
        let mut files = Vec::new();
        let mut stream = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let d = data(n, i as u8 + 1);
            let name = format!("d/f{i}");
            if i != 3 {
                std::fs::create_dir_all(dir.path().join("d")).unwrap();
                std::fs::write(dir.path().join(&name), &d).unwrap();
            }
            files.push(fe(&name, n as u64, false));
            stream.extend(&d);
            if i == 1 {
                files.push(fe("d/.pad/1", 999, true));
                stream.extend(vec![0u8; 999]);
            }
        }
        let layout = Layout::new(files, plen as u32).unwrap();
        assert!(layout.num_pieces() as usize >= 3 * LANES);
        let single: Vec<PieceResult> = hash_pieces_with(
            &layout,
            dir.path(),
            HashOptions {
                threads: 1,
                read_chunk: 65_536,
                multi_buffer: false,
            },
            &|_| {},
        );
        // File 3 (d/f3) is missing: its pieces fail, the rest match the stream.
        let f3 = layout
            .files()
            .iter()
            .position(|f| f.path.ends_with("f3"))
            .unwrap();
        for (p, r) in single.iter().enumerate() {
            let touches = layout
                .spans(p as u32, 0, layout.piece_size(p as u32))
                .unwrap()
                .any(|s| s.file_index == f3);
            if touches {
                assert!(
                    matches!(r, Err(HashError::Missing { .. })),
                    "piece {p}: {r:?}"
                );
            } else {
                let a = p * plen;
                let b = (a + plen).min(stream.len());
                assert_eq!(r.as_ref().unwrap(), &sha(&stream[a..b]), "piece {p}");
            }
        }
        for threads in [1, 2] {
            for chunk in [4096, 10_000, 65_536] {
                let (multi, progress) = hash_counting(&layout, dir.path(), threads, chunk);
                assert_eq!(multi, single, "threads {threads} chunk {chunk}");
                assert_eq!(progress, stream.len());
            }
        }
    }
}
