#!/usr/bin/python3
"""A libtorrent LEECHER that downloads one torrent from given peers on loopback.

usage: lt_leech.py TORRENT --save DIR --peer IP:PORT [--peer ...] --bind 127.0.0.x
                   [--timeout S] [--quiet]

Prints `progress: <0..1> <bytes> <peers>` about once a second on stdout, and at the end
`result: {json}` with elapsed/first-byte times. Exit 0 once the torrent is complete
(every piece hash-checked: state seeding), 1 on timeout or a torrent error,
2 on bad arguments, 3 when libtorrent is missing.
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    ap.add_argument("--save", required=True)
    ap.add_argument("--peer", action="append", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument(
        "--plaintext",
        action="store_true",
        help="no MSE/PE encryption: dial with a plain BitTorrent handshake (libtorrent's default "
        "first tries an encrypted one, and retries in plaintext when a seeder drops it)",
    )
    args = ap.parse_args()

    peers = [ltcommon.parse_addr(p) for p in args.peer]
    t0 = time.monotonic()
    wall0 = time.time() - t0  # wall clock = wall0 + monotonic (for cross-process timings)
    extra = {
        "inactivity_timeout": 120,
        "peer_connect_timeout": 5,
        # keep dialing the one seeder we were told about
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
        # (re)dial the seeder(s) whenever we have no connection: refused or closed
        # connections are retried, bounded by the deadline.
        if s.num_peers == 0 and now - last_dial > 2.0:
            for ip, port in peers:
                h.connect_peer((ip, port))
            last_dial = now
        if not args.quiet and now - last_print >= 1.0:
            print("progress: %.4f %d %d" % (s.progress, s.total_wanted_done, s.num_peers), flush=True)
            last_print = now
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
        # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
        time.sleep(100 / 1000)
        ltcommon.drain_errors(ses)

    done = time.monotonic()
    s = h.status()
    # Let the disk writes land and close the files before we report done.
    ses.remove_torrent(h)
    rm_deadline = time.monotonic() + 30
    removed = False
    while not removed and time.monotonic() < rm_deadline:
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
        # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
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
    print("progress: 1.0000 %d 0" % total, flush=True)
    print("result: " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
