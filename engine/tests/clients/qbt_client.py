#!/usr/bin/python3
"""Drive qbittorrent-nox 4.5 headless over its Web API, as a leecher (or a seeder).

usage:
  qbt_client.py leech TORRENT --save DIR --peer IP:PORT [--peer ...] --bind 127.0.0.x
                [--timeout S] [--workdir DIR]
  qbt_client.py seed TORRENT... --data DIR --listen 127.0.0.x:PORT [--timeout S] [--workdir DIR]
                [--rate BYTES_PER_S]

qbittorrent-nox runs with a private --profile (its qBittorrent.conf is written before start:
legal notice accepted, Web UI on 127.0.0.1 without auth for localhost, DHT/PeX/LSD/UPnP/NAT-PMP
off, TCP only (no uTP), several connections per IP allowed, queueing off, listening and dialing
on the given 127.0.0.x only).
leech: adds the torrent (/api/v2/torrents/add), then the peers (/api/v2/torrents/addPeers),
polls /api/v2/torrents/info; prints `progress: <0..1> <bytes> <peers>` and `result: {json}`;
exit 0 once progress is 1 and the state is a seeding one, 1 on timeout/error.
seed: prints `info_hash:`, `pid:` and `listening: ip:port` once every torrent is checked and
complete, serves until SIGTERM/SIGINT. --rate caps the upload: the global limit
(`/api/v2/transfer/setUploadLimit`) with limits applied to LAN peers (preference
`limit_lan_peers`; loopback peers count as LAN and are otherwise unlimited) and each
torrent's own limit (`/api/v2/torrents/setUploadLimit`), all read back before `listening:`.
Exit 3 when qbittorrent-nox is not installed.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drvcommon import check_loopback, free_port, install_stop_handlers, log, parse_addr, stopping  # noqa: E402


SEED_STATES = {"uploading", "stalledUP", "queuedUP", "forcedUP", "pausedUP", "checkingUP"}
ERROR_STATES = {"error", "missingFiles"}


class Qbt:
    def __init__(self, workdir, bind_ip, port, save_dir, up_rate=0):
        check_loopback(bind_ip)
        exe = shutil.which("qbittorrent-nox")
        if exe is None:
            log("error: qbittorrent-nox is not installed (Debian package qbittorrent-nox)")
            sys.exit(3)
        self.workdir = workdir
        self.webui_port = free_port("127.0.0.1")
        conf_dir = os.path.join(workdir, "qBittorrent", "config")
        os.makedirs(conf_dir, exist_ok=True)
        conf = """[LegalNotice]
Accepted=true

[Application]
FileLogger\\Enabled=true
FileLogger\\Path={workdir}

[BitTorrent]
Session\\DHTEnabled=false
Session\\PeXEnabled=false
Session\\LSDEnabled=false
Session\\AnonymousModeEnabled=false
Session\\BTProtocol=TCP
Session\\MultiConnectionsPerIp=true
Session\\QueueingSystemEnabled=false
Session\\Interface=lo
Session\\InterfaceName=lo
Session\\InterfaceAddress={ip}
Session\\Port={port}
Session\\DefaultSavePath={save}
Session\\TempPathEnabled=false
Session\\AddTorrentPaused=false
Session\\IgnoreLimitsOnLAN={ignore_lan}
Session\\MaxUploads=-1
Session\\MaxUploadsPerTorrent=-1
Session\\AnnounceToAllTrackers=false
Session\\Preallocation=false
Session\\GlobalMaxRatio=-1

[Network]
PortForwardingEnabled=false
Proxy\\Type=None

