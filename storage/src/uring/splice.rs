//! Sending blocks from the page cache to a socket without copying them into user space (the
//! seeder's `--send-path splice`).
//!
//! A batch goes out as linked chains on the shard's storage ring: for each block, a `Write` of
//! its 13-byte PIECE header into a pipe, then one `Splice` per file span from the file (a
//! registered slot, as reads use) into the pipe, and at the end of the chain one `Splice` of
//! everything in the pipe to the socket. `IOSQE_IO_LINK` runs them in order; io_uring runs
//! splices in its io-wq workers (never inline), one worker per chain. The pipe buffers hold
//! references to page-cache pages, and TCP attaches the same pages to its packets
//! (`MSG_SPLICE_PAGES`): neither copy of the copy path (page cache into a pool buffer, pool
//! buffer into the socket) is made. Over loopback the receiver still copies out of those
//! pages; on a NIC the pages go to the device by DMA.
//!
//! Bounds: a chain has at most [`MAX_CHAIN`] operations, never needs more pipe buffers than
//! the pipe has (both ends are `O_NONBLOCK`, so a wrong estimate fails with `EAGAIN` instead of
//! waiting forever), and pins at most a quarter of the file table's slots (so a block spread
//! over many small files never waits for a slot its own chain holds); a batch that needs more
//! is sent as several chains, one after the other. The header buffer belongs to the op table
//! while a chain is in flight, so a dropped future never frees memory the kernel reads.
//!
//! A failed chain leaves the stream broken in the middle of a message and the pipe possibly
//! holding bytes: the caller closes the connection and discards the pipe.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::{OpBufs, OpEntry, OpFuture, OpState, UringStore};
use crate::pool::{PoolBuf, PIECE_HEADER_LEN};
use crate::store::{StorageError, TorrentId};

/// The most operations in one linked chain.
pub const MAX_CHAIN: usize = 128;
const PAGE: u64 = 4096;
/// What a padding file's span sends: zeros, from memory that lives as long as the process.
static ZEROS: [u8; 16384] = [0; 16384];

/// A pipe for splicing, both ends non-blocking.
#[derive(Debug)]
pub struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Pipe buffers it holds (its size in pages).
    slots: usize,
}

impl SplicePipe {
    /// A pipe of at least `bytes` (rounded up to pages; `F_SETPIPE_SZ`, which an unprivileged
    /// process may raise up to `/proc/sys/fs/pipe-max-size`).
    pub fn new(bytes: usize) -> std::io::Result<SplicePipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a live array of two ints the kernel fills.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are new and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = (bytes as u64).next_multiple_of(PAGE).min(i32::MAX as u64) as libc::c_int;
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int and returns the size.
        let got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SplicePipe {
            read,
            write,
            slots: got as usize / PAGE as usize,
        })
    }

    /// Pipe buffers (pages) it holds.
    pub fn slots(&self) -> usize {
        self.slots
    }
}

/// One block to send: `len` bytes of piece `piece` from `begin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceBlock {
    pub piece: u32,
    pub begin: u32,
    pub len: u32,
}

/// Why a splice batch failed. Either way the stream is broken mid-message.
#[derive(Debug)]
pub enum SpliceError {
    /// Reading block data of `piece` failed (the file side).
    File { piece: u32, error: StorageError },
    /// The pipe or the socket failed (the peer went away, the socket was shut down).
    Socket(std::io::Error),
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceError::File { piece, error } => write!(f, "piece {piece}: {error}"),
            SpliceError::Socket(e) => write!(f, "splice to socket: {e}"),
        }
    }
}

/// What an operation of a chain is, to name its failure.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// A header or padding zeros written into the pipe.
    Pipe,
    /// A file span spliced into the pipe.
    File { piece: u32, file: usize },
    /// The pipe spliced to the socket.
    Socket,
}

struct ChainOp {
    /// Built when the op joins a chain (a file span's slot is acquired then).
    sqe: Option<squeue::Entry>,
    slot: Option<u32>,
    part: Part,
    want: u32,
    /// A file span's offset in its file.
    file_off: u64,
    /// Pipe buffers it may take.
    need: usize,
}

