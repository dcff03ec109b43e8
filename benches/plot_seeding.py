#!/usr/bin/python3
"""Seeding throughput and CPU per GiB against the number of leechers, for uring-bt and the
real seeders, measured in one run and drawn as an SVG (no plotting library needed).

For each seeder (uring-bt, libtorrent, rtorrent, aria2; rqbit too when installed), one after
the other, on the same cached payload (ext4 under --dir, read into the page cache before each
measurement):
- **our own peers** (--own, default 1,2,4,8,16): the seeder is started once, and
  `uring-bt bench swarm --against ADDR --torrent T --data PAYLOAD --seeder-pid PID --no-net`
  runs K cheap peers against it (the real wire protocol over real sockets; every 64th block
  compared with the payload; a peer the seeder keeps choked waits) and measures the seeder
  process: aggregate MB/s, CPU seconds per GiB served (utime+stime over the window);
- **python-libtorrent leechers** (--lt, default 1,4): `compare_seeders.py`'s own run (a fresh
  seeder, N leechers saving to tmpfs until each has the whole file; CPU from ready to done).

Writes the figures as JSON (--json), a markdown table (--md) and the plot (--svg): two panels,
MB/s and CPU s/GiB against leechers on a log2 axis; solid lines for our own peers, dashed for
libtorrent leechers. Seeder settings as in compare_seeders.py (its drivers: libtorrent with 64
unchoke slots, rtorrent 100 uploads, aria2 with its own fixed choker), and uring-bt with
`--upload-slots 64` so that no seeder here keeps one of 16 peers choked by configuration.

Loopback only; DHT, LSD, PEX, UPnP/NAT-PMP and uTP are off in every client. Every process
started here is killed by its process group on exit.

usage: /usr/bin/python3 benches/plot_seeding.py [--size-mib 1024] [--own 1,2,4,8,16] [--lt 1,4]
           [--seeders uring-bt,libtorrent,rtorrent,aria2[,rqbit]] [--duration 4] [--warmup 1]
           [--uring-bt PATH] [--dir /var/tmp/uring-bt-compare] [--svg docs/seeding.svg]
           [--json FILE] [--md FILE]
"""
import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_seeders as cs  # noqa: E402

COLORS = {"uring-bt": "#d62728", "libtorrent": "#1f77b4", "rtorrent": "#2ca02c",
          "aria2": "#ff7f0e", "rqbit": "#9467bd", "qbittorrent": "#8c564b"}


