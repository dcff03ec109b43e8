#!/usr/bin/python3
"""Soak test: hostile peers and honest real leechers against ONE `uring-bt seed`, bounded in time.

While the seeder serves a random file (on ext4 under /var/tmp, never tmpfs), this script
- makes --hostile N hostile TCP connections over --seconds S (at most --max-open, default 56,
  at once; 60% spread uniformly, 40% in bursts), each from its own 127.1.x.y and a few seconds
  of one of these behaviours, chosen and parameterised by a fixed seed (--seed):
    a  REQUEST+CANCEL flood of valid blocks after our UNCHOKE, never reading afterwards
    b  up to 1500 valid REQUESTs outstanding, then never reading (the seeder must drop the
       stalled peer by --write-timeout)
    c  INTERESTED / NOT INTERESTED flips
    d  slowloris: part of a handshake, then silence
    e  garbage after a good handshake: length prefix 0x7fffffff, a bad BITFIELD, HAVE out of
       range, a second handshake, a REQUEST of the wrong length, an oversized PIECE, noise
    f  connect and close at once (FIN or RST, with or without a handshake), several times
    g  requests beyond reqq, requests while choked, invalid requests (strikes)
  every hostile socket with SO_RCVBUF 4096;
- runs honest python3-libtorrent leechers (engine/tests/clients/lt_leech.py, plaintext): two
  at the start (127.0.0.2, 127.0.0.3), then a new one (127.0.0.4, .5, ...) each time one
  finishes, until the time is up; every download must exit 0 (libtorrent hash-checked every
  piece) and be byte-identical to the source;
- samples the seeder's VmRSS/VmHWM (/proc/PID/status) and open descriptors (/proc/PID/fd)
  every 0.5 s, from a baseline taken 1 s after it is ready until it is stopped.

The seeder runs as `seed T --data DIR --listen 127.0.0.1:0 --no-resume --status-interval 1
--write-timeout 5 --max-peers 128` (--write-timeout only when the binary has it). Whether the
seeder closed a hostile connection is seen without reading from it: poll(POLLRDHUP) and, for a
FIN stuck behind data we never read, the state of the seeder's end in /proc/net/tcp.

It fails (exit 1, one `FAIL:` line per reason) when an honest download failed or was corrupt,
fewer than 2 completed, the seeder's RSS went above baseline + 64 MiB (a generous bound: 512 KiB
per peer x --max-peers 128), the median RSS of the last 20% of the run (until the time is up)
exceeds that of the first 20% by more than 8 MiB (growth: a leak), it had more than 128 + 64
descriptors open, a stalled peer (b) was not dropped within --write-timeout + 6 s, the seeder
died, or it did not stop with exit 0 and its `stopped:` line on SIGTERM. Exit 3:
python3-libtorrent missing (a failure, never a skip); 2: bad usage.

Loopback only (127.0.0.0/8), every wait and loop bounded; every process started here is
killed by its PID at exit, and the temporary directory is removed.

usage: /usr/bin/python3 benches/soak.py [--binary target/release/uring-bt] [--seconds 60]
           [--hostile 200] [--max-open 56] [--size-mib 256] [--out samples.csv] [--seed N]
           [--leech-timeout 120] [--dir /var/tmp] [--keep]
(scripts/soak builds the release binary and runs this; the long variant:
 scripts/soak --seconds 600 --hostile 2000)
"""
import argparse
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = os.path.join(REPO, "engine", "tests", "clients")
PYTHON = "/usr/bin/python3"  # Debian's: python3-libtorrent is built for it
MIB = 1024 * 1024
KIB = 1024
PIECE_LEN = 262144
BLOCK = 16384
SEEDER_HOST = "127.0.0.1"
MAX_PEERS = 128
WRITE_TIMEOUT = 5
HANDSHAKE_TIMEOUT = 10  # the seeder's default --handshake-timeout
# Bounds the run is held to (printed in the summary).
PER_PEER_BOUND_KIB = 512  # generous per-peer memory bound: receive buffer, control queue,
#                           request queue, slab entry (docs/architecture.md, "Memory notes")
RSS_SLACK_KIB = PER_PEER_BOUND_KIB * MAX_PEERS  # = 64 MiB
GROWTH_LIMIT_KIB = 8 * 1024
FD_LIMIT = MAX_PEERS + 64
SAMPLE_PERIOD = 0.5

children = []  # every Popen we started (killed by PID at exit)
children_lock = threading.Lock()
stop_all = threading.Event()


def log(msg):
    sys.stderr.write("[soak] %s\n" % msg)
    sys.stderr.flush()


def check_loopback(ip):
    parts = ip.split(".")
    if len(parts) != 4 or parts[0] != "127":
        raise SystemExit("[soak] error: refusing non-loopback address %r" % ip)
    return ip


def spawn(cmd, **kw):
    # Same process group as this script: a guard that kills our group (the Rust test's) reaches
    # the seeder and the leechers too; we also kill each by its PID at exit.
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    with children_lock:
        children.append(p)
    return p


def kill_children():
    with children_lock:
        procs = list(children)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()  # by PID
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


def on_signal(sig, _frame):
    stop_all.set()
    raise SystemExit(128 + sig)


# ---------------------------------------------------------------------------------------------
# /proc sampling
# ---------------------------------------------------------------------------------------------


