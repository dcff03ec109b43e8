//! Layout: where a torrent's bytes live on disk.
//!
//! A torrent is one byte stream cut into pieces of `piece_length` bytes (the last one shorter);
//! the stream is the concatenation of the torrent's files in metainfo order. This module maps
//! a block `(piece, begin, length)` to the *spans* it covers inside files (a block can cross file
//! boundaries), and a file back to the pieces it touches. Pure code: no I/O.
//!
//! Invariants (checked by [`Layout::new`]):
//! - `piece_length > 0`, the total length is `> 0` and fits the piece count in a `u32`;
//! - `offsets[i]` is the stream offset of file `i`, `offsets` is non-decreasing and
//!   `offsets[i] + files[i].length == offsets[i + 1]` (zero-length files share an offset).

use std::ops::Range;
use std::path::PathBuf;

/// One file of the torrent, as the metainfo lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the save directory, *including* the torrent's name
    /// (`name` for a single-file torrent, `name/a/b.txt` for a multi-file one).
    pub path: PathBuf,
    /// Length in bytes.
    pub length: u64,
    /// A BEP 47 padding file: never opened, reads as zeros, writes are dropped.
    pub padding: bool,
}

/// A block's part inside one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Index of the file in [`Layout::files`].
    pub file_index: usize,
    /// Offset inside the file.
    pub file_offset: u64,
    /// Bytes in this span (> 0).
    pub len: u32,
    /// Offset of this span inside the block's buffer.
    pub buf_offset: u32,
}

/// Errors building a layout from metainfo values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("piece length must be greater than zero")]
    ZeroPieceLength,
    #[error("the torrent has no data (total length 0)")]
    Empty,
    #[error("the torrent is too large: {0} bytes overflow the piece count or a 64-bit offset")]
    TooLarge(u64),
}

/// Errors mapping a block to spans: the request does not fit the torrent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("piece {piece} out of range (the torrent has {num_pieces})")]
    PieceOutOfRange { piece: u32, num_pieces: u32 },
    #[error("block {begin}+{len} does not fit piece {piece} of {piece_size} bytes")]
    OutOfPiece {
        piece: u32,
        begin: u32,
        len: u32,
        piece_size: u32,
    },
}

/// Where every byte of one torrent lives.
#[derive(Debug, Clone)]
pub struct Layout {
    files: Vec<FileEntry>,
    offsets: Vec<u64>,
    piece_length: u32,
    total_length: u64,
    num_pieces: u32,
}

impl Layout {
    /// Builds a layout; `files` in metainfo order.
    pub fn new(files: Vec<FileEntry>, piece_length: u32) -> Result<Self, LayoutError> {
        if piece_length == 0 {
            return Err(LayoutError::ZeroPieceLength);
        }
        let mut offsets = Vec::with_capacity(files.len());
        let mut total: u64 = 0;
        for f in &files {
            offsets.push(total);
            total = total
                .checked_add(f.length)
                .ok_or(LayoutError::TooLarge(u64::MAX))?;
        }
        if total == 0 {
            return Err(LayoutError::Empty);
        }
        let num_pieces = total.div_ceil(u64::from(piece_length));
        let num_pieces = u32::try_from(num_pieces).map_err(|_| LayoutError::TooLarge(total))?;
        Ok(Layout {
            files,
            offsets,
            piece_length,
            total_length: total,
            num_pieces,
        })
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn num_pieces(&self) -> u32 {
        self.num_pieces
    }

    /// Stream offset of file `index`.
    pub fn file_offset(&self, index: usize) -> u64 {
        self.offsets[index]
    }

    /// Size of piece `piece` (the last one may be shorter); 0 when out of range.
    pub fn piece_size(&self, piece: u32) -> u32 {
        if piece >= self.num_pieces {
            return 0;
        }
        let start = u64::from(piece) * u64::from(self.piece_length);
        // Bounded by piece_length, so the cast cannot truncate.
        (self.total_length - start).min(u64::from(self.piece_length)) as u32
    }

    /// Checks that `(piece, begin, len)` lies inside the torrent, with `len > 0`.
    pub fn check_block(&self, piece: u32, begin: u32, len: u32) -> Result<(), BlockError> {
        if piece >= self.num_pieces {
            return Err(BlockError::PieceOutOfRange {
                piece,
                num_pieces: self.num_pieces,
            });
        }
        let piece_size = self.piece_size(piece);
        if len == 0 || u64::from(begin) + u64::from(len) > u64::from(piece_size) {
            return Err(BlockError::OutOfPiece {
                piece,
                begin,
                len,
                piece_size,
            });
        }
        Ok(())
    }

    /// The spans covering block `(piece, begin, len)`, in stream order. Zero-length files are
    /// skipped. Allocation-free.
    pub fn spans(&self, piece: u32, begin: u32, len: u32) -> Result<Spans<'_>, BlockError> {
        self.check_block(piece, begin, len)?;
        let start = u64::from(piece) * u64::from(self.piece_length) + u64::from(begin);
        Ok(self.spans_at(start, len))
    }

