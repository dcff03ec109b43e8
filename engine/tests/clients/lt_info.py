#!/usr/bin/python3
"""libtorrent as an oracle: what does libtorrent see in a .torrent (and in its data)?

usage: lt_info.py TORRENT [--check SAVE_DIR] [--timeout S]

Prints one JSON object on stdout: info_hash (v1, hex), name, piece_length, num_pieces,
total_size, num_files, files [{path, size, pad}] and, with --check, the result of a full
libtorrent hash check of SAVE_DIR/<name>: progress, is_seed, pieces_have.
Exit 0 when the torrent parses (and the check finished), 1 otherwise, 3 no libtorrent.
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
    ap.add_argument("--check")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    try:
        ti = lt.torrent_info(args.torrent)
    except RuntimeError as e:
        log("error: libtorrent rejects %s: %s" % (args.torrent, e))
        return 1
    fs = ti.files()
    files = []
    for i in range(fs.num_files()):
        files.append(
            {
                "path": fs.file_path(i),
                "size": fs.file_size(i),
                "pad": bool(fs.file_flags(i) & lt.file_storage.flag_pad_file),
            }
        )
    out = {
        "info_hash": str(ti.info_hashes().v1),
        "name": ti.name(),
        "piece_length": ti.piece_length(),
        "num_pieces": ti.num_pieces(),
        "total_size": ti.total_size(),
        "num_files": fs.num_files(),
        "files": files,
    }
    if args.check:
        ses = ltcommon.make_session("127.0.0.1", 0)
        p = lt.add_torrent_params()
        p.ti = ti
        p.save_path = args.check
        # upload_mode + paused-free: check the files, never fetch anything (no peers anyway)
        p.flags = ltcommon.torrent_flags_base() | lt.torrent_flags.upload_mode
        h = ses.add_torrent(p)
        deadline = time.monotonic() + args.timeout
        checked = False
        while not checked:
            for a in ses.pop_alerts():
                if isinstance(a, lt.torrent_checked_alert):
                    checked = True
                elif isinstance(a, lt.torrent_error_alert):
                    log("error: " + a.message())
                    return 1
            if checked:
                break
            if time.monotonic() > deadline:
                log("error: check did not finish within %ss" % args.timeout)
                return 1
            # Not ses.wait_for_alert: python3-libtorrent 2.0.8 wraps the alert it returns after
            # releasing its lock, and crashed (SIGSEGV) about once in 1,500 leecher runs.
            time.sleep(100 / 1000)
        s = h.status()
        out["progress"] = s.progress
        out["is_seed"] = bool(s.is_seeding)
        out["pieces_have"] = sum(1 for b in s.pieces if b)
    print(json.dumps(out), flush=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
