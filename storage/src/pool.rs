//! The per-shard pool of fixed-size, page-aligned buffers.
//!
//! One allocation (the *arena*) is cut into `count` buffers of `stride` bytes, where
//! `stride = round_up(HEADROOM + block_size, page size)`. Every buffer starts on a page boundary,
//! so registering them with io_uring charges RLIMIT_MEMLOCK no extra page per buffer (measured
//! on this kernel: unaligned buffers are charged a page more each; `docs/architecture.md`). The pool never allocates after [`BufPool::new`]: taking a buffer when none is
//! free waits (backpressure) until another [`PoolBuf`] is dropped.
//!
//! Buffer shape (`HEADROOM` = 4096, one page):
//! ```text
//! [0..4083)        unused
//! [4083..4096)     room for the 13-byte PIECE header: len (u32 BE) = 9 + n, id 7,
//!                  piece (u32 BE), begin (u32 BE)
//! [4096..4096+n)   the block, page-aligned
//! ```
//! so the engine sends header and block with one write ([`PoolBuf::frame_piece`]).
//!
//! Why a whole page of headroom: the kernel copies a block from the page cache into the buffer,
//! and that copy is measurably slower when the destination is not aligned like the source. With
//! the block at offset 16, 16 KiB random reads through the storage ring ran at 83-87% of
//! tokio-uring `read_at`'s MB/s in five interleaved runs; at offset 64 or 4096 they ran at
//! 89-97% (`uring-bt bench disk`, see `docs/benchmarks.md`). A page-aligned block costs no
//! memory for 16 KiB blocks (16 + 16,384 bytes round up to five pages anyway) and keeps the
//! block in whole pages for registered-buffer (bvec) copies.
//!
//! [`PoolBuf`] implements tokio-uring's `IoBuf`/`IoBufMut` over the whole buffer
//! `[0..HEADROOM + block_size)`; its *initialised length* is `HEADROOM + block_len`. The arena is
//! zeroed at allocation, so every byte is always initialised memory; the length is a logical
//! marker only.
//!
//! Invariants:
//! - every buffer index is either in `free` or owned by exactly one live `PoolBuf`;
//! - the arena outlives every `PoolBuf` (each holds an `Rc<BufPool>`) and every ring that
//!   registered it (a `UringStore` holds the `Rc<BufPool>` and drops its ring first).

use std::alloc::Layout as AllocLayout;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut, Slice};

use crate::error::StorageError;

/// Bytes reserved before the block (one page, so the block is page-aligned): the 13-byte PIECE
/// header sits at `[HEADROOM - 13..HEADROOM)`. Code slices with this constant, never a literal.
pub const HEADROOM: usize = 4096;
/// Length of a PIECE message header: 4-byte length, 1-byte id, 4-byte index, 4-byte begin.
pub const PIECE_HEADER_LEN: usize = 13;
/// io_uring takes at most this many registered buffers per ring (more: EINVAL).
pub const MAX_REGISTERED_BUFFERS: usize = 16_384;
/// Largest block a pool buffer may hold (a sanity limit: 16 MiB).
pub const MAX_BLOCK_SIZE: usize = 16 << 20;

const PAGE: usize = 4096;

/// A per-shard pool of fixed-size, page-aligned buffers. `!Send`: one per shard thread,
/// shared as `Rc<BufPool>`.
pub struct BufPool {
    arena: NonNull<u8>,
    alloc: AllocLayout,
    stride: usize,
    block_size: usize,
    count: usize,
    free: RefCell<Vec<u32>>,
    waiters: RefCell<VecDeque<(u64, Waker)>>,
    next_ticket: Cell<u64>,
    registered: Cell<bool>,
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("count", &self.count)
            .field("block_size", &self.block_size)
            .field("stride", &self.stride)
            .field("available", &self.available())
            .field("registered", &self.registered.get())
            .finish()
    }
}