def proc_mem(pid):
    """(VmRSS, VmHWM) in KiB, or None when the process is gone."""
    rss = hwm = None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        return None
    if rss is None or hwm is None:
        return None  # a zombie has no memory lines
    return rss, hwm


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Sampler(threading.Thread):
    def __init__(self, pid, t0):
        super().__init__(daemon=True)
        self.pid = pid
        self.t0 = t0
        self.samples = []  # (t, rss_kib, hwm_kib, fds)
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.gone = False

    def sample(self):
        m = proc_mem(self.pid)
        n = count_fds(self.pid)
        if m is None or n is None:
            self.gone = True
            return None
        s = (time.monotonic() - self.t0, m[0], m[1], n)
        with self.lock:
            self.samples.append(s)
        return s

    def run(self):
        # the baseline (t = 0) was sampled by the caller
        nxt = self.t0 + SAMPLE_PERIOD
        while not self.halt.wait(max(0.0, nxt - time.monotonic())) and not stop_all.is_set():
            if self.sample() is None:
                return
            nxt += SAMPLE_PERIOD

    def snapshot(self):
        with self.lock:
            return list(self.samples)


# ---------------------------------------------------------------------------------------------
# The wire, spoken by hand
# ---------------------------------------------------------------------------------------------

PSTR = b"\x13BitTorrent protocol"


def reserved():
    r = bytearray(8)
    r[5] |= 0x10  # extension protocol (BEP 10)
    r[7] |= 0x04  # FAST (BEP 6)
    return bytes(r)


def msg(mid, payload=b""):
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def request(index, begin, length):
    return msg(6, struct.pack(">III", index, begin, length))


def cancel(index, begin, length):
    return msg(8, struct.pack(">III", index, begin, length))


INTERESTED = msg(2)
NOT_INTERESTED = msg(3)
UNCHOKE = b"\x00\x00\x00\x01\x01"  # what the seeder sends us


class Torrent:
    def __init__(self, info_hash, size):
        self.info_hash = info_hash
        self.size = size
        self.num_pieces = (size + PIECE_LEN - 1) // PIECE_LEN

    def piece_len(self, i):
        return min(PIECE_LEN, self.size - i * PIECE_LEN)

    def blocks(self, i):
        pl = self.piece_len(i)
        return [(i, b, min(BLOCK, pl - b)) for b in range(0, pl, BLOCK)]

    def random_block(self, rng):
        i = rng.randrange(self.num_pieces)
        return rng.choice(self.blocks(i))

    def run_of_blocks(self, rng, n):
        """n valid blocks in order from a random piece on (wrapping around the torrent)."""
        out = []
        i = rng.randrange(self.num_pieces)
        while len(out) < n:
            out.extend(self.blocks(i))
            i = (i + 1) % self.num_pieces
        return out[:n]


def addr_hex(ip, port):
    a = socket.inet_aton(ip)
    return "%08X:%04X" % (struct.unpack("<I", a)[0], port)


