//! Process resource limits, checked and raised before anything is built: descriptors
//! (RLIMIT_NOFILE, split between peers and each shard's open-file table) and locked memory
//! (RLIMIT_MEMLOCK, which registered buffers are charged to without CAP_IPC_LOCK).

use anyhow::bail;

/// File descriptors kept aside for what is not a peer or a data file: stdio, the control plane's
/// runtime, per-shard rings, eventfds and listeners (24), and the tracker client: its one UDP
/// socket, at most 16 HTTP announces in flight and a few idle pooled connections (24 more).
const FD_RESERVE_BASE: u64 = 48;
const FD_RESERVE_PER_SHARD: u64 = 8;

/// The fewest open files a shard's table is given (an explicit `--max-open-files` below it is a
/// usage error; a derived one is raised to it).
pub const MIN_OPEN_FILES: usize = 4;

/// Splits the descriptor budget: `(max_peers, max_open_files_per_shard)`. Peers and files share
/// what RLIMIT_NOFILE leaves after the reserve; files get at least 4 per shard. A peer costs
/// `fds_per_peer` descriptors: 1, or 2 when downloading with `--recv-path direct` (its socket
/// and the dup the reader receives PIECE payloads through, `conn::read_scatter`).
pub fn fd_budget(
    nofile: u64,
    shards: usize,
    max_peers: usize,
    files: Option<usize>,
    fds_per_peer: usize,
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
    let peers = max_peers
        .min((budget - files_total) / fds_per_peer.max(1))
        .max(1);
    Ok((peers, (files_total / shards).max(MIN_OPEN_FILES)))
}

/// Makes (and drops) one tiny io_uring, once per process (later calls return the first
/// answer): a kernel, sysctl or seccomp filter that refuses io_uring, or a locked-memory limit too
/// low for a ring, is then reported in one clear line before any shard starts, instead of as a
/// shard that cannot start. Raises the soft RLIMIT_MEMLOCK to the hard limit first, as the pool
/// sizing does.
pub fn probe_io_uring() -> Result<(), String> {
    static ANSWER: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let _ = uring_bt_storage::pool::raise_memlock_limit();
            match io_uring::IoUring::new(2) {
                Ok(_) => Ok(()),
                Err(e) => Err(io_uring_refused(&e, memlock_charged())),
            }
        })
        .clone()
}

/// The soft RLIMIT_MEMLOCK in bytes when this process is charged for its rings (no
/// CAP_IPC_LOCK, a finite limit); `None` otherwise.
pub fn memlock_charged() -> Option<u64> {
    if uring_bt_storage::pool::has_cap_ipc_lock() {
        return None;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return None;
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The symbolic name of the errnos `io_uring_setup(2)` returns.
fn errno_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOMEM => "ENOMEM",
        libc::ENOSYS => "ENOSYS",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EFAULT => "EFAULT",
        _ => return None,
    })
}

