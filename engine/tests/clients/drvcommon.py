"""Helpers every real-client driver shares (no third-party imports: libtorrent's live in ltcommon).

- log(): one line on stderr, flushed;
- check_loopback() / parse_addr(): refuse any address outside 127.0.0.0/8 (exit 2);
- free_port(): a port free on a loopback address;
- install_stop_handlers() / stopping(): SIGTERM and SIGINT ask the driver's loops to end.
"""
import signal
import socket
import sys

_stop = {"requested": False}


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def check_loopback(ip):
    parts = ip.split(".")
    if len(parts) != 4 or parts[0] != "127":
        log("error: refusing non-loopback address %r" % ip)
        sys.exit(2)


def parse_addr(s):
    ip, _, port = s.rpartition(":")
    check_loopback(ip)
    return ip, int(port)


def free_port(ip):
    """A port free on `ip` right now (a client about to listen there is told it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _on_signal(_sig, _frame):
    _stop["requested"] = True


def install_stop_handlers():
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def stopping():
    return _stop["requested"]
