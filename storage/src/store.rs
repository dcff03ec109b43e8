//! The `BlockStore` interface the engine uses (implemented by the io_uring store and the
//! simulated one), and the torrent id it takes. Its error type lives in [`crate::error`] (so the
//! pool and the stores can all name it without importing each other) and is re-exported here.

pub use crate::error::{ErrorAction, StorageError};
use crate::pool::PoolBuf;

/// Index of a torrent inside one store (returned by `add_torrent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TorrentId(pub u32);

/// Block I/O for one shard. Futures are `!Send` (one store per shard thread).
///
/// Buffers are passed by value and always handed back, whatever the result, so the caller can
/// reuse them or let them return to the pool.
#[allow(async_fn_in_trait)]
pub trait BlockStore {
    /// Reads block `(piece, begin, len)` of torrent `t` into the buffer's block region
    /// (`[HEADROOM..HEADROOM + len)`) and sets the block length to `len`.
    async fn read_block(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        len: u32,
        buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf);

    /// Writes the buffer's block region (its current block length) at `(piece, begin)`.
    async fn write_block(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf);

    /// SHA-1 of piece `piece` as stored on disk.
    async fn hash_piece(&self, t: TorrentId, piece: u32) -> Result<[u8; 20], StorageError>;
}
