#!/usr/bin/python3
"""aria2c 1.36 as a SEEDER on loopback (it only accepts incoming connections when seeding).

usage: aria2_seed.py TORRENT... --data DIR --listen 127.0.0.x:PORT [--timeout S] [--workdir DIR]
                     [--tracker URL]... [--rate BYTES_PER_S]

Starts aria2c with DHT, LPD, PEX off (aria2 has no uTP and no UPnP), bound to the given
127.0.0.x (--interface), hash-checking DIR/<name> first (-V), then seeding forever
(--seed-ratio=0). Readiness is read over aria2's JSON-RPC (on 127.0.0.1, random secret):
once every download is a complete seeder, prints `info_hash: <hex>` per torrent,
`pid: <aria2c pid>` and `listening: ip:port`, then serves until SIGTERM/SIGINT (on stop
`uploaded: <bytes>` on stderr).
Exit 1 if the data is not complete or the check does not finish, 3 if aria2c is missing.

Trackers: aria2 announces to the torrent's own announce URLs (from the --interface address,
with its --listen-port: what opentracker records) and to every --tracker (`--bt-tracker`);
all must be on 127.0.0.0/8 (exit 2 otherwise). aria2 1.36 has no UDP tracker with its DHT
off: give it http:// ones. As a seeder aria2 dials nobody: a leecher must find it through
the tracker and dial it. --rate caps the upload (`--max-overall-upload-limit` and the
per-torrent `--max-upload-limit`, bytes per second; aria2 exempts no local peer).
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
from drvcommon import free_port, install_stop_handlers, log, parse_addr, stopping  # noqa: E402
from trackcommon import check_target, check_url_loopback  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrents", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--workdir")
    ap.add_argument("--tracker", action="append", default=[], help="extra announce URL (http://)")
    ap.add_argument("--rate", type=int, default=0, help="upload limit, bytes per second")
    args = ap.parse_args()
    install_stop_handlers()
    for t in args.tracker:
        check_url_loopback(t)
    for t in args.torrents:
        check_target(t)  # every announce URL of the torrent on loopback
    if args.rate < 0:
        log("error: --rate must not be negative")
        return 2
    exe = shutil.which("aria2c")
    if exe is None:
        log("error: aria2c is not installed (Debian package aria2)")
        return 3
    ip, port = parse_addr(args.listen)
    if port == 0:
        port = free_port(ip)
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="aria2-")
        args.workdir = tmp
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    rpc_port = free_port("127.0.0.1")
    secret = secrets.token_hex(16)
    cmd = [
        exe,
        "--no-conf=true",
        "--dir=%s" % os.path.abspath(args.data),
        "--check-integrity=true",
        "--bt-seed-unverified=false",
        "--seed-ratio=0.0",
        "--listen-port=%d" % port,
        "--interface=%s" % ip,
        "--disable-ipv6=true",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--bt-max-peers=0",
        "--max-overall-upload-limit=%d" % args.rate,
        "--max-upload-limit=%d" % args.rate,
        "--file-allocation=none",
        "--auto-save-interval=0",
        "--save-session-interval=0",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--enable-color=false",
        "--bt-tracker-connect-timeout=1",
        "--bt-tracker-timeout=1",
        "--enable-rpc=true",
        "--rpc-listen-all=false",
        "--rpc-listen-port=%d" % rpc_port,
        "--rpc-secret=%s" % secret,
        "--stop-with-process=%d" % os.getpid(),
    ]
    if args.tracker:
        cmd.append("--bt-tracker=%s" % ",".join(args.tracker))
    cmd += [os.path.abspath(t) for t in args.torrents]
    logf = open(os.path.join(workdir, "aria2c.log"), "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir)
    rpc = Rpc(rpc_port, secret)
    try:
        deadline = time.monotonic() + args.check_timeout
        while True:
            if proc.poll() is not None:
                log("error: aria2c exited with %s" % proc.returncode)
                return 1
            if stopping() or time.monotonic() > deadline:
                log("error: aria2c did not become a seeder within %ss" % args.check_timeout)
                return 1
            try:
                act = rpc.call("aria2.tellActive", ["gid", "status", "seeder", "completedLength",
                                                    "totalLength", "infoHash", "verifiedLength",
                                                    "verifyIntegrityPending"])
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
                continue
            ready = [a for a in act if a.get("seeder") == "true"
                     and a["completedLength"] == a["totalLength"]
                     and "verifiedLength" not in a and "verifyIntegrityPending" not in a]
            if len(ready) == len(args.torrents):
                break
            stopped = rpc.call("aria2.tellStopped", 0, 100, ["gid", "status", "errorMessage"])
            if stopped:
                log("error: aria2c stopped a download: %s" % stopped)
                return 1
            time.sleep(0.1)
        for a in ready:
            print("info_hash: %s" % a["infoHash"], flush=True)
        print("pid: %d" % proc.pid, flush=True)
        print("listening: %s:%d" % (ip, port), flush=True)
        end = time.monotonic() + args.timeout
        while not stopping() and time.monotonic() < end:
            if proc.poll() is not None:
                log("error: aria2c exited with %s" % proc.returncode)
                return 1
            time.sleep(0.2)
        try:
            st = rpc.call("aria2.getGlobalStat")
            log("upload speed at stop: %s" % st.get("uploadSpeed"))
            act = rpc.call("aria2.tellActive", ["uploadLength"])
            log("uploaded: %d" % sum(int(a.get("uploadLength", 0)) for a in act))
        except Exception:
            pass
        return 0
    finally:
        if proc.poll() is None:
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
