//! Process resource limits, checked and raised before anything is built: descriptors
//! (RLIMIT_NOFILE, split between peers and each shard's open-file table) and locked memory
//! (RLIMIT_MEMLOCK, which registered buffers are charged to for a non-root user).

use anyhow::bail;

/// File descriptors kept aside for what is not a peer or a data file: stdio, the control plane's
/// runtime, per-shard rings, eventfds and listeners (24), and the tracker client: its one UDP
/// socket, at most 16 HTTP announces in flight and a few idle pooled connections (24 more).
const FD_RESERVE_BASE: u64 = 48;
const FD_RESERVE_PER_SHARD: u64 = 8;

/// Splits the descriptor budget: `(max_peers, max_open_files_per_shard)`. Peers and files share
/// what RLIMIT_NOFILE leaves after the reserve; files get at least 4 per shard.
pub fn fd_budget(
    nofile: u64,
    shards: usize,
    max_peers: usize,
    files: Option<usize>,
) -> anyhow::Result<(usize, usize)> {
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * shards as u64;
    let Some(budget) = nofile
        .checked_sub(reserve)
        .filter(|&b| b >= 8 * shards as u64)
    else {
        bail!(
            "the open-file limit ({nofile}) is too low for {shards} shard(s): raise `ulimit -n` \
             to at least {}",
            reserve + 8 * shards as u64
        );
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let files_total = match files {
        Some(f) => f.saturating_mul(shards),
        None => (budget / 2).min(1024 * shards),
    };
    if files_total >= budget {
        bail!(
            "--max-open-files {} x {shards} shard(s) leaves no descriptors for peers under the \
             open-file limit {nofile}",
            files.unwrap_or(0)
        );
    }
    let peers = max_peers.min(budget - files_total).max(1);
    Ok((peers, (files_total / shards).max(4)))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_budget_splits_and_refuses() {
        // 128 descriptors, 2 shards: reserve 64, 64 left: 32 for files (16 per shard), 32 peers.
        assert_eq!(fd_budget(128, 2, 512, None).unwrap(), (32, 16));
        assert_eq!(fd_budget(128, 2, 10, None).unwrap(), (10, 16));
        assert!(fd_budget(40, 2, 10, None).is_err());
        assert!(fd_budget(128, 1, 10, Some(200)).is_err());
        assert_eq!(fd_budget(1 << 20, 2, 512, None).unwrap(), (512, 1024));
    }
}
