#!/usr/bin/python3
"""rqbit (`cargo install rqbit --locked`, 9.x) as a SEEDER on loopback.

usage: rqbit_seed.py TORRENT --data DIR --listen 127.0.0.x:PORT [--timeout S]
                     [--check-timeout S] [--workdir DIR]

Starts `rqbit download` (stateless) with DHT, LSD, trackers, UPnP and mDNS off, listening on
the given 127.0.0.x:PORT (--listen-ip/--listen-port), its HTTP API on 127.0.0.1 (a free port),
and the data in DIR (`-o DIR --overwrite`: the existing files are checked, not replaced).
Readiness is read over that API: once the torrent is `live` and `finished`, prints
`info_hash: <hex>`, `pid: <rqbit pid>` and `listening: ip:port`, then serves until
SIGTERM/SIGINT (on stop `uploaded: <bytes>` on stderr).
Exit 1 if the data is not complete or the check does not finish, 3 if rqbit is missing.
One torrent per driver (rqbit's `download` takes several, but the harness needs one).
"""
import argparse
import json
import os
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


def api(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return json.loads(r.read().decode())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("--data", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    install_stop_handlers()
    exe = shutil.which("rqbit") or os.path.expanduser("~/.cargo/bin/rqbit")
    if not os.access(exe, os.X_OK):
        log("error: rqbit is not installed (cargo install rqbit --locked)")
        return 3
    ip, port = parse_addr(args.listen)
    if port == 0:
        port = free_port(ip)
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="rqbit-")
        args.workdir = tmp
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    api_port = free_port("127.0.0.1")
    cmd = [
        exe, "-v", "warn",
        "--disable-dht", "--disable-dht-persistence", "--disable-lsd", "--disable-trackers",
        "--disable-upnp-port-forward",
        "--listen-ip", ip, "--listen-port", str(port),
        "--http-api-listen-addr", "127.0.0.1:%d" % api_port,
        "download", os.path.abspath(args.torrent), "-o", os.path.abspath(args.data),
        "--overwrite",
    ]
    env = dict(os.environ, HOME=workdir, XDG_CACHE_HOME=workdir, XDG_CONFIG_HOME=workdir,
               XDG_DATA_HOME=workdir)
    logf = open(os.path.join(workdir, "rqbit.log"), "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                            cwd=workdir, env=env)
    try:
        deadline = time.monotonic() + args.check_timeout
        info_hash = None
        while True:
            if proc.poll() is not None:
                log("error: rqbit exited with %s" % proc.returncode)
                return 1
            if stopping() or time.monotonic() > deadline:
                log("error: rqbit did not become a seeder within %ss" % args.check_timeout)
                return 1
            try:
                ts = api(api_port, "/torrents")["torrents"]
                if ts:
                    st = api(api_port, "/torrents/%d/stats/v1" % ts[0]["id"])
                    if st.get("error"):
                        log("error: rqbit: %s" % st["error"])
                        return 1
                    if st.get("state") == "live" and st.get("finished"):
                        info_hash = ts[0]["info_hash"]
                        tid = ts[0]["id"]
                        break
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        print("info_hash: %s" % info_hash, flush=True)
        print("pid: %d" % proc.pid, flush=True)
        print("listening: %s:%d" % (ip, port), flush=True)
        end = time.monotonic() + args.timeout
        while not stopping() and time.monotonic() < end:
            if proc.poll() is not None:
                log("error: rqbit exited with %s" % proc.returncode)
                return 1
            time.sleep(0.2)
        try:
            st = api(api_port, "/torrents/%d/stats/v1" % tid)
            log("uploaded: %d" % int(st.get("uploaded_bytes", 0)))
        except Exception:
            pass
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        logf.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