def seeder_side_state(seeder_port, our_ip, our_port):
    """TCP state of the SEEDER's socket of this connection (/proc/net/tcp, this network
    namespace), '01' = established; None when the socket is gone."""
    local = addr_hex(SEEDER_HOST, seeder_port)
    remote = addr_hex(our_ip, our_port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == local and parts[2] == remote:
                    return parts[3]
    except OSError:
        pass
    return None


class ProtoError(Exception):
    pass


class ConnectFailed(Exception):
    pass


class Peer:
    """One hostile connection: a socket, what the seeder sent us (parsed), and whether the
    seeder has closed the connection."""

    def __init__(self, ctx, ip, rng):
        self.ctx = ctx
        self.rng = rng
        self.ip = ip
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # before connect: the window we advertise is fixed at the handshake
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.s.bind((check_loopback(ip), 0))
            self.s.settimeout(5)
            self.s.connect((SEEDER_HOST, ctx.port))
            self.port = self.s.getsockname()[1]
        except OSError as e:
            self.s.close()
            raise ConnectFailed(str(e))
        self.buf = bytearray()
        self.got_hs = False
        self.unchoked = False
        self.ever_unchoked = False
        self.reqq = None
        self.eof = False
        self.seeder_closed = False
        self.rejects = 0
        self.pieces = 0
        self.rx = 0

    # -- receiving ---------------------------------------------------------------------------
    def _parse(self):
        if not self.got_hs:
            if len(self.buf) < 68:
                return
            if bytes(self.buf[:20]) != PSTR:
                raise ProtoError("seeder handshake starts with %r" % bytes(self.buf[:20]))
            del self.buf[:68]
            self.got_hs = True
        pos = 0
        n_buf = len(self.buf)
        while n_buf - pos >= 4:
            (n,) = struct.unpack_from(">I", self.buf, pos)
            if n > 1024 * 1024 + 13:
                raise ProtoError("seeder sent a message of length %d" % n)
            if n_buf - pos < 4 + n:
                break
            if n:
                mid = self.buf[pos + 4]
                if mid == 0:
                    self.unchoked = False
                elif mid == 1:
                    self.unchoked = True
                    self.ever_unchoked = True
                elif mid == 7:
                    self.pieces += 1
                elif mid == 16:
                    self.rejects += 1
                elif mid == 20 and n > 1 and self.buf[pos + 5] == 0:
                    m = re.search(rb"4:reqqi(\d+)e", bytes(self.buf[pos + 6 : pos + 4 + n]))
                    if m:
                        self.reqq = int(m.group(1))
            pos += 4 + n
        del self.buf[:pos]

    def recv_some(self, timeout):
        """One bounded read; False once the seeder closed the connection."""
        if self.eof:
            return False
        self.s.settimeout(max(0.001, timeout))
        try:
            data = self.s.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self.seeder_closed = True
            return False
        self.rx += len(data)
        self.buf += data
        self._parse()
        return True

    def read_until(self, pred, timeout):
        deadline = time.monotonic() + timeout
        while not pred() and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.recv_some(min(left, 0.25))
        return pred()

    def drain(self, max_reads=64):
        """Read what is there now, without waiting."""
        p = select.poll()
        p.register(self.s, select.POLLIN)
        for _ in range(max_reads):
            if self.eof or not p.poll(0):
                return
            self.recv_some(0.01)

    # -- sending -----------------------------------------------------------------------------
    def send_all(self, data, timeout):
        """Sends as much of data as the seeder takes within timeout; returns bytes sent.
        A reset or broken pipe marks the connection closed by the seeder."""
        deadline = time.monotonic() + timeout
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            left = deadline - time.monotonic()
            if left <= 0 or stop_all.is_set():
                break
            self.s.settimeout(min(left, 0.25))
            try:
                sent += self.s.send(view[sent:])
            except socket.timeout:
                continue  # backpressure: the seeder stopped reading us
            except OSError:
                self.seeder_closed = True
                break
        return sent

    def handshake(self):
        pid = b"-SK0001-" + bytes(self.rng.choice(b"0123456789abcdef") for _ in range(12))
        hs = PSTR + reserved() + self.ctx.torrent.info_hash + pid
        return self.send_all(hs, 5) == len(hs)

    def wait_unchoke(self, timeout):
        self.send_all(INTERESTED, 2)
        return self.read_until(lambda: self.unchoked, timeout)

    # -- has the seeder closed? --------------------------------------------------------------
    def closed_now(self):
        if self.seeder_closed:
            return True
        p = select.poll()
        p.register(self.s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        if p.poll(0):
            self.seeder_closed = True
            return True
        # A FIN queued behind data we never read does not reach us: ask the kernel for the
        # state of the seeder's end of this connection.
        st = seeder_side_state(self.ctx.port, self.ip, self.port)
        if st != "01":
            self.seeder_closed = True
        return self.seeder_closed

    def wait_closed(self, timeout):
        """True once the seeder closed the connection (polled, never reading), bounded."""
        deadline = time.monotonic() + timeout
        while not self.closed_now():
            if time.monotonic() >= deadline or stop_all.is_set():
                return False
            time.sleep(0.2)
        return True

    def close(self, rst=False):
        try:
            if rst:
                self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.s.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Hostile behaviours: each returns a dict (kind, variant, closed by the seeder, ...)
# ---------------------------------------------------------------------------------------------


def b_flood_cancel(ctx, ip, rng):
    """(a) REQUEST+CANCEL pairs of valid blocks as fast as the seeder takes them, after our
    UNCHOKE; never reading afterwards."""
    p = Peer(ctx, ip, rng)
    r = {"kind": "a"}
    try:
        if not p.handshake():
            return p, r
        r["unchoked"] = p.wait_unchoke(4.0)
        chunk = bytearray()
        for _ in range(512):
            blk = ctx.torrent.random_block(rng)
            chunk += request(*blk) + cancel(*blk)
        chunk = bytes(chunk)
        dur = rng.uniform(2.0, 7.0)
        deadline = time.monotonic() + dur
        sent = 0
        while time.monotonic() < deadline and not p.seeder_closed and not stop_all.is_set():
            sent += p.send_all(chunk, deadline - time.monotonic())
        r["sent"] = sent
        p.wait_closed(0.5)
    finally:
        p.close()
    return p, r


def b_stall(ctx, ip, rng):
    """(b) up to 1500 valid REQUESTs outstanding, then never reading: the seeder's write to us
    stalls, and it must drop us after --write-timeout."""
    p = Peer(ctx, ip, rng)
    r = {"kind": "b"}
    try:
        if not p.handshake():
            return p, r
        r["unchoked"] = p.wait_unchoke(4.0)
        n = rng.randint(1000, 1500)
        reqs = b"".join(request(*blk) for blk in ctx.torrent.run_of_blocks(rng, n))
        p.send_all(reqs, 5)
        t = time.monotonic()
        # no reading from here on
        closed = p.wait_closed(ctx.write_timeout + 6.0 if ctx.write_timeout else 8.0)
        r["close_after"] = time.monotonic() - t if closed else None
        r["stalled"] = r["unchoked"]
    finally:
        p.close()
    return p, r


def b_flip(ctx, ip, rng):
    """(c) INTERESTED / NOT INTERESTED flips, reading what comes."""
    p = Peer(ctx, ip, rng)
    r = {"kind": "c"}
    try:
        if not p.handshake():
            return p, r
        flips = rng.randint(50, 400)
        end = time.monotonic() + rng.uniform(1.0, 4.0)
        for k in range(flips):
            if time.monotonic() > end or p.seeder_closed or stop_all.is_set():
                break
            p.send_all(INTERESTED if k % 2 == 0 else NOT_INTERESTED, 1)
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 0.02))
            p.drain(4)
        r["unchoked"] = p.ever_unchoked
        p.drain()
        p.wait_closed(0.3)
    finally:
        p.close()
    return p, r


