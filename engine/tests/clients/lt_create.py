#!/usr/bin/python3
"""Create a v1 .torrent with libtorrent (lt.create_torrent + set_piece_hashes).

usage: lt_create.py PATH -o OUT.torrent [--piece-length BYTES] [--hybrid]

Prints `info_hash: <hex>` (libtorrent's own view of the torrent it wrote).
v1-only by default (libtorrent 2.0 makes v1+v2 hybrids with BEP 47 pad files otherwise).
"""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ltcommon import lt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--piece-length", type=int, default=0)
    ap.add_argument("--hybrid", action="store_true")
    args = ap.parse_args()

    path = os.path.abspath(args.path)
    fs = lt.file_storage()
    lt.add_files(fs, path)
    if fs.num_files() == 0:
        sys.stderr.write("error: no files under %s\n" % path)
        return 2
    flags = 0 if args.hybrid else lt.create_torrent.v1_only
    ct = lt.create_torrent(fs, args.piece_length, flags=flags)
    ct.set_creator("uring-bt harness (libtorrent %s)" % lt.__version__)
    lt.set_piece_hashes(ct, os.path.dirname(path))
    data = lt.bencode(ct.generate())
    with open(args.output, "wb") as f:
        f.write(data)
    ti = lt.torrent_info(args.output)
    print("info_hash: %s" % str(ti.info_hashes().v1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
