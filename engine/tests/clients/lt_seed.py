#!/usr/bin/python3
"""A libtorrent SEEDER that behaves like `uring-bt seed` on its stdout.

usage: lt_seed.py TORRENT... --data DIR [--listen 127.0.0.x:PORT] [--timeout S] [--seed-mode]
                  [--rate BYTES_PER_S]

Checks DIR/<name> against each torrent (unless --seed-mode), then prints
`info_hash: <hex>` per torrent and `listening: <ip>:<port>` and serves until
SIGTERM/SIGINT (exit 0) or --timeout seconds (exit 0 too: the caller decides).
Exit 1 when the data is not complete, 3 when libtorrent is missing.
On stop it prints `uploaded: <bytes>` on stderr.

--rate caps the upload of each torrent (`torrent_handle.set_upload_limit`; the session's
`upload_rate_limit` is set to it too): loopback peers are in libtorrent's local peer class,
which the session limits do not reach, while a torrent's own limit applies to all its peers.
"""
import argparse
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltcommon  # noqa: E402
from ltcommon import lt, log  # noqa: E402
from drvcommon import install_stop_handlers, stopping  # noqa: E402

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrents", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--timeout", type=float, default=3600.0, help="serve at most this long")
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument(
        "--seed-mode", action="store_true", help="skip the start-up check (hashes lazily instead)"
    )
    ap.add_argument("--rate", type=int, default=0, help="upload limit per torrent, bytes per second")
    args = ap.parse_args()
    install_stop_handlers()
    if args.rate < 0:
        log("error: --rate must not be negative")
        return 2

    ip, port = ltcommon.parse_addr(args.listen)
    ses = ltcommon.make_session(
        ip,
        port,
        {
            "unchoke_slots_limit": 64,
            "connections_limit": 500,
            # a seeder should not go idle-close on slow test leechers
            "inactivity_timeout": 600,
            "upload_rate_limit": args.rate,
        },
    )
    handles = []
    for path in args.torrents:
        p = lt.add_torrent_params()
        p.ti = lt.torrent_info(path)
        p.save_path = args.data
        p.flags = ltcommon.torrent_flags_base()
        if args.seed_mode:
            p.flags |= lt.torrent_flags.seed_mode
        h = ses.add_torrent(p)
        if args.rate:
            h.set_upload_limit(args.rate)
        handles.append(h)

    deadline = time.monotonic() + args.check_timeout
    while not stopping():
        sts = [h.status() for h in handles]
        if all(s.state == lt.torrent_status.seeding or s.is_seeding for s in sts):
            break
        if any(s.errc.value() != 0 for s in sts):
            log("error: " + "; ".join(s.errc.message() for s in sts if s.errc.value()))
            return 1
        checking = any(
            s.state in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data)
            for s in sts
        )
        if not checking and any(not s.is_seeding for s in sts):
            log("error: data incomplete: progress " + ", ".join("%.4f" % s.progress for s in sts))
            return 1
        if time.monotonic() > deadline:
            log("error: check did not finish within %ss" % args.check_timeout)
            return 1
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
        # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
        time.sleep(100 / 1000)
        ltcommon.drain_errors(ses)

    port = ltcommon.wait_listen(ses, 10)
    for h in handles:
        print("info_hash: %s" % str(h.info_hashes().v1), flush=True)
    if args.rate:
        log("upload limit: %s bytes/s per torrent" % [h.upload_limit() for h in handles])
    print("listening: %s:%d" % (ip, port), flush=True)

    end = time.monotonic() + args.timeout
    while not stopping() and time.monotonic() < end:
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
        # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
        time.sleep(200 / 1000)
        ltcommon.drain_errors(ses)
    up = sum(h.status().total_payload_upload for h in handles)
    log("uploaded: %d" % up)
    return 0


if __name__ == "__main__":
    sys.exit(main())