def b_slowloris(ctx, ip, rng):
    """(d) part of a handshake, then silence (the seeder's handshake timeout closes it)."""
    p = Peer(ctx, ip, rng)
    r = {"kind": "d"}
    try:
        hs = PSTR + reserved() + ctx.torrent.info_hash + b"-SK0001-slowlorisxxx"
        cut = rng.randint(1, 60)
        p.send_all(hs[:cut], 2)
        hold = HANDSHAKE_TIMEOUT + 3.0 if rng.random() < 0.5 else rng.uniform(2.0, 6.0)
        r["variant"] = "long" if hold > HANDSHAKE_TIMEOUT else "short"
        t = time.monotonic()
        closed = p.wait_closed(hold)
        r["close_after"] = time.monotonic() - t if closed else None
    finally:
        p.close()
    return p, r


def b_garbage(ctx, ip, rng):
    """(e) garbage after a good handshake: the seeder must disconnect."""
    p = Peer(ctx, ip, rng)
    tor = ctx.torrent
    variant = rng.choice(
        ["len7fffffff", "bitfield-len", "bitfield-spare", "have-range", "second-hs",
         "request-len", "piece-big", "noise"]
    )
    r = {"kind": "e", "variant": variant}
    try:
        if not p.handshake():
            return p, r
        p.read_until(lambda: p.got_hs, rng.uniform(0.0, 1.0))
        nbytes = (tor.num_pieces + 7) // 8
        if variant == "len7fffffff":
            bad = struct.pack(">I", 0x7FFFFFFF) + b"\x07" + os.urandom(64)
        elif variant == "bitfield-len":
            bad = msg(5, b"\x00" * (nbytes + rng.randint(1, 64)))
        elif variant == "bitfield-spare":
            spare = 8 * nbytes - tor.num_pieces
            last = (1 << spare) - 1 if spare else 0xFF
            bad = msg(5, b"\x00" * (nbytes - 1) + bytes([last])) if spare else \
                msg(5, b"\x00" * (nbytes + 1))
        elif variant == "have-range":
            bad = msg(4, struct.pack(">I", tor.num_pieces + rng.randint(0, 10**6)))
        elif variant == "second-hs":
            bad = PSTR + reserved() + tor.info_hash + b"-SK0001-secondhandsh"
        elif variant == "request-len":
            bad = struct.pack(">IB", 21, 6) + os.urandom(20)
        elif variant == "piece-big":
            bad = struct.pack(">IBII", 9 + BLOCK + 4096, 7, 0, 0) + b"\x00" * (BLOCK + 4096)
        else:
            bad = os.urandom(rng.randint(64, 4096))
        p.send_all(bad, 3)
        p.wait_closed(3.0)
    finally:
        p.close()
    return p, r


def b_quick(ctx, ip, rng, count):
    """(f) connect and close at once, `count` times: FIN or RST, with or without a handshake."""
    out = []
    for _ in range(count):
        if stop_all.is_set():
            break
        variant = rng.choice(["close", "rst", "hs-close", "hs-rst", "hs-req-rst"])
        r = {"kind": "f", "variant": variant}
        try:
            p = Peer(ctx, ip, rng)
        except ConnectFailed as e:
            r["connect_error"] = str(e)
            out.append((None, r))
            continue
        try:
            if variant.startswith("hs"):
                p.handshake()
            if variant == "hs-req-rst":
                p.send_all(INTERESTED + b"".join(
                    request(*ctx.torrent.random_block(rng)) for _ in range(50)), 1)
                time.sleep(rng.uniform(0, 0.05))
        finally:
            p.close(rst=variant.endswith("rst"))
        out.append((p, r))
        time.sleep(rng.uniform(0, 0.05))
    return out


def b_strikes(ctx, ip, rng):
    """(g) requests beyond reqq, requests while choked, invalid requests."""
    p = Peer(ctx, ip, rng)
    tor = ctx.torrent
    variant = rng.choice(["while-choked", "beyond-reqq", "invalid"])
    r = {"kind": "g", "variant": variant}
    try:
        if not p.handshake():
            return p, r
        p.read_until(lambda: p.reqq is not None, 1.0)
        reqq = p.reqq or 2000
        if variant == "while-choked":
            # never INTERESTED, so never unchoked: every request is refused, and past reqq of
            # them each is a strike
            reqs = b"".join(request(*tor.random_block(rng)) for _ in range(reqq + 200))
            view = memoryview(reqs)
            end = time.monotonic() + 5.0
            off = 0
            while off < len(reqs) and time.monotonic() < end and not p.seeder_closed:
                off += p.send_all(view[off : off + 4096], 0.2)
                p.drain(8)  # read the REJECTs, so that the seeder keeps reading us
            while not p.eof and time.monotonic() < end + 2.0:
                p.recv_some(0.25)
        elif variant == "beyond-reqq":
            r["unchoked"] = p.wait_unchoke(4.0)
            # the writer's batches in flight no longer count: well past reqq, so that 20+ strike
            reqs = b"".join(request(*blk) for blk in tor.run_of_blocks(rng, reqq + 400))
            p.send_all(reqs, 5)  # and never read: the queue is full, the rest are strikes
            p.wait_closed(3.0)
        else:
            bad = []
            for _ in range(40):
                i, b, n = tor.random_block(rng)
                bad.append(rng.choice([
                    request(i, b, 0),
                    request(i, b, 2 * BLOCK),
                    request(i, tor.piece_len(i), BLOCK),
                    request(tor.num_pieces + rng.randint(0, 1000), 0, BLOCK),
                    request(i, b + 1, n),
                ]))
            p.send_all(b"".join(bad), 3)
            end = time.monotonic() + 3.0
            while not p.eof and time.monotonic() < end:
                p.recv_some(0.25)
        p.wait_closed(0.3)
    finally:
        p.close()
    return p, r


