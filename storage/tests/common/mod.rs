//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use uring_bt_storage::layout::{FileEntry, Layout};

/// Deterministic content: byte `i` of the torrent stream.
pub fn stream_byte(i: u64) -> u8 {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7);
    (x >> 24) as u8
}

/// Writes the files of `layout` under `root` with the deterministic stream content (padding
/// files are not written).
pub fn write_files(layout: &Layout, root: &Path) {
    for (i, f) in layout.files().iter().enumerate() {
        if f.padding {
            continue;
        }
        let start = layout.file_offset(i);
        let data: Vec<u8> = (0..f.length).map(|j| stream_byte(start + j)).collect();
        let p = root.join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Expected bytes of `(piece, begin, len)` (zeros in padding files).
pub fn expected(layout: &Layout, piece: u32, begin: u32, len: u32) -> Vec<u8> {
    let start = u64::from(piece) * u64::from(layout.piece_length()) + u64::from(begin);
    let mut out: Vec<u8> = (0..u64::from(len))
        .map(|j| stream_byte(start + j))
        .collect();
    for s in layout.spans(piece, begin, len).unwrap() {
        if layout.files()[s.file_index].padding {
            out[s.buf_offset as usize..(s.buf_offset + s.len) as usize].fill(0);
        }
    }
    out
}

pub fn fe(path: impl Into<PathBuf>, length: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        length,
        padding: false,
    }
}

/// Small deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// All blocks `(piece, begin, len)` of a layout for a block size.
pub fn all_blocks(layout: &Layout, block: u32) -> Vec<(u32, u32, u32)> {
    let mut v = Vec::new();
    for p in 0..layout.num_pieces() {
        let size = layout.piece_size(p);
        let mut b = 0;
        while b < size {
            let n = block.min(size - b);
            v.push((p, b, n));
            b += n;
        }
    }
    v
}

/// Descriptors open in this process right now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Serialises the tests of one test binary that count this process's descriptors: the test
/// harness runs tests on parallel threads, and a neighbour's rings and files would otherwise be
/// counted as a leak (CI once saw 12 -> 21 from exactly that). Every test in such a binary holds
/// the guard for its whole run.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding the lock has already failed; the others go on.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
