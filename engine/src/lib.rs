//! uring-bt: a thread-per-core io_uring BitTorrent engine.
//!
//! The protocol itself (bencode, metainfo, layout, wire codec, peer session, choker) is the
//! sans-IO crate `uring-bt-proto`; block storage is `uring-bt-storage`. This crate is grouped by
//! role (module map with one line per file: `docs/architecture.md`):
//! - [`server`]: the data plane: shards, the connection driver (the only peer I/O), the
//!   registry, the block-serving path, process limits.
//! - [`control`]: the control plane: status reporting (later trackers, supervisor, API).
//! - [`torrent`]: making, loading and checking torrents and their data (create, verify, the
//!   start-up check with resume data).
//! - [`cli`]: the command line, one file per command.
//! - [`bench`]: `uring-bt bench`, away from the hot path.

pub mod bench;
pub mod cli;
pub mod control;
pub mod server;
pub mod torrent;