impl BufPool {
    /// Allocates `count` buffers able to hold a block of `block_size` bytes each (after
    /// [`HEADROOM`]), in one zeroed, page-aligned allocation.
    ///
    /// Errors: `count` is 0 or above [`MAX_REGISTERED_BUFFERS`], `block_size` is 0 or above
    /// [`MAX_BLOCK_SIZE`], or the allocation failed.
    pub fn new(count: usize, block_size: usize) -> Result<Rc<BufPool>, StorageError> {
        if count == 0 || count > MAX_REGISTERED_BUFFERS {
            return Err(StorageError::Config(format!(
                "buffer count {count} must be in 1..={MAX_REGISTERED_BUFFERS}"
            )));
        }
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(StorageError::Config(format!(
                "block size {block_size} must be in 1..={MAX_BLOCK_SIZE}"
            )));
        }
        let stride = (HEADROOM + block_size).div_ceil(PAGE) * PAGE;
        let total = stride
            .checked_mul(count)
            .ok_or_else(|| StorageError::Config("buffer pool size overflows".into()))?;
        let alloc = AllocLayout::from_size_align(total, PAGE)
            .map_err(|e| StorageError::Config(format!("buffer pool layout: {e}")))?;
        // SAFETY: `alloc` has a non-zero size (count >= 1, stride >= PAGE).
        let ptr = unsafe { std::alloc::alloc_zeroed(alloc) };
        let arena = NonNull::new(ptr).ok_or_else(|| {
            StorageError::Config(format!("cannot allocate a buffer pool of {total} bytes"))
        })?;
        // Hand out low indices first (LIFO free list: recently used buffers are cache-warm).
        let free: Vec<u32> = (0..count as u32).rev().collect();
        Ok(Rc::new(BufPool {
            arena,
            alloc,
            stride,
            block_size,
            count,
            free: RefCell::new(free),
            waiters: RefCell::new(VecDeque::new()),
            next_ticket: Cell::new(0),
            registered: Cell::new(false),
        }))
    }

    /// Number of buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Number of buffers free right now.
    pub fn available(&self) -> usize {
        self.free.borrow().len()
    }

    /// Largest block a buffer holds.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes between the starts of two consecutive buffers (a multiple of the page size).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Total bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.alloc.size()
    }

    /// Whether a ring registered the buffers (reads use `ReadFixed`) or not (plain `Read`).
    pub fn is_registered(&self) -> bool {
        self.registered.get()
    }

    pub(crate) fn set_registered(&self, yes: bool) {
        self.registered.set(yes);
    }

    /// One iovec per buffer, for `register_buffers`: buffer `i` is registered index `i`.
    pub fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.buf_ptr(i as u32).cast(),
                iov_len: self.stride,
            })
            .collect()
    }

    fn buf_ptr(&self, index: u32) -> *mut u8 {
        debug_assert!((index as usize) < self.count);
        // SAFETY: index < count, so the offset stays inside the arena allocation.
        unsafe { self.arena.as_ptr().add(index as usize * self.stride) }
    }

    /// Takes a free buffer, waiting (in FIFO order with other waiters) until one is returned.
    /// Never allocates. Cancel-safe: dropping the future gives up its place in the queue.
    pub fn take(self: &Rc<Self>) -> Take {
        Take {
            pool: Rc::clone(self),
            ticket: None,
        }
    }

    /// Takes a free buffer if one is free and nobody is waiting for one.
    pub fn try_take(self: &Rc<Self>) -> Option<PoolBuf> {
        if !self.waiters.borrow().is_empty() {
            return None;
        }
        self.pop()
    }

    fn pop(self: &Rc<Self>) -> Option<PoolBuf> {
        let index = self.free.borrow_mut().pop()?;
        Some(PoolBuf {
            pool: Rc::clone(self),
            index,
            block_len: 0,
        })
    }

    fn give_back(&self, index: u32) {
        self.free.borrow_mut().push(index);
        self.wake_front();
    }

    fn wake_front(&self) {
        if let Some((_, w)) = self.waiters.borrow().front() {
            w.wake_by_ref();
        }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout; no PoolBuf is alive (each holds
        // an Rc to the pool) and no ring holds the registration (the store drops it first).
        unsafe { std::alloc::dealloc(self.arena.as_ptr(), self.alloc) };
    }
}

/// Future of [`BufPool::take`].
pub struct Take {
    pool: Rc<BufPool>,
    ticket: Option<u64>,
}