[Preferences]
Connection\\UPnP=false
Connection\\ResolvePeerCountries=false
Connection\\ResolvePeerHostNames=false
General\\Locale=en
WebUI\\Enabled=true
WebUI\\Address=127.0.0.1
WebUI\\Port={webui}
WebUI\\LocalHostAuth=false
WebUI\\CSRFProtection=false
WebUI\\HostHeaderValidation=false
WebUI\\UseUPnP=false
Advanced\\trackerPortForwarding=false
""".format(
            workdir=workdir, ip=bind_ip, port=port, save=save_dir, webui=self.webui_port,
            ignore_lan="false" if up_rate else "true",
        )
        with open(os.path.join(conf_dir, "qBittorrent.conf"), "w") as f:
            f.write(conf)
        self.logf = open(os.path.join(workdir, "qbittorrent-nox.out"), "wb")
        env = dict(os.environ)
        env["HOME"] = workdir
        env["XDG_CONFIG_HOME"] = os.path.join(workdir, "xdg-config")
        env["XDG_DATA_HOME"] = os.path.join(workdir, "xdg-data")
        env["XDG_CACHE_HOME"] = os.path.join(workdir, "xdg-cache")
        self.proc = subprocess.Popen(
            [exe, "--profile=%s" % workdir, "--webui-port=%d" % self.webui_port],
            stdin=subprocess.DEVNULL,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        self.base = "http://127.0.0.1:%d" % self.webui_port
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "qbittorrent-nox exited with %s: %s" % (self.proc.returncode, self.output())
                )
            try:
                self.get("/api/v2/app/version")
                break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("qbittorrent-nox Web UI did not come up within 30 s")
            time.sleep(0.1)
        prefs = json.loads(self.get("/api/v2/app/preferences"))
        for key, want in (("dht", False), ("pex", False), ("lsd", False), ("upnp", False)):
            if prefs.get(key) != want:
                raise RuntimeError("qbittorrent-nox preference %s is %r, not %r" % (key, prefs.get(key), want))
        if prefs.get("bittorrent_protocol") != 1:
            raise RuntimeError("qbittorrent-nox is not TCP-only: %r" % prefs.get("bittorrent_protocol"))
        if up_rate:
            self.post("/api/v2/app/setPreferences",
                      {"json": json.dumps({"limit_lan_peers": True, "up_limit": up_rate})})
            self.post("/api/v2/transfer/setUploadLimit", {"limit": str(up_rate)})
            prefs = json.loads(self.get("/api/v2/app/preferences"))
            got = int(self.get("/api/v2/transfer/uploadLimit"))
            if got != up_rate or prefs.get("limit_lan_peers") is not True:
                raise RuntimeError("qbittorrent-nox upload limit %r (limit_lan_peers %r), not %d"
                                   % (got, prefs.get("limit_lan_peers"), up_rate))
        self.up_rate = up_rate
        self.prefs = prefs

    def output(self):
        self.logf.flush()
        with open(os.path.join(self.workdir, "qbittorrent-nox.out"), "rb") as f:
            return f.read().decode(errors="replace")[-2000:]

    def get(self, path, params=None):
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def post(self, path, fields=None, files=None):
        if files:
            boundary = uuid.uuid4().hex
            parts = []
            for k, v in (fields or {}).items():
                parts.append(
                    b"--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                    % (boundary.encode(), k.encode(), str(v).encode())
                )
            for k, (fname, data) in files.items():
                parts.append(
                    b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                    b"Content-Type: application/x-bittorrent\r\n\r\n%s\r\n"
                    % (boundary.encode(), k.encode(), fname.encode(), data)
                )
            body = b"".join(parts) + b"--%s--\r\n" % boundary.encode()
            ctype = "multipart/form-data; boundary=%s" % boundary
        else:
            body = urllib.parse.urlencode(fields or {}).encode()
            ctype = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.base + path, data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read().decode()

    def add(self, torrent, save_dir):
        data = open(torrent, "rb").read()
        resp = self.post(
            "/api/v2/torrents/add",
            {"savepath": save_dir, "paused": "false", "autoTMM": "false", "root_folder": "true",
             "contentLayout": "Original"},
            {"torrents": (os.path.basename(torrent), data)},
        )
        if resp.strip() != "Ok.":
            raise RuntimeError("torrents/add answered %r" % resp)
        return info_hash_of(data)

    def info(self, h):
        lst = json.loads(self.get("/api/v2/torrents/info", {"hashes": h}))
        return lst[0] if lst else None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.post("/api/v2/app/shutdown")
            except Exception:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()


def info_hash_of(data):
    """SHA-1 of the exact bytes of the top-level `info` value."""
    i = 1
    while data[i : i + 1] != b"e":
        k, i = _bstr(data, i)
        start = i
        i = _bskip(data, i)
        if k == b"info":
            return hashlib.sha1(data[start:i]).hexdigest()
    raise RuntimeError("no info dictionary")


def _bstr(b, i):
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1 : j + 1 + n], j + 1 + n


def _bskip(b, i):
    c = b[i : i + 1]
    if c == b"i":
        return b.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while b[i : i + 1] != b"e":
            i = _bskip(b, i)
        return i + 1
    return _bstr(b, i)[1]


def leech(args):
    peers = [parse_addr(p) for p in args.peer]
    t0 = time.monotonic()
    save = os.path.abspath(args.save)
    os.makedirs(save, exist_ok=True)
    q = Qbt(args.workdir, args.bind, free_port(args.bind), save)
    try:
        h = q.add(args.torrent, save)
        deadline = t0 + args.timeout
        while q.info(h) is None:
            if time.monotonic() > deadline - args.timeout + 15:
                raise RuntimeError("torrent %s did not appear in qbittorrent-nox" % h)
            time.sleep(0.05)
        last_print = last_dial = 0.0
        first_byte = None
        while True:
            now = time.monotonic()
            if stopping():
                return 1
            t = q.info(h)
            if t is None:
                raise RuntimeError("torrent %s vanished" % h)
            if first_byte is None and t.get("completed", 0) > 0:
                first_byte = now
            if t["progress"] >= 1.0 and t["state"] in SEED_STATES and t["state"] != "checkingUP":
                break
            if t["state"] in ERROR_STATES:
                log("error: torrent state %s" % t["state"])
                return 1
            if now > deadline:
                log(
                    "error: timeout after %.1fs: progress %.4f, state %s, %d seeds, %d peers"
                    % (now - t0, t["progress"], t["state"], t["num_seeds"], t["num_leechs"])
                )
                return 1
            conns = t["num_seeds"] + t["num_leechs"]
            if conns == 0 and now - last_dial > 2.0:
                # re-add while unconnected: a refused dial is otherwise retried slowly
                q.post(
                    "/api/v2/torrents/addPeers",
                    {"hashes": h, "peers": "|".join("%s:%d" % p for p in peers)},
                )
                last_dial = now
            if now - last_print >= 1.0:
                print("progress: %.4f %d %d" % (t["progress"], t["completed"], conns), flush=True)
                last_print = now
            time.sleep(0.1)
        end = time.monotonic()
        t = q.info(h)
        # pause: qBittorrent/libtorrent flushes and closes the files
        q.post("/api/v2/torrents/pause", {"hashes": h})
        pdl = time.monotonic() + 15
        while time.monotonic() < pdl and q.info(h)["state"] not in ("pausedUP",):
            time.sleep(0.05)
        res = {
            "elapsed": end - t0,
            "first_byte": (first_byte - t0) if first_byte else None,
            "after_first_byte": (end - first_byte) if first_byte else None,
            "bytes": t["total_size"],
        }
        print("progress: 1.0000 %d 0" % t["total_size"], flush=True)
        print("result: " + json.dumps(res), flush=True)
        return 0
    finally:
        q.close()


def seed(args):
    ip, port = parse_addr(args.listen)
    if port == 0:
        port = free_port(ip)
    data = os.path.abspath(args.data)
    q = Qbt(args.workdir, ip, port, data, args.rate)
    try:
        hs = [q.add(t, data) for t in args.torrents]
        deadline = time.monotonic() + args.check_timeout
        if args.rate:
            for h in hs:
                while q.info(h) is None:
                    if time.monotonic() > deadline or stopping():
                        log("error: torrent %s did not appear in qbittorrent-nox" % h)
                        return 1
                    time.sleep(0.05)
            q.post("/api/v2/torrents/setUploadLimit", {"hashes": "|".join(hs), "limit": str(args.rate)})
        # Ready once every torrent has been seeding (checked, complete) for SETTLE seconds:
        # qBittorrent closes the connections it accepts around the moment its check ends
        # ("Torrent download finished" in its log), a little after the Web API already shows a
        # seeding state; a leecher that dialed at once was dropped.
        settle = 2.0
        ready_since = None
        while True:
            ts = [q.info(h) for h in hs]
            if all(t is not None and t["state"] in SEED_STATES and t["state"] != "checkingUP"
                   and t["progress"] >= 1.0 and t.get("completion_on", 0) > 0 for t in ts):
                if ready_since is None:
                    ready_since = time.monotonic()
                if time.monotonic() - ready_since >= settle:
                    break
            else:
                ready_since = None
            bad = [t for t in ts if t is not None and t["state"] in ("stalledDL", "pausedDL",
                                                                   "downloading", "metaDL")
                   and t["progress"] < 1.0]
            if bad:
                log("error: data incomplete: %s" % ", ".join("%s %.4f" % (t["hash"], t["progress"]) for t in bad))
                return 1
            if time.monotonic() > deadline or stopping():
                log("error: qbittorrent-nox check did not finish within %ss" % args.check_timeout)
                return 1
            time.sleep(0.1)
        if args.rate:
            limits = json.loads(q.post("/api/v2/torrents/uploadLimit", {"hashes": "|".join(hs)}))
            if any(limits.get(h) != args.rate for h in hs):
                log("error: torrent upload limits %r, not %d" % (limits, args.rate))
                return 1
            log("upload limit: %d bytes/s (global), per torrent %r" % (args.rate, limits))
        for h in hs:
            print("info_hash: %s" % h, flush=True)
        print("pid: %d" % q.proc.pid, flush=True)
        print("listening: %s:%d" % (ip, port), flush=True)
        end = time.monotonic() + args.timeout
        while not stopping() and time.monotonic() < end:
            if q.proc.poll() is not None:
                log("error: qbittorrent-nox exited with %s" % q.proc.returncode)
                return 1
            time.sleep(0.2)
        log("uploaded: %d" % sum(q.info(h)["uploaded"] for h in hs))
        return 0
    finally:
        q.close()


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
        tmp = tempfile.mkdtemp(prefix="qbt-")
        args.workdir = tmp
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    try:
        return leech(args) if args.cmd == "leech" else seed(args)
    except (RuntimeError, OSError, urllib.error.URLError, ValueError, KeyError) as e:
        log("error: %s" % e)
        return 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
