#!/usr/bin/python3
"""transmission-daemon 3.00 as a LEECHER, driven over its RPC (plain HTTP from python).

usage: transmission_leech.py TORRENT|MAGNET --save DIR --bind 127.0.0.x [--timeout S]
                             [--workdir DIR]

transmission-daemon runs in the foreground (-f) with its own config dir (-g) and a
settings.json written before start: DHT, LPD, PEX, uTP and port forwarding off, peers on
`bind-address-ipv4` = the given 127.0.0.x (IPv6 on ::1), a free `peer-port` (not random),
RPC on 127.0.0.1:<free port> without authentication (whitelist 127.0.0.1), no blocklist,
no queueing, no partial-file renaming.

Transmission never dials a loopback peer a tracker hands it (127/8 is "martian" to it); it
only accepts incoming connections. So a seeder must dial it: it announces its real peer
port to the tracker in the .torrent / the magnet's tr= (the announce leaves from the bind
address), and this driver prints `listening: IP:PEERPORT` (a test can hand it to a seeder).
Transmission's RPC has no way to add a peer.

Prints `info_hash: HEX`, `listening: IP:PORT`, `tracker: ...` lines on stderr when the
announce result changes, `progress: <0..1> <bytes> <peers>` about once a second and
`result: {json}`. Exit 0 once the torrent is complete and every byte verified
(leftUntilDone 0, haveValid == sizeWhenDone, no check running), after stopping the torrent
(files flushed and closed); zero-length files are not created (transmission 3.00 never
creates one: a `note:` line counts them); 1 on timeout/error, 2 on a non-loopback address, 3 when
transmission-daemon is missing.
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
import urllib.request

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import check_loopback, free_port, install_stop_handlers, log, stopping  # noqa: E402
from trackcommon import Progress, check_target, torrent_info_hash  # noqa: E402

# torrent status codes (RPC spec, 3.00)
STOPPED, CHECK_WAIT, CHECK, DOWNLOAD_WAIT, DOWNLOAD, SEED_WAIT, SEED = range(7)


class Rpc:
    """Transmission RPC: POST JSON, with the X-Transmission-Session-Id dance (409 first)."""

    def __init__(self, port):
        self.url = "http://127.0.0.1:%d/transmission/rpc" % port
        self.session_id = ""

    def call(self, method, **arguments):
        body = json.dumps({"method": method, "arguments": arguments}).encode()
        for _ in range(3):
            req = urllib.request.Request(
                self.url,
                data=body,
                headers={"Content-Type": "application/json", "X-Transmission-Session-Id": self.session_id},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    resp = json.loads(r.read().decode())
            except urllib.error.HTTPError as e:
                if e.code == 409:
                    self.session_id = e.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if resp.get("result") != "success":
                raise RuntimeError("transmission %s: %s" % (method, resp.get("result")))
            return resp.get("arguments", {})
        raise RuntimeError("transmission %s: no session id accepted" % method)


FIELDS = ["id", "hashString", "name", "status", "percentDone", "leftUntilDone", "sizeWhenDone",
          "haveValid", "haveUnchecked", "totalSize", "peersConnected", "error", "errorString",
          "metadataPercentComplete", "recheckProgress", "trackerStats", "downloadedEver",
          "corruptEver"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target", help=".torrent file or magnet link")
    ap.add_argument("--save", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--workdir")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    install_stop_handlers()
    check_loopback(args.bind)
    kind, parsed = check_target(args.target)
    exe = shutil.which("transmission-daemon")
    if exe is None:
        log("error: transmission-daemon is not installed (Debian package transmission-daemon)")
        return 3
    info_hash = parsed["info_hash"] if kind == "magnet" else torrent_info_hash(parsed)
    prog = Progress(args.quiet)
    save = os.path.abspath(args.save)
    os.makedirs(save, exist_ok=True)
    tmp = None
    if not args.workdir:
        tmp = tempfile.mkdtemp(prefix="transmission-")
        args.workdir = tmp
    workdir = os.path.abspath(args.workdir)
    conf = os.path.join(workdir, "config")
    os.makedirs(conf, exist_ok=True)
    peer_port = free_port(args.bind)
    rpc_port = free_port("127.0.0.1")
    settings = {
        "bind-address-ipv4": args.bind,
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
        "download-dir": save,
        "incomplete-dir-enabled": False,
        "rename-partial-files": False,
        "start-added-torrents": True,
        "watch-dir-enabled": False,
        "trash-original-torrent-files": False,
        "download-queue-enabled": False,
        "seed-queue-enabled": False,
        "queue-stalled-enabled": False,
        "speed-limit-down-enabled": False,
        "speed-limit-up-enabled": False,
        "alt-speed-enabled": False,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "scrape-paused-torrents-enabled": False,
        "script-torrent-done-enabled": False,
        "peer-limit-global": 200,
        "peer-limit-per-torrent": 50,
        "preallocation": 0,
        "cache-size-mb": 4,
        "message-level": 2,
        "umask": 18,
    }
    with open(os.path.join(conf, "settings.json"), "w") as f:
        json.dump(settings, f, indent=1)
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

    tid = None
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
        for key, want in (("dht-enabled", False), ("lpd-enabled", False), ("pex-enabled", False),
                          ("utp-enabled", False), ("port-forwarding-enabled", False),
                          ("peer-port", peer_port)):
            if sess.get(key) != want:
                raise RuntimeError("transmission setting %s is %r, not %r" % (key, sess.get(key), want))

        if kind == "magnet":
            added = rpc.call("torrent-add", filename=args.target, **{"download-dir": save, "paused": False})
        else:
            meta = base64.b64encode(open(args.target, "rb").read()).decode()
            added = rpc.call("torrent-add", metainfo=meta, **{"download-dir": save, "paused": False})
        t = added.get("torrent-added") or added.get("torrent-duplicate")
        if not t:
            raise RuntimeError("torrent-add answered %r" % added)
        tid = t["id"]
        if t["hashString"].lower() != info_hash:
            raise RuntimeError("transmission sees info hash %s, expected %s" % (t["hashString"], info_hash))
        print("info_hash: %s" % info_hash, flush=True)
        print("listening: %s:%d" % (args.bind, peer_port), flush=True)

        deadline = prog.t0 + args.timeout
        last_tracker = None
        while True:
            if stopping():
                return 1
            if proc.poll() is not None:
                log("error: transmission-daemon exited with %s\n%s" % (proc.returncode, daemon_output()))
                return 1
            ts = rpc.call("torrent-get", ids=[tid], fields=FIELDS)["torrents"]
            if not ts:
                raise RuntimeError("torrent %s vanished" % tid)
            t = ts[0]
            tr = [(s.get("announce"), s.get("lastAnnounceResult"), s.get("lastAnnounceSucceeded"),
                   s.get("lastAnnouncePeerCount")) for s in t.get("trackerStats", [])]
            if tr != last_tracker:
                log("tracker: %s" % tr)
                last_tracker = tr
            if t["error"] and t["error"] != 2:
                # 1, 2: tracker warning/error (kept on stderr above); 3: local error
                log("transmission error %s: %s" % (t["error"], t["errorString"]))
                if t["error"] == 3:
                    return 1
            size = t["sizeWhenDone"]
            have = t["haveValid"]
            if (size > 0 and t["leftUntilDone"] == 0 and have == size and t["haveUnchecked"] == 0
                    and t["status"] in (SEED_WAIT, SEED)):
                break
            prog.update(t["percentDone"], have + t["haveUnchecked"], t["peersConnected"])
            if time.monotonic() > deadline:
                log("error: timeout after %.1fs: %s\n%s" % (
                    prog.elapsed(), {k: v for k, v in t.items() if k != "trackerStats"}, daemon_output()))
                return 1
            time.sleep(0.1)
        total = t["sizeWhenDone"]
        corrupt = t["corruptEver"]
        # every file wanted and complete; transmission 3.00 never creates a zero-length file on
        # disk (it opens a file only to write a block into it: transmission#417, fixed in 4.1),
        # so a torrent's empty files are absent from --save: say so (the test allows exactly those)
        ft = rpc.call("torrent-get", ids=[tid], fields=["files", "wanted"])["torrents"][0]
        files, wanted = ft.get("files", []), ft.get("wanted", [])
        short = [f["name"] for f in files if f["bytesCompleted"] != f["length"]]
        if short or not all(wanted):
            raise RuntimeError("complete, but %d files short (first %r), %d unwanted" % (
                len(short), short[:1], len(wanted) - sum(1 for w in wanted if w)))
        empty = [f["name"] for f in files if f["length"] == 0]
        absent = [n for n in empty if not os.path.exists(os.path.join(save, n))]
        if empty:
            log("note: %d of the torrent's %d files are zero-length; transmission did not create %d "
                "of them" % (len(empty), len(files), len(absent)))
        # stop the torrent: transmission flushes its cache and closes the files, and announces
        # `stopped` (wait for it, bounded: closing the session right away loses that announce
        # and leaves a dead peer in the tracker)
        announced = [s.get("lastAnnounceTime", 0) for s in t.get("trackerStats", [])]
        rpc.call("torrent-stop", ids=[tid])
        stop_deadline = time.monotonic() + 15
        while time.monotonic() < stop_deadline:
            st = rpc.call("torrent-get", ids=[tid], fields=["status"])["torrents"][0]
            if st["status"] == STOPPED:
                break
            time.sleep(0.05)
        stop_deadline = time.monotonic() + 6
        while announced and time.monotonic() < stop_deadline:
            st = rpc.call("torrent-get", ids=[tid], fields=["trackerStats"])["torrents"][0]
            now_announced = [s.get("lastAnnounceTime", 0) for s in st.get("trackerStats", [])]
            busy = any(s.get("announceState", 0) in (2, 3) for s in st.get("trackerStats", []))
            if now_announced != announced and not busy:
                log("tracker (after stop): %s" % [(s.get("lastAnnounceResult"), s.get("announceState"))
                                                  for s in st.get("trackerStats", [])])
                break
            time.sleep(0.1)
        prog.finish(total, corrupt=corrupt)
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
