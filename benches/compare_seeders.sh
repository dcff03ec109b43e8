#!/bin/sh
# Side-by-side seeding benchmark (see compare_seeders.py --help). Needs Debian's python3 with
# python3-libtorrent, rtorrent, aria2, util-linux (fincore), vmtouch; uring-bt in release mode:
#   cargo build --release && benches/compare_seeders.sh --size-mib 2048
exec /usr/bin/python3 "$(dirname "$0")/compare_seeders.py" "$@"
