//! CPU affinity: the CPUs this process may run on, which of them a shard is pinned to, and the
//! pinning itself.
//!
//! The allowed set is read once, on the main thread before any shard starts (`taskset`, a cgroup
//! cpuset or a container runtime may have narrowed it); shard `i` is pinned to the `i`-th allowed
//! CPU, modulo their count. Pinning to a CPU outside the set would either fail (cpuset) or escape
//! the limit the user asked for (`taskset`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// One word of a kernel CPU mask.
type Word = libc::c_ulong;
const WORD_BITS: usize = Word::BITS as usize;

/// The largest mask we ask the kernel for: 64 Ki CPUs (`sched_getaffinity` fails with EINVAL
/// when the buffer is smaller than the kernel's mask, so we grow it up to this).
const MAX_CPUS: usize = 1 << 16;

/// The CPUs the calling thread may run on, in increasing order. Called on the main thread before
/// shards start, this is the process's allowed set.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let mut words = vec![0 as Word; 1024 / WORD_BITS];
    loop {
        let bytes = std::mem::size_of_val(words.as_slice());
        // SAFETY: `words` is a live, writable buffer of exactly `bytes` bytes; the kernel writes
        // at most that many bytes of the calling thread's (pid 0) mask into it.
        let r = unsafe { libc::sched_getaffinity(0, bytes, words.as_mut_ptr().cast()) };
        if r == 0 {
            return Ok(cpus_in_mask(&words));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) && words.len() * WORD_BITS < MAX_CPUS {
            // The kernel's mask is larger than our buffer: retry with twice the room.
            let len = words.len() * 2;
            words.resize(len, 0);
            continue;
        }
        return Err(e);
    }
}

/// The CPU numbers set in a kernel CPU mask (bit `c % WORD_BITS` of word `c / WORD_BITS`), in
/// increasing order.
pub fn cpus_in_mask(words: &[Word]) -> Vec<usize> {
    let mut cpus = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            let bit = w.trailing_zeros() as usize;
            cpus.push(i * WORD_BITS + bit);
            w &= w - 1;
        }
    }
    cpus
}

/// The CPU shard `index` is pinned to: the `index`-th allowed CPU, modulo their count (`None`
/// when none is allowed, i.e. the set could not be read).
pub fn cpu_for_shard(allowed: &[usize], index: usize) -> Option<usize> {
    if allowed.is_empty() {
        None
    } else {
        Some(allowed[index % allowed.len()])
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the largest supported ({MAX_CPUS})"),
        ));
    }
    // Room for `cpu`, and at least the size of a glibc cpu_set_t (1024 CPUs).
    let mut words = vec![0 as Word; (cpu / WORD_BITS + 1).max(1024 / WORD_BITS)];
    words[cpu / WORD_BITS] |= 1 << (cpu % WORD_BITS);
    let bytes = std::mem::size_of_val(words.as_slice());
    // SAFETY: `words` is a live buffer of exactly `bytes` bytes holding a CPU mask; the kernel
    // only reads it, for the calling thread (pid 0).
    let r = unsafe { libc::sched_setaffinity(0, bytes, words.as_ptr().cast()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a failed pin was already reported: one warning line per process, not one per shard.
static PIN_WARNED: AtomicBool = AtomicBool::new(false);

/// Pins the calling shard thread to `cpu`; on failure logs one warning line for the whole process
/// (the shard then runs unpinned).
pub fn pin_shard_thread(shard: usize, cpu: usize) {
    if let Err(e) = pin_current_thread(cpu) {
        if !PIN_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "could not pin shard {shard} to CPU {cpu}: {e}; shards that fail to pin run \
                 unpinned (--no-pin silences this)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_to_cpus() {
        assert_eq!(cpus_in_mask(&[]), Vec::<usize>::new());
        assert_eq!(cpus_in_mask(&[0, 0]), Vec::<usize>::new());
        assert_eq!(cpus_in_mask(&[0b10]), vec![1]);
        assert_eq!(cpus_in_mask(&[0b1011]), vec![0, 1, 3]);
        // A CPU in the second word.
        assert_eq!(cpus_in_mask(&[1, 1 << 2]), vec![0, WORD_BITS + 2]);
        assert_eq!(cpus_in_mask(&[1 << (WORD_BITS - 1)]), vec![WORD_BITS - 1]);
    }

    #[test]
    fn shards_take_allowed_cpus_in_turn() {
        // `taskset -c 1`: every shard on CPU 1, never on CPU 0.
        assert_eq!(cpu_for_shard(&[1], 0), Some(1));
        assert_eq!(cpu_for_shard(&[1], 3), Some(1));
        // `taskset -c 2,5,7`: shards 0..4 on 2, 5, 7, 2.
        let allowed = cpus_in_mask(&[(1 << 2) | (1 << 5) | (1 << 7)]);
        let got: Vec<_> = (0..4).filter_map(|i| cpu_for_shard(&allowed, i)).collect();
        assert_eq!(got, vec![2, 5, 7, 2]);
        assert_eq!(cpu_for_shard(&[], 0), None);
    }

    #[test]
    fn this_thread_has_an_allowed_cpu_and_can_pin_to_it() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        // Pin a scratch thread (not the test harness's) to the last allowed CPU.
        let cpu = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
            // A CPU this machine does not have: refused, and the thread keeps its mask.
            assert!(pin_current_thread(MAX_CPUS - 1).is_err());
            assert!(pin_current_thread(MAX_CPUS).is_err());
            assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
        })
        .join()
        .unwrap();
    }
}