impl Future for Take {
    type Output = PoolBuf;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoolBuf> {
        let this = self.get_mut();
        let pool = &this.pool;
        let first_in_line = {
            let w = pool.waiters.borrow();
            match this.ticket {
                None => w.is_empty(),
                Some(t) => w.front().map(|(id, _)| *id) == Some(t),
            }
        };
        if first_in_line {
            if let Some(buf) = pool.pop() {
                if let Some(t) = this.ticket.take() {
                    let mut w = pool.waiters.borrow_mut();
                    if w.front().map(|(id, _)| *id) == Some(t) {
                        w.pop_front();
                    }
                }
                // More free buffers and more waiters: pass the turn on.
                if pool.available() > 0 {
                    pool.wake_front();
                }
                return Poll::Ready(buf);
            }
        }
        let mut w = pool.waiters.borrow_mut();
        match this.ticket {
            Some(t) => {
                if let Some(entry) = w.iter_mut().find(|(id, _)| *id == t) {
                    if !entry.1.will_wake(cx.waker()) {
                        entry.1 = cx.waker().clone();
                    }
                }
            }
            None => {
                let t = pool.next_ticket.get();
                pool.next_ticket.set(t.wrapping_add(1));
                w.push_back((t, cx.waker().clone()));
                this.ticket = Some(t);
            }
        }
        Poll::Pending
    }
}

impl Drop for Take {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            let was_front = {
                let mut w = self.pool.waiters.borrow_mut();
                match w.iter().position(|(id, _)| *id == t) {
                    Some(pos) => {
                        w.remove(pos);
                        pos == 0
                    }
                    None => false,
                }
            };
            // We may have been woken for a buffer we will never take: pass the wake on.
            if was_front && self.pool.available() > 0 {
                self.pool.wake_front();
            }
        }
    }
}

/// One buffer of a [`BufPool`]; returns to the pool (waking a waiter) when dropped.
pub struct PoolBuf {
    pool: Rc<BufPool>,
    index: u32,
    block_len: u32,
}

impl fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuf")
            .field("index", &self.index)
            .field("block_len", &self.block_len)
            .finish()
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.index);
    }
}

impl PoolBuf {
    /// The registered buffer index (`buf_index` of `ReadFixed`/`WriteFixed`).
    pub fn buf_index(&self) -> u16 {
        // count <= MAX_REGISTERED_BUFFERS = 16,384, so the index fits.
        self.index as u16
    }

    /// The pool this buffer belongs to.
    pub fn pool(&self) -> &Rc<BufPool> {
        &self.pool
    }

    /// Largest block this buffer holds.
    pub fn block_capacity(&self) -> usize {
        self.pool.block_size
    }

    /// Current block length.
    pub fn block_len(&self) -> usize {
        self.block_len as usize
    }

    /// Sets the block length. Panics if `len` exceeds [`Self::block_capacity`] (a caller bug).
    pub fn set_block_len(&mut self, len: usize) {
        assert!(
            len <= self.pool.block_size,
            "block length {len} above buffer capacity {}",
            self.pool.block_size
        );
        self.block_len = len as u32;
    }