def own_peers(args, kind, payload, torrent, counts):
    """Starts `kind` once and runs bench swarm --against it with each count of peers."""
    workdir = os.path.join(args.dir, "plot-%s" % kind)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    cs.warm(payload)
    s = cs.Seeder(kind, cs.seeder_cmd(kind, args, torrent, os.path.dirname(payload), workdir),
                  workdir)
    out = []
    try:
        s.wait_ready(args.check_timeout)
        for k in counts:
            cs.warm(payload)
            cmd = [args.uring_bt, "bench", "swarm", "--against", s.addr, "--torrent", torrent,
                   "--data", payload, "--seeder-pid", str(s.pid), "--peers", str(k),
                   "--duration", str(args.duration), "--warmup", str(args.warmup),
                   "--no-net", "--json"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                # One failed point is reported (the table says "failed") and the run goes on.
                msg = p.stderr.strip().splitlines()[-1:] or ["(no output)"]
                cs.log("%s, %d own peers: bench swarm failed (exit %d): %s"
                       % (kind, k, p.returncode, msg[0]))
                out.append({"seeder": kind, "leechers": "own", "n": k, "mbps": None,
                            "cpu_per_gib": None, "error": msg[0]})
                continue
            j = json.loads(p.stdout)
            r = {"seeder": kind, "leechers": "own", "n": k, "mbps": j["mb_per_s"],
                 "cpu_per_gib": j["seeder"]["cpu_s_per_gib"], "unchoked": j["unchoked"],
                 "peak_rss_mib": j["seeder"]["peak_rss_kib"] / 1024.0,
                 "samples_checked": j["samples_checked"]}
            cs.log("%s, %d own peers: %.0f MB/s, %s CPU s/GiB, %d unchoked"
                   % (kind, k, r["mbps"], cs.fmt(r["cpu_per_gib"], ".3f"), r["unchoked"]))
            out.append(r)
    finally:
        s.stop()
    return out


def lt_leechers(args, kind, payload, torrent, size, n):
    args.leechers = n
    r = cs.run_one(kind, args, payload, torrent, size, args.dir)
    cs.log("%s, %d libtorrent leechers: %.0f MB/s, %s CPU s/GiB"
           % (kind, n, r["mbps"], cs.fmt(r["cpu_per_gib"], ".3f")))
    return {"seeder": kind, "leechers": "libtorrent", "n": n, "mbps": r["mbps"],
            "cpu_per_gib": r["cpu_per_gib"], "peak_rss_mib": r["vmhwm_mib"],
            "wall_s": r["wall_s"]}


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_max(v):
    """A round upper bound for an axis at or above v."""
    if v <= 0:
        return 1.0
    e = 10 ** len(str(int(v))) / 10.0
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def svg(rows, seeders, title, subtitle):
    """Two panels (MB/s, CPU s/GiB) against leechers, log2 x axis."""
    pw, ph, ml, mt, mb, gap = 420, 300, 64, 70, 50, 70
    width = ml + pw + gap + ml + pw + 150
    height = mt + ph + mb + 20
    xs = sorted({r["n"] for r in rows})
    lo, hi = min(xs), max(xs)

    def xpos(x0, n):
        if hi == lo:
            return x0 + pw / 2
        return x0 + 20 + (pw - 40) * (math.log2(n) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))

    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="12">' % (width, height),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>' % (ml, esc(title)),
         '<text x="%d" y="42" fill="#555">%s</text>' % (ml, esc(subtitle))]
    panels = (("mbps", "aggregate MB/s served"), ("cpu_per_gib", "seeder CPU s per GiB served"))
    for i, (key, label) in enumerate(panels):
        x0 = ml + i * (pw + gap + ml)
        vals = [r[key] for r in rows if r.get(key) is not None]
        ymax = nice_max(max(vals) * 1.05 if vals else 1.0)

        def ypos(v):
            return mt + ph - ph * v / ymax
        o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>'
                 % (x0, mt, pw, ph))
        o.append('<text x="%d" y="%d" font-weight="bold">%s</text>' % (x0, mt - 8, esc(label)))
        for t in range(6):
            v = ymax * t / 5
            y = ypos(v)
            o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (x0, y, x0 + pw, y))
            o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>'
                     % (x0 - 6, y + 4, ("%.0f" % v) if ymax >= 10 else ("%.2f" % v)))
        for n in xs:
            x = xpos(x0, n)
            o.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>' % (x, mt, x, mt + ph))
            o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (x, mt + ph + 16, n))
        o.append('<text x="%d" y="%d" text-anchor="middle">leechers</text>'
                 % (x0 + pw / 2, mt + ph + 34))
        for kind in seeders:
            c = COLORS.get(kind, "#000")
            for who, dash, marker in (("own", "", "c"), ("libtorrent", "6,4", "s")):
                pts = [(xpos(x0, r["n"]), ypos(r[key])) for r in
                       sorted((r for r in rows if r["seeder"] == kind and r["leechers"] == who
                               and r.get(key) is not None), key=lambda r: r["n"])]
                if len(pts) > 1:
                    o.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'
                             % (c, (' stroke-dasharray="%s"' % dash) if dash else "",
                                " ".join("%.1f,%.1f" % p for p in pts)))
                for x, y in pts:
                    if marker == "c":
                        o.append('<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>' % (x, y, c))
                    else:
                        o.append('<rect x="%.1f" y="%.1f" width="7" height="7" fill="white" '
                                 'stroke="%s" stroke-width="2"/>' % (x - 3.5, y - 3.5, c))
    lx = ml + 2 * pw + gap + ml + 16
    y = mt + 6
    for kind in seeders:
        o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>'
                 % (lx, y, lx + 22, y, COLORS.get(kind, "#000")))
        o.append('<text x="%d" y="%d">%s</text>' % (lx + 28, y + 4, esc(kind)))
        y += 20
    y += 10
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="2"/>'
             % (lx, y, lx + 22, y))
    o.append('<circle cx="%d" cy="%d" r="3.5" fill="#333"/>' % (lx + 11, y))
    o.append('<text x="%d" y="%d">our own peers</text>' % (lx + 28, y + 4))
    y += 20
    o.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="2" '
             'stroke-dasharray="6,4"/>' % (lx, y, lx + 22, y))
    o.append('<rect x="%d" y="%d" width="7" height="7" fill="white" stroke="#333" '
             'stroke-width="2"/>' % (lx + 7.5, y - 3.5))
    o.append('<text x="%d" y="%d">libtorrent</text>' % (lx + 28, y + 4))
    o.append('<text x="%d" y="%d">leechers</text>' % (lx + 28, y + 18))
    o.append("</svg>")
    return "\n".join(o) + "\n"


