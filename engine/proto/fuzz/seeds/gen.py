#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (seeds/<target>/<name>) and the bencode dictionary.

scripts/fuzz-smoke passes seeds/<target> to libFuzzer as a read-only corpus beside the target's
own corpus/<target>, and dict/<target>.dict when present. Run again after changing a seed:
    python3 engine/proto/fuzz/seeds/gen.py
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def b(v):
    """Canonical bencode of ints, bytes, str, lists and dicts."""
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(b(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(b(k) + b(x) for k, x in items) + b"e"
    raise TypeError(v)


def msg(msg_id, payload=b""):
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def request(piece, begin, length, msg_id=6):
    return msg(msg_id, struct.pack(">III", piece, begin, length))


def handshake(reserved=bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])):
    return b"\x13BitTorrent protocol" + reserved + bytes([7] * 20) + bytes([9] * 20)


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


EXT_OURS = b(
    {"m": {}, "p": 6881, "reqq": 2000, "v": "uring-bt 0.1.0", "yourip": bytes([127, 0, 0, 2])}
)
EXT_LIBTORRENT = b(
    {
        "m": {"lt_donthave": 7, "share_mode": 8, "upload_only": 3, "ut_holepunch": 4,
              "ut_metadata": 2, "ut_pex": 1},
        "metadata_size": 31235,
        "p": 51413,
        "reqq": 500,
        "v": "qBittorrent/4.6.3",
        "yourip": bytes(15) + b"\x01",
        "complete_ago": 1,
        "upload_only": 0,
    }
)

# bencode
write("bencode", "dict", b(({"a": [1, -2, b"xy", {"b": []}], "info": {"x": 0}})))
write("bencode", "nested", b"l" * 30 + b"e" * 30)
write("bencode", "ints", b"li0ei-1ei9223372036854775807ei-9223372036854775808ee")

# metainfo
info_single = {"length": 40000, "name": "a.bin", "piece length": 16384,
               "pieces": hashlib.sha1(b"x").digest() * 3}
write("metainfo", "single", b({"announce": "http://t/a", "info": info_single}))
info_multi = {"files": [{"length": 5, "path": ["d", "x"]}, {"length": 20000, "path": ["y"]}],
              "name": "dir", "piece length": 16384, "pieces": bytes(40)}
write("metainfo", "multi", b({"announce-list": [["http://t/a"], ["udp://t:1"]], "info": info_multi,
                              "url-list": ["http://w/"]}))

# ext_handshake
write("ext_handshake", "ours", EXT_OURS)
write("ext_handshake", "libtorrent", EXT_LIBTORRENT)
# Regression: a `v` of invalid UTF-8 above EXT_MAX_V_LEN (lossy conversion broke the cap).
write("ext_handshake", "v-invalid-utf8", b"d1:v130:" + b"\xff" * 130 + b"e")

# ext: the whole input is a ut_metadata payload; its first byte is how many seconds pass
# between two deliveries of the rest as a ut_pex payload ("d" = 100 s, past the minimum
# interval); and [3 bytes of info dict length, then 2 bytes per request] for the metadata server.
write("ext", "metadata-request", b({"msg_type": 0, "piece": 1}))
write("ext", "metadata-reject", b({"msg_type": 2, "piece": 0}))
write("ext", "metadata-data", b({"msg_type": 1, "piece": 1, "total_size": 16390}) + b"sixbyt")
PEX = b({"added": bytes([10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0, 80]), "added.f": b"\x02\x10",
         "added6": bytes(15) + b"\x01" + b"\x1a\xe1", "added6.f": b"\x04",
         "dropped": bytes([10, 0, 0, 3, 0x1A, 0xE1]), "dropped6": b""})
write("ext", "pex", b"d" + PEX)
write("ext", "pex-too-soon", b"\x0a" + PEX)