KINDS = [("a", 20), ("b", 12), ("c", 10), ("d", 10), ("e", 20), ("f", 10), ("g", 18)]
RUNNERS = {"a": b_flood_cancel, "b": b_stall, "c": b_flip, "d": b_slowloris,
           "e": b_garbage, "g": b_strikes}
DESCRIBE = {
    "a": "REQUEST+CANCEL flood, not reading",
    "b": "1000-1500 requests, not reading",
    "c": "INTERESTED/NOT INTERESTED flips",
    "d": "slowloris (partial handshake)",
    "e": "garbage after handshake",
    "f": "connect+close at once",
    "g": "strikes (reqq, choked, invalid)",
}


class Hostile:
    """A schedule of hostile sessions (fixed seed), run by at most max_open worker threads."""

    def __init__(self, ctx, total, seconds, max_open, seed):
        self.ctx = ctx
        rng = random.Random(seed)
        names = [k for k, _ in KINDS]
        weights = [w for _, w in KINDS]
        self.items = []  # (start offset, kind, count, seed)
        left = total
        while left > 0:
            kind = rng.choices(names, weights)[0]
            count = min(left, rng.randint(4, 12)) if kind == "f" else 1
            left -= count
            self.items.append([0.0, kind, count, rng.getrandbits(48)])
        # Starts spread over the whole run (its last 20% too: that is where growth shows; the
        # sessions still open at the end finish within ~12 s): 60% uniformly, 40% in bursts of
        # up to max_open - 8 within a second, which bring the open count near the cap.
        span = max(1.0, seconds - 8.0)
        n_burst = int(len(self.items) * 0.4)
        size = max(1, max_open - 8)
        starts = []
        for b in range(0, n_burst, size):
            at = rng.uniform(0.0, max(0.0, span - 1.0))
            starts += [at + rng.uniform(0.0, 1.0) for _ in range(min(size, n_burst - b))]
        starts += [rng.uniform(0.0, span) for _ in range(len(self.items) - len(starts))]
        starts.sort()
        for it, s in zip(self.items, starts):
            it[0] = s
        self.next = 0
        self.lock = threading.Lock()
        self.results = []
        self.errors = []
        self.open_now = 0
        self.open_max = 0
        self.threads = [threading.Thread(target=self.worker, args=(w,), daemon=True)
                        for w in range(min(max_open, len(self.items)))]

    def start(self, t0):
        self.t0 = t0
        for t in self.threads:
            t.start()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return all(not t.is_alive() for t in self.threads)

    def worker(self, w):
        while not stop_all.is_set():
            with self.lock:
                if self.next >= len(self.items):
                    return
                idx = self.next
                self.next += 1
                start, kind, count, seed = self.items[idx]
            delay = self.t0 + start - time.monotonic()
            if delay > 0 and stop_all.wait(delay):
                return
            ip = "127.1.%d.%d" % ((idx // 250) % 250, idx % 250 + 1)
            rng = random.Random(seed)
            with self.lock:
                self.open_now += 1
                self.open_max = max(self.open_max, self.open_now)
            try:
                if kind == "f":
                    out = b_quick(self.ctx, ip, rng, count)
                else:
                    out = [RUNNERS[kind](self.ctx, ip, rng)]
            except ConnectFailed as e:
                out = [(None, {"kind": kind, "connect_error": str(e)})]
            except OSError as e:  # a socket error we did not expect (reported, not a failure)
                out = [(None, {"kind": kind, "os_error": str(e)})]
            except ProtoError as e:
                out = [(None, {"kind": kind, "proto_error": str(e)})]
            except Exception as e:  # a bug here must not hang the run: reported, then fails
                with self.lock:
                    self.errors.append("%s: %r" % (kind, e))
                out = []
            finally:
                with self.lock:
                    self.open_now -= 1
            with self.lock:
                for p, r in out:
                    if p is not None:
                        r["connected"] = True
                        r["closed_by_seeder"] = p.seeder_closed
                        r.setdefault("unchoked", p.ever_unchoked)
                    self.results.append(r)


# ---------------------------------------------------------------------------------------------
# Honest leechers
# ---------------------------------------------------------------------------------------------


def honest_ip(k):
    """127.0.0.2, .3 for the first two, then 127.0.0.4, .5, ... (127.0.1.x, ... past .254)."""
    n = k + 2
    if n <= 254:
        return "127.0.0.%d" % n
    n -= 255
    return "127.0.%d.%d" % (1 + n // 250, n % 250 + 2)



def same_bytes(a, b):
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x = fa.read(4 * MIB)
                y = fb.read(4 * MIB)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


# Leecher numbers of the "alone" measurement (their own 127.0.x.y addresses).
ALONE_K = 600


class Honest:
    def __init__(self, ctx, run_end, timeout, workdir):
        self.ctx = ctx
        self.run_end = run_end
        self.timeout = timeout
        self.workdir = workdir
        self.lock = threading.Lock()
        self.next_k = 2  # 0, 1 are the first two
        self.done = []  # dicts: ip, rc, ok, intact, mbps, secs, error
        self.threads = [threading.Thread(target=self.slot, args=(k,), daemon=True)
                        for k in (0, 1)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return all(not t.is_alive() for t in self.threads)

    def slot(self, k):
        first = True
        while not stop_all.is_set() and (first or time.monotonic() < self.run_end):
            if not first:
                with self.lock:
                    k = self.next_k
                    self.next_k += 1
            first = False
            self.one(k)

    def one(self, k):
        ip = honest_ip(k)
        save = os.path.join(self.workdir, "leech-%d" % k)
        os.makedirs(save)
        out_path = os.path.join(self.workdir, "leech-%d.out" % k)
        err_path = os.path.join(self.workdir, "leech-%d.err" % k)
        # -X faulthandler: a crash of the client leaves its stack on stderr
        cmd = [PYTHON, "-X", "faulthandler", os.path.join(CLIENTS, "lt_leech.py"),
               self.ctx.torrent_path,
               "--save", save, "--peer", "%s:%d" % (SEEDER_HOST, self.ctx.port),
               "--bind", check_loopback(ip), "--plaintext",
               "--timeout", str(self.timeout)]
        t = time.monotonic()
        with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
            p = spawn(cmd, stdout=fo, stderr=fe, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
            rc = None
            deadline = t + self.timeout + 30
            while rc is None and time.monotonic() < deadline and not stop_all.is_set():
                try:
                    rc = p.wait(0.25)
                except subprocess.TimeoutExpired:
                    pass
            if rc is None:
                p.kill()
                p.wait(10)
                rc = "killed"
        secs = time.monotonic() - t
        res = {"k": k, "ip": ip, "rc": rc, "secs": secs}
        if stop_all.is_set() and rc != 0:
            return
        elapsed = None
        with open(out_path, errors="replace") as f:
            for line in f:
                m = re.match(r"result: .*\"elapsed\": ([0-9.eE+-]+)", line)
                if m:
                    elapsed = float(m.group(1))
        got = os.path.join(save, self.ctx.name)
        res["intact"] = rc == 0 and same_bytes(self.ctx.payload, got)
        res["ok"] = rc == 0 and res["intact"]
        res["mbps"] = self.ctx.size / 1e6 / (elapsed or secs)
        if not res["ok"]:
            with open(err_path, errors="replace") as f:
                res["error"] = f.read()[-2000:]
        shutil.rmtree(save, ignore_errors=True)
        with self.lock:
            self.done.append(res)
        log("honest leecher %s: rc %s, %s, %.1f MB/s" % (
            ip, rc, "intact" if res["intact"] else "NOT INTACT", res["mbps"]))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


class Ctx:
    pass


def fs_type(path):
    r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return r.stdout.strip()


def write_payload(path, size, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n


def median_of(samples):
    return statistics.median(s[1] for s in samples) if samples else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "uring-bt"))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--hostile", type=int, default=200,
                    help="hostile connections made over the run")
    ap.add_argument("--max-open", type=int, default=56,
                    help="hostile connections open at once, at most")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--out", help="write the samples as CSV: t,rss_kib,hwm_kib,fds")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--leech-timeout", type=float, default=120.0,
                    help="bound on one honest download (seconds)")
    ap.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes (ext4)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if args.seconds < 10 or args.hostile < 0 or args.size_mib < 1 or not 1 <= args.max_open <= 60:
        log("error: need --seconds >= 10, --hostile >= 0, --size-mib >= 1, 1 <= --max-open <= 60")
        return 2
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        log("error: %s is not an executable (cargo build --release -p uring-bt)" % binary)
        return 2
    r = subprocess.run([PYTHON, "-c", "import libtorrent"], capture_output=True, text=True)
    if r.returncode != 0:
        log("error: the honest leechers need python3-libtorrent for %s (apt-get install "
            "python3-libtorrent): %s" % (PYTHON, (r.stderr.strip().splitlines() or [""])[-1]))
        return 3

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = tempfile.mkdtemp(prefix="uring-bt-soak-", dir=args.dir)
    try:
        return run(args, binary, workdir)
    finally:
        stop_all.set()
        kill_children()
        if args.keep:
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args, binary, workdir):
    fst = fs_type(workdir)
    if fst == "tmpfs":
        log("warning: %s is on tmpfs (io_uring punts tmpfs reads to workers): use ext4" % workdir)
    ctx = Ctx()
    ctx.name = "soak-%dmib.bin" % args.size_mib
    data = os.path.join(workdir, "data")
    os.makedirs(data)
    ctx.payload = os.path.join(data, ctx.name)
    ctx.size = args.size_mib * MIB + 777  # a short last piece
    t = time.monotonic()
    write_payload(ctx.payload, ctx.size, args.seed)
    log("payload %s (%d bytes, %s) written in %.1f s" % (ctx.payload, ctx.size, fst,
                                                         time.monotonic() - t))
    ctx.torrent_path = os.path.join(workdir, "soak.torrent")
    t = time.monotonic()
    r = subprocess.run([binary, "create", "--piece-length", str(PIECE_LEN), "-o", ctx.torrent_path,
                        ctx.payload], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        log("error: create failed (%d): %s" % (r.returncode, r.stderr.strip()))
        return 1
    log("torrent made in %.1f s" % (time.monotonic() - t))

    help_text = subprocess.run([binary, "seed", "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    cmd = [binary, "seed", ctx.torrent_path, "--data", data, "--listen", SEEDER_HOST + ":0",
           "--no-resume", "--status-interval", "1", "--max-peers", str(MAX_PEERS)]
    if "--write-timeout" in help_text:
        cmd += ["--write-timeout", str(WRITE_TIMEOUT)]
        ctx.write_timeout = WRITE_TIMEOUT
    else:
        ctx.write_timeout = None
        log("note: this binary has no --write-timeout: stalled peers are not held to one")
    err_path = os.path.join(workdir, "seeder.stderr")
    errf = open(err_path, "wb")
    t = time.monotonic()
    seeder = spawn(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
    out_lines = []

    def read_stdout():
        for line in seeder.stdout:
            out_lines.append(line.rstrip("\n"))

    threading.Thread(target=read_stdout, daemon=True).start()
    port = info_hash = None
    deadline = time.monotonic() + 300
    while (port is None or info_hash is None) and time.monotonic() < deadline:
        if seeder.poll() is not None:
            break
        for line in list(out_lines):
            if line.startswith("listening:"):
                ip, _, p = line.split()[1].rpartition(":")
                check_loopback(ip)
                port = int(p)
            elif line.startswith("info_hash:"):
                info_hash = bytes.fromhex(line.split()[1])
        time.sleep(0.05)
    if port is None or info_hash is None:
        log("error: the seeder did not become ready (exit %s); stderr:\n%s" % (
            seeder.poll(), open(err_path, errors="replace").read()[-4000:]))
        return 1
    log("seeder pid %d ready on %s:%d in %.1f s: %s" % (seeder.pid, SEEDER_HOST, port,
                                                       time.monotonic() - t, " ".join(cmd[1:])))
    ctx.port = port
    ctx.torrent = Torrent(info_hash, ctx.size)

    time.sleep(1.0)  # settle
    # The honest rate alone: two leechers at once (as during the run), no hostile peer yet.
    alone = Honest(ctx, 0.0, args.leech_timeout, workdir)
    alone_threads = [threading.Thread(target=alone.one, args=(k,), daemon=True)
                     for k in (ALONE_K, ALONE_K + 1)]
    for th in alone_threads:
        th.start()
    for th in alone_threads:
        th.join(args.leech_timeout + 40)
    alone_ok = [d for d in alone.done if d["ok"]]
    alone_rate = statistics.median([d["mbps"] for d in alone_ok]) if alone_ok else 0.0
    log("honest leechers alone: %s MB/s" % ", ".join("%.0f" % d["mbps"] for d in alone.done))
    if len(alone_ok) < 2:
        log("error: the honest leechers failed even without hostile peers")
        return 1
    t0 = time.monotonic()
    sampler = Sampler(seeder.pid, t0)
    base = sampler.sample()
    if base is None:
        log("error: the seeder is gone before the run")
        return 1
    _, base_rss, base_hwm, base_fds = base
    log("baseline: RSS %d KiB, HWM %d KiB, %d fds" % (base_rss, base_hwm, base_fds))
    sampler.start()

    run_end = t0 + args.seconds
    hostile = Hostile(ctx, args.hostile, args.seconds, args.max_open, args.seed)
    honest = Honest(ctx, run_end, args.leech_timeout, workdir)
    hostile.start(t0)
    honest.start()
    while time.monotonic() < run_end and seeder.poll() is None and not sampler.gone:
        time.sleep(0.25)
    if seeder.poll() is None:
        hostile_done = hostile.join(30)
        honest_done = honest.join(args.leech_timeout + 40)
    else:
        stop_all.set()
        hostile_done = hostile.join(10)
        honest_done = honest.join(20)
    t_work_end = time.monotonic() - t0
    died = seeder.poll() is not None

    # stop the seeder
    sampler.halt.set()
    sampler.join(5)
    samples = sampler.snapshot()
    seeder_rc = seeder.poll()
    if seeder_rc is None:
        seeder.send_signal(signal.SIGTERM)
        try:
            seeder_rc = seeder.wait(20)
        except subprocess.TimeoutExpired:
            seeder.kill()
            seeder.wait(10)
            seeder_rc = "no exit within 20 s (killed)"
    errf.close()
    with open(err_path, errors="replace") as f:
        err_text = f.read()
    stopped = [l for l in err_text.splitlines() if l.startswith("stopped:")]
    server = [l for l in err_text.splitlines() if l.startswith("server:")]

    if args.out:
        with open(args.out, "w") as f:
            f.write("t,rss_kib,hwm_kib,fds\n")
            for s in samples:
                f.write("%.2f,%d,%d,%d\n" % s)

    # ---- summary ------------------------------------------------------------------------
    failures = []
    n = len(samples)
    # first and last 20% of the run proper (until the time is up, hostile peers throughout);
    # the samples after it (the last downloads finishing) count for the maxima only
    in_run = [s for s in samples if s[0] <= args.seconds] or samples
    k = max(1, len(in_run) // 5)
    first, last = in_run[:k], in_run[-k:]
    max_rss = max([s[1] for s in samples] + [base_rss])
    end_hwm = samples[-1][2] if samples else base_hwm
    run_peak = max(max_rss, end_hwm if end_hwm > base_hwm else 0)
    med_first = median_of(first)
    med_last = median_of(last)
    max_fds = max([s[3] for s in samples] + [base_fds])

    res = hostile.results
    made = [r for r in res if r.get("connected")]
    closed = [r for r in made if r.get("closed_by_seeder")]
    conn_err = [r for r in res if "connect_error" in r]
    os_err = [r for r in res if "os_error" in r]
    proto_err = [r for r in res if "proto_error" in r]
    hd = sorted(honest.done, key=lambda d: d["k"])
    good = [d for d in hd if d["ok"]]
    bad = [d for d in hd if not d["ok"]]

    print("soak: %s, %.0f s, %d MiB torrent (%d pieces of 256 KiB), seed %d, work dir on %s" % (
        os.path.relpath(binary, REPO) if binary.startswith(REPO) else binary, args.seconds,
        args.size_mib, ctx.torrent.num_pieces, args.seed, fst))
    print("samples: %d every %.1f s over %.1f s (%d until the time was up)" % (
        n, SAMPLE_PERIOD, t_work_end, len(in_run)))
    print("rss: baseline %.1f MiB, max %.1f MiB (VmHWM %.1f MiB at the end, %.1f at baseline); "
          "bound baseline + %d MiB (%d KiB per peer x %d peers)" % (
              base_rss / 1024, run_peak / 1024, end_hwm / 1024, base_hwm / 1024,
              RSS_SLACK_KIB // 1024, PER_PEER_BOUND_KIB, MAX_PEERS))
    print("rss median: first 20%% %.1f MiB, last 20%% %.1f MiB (growth %+.1f MiB, bound %d MiB)" % (
        med_first / 1024, med_last / 1024, (med_last - med_first) / 1024,
        GROWTH_LIMIT_KIB // 1024))
    print("fds: baseline %d, max %d (bound %d)" % (base_fds, max_fds, FD_LIMIT))
    rates = [d["mbps"] for d in good]
    print("honest: %d downloads completed intact, %d failed; MB/s min %.0f, median %.0f, max %.0f" % (
        len(good), len(bad), min(rates or [0]), statistics.median(rates or [0]), max(rates or [0])))
    beside = statistics.median(rates or [0])
    print("honest alone (2 at once, no hostile peer): median %.0f MB/s; beside the hostile peers: "
          "median %.0f MB/s (%.2fx; bound: at least 0.5x)" % (alone_rate, beside,
                                                              beside / alone_rate))
    print("hostile: %d connections made (%d failed to connect, %d other socket errors, at most %d "
          "open at once), %d closed by the seeder" % (
              len(made), len(conn_err), len(os_err), hostile.open_max, len(closed)))
    for kind, _ in KINDS:
        rk = [r for r in made if r["kind"] == kind]
        if not rk:
            continue
        extra = ""
        if kind in "abg":
            extra += ", %d unchoked" % sum(1 for r in rk if r.get("unchoked"))
        if kind == "b":
            ca = [r["close_after"] for r in rk if r.get("close_after") is not None]
            if ca:
                extra += ", closed %.1f-%.1f s after the last request" % (min(ca), max(ca))
        if kind == "d":
            lg = [r for r in rk if r.get("variant") == "long"]
            extra += ", %d of %d held past the handshake timeout closed" % (
                sum(1 for r in lg if r.get("closed_by_seeder")), len(lg))
        if kind in "eg":
            vs = sorted(set(r["variant"] for r in rk))
            extra += " (%s)" % ", ".join("%s %d/%d" % (
                v, sum(1 for r in rk if r["variant"] == v and r.get("closed_by_seeder")),
                sum(1 for r in rk if r["variant"] == v)) for v in vs)
        print("  %s %-36s %4d, %4d closed by the seeder%s" % (
            kind, DESCRIBE[kind], len(rk), sum(1 for r in rk if r.get("closed_by_seeder")), extra))
    print("seeder: exit %s; %s" % (seeder_rc, "; ".join(server + stopped) or "no stopped: line"))

    if died:
        failures.append("the seeder died during the run (exit %s)" % seeder_rc)
    if hostile.errors:
        failures.append("hostile peer bugs: %s" % "; ".join(hostile.errors[:5]))
    if proto_err:
        failures.append("the seeder broke the protocol: %s" % proto_err[0]["proto_error"])
    if not hostile_done or not honest_done:
        failures.append("peers still running after their bounds")
    for d in bad:
        failures.append("honest download %s failed (rc %s, %s)" % (
            d["ip"], d["rc"], "intact" if d.get("intact") else "not intact"))
    if len(good) < 2:
        failures.append("only %d honest downloads completed (need 2)" % len(good))
    if beside < alone_rate / 2:
        failures.append("honest leechers beside the hostile peers ran at %.0f MB/s (median), "
                        "less than half of %.0f MB/s alone" % (beside, alone_rate))
    if run_peak > base_rss + RSS_SLACK_KIB:
        failures.append("max RSS %.1f MiB > baseline %.1f + %d MiB" % (
            run_peak / 1024, base_rss / 1024, RSS_SLACK_KIB // 1024))
    if med_last - med_first > GROWTH_LIMIT_KIB:
        failures.append("RSS grew %.1f MiB from the first to the last 20%% of the run (> %d MiB)" % (
            (med_last - med_first) / 1024, GROWTH_LIMIT_KIB // 1024))
    if max_fds > FD_LIMIT:
        failures.append("max fds %d > %d" % (max_fds, FD_LIMIT))
    stuck = [r for r in made if r["kind"] == "b" and r.get("stalled")
             and not r.get("closed_by_seeder")]
    if stuck:
        failures.append("%d of the stalled peers (b) not dropped within %s" % (
            len(stuck), "--write-timeout %d + 6 s" % ctx.write_timeout if ctx.write_timeout
            else "8 s (this binary has no --write-timeout)"))
    if seeder_rc != 0:
        failures.append("the seeder did not exit 0 on SIGTERM (%s)" % seeder_rc)
    if not stopped:
        failures.append("no `stopped:` line on the seeder's stderr")
    if failures:
        for d in bad:
            log("leecher %s stderr (tail):\n%s" % (d["ip"], d.get("error") or "(empty)"))
        log("seeder stderr (tail):\n%s" % err_text[-3000:])
        for f in failures:
            print("FAIL: " + f)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
