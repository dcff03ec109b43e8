//! Torrents and their data, outside the serving path.
//! - [`load`]: reading a .torrent file (size-capped) into a `Metainfo`.
//! - [`create`]: building .torrent files (all-core hashing).
//! - [`verify`]: checking data against a torrent.
//! - [`check`]: the start-up check before seeding, skipped when resume data still matches.

pub mod check;
pub mod create;
pub mod load;
pub mod verify;
