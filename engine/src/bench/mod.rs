//! `uring-bt bench`: measurements of this machine against its physical limits. Nothing here is
//! on the serving path; it drives the same storage ring the shards use.
//! - [`disk`]: block reads through the storage ring against tokio-uring, a bare ring, `pread`
//!   and `mmap`.

pub mod disk;