    /// Base pointer of the whole buffer (`[0..HEADROOM + block_capacity)`).
    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.pool.buf_ptr(self.index)
    }

    /// Pointer to the block region (offset [`HEADROOM`]).
    pub(crate) fn block_ptr(&self) -> *mut u8 {
        // SAFETY: HEADROOM < stride, so the pointer stays inside this buffer.
        unsafe { self.base_ptr().add(HEADROOM) }
    }

    fn whole(&self) -> &[u8] {
        // SAFETY: the buffer [base, base + HEADROOM + block_size) lies inside the zeroed arena,
        // is owned by this PoolBuf alone (invariant of the free list) and lives while the pool
        // lives (we hold an Rc to it).
        unsafe { std::slice::from_raw_parts(self.base_ptr(), HEADROOM + self.pool.block_size) }
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `whole`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.base_ptr(), HEADROOM + self.pool.block_size) }
    }

    /// The block: `[HEADROOM..HEADROOM + block_len)`.
    pub fn block(&self) -> &[u8] {
        &self.whole()[HEADROOM..HEADROOM + self.block_len as usize]
    }

    /// The block, mutable: `[HEADROOM..HEADROOM + block_len)`.
    pub fn block_mut(&mut self) -> &mut [u8] {
        let end = HEADROOM + self.block_len as usize;
        &mut self.whole_mut()[HEADROOM..end]
    }

    /// The whole block capacity, mutable, regardless of the current block length.
    pub fn block_capacity_mut(&mut self) -> &mut [u8] {
        &mut self.whole_mut()[HEADROOM..]
    }

    /// Copies `data` into the block and sets the block length. Panics if `data` is larger than
    /// the capacity (a caller bug).
    pub fn fill_block(&mut self, data: &[u8]) {
        self.set_block_len(data.len());
        self.block_mut().copy_from_slice(data);
    }

    /// Writes the PIECE header for block `(piece, begin)` of the current block length into
    /// `[HEADROOM - 13..HEADROOM)` and returns the slice `[HEADROOM - 13..HEADROOM + n)`: header
    /// and block, ready for one socket write. Get the buffer back with `slice.into_inner()` (or
    /// drop it: back to the pool).
    pub fn frame_piece(mut self, piece: u32, begin: u32) -> Slice<PoolBuf> {
        let n = self.block_len as usize;
        let start = HEADROOM - PIECE_HEADER_LEN;
        let h = &mut self.whole_mut()[start..HEADROOM];
        h[0..4].copy_from_slice(&(9 + n as u32).to_be_bytes());
        h[4] = 7;
        h[5..9].copy_from_slice(&piece.to_be_bytes());
        h[9..13].copy_from_slice(&begin.to_be_bytes());
        self.slice(start..HEADROOM + n)
    }

    /// The slice from the current block end to `HEADROOM + total`: where the rest of a block
    /// of `total` bytes goes when part of it already arrived (a short socket read). The block
    /// length grows as bytes arrive. Panics if `total` exceeds the capacity or is below the
    /// current block length (caller bugs).
    pub fn into_fill_slice(self, total: usize) -> Slice<PoolBuf> {
        assert!(total <= self.pool.block_size && total >= self.block_len as usize);
        let start = HEADROOM + self.block_len as usize;
        self.slice(start..HEADROOM + total)
    }

    /// The slice `[HEADROOM..HEADROOM + len)` to receive a block into (for example a PIECE
    /// payload read from a socket); the block length is reset to 0 and grows as bytes arrive.
    /// Panics if `len` exceeds the capacity (a caller bug).
    pub fn into_block_slice_mut(mut self, len: usize) -> Slice<PoolBuf> {
        assert!(len <= self.pool.block_size);
        self.block_len = 0;
        self.slice(HEADROOM..HEADROOM + len)
    }
}

// SAFETY: `stable_ptr` points into the arena, which does not move while the pool lives (the
// PoolBuf keeps it alive); the buffer is owned by this PoolBuf alone. `bytes_init` <=
// `bytes_total` because block_len <= block_size.
unsafe impl IoBuf for PoolBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.base_ptr()
    }

    fn bytes_init(&self) -> usize {
        HEADROOM + self.block_len as usize
    }

    fn bytes_total(&self) -> usize {
        HEADROOM + self.pool.block_size
    }
}

// SAFETY: as for IoBuf; the arena is zeroed at allocation so every byte is initialised memory,
// and `set_init` only moves the logical length within `bytes_total`.
unsafe impl IoBufMut for PoolBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.base_ptr()
    }

    unsafe fn set_init(&mut self, pos: usize) {
        let pos = pos.min(HEADROOM + self.pool.block_size);
        if pos > HEADROOM + self.block_len as usize {
            self.block_len = (pos - HEADROOM) as u32;
        }
    }
}

/// Bytes of RLIMIT_MEMLOCK kept for the rings themselves (charged on this kernel: ~32 KiB for
/// 256 entries, ~400 KiB for 4,096) when sizing a pool.
pub const RING_MEMLOCK_RESERVE: u64 = 512 << 10;

