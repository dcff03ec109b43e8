#!/usr/bin/python3
"""A libtorrent LEECHER held to a download rate, so that its transfer lasts a while, and that
says which connections it holds: for tests that do something to the seeder mid-transfer
(engine/tests/supervise.rs restarts a shard of it and checks this transfer goes on).

usage: lt_leech_paced.py TORRENT --save DIR --peer IP:PORT --bind 127.0.0.x --rate BYTES_PER_S
                         [--timeout S] [--plaintext]

Prints about every 0.5 s on stdout
  `progress: <0..1> <bytes checked> <peers> <wall clock s> <payload bytes received> <conns>`
where <conns> is a comma-separated list of the connected peers' `local_port>ip:port` ("-" for
none): a connection that dropped and came back shows up with another local port. At the end
`result: {json}` as lt_leech.py does. Exit 0 once the torrent is complete (every piece
hash-checked: state seeding), 1 on timeout or a torrent error, 2 on bad arguments, 3 when
libtorrent is missing.

The rate is the torrent's own download limit (`torrent_handle.set_download_limit`): the
session's limits would not apply, loopback peers are in libtorrent's unlimited local class.
Facts learned (python3-libtorrent 2.0.8): the limiter grants a peer its quota for all the
bytes it has requested at once, and libtorrent's request queue grows (slow start) up to the
seeder's advertised `reqq` (`max_out_request_queue` does not cap it); against a seeder that
allows ~1,000 queued requests the payload arrives in bursts of 16 MiB with stalls of 3-4 s
between them at 4 MiB/s. A seeder advertising `reqq` 32 (`uring-bt seed --reqq 32`) keeps
the bursts at 512 KiB: progress every 0.5 s.
"""
import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltcommon  # noqa: E402
from ltcommon import lt, log  # noqa: E402


def conns(h):
    out = []
    for p in h.get_peer_info():
        if p.flags & lt.peer_info.connecting or p.flags & lt.peer_info.handshake:
            continue
        ip, port = p.ip
        out.append("%d>%s:%d" % (p.local_endpoint[1], ip, port))
    return ",".join(sorted(out)) or "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("--save", required=True)
    ap.add_argument("--peer", action="append", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--rate", type=int, required=True, help="download limit, bytes per second")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--plaintext", action="store_true", help="no MSE/PE encryption")
    args = ap.parse_args()
    if args.rate <= 0:
        log("error: --rate must be positive")
        return 2

    peers = [ltcommon.parse_addr(p) for p in args.peer]
    t0 = time.monotonic()
    wall0 = time.time() - t0
    extra = {
        "inactivity_timeout": 120,
        "peer_connect_timeout": 5,
        "max_failcount": 1000,
        "min_reconnect_time": 1,
    }
    if args.plaintext:
        extra["out_enc_policy"] = lt.enc_policy.disabled
        extra["in_enc_policy"] = lt.enc_policy.disabled
    ses = ltcommon.make_session(args.bind, 0, extra)
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(args.torrent)
    p.save_path = args.save
    p.flags = ltcommon.torrent_flags_base()
    h = ses.add_torrent(p)
    h.set_download_limit(args.rate)
    total = p.ti.total_size()

    deadline = t0 + args.timeout
    last_print = 0.0
    last_dial = 0.0
    first_byte = None
    while True:
        now = time.monotonic()
        s = h.status()
        if s.errc.value() != 0:
            log("error: torrent error: %s" % s.errc.message())
            return 1
        if first_byte is None and s.total_payload_download > 0:
            first_byte = now
        if s.is_seeding or s.state == lt.torrent_status.seeding:
            break
        if now > deadline:
            log(
                "error: timeout after %.1fs: progress %.4f, %d peers, state %s"
                % (now - t0, s.progress, s.num_peers, s.state)
            )
            return 1
        if s.num_peers == 0 and now - last_dial > 2.0:
            for ip, port in peers:
                h.connect_peer((ip, port))
            last_dial = now
        if now - last_print >= 0.5:
            print(
                "progress: %.4f %d %d %.3f %d %s"
                % (
                    s.progress,
                    s.total_wanted_done,
                    s.num_peers,
                    wall0 + now,
                    s.total_payload_download,
                    conns(h),
                ),
                flush=True,
            )
            last_print = now
        # Not ses.wait_for_alert: see lt_leech.py (python3-libtorrent 2.0.8 crash).
        time.sleep(50 / 1000)
        ltcommon.drain_errors(ses)

    done = time.monotonic()
    s = h.status()
    ses.remove_torrent(h)
    rm_deadline = time.monotonic() + 30
    removed = False
    while not removed and time.monotonic() < rm_deadline:
        time.sleep(200 / 1000)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_removed_alert):
                removed = True
    res = {
        "elapsed": done - t0,
        "first_byte": (first_byte - t0) if first_byte else None,
        "after_first_byte": (done - first_byte) if first_byte else None,
        "bytes": total,
        "downloaded": s.total_payload_download,
        "first_byte_at": (wall0 + first_byte) if first_byte else None,
        "done_at": wall0 + done,
    }
    print("result: " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
