#!/usr/bin/python3
"""Drive rtorrent 0.9.8 headless (system.daemon) over XML-RPC on a local SCGI socket.

usage:
  rtorrent_client.py leech TORRENT --save DIR --peer IP:PORT [--peer ...] --bind 127.0.0.x
                     [--timeout S] [--workdir DIR]
  rtorrent_client.py seed TORRENT... --data DIR --listen 127.0.0.x:PORT [--timeout S]
                     [--workdir DIR] [--rate BYTES_PER_S]

leech: rtorrent downloads TORRENT into DIR from the given peers (d.add_peer), prints
`progress: <0..1> <bytes> <peers>` about once a second and `result: {json}`; exit 0 when
d.complete is 1, 1 on timeout or error.
seed: rtorrent checks and seeds DIR; prints `info_hash: <hex>` per torrent,
`listening: ip:port` and `pid: <rtorrent pid>` then serves until SIGTERM/SIGINT.
--rate caps rtorrent's whole upload (`throttle.global_up.max_rate.set`, bytes per second; it
applies to loopback peers too: rtorrent exempts none by default); read back over XML-RPC.
rtorrent has no DHT (dht.mode disable), no PEX (protocol.pex no), no UDP trackers,
no uTP, no UPnP/LSD; it binds to the given 127.0.0.x only.
Exit 3 when rtorrent is not installed.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import check_loopback, free_port, install_stop_handlers, log, parse_addr, stopping  # noqa: E402


class Scgi:
    """A tiny XML-RPC over SCGI transport to a unix socket."""

    def __init__(self, path, timeout=10.0):
        self.path = path
        self.timeout = timeout

    def call(self, method, *params):
        body = xmlrpc.client.dumps(tuple(params), method).encode()
        headers = [
            ("CONTENT_LENGTH", str(len(body))),
            ("SCGI", "1"),
            ("REQUEST_METHOD", "POST"),
            ("REQUEST_URI", "/RPC2"),
        ]
        hb = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in headers)
        req = str(len(hb)).encode() + b":" + hb + b"," + body
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
            s.sendall(req)
            chunks = []
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        finally:
            s.close()
        resp = b"".join(chunks)
        _, sep, xml = resp.partition(b"\r\n\r\n")
        if not sep:
            raise RuntimeError("bad SCGI response: %r" % resp[:200])
        result, _ = xmlrpc.client.loads(xml.decode())
        return result[0]


class Rtorrent:
    """One rtorrent process in a private work dir; killed by PID on close()."""

    def __init__(self, workdir, bind_ip, port, directory, up_rate=0):
        check_loopback(bind_ip)
        self.workdir = workdir
        self.sock = os.path.join(workdir, "rpc.sock")
        session = os.path.join(workdir, "session")
        os.makedirs(session, exist_ok=True)
        rc = os.path.join(workdir, "rtorrent.rc")
        lines = [
            "system.daemon.set = true",
            "network.scgi.open_local = %s" % self.sock,
            "session.path.set = %s" % session,
            "directory.default.set = %s" % directory,
            # loopback only, discovery off
            "dht.mode.set = disable",
            "protocol.pex.set = no",
            "trackers.use_udp.set = no",
            "network.bind_address.set = %s" % bind_ip,
            "network.local_address.set = %s" % bind_ip,
            "network.port_range.set = %d-%d" % (port, port),
            "network.port_random.set = no",
            "protocol.encryption.set = allow_incoming,try_outgoing,enable_retry",
            # do not throttle, let a seeder unchoke everyone in a test
            "throttle.global_down.max_rate.set = 0",
            "throttle.global_up.max_rate.set = %d" % up_rate,
            "throttle.max_uploads.set = 100",
            "throttle.max_uploads.global.set = 100",
            "throttle.min_peers.normal.set = 1",
            "throttle.max_peers.normal.set = 100",
            "throttle.min_peers.seed.set = 1",
            "throttle.max_peers.seed.set = 100",
            "pieces.hash.on_completion.set = no",
            "network.max_open_files.set = 256",
        ]
        with open(rc, "w") as f:
            f.write("\n".join(lines) + "\n")
        rt = shutil.which("rtorrent")
        if rt is None:
            log("error: rtorrent is not installed (Debian package rtorrent)")
            sys.exit(3)
        env = dict(os.environ)
        env["HOME"] = workdir  # never read the user's ~/.rtorrent.rc
        env.setdefault("TERM", "dumb")
        self.log = open(os.path.join(workdir, "rtorrent.log"), "wb")
        self.proc = subprocess.Popen(
            [rt, "-n", "-o", "import=%s" % rc],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        self.rpc = Scgi(self.sock)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                self.log.flush()
                with open(os.path.join(workdir, "rtorrent.log"), "rb") as f:
                    out = f.read().decode(errors="replace")
                raise RuntimeError("rtorrent exited with %s: %s" % (self.proc.returncode, out))
            try:
                if os.path.exists(self.sock):
                    self.rpc.call("system.client_version")
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("rtorrent's SCGI socket did not come up within 15 s")
            time.sleep(0.05)

    def load(self, torrent, directory):
        """Load and start a torrent whose data lives in (or goes to) directory/<name>."""
        path = with_tracker(torrent, self.workdir)
        self.rpc.call("load.start_verbose", "", path, "d.directory.set=%s" % directory)

    def hashes(self):
        return self.rpc.call("download_list", "")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.rpc.call("system.shutdown.normal")
            except Exception:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# rtorrent 0.9.8 refuses a torrent without trackers ("Could not find any trackers").
# Give such a torrent a loopback announce URL on a closed port (the announce fails at once;
# nothing leaves the machine). Only top-level keys change: the info bytes, hence the info
# hash, stay the same.
DUMMY_TRACKER = b"http://127.0.0.1:1/announce"


def with_tracker(path, workdir):
    data = open(path, "rb").read()
    top = _bdecode(data, 0)[0]
    if b"announce" in top or b"announce-list" in top:
        return os.path.abspath(path)
    if data[:1] != b"d":
        raise RuntimeError("%s: not a bencoded dictionary" % path)
    # "announce" sorts before every other key a torrent has, so the dict stays sorted
    patched = b"d8:announce%d:%s" % (len(DUMMY_TRACKER), DUMMY_TRACKER) + data[1:]
    out = os.path.join(workdir, "t%d-%s" % (len(os.listdir(workdir)), os.path.basename(path)))
    with open(out, "wb") as f:
        f.write(patched)
    return out


def torrent_name(path):
    # the top-level name from the .torrent (bencode parse of just the info.name)
    data = open(path, "rb").read()
    return _bdecode(data, 0)[0][b"info"][b"name"].decode()


def _bdecode(b, i):
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1 : j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while b[i : i + 1] != b"e":
            v, i = _bdecode(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while b[i : i + 1] != b"e":
            k, i = _bdecode(b, i)
            v, i = _bdecode(b, i)
            out[k] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1 : j + 1 + n], j + 1 + n


def wait_loaded(rt, n, timeout):
    deadline = time.monotonic() + timeout
    while True:
        hs = rt.hashes()
        if len(hs) >= n:
            return hs
        if time.monotonic() > deadline:
            raise RuntimeError("rtorrent did not load the torrent within %ss" % timeout)
        time.sleep(0.05)


def leech(args):
    peers = [parse_addr(p) for p in args.peer]
    t0 = time.monotonic()
    port = free_port(args.bind)
    save = os.path.abspath(args.save)
    os.makedirs(save, exist_ok=True)
    rt = Rtorrent(args.workdir, args.bind, port, save)
    try:
        name = torrent_name(args.torrent)
        rt.load(args.torrent, save)
        (h,) = wait_loaded(rt, 1, 15)
        deadline = t0 + args.timeout
        last_print = last_dial = 0.0
        first_byte = None
        size = rt.rpc.call("d.size_bytes", h)
        while True:
            now = time.monotonic()
            if stopping():
                return 1
            complete = rt.rpc.call("d.complete", h)
            done = rt.rpc.call("d.completed_bytes", h)
            npeers = rt.rpc.call("d.peers_connected", h)
            msg = rt.rpc.call("d.message", h)
            if first_byte is None and done > 0:
                first_byte = now
            if complete == 1:
                break
            if now > deadline:
                log(
                    "error: timeout after %.1fs: %d/%d bytes, %d peers, message %r"
                    % (now - t0, done, size, npeers, msg)
                )
                return 1
            # rtorrent waits before redialing a refused/closed IP: re-add the peer
            # every 2 s while we have no connection (bounded by the deadline).
            if npeers == 0 and now - last_dial > 2.0:
                for ip, p in peers:
                    try:
                        # 0.9.8 has no d.add_peer; the old name add_peer takes the hash as target
                        rt.rpc.call("add_peer", h, "%s:%d" % (ip, p))
                    except xmlrpc.client.Fault as e:
                        log("rtorrent: add_peer: %s" % e)
                last_dial = now
            if now - last_print >= 1.0:
                print("progress: %.4f %d %d" % (done / size if size else 1.0, done, npeers), flush=True)
                last_print = now
            time.sleep(0.1)
        end = time.monotonic()
        # close the files (flushes rtorrent's mmap'd writes) before the caller compares
        rt.rpc.call("d.close", h)
        res = {
            "name": name,
            "elapsed": end - t0,
            "first_byte": (first_byte - t0) if first_byte else None,
            "after_first_byte": (end - first_byte) if first_byte else None,
            "bytes": size,
        }
        print("progress: 1.0000 %d 0" % size, flush=True)
        print("result: " + json.dumps(res), flush=True)
        return 0
    finally:
        rt.close()


def seed(args):
    ip, port = parse_addr(args.listen)
    if port == 0:
        port = free_port(ip)
    data = os.path.abspath(args.data)
    rt = Rtorrent(args.workdir, ip, port, data, args.rate)
    try:
        if args.rate:
            got = rt.rpc.call("throttle.global_up.max_rate", "")
            if got != args.rate:
                log("error: rtorrent upload limit is %r, not %d" % (got, args.rate))
                return 1
            log("upload limit: %d bytes/s" % got)
        for t in args.torrents:
            rt.load(t, data)
        hs = wait_loaded(rt, len(args.torrents), 15)
        # wait for the start-up hash check of every torrent, then demand completeness
        deadline = time.monotonic() + args.check_timeout
        while True:
            st = [
                (rt.rpc.call("d.is_hash_checked", h), rt.rpc.call("d.hashing", h)) for h in hs
            ]
            if all(checked == 1 and hashing == 0 for checked, hashing in st):
                break
            if time.monotonic() > deadline:
                log("error: rtorrent check did not finish within %ss" % args.check_timeout)
                return 1
            if stopping():
                return 1
            time.sleep(0.1)
        bad = [h for h in hs if rt.rpc.call("d.complete", h) != 1]
        if bad:
            log("error: data incomplete for %s" % ", ".join(bad))
            return 1
        for h in hs:
            print("info_hash: %s" % h.lower(), flush=True)
        print("pid: %d" % rt.proc.pid, flush=True)
        print("listening: %s:%d" % (ip, port), flush=True)
        end = time.monotonic() + args.timeout
        while not stopping() and time.monotonic() < end:
            if rt.proc.poll() is not None:
                log("error: rtorrent exited with %s" % rt.proc.returncode)
                return 1
            time.sleep(0.2)
        up = sum(rt.rpc.call("d.up.total", h) for h in hs)
        log("uploaded: %d" % up)
        return 0
    finally:
        rt.close()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("leech")
    lp.add_argument("torrent")
    lp.add_argument("--save", required=True)
    lp.add_argument("--peer", action="append", required=True)
    lp.add_argument("--bind", default="127.0.0.2")
    lp.add_argument("--timeout", type=float, default=120.0)
    lp.add_argument("--workdir")
    sp = sub.add_parser("seed")
    sp.add_argument("torrents", nargs="+")
    sp.add_argument("--data", required=True)
    sp.add_argument("--listen", default="127.0.0.1:0")
    sp.add_argument("--timeout", type=float, default=3600.0)
    sp.add_argument("--check-timeout", type=float, default=600.0)
    sp.add_argument("--workdir")
    sp.add_argument("--rate", type=int, default=0, help="upload limit, bytes per second")
    args = ap.parse_args()
    install_stop_handlers()
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="rtorrent-")
        args.workdir = tmp
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    try:
        return leech(args) if args.cmd == "leech" else seed(args)
    except (RuntimeError, OSError, xmlrpc.client.Fault) as e:
        log("error: %s" % e)
        return 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