def markdown(rows, seeders, counts_own, counts_lt):
    cols = [("own", n) for n in counts_own] + [("libtorrent", n) for n in counts_lt]
    head = "| seeder | " + " | ".join(
        "%d %s" % (n, "own" if w == "own" else "lt") for w, n in cols) + " |"
    out = ["MB/s, CPU s/GiB served (own = peers of `bench swarm --against`, lt = "
           "python-libtorrent leechers):", "", head, "|---|" + "---:|" * len(cols)]
    for kind in seeders:
        cells = []
        for w, n in cols:
            r = next((r for r in rows if r["seeder"] == kind and r["leechers"] == w
                      and r["n"] == n), None)
            if r is None:
                cells.append("-")
            elif r.get("error"):
                cells.append("failed")
            else:
                cells.append("%.0f, %s" % (r["mbps"], cs.fmt(r["cpu_per_gib"], ".2f")))
        out.append("| %s | %s |" % (kind, " | ".join(cells)))
    errors = [r for r in rows if r.get("error")]
    if errors:
        out.append("")
        out += ["- %s, %d own peers failed: %s" % (r["seeder"], r["n"], r["error"]) for r in errors]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--own", default="1,2,4,8,16")
    ap.add_argument("--lt", default="1,4")
    ap.add_argument("--seeders", default=None)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--dir", default="/var/tmp/uring-bt-compare")
    ap.add_argument("--uring-bt", default=None)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--svg", default=os.path.join(cs.REPO, "docs", "seeding.svg"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    try:
        counts_own = [int(x) for x in args.own.split(",") if x.strip()]
        counts_lt = [int(x) for x in args.lt.split(",") if x.strip()]
    except ValueError:
        cs.die("--own and --lt take comma lists of numbers")
    if any(not 1 <= n <= 64 for n in counts_own) or any(not 1 <= n <= 16 for n in counts_lt):
        cs.die("--own counts must be 1..64, --lt counts 1..16")
    if args.uring_bt is None:
        tgt = os.environ.get("CARGO_TARGET_DIR") or os.path.join(cs.REPO, "target")
        args.uring_bt = os.path.join(tgt, "release", "uring-bt")
    if not os.access(args.uring_bt, os.X_OK):
        cs.die("%s is not built: cargo build --release -p uring-bt (or pass --uring-bt)"
               % args.uring_bt)
    if args.seeders:
        seeders = [s.strip() for s in args.seeders.split(",") if s.strip()]
    else:
        seeders = ["uring-bt", "libtorrent", "rtorrent", "aria2"] + (
            ["rqbit"] if cs.rqbit_exe() else [])
    for s in seeders:
        if s not in cs.ALL_SEEDERS:
            cs.die("unknown seeder %r" % s)
    # Fields compare_seeders.run_one and seeder_cmd read.
    args.variants = {"uring-bt": ["--upload-slots", "64"]}
    args.keep = False
    os.makedirs(args.dir, exist_ok=True)
    if cs.fs_type(args.dir) in ("tmpfs", "ramfs"):
        cs.die("%s is on tmpfs: put the payload on ext4 (e.g. under /var/tmp)" % args.dir)
    size = args.size_mib * cs.MIB
    args.leech_dir = args.dir
    if cs.fs_type("/dev/shm") == "tmpfs":
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > size * max(counts_lt or [1]) + cs.GIB:
            args.leech_dir = "/dev/shm/uring-bt-plot-leech"
            cs.scratch.append(args.leech_dir)
    os.makedirs(args.leech_dir, exist_ok=True)
    data = os.path.join(args.dir, "data")
    os.makedirs(data, exist_ok=True)
    payload = os.path.join(data, "payload-%dmib.bin" % args.size_mib)
    torrent = os.path.join(args.dir, "payload-%dmib-%dk.torrent" % (args.size_mib, args.piece_kib))
    cs.ensure_payload(payload, size)
    cs.ensure_torrent(payload, torrent, args.piece_kib * 1024)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    try:
        for kind in seeders:
            rows += own_peers(args, kind, payload, torrent, counts_own)
            for n in counts_lt:
                rows.append(lt_leechers(args, kind, payload, torrent, size, n))
    finally:
        cs.cleanup()
    v = cs.versions()
    git = subprocess.run(["git", "-C", cs.REPO, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    subtitle = "%d MiB cached on ext4, loopback, %s, kernel %s, %d CPUs, git %s" % (
        args.size_mib, started, platform.release(), os.cpu_count() or 0, git)
    pic = svg(rows, seeders, "Seeding one torrent: throughput and CPU against leechers", subtitle)
    with open(args.svg, "w") as f:
        f.write(pic)
    md = "%s; %s\n\n%s" % (subtitle, ", ".join("%s %s" % kv for kv in sorted(v.items())),
                            markdown(rows, seeders, counts_own, counts_lt))
    print(md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"when": started, "subtitle": subtitle, "versions": v, "rows": rows}, f,
                      indent=1)
    cs.log("wrote %s" % args.svg)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cs.cleanup()
        sys.exit(130)
