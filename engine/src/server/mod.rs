//! The data plane. One shard per core, each owning its listener, its peers, its buffer pool and
//! its storage ring; shards share only the read-mostly registry.
//!
//! Dependencies run mostly one way: `shard` (threads, accept loop, command loop, ticker) ->
//! `conn` (the connection driver) -> `serve` (reading a batch of blocks) and `state` (the
//! shard's state and each peer's slot) -> `registry`. The one way back: `conn` and `state` spawn
//! their tasks through `shard::spawn_task` (so a panic in any task fails the shard) and name its
//! `TaskFailure`.
//! - [`registry`]: the torrents every shard serves (atomic piece bits, counters).
//! - [`state`]: a shard's state, its configuration, and one peer's slot.
//! - [`serve`]: reading a batch of requested blocks into pool buffers through a `BlockStore`.
//! - [`splice`]: the splice send path (page cache to socket through a pipe, no copy).
//! - [`conn`]: the connection driver: the reader and writer tasks of one peer.
//! - [`shard`]: shard threads, listeners, accept loop, housekeeping ticker.
//! - [`limits`]: process resource limits (descriptors, locked memory) and how they are split.
//! - [`affinity`]: the CPUs the process may use, and pinning shard `i` to the `i`-th of them.

pub mod affinity;
pub mod conn;
pub mod download;
pub mod limits;
pub mod registry;
pub mod serve;
pub mod shard;
pub mod splice;
pub mod state;
