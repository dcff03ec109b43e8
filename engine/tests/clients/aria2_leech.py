#!/usr/bin/python3
"""aria2c 1.36 as a LEECHER that knows only a tracker: a .torrent with a loopback announce
URL, or a magnet link with tr= (aria2 then fetches the metadata with BEP 9).

usage: aria2_leech.py TORRENT|MAGNET --save DIR --bind 127.0.0.x [--timeout S]
                      [--tracker-interval S] [--workdir DIR]

aria2 cannot be told a peer's address: it finds peers only through the tracker (and takes
incoming connections). DHT (v4 and v6), LPD and PEX are off (aria2 has no uTP, no UPnP);
it listens and dials on the given 127.0.0.x (--interface) and announces every
--tracker-interval seconds (default 2: a seeder that announces after it is found quickly).
Progress is read over aria2's JSON-RPC (127.0.0.1, random secret). Prints `listening: IP:PORT`
(its peer port), `info_hash: HEX`, `progress: <0..1> <bytes> <peers>` about once a second,
then `result: {json}`. Exit 0 once aria2 reports the download complete (aria2 checks every
piece's SHA-1 as it arrives; --check-integrity also), 1 on timeout/error, 2 on a non-loopback
address or a UDP-only tracker list (aria2 1.36 announces over UDP only through its DHT,
which is off: "udp is not supported yet"), 3 when aria2c is missing.
"""
import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import check_loopback, free_port, install_stop_handlers, log, stopping  # noqa: E402
from trackcommon import Progress, check_target, torrent_info_hash, torrent_trackers  # noqa: E402


class Rpc:
    def __init__(self, port, secret):
        self.url = "http://127.0.0.1:%d/jsonrpc" % port
        self.secret = secret
        self.n = 0

    def call(self, method, *params):
        self.n += 1
        body = json.dumps(
            {"jsonrpc": "2.0", "id": str(self.n), "method": method,
             "params": ["token:" + self.secret] + list(params)}
        ).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            resp = json.loads(r.read().decode())
        if "error" in resp:
            raise RuntimeError("aria2 %s: %s" % (method, resp["error"]))
        return resp["result"]


KEYS = ["gid", "status", "completedLength", "totalLength", "connections", "numSeeders",
        "followedBy", "errorCode", "errorMessage", "infoHash", "verifiedLength",
        "verifyIntegrityPending"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target", help=".torrent file or magnet link")
    ap.add_argument("--save", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--tracker-interval", type=int, default=2)
    ap.add_argument("--workdir")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    install_stop_handlers()
    check_loopback(args.bind)
    kind, parsed = check_target(args.target)
    trackers = parsed["trackers"] if kind == "magnet" else torrent_trackers(parsed)
    if trackers and all(t.startswith("udp://") for t in trackers):
        # aria2 1.36 speaks UDP tracker only through its DHT socket: with DHT off every UDP
        # announce fails with "udp is not supported yet"
        log("error: aria2 has no UDP tracker support with DHT off; give it an http:// tracker")
        return 2
    exe = shutil.which("aria2c")
    if exe is None:
        log("error: aria2c is not installed (Debian package aria2)")
        return 3
    info_hash = parsed["info_hash"] if kind == "magnet" else torrent_info_hash(parsed)
    prog = Progress(args.quiet)
    save = os.path.abspath(args.save)
    os.makedirs(save, exist_ok=True)
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="aria2-leech-")
        args.workdir = tmp
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    port = free_port(args.bind)
    rpc_port = free_port("127.0.0.1")
    secret = secrets.token_hex(16)
    cmd = [
        exe,
        "--no-conf=true",
        "--dir=%s" % save,
        "--interface=%s" % args.bind,
        "--listen-port=%d" % port,
        "--disable-ipv6=true",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--seed-time=0",
        "--check-integrity=true",
        "--bt-tracker-interval=%d" % args.tracker_interval,
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-timeout=5",
        "--bt-stop-timeout=0",
        "--bt-save-metadata=false",
        "--follow-torrent=mem",
        "--file-allocation=none",
        "--auto-save-interval=0",
        "--save-session-interval=0",
        "--summary-interval=0",
        "--console-log-level=notice",
        "--enable-color=false",
        "--max-overall-download-limit=0",
        "--enable-rpc=true",
        "--rpc-listen-all=false",
        "--rpc-listen-port=%d" % rpc_port,
        "--rpc-secret=%s" % secret,
        "--stop-with-process=%d" % os.getpid(),
        os.path.abspath(args.target) if kind == "torrent" else args.target,
    ]
    logpath = os.path.join(workdir, "aria2c.log")
    logf = open(logpath, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir)
    rpc = Rpc(rpc_port, secret)

    def aria2_output():
        logf.flush()
        with open(logpath, "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    try:
        deadline = time.monotonic() + args.timeout
        rpc_deadline = time.monotonic() + 20
        gid = None
        while gid is None:
            if proc.poll() is not None:
                log("error: aria2c exited with %s\n%s" % (proc.returncode, aria2_output()))
                return 1
            if time.monotonic() > rpc_deadline:
                log("error: aria2c RPC did not come up within 20 s")
                return 1
            try:
                act = rpc.call("aria2.tellActive", ["gid"]) + rpc.call("aria2.tellWaiting", 0, 10, ["gid"])
                if act:
                    gid = act[0]["gid"]
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        print("info_hash: %s" % info_hash, flush=True)
        print("listening: %s:%d" % (args.bind, port), flush=True)
        metadata_gid = gid if kind == "magnet" else None
        while True:
            if stopping():
                return 1
            if proc.poll() is not None:
                log("error: aria2c exited with %s\n%s" % (proc.returncode, aria2_output()))
                return 1
            st = rpc.call("aria2.tellStatus", gid, KEYS)
            if st["status"] == "error":
                log("error: aria2 download failed: %s %s" % (st.get("errorCode"), st.get("errorMessage")))
                return 1
            if gid == metadata_gid:
                # the [METADATA] download: when it completes, aria2 follows with the real one
                if st.get("followedBy"):
                    gid = st["followedBy"][0]
                    log("aria2: metadata received after %.1f s" % prog.elapsed())
                    continue
                prog.update(0.0, 0, int(st.get("connections", 0)))
            else:
                total = int(st["totalLength"])
                done = int(st["completedLength"])
                conns = int(st.get("connections", 0))
                if st["status"] == "complete" and total > 0 and done == total:
                    break
                prog.update(done / total if total else 0.0, done, conns)
            if time.monotonic() > deadline:
                log("error: timeout after %.1fs: %s\n%s" % (prog.elapsed(), st, aria2_output()))
                return 1
            time.sleep(0.1)
        prog.finish(total)
        return 0
    except (RuntimeError, OSError, urllib.error.URLError, ValueError, KeyError) as e:
        log("error: %s\n%s" % (e, aria2_output()))
        return 1
    finally:
        if proc.poll() is None:
            try:
                rpc.call("aria2.shutdown")
                proc.wait(10)
            except Exception:
                try:
                    rpc.call("aria2.forceShutdown")
                    proc.wait(5)
                except Exception:
                    proc.kill()
                    proc.wait(5)
        logf.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
