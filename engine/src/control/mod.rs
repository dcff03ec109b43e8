//! The control plane: one ordinary tokio runtime on the main thread, never on a shard. It
//! samples the registry's counters and reports; trackers, the supervisor and the HTTP API land
//! here.
//! - [`run`]: the running server's control loop: supervisor, announcer, dialer, status, stop.
//! - [`status`]: the status line.
//! - [`dialer`]: which peers we connect out to, on which shard, with back-off.
//! - [`supervisor`]: Erlang-style supervision of the shards (restart policy and intensity).
//! - [`tracker`]: the HTTP(S) and UDP tracker clients.
//! - [`announce`]: the announcer (tiers, back-off, rate bound, `stopped` at shutdown).

pub mod announce;
pub mod dialer;
pub mod metadata;
pub mod run;
pub mod status;
pub mod supervisor;
pub mod tracker;
