#!/usr/bin/python3
"""A libtorrent LEECHER started from a magnet link alone (no .torrent).

usage: lt_magnet.py MAGNET --save DIR --bind 127.0.0.x [--timeout S] [--reannounce S]
                    [--tracker-only] [--tracker URL] [--plaintext] [--quiet]

`lt.parse_magnet_uri` gives the info hash, the trackers (tr=) and the peers (x.pe=; dropped
with --tracker-only). The session has libtorrent's ut_metadata extension (BEP 9), the rest is
ltcommon's (no DHT/LSD/PEX/UPnP/NAT-PMP/uTP, one 127.0.0.x). Waits for the metadata, then for
completion, both within --timeout. Prints `info_hash:`, `listening: IP:PORT`, `progress:` lines
and `result: {json}` (with `metadata`: seconds until the metadata arrived). Exit 0 once the
torrent is complete (every piece hash-checked), 1 on timeout/error, 2 on a non-loopback
address, 3 when libtorrent is missing.
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ltcommon import lt  # noqa: E402
import lttrack  # noqa: E402
from trackcommon import parse_magnet  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("magnet")
    lttrack.add_common_args(ap)
    ap.add_argument("--tracker-only", action="store_true", help="ignore the magnet's x.pe= peers")
    args = ap.parse_args()
    parse_magnet(args.magnet)  # refuses what is not a magnet with a v1 btih, non-loopback x.pe
    p = lt.parse_magnet_uri(args.magnet)
    if args.tracker_only:
        p.peers = []
    return lttrack.run(args, p, metadata=True)


if __name__ == "__main__":
    sys.exit(main())