    /// The spans covering `len` bytes of the stream from `start`; the caller guarantees the range
    /// lies inside the torrent.
    fn spans_at(&self, start: u64, len: u32) -> Spans<'_> {
        // First file whose end is past `start` (this skips zero-length files at `start`).
        let file_index = self
            .offsets
            .partition_point(|&o| o <= start)
            .saturating_sub(1);
        let mut i = file_index;
        while i < self.files.len() && self.offsets[i] + self.files[i].length <= start {
            i += 1;
        }
        Spans {
            layout: self,
            file_index: i,
            pos: start,
            remaining: len,
            buf_offset: 0,
        }
    }

    /// The pieces that file `index` touches (empty for a zero-length file).
    pub fn file_pieces(&self, index: usize) -> Range<u32> {
        let f = &self.files[index];
        if f.length == 0 {
            return 0..0;
        }
        let start = self.offsets[index];
        let end = start + f.length; // exclusive
        let pl = u64::from(self.piece_length);
        // Both bounded by num_pieces, which fits in u32.
        (start / pl) as u32..end.div_ceil(pl) as u32
    }

    /// Stream byte range of piece `piece` (empty when out of range).
    pub fn piece_range(&self, piece: u32) -> Range<u64> {
        let start = u64::from(piece) * u64::from(self.piece_length);
        start..start + u64::from(self.piece_size(piece))
    }

    /// The pieces that bytes `[offset, offset + len)` of file `index` touch (empty when `len`
    /// is 0 or the range lies past the file's end; the range is clipped to the file).
    pub fn file_range_pieces(&self, index: usize, offset: u64, len: u64) -> Range<u32> {
        let f = &self.files[index];
        if len == 0 || offset >= f.length {
            return 0..0;
        }
        let end = offset.saturating_add(len).min(f.length);
        let start = self.offsets[index] + offset;
        let end = self.offsets[index] + end; // exclusive
        let pl = u64::from(self.piece_length);
        // Both bounded by num_pieces, which fits in u32.
        (start / pl) as u32..end.div_ceil(pl) as u32
    }

    /// Number of non-padding files with data (the files a full check must open).
    pub fn data_files(&self) -> usize {
        self.files
            .iter()
            .filter(|f| !f.padding && f.length > 0)
            .count()
    }

    /// The files that piece `piece` touches, as a range of file indices (zero-length files inside
    /// the range included).
    pub fn piece_files(&self, piece: u32) -> Range<usize> {
        let size = self.piece_size(piece);
        if size == 0 {
            return 0..0;
        }
        let start = u64::from(piece) * u64::from(self.piece_length);
        let first = self.spans_at(start, size).file_index;
        let end = start + u64::from(size);
        let last = self.offsets.partition_point(|&o| o < end);
        first..last.max(first + 1)
    }
}

/// Iterator over a block's spans; see [`Layout::spans`].
#[derive(Debug, Clone)]
pub struct Spans<'a> {
    layout: &'a Layout,
    file_index: usize,
    pos: u64,
    remaining: u32,
    buf_offset: u32,
}

impl Iterator for Spans<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        while self.remaining > 0 && self.file_index < self.layout.files.len() {
            let i = self.file_index;
            let f_start = self.layout.offsets[i];
            let f_end = f_start + self.layout.files[i].length;
            if f_end <= self.pos {
                self.file_index += 1;
                continue;
            }
            let in_file = f_end - self.pos;
            let len = u64::from(self.remaining).min(in_file) as u32;
            let span = Span {
                file_index: i,
                file_offset: self.pos - f_start,
                len,
                buf_offset: self.buf_offset,
            };
            self.pos += u64::from(len);
            self.remaining -= len;
            self.buf_offset += len;
            self.file_index += 1;
            return Some(span);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(name: &str, length: u64) -> FileEntry {
        FileEntry {
            path: PathBuf::from(name),
            length,
            padding: false,
        }
    }

    #[test]
    fn single_file_spans() {
        let l = Layout::new(vec![fe("a", 100)], 32).unwrap();
        assert_eq!(l.num_pieces(), 4);
        assert_eq!(l.piece_size(3), 4);
        let s: Vec<_> = l.spans(3, 0, 4).unwrap().collect();
        assert_eq!(
            s,
            vec![Span {
                file_index: 0,
                file_offset: 96,
                len: 4,
                buf_offset: 0
            }]
        );
        assert!(l.spans(3, 0, 5).is_err());
        assert!(l.spans(4, 0, 1).is_err());
        assert!(l.spans(0, 0, 0).is_err());
    }

