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

    /// Reads the contiguous blocks `lens` of `piece` of torrent `t`, the first at `begin` and
    /// each following right after the one before, into `bufs` (one buffer per block, in order),
    /// setting each buffer's block length to its block's length. A store may read the whole run
    /// with fewer operations than blocks (the io_uring store: one vectored read per file span).
    ///
    /// The result covers the whole run: on an error some buffers may hold data, none is known
    /// good (read the blocks one by one to find out which). A run of one block behaves exactly
    /// as [`BlockStore::read_block`]. For a longer run, a block of 0 bytes or larger than its
    /// buffer (or lengths whose sum overflows) is [`StorageError::BlockTooLarge`], checked
    /// before the torrent is looked up; a run that does not fit inside the piece is
    /// [`StorageError::BadBlock`]; then the run's files are read in stream order and the first
    /// file that fails decides the error (missing, too short, I/O).
    ///
    /// Panics if `lens` and `bufs` differ in length (a caller bug).
    async fn read_blocks(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        lens: &[u32],
        bufs: Vec<PoolBuf>,
    ) -> (Result<(), StorageError>, Vec<PoolBuf>);

    /// Writes the buffer's block region (its current block length) at `(piece, begin)`.
    async fn write_block(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        buf: PoolBuf,
    ) -> (Result<(), StorageError>, PoolBuf);

    /// Writes the contiguous blocks in `bufs` (each buffer's block region, at its current block
    /// length) of `piece` of torrent `t`, the first at `begin` and each following right after
    /// the one before. A store may write the whole run with fewer operations than blocks (the
    /// io_uring store: one vectored write per file span; a buffered write's cost is mostly per
    /// call, so a 256 KiB run costs about half of sixteen 16 KiB writes).
    ///
    /// The result covers the whole run: on an error some blocks may be written, none is known
    /// good. A run of one block behaves exactly as [`BlockStore::write_block`]. The checks are
    /// those of [`BlockStore::read_blocks`], and a read-only torrent is
    /// [`StorageError::ReadOnly`]. An empty run writes nothing.
    async fn write_blocks(
        &self,
        t: TorrentId,
        piece: u32,
        begin: u32,
        bufs: Vec<PoolBuf>,
    ) -> (Result<(), StorageError>, Vec<PoolBuf>);

    /// SHA-1 of piece `piece` as stored on disk.
    async fn hash_piece(&self, t: TorrentId, piece: u32) -> Result<[u8; 20], StorageError>;
}

/// Checks the block lengths of a run for [`BlockStore::read_blocks`] (more than one block):
/// each is non-zero and fits its buffer, and their sum fits a `u32`. Returns the run's length.
pub(crate) fn run_length(lens: &[u32], bufs: &[PoolBuf]) -> Result<u32, StorageError> {
    let mut total: u32 = 0;
    for (&len, b) in lens.iter().zip(bufs) {
        let fits = len != 0 && len as usize <= b.block_capacity();
        match total.checked_add(len).filter(|_| fits) {
            Some(x) => total = x,
            None => {
                let capacity = b.block_capacity();
                return Err(StorageError::BlockTooLarge { len, capacity });
            }
        }
    }
    Ok(total)
}

/// Calls `f(block, offset_in_block, len)` for each block of a run (blocks of `lens` bytes laid
/// end to end) that overlaps run bytes `[start, start + len)`, in order.
pub(crate) fn for_each_piece_of(
    lens: &[u32],
    start: u32,
    len: u32,
    mut f: impl FnMut(usize, usize, usize),
) {
    let end = u64::from(start) + u64::from(len);
    let mut block_start: u64 = 0;
    for (i, &l) in lens.iter().enumerate() {
        let block_end = block_start + u64::from(l);
        let a = block_start.max(u64::from(start));
        let b = block_end.min(end);
        if a < b {
            f(i, (a - block_start) as usize, (b - a) as usize);
        }
        if block_end >= end {
            break;
        }
        block_start = block_end;
    }
}
