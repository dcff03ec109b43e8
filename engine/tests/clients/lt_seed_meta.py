#!/usr/bin/python3
"""A libtorrent SEEDER that also serves the metadata (BEP 9) and announces to trackers: the
reference for the magnet and tracker tests (lt_seed.py's session has no ut_metadata, so a
magnet leecher never gets the metadata from it).

usage: lt_seed_meta.py TORRENT... --data DIR [--listen 127.0.0.x:PORT] [--tracker URL]...
                       [--reannounce S] [--timeout S]

Same session as lt_seed.py (ltcommon: no DHT/LSD/PEX/UPnP/NAT-PMP/uTP, one 127.0.0.x) plus
libtorrent's ut_metadata extension. --tracker adds announce URLs to every torrent (outside
the info dict: the info hash does not change); the torrent's own trackers are kept.
--reannounce S re-announces every S seconds (ignoring the tracker's min interval), so that
peers which announced after it are learnt and dialed. Checks DIR/<name> fully first, then
prints per torrent `info_hash: <hex>` and `magnet: <link>` (xt, dn, tr=, x.pe=<listen addr>),
then `listening: <ip>:<port>`, and serves until SIGTERM/SIGINT (exit 0) or --timeout.
On stop it prints `uploaded: <bytes>` on stderr. Exit 1 when the data is not complete,
2 on a non-loopback address, 3 when libtorrent is missing.
"""
import argparse
import os
import sys
import time
import urllib.parse

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ltcommon  # noqa: E402
from ltcommon import lt, log  # noqa: E402
from drvcommon import install_stop_handlers, stopping  # noqa: E402
from trackcommon import check_url_loopback, torrent_trackers  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrents", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--tracker", action="append", default=[])
    ap.add_argument("--reannounce", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--check-timeout", type=float, default=600.0)
    args = ap.parse_args()
    install_stop_handlers()
    for t in args.tracker:
        check_url_loopback(t)
    for path in args.torrents:
        for t in torrent_trackers(path):
            check_url_loopback(t)

    ip, port = ltcommon.parse_addr(args.listen)
    ses = ltcommon.make_session(
        ip,
        port,
        {
            "unchoke_slots_limit": 64,
            "connections_limit": 500,
            "inactivity_timeout": 600,
            "announce_to_all_trackers": True,
            "announce_to_all_tiers": True,
            "alert_mask": lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.storage_notification
            | lt.alert.category_t.tracker_notification,
        },
    )
    ses.add_extension("ut_metadata")
    handles = []
    for path in args.torrents:
        p = lt.add_torrent_params()
        p.ti = lt.torrent_info(path)
        p.save_path = args.data
        p.flags = ltcommon.torrent_flags_base()
        p.trackers = list(args.tracker)
        handles.append(ses.add_torrent(p))

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
        time.sleep(100 / 1000)
        log_alerts(ses)

    port = ltcommon.wait_listen(ses, 10)
    for h in handles:
        print("info_hash: %s" % str(h.info_hashes().v1), flush=True)
        link = lt.make_magnet_uri(h)
        if "tr=" not in link:
            for t in args.tracker:
                link += "&tr=" + urllib.parse.quote(t, safe="")
        print("magnet: %s&x.pe=%s:%d" % (link, ip, port), flush=True)
    print("listening: %s:%d" % (ip, port), flush=True)

    end = time.monotonic() + args.timeout
    last = time.monotonic()
    while not stopping() and time.monotonic() < end:
        time.sleep(200 / 1000)
        if args.reannounce > 0 and time.monotonic() - last >= args.reannounce:
            for h in handles:
                h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            last = time.monotonic()
        log_alerts(ses)
    up = sum(h.status().total_payload_upload for h in handles)
    log("uploaded: %d" % up)
    # a clean stop sends `stopped` to the trackers (bounded by libtorrent's stop timeout)
    ses.pause()
    for h in handles:
        ses.remove_torrent(h)
    return 0


def log_alerts(ses):
    for a in ses.pop_alerts():
        if isinstance(a, (lt.tracker_reply_alert, lt.tracker_error_alert, lt.tracker_warning_alert)):
            log("lt tracker: %s" % a.message())
        elif a.category() & lt.alert.category_t.error_notification:
            log("lt: " + a.message())


if __name__ == "__main__":
    sys.exit(main())