/// How many buffers of `block_size` a shard's pool may have: the `requested` count capped at
/// [`MAX_REGISTERED_BUFFERS`] and, for a process charged for locked memory
/// (`unlimited_memlock == false`: no CAP_IPC_LOCK and a finite limit), at what
/// `memlock_per_shard` bytes of RLIMIT_MEMLOCK can register after [`RING_MEMLOCK_RESERVE`].
/// At least 1.
pub fn derive_pool_size(
    requested: usize,
    block_size: usize,
    memlock_per_shard: u64,
    unlimited_memlock: bool,
) -> usize {
    let mut n = requested.clamp(1, MAX_REGISTERED_BUFFERS);
    if !unlimited_memlock {
        let stride = (HEADROOM + block_size.max(1)).div_ceil(PAGE) as u64 * PAGE as u64;
        let budget = memlock_per_shard.saturating_sub(RING_MEMLOCK_RESERVE);
        n = n.min((budget / stride).max(1) as usize);
    }
    n
}

/// CAP_IPC_LOCK's bit in a capability set (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Whether this process's effective capabilities hold CAP_IPC_LOCK: the kernel charges an
/// io_uring's registered buffers to RLIMIT_MEMLOCK unless they do (`io_uring_create` tests
/// `capable(CAP_IPC_LOCK)`, not the user id: root in a container without that capability is
/// charged; a service user granted it with AmbientCapabilities= is not). False when the
/// capabilities cannot be read (the smaller, safe pool).
pub fn has_cap_ipc_lock() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget(2) reads the header and writes two `Data` words for version 3; both point
    // to memory we own, of the layout the kernel expects.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    rc == 0 && data[(CAP_IPC_LOCK / 32) as usize].effective & (1 << (CAP_IPC_LOCK % 32)) != 0
}

