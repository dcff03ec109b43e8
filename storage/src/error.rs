//! Storage errors, and what the caller can do about each ([`StorageError::action`]): a bad
//! request is the peer's fault (reject it); a missing or short file, a file that is not a
//! regular one or out of the save directory, a read-only directory, a full disk or an I/O error
//! make the torrent's data unusable as it stands (`PauseTorrent`): the seeder stops offering
//! what it touches (the pieces of that file, or of that block for an I/O error) and shows the
//! reason in its status line.
//!
//! This module imports nothing else of the crate but the layout's block error, so the buffer
//! pool, the file table and both stores can depend on it without a cycle.

use std::path::PathBuf;

use crate::layout::BlockError;

/// What the caller should do about a [`StorageError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// The request itself was invalid (piece/offset out of range, block too large): reject it;
    /// the torrent is fine.
    RejectRequest,
    /// The torrent's data is not usable as it stands (missing/short file, unsafe path, no space,
    /// read-only): pause the torrent with this reason, recheck later.
    PauseTorrent,
    /// The store itself is unusable (configuration, ring set-up): a fatal error for the shard.
    Fatal,
}

/// Errors of block I/O.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file does not exist (never created, or deleted under us).
    #[error("{}: file missing", path.display())]
    FileMissing { path: PathBuf },
    /// The file is shorter than the torrent says.
    #[error("{}: file is {actual} bytes, the torrent says {expected}", path.display())]
    FileTooShort {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// Any other I/O error on this file (EIO, EACCES, ...).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file system is full (ENOSPC, EDQUOT).
    #[error("{}: no space left on device", path.display())]
    NoSpace { path: PathBuf },
    /// Writing needs a writable file or directory (EROFS, EACCES on create, or the torrent was
    /// added read-only).
    #[error("{}: read-only", path.display())]
    ReadOnly { path: PathBuf },
    /// The path would leave the save directory (a symlink out of it, `..`, an absolute
    /// component).
    #[error("{}: unsafe path (outside the save directory)", path.display())]
    UnsafePath { path: PathBuf },
    /// A directory, FIFO, socket or device where the torrent has a file.
    #[error("{}: not a regular file", path.display())]
    NotRegularFile { path: PathBuf },
    /// The block does not fit the torrent or the buffer.
    #[error("bad block: {0}")]
    BadBlock(#[from] BlockError),
    /// The block is larger than a pool buffer.
    #[error("block of {len} bytes does not fit a buffer of {capacity}")]
    BlockTooLarge { len: u32, capacity: usize },
    /// No torrent with this id in the store.
    #[error("unknown torrent {0}")]
    UnknownTorrent(u32),
    /// Bad configuration (pool size, ring size).
    #[error("storage configuration: {0}")]
    Config(String),
    /// Setting up the io_uring ring failed.
    #[error("io_uring set-up: {0}")]
    Ring(#[source] std::io::Error),
}

impl StorageError {
    /// What the caller can do about this error.
    pub fn action(&self) -> ErrorAction {
        match self {
            StorageError::BadBlock(_)
            | StorageError::BlockTooLarge { .. }
            | StorageError::UnknownTorrent(_) => ErrorAction::RejectRequest,
            StorageError::FileMissing { .. }
            | StorageError::FileTooShort { .. }
            | StorageError::Io { .. }
            | StorageError::NoSpace { .. }
            | StorageError::ReadOnly { .. }
            | StorageError::UnsafePath { .. }
            | StorageError::NotRegularFile { .. } => ErrorAction::PauseTorrent,
            StorageError::Config(_) | StorageError::Ring(_) => ErrorAction::Fatal,
        }
    }

    /// True when the torrent's data cannot be served/stored as it stands: pause the torrent.
    pub fn is_fatal_for_torrent(&self) -> bool {
        self.action() == ErrorAction::PauseTorrent
    }

    /// Classifies an OS error on `path` into the typed variants.
    pub fn from_io(path: PathBuf, e: std::io::Error) -> StorageError {
        match e.raw_os_error() {
            Some(libc::ENOENT) => StorageError::FileMissing { path },
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace { path },
            Some(libc::EROFS) => StorageError::ReadOnly { path },
            Some(libc::ELOOP) | Some(libc::EXDEV) => StorageError::UnsafePath { path },
            _ => StorageError::Io { path, source: e },
        }
    }

    /// Classifies a negative io_uring result (`-errno`) on `path`.
    pub fn from_errno(path: PathBuf, errno: i32) -> StorageError {
        StorageError::from_io(path, std::io::Error::from_raw_os_error(errno))
    }
}
