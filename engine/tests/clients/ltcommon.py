"""Shared helpers for the python3-libtorrent drivers (run with Debian's /usr/bin/python3).

Every session made here is loopback-only: DHT, LSD, UPnP, NAT-PMP, PEX (no default
plugins + the per-torrent disable_pex flag) and uTP are off, and the session listens
and dials from one given 127.0.0.x address.
"""
import sys
import time

from drvcommon import check_loopback, log, parse_addr  # noqa: F401 (parse_addr re-exported)

try:
    import libtorrent as lt
except ImportError as e:  # pragma: no cover - reported to the Rust side as a clear failure
    sys.stderr.write(
        "error: python3-libtorrent is not importable (%s); install Debian's python3-libtorrent "
        "and run this script with /usr/bin/python3\n" % e
    )
    sys.exit(3)


def make_session(bind_ip, port=0, extra=None):
    """A session bound to bind_ip:port (port 0: any free port) with every discovery off."""
    check_loopback(bind_ip)
    settings = {
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "listen_interfaces": "%s:%d" % (bind_ip, port),
        "outgoing_interfaces": bind_ip,
        "allow_multiple_connections_per_ip": True,
        # loopback peers are "local": no rate limits apply to them anyway
        "ignore_limits_on_local_network": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.storage_notification,
        "user_agent": "uring-bt-harness",
    }
    if extra:
        settings.update(extra)
    # flags=0: no default plugins (no ut_pex, no ut_metadata, no smart_ban).
    return lt.session(settings, 0)


def torrent_flags_base():
    f = lt.torrent_flags
    return f.disable_dht | f.disable_lsd | f.disable_pex


def wait_listen(ses, timeout):
    """Block until the session is listening on TCP; return the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
        # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
        time.sleep(200 / 1000)
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_failed_alert):
                sys.stderr.write("error: listen failed: %s\n" % a.message())
                sys.exit(2)
        port = ses.listen_port()
        if port:
            return port
    sys.stderr.write("error: session did not start listening within %ss\n" % timeout)
    sys.exit(1)


def drain_errors(ses):
    for a in ses.pop_alerts():
        if a.category() & lt.alert.category_t.error_notification:
            log("lt: " + a.message())
