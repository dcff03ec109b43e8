#!/usr/bin/python3
"""Side-by-side seeding benchmark on loopback: uring-bt against real seeders.

Seeds the same file (default 2 GiB, 1 MiB pieces) from each seeder in turn to the same
four python-libtorrent leechers (each on its own 127.0.0.x, plaintext handshakes: no MSE/PE,
so that no seeder pays for encryption or for libtorrent's encrypted-then-plain retry), and
reports per seeder:
seconds until all leechers finish, aggregate MB/s (and after the first byte), the seeder's
CPU seconds per GiB served (utime+stime from /proc/<pid>/stat, counted from the moment it is
ready to serve: its start-up hash check is excluded), its peak RSS (VmHWM) and anonymous RSS
just before it stops, and the most descriptors it had open (sampled every 50 ms). Beside them,
to tell a seeder that starves leechers from one that leaves cores idle: when the first and the
last leecher finished, the leechers' own CPU seconds, and the machine's idle share during the run.

The leechers save into tmpfs (/dev/shm, when it has room; --leech-dir elsewhere), so that
their own CPU, not this machine's disk, limits them. The payload lives on ext4 under /var/tmp (never tmpfs: io_uring reads of tmpfs go to worker
threads), is read into the page cache right before each run (vmtouch -t) and its residency is
reported (fincore) before and after each run.

Loopback only; DHT, LSD, PEX, UPnP/NAT-PMP and uTP are off in every client (see the drivers in
engine/tests/clients/). Every process started here is killed by its process group on exit.

usage: /usr/bin/python3 benches/compare_seeders.py [--size-mib 2048] [--piece-kib 1024]
           [--leechers 4] [--seeders uring-bt,libtorrent,rtorrent,aria2] [--runs 1]
           [--dir /var/tmp/uring-bt-compare] [--leech-dir DIR] [--uring-bt PATH]
           [--out FILE.md] [--keep] [--variant NAME=ARGS]

A smoke test: --size-mib 64. uring-bt is included when its release binary exists
(cargo build --release); name it in --seeders to require it. Optional seeder: qbittorrent.
rqbit (engine/tests/clients/rqbit_seed.py) joins the default seeders when it is installed
(`cargo install rqbit --locked`, on PATH or in ~/.cargo/bin).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = os.path.join(REPO, "engine", "tests", "clients")
PYTHON = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
GIB = 1024 * MIB
ALL_SEEDERS = ["uring-bt", "libtorrent", "rtorrent", "aria2", "qbittorrent", "rqbit"]


def rqbit_exe():
    """rqbit on PATH or where `cargo install` puts it, or None."""
    exe = shutil.which("rqbit") or os.path.expanduser("~/.cargo/bin/rqbit")
    return exe if os.access(exe, os.X_OK) else None
children = []  # every Popen we started: killed by process group at exit
scratch = []  # directories in RAM (tmpfs) removed at exit, whatever happened


def log(msg):
    sys.stderr.write("[compare] %s\n" % msg)
    sys.stderr.flush()


def die(msg):
    log("error: " + msg)
    cleanup()
    sys.exit(1)


def cleanup():
    for p in children:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
    for d in scratch:
        shutil.rmtree(d, ignore_errors=True)


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    children.append(p)
    return p


def fs_type(path):
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.strip().splitlines()[0]
    return subprocess.run(
        ["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True
    ).stdout.strip()


def ensure_payload(path, size, seed=0x5EEDF00D):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    log("writing %d MiB payload %s" % (size // MIB, path))
    import random

    rng = random.Random(seed)
    with open(path + ".tmp", "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(rng.randbytes(n))
            left -= n
    os.replace(path + ".tmp", path)


def ensure_torrent(payload, torrent, piece):
    if os.path.exists(torrent) and os.path.getmtime(torrent) >= os.path.getmtime(payload):
        return
    log("hashing %s into %s" % (payload, torrent))
    subprocess.run(
        [PYTHON, os.path.join(CLIENTS, "lt_create.py"), payload, "-o", torrent,
         "--piece-length", str(piece)],
        check=True, stdout=subprocess.DEVNULL, timeout=1800,
    )


def fincore(path):
    """Bytes of `path` resident in the page cache."""
    r = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", path],
        capture_output=True, text=True,
    )
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return -1


def warm(path):
    if shutil.which("vmtouch"):
        subprocess.run(["vmtouch", "-q", "-t", path], check=True, timeout=600)
    else:
        with open(path, "rb") as f:
            while f.read(16 * MIB):
                pass


def cpu_times():
    """(busy, total) jiffies of the whole machine from /proc/stat (idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - vals[3] - vals[4], total


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        # fields 14 and 15 (utime, stime) are rest[11], rest[12] after "pid (comm) state"
        return (int(rest[11]) + int(rest[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "Threads"):
                    out[k] = int(v.split()[0])  # kB, or a count
    except OSError:
        pass
    return out


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Seeder:
    """A seeder process; `pid` is the process doing the serving (the client, not its driver)."""

    def __init__(self, kind, cmd, logdir):
        self.kind = kind
        self.errf = open(os.path.join(logdir, "%s.stderr" % kind), "wb")
        self.p = spawn(cmd, stdout=subprocess.PIPE, stderr=self.errf, stdin=subprocess.DEVNULL,
                       text=True)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def field(self, key):
        for line in list(self.lines):
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
        return None

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listening = self.field("listening")
            if listening:
                addr = listening.split()[0]
                pid = self.field("pid")
                self.pid = int(pid) if pid else self.p.pid
                self.addr = addr
                return
            if self.p.poll() is not None:
                die("%s seeder exited (%s) before listening; see its stderr log"
                    % (self.kind, self.p.returncode))
            time.sleep(0.05)
        die("%s seeder not ready within %ss" % (self.kind, timeout))

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                log("%s did not stop on SIGTERM: killing its group" % self.kind)
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.errf.close()


def seeder_cmd(kind, args, torrent, data, workdir):
    listen = "127.0.0.1:0"
    if kind == "uring-bt" or kind in args.variants:
        extra = args.variants.get(kind, [])
        binary = args.uring_bt
        if extra and extra[0].startswith("@"):
            binary, extra = extra[0][1:], extra[1:]
        return [binary, "seed", torrent, "--data", data, "--listen", listen,
                "--no-resume"] + extra
    if kind == "libtorrent":
        return [PYTHON, os.path.join(CLIENTS, "lt_seed.py"), torrent, "--data", data,
                "--listen", listen]
    if kind == "rtorrent":
        return [PYTHON, os.path.join(CLIENTS, "rtorrent_client.py"), "seed", torrent,
                "--data", data, "--listen", listen, "--workdir", workdir]
    if kind == "aria2":
        return [PYTHON, os.path.join(CLIENTS, "aria2_seed.py"), torrent, "--data", data,
                "--listen", listen, "--workdir", workdir]
    if kind == "qbittorrent":
        return [PYTHON, os.path.join(CLIENTS, "qbt_client.py"), "seed", torrent, "--data", data,
                "--listen", listen, "--workdir", workdir]
    if kind == "rqbit":
        return [PYTHON, os.path.join(CLIENTS, "rqbit_seed.py"), torrent, "--data", data,
                "--listen", listen, "--workdir", workdir]
    raise ValueError(kind)


def run_one(kind, args, payload, torrent, size, base):
    workdir = os.path.join(base, "work-%s" % kind)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    leech_dirs = [os.path.join(args.leech_dir, "leech-%d" % i) for i in range(args.leechers)]
    for d in leech_dirs:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    warm(payload)
    res_before = fincore(payload)

    t_start = time.monotonic()
    s = Seeder(kind, seeder_cmd(kind, args, torrent, os.path.dirname(payload), workdir), workdir)
    s.wait_ready(args.check_timeout)
    ready_s = time.monotonic() - t_start
    cpu0 = cpu_seconds(s.pid)
    fds0 = count_fds(s.pid)

    wall_spawn = time.time()
    t_spawn = time.monotonic()
    machine0 = cpu_times()
    kids0 = os.times()
    leechers = []
    for i, d in enumerate(leech_dirs):
        ip = "127.0.0.%d" % (10 + i)
        outf = open(os.path.join(workdir, "leech-%d.out" % i), "w+")
        errf = open(os.path.join(workdir, "leech-%d.err" % i), "w+")
        p = spawn([PYTHON, os.path.join(CLIENTS, "lt_leech.py"), torrent, "--save", d,
                   "--peer", s.addr, "--bind", ip, "--timeout", str(args.timeout), "--quiet",
                   "--plaintext"],
                  stdout=outf, stderr=errf, stdin=subprocess.DEVNULL)
        leechers.append((p, outf, errf))

    max_fds = fds0 or 0
    hwm = 0
    deadline = t_spawn + args.timeout + 60
    while any(p.poll() is None for p, _, _ in leechers):
        n = count_fds(s.pid)
        if n is not None:
            max_fds = max(max_fds, n)
        st = proc_status(s.pid)
        hwm = max(hwm, st.get("VmHWM", 0))
        if s.p.poll() is not None:
            die("%s seeder died while serving (exit %s)" % (kind, s.p.returncode))
        if time.monotonic() > deadline:
            die("%s: leechers did not finish within %ss" % (kind, args.timeout + 60))
        time.sleep(0.05)
    t_done = time.monotonic()
    cpu1 = cpu_seconds(s.pid)
    machine1 = cpu_times()
    kids1 = os.times()  # the leechers are reaped by poll(): their CPU is in the children's times
    st = proc_status(s.pid)
    hwm = max(hwm, st.get("VmHWM", 0))
    s.stop()
    res_after = fincore(payload)

    results = []
    for i, (p, outf, errf) in enumerate(leechers):
        outf.seek(0)
        errf.seek(0)
        out, err = outf.read(), errf.read()
        if p.returncode != 0:
            die("%s: leecher %d failed (exit %s): %s" % (kind, i, p.returncode, err[-2000:]))
        line = [ln for ln in out.splitlines() if ln.startswith("result:")]
        if not line:
            die("%s: leecher %d printed no result" % (kind, i))
        results.append(json.loads(line[-1].split(":", 1)[1]))
    if not args.keep:
        for d in leech_dirs:
            shutil.rmtree(d, ignore_errors=True)

    served = size * args.leechers
    wall = t_done - t_spawn
    firsts = [r["first_byte_at"] for r in results if r.get("first_byte_at")]
    dones = [r["done_at"] for r in results]
    after_first = (max(dones) - min(firsts)) if firsts else None
    cpu = (cpu1 - cpu0) if (cpu0 is not None and cpu1 is not None) else None
    busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
    return {
        "seeder": kind,
        "ready_s": ready_s,
        "wall_s": wall,
        "mbps": served / wall / 1e6,
        "mbps_after_first": (served / after_first / 1e6) if after_first else None,
        "first_byte_s": (min(firsts) - wall_spawn) if firsts else None,
        "cpu_s": cpu,
        "cpu_per_gib": (cpu / (served / GIB)) if cpu is not None else None,
        "leech_cpu_s": (kids1.children_user + kids1.children_system
                        - kids0.children_user - kids0.children_system),
        "idle_pct": (100.0 * (total - busy) / total) if total > 0 else None,
        "done_spread": (min(dones) - wall_spawn, max(dones) - wall_spawn),
        "vmhwm_mib": hwm / 1024,
        "rss_anon_mib": st.get("RssAnon", 0) / 1024,
        "threads": st.get("Threads"),
        "max_fds": max_fds,
        "res_before": res_before,
        "res_after": res_after,
    }


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def table(rows, size):
    out = [
        "| seeder | all done (s) | aggregate MB/s | MB/s after 1st byte | 1st byte (s) "
        "| seeder CPU s | CPU s / GiB served | peak RSS MiB (VmHWM) | anon RSS MiB "
        "| max fds | leechers done (s) first-last | leechers' CPU s | machine idle % "
        "| payload cached before / after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        out.append(
            "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f-%.1f | %.1f | %s "
            "| %.0f%% / %.0f%% |"
            % (
                r["seeder"], fmt(r["wall_s"], ".2f"), fmt(r["mbps"], ".0f"),
                fmt(r["mbps_after_first"], ".0f"), fmt(r["first_byte_s"], ".2f"),
                fmt(r["cpu_s"], ".2f"), fmt(r["cpu_per_gib"], ".2f"),
                fmt(r["vmhwm_mib"], ".1f"), fmt(r["rss_anon_mib"], ".1f"), r["max_fds"],
                r["done_spread"][0], r["done_spread"][1], r["leech_cpu_s"],
                fmt(r["idle_pct"], ".1f"),
                100.0 * r["res_before"] / size, 100.0 * r["res_after"] / size,
            )
        )
    return "\n".join(out)


def versions():
    v = {}
    try:
        v["libtorrent"] = subprocess.run(
            [PYTHON, "-c", "import libtorrent; print(libtorrent.__version__)"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for name, cmd in (("rtorrent", ["rtorrent", "-h"]), ("aria2", ["aria2c", "--version"]),
                      ("qbittorrent", ["qbittorrent-nox", "--version"]),
                      ("rqbit", [rqbit_exe() or "rqbit", "--version"])):
        if shutil.which(cmd[0]):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
                v[name] = out.splitlines()[0].strip() if out else "?"
            except (OSError, subprocess.TimeoutExpired):
                pass
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--leechers", type=int, default=4)
    ap.add_argument("--seeders", default=None,
                    help="comma list out of %s (default: uring-bt if built, libtorrent, rtorrent, "
                         "aria2, rqbit if installed)" % ",".join(ALL_SEEDERS))
    ap.add_argument("--runs", type=int, default=1, help="rounds; each runs every seeder once, in rotated order")
    ap.add_argument("--dir", default="/var/tmp/uring-bt-compare")
    ap.add_argument("--leech-dir", default=None,
                    help="where the leechers save (default: /dev/shm/uring-bt-compare-leech when "
                         "/dev/shm is a tmpfs with room for every download, else --dir)")
    ap.add_argument("--uring-bt", default=None, help="path of the release binary")
    ap.add_argument("--timeout", type=float, default=900.0, help="bound on one run's downloads")
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--out", help="also write the markdown report here")
    ap.add_argument("--keep", action="store_true", help="keep the leechers' downloads")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="an extra uring-bt seeder named NAME run with the extra seed arguments "
                         "ARGS (split on spaces), e.g. --variant 'batch32=--batch 32'; ARGS may start "
                         "with @PATH to run another uring-bt binary; add NAME to --seeders")
    args = ap.parse_args()
    args.variants = {}
    for v in args.variant:
        name, sep, rest = v.partition("=")
        if not sep or not name or name in ALL_SEEDERS:
            die("--variant wants NAME=ARGS with a new NAME, got %r" % v)
        args.variants[name] = rest.split()

    if not 1 <= args.leechers <= 200:
        die("--leechers must be 1..200")
    if args.uring_bt is None:
        tgt = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        args.uring_bt = os.path.join(tgt, "release", "uring-bt")
    if args.seeders:
        seeders = [s.strip() for s in args.seeders.split(",") if s.strip()]
        for s in seeders:
            if s not in ALL_SEEDERS and s not in args.variants:
                die("unknown seeder %r (known: %s)" % (s, ", ".join(ALL_SEEDERS)))
        if any(s == "uring-bt" or s in args.variants for s in seeders) and not os.access(args.uring_bt, os.X_OK):
            die("%s is not built: cargo build --release (or pass --uring-bt)" % args.uring_bt)
    else:
        seeders = ["libtorrent", "rtorrent", "aria2"]
        if rqbit_exe():
            seeders.append("rqbit")
        else:
            log("rqbit not installed (cargo install rqbit --locked): leaving it out")
        if os.access(args.uring_bt, os.X_OK):
            seeders.insert(0, "uring-bt")
        else:
            log("uring-bt release binary %s not found: skipping it" % args.uring_bt)
    need = {"rtorrent": "rtorrent", "aria2": "aria2c", "qbittorrent": "qbittorrent-nox"}
    for s in seeders:
        if s in need and not shutil.which(need[s]):
            die("%s is not installed" % need[s])
        if s == "rqbit" and not rqbit_exe():
            die("rqbit is not installed (cargo install rqbit --locked)")
    for tool in ("fincore",):
        if not shutil.which(tool):
            die("%s is not installed (util-linux)" % tool)

    os.makedirs(args.dir, exist_ok=True)
    fst = fs_type(args.dir)
    if fst in ("tmpfs", "ramfs"):
        die("%s is on %s: put the payload on ext4 (e.g. under /var/tmp)" % (args.dir, fst))
    size = args.size_mib * MIB
    piece = args.piece_kib * 1024
    if args.leech_dir is None:
        # On ext4 the leechers' writes, not the seeder, set the pace here: a fast seeder fills
        # their page cache faster than the disk takes it, dirty-page throttling stalls them
        # (libtorrent shows them waiting on disk) and the cores idle. In tmpfs the leechers'
        # CPU is the limit, as the comparison intends.
        args.leech_dir = args.dir
        if fs_type("/dev/shm") == "tmpfs":
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize > size * args.leechers + GIB:
                args.leech_dir = "/dev/shm/uring-bt-compare-leech"
                if not args.keep:
                    scratch.append(args.leech_dir)
    os.makedirs(args.leech_dir, exist_ok=True)
    leech_fs = fs_type(args.leech_dir)
    data = os.path.join(args.dir, "data")
    os.makedirs(data, exist_ok=True)
    payload = os.path.join(data, "payload-%dmib.bin" % args.size_mib)
    torrent = os.path.join(args.dir, "payload-%dmib-%dk.torrent" % (args.size_mib, args.piece_kib))
    ensure_payload(payload, size)
    ensure_torrent(payload, torrent, piece)

    rows = []
    try:
        # Rounds interleave the seeders (A B C D, then B C D A, ...): drift in the machine's
        # speed, and whatever the first round of a session pays, fall on every seeder alike.
        for run in range(args.runs):
            order = seeders[run % len(seeders):] + seeders[:run % len(seeders)]
            for kind in order:
                log("%s run %d/%d: %d leechers x %d MiB" % (kind, run + 1, args.runs, args.leechers,
                                                            args.size_mib))
                r = run_one(kind, args, payload, torrent, size, args.dir)
                r["round"] = run + 1
                log("%s: %.2f s, %.0f MB/s, %s CPU s/GiB" % (kind, r["wall_s"], r["mbps"],
                                                             fmt(r["cpu_per_gib"], ".2f")))
                rows.append(r)
    finally:
        cleanup()
    rows.sort(key=lambda r: (seeders.index(r["seeder"]), r["round"]))

    v = versions()
    head = [
        "## Seeding %d MiB (%d KiB pieces) to %d python-libtorrent leechers on loopback"
        % (args.size_mib, args.piece_kib, args.leechers),
        "",
        "%s, kernel %s, %d CPUs; payload on %s (%s); %s" % (
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), platform.release(),
            os.cpu_count() or 0, args.dir, fst,
            ", ".join("%s %s" % kv for kv in sorted(v.items()))),
        "",
        "Leechers save to %s (%s). " % (args.leech_dir, leech_fs) +
        "CPU s counts the seeder process (all threads) from ready-to-serve to the last leecher's "
        "completion (start-up checks excluded). Leechers use plain (unencrypted) handshakes. Peak RSS of libtorrent/qBittorrent includes the "
        "mmap'd payload: compare anon RSS.",
        "",
        "",
    ]
    report = "\n".join(head) + table(rows, size) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cleanup()
        sys.exit(130)