/// [`derive_pool_size`] for this process: raises RLIMIT_MEMLOCK to its hard limit first and
/// shares it between `shards`; a process with CAP_IPC_LOCK is not limited by it.
pub fn pool_size_for_this_process(requested: usize, block_size: usize, shards: usize) -> usize {
    let limit = raise_memlock_limit().unwrap_or(8 << 20);
    let unlimited = has_cap_ipc_lock() || limit == libc::RLIM_INFINITY;
    derive_pool_size(
        requested,
        block_size,
        limit / shards.max(1) as u64,
        unlimited,
    )
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit (registered buffers are charged to it for a
/// process without CAP_IPC_LOCK). Returns the new soft limit in bytes.
pub fn raise_memlock_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWaker(AtomicUsize);
    impl Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_take(t: &mut Take, w: &Arc<CountWaker>) -> Poll<PoolBuf> {
        let waker = Waker::from(Arc::clone(w));
        let mut cx = Context::from_waker(&waker);
        Pin::new(t).poll(&mut cx)
    }

    #[test]
    fn buffers_are_page_aligned_and_distinct() {
        let p = BufPool::new(4, 16384).unwrap();
        assert_eq!(p.stride() % PAGE, 0);
        assert!(p.stride() >= HEADROOM + 16384);
        let bufs: Vec<_> = (0..4).map(|_| p.try_take().unwrap()).collect();
        assert!(p.try_take().is_none());
        let mut idx: Vec<_> = bufs.iter().map(|b| b.buf_index()).collect();
        idx.sort();
        assert_eq!(idx, vec![0, 1, 2, 3]);
        for b in &bufs {
            assert_eq!(b.base_ptr() as usize % PAGE, 0);
            assert_eq!(b.block_ptr() as usize % PAGE, 0, "blocks are page-aligned");
        }
        // 16 KiB blocks fit five pages with the header page.
        assert_eq!(p.stride(), 5 * PAGE);
        drop(bufs);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn pool_size_follows_the_limits() {
        // CAP_IPC_LOCK (or no limit): only the kernel's 16,384 cap.
        assert_eq!(
            derive_pool_size(100_000, 16384, 0, true),
            MAX_REGISTERED_BUFFERS
        );
        assert_eq!(derive_pool_size(0, 16384, 0, true), 1);
        // Charged, 8 MiB memlock: (8 MiB - 512 KiB) / 20 KiB strides.
        assert_eq!(
            derive_pool_size(4096, 16384, 8 << 20, false),
            ((8 << 20) - (512 << 10)) / 20480
        );
        assert_eq!(derive_pool_size(10, 16384, 8 << 20, false), 10);
        assert_eq!(derive_pool_size(10, 16384, 0, false), 1);
        assert!(pool_size_for_this_process(64, 16384, 2) >= 1);
    }

    #[test]
    fn cap_ipc_lock_is_read_as_proc_reports_it() {
        // Two sources: capget(2) here, the kernel's own text in /proc/self/status.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        let eff = u64::from_str_radix(hex, 16).unwrap();
        assert_eq!(has_cap_ipc_lock(), eff & (1 << CAP_IPC_LOCK) != 0, "{hex}");
    }

    #[test]
    fn limits_are_checked() {
        assert!(BufPool::new(0, 16384).is_err());
        assert!(BufPool::new(MAX_REGISTERED_BUFFERS + 1, 16384).is_err());
        assert!(BufPool::new(1, 0).is_err());
        assert!(BufPool::new(1, MAX_BLOCK_SIZE + 1).is_err());
    }

    #[test]
    fn frame_piece_writes_header_before_block() {
        let p = BufPool::new(1, 16384).unwrap();
        let mut b = p.try_take().unwrap();
        b.fill_block(b"hello");
        let s = b.frame_piece(0x01020304, 0x4000);
        assert_eq!(
            &s[..],
            &[0, 0, 0, 14, 7, 1, 2, 3, 4, 0, 0, 0x40, 0, b'h', b'e', b'l', b'l', b'o']
        );
        let b = s.into_inner();
        assert_eq!(b.block(), b"hello");
        drop(b);
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn receive_slice_tracks_init() {
        let p = BufPool::new(1, 64).unwrap();
        let b = p.try_take().unwrap();
        let mut s = b.into_block_slice_mut(10);
        assert_eq!(s.bytes_total(), 10);
        // Emulate a socket read of 6 bytes into the slice.
        // SAFETY: test; 6 <= 10.
        unsafe {
            std::ptr::copy_nonoverlapping(
                b"abcdef".as_ptr(),
                tokio_uring::buf::BoundedBufMut::stable_mut_ptr(&mut s),
                6,
            );
            tokio_uring::buf::BoundedBufMut::set_init(&mut s, 6);
        }
        let b = s.into_inner();
        assert_eq!(b.block(), b"abcdef");
    }

    #[test]
    fn take_waits_in_fifo_order_and_never_allocates() {
        let p = BufPool::new(1, 64).unwrap();
        let held = p.try_take().unwrap();
        let w1 = Arc::new(CountWaker(AtomicUsize::new(0)));
        let w2 = Arc::new(CountWaker(AtomicUsize::new(0)));
        let mut t1 = p.take();
        let mut t2 = p.take();
        assert!(poll_take(&mut t1, &w1).is_pending());
        assert!(poll_take(&mut t2, &w2).is_pending());
        assert!(p.try_take().is_none(), "try_take must not jump the queue");
        drop(held);
        assert_eq!(w1.0.load(Ordering::SeqCst), 1);
        assert_eq!(w2.0.load(Ordering::SeqCst), 0);
        // The second waiter cannot take it even if polled.
        assert!(poll_take(&mut t2, &w2).is_pending());
        let b1 = match poll_take(&mut t1, &w1) {
            Poll::Ready(b) => b,
            Poll::Pending => panic!("first waiter must get the buffer"),
        };
        drop(b1);
        assert_eq!(w2.0.load(Ordering::SeqCst), 1);
        assert!(poll_take(&mut t2, &w2).is_ready());
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn dropped_waiter_passes_its_wake_on() {
        let p = BufPool::new(1, 64).unwrap();
        let held = p.try_take().unwrap();
        let w1 = Arc::new(CountWaker(AtomicUsize::new(0)));
        let w2 = Arc::new(CountWaker(AtomicUsize::new(0)));
        let mut t1 = p.take();
        let mut t2 = p.take();
        assert!(poll_take(&mut t1, &w1).is_pending());
        assert!(poll_take(&mut t2, &w2).is_pending());
        drop(held); // wakes t1
        drop(t1); // t1 gives up: t2 must be woken
        assert_eq!(w2.0.load(Ordering::SeqCst), 1);
        assert!(poll_take(&mut t2, &w2).is_ready());
    }
}
