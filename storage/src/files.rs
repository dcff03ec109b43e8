//! Files: safe opening under a save directory, and the LRU-capped table of registered slots.
//!
//! **Opening.** Every data file is opened with `openat2(root_fd, relative_path,
//! RESOLVE_BENEATH)`: a symlink or `..` that would leave the save directory fails with `EXDEV`
//! ([`StorageError::UnsafePath`]); a path that is not a regular file is
//! [`StorageError::NotRegularFile`]. A symlink
//! that stays inside the save directory is followed. This is the one rule for data files: the
//! start-up hash ([`crate::hash`]) opens through [`open_data_file`] too, so what is checked is
//! what is served. Opens use `O_NONBLOCK` (a FIFO planted where a file should be would otherwise
//! block the opening thread until a writer appears); the flag is cleared once `fstat` shows a
//! regular file, so io_uring reads of it behave as usual. Seeding opens read-only; only a
//! writable torrent opens read-write (creating the file and its parent directories, each
//! created relative to an already-verified parent directory descriptor).
//!
//! **The table.** A fixed number of slots (`cap`), each either free or holding one open file that
//! is installed at the same index in the ring's sparse registered-file table. An LRU maps
//! `(torrent, file)` to its slot. Each slot counts its operations *in flight*, from the moment an
//! SQE naming the slot is pushed (even before it is submitted) to the moment its completion is
//! reaped.
//!
//! Invariant (the reason this module exists): **a slot with an operation in flight is never
//! evicted**: its file is not closed and the slot is not re-registered, so an SQE naming slot `s`
//! always reaches the file that was in `s` when the SQE was built. When every slot is pinned, a
//! miss waits until an operation completes.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::task::Waker;

use lru::LruCache;

use crate::error::StorageError;

/// Identifies one file of one torrent in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub torrent: u32,
    pub file: u32,
}

/// Where a file goes when installed: the ring's registered-file table (or nothing, when the ring
/// could not register files and I/O uses plain descriptors).
pub trait SlotRegistrar {
    /// Installs `fd` at `slot`.
    fn install(&self, slot: u32, fd: RawFd) -> std::io::Result<()>;
    /// Empties `slot`.
    fn remove(&self, slot: u32) -> std::io::Result<()>;
}

/// A registrar that registers nothing (unit tests; rings without registered files).
#[derive(Debug, Default)]
pub struct NoRegistrar;

impl SlotRegistrar for NoRegistrar {
    fn install(&self, _slot: u32, _fd: RawFd) -> std::io::Result<()> {
        Ok(())
    }
    fn remove(&self, _slot: u32) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Slot {
    key: Option<FileKey>,
    fd: Option<OwnedFd>,
    inflight: u32,
}

/// Counters of the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileTableStats {
    pub opens: u64,
    pub evictions: u64,
    /// Misses that found every slot pinned and had to wait.
    pub slot_waits: u64,
}

/// A multiplicative hasher for [`FileKey`] (two small integers): SipHash costs more than the
/// rest of a table hit.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

type KeyBuildHasher = std::hash::BuildHasherDefault<KeyHasher>;

/// The LRU-capped table of open files; see the module docs.
#[derive(Debug)]
pub struct FileTable {
    slots: Vec<Slot>,
    lru: LruCache<FileKey, u32, KeyBuildHasher>,
    free: Vec<u32>,
    waiters: VecDeque<Waker>,
    stats: FileTableStats,
}

/// Outcome of [`FileTable::reserve`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reserve {
    /// The file is in the table at this slot; it is pinned (one more operation in flight).
    Hit(u32),
    /// This slot is empty and reserved for the caller, who opens the file and calls
    /// [`FileTable::install`] or [`FileTable::unreserve`].
    Vacant(u32),
    /// Every slot has an operation in flight: wait (the waker is registered) and retry.
    Busy,
}

