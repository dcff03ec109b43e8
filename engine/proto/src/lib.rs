//! uring-bt-proto: the BitTorrent protocol with no I/O.
//!
//! Everything here takes bytes and `now` and returns bytes and decisions; nothing opens a file
//! or a socket or reads a clock, so every protocol decision can be unit-tested, property-tested
//! and fuzzed without a runtime. The engine's connection driver is the only code that moves
//! these bytes over a socket.
//!
//! - [`bencode`]: iterative validator (depth/token/size limits) and raw-span lookup.
//! - [`metainfo`]: .torrent parsing and validation, info hash over the raw bytes, magnet links.
//! - [`layout`]: piece/block -> file spans (what a torrent's bytes are, and where).
//! - [`wire`]: the peer wire codec (BEP 3, 6, 10): handshake, messages, extension handshake.
//! - [`peer`]: the peer state machine (requests, choking, interest, pieces, strikes).
//! - [`session`]: one connection from first byte to close: handshake order, our extension
//!   handshake, the bounded outgoing control queue, timers driven by `now`.
//! - [`choker`]: upload-slot choking (seed mode).
//! - [`ext`]: BEP 9 `ut_metadata` and BEP 11 `ut_pex`: codecs and per-connection bounds.

pub mod bencode;
pub mod choker;
pub mod ext;
pub mod layout;
pub mod magnet;
pub mod metainfo;
pub mod peer;
pub mod picker;
pub mod session;
pub mod tracker;
pub mod wire;
