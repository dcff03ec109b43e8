"""What the tracker/magnet drivers share (no third-party imports).

- bdecode(): a minimal bencode decoder (torrents, RPC-free checks);
- torrent_trackers(path) / torrent_info_hash(path): announce URLs and v1 info hash of a .torrent;
- parse_magnet(uri): info hash (hex), tr= URLs, x.pe= peers of a magnet link;
- check_url_loopback(url) / check_target(...): refuse any tracker or peer outside 127.0.0.0/8;
- Progress: the common `progress:` / `result:` lines.
"""
import base64
import hashlib
import json
import sys
import time
import urllib.parse

from drvcommon import check_loopback, log, parse_addr


def bdecode(b, i=0):
    """Decodes the value at b[i:]; returns (value, end). Dict keys are bytes."""
    c = b[i : i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1 : j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while b[i : i + 1] != b"e":
            v, i = bdecode(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while b[i : i + 1] != b"e":
            k, i = bdecode(b, i)
            v, i = bdecode(b, i)
            out[k] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1 : j + 1 + n], j + 1 + n


def _info_span(data):
    """(start, end) of the exact bytes of the top-level `info` value."""
    i = 1
    while data[i : i + 1] != b"e":
        k, i = bdecode(data, i)
        start = i
        _, i = bdecode(data, i)
        if k == b"info":
            return start, i
    raise ValueError("no info dictionary")


def torrent_info_hash(path):
    data = open(path, "rb").read()
    s, e = _info_span(data)
    return hashlib.sha1(data[s:e]).hexdigest()


def torrent_trackers(path):
    meta, _ = bdecode(open(path, "rb").read())
    urls = []
    if b"announce" in meta:
        urls.append(meta[b"announce"].decode())
    for tier in meta.get(b"announce-list", []):
        for u in tier:
            u = u.decode()
            if u not in urls:
                urls.append(u)
    return urls


def torrent_is_private(path):
    meta, _ = bdecode(open(path, "rb").read())
    return meta.get(b"info", {}).get(b"private", 0) == 1


def check_url_loopback(url):
    """Exit 2 unless `url` is an http/udp URL whose host is in 127.0.0.0/8."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "udp") or not u.hostname:
        log("error: refusing tracker URL %r (http:// or udp:// on 127.0.0.0/8 only)" % url)
        sys.exit(2)
    check_loopback(u.hostname)


def parse_magnet(uri):
    """{'info_hash': hex, 'trackers': [...], 'peers': [(ip, port)], 'name': str|None}."""
    if not uri.startswith("magnet:?"):
        log("error: not a magnet link: %r" % uri)
        sys.exit(2)
    q = urllib.parse.parse_qs(uri[len("magnet:?") :], keep_blank_values=True)
    ih = None
    for xt in q.get("xt", []):
        if xt.lower().startswith("urn:btih:"):
            v = xt[len("urn:btih:") :]
            if len(v) == 40:
                ih = v.lower()
            elif len(v) == 32:
                ih = base64.b32decode(v.upper()).hex()
    if ih is None:
        log("error: magnet link has no v1 urn:btih: %r" % uri)
        sys.exit(2)
    return {
        "info_hash": ih,
        "trackers": q.get("tr", []),
        "peers": [parse_addr(p) for p in q.get("x.pe", [])],
        "name": (q.get("dn") or [None])[0],
    }


def check_target(target):
    """A .torrent path or a magnet link: every tracker and peer it names must be loopback.
    Returns ('magnet', parsed) or ('torrent', path)."""
    if target.startswith("magnet:"):
        m = parse_magnet(target)
        for t in m["trackers"]:
            check_url_loopback(t)
        return "magnet", m
    for t in torrent_trackers(target):
        check_url_loopback(t)
    return "torrent", target


class Progress:
    """`progress: FRACTION BYTES PEERS` about once a second; `result: {json}` at the end."""

    def __init__(self, quiet=False):
        self.t0 = time.monotonic()
        self.wall0 = time.time() - self.t0
        self.first_byte = None
        self.last = 0.0
        self.quiet = quiet

    def update(self, fraction, done_bytes, peers):
        now = time.monotonic()
        if self.first_byte is None and done_bytes > 0:
            self.first_byte = now
        if not self.quiet and now - self.last >= 1.0:
            print("progress: %.4f %d %d" % (fraction, done_bytes, peers), flush=True)
            self.last = now

    def finish(self, total, **extra):
        done = time.monotonic()
        fb = self.first_byte
        res = {
            "elapsed": done - self.t0,
            "first_byte": (fb - self.t0) if fb else None,
            "after_first_byte": (done - fb) if fb else None,
            "bytes": total,
            "first_byte_at": (self.wall0 + fb) if fb else None,
            "done_at": self.wall0 + done,
        }
        res.update(extra)
        print("progress: 1.0000 %d 0" % total, flush=True)
        print("result: " + json.dumps(res), flush=True)

    def elapsed(self):
        return time.monotonic() - self.t0