impl FileTable {
    /// A table of `cap` slots (at least 1).
    pub fn new(cap: usize) -> FileTable {
        let cap = cap.max(1);
        FileTable {
            slots: (0..cap).map(|_| Slot::default()).collect(),
            lru: LruCache::unbounded_with_hasher(KeyBuildHasher::default()),
            free: (0..cap as u32).rev().collect(),
            waiters: VecDeque::new(),
            stats: FileTableStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Files currently open (installed).
    pub fn open_files(&self) -> usize {
        self.lru.len()
    }

    pub fn stats(&self) -> FileTableStats {
        self.stats
    }

    /// Operations in flight on `slot`.
    pub fn inflight(&self, slot: u32) -> u32 {
        self.slots[slot as usize].inflight
    }

    /// The file in `slot`, if any.
    pub fn slot_key(&self, slot: u32) -> Option<FileKey> {
        self.slots[slot as usize].key
    }

    /// Raw descriptor of the file in `slot` (for rings without registered files).
    pub fn raw_fd(&self, slot: u32) -> Option<RawFd> {
        self.slots[slot as usize].fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Looks `key` up; on a hit pins its slot. On a miss reserves a free slot, or evicts the
    /// least recently used slot with nothing in flight (closing its file), or reports `Busy`
    /// after registering `waker` to be woken when an operation completes.
    pub fn reserve(
        &mut self,
        key: FileKey,
        registrar: &dyn SlotRegistrar,
        waker: Option<&Waker>,
    ) -> Reserve {
        if let Some(&slot) = self.lru.get(&key) {
            self.slots[slot as usize].inflight += 1;
            return Reserve::Hit(slot);
        }
        if let Some(slot) = self.free.pop() {
            return Reserve::Vacant(slot);
        }
        // Least recently used first.
        let victim = self
            .lru
            .iter()
            .rev()
            .find(|(_, &slot)| self.slots[slot as usize].inflight == 0)
            .map(|(k, &slot)| (*k, slot));
        match victim {
            Some((vkey, slot)) => {
                self.lru.pop(&vkey);
                let s = &mut self.slots[slot as usize];
                assert_eq!(s.inflight, 0, "evicting a slot with an operation in flight");
                s.key = None;
                // Unregister before closing; a failure to unregister leaves the kernel's
                // reference, which the next install at this slot replaces.
                if let Err(e) = registrar.remove(slot) {
                    tracing::warn!(slot, error = %e, "unregistering a file slot failed");
                }
                s.fd = None; // closes the descriptor
                self.stats.evictions += 1;
                Reserve::Vacant(slot)
            }
            None => {
                self.stats.slot_waits += 1;
                if let Some(w) = waker {
                    self.waiters.push_back(w.clone());
                }
                Reserve::Busy
            }
        }
    }

    /// Installs the opened file `fd` for `key` at the reserved `slot` and pins it.
    pub fn install(
        &mut self,
        key: FileKey,
        slot: u32,
        fd: OwnedFd,
        registrar: &dyn SlotRegistrar,
    ) -> std::io::Result<()> {
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.key.is_none() && s.fd.is_none() && s.inflight == 0);
        if let Err(e) = registrar.install(slot, fd.as_raw_fd()) {
            self.free.push(slot);
            self.wake_one();
            return Err(e);
        }
        s.key = Some(key);
        s.fd = Some(fd);
        s.inflight = 1;
        self.lru.put(key, slot);
        self.stats.opens += 1;
        Ok(())
    }

    /// Gives a reserved slot back (the open failed).
    pub fn unreserve(&mut self, slot: u32) {
        debug_assert!(self.slots[slot as usize].key.is_none());
        self.free.push(slot);
        self.wake_one();
    }

    /// Adds one more in-flight operation to a pinned slot (a resubmission after a short read).
    pub fn pin(&mut self, slot: u32) {
        self.slots[slot as usize].inflight += 1;
    }

    /// One operation on `slot` completed.
    pub fn unpin(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.inflight > 0);
        s.inflight = s.inflight.saturating_sub(1);
        if s.inflight == 0 {
            self.wake_one();
        }
    }

    /// Closes and forgets every file of `torrent` with nothing in flight (returns how many
    /// stayed because they are busy).
    pub fn close_torrent(&mut self, torrent: u32, registrar: &dyn SlotRegistrar) -> usize {
        let keys: Vec<(FileKey, u32)> = self
            .lru
            .iter()
            .filter(|(k, _)| k.torrent == torrent)
            .map(|(k, &s)| (*k, s))
            .collect();
        let mut busy = 0;
        for (k, slot) in keys {
            let s = &mut self.slots[slot as usize];
            if s.inflight > 0 {
                busy += 1;
                continue;
            }
            self.lru.pop(&k);
            s.key = None;
            let _ = registrar.remove(slot);
            s.fd = None;
            self.free.push(slot);
        }
        busy
    }

    fn wake_one(&mut self) {
        // Wake every waiter: each retries, and those that lose the race re-register. Waiters are
        // few (bounded by the pool), and a lost wake-up would stall a read forever.
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

/// How a data file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Seeding: `O_RDONLY`, the file must exist.
    ReadOnly,
    /// Downloading: `O_RDWR | O_CREAT`, parent directories created.
    ReadWrite,
}

fn cstring(p: &Path) -> Result<CString, StorageError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| StorageError::UnsafePath {
        path: p.to_path_buf(),
    })
}

