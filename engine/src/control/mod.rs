//! The control plane: one ordinary tokio runtime on the main thread, never on a shard. It
//! samples the registry's counters and reports; trackers, the supervisor and the HTTP API land
//! here.
//! - [`status`]: the status line and the wait for SIGINT/SIGTERM.

pub mod status;
