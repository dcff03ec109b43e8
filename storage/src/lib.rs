//! uring-bt storage: everything that touches files.
//!
//! - [`layout`]: piece/block -> file spans (pure; it lives in `uring-bt-proto`, since metainfo
//!   builds it, and is re-exported here because every store API speaks in it).
//! - [`error`]: [`error::StorageError`] and what the caller can do about it.
//! - [`hash`]: all-core piece hashing with large sequential reads (create, verify).
//! - [`pool`]: the per-shard pool of fixed-size, page-aligned, registered buffers.
//! - [`files`]: the LRU-capped table of open files registered with the ring.
//! - [`uring`]: the per-shard io_uring block store (read/write blocks across spans).
//! - [`store`]: the `BlockStore` interface the engine uses.
//! - [`sim`]: a simulated block store with seeded faults, for deterministic engine tests.
//! - [`resume`]: resume data (have-bitfield + file sizes and mtimes), written atomically.
//!
//! This crate knows nothing of peers or the wire protocol.

pub mod error;
pub mod files;
pub mod hash;
pub mod pool;
pub mod resume;
pub mod sha1x16;
pub mod sim;
pub mod store;
pub mod uring;

pub use uring_bt_proto::layout;