    #[test]
    fn block_crosses_files_and_skips_empty() {
        let l = Layout::new(vec![fe("a", 10), fe("e", 0), fe("b", 5), fe("c", 20)], 16).unwrap();
        let s: Vec<_> = l.spans(0, 8, 8).unwrap().collect();
        assert_eq!(
            s,
            vec![
                Span {
                    file_index: 0,
                    file_offset: 8,
                    len: 2,
                    buf_offset: 0
                },
                Span {
                    file_index: 2,
                    file_offset: 0,
                    len: 5,
                    buf_offset: 2
                },
                Span {
                    file_index: 3,
                    file_offset: 0,
                    len: 1,
                    buf_offset: 7
                },
            ]
        );
        assert_eq!(l.file_pieces(0), 0..1);
        assert_eq!(l.file_pieces(1), 0..0);
        assert_eq!(l.file_pieces(3), 0..3);
        assert_eq!(l.piece_files(0), 0..4);
        assert_eq!(l.piece_files(1), 3..4);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// The naive model: the file holding stream byte `pos`, and its offset in that file, found
    /// by a linear scan (zero-length files hold no bytes).
    fn naive_locate(files: &[FileEntry], pos: u64) -> (usize, u64) {
        let mut start = 0;
        for (i, f) in files.iter().enumerate() {
            if pos < start + f.length {
                return (i, pos - start);
            }
            start += f.length;
        }
        unreachable!("pos {pos} past the end")
    }

    fn files_strategy() -> impl Strategy<Value = Vec<FileEntry>> {
        prop::collection::vec((0u64..3_000, any::<bool>(), 0u8..4), 1..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (len, pad, zero))| FileEntry {
                    path: PathBuf::from(format!("f{i}")),
                    // One file in four is empty.
                    length: if zero == 0 { 0 } else { len },
                    padding: pad && len % 3 == 0,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn spans_match_the_naive_model(
            files in files_strategy(),
            piece_length in 1u32..5_000,
            a in any::<u64>(), b in any::<u64>(), c in any::<u32>(),
        ) {
            let Ok(l) = Layout::new(files.clone(), piece_length) else {
                // Only an all-empty torrent is refused here.
                prop_assert_eq!(files.iter().map(|f| f.length).sum::<u64>(), 0);
                return Ok(());
            };
            let total: u64 = files.iter().map(|f| f.length).sum();
            prop_assert_eq!(l.total_length(), total);
            prop_assert_eq!(u64::from(l.num_pieces()), total.div_ceil(u64::from(piece_length)));
            let piece = (a % u64::from(l.num_pieces())) as u32;
            let size = l.piece_size(piece);
            prop_assert!(size > 0 && size <= piece_length);
            let begin = (b % u64::from(size)) as u32;
            let len = 1 + c % (size - begin);
            let spans: Vec<Span> = l.spans(piece, begin, len).unwrap().collect();
            // Byte by byte, the spans agree with the naive model.
            let start = l.piece_range(piece).start + u64::from(begin);
            let mut covered = 0u32;
            for s in &spans {
                prop_assert!(s.len > 0);
                prop_assert_eq!(s.buf_offset, covered);
                prop_assert!(s.file_offset + u64::from(s.len) <= files[s.file_index].length);
                for k in [0, s.len - 1] {
                    let pos = start + u64::from(s.buf_offset + k);
                    prop_assert_eq!(naive_locate(&files, pos), (s.file_index, s.file_offset + u64::from(k)));
                }
                covered += s.len;
            }
            prop_assert_eq!(covered, len);
            // Spans are in stream order over distinct files.
            for w in spans.windows(2) {
                prop_assert!(w[0].file_index < w[1].file_index);
            }
            // Out-of-range requests are refused.
            prop_assert!(l.spans(piece, begin, size - begin + 1).is_err());
            prop_assert!(l.spans(l.num_pieces(), 0, 1).is_err());
            prop_assert!(l.spans(piece, begin, 0).is_err());
        }

        #[test]
        fn file_to_pieces_matches_the_naive_model(
            files in files_strategy(),
            piece_length in 1u32..5_000,
            off in any::<u64>(), len in 0u64..10_000,
        ) {
            let Ok(l) = Layout::new(files.clone(), piece_length) else { return Ok(()); };
            let pl = u64::from(piece_length);
            for (i, f) in files.iter().enumerate() {
                // Naive: the set of pieces of every byte of the file.
                let start = l.file_offset(i);
                let naive: std::collections::BTreeSet<u32> =
                    (start..start + f.length).map(|p| (p / pl) as u32).collect();
                let got: std::collections::BTreeSet<u32> = l.file_pieces(i).collect();
                prop_assert_eq!(&got, &naive);
                // Every piece's file range contains i exactly when i has bytes in that piece.
                for p in 0..l.num_pieces() {
                    if f.length > 0 {
                        prop_assert_eq!(l.piece_files(p).contains(&i), naive.contains(&p),
                            "piece {} file {}", p, i);
                    }
                }
                // A sub-range of the file.
                if f.length > 0 {
                    let o = off % f.length;
                    let naive: std::collections::BTreeSet<u32> = (start + o
                        ..start + (o + len).min(f.length))
                        .map(|p| (p / pl) as u32)
                        .collect();
                    let got: std::collections::BTreeSet<u32> =
                        l.file_range_pieces(i, o, len).collect();
                    prop_assert_eq!(got, naive);
                }
                prop_assert!(l.file_range_pieces(i, f.length, 5).is_empty());
            }
        }
    }
}