/// One line for an io_uring the kernel would not make: the errno, its name, and what to check.
/// `memlock` is the soft RLIMIT_MEMLOCK in bytes when the rings are charged to it (no
/// CAP_IPC_LOCK).
pub fn io_uring_refused(err: &std::io::Error, memlock: Option<u64>) -> String {
    let code = err.raw_os_error();
    let errno = match code.and_then(errno_name) {
        Some(name) => format!("{err}, {name}"),
        None => err.to_string(),
    };
    let what = format!("cannot make an io_uring ({errno})");
    match code {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "{what}: io_uring is not allowed for this process: check `sysctl \
             kernel.io_uring_disabled` (2 refuses it to everyone, 1 to all but CAP_SYS_ADMIN and \
             the group in kernel.io_uring_group), a seccomp filter (systemd's SystemCallFilter= \
             must allow @aio) and a container's seccomp profile (Docker's default denies \
             io_uring since 25.0)"
        ),
        Some(libc::ENOMEM) => match memlock {
            Some(bytes) => format!(
                "{what}: the locked-memory limit RLIMIT_MEMLOCK ({bytes} bytes) is too low for \
                 the rings: raise it (`ulimit -l`, LimitMEMLOCK= under systemd, \
                 /etc/security/limits.conf) or grant the process CAP_IPC_LOCK \
                 (AmbientCapabilities=CAP_IPC_LOCK under systemd)"
            ),
            None => format!("{what}: the kernel is short of memory for the rings"),
        },
        Some(libc::ENOSYS) => format!(
            "{what}: this kernel has no io_uring (it needs Linux 5.1 or later built with \
             CONFIG_IO_URING), or a seccomp filter hides it"
        ),
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            format!("{what}: out of file descriptors: raise `ulimit -n`")
        }
        _ => format!(
            "{what}: check `sysctl kernel.io_uring_disabled`, the seccomp filter or container \
             profile, and RLIMIT_MEMLOCK (`ulimit -l`)"
        ),
    }
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
        assert_eq!(fd_budget(128, 2, 512, None, 1).unwrap(), (32, 16));
        assert_eq!(fd_budget(128, 2, 10, None, 1).unwrap(), (10, 16));
        assert!(fd_budget(40, 2, 10, None, 1).is_err());
        assert!(fd_budget(128, 1, 10, Some(200), 1).is_err());
        assert_eq!(fd_budget(1 << 20, 2, 512, None, 1).unwrap(), (512, 1024));
        // Downloading: two descriptors a peer.
        assert_eq!(fd_budget(128, 2, 512, None, 2).unwrap(), (16, 16));
        assert_eq!(fd_budget(1 << 20, 2, 512, None, 2).unwrap(), (512, 1024));
    }

    #[test]
    fn io_uring_refusals_name_the_errno_and_what_to_check() {
        let eperm = io_uring_refused(&std::io::Error::from_raw_os_error(libc::EPERM), Some(0));
        assert!(
            eperm.starts_with(
                "cannot make an io_uring (Operation not permitted (os error 1), EPERM): io_uring \
                 is not allowed"
            ),
            "{eperm}"
        );
        for want in [
            "kernel.io_uring_disabled",
            "seccomp",
            "SystemCallFilter=",
            "container",
        ] {
            assert!(eperm.contains(want), "{want}: {eperm}");
        }
        let enomem = io_uring_refused(
            &std::io::Error::from_raw_os_error(libc::ENOMEM),
            Some(65536),
        );
        assert!(
            enomem.contains("(Cannot allocate memory (os error 12), ENOMEM)"),
            "{enomem}"
        );
        assert!(
            enomem.contains("RLIMIT_MEMLOCK (65536 bytes) is too low")
                && enomem.contains("ulimit -l"),
            "{enomem}"
        );
        // Not charged (CAP_IPC_LOCK): ENOMEM is then the kernel's own shortage.
        let root = io_uring_refused(&std::io::Error::from_raw_os_error(libc::ENOMEM), None);
        assert!(!root.contains("RLIMIT_MEMLOCK"), "{root}");
        let enosys = io_uring_refused(&std::io::Error::from_raw_os_error(libc::ENOSYS), None);
        assert!(
            enosys.contains("ENOSYS") && enosys.contains("no io_uring"),
            "{enosys}"
        );
        // An errno without a hint of its own still says what to check, on one line.
        let other = io_uring_refused(&std::io::Error::from_raw_os_error(libc::EBUSY), None);
        assert!(
            other.contains("os error 16") && other.contains("kernel.io_uring_disabled"),
            "{other}"
        );
        for m in [eperm, enomem, root, enosys, other] {
            assert!(!m.contains('\n') && !m.contains("  "), "{m}");
        }
    }

    #[test]
    fn io_uring_is_allowed_here() {
        // The test machine runs the shards' rings; the probe must agree (and answer the same
        // twice).
        assert_eq!(probe_io_uring(), Ok(()));
        assert_eq!(probe_io_uring(), Ok(()));
    }
}