/// Pipe buffers a splice of `len` bytes at file offset `off` can take: the pages it touches.
fn pages(off: u64, len: u32) -> usize {
    let first = off / PAGE;
    let last = (off + u64::from(len)).div_ceil(PAGE);
    (last - first) as usize
}

impl UringStore {
    /// Sends `blocks` of torrent `t` to the connected socket `sock`, each after its PIECE
    /// header, through `pipe` (see the module docs). `hdrs` holds the headers, block `i`'s at
    /// `[13 i, 13 i + 13)` of its block region, written by the caller: at most
    /// `block_capacity / 13` blocks. Returns the bytes that reached the socket and the header
    /// buffer (after the kernel is done with it).
    pub async fn splice_blocks(
        &self,
        t: TorrentId,
        blocks: &[SpliceBlock],
        mut hdrs: PoolBuf,
        pipe: &SplicePipe,
        sock: RawFd,
    ) -> (Result<u64, SpliceError>, PoolBuf) {
        let fail = |piece, error| Err(SpliceError::File { piece, error });
        if blocks.len() * PIECE_HEADER_LEN > hdrs.block_capacity() {
            let e = StorageError::Config(format!(
                "{} headers do not fit a buffer of {}",
                blocks.len(),
                hdrs.block_capacity()
            ));
            return (fail(blocks[0].piece, e), hdrs);
        }
        let (layout, _) = match self.torrent(t) {
            Ok(x) => x,
            Err(e) => return (fail(blocks.first().map_or(0, |b| b.piece), e), hdrs),
        };
        let inner = &*self.inner;
        let pin_cap = (inner.files.borrow().capacity() / 4).max(1);
        let hdr_base = hdrs.block_ptr();
        let mut ops: Vec<ChainOp> = Vec::with_capacity(MAX_CHAIN);
        let mut pipe_used = 0usize;
        let mut pins = 0usize;
        let mut bytes = 0u32;
        let mut sent = 0u64;
        for (i, b) in blocks.iter().enumerate() {
            let spans = match layout.spans(b.piece, b.begin, b.len) {
                Ok(s) => s,
                Err(e) => {
                    self.unpin_all(&ops);
                    return (fail(b.piece, e.into()), hdrs);
                }
            };
            // The header, then each span.
            let hdr = ChainOp {
                sqe: Some(
                    opcode::Write::new(
                        types::Fd(pipe.write.as_raw_fd()),
                        // SAFETY: (i + 1) * 13 <= the block capacity (checked above): in bounds.
                        unsafe { hdr_base.add(i * PIECE_HEADER_LEN) },
                        PIECE_HEADER_LEN as u32,
                    )
                    .offset(u64::MAX)
                    .build(),
                ),
                slot: None,
                part: Part::Pipe,
                want: PIECE_HEADER_LEN as u32,
                file_off: 0,
                need: 1,
            };
            let mut parts = vec![hdr];
            for span in spans {
                let f = &layout.files()[span.file_index];
                if f.padding {
                    let mut left = span.len;
                    while left > 0 {
                        let n = left.min(ZEROS.len() as u32);
                        parts.push(ChainOp {
                            sqe: Some(
                                opcode::Write::new(
                                    types::Fd(pipe.write.as_raw_fd()),
                                    ZEROS.as_ptr(),
                                    n,
                                )
                                .offset(u64::MAX)
                                .build(),
                            ),
                            slot: None,
                            part: Part::Pipe,
                            want: n,
                            file_off: 0,
                            need: (n as usize).div_ceil(PAGE as usize) + 1,
                        });
                        left -= n;
                    }
                    continue;
                }
                parts.push(ChainOp {
                    sqe: None,
                    slot: None,
                    part: Part::File {
                        piece: b.piece,
                        file: span.file_index,
                    },
                    want: span.len,
                    file_off: span.file_offset,
                    need: pages(span.file_offset, span.len),
                });
            }
            for mut op in parts {
                let need = op.need;
                let is_file = matches!(op.part, Part::File { .. });
                if need > pipe.slots {
                    self.unpin_all(&ops);
                    let e = StorageError::Config(format!(
                        "a pipe of {} buffers cannot hold a splice of {need}",
                        pipe.slots
                    ));
                    return (fail(b.piece, e), hdrs);
                }
                // A slot that is not free right now is waited for only with no pins held: two
                // chains each waiting for a slot the other pins would wait forever.
                let mut slot = None;
                if let Part::File { piece, file } = op.part {
                    if pins < pin_cap {
                        match self.try_acquire(t, file) {
                            Some(Ok(s)) => slot = Some(s),
                            Some(Err(e)) => {
                                self.unpin_all(&ops);
                                return (fail(piece, e), hdrs);
                            }
                            None => {}
                        }
                    }
                }
                if !ops.is_empty()
                    && (ops.len() + 2 > MAX_CHAIN
                        || pipe_used + need > pipe.slots
                        || (is_file && slot.is_none()))
                {
                    if let Some(s) = slot.take() {
                        self.inner.files.borrow_mut().unpin(s);
                    }
                    let r;
                    (r, hdrs) = self
                        .run_chain(t, std::mem::take(&mut ops), bytes, hdrs, pipe, sock)
                        .await;
                    match r {
                        Ok(n) => sent += n,
                        Err(e) => return (Err(e), hdrs),
                    }
                    pipe_used = 0;
                    pins = 0;
                    bytes = 0;
                }
                if let Part::File { piece, file } = op.part {
                    let off = op.file_off;
                    let slot = match slot {
                        Some(s) => s,
                        None => match self.acquire(t, file).await {
                            Ok(s) => s,
                            Err(e) => {
                                self.unpin_all(&ops);
                                return (fail(piece, e), hdrs);
                            }
                        },
                    };
                    let fd_out = types::Fd(pipe.write.as_raw_fd());
                    let flags = libc::SPLICE_F_NONBLOCK;
                    op.sqe = Some(if inner.fixed_files {
                        opcode::Splice::new(types::Fixed(slot), off as i64, fd_out, -1, op.want)
                            .flags(flags)
                            .build()
                    } else {
                        let fd = inner.files.borrow().raw_fd(slot).unwrap_or(-1);
                        opcode::Splice::new(types::Fd(fd), off as i64, fd_out, -1, op.want)
                            .flags(flags)
                            .build()
                    });
                    op.slot = Some(slot);
                    pins += 1;
                }
                pipe_used += need;
                bytes += op.want;
                ops.push(op);
            }
        }
        if !ops.is_empty() {
            let r;
            (r, hdrs) = self.run_chain(t, ops, bytes, hdrs, pipe, sock).await;
            match r {
                Ok(n) => sent += n,
                Err(e) => return (Err(e), hdrs),
            }
        }
        let payload: u64 = blocks.iter().map(|b| u64::from(b.len)).sum();
        self.inner.bump(|s| {
            s.reads += blocks.len() as u64;
            s.read_bytes += payload;
        });
        (Ok(sent), hdrs)
    }

