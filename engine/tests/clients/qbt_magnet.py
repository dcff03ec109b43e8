#!/usr/bin/python3
"""qbittorrent-nox 4.5 as a LEECHER started from a magnet link alone, over its Web API.

usage: qbt_magnet.py MAGNET --save DIR --bind 127.0.0.x [--timeout S] [--workdir DIR]
                     [--peer IP:PORT ...]

The qbittorrent-nox instance is qbt_client.py's `Qbt` (private --profile, Web UI on
127.0.0.1 without auth, DHT/PeX/LSD/UPnP/NAT-PMP off, TCP only, listening and dialing on the
given 127.0.0.x; the preferences are checked over the API before anything is added).
The magnet goes in as a URL (/api/v2/torrents/add `urls=`); qBittorrent (libtorrent inside,
with its default plugins: ut_metadata) finds peers through the magnet's tr= trackers (and
x.pe= peers, when it honours them), fetches the metadata (state `metaDL`), then downloads.
--peer adds peers explicitly (/api/v2/torrents/addPeers, again every 2 s while unconnected).
Prints `info_hash:`, `progress: <0..1> <bytes> <peers>` and `result: {json}` (with `metadata`:
seconds until the metadata arrived). Exit 0 once progress is 1 in a seeding state (every piece
checked), after pausing the torrent (files flushed); 1 on timeout/error, 2 on a non-loopback
address, 3 when qbittorrent-nox is missing.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.error

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import check_loopback, free_port, install_stop_handlers, log, parse_addr, stopping  # noqa: E402
from qbt_client import ERROR_STATES, SEED_STATES, Qbt  # noqa: E402
from trackcommon import Progress, check_target  # noqa: E402


def leech(args, magnet):
    peers = [parse_addr(p) for p in args.peer]
    prog = Progress(args.quiet)
    save = os.path.abspath(args.save)
    os.makedirs(save, exist_ok=True)
    q = Qbt(args.workdir, args.bind, free_port(args.bind), save)
    try:
        h = magnet["info_hash"]
        resp = q.post(
            "/api/v2/torrents/add",
            {"urls": args.magnet, "savepath": save, "paused": "false", "autoTMM": "false",
             "root_folder": "true", "contentLayout": "Original"},
        )
        if resp.strip() != "Ok.":
            raise RuntimeError("torrents/add answered %r" % resp)
        print("info_hash: %s" % h, flush=True)
        appear = time.monotonic() + 15
        while q.info(h) is None:
            if time.monotonic() > appear:
                raise RuntimeError("magnet %s did not appear in qbittorrent-nox" % h)
            time.sleep(0.05)
        deadline = prog.t0 + args.timeout
        last_dial = 0.0
        metadata_at = None
        last_state = None
        while True:
            now = time.monotonic()
            if stopping():
                return 1
            t = q.info(h)
            if t is None:
                raise RuntimeError("torrent %s vanished" % h)
            if t["state"] != last_state:
                log("qbt: state %s after %.1f s" % (t["state"], now - prog.t0))
                last_state = t["state"]
            if metadata_at is None and t["state"] != "metaDL" and t.get("total_size", -1) > 0:
                metadata_at = now
            if t["progress"] >= 1.0 and t["state"] in SEED_STATES and t["state"] != "checkingUP":
                break
            if t["state"] in ERROR_STATES:
                log("error: torrent state %s" % t["state"])
                return 1
            if now > deadline:
                trackers = q.get("/api/v2/torrents/trackers", {"hash": h})
                log(
                    "error: timeout after %.1fs: progress %.4f, state %s, %d seeds, %d peers; "
                    "trackers %s\n%s"
                    % (now - prog.t0, t["progress"], t["state"], t["num_seeds"], t["num_leechs"],
                       trackers, q.output())
                )
                return 1
            conns = t["num_seeds"] + t["num_leechs"]
            if peers and conns == 0 and now - last_dial > 2.0:
                q.post(
                    "/api/v2/torrents/addPeers",
                    {"hashes": h, "peers": "|".join("%s:%d" % p for p in peers)},
                )
                last_dial = now
            prog.update(t["progress"], t.get("completed", 0), conns)
            time.sleep(0.1)
        t = q.info(h)
        # pause: qBittorrent/libtorrent flushes and closes the files
        q.post("/api/v2/torrents/pause", {"hashes": h})
        pdl = time.monotonic() + 15
        while time.monotonic() < pdl and q.info(h)["state"] not in ("pausedUP",):
            time.sleep(0.05)
        prog.finish(t["total_size"], metadata=(metadata_at - prog.t0) if metadata_at else None)
        return 0
    finally:
        q.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("magnet")
    ap.add_argument("--save", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--workdir")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    install_stop_handlers()
    check_loopback(args.bind)
    kind, magnet = check_target(args.magnet)
    if kind != "magnet":
        log("error: not a magnet link: %r" % args.magnet)
        return 2
    if shutil.which("qbittorrent-nox") is None:
        log("error: qbittorrent-nox is not installed (Debian package qbittorrent-nox)")
        return 3
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="qbt-magnet-")
        args.workdir = tmp
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    try:
        return leech(args, magnet)
    except (RuntimeError, OSError, urllib.error.URLError, ValueError, KeyError) as e:
        log("error: %s" % e)
        return 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
