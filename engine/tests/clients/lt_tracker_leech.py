#!/usr/bin/python3
"""A libtorrent LEECHER of a .torrent that knows only the torrent's tracker (no --peer).

usage: lt_tracker_leech.py TORRENT --save DIR --bind 127.0.0.x [--timeout S] [--reannounce S]
                           [--tracker URL] [--plaintext] [--quiet]

Same session and output as lt_magnet.py (see lttrack.py), without ut_metadata (the torrent
is given). Every announce URL must be on 127.0.0.0/8. Exit 0 once the torrent is complete
(every piece hash-checked), 1 on timeout/error, 2 on a non-loopback address, 3 when
libtorrent is missing.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ltcommon import lt  # noqa: E402
import lttrack  # noqa: E402
from trackcommon import check_target  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("torrent")
    lttrack.add_common_args(ap)
    args = ap.parse_args()
    check_target(args.torrent)  # every announce URL on loopback
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(args.torrent)
    # trackers come from the torrent's announce/announce-list (add_torrent_params has them
    # through ti); a --tracker is added on top
    return lttrack.run(args, p, metadata=False)


if __name__ == "__main__":
    sys.exit(main())