    /// Releases the slot pins of operations that were built but never pushed.
    fn unpin_all(&self, ops: &[ChainOp]) {
        let mut files = self.inner.files.borrow_mut();
        for s in ops.iter().filter_map(|o| o.slot) {
            files.unpin(s);
        }
    }

    /// Pushes `ops` and a final splice of `bytes` from the pipe to the socket as one linked
    /// chain (all SQEs at once, so no submission splits it) and waits for all of it.
    async fn run_chain(
        &self,
        t: TorrentId,
        mut ops: Vec<ChainOp>,
        bytes: u32,
        hdrs: PoolBuf,
        pipe: &SplicePipe,
        sock: RawFd,
    ) -> (Result<u64, SpliceError>, PoolBuf) {
        let inner = &*self.inner;
        ops.push(ChainOp {
            sqe: Some(
                opcode::Splice::new(
                    types::Fd(pipe.read.as_raw_fd()),
                    -1,
                    types::Fd(sock),
                    -1,
                    bytes,
                )
                .build(),
            ),
            slot: None,
            part: Part::Socket,
            want: bytes,
            file_off: 0,
            need: 0,
        });
        let n = ops.len();
        // Room for the whole chain in the submission queue.
        let mut tries = 0;
        loop {
            let free = {
                let mut ring = inner.ring.borrow_mut();
                let sq = ring.submission();
                sq.capacity() - sq.len()
            };
            if free >= n {
                break;
            }
            tries += 1;
            let cap = inner.ring.borrow_mut().submission().capacity();
            if n > cap || tries > 16 {
                self.unpin_all(&ops);
                let e = std::io::Error::other(format!(
                    "no room for a chain of {n} operations in a submission queue of {cap}"
                ));
                return (Err(SpliceError::Socket(e)), hdrs);
            }
            if let Err(e) = inner.submit_now() {
                if tries > 8 {
                    self.unpin_all(&ops);
                    return (Err(SpliceError::Socket(e)), hdrs);
                }
            }
            inner.reap();
        }
        // Every op gets its entry; the last one owns the header buffer, which every write of
        // the chain reads: the last completion comes after all of them.
        let mut hdrs = Some(hdrs);
        let mut keys = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(n);
        {
            let mut table = inner.ops.borrow_mut();
            let mut ring = inner.ring.borrow_mut();
            let mut sq = ring.submission();
            for (k, op) in ops.into_iter().enumerate() {
                let last = k + 1 == n;
                let key = table.insert(OpEntry {
                    state: OpState::Pending(None),
                    buf: if last {
                        hdrs.take().map(OpBufs::One)
                    } else {
                        Some(OpBufs::None)
                    },
                    slot: op.slot,
                });
                let Some(sqe) = op.sqe else {
                    unreachable!("an op joined a chain unbuilt")
                };
                let mut sqe = sqe.user_data(key as u64);
                if !last {
                    sqe = sqe.flags(squeue::Flags::IO_LINK);
                }
                // SAFETY: the header buffer (owned by the chain's last entry until its
                // completion), the static zeros, the registered files (pinned until their op
                // completes), the pipe and the socket (the caller's, borrowed for the whole
                // chain, which completes before they are released: see `splice_blocks`'s
                // contract) outlive every operation of the chain. Room was checked above.
                if unsafe { sq.push(&sqe) }.is_err() {
                    unreachable!("submission queue filled while its room was checked");
                }
                keys.push(key);
                parts.push((op.part, op.want));
            }
        }
        inner.bump(|s| s.sqes += n as u64);
        inner.kick();
        let mut futs: Vec<OpFuture<'_>> = keys
            .into_iter()
            .map(|key| OpFuture {
                inner,
                key,
                done: false,
            })
            .collect();
        let mut first_err: Option<SpliceError> = None;
        let mut back = None;
        let mut sent = 0u64;
        for (f, &(part, want)) in futs.iter_mut().zip(&parts) {
            let (res, b) = f.await;
            if let OpBufs::One(buf) = b {
                back = Some(buf);
            }
            if first_err.is_some() {
                continue;
            }
            if let Part::Socket = part {
                if res > 0 {
                    sent = res as u64;
                }
            }
            if res == want as i32 {
                continue;
            }
            if res == -libc::ECANCELED {
                continue;
            }
            let err = if res < 0 {
                std::io::Error::from_raw_os_error(-res)
            } else {
                std::io::Error::other(format!("short transfer: {res} of {want} bytes"))
            };
            first_err = Some(match part {
                Part::File { piece, file } => SpliceError::File {
                    piece,
                    error: StorageError::Io {
                        path: self.file_path(t, file),
                        source: err,
                    },
                },
                Part::Pipe | Part::Socket => SpliceError::Socket(err),
            });
        }
        drop(futs);
        let Some(buf) = back else {
            unreachable!("the chain's last op came back without the header buffer")
        };
        match first_err {
            Some(e) => (Err(e), buf),
            None => (Ok(sent), buf),
        }
    }
}
