//! uring-bt: a thread-per-core io_uring BitTorrent engine.
//!
//! Module map (see docs/architecture.md):
//! - [`bencode`]: iterative validator (depth/token/size limits) and raw-span lookup.
//! - [`metainfo`]: .torrent parsing, validation, info hash over the raw bytes, magnet links.
//! - [`create`]: building .torrent files (all-core hashing).
//! - [`verify`]: checking data against a torrent.
//! - [`wire`]: the peer wire protocol, sans-IO.
//! - [`peer`]: the peer state machine, sans-IO.
//! - [`choker`]: upload-slot choking (seed mode).
//! - [`registry`], [`shard`], [`conn`], [`seed`]: the seeding server.
//! - [`bench`]: `uring-bt bench`.
//! - [`cli`]: the command line.

pub mod bench;
pub mod bencode;
pub mod choker;
pub mod cli;
pub mod conn;
pub mod create;
pub mod metainfo;
pub mod peer;
pub mod registry;
pub mod seed;
pub mod shard;
pub mod verify;
pub mod wire;
