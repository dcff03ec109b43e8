#!/bin/sh
# Side-by-side downloading benchmark (see compare_leechers.py --help). Needs Debian's python3
# with python3-libtorrent, rtorrent, aria2, opentracker, util-linux (fincore), vmtouch;
# uring-bt in release mode:
#   cargo build --release -p uring-bt && benches/compare_leechers.sh --size-mib 2048 --runs 2
#   benches/compare_leechers.sh --sizes 1024,8192      # uring-bt's peak RSS against the size
exec /usr/bin/python3 "$(dirname "$0")/compare_leechers.py" "$@"