/// Checks that `rel` is a plain relative path: no root, no `..`, no prefix, not empty.
pub fn check_relative(rel: &Path) -> bool {
    let mut any = false;
    for c in rel.components() {
        match c {
            Component::Normal(_) => any = true,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    any
}

/// Set once openat2 answered ENOSYS (a kernel before 5.6, or valgrind, which lacks it): from
/// then on every open walks its path with [`openat_nofollow`].
static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens `rel` beneath `dirfd` with `RESOLVE_BENEATH`, or, without openat2, one component at a
/// time following no symlink at all (stricter: a symlink inside the root is refused too).
fn openat2(dirfd: RawFd, rel: &CString, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_beneath(dirfd, rel, flags, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                tracing::warn!("openat2 is not available: paths are opened refusing every symlink");
            }
            r => return r,
        }
    }
    openat_nofollow(dirfd, rel, flags, mode)
}

/// The fallback of [`openat2`]: every directory of `rel` opened with `O_PATH | O_DIRECTORY |
/// O_NOFOLLOW` relative to the one before (a symlink there is `ENOTDIR`), the last component
/// with `O_NOFOLLOW` (`ELOOP` for a symlink); `..` and absolute paths are `EXDEV`, as
/// `RESOLVE_BENEATH` answers them.
fn openat_nofollow(dirfd: RawFd, rel: &CString, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let bytes = rel.as_bytes();
    if bytes.first() == Some(&b'/') {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    let parts: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.is_empty() || parts.iter().any(|p| *p == b"..") {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    let mut cur: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let f = if last {
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC
        } else {
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // A part of a CString holds no NUL.
        let c = CString::new(*part).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let at = cur.as_ref().map_or(dirfd, |d| d.as_raw_fd());
        let fd = loop {
            // SAFETY: `c` is NUL-terminated; openat returns a new descriptor or -1.
            let r = unsafe { libc::openat(at, c.as_ptr(), f, mode as libc::c_uint) };
            if r >= 0 {
                break r;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        };
        // SAFETY: openat returned a new descriptor that nothing else owns.
        cur = Some(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    cur.ok_or_else(|| std::io::Error::from_raw_os_error(libc::EXDEV))
}

fn openat2_beneath(dirfd: RawFd, rel: &CString, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: open_how is plain old data; zero is a valid value of every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH;
    loop {
        // SAFETY: `rel` is a NUL-terminated string and `how` a valid open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Opens the save directory of a torrent (`O_PATH | O_DIRECTORY`).
pub fn open_root(root: &Path) -> Result<OwnedFd, StorageError> {
    let c = cstring(root)?;
    // SAFETY: `c` is NUL-terminated; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(StorageError::from_io(
            root.to_path_buf(),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn classify(full: &Path, e: std::io::Error, mode: OpenMode) -> StorageError {
    match (e.raw_os_error(), mode) {
        (Some(libc::EACCES) | Some(libc::EPERM), OpenMode::ReadWrite) => StorageError::ReadOnly {
            path: full.to_path_buf(),
        },
        (Some(libc::ENOTDIR), _) => StorageError::FileMissing {
            path: full.to_path_buf(),
        },
        _ => StorageError::from_io(full.to_path_buf(), e),
    }
}

/// Opens data file `rel` beneath `root_fd` (whose path is `root`, for messages). Never follows
/// a symlink out of the root; refuses anything but a regular file.
pub fn open_data_file(
    root_fd: RawFd,
    root: &Path,
    rel: &Path,
    mode: OpenMode,
) -> Result<OwnedFd, StorageError> {
    let full = root.join(rel);
    if !check_relative(rel) {
        return Err(StorageError::UnsafePath { path: full });
    }
    let fd = match mode {
        OpenMode::ReadOnly => openat2(
            root_fd,
            &cstring(rel)?,
            libc::O_RDONLY | libc::O_NONBLOCK,
            0,
        )
        .map_err(|e| classify(&full, e, mode))?,
        OpenMode::ReadWrite => {
            let parent_fd = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => Some(make_dirs(root_fd, root, parent)?),
                None => None,
            };
            let dir = parent_fd.as_ref().map_or(root_fd, |f| f.as_raw_fd());
            let name = rel
                .file_name()
                .ok_or_else(|| StorageError::UnsafePath { path: full.clone() })?;
            openat2(
                dir,
                &cstring(Path::new(name))?,
                libc::O_RDWR | libc::O_CREAT | libc::O_NONBLOCK,
                0o644,
            )
            .map_err(|e| classify(&full, e, mode))?
        }
    };
    // Refuse directories, fifos, devices: only regular files hold torrent data.
    // SAFETY: fstat writes into the zeroed struct we pass; fd is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(StorageError::from_io(full, std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(StorageError::NotRegularFile { path: full });
    }
    // A regular file: back to blocking mode (io_uring would otherwise answer EAGAIN for reads
    // it could serve by waiting on the disk).
    // SAFETY: fcntl on a valid descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } != 0
    {
        return Err(StorageError::from_io(full, std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Creates the directories of `rel_dir` under `root_fd` one by one, each relative to the
/// previous (verified) directory, and returns a descriptor of the last one.
fn make_dirs(root_fd: RawFd, root: &Path, rel_dir: &Path) -> Result<OwnedFd, StorageError> {
    let mut cur: Option<OwnedFd> = None;
    let mut path = root.to_path_buf();
    for c in rel_dir.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        path.push(name);
        let dir = cur.as_ref().map_or(root_fd, |f| f.as_raw_fd());
        let cname = cstring(Path::new(name))?;
        // SAFETY: `cname` is NUL-terminated; mkdirat creates one entry in `dir`.
        let r = unsafe { libc::mkdirat(dir, cname.as_ptr(), 0o755) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(classify(&path, e, OpenMode::ReadWrite));
            }
        }
        let next = openat2(dir, &cname, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| classify(&path, e, OpenMode::ReadWrite))?;
        cur = Some(next);
    }
    cur.ok_or(StorageError::UnsafePath { path })
}

/// Current size of an open file.
pub fn file_size(fd: RawFd) -> std::io::Result<u64> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_size as u64)
}

/// The soft RLIMIT_NOFILE of this process.
pub fn rlimit_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Returns the path used in error messages for file `rel` of a torrent saved at `root`.
pub fn display_path(root: &Path, rel: &Path) -> PathBuf {
    root.join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn key(f: u32) -> FileKey {
        FileKey {
            torrent: 0,
            file: f,
        }
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn without_openat2_paths_are_walked_refusing_every_symlink() {
        let base = std::env::temp_dir().join(format!("ubt-nofollow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f.bin"), b"inside").unwrap();
        std::fs::write(base.join("secret"), b"outside").unwrap();
        symlink(base.join("secret"), root.join("a/leak")).unwrap();
        symlink(&base, root.join("up")).unwrap();
        let rfd = open_root(&root).unwrap();
        let c = |p: &str| CString::new(p).unwrap();
        let open = |p: &str| openat_nofollow(rfd.as_raw_fd(), &c(p), libc::O_RDONLY, 0);
        let fd = open("./a//b/f.bin").unwrap();
        let mut f = std::fs::File::from(fd);
        let mut got = String::new();
        std::io::Read::read_to_string(&mut f, &mut got).unwrap();
        assert_eq!(got, "inside");
        assert_eq!(
            open("a/leak").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        assert_eq!(
            open("up/secret").unwrap_err().raw_os_error(),
            Some(libc::ENOTDIR)
        );
        assert_eq!(
            open("a/../../secret").unwrap_err().raw_os_error(),
            Some(libc::EXDEV)
        );
        assert_eq!(
            open("/etc/passwd").unwrap_err().raw_os_error(),
            Some(libc::EXDEV)
        );
        assert_eq!(
            open("a/missing").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        // Directories along the way, as make_dirs opens them.
        assert!(openat_nofollow(
            rfd.as_raw_fd(),
            &c("a"),
            libc::O_PATH | libc::O_DIRECTORY,
            0
        )
        .is_ok());
        assert!(openat_nofollow(
            rfd.as_raw_fd(),
            &c("up"),
            libc::O_PATH | libc::O_DIRECTORY,
            0
        )
        .is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn lru_evicts_least_recent_idle_slot_only() {
        let r = NoRegistrar;
        let mut t = FileTable::new(2);
        let Reserve::Vacant(s0) = t.reserve(key(0), &r, None) else {
            panic!()
        };
        t.install(key(0), s0, devnull(), &r).unwrap();
        let Reserve::Vacant(s1) = t.reserve(key(1), &r, None) else {
            panic!()
        };
        t.install(key(1), s1, devnull(), &r).unwrap();
        // Both pinned: a third file must wait.
        assert_eq!(t.reserve(key(2), &r, None), Reserve::Busy);
        assert_eq!(t.stats().slot_waits, 1);
        // Unpin file 0 only: it is the victim even though file 1 is older in other terms.
        t.unpin(s0);
        assert_eq!(t.reserve(key(2), &r, None), Reserve::Vacant(s0));
        assert_eq!(t.slot_key(s0), None);
        assert_eq!(t.inflight(s1), 1, "busy slot untouched");
        assert_eq!(t.slot_key(s1), Some(key(1)));
        t.install(key(2), s0, devnull(), &r).unwrap();
        assert_eq!(t.open_files(), 2);
        assert_eq!(t.stats().evictions, 1);
        // A hit pins again.
        t.unpin(s1);
        assert_eq!(t.reserve(key(1), &r, None), Reserve::Hit(s1));
        assert_eq!(t.inflight(s1), 1);
    }

    #[test]
    fn lru_order_is_respected() {
        let r = NoRegistrar;
        let mut t = FileTable::new(3);
        for f in 0..3 {
            let Reserve::Vacant(s) = t.reserve(key(f), &r, None) else {
                panic!()
            };
            t.install(key(f), s, devnull(), &r).unwrap();
            t.unpin(s);
        }
        // Touch 0: now 1 is the least recently used.
        let Reserve::Hit(s) = t.reserve(key(0), &r, None) else {
            panic!()
        };
        t.unpin(s);
        let Reserve::Vacant(v) = t.reserve(key(9), &r, None) else {
            panic!()
        };
        assert!(t.slot_key(v).is_none());
        assert!(t.lru.peek(&key(1)).is_none());
        assert!(t.lru.peek(&key(0)).is_some());
        assert!(t.lru.peek(&key(2)).is_some());
    }

    #[test]
    fn open_refuses_escapes() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::write(root.path().join("ok"), b"y").unwrap();
        symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
        symlink(outside.path(), root.path().join("dirlink")).unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        let rfd = open_root(root.path()).unwrap();
        let rf = rfd.as_raw_fd();
        let p = root.path();
        assert!(open_data_file(rf, p, Path::new("ok"), OpenMode::ReadOnly).is_ok());
        for bad in ["link", "../x", "/etc/passwd", ""] {
            let e = open_data_file(rf, p, Path::new(bad), OpenMode::ReadOnly).unwrap_err();
            assert!(matches!(e, StorageError::UnsafePath { .. }), "{bad}: {e:?}");
        }
        let e = open_data_file(rf, p, Path::new("d"), OpenMode::ReadOnly).unwrap_err();
        assert!(matches!(e, StorageError::NotRegularFile { .. }), "{e:?}");
        // A symlink that stays inside the save directory is followed (the hash check follows
        // the same rule), and the file opens in blocking mode.
        symlink("ok", root.path().join("inside")).unwrap();
        let fd = open_data_file(rf, p, Path::new("inside"), OpenMode::ReadOnly).unwrap();
        // SAFETY: F_GETFL on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        // A FIFO is refused at once, not waited on.
        let fifo = std::ffi::CString::new(root.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = open_data_file(rf, p, Path::new("fifo"), OpenMode::ReadOnly).unwrap_err();
        assert!(matches!(e, StorageError::NotRegularFile { .. }), "{e:?}");
        let e = open_data_file(rf, p, Path::new("dirlink/new"), OpenMode::ReadWrite).unwrap_err();
        assert!(matches!(e, StorageError::UnsafePath { .. }), "{e:?}");
        assert!(!outside.path().join("new").exists());
        let e = open_data_file(rf, p, Path::new("missing"), OpenMode::ReadOnly).unwrap_err();
        assert!(matches!(e, StorageError::FileMissing { .. }), "{e:?}");
        // Writable: creates parents.
        let f = open_data_file(rf, p, Path::new("a/b/c.bin"), OpenMode::ReadWrite).unwrap();
        drop(f);
        assert!(p.join("a/b/c.bin").is_file());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Look a file up (pinning it), opening it on a miss.
        Use(u32),
        /// Complete one operation on the n-th pinned slot (if any).
        Done(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..12).prop_map(Op::Use),
            2 => (0usize..16).prop_map(Op::Done),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a model (a recency list and a pin count per file): the table never evicts
        /// or reuses a pinned slot, never holds more than `cap` files, reports `Busy` exactly
        /// when every slot is pinned, and evicts the least recently used idle file.
        #[test]
        fn table_matches_the_model(cap in 1usize..6, ops in prop::collection::vec(op(), 1..200)) {
            let r = NoRegistrar;
            let mut t = FileTable::new(cap);
            // Model: files in the table, most recent last, with their pins.
            let mut recency: Vec<u32> = Vec::new();
            let mut pins: std::collections::HashMap<u32, u32> = Default::default();
            let mut slot_of: std::collections::HashMap<u32, u32> = Default::default();
            let k = |f| FileKey { torrent: 1, file: f };
            for op in ops {
                match op {
                    Op::Use(f) => {
                        let got = t.reserve(k(f), &r, None);
                        if let Some(pos) = recency.iter().position(|&x| x == f) {
                            prop_assert_eq!(&got, &Reserve::Hit(slot_of[&f]));
                            recency.remove(pos);
                            recency.push(f);
                            *pins.entry(f).or_default() += 1;
                        } else if recency.len() < cap {
                            let Reserve::Vacant(s) = got else {
                                return Err(TestCaseError::fail(format!("want Vacant, got {got:?}")));
                            };
                            prop_assert!(slot_of.values().all(|&v| v != s), "slot {} in use", s);
                            t.install(k(f), s, std::fs::File::open("/dev/null").unwrap().into(), &r).unwrap();
                            recency.push(f);
                            pins.insert(f, 1);
                            slot_of.insert(f, s);
                        } else {
                            // Full: the least recently used idle file goes, or Busy.
                            let victim = recency.iter().copied().find(|x| pins[x] == 0);
                            match (victim, got) {
                                (Some(v), Reserve::Vacant(s)) => {
                                    prop_assert_eq!(s, slot_of[&v], "evicted the wrong file");
                                    recency.retain(|&x| x != v);
                                    pins.remove(&v);
                                    slot_of.remove(&v);
                                    t.install(k(f), s, std::fs::File::open("/dev/null").unwrap().into(), &r).unwrap();
                                    recency.push(f);
                                    pins.insert(f, 1);
                                    slot_of.insert(f, s);
                                }
                                (None, Reserve::Busy) => {}
                                (v, g) => return Err(TestCaseError::fail(format!("victim {v:?}, got {g:?}"))),
                            }
                        }
                    }
                    Op::Done(n) => {
                        let pinned: Vec<u32> = recency.iter().copied().filter(|x| pins[x] > 0).collect();
                        if !pinned.is_empty() {
                            let f = pinned[n % pinned.len()];
                            t.unpin(slot_of[&f]);
                            *pins.get_mut(&f).unwrap() -= 1;
                        }
                    }
                }
                // Invariants after every step.
                prop_assert!(t.open_files() <= cap);
                prop_assert_eq!(t.open_files(), recency.len());
                for (&f, &s) in &slot_of {
                    prop_assert_eq!(t.slot_key(s), Some(k(f)));
                    prop_assert_eq!(t.inflight(s), pins[&f]);
                }
            }
        }
    }
}

/// Before a download: creates the zero-length files of `layout` beneath `root` (no piece ever
/// writes them), and with `allocate` every data file at its full length (`fallocate` mode 0:
/// blocks allocated, existing data untouched), as a download would open them
/// ([`open_data_file`], read-write: never out of the save directory). Padding files are
/// skipped. Returns the bytes the files cover. A full disk fails here, before any
/// byte is fetched ([`StorageError::NoSpace`] through [`StorageError::from_io`]).
///
/// Why (measured, docs/benchmarks.md): on ext4 here, writing 1 GiB into a new sparse file cost
/// about 3 s of system CPU, into a preallocated one about 1 s.
pub fn prepare_files(
    root: &Path,
    layout: &crate::layout::Layout,
    allocate: bool,
) -> Result<u64, StorageError> {
    std::fs::create_dir_all(root).map_err(|e| StorageError::from_io(root.to_path_buf(), e))?;
    let root_fd = open_root(root)?;
    let mut total = 0u64;
    for f in layout.files() {
        if f.padding || (f.length > 0 && !allocate) {
            continue;
        }
        let fd = open_data_file(root_fd.as_raw_fd(), root, &f.path, OpenMode::ReadWrite)?;
        if f.length == 0 {
            continue;
        }
        let len = i64::try_from(f.length).map_err(|_| StorageError::UnsafePath {
            path: root.join(&f.path),
        })?;
        loop {
            // SAFETY: fallocate on a descriptor we own, with integer arguments only.
            let r = unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) };
            if r == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A file system without fallocate: the file stays sparse.
                Some(libc::EOPNOTSUPP) => break,
                _ => return Err(StorageError::from_io(root.join(&f.path), e)),
            }
        }
        total += f.length;
    }
    Ok(total)
}
