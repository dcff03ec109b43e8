"""The libtorrent leecher loop shared by lt_magnet.py and lt_tracker_leech.py: a leecher
that finds its peers through a tracker (and a magnet's x.pe=), never through --peer.

The session is ltcommon's (DHT, LSD, UPnP, NAT-PMP, uTP, PEX off; listening and dialing on
one 127.0.0.x), plus, for magnets, libtorrent's ut_metadata extension (BEP 9: the session is
made with no default plugins, and without it a magnet never gets its metadata).
While it has no peer it re-announces every --reannounce seconds, ignoring the tracker's
min interval (opentracker's is ~15 min), so a seeder that announces after it is found.
"""
import time

import ltcommon
from ltcommon import lt, log
from drvcommon import check_loopback, stopping
from trackcommon import Progress, check_url_loopback


def add_common_args(ap):
    ap.add_argument("--save", required=True)
    ap.add_argument("--bind", default="127.0.0.2")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--reannounce", type=float, default=3.0,
                    help="re-announce this often while no peer is connected")
    ap.add_argument("--tracker", action="append", default=[], help="add this announce URL")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--plaintext", action="store_true", help="no MSE/PE encryption")


def make_session(args, metadata):
    check_loopback(args.bind)
    extra = {
        "inactivity_timeout": 120,
        "peer_connect_timeout": 5,
        "max_failcount": 1000,
        "min_reconnect_time": 1,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "tracker_completion_timeout": 10,
        "tracker_receive_timeout": 5,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.storage_notification
        | lt.alert.category_t.tracker_notification,
    }
    if args.plaintext:
        extra["out_enc_policy"] = lt.enc_policy.disabled
        extra["in_enc_policy"] = lt.enc_policy.disabled
    ses = ltcommon.make_session(args.bind, 0, extra)
    if metadata:
        ses.add_extension("ut_metadata")
    return ses


def log_alerts(ses):
    for a in ses.pop_alerts():
        if isinstance(a, lt.tracker_reply_alert):
            log("lt tracker: %s" % a.message())
        elif isinstance(a, (lt.tracker_error_alert, lt.tracker_warning_alert)):
            log("lt tracker: %s" % a.message())
        elif isinstance(a, lt.metadata_received_alert):
            log("lt: metadata received")
        elif a.category() & lt.alert.category_t.error_notification:
            log("lt: " + a.message())


def trackers(h):
    out = []
    try:
        for t in h.trackers():
            eps = [(e.get("message", ""), e.get("fails", 0)) for e in t.get("endpoints", [])]
            out.append((t.get("url"), eps))
    except Exception as e:  # noqa: BLE001 - diagnostics only
        out.append(repr(e))
    return out


def run(args, params, metadata):
    """Adds `params` (save path and flags are set here) and leeches it. Returns the exit code."""
    for t in args.tracker:
        check_url_loopback(t)
    for t in params.trackers:
        check_url_loopback(t)
    for ip, _port in params.peers:
        check_loopback(ip)
    prog = Progress(args.quiet)
    ses = make_session(args, metadata)
    port = ltcommon.wait_listen(ses, 10)
    params.save_path = args.save
    params.flags = ltcommon.torrent_flags_base()
    if args.tracker:
        params.trackers = list(params.trackers) + list(args.tracker)
    h = ses.add_torrent(params)
    ih = str(h.info_hashes().v1)
    print("info_hash: %s" % ih, flush=True)
    print("listening: %s:%d" % (args.bind, port), flush=True)

    deadline = prog.t0 + args.timeout
    last_announce = time.monotonic()
    metadata_at = None
    while True:
        now = time.monotonic()
        if stopping():
            return 1
        s = h.status()
        if s.errc.value() != 0:
            log("error: torrent error: %s" % s.errc.message())
            return 1
        if metadata_at is None and s.has_metadata:
            metadata_at = now
            if metadata:
                log("lt: metadata after %.1f s" % (now - prog.t0))
        if s.is_seeding or s.state == lt.torrent_status.seeding:
            break
        if now > deadline:
            log(
                "error: timeout after %.1fs: progress %.4f, %d peers, state %s, metadata %s, trackers %s"
                % (now - prog.t0, s.progress, s.num_peers, s.state, s.has_metadata, trackers(h))
            )
            return 1
        if s.num_peers == 0 and now - last_announce > args.reannounce:
            h.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            last_announce = now
        prog.update(s.progress, s.total_wanted_done, s.num_peers)
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 crashed in it (see ltcommon).
        time.sleep(100 / 1000)
        log_alerts(ses)

    s = h.status()
    total = h.torrent_file().total_size()
    # Let the disk writes land and close the files before we report done.
    ses.remove_torrent(h)
    rm_deadline = time.monotonic() + 30
    removed = False
    while not removed and time.monotonic() < rm_deadline:
        time.sleep(200 / 1000)
        for a in ses.pop_alerts():
            if isinstance(a, lt.torrent_removed_alert):
                removed = True
    prog.finish(
        total,
        downloaded=s.total_payload_download,
        metadata=(metadata_at - prog.t0) if metadata_at else None,
    )
    return 0

