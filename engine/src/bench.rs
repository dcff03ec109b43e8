//! `uring-bt bench`: disk and network throughput against the machine's limits.

use std::process::ExitCode;

/// Arguments of `uring-bt bench disk`.
#[derive(Debug, clap::Args)]
pub struct BenchDiskArgs {
    /// File to read (created and filled when missing).
    pub path: Option<std::path::PathBuf>,
}

/// Runs `uring-bt bench disk`.
pub fn run_disk(_args: BenchDiskArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench disk: not built yet")
}