# wire: one control byte (FAST, seed, chunk size), then a handshake and a message stream.
stream = (handshake() + msg(2) + request(0, 0, 16384) + request(1, 16384, 100)
          + request(0, 0, 16384, msg_id=8) + msg(20, b"\x00" + EXT_LIBTORRENT) + struct.pack(">I", 0)
          + msg(0x0E) + request(36, 0, 5000) + msg(4, struct.pack(">I", 3)))
write("wire", "seed-fast", bytes([0x03 | (7 << 2)]) + stream)


# session: header [flags, pieces - 1, reqq - 1, (high water - 1) / 16, c0, c1, c2, tick], then
# steps of [op byte, chunk of 1 + 4 * c[step % 3] bytes] (the first step uses c1).
def session(header, chunks_data):
    out = bytes(header)
    for op, data in chunks_data:
        out += bytes([op]) + data
    return out


def split_steps(data, header, ops):
    c = header[4:7]
    steps, at, step = [], 0, 1
    while at < len(data):
        n = 1 + 4 * c[step % 3]
        steps.append((ops.get(step, 0), data[at:at + n]))
        at += n
        step += 1
    return steps


# A peer that asks and cancels while unchoked, the server serving and refusing.
basic = (msg(2) + b"".join(request(p, 0, 16384) for p in range(3)) + request(0, 0, 16384, msg_id=8)
         + msg(20, b"\x00" + EXT_OURS) + struct.pack(">I", 0) + request(9, 0, 1) + msg(3))
hdr = [0x07, 3, 7, 20, 3, 0, 5, 4]
write("session", "basic", session(hdr, split_steps(basic, hdr, {1: 0x10, 2: 0x03, 3: 0x0D, 4: 0x37})))

# The documented-bound overshoot: reqq 64 requests queued, 58 CANCEL+REQUEST pairs (58 REJECTs),
# one request over reqq (REJECT): decoding pauses 10 bytes above the high-water mark of 993 with
# the queue full, and the choker's CHOKE then rejects all 64: 2,096 bytes queued, over
# max_control_bytes (2,086). Passes by default; crashes with --features strict-control-bound.
blk = lambda i: (i % 3, 0, 1000)
flood = b"".join(request(*blk(i)) for i in range(64))
flood += b"".join(request(*blk(i), msg_id=8) + request(*blk(i)) for i in range(58))
flood += request(*blk(0))
hdr = [0x07, 3, 63, 62, 255, 0, 255, 0]
steps = split_steps(flood, hdr, {1: 0x10})
# The choker acts in the step whose chunk completes the last request.
steps[-1] = (0x30, steps[-1][1])
write("session", "choke-after-pause", session(hdr, steps))

# The bencode tokens and keys the parsers look for.
os.makedirs(os.path.join(HERE, "..", "dict"), exist_ok=True)
tokens = ["d", "e", "l", "i", "i0e", "i-1e", "0:", "1:", "de", "le", "d1:md", "1:m", "1:v", "1:p",
          "4:reqq", "6:yourip", "13:metadata_size", "11:ut_metadata", "6:ut_pex", "4:info",
          "4:name", "6:length", "12:piece length", "6:pieces", "5:files", "4:path", "8:announce",
          "13:announce-list", "8:url-list", "7:private", "4:attr", "8:msg_type", "5:piece",
          "10:total_size", "5:added", "7:added.f", "6:added6", "8:added6.f", "7:dropped",
          "8:dropped6"]
with open(os.path.join(HERE, "..", "dict", "bencode.dict"), "w") as f:
    f.write("# bencode tokens and the keys uring-bt-proto reads (libFuzzer -dict format)\n")
    for t in tokens:
        f.write('"%s"\n' % t.replace("\\", "\\\\").replace('"', '\\"'))
for target in ["ext_handshake", "metainfo", "ext"]:
    link = os.path.join(HERE, "..", "dict", target + ".dict")
    if not os.path.lexists(link):
        os.symlink("bencode.dict", link)
