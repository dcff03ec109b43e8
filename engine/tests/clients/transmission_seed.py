#!/usr/bin/python3
"""transmission-daemon 3.00 as a SEEDER, driven over its RPC (plain HTTP from python).

usage: transmission_seed.py TORRENT... --data DIR --listen 127.0.0.x:PORT [--rate BYTES_PER_S]
                            [--timeout S] [--check-timeout S] [--workdir DIR]

The daemon and its settings are transmission_leech.py's (foreground `-f`, private config dir
`-g`, settings.json written first: DHT, LPD, PEX, uTP, port forwarding off, peers on
`bind-address-ipv4` = the given 127.0.0.x (IPv6 on ::1), a fixed `peer-port` (a free one for
port 0), RPC on 127.0.0.1:<free port> without authentication, no blocklist, no queues), plus
what a seeder needs: no ratio or idle-seeding limit, `download-dir` = DIR (content at
DIR/<name>), and with --rate an upload limit (`speed-limit-up`, transmission's kB/s of 1,000
bytes, the session's and each torrent's `uploadLimit`).

Each torrent is added paused, hash-checked in full (`torrent-verify`), and started once every
byte is verified (haveValid == sizeWhenDone, leftUntilDone 0). Then the driver prints
`info_hash: HEX` per torrent, `pid: <transmission-daemon pid>` and `listening: IP:PORT`, and
serves until SIGTERM/SIGINT (exit 0) or --timeout (exit 0 too), logging the announce results
(`tracker: ...`) and at the end `uploaded: <bytes>` on stderr. Stopping: `torrent-stop` (a
`stopped` announce, waited for, bounded), then `session-close`.

Trackers: transmission announces to the torrent's announce URLs (they must be on 127.0.0.0/8,
else exit 2) from the bind address with its peer port. Transmission 3.00 never dials a loopback
peer a tracker hands it (127/8 is "martian" to it), but it accepts incoming connections: a
leecher finds it through the tracker and dials it.
Exit 1 when the data is not complete or the check does not finish, 2 on a non-loopback
address, 3 when transmission-daemon is missing.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import free_port, install_stop_handlers, log, parse_addr, stopping  # noqa: E402
from trackcommon import check_target, torrent_info_hash  # noqa: E402
from transmission_leech import CHECK, CHECK_WAIT, SEED, SEED_WAIT, STOPPED, Rpc  # noqa: E402

FIELDS = ["id", "hashString", "name", "status", "leftUntilDone", "sizeWhenDone", "haveValid",
          "haveUnchecked", "recheckProgress", "error", "errorString", "uploadLimit",
          "uploadLimited", "uploadedEver", "peersConnected", "trackerStats"]


def settings(ip, peer_port, rpc_port, data, rate):
    kbps = max(1, (rate + 999) // 1000) if rate else 0
    return {
        "bind-address-ipv4": ip,
        "bind-address-ipv6": "::1",
        "peer-port": peer_port,
        "peer-port-random-on-start": False,
        "port-forwarding-enabled": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "blocklist-enabled": False,
        "encryption": 1,
        "rpc-enabled": True,
        "rpc-bind-address": "127.0.0.1",
        "rpc-port": rpc_port,
        "rpc-authentication-required": False,
        "rpc-whitelist-enabled": True,
        "rpc-whitelist": "127.0.0.1",
        "rpc-host-whitelist-enabled": False,
        "download-dir": data,
        "incomplete-dir-enabled": False,
        "rename-partial-files": False,
        "start-added-torrents": False,
        "watch-dir-enabled": False,
        "trash-original-torrent-files": False,
        "download-queue-enabled": False,
        "seed-queue-enabled": False,
        "queue-stalled-enabled": False,
        "speed-limit-down-enabled": False,
        "speed-limit-up-enabled": bool(rate),
        "speed-limit-up": kbps,
        "alt-speed-enabled": False,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "scrape-paused-torrents-enabled": False,
        "script-torrent-done-enabled": False,
        "peer-limit-global": 200,
        "peer-limit-per-torrent": 50,
        "upload-slots-per-torrent": 50,
        "preallocation": 0,
        "cache-size-mb": 4,
        "message-level": 2,
        "umask": 18,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrents", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--rate", type=int, default=0, help="upload limit, bytes per second")
    ap.add_argument("--timeout", type=float, default=3600.0, help="serve at most this long")
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--workdir")
    args = ap.parse_args()
    install_stop_handlers()
    ip, peer_port = parse_addr(args.listen)
    for t in args.torrents:
        check_target(t)  # every announce URL on loopback
    if args.rate < 0:
        log("error: --rate must not be negative")
        return 2
    exe = shutil.which("transmission-daemon")
    if exe is None:
        log("error: transmission-daemon is not installed (Debian package transmission-daemon)")
        return 3
    if peer_port == 0:
        peer_port = free_port(ip)
    data = os.path.abspath(args.data)
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="transmission-seed-")
        args.workdir = tmp
    workdir = os.path.abspath(args.workdir)
    conf = os.path.join(workdir, "config")
    os.makedirs(conf, exist_ok=True)
    rpc_port = free_port("127.0.0.1")
    with open(os.path.join(conf, "settings.json"), "w") as f:
        json.dump(settings(ip, peer_port, rpc_port, data, args.rate), f, indent=1)
    logpath = os.path.join(workdir, "transmission-daemon.log")
    logf = open(logpath, "wb")
    env = dict(os.environ)
    env["HOME"] = workdir
    env["TRANSMISSION_HOME"] = conf
    proc = subprocess.Popen(
        [exe, "-f", "-g", conf, "--log-info"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, cwd=workdir, env=env,
    )
    rpc = Rpc(rpc_port)

    def daemon_output():
        logf.flush()
        with open(logpath, "rb") as f:
            return f.read().decode(errors="replace")[-4000:]

    def get(ids, fields=FIELDS):
        return rpc.call("torrent-get", ids=ids, fields=fields)["torrents"]

    ids = []
    try:
        up_deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                log("error: transmission-daemon exited with %s\n%s" % (proc.returncode, daemon_output()))
                return 1
            try:
                sess = rpc.call("session-get")
                break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > up_deadline:
                log("error: transmission RPC did not come up within 20 s\n%s" % daemon_output())
                return 1
            time.sleep(0.1)
        want = [("dht-enabled", False), ("lpd-enabled", False), ("pex-enabled", False),
                ("utp-enabled", False), ("port-forwarding-enabled", False), ("peer-port", peer_port),
                ("seedRatioLimited", False), ("idle-seeding-limit-enabled", False)]
        if args.rate:
            want += [("speed-limit-up-enabled", True)]
        for key, value in want:
            if sess.get(key) != value:
                raise RuntimeError("transmission setting %s is %r, not %r" % (key, sess.get(key), value))

        hashes = {}
        for path in args.torrents:
            meta = base64.b64encode(open(path, "rb").read()).decode()
            added = rpc.call("torrent-add", metainfo=meta, **{"download-dir": data, "paused": True})
            t = added.get("torrent-added") or added.get("torrent-duplicate")
            if not t:
                raise RuntimeError("torrent-add answered %r" % added)
            h = torrent_info_hash(path)
            if t["hashString"].lower() != h:
                raise RuntimeError("transmission sees info hash %s, expected %s" % (t["hashString"], h))
            ids.append(t["id"])
            hashes[t["id"]] = h
        if args.rate:
            kbps = max(1, (args.rate + 999) // 1000)
            rpc.call("torrent-set", ids=ids, uploadLimit=kbps, uploadLimited=True)
        # a full check of DIR/<name> while paused; start once every byte is verified
        rpc.call("torrent-verify", ids=ids)
        deadline = time.monotonic() + args.check_timeout
        seen_check = set()
        while True:
            if stopping():
                return 1
            if proc.poll() is not None:
                log("error: transmission-daemon exited with %s\n%s" % (proc.returncode, daemon_output()))
                return 1
            ts = get(ids)
            for t in ts:
                if t["status"] in (CHECK_WAIT, CHECK):
                    seen_check.add(t["id"])
            verified = [t for t in ts if t["status"] == STOPPED and t["sizeWhenDone"] > 0
                        and t["haveValid"] == t["sizeWhenDone"] and t["leftUntilDone"] == 0
                        and t["haveUnchecked"] == 0]
            if len(verified) == len(ids):
                break
            short = [t for t in ts if t["id"] in seen_check and t["status"] == STOPPED
                     and t["haveValid"] < t["sizeWhenDone"]]
            if short:
                log("error: data incomplete: %s" % ", ".join(
                    "%s %d of %d bytes valid" % (t["hashString"], t["haveValid"], t["sizeWhenDone"])
                    for t in short))
                return 1
            if any(t["error"] == 3 for t in ts):
                log("error: %s" % "; ".join(t["errorString"] for t in ts if t["error"]))
                return 1
            if time.monotonic() > deadline:
                log("error: check did not finish within %ss: %s" % (args.check_timeout, ts))
                return 1
            time.sleep(0.1)
        rpc.call("torrent-start", ids=ids)
        start_deadline = time.monotonic() + 15
        while True:
            ts = get(ids)
            if all(t["status"] in (SEED_WAIT, SEED) for t in ts):
                break
            if time.monotonic() > start_deadline:
                log("error: not seeding 15 s after torrent-start: %s" % ts)
                return 1
            time.sleep(0.05)
        if args.rate:
            log("upload limit: %s kB/s per torrent, %s kB/s session" % (
                [t["uploadLimit"] for t in ts], rpc.call("session-get").get("speed-limit-up")))
        for i in ids:
            print("info_hash: %s" % hashes[i], flush=True)
        print("pid: %d" % proc.pid, flush=True)
        print("listening: %s:%d" % (ip, peer_port), flush=True)

        end = time.monotonic() + args.timeout
        last_tracker = None
        while not stopping() and time.monotonic() < end:
            if proc.poll() is not None:
                log("error: transmission-daemon exited with %s\n%s" % (proc.returncode, daemon_output()))
                return 1
            ts = get(ids)
            tr = [[(s.get("announce"), s.get("lastAnnounceResult"), s.get("lastAnnouncePeerCount"))
                   for s in t.get("trackerStats", [])] for t in ts]
            if tr != last_tracker:
                log("tracker: %s" % tr)
                last_tracker = tr
            time.sleep(0.2)
        ts = get(ids)
        log("uploaded: %d" % sum(t["uploadedEver"] for t in ts))
        # stop: a `stopped` announce (bounded wait for it: closing the session right away
        # loses it and leaves a dead peer in the tracker)
        announced = [[s.get("lastAnnounceTime", 0) for s in t.get("trackerStats", [])] for t in ts]
        rpc.call("torrent-stop", ids=ids)
        stop_deadline = time.monotonic() + 6
        while any(announced) and time.monotonic() < stop_deadline:
            ts = get(ids, ["status", "trackerStats"])
            now = [[s.get("lastAnnounceTime", 0) for s in t.get("trackerStats", [])] for t in ts]
            busy = any(s.get("announceState", 0) in (2, 3) for t in ts for s in t.get("trackerStats", []))
            if all(t["status"] == STOPPED for t in ts) and now != announced and not busy:
                break
            time.sleep(0.1)
        return 0
    except (RuntimeError, OSError, urllib.error.URLError, ValueError, KeyError) as e:
        log("error: %s\n%s" % (e, daemon_output()))
        return 1
    finally:
        if proc.poll() is None:
            try:
                rpc.call("session-close")
                proc.wait(15)
            except Exception:
                proc.kill()
                proc.wait(5)
        logf.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
