#!/usr/bin/python3
"""Side-by-side downloading benchmark on loopback: `uring-bt download` against real leechers.

For each seeder S (libtorrent, rtorrent, aria2) and each downloader D (uring-bt, libtorrent,
aria2, rtorrent; rqbit too when `rqbit` is on PATH), round by round, one download of the same
file (default 2 GiB, 1 MiB pieces) from S alone to D alone:

- the payload lives on ext4 under /var/tmp (never tmpfs: io_uring reads of tmpfs go to worker
  threads) and is read into the page cache right before each download (vmtouch -t); its
  residency is reported (fincore) before and after;
- D saves into a fresh directory on ext4 under /var/tmp (--leech-dir; never tmpfs: the
  project's io_uring handles tmpfs badly, and a leecher writing to tmpfs is not what a user
  does), removed after the copy is compared (cmp) with the payload; the dirty pages it left
  are synced before the next download;
- S listens on its own 127.0.0.x, D binds another;
- D's client process (uring-bt itself; python-libtorrent is the driver process itself;
  aria2c and rtorrent are the driver's child, found through /proc) is sampled every 50 ms:
  CPU (utime+stime+cutime+cstime from /proc/PID/stat; for a direct child the exact rusage
  of wait4), peak RSS (VmHWM, a high-water mark: the last sample before the process
  ends; not wait4's ru_maxrss, which counts this script's RSS from before the exec) and the
  largest RssAnon;
- wall seconds from D's start to its completion (uring-bt: its `complete:` line; the
  drivers: their `result:` line, or the wall-clock `done_at` in it), and after the first
  byte (the first moment the output file has a block allocated: the same test for every
  client); CPU per GiB received over the whole process life, and after the first byte
  (start-up, e.g. Python importing libtorrent, excluded).

aria2 finds peers only through a tracker: for every pair with D = aria2 one opentracker runs
on 127.0.0.1 (Debian's, whitelist mode, the info hashes in its access list) and S and D get a
copy of the torrent whose announce URL points at it (a top-level key: the info hash is the
same). Every other D is given S's address (--peer).

Loopback only; DHT, LSD, PEX, UPnP/NAT-PMP and uTP are off in every client (the drivers in
engine/tests/clients/). Every process started here is killed by its process group at exit.

usage: /usr/bin/python3 benches/compare_leechers.py [--size-mib 2048] [--runs 2]
           [--seeders libtorrent,rtorrent,aria2] [--downloaders uring-bt,libtorrent,aria2,rtorrent]
           [--sizes 1024,8192] [--ceilings] [--dir /var/tmp/uring-bt-leechers]
           [--leech-dir DIR] [--uring-bt PATH] [--out FILE.md] [--json FILE]

--sizes A,B,...: uring-bt only, from the first of --seeders: peak RSS against the file size.
--ceilings: first measure this machine's floor for a leecher (SHA-1 one core with openssl,
a buffered write of 1 GiB to the leech directory, TCP loopback with iperf3 when installed).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_seeders as cs  # noqa: E402  (process sampling, payload, seeders' launch)

REPO = cs.REPO
CLIENTS = cs.CLIENTS
PYTHON = cs.PYTHON
CLK_TCK = cs.CLK_TCK
MIB = cs.MIB
GIB = cs.GIB
log = cs.log
die = cs.die

ALL_SEEDERS = ["libtorrent", "rtorrent", "aria2"]
ALL_DOWNLOADERS = ["uring-bt", "libtorrent", "aria2", "rtorrent", "rqbit"]
SEEDER_IP = {"libtorrent": "127.0.0.21", "rtorrent": "127.0.0.22", "aria2": "127.0.0.23"}
LEECH_IP = {"uring-bt": "127.0.0.31", "libtorrent": "127.0.0.32", "aria2": "127.0.0.33",
            "rtorrent": "127.0.0.34", "rqbit": "127.0.0.35"}
CLIENT_EXE = {"aria2": "aria2c", "rtorrent": "rtorrent"}  # the driver's child to measure


# --------------------------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------------------------

def cpu_all(pid):
    """(user, system) seconds of `pid`, its reaped children included (utime+cutime,
    stime+cstime from /proc/PID/stat), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return ((int(rest[11]) + int(rest[13])) / CLK_TCK,
                (int(rest[12]) + int(rest[14])) / CLK_TCK)
    except (OSError, IndexError, ValueError):
        return None


def child_named(ppid, exe):
    """PID of a child of `ppid` running the executable named `exe` (after its exec), or None."""
    pids = []
    try:
        for tid in os.listdir("/proc/%d/task" % ppid):
            with open("/proc/%d/task/%s/children" % (ppid, tid)) as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        return None
    for pid in pids:
        try:  # not comm: rtorrent renames its main thread "rtorrent main"
            if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == exe:
                return pid
        except OSError:
            pass
    return None


def allocated_bytes(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


# --------------------------------------------------------------------------------------------
# opentracker (as engine/tests/common/opentracker.rs runs it)
# --------------------------------------------------------------------------------------------

class Tracker:
    """Debian's opentracker on 127.0.0.1 (HTTP), whitelist mode, `hashes` allowed."""

    def __init__(self, workdir, hashes):
        exe = shutil.which("opentracker")
        if exe is None:
            die("opentracker is not installed (Debian package opentracker): aria2 needs a tracker")
        self.dir = os.path.join(workdir, "opentracker")
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)  # it chroots here and reads the list as `nobody`
        with open(os.path.join(self.dir, "whitelist.txt"), "w") as f:
            f.write("".join(h + "\n" for h in hashes))
        os.chmod(os.path.join(self.dir, "whitelist.txt"), 0o644)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.errf = open(os.path.join(workdir, "opentracker.log"), "wb")
        self.p = cs.spawn([exe, "-i", "127.0.0.1", "-p", str(self.port), "-P", str(self.port),
                           "-d", self.dir, "-w", "whitelist.txt"],
                          stdout=self.errf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = "http://127.0.0.1:%d/announce" % self.port
        deadline = time.monotonic() + 10
        while not all(self.allowed(h) for h in hashes):
            if self.p.poll() is not None or time.monotonic() > deadline:
                die("opentracker did not come up (see %s)" % self.errf.name)
            time.sleep(0.1)

    def _get(self, query):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=3)
        try:
            s.settimeout(5)
            s.sendall(("GET /announce?%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % query).encode())
            out = b""
            while True:
                c = s.recv(65536)
                if not c:
                    return out
                out += c
        finally:
            s.close()

    def allowed(self, h):
        q = ("info_hash=" + urllib.parse.quote(bytes.fromhex(h), safe="")
             + "&peer_id=-HP0001-harnessprobe&port=9&uploaded=0&downloaded=0&left=1&compact=1"
             + "&event=")
        try:
            body = self._get(q + "started")
        except OSError:
            return False
        ok = b" 200" in body.split(b"\r\n", 1)[0] and b"failure reason" not in body
        if ok:
            try:
                self._get(q + "stopped")
            except OSError:
                pass
        return ok

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(5)
        self.errf.close()


def with_tracker(src, dst, url):
    """`src` with a top-level `announce` (the info dict, hence the info hash, unchanged)."""
    data = open(src, "rb").read()
    if data[:1] != b"d" or b"8:announce" in data[:64]:
        die("%s: expected a torrent without an announce URL" % src)
    u = url.encode()
    with open(dst, "wb") as f:  # "announce" sorts before every other key of a torrent
        f.write(b"d8:announce%d:%s" % (len(u), u) + data[1:])


def _bskip(b, i):
    """Index just past the bencoded value at b[i]."""
    c = b[i:i + 1]
    if c == b"i":
        return b.index(b"e", i) + 1
    if c in (b"l", b"d"):
        i += 1
        while b[i:i + 1] != b"e":
            i = _bskip(b, i)
        return i + 1
    j = b.index(b":", i)
    return j + 1 + int(b[i:j])


def info_hash(torrent):
    """SHA-1 of the torrent's bencoded info dict (v1 info hash), hex."""
    import hashlib

    b = open(torrent, "rb").read()
    i = 1
    while b[i:i + 1] != b"e":
        j = b.index(b":", i)
        key = b[j + 1:j + 1 + int(b[i:j])]
        v = j + 1 + int(b[i:j])
        end = _bskip(b, v)
        if key == b"info":
            return hashlib.sha1(b[v:end]).hexdigest()
        i = end
    die("%s has no info dict" % torrent)


# --------------------------------------------------------------------------------------------
# seeders and downloaders
# --------------------------------------------------------------------------------------------

def seeder_cmd(kind, torrent, data, workdir):
    listen = "%s:0" % SEEDER_IP[kind]
    if kind == "libtorrent":
        return [PYTHON, os.path.join(CLIENTS, "lt_seed.py"), torrent, "--data", data,
                "--listen", listen]
    if kind == "rtorrent":
        return [PYTHON, os.path.join(CLIENTS, "rtorrent_client.py"), "seed", torrent,
                "--data", data, "--listen", listen, "--workdir", workdir]
    if kind == "aria2":
        return [PYTHON, os.path.join(CLIENTS, "aria2_seed.py"), torrent, "--data", data,
                "--listen", listen, "--workdir", workdir]
    raise ValueError(kind)


def downloader_cmd(kind, args, torrent, save, peer, workdir):
    ip = LEECH_IP[kind]
    t = str(args.timeout)
    if kind == "uring-bt":
        return [args.uring_bt, "download", torrent, "-o", save, "--peer", peer,
                "--listen", "%s:0" % ip, "--no-resume", "--status-interval", "1"]
    if kind == "libtorrent":
        return [PYTHON, os.path.join(CLIENTS, "lt_leech.py"), torrent, "--save", save,
                "--peer", peer, "--bind", ip, "--timeout", t, "--quiet", "--plaintext"]
    if kind == "rtorrent":
        return [PYTHON, os.path.join(CLIENTS, "rtorrent_client.py"), "leech", torrent,
                "--save", save, "--peer", peer, "--bind", ip, "--timeout", t,
                "--workdir", workdir]
    if kind == "aria2":
        return [PYTHON, os.path.join(CLIENTS, "aria2_leech.py"), torrent, "--save", save,
                "--bind", ip, "--timeout", t, "--workdir", workdir, "--quiet"]
    raise ValueError(kind)


class Lines:
    """Reads a process's stdout in a thread; remembers each line with its arrival time."""

    def __init__(self, stream, mirror=None):
        self.lines = []
        self.mirror = mirror
        self.t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.t.start()

    def _read(self, stream):
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append((time.monotonic(), line))
            if self.mirror:
                self.mirror.write(line + "\n")
                self.mirror.flush()

    def first(self, prefix):
        for t, line in list(self.lines):
            if line.startswith(prefix):
                return t, line
        return None, None


def rtorrent_encrypted(sock, h):
    """How many of rtorrent's peers of torrent `h` are encrypted / all, over its SCGI socket."""
    sys.path.insert(0, CLIENTS)
    try:
        import rtorrent_client  # noqa: E402
        rows = rtorrent_client.Scgi(sock, 3).call("p.multicall", h.upper(), "", "p.is_encrypted=")
        return sum(1 for r in rows if r[0]), len(rows)
    except Exception:  # only a note in the report
        return None


def warm(payload):
    cs.warm(payload)
    return cs.fincore(payload)


def run_pair(seeder, dl, args, payload, torrents, size, base, ih, rnd):
    """One download of `payload` from `seeder` to `dl`; returns a result dict."""
    tag = "%s-from-%s-r%d-%dm" % (dl, seeder, rnd, size // MIB)
    workdir = os.path.join(base, "work", tag)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    save = os.path.join(args.leech_dir, tag)
    shutil.rmtree(save, ignore_errors=True)
    os.makedirs(save)
    name = os.path.basename(payload)
    out_path = os.path.join(save, name)
    tracker = None
    torrent = torrents["plain"]
    if dl == "aria2":
        tracker = Tracker(workdir, [ih])
        torrent = os.path.join(workdir, "tracker.torrent")
        with_tracker(torrents["plain"], torrent, tracker.url)

    res_before = warm(payload)
    s = cs.Seeder(seeder, seeder_cmd(seeder, torrent, os.path.dirname(payload),
                                     os.path.join(workdir, "seeder")), workdir)
    s.wait_ready(args.check_timeout)
    # aria2 drops the pages it checked (fadvise): warm the payload again, so that every
    # downloader is served from the page cache
    res_ready = cs.fincore(payload)
    if res_ready < size:
        warm(payload)
    seeder_cpu0 = cs.cpu_seconds(s.pid)

    dl_work = os.path.join(workdir, "downloader")
    os.makedirs(dl_work)
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = os.path.join(dl_work, "state")  # never the user's resume data
    errf = open(os.path.join(workdir, "%s.stderr" % dl), "w+")
    outf = open(os.path.join(workdir, "%s.stdout" % dl), "w")
    cmd = downloader_cmd(dl, args, torrent, save, s.addr, dl_work)
    t_spawn = time.monotonic()
    wall_offset = time.time() - t_spawn  # wall clock = offset + monotonic
    p = cs.spawn(cmd, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL, text=True,
                 env=env)
    lines = Lines(p.stdout, outf)
    direct = dl not in CLIENT_EXE  # the process we started is the client itself
    cpid = p.pid if direct else None
    cpu_last = (0.0, 0.0)
    hwm = anon_max = 0
    t_first = None
    cpu_at_first = None
    seeder_hwm = 0
    enc = None
    rusage = None
    status = None
    deadline = t_spawn + args.timeout + 60
    while True:
        if cpid is None:
            cpid = child_named(p.pid, CLIENT_EXE[dl])
        if cpid is not None:
            c = cpu_all(cpid)
            if c is not None:
                cpu_last = c
            st = cs.proc_status(cpid)
            hwm = max(hwm, st.get("VmHWM", 0))
            anon_max = max(anon_max, st.get("RssAnon", 0))
        seeder_hwm = max(seeder_hwm, cs.proc_status(s.pid).get("VmHWM", 0))
        if t_first is None and allocated_bytes(out_path) > 0:
            t_first = time.monotonic()
            cpu_at_first = sum(cpu_last)
        if enc is None and t_first is not None and time.monotonic() - t_first > 1.0:
            if seeder == "rtorrent":
                enc = rtorrent_encrypted(os.path.join(workdir, "seeder", "rpc.sock"), ih)
            elif dl == "rtorrent":
                enc = rtorrent_encrypted(os.path.join(dl_work, "rpc.sock"), ih)
        if direct:
            pid, wstatus, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                status = os.waitstatus_to_exitcode(wstatus)
                p.returncode = status  # reaped here: tell Popen
                rusage = ru
                break
        elif p.poll() is not None:
            status = p.returncode
            break
        if s.p.poll() is not None:
            log("%s: the %s seeder died (exit %s)" % (tag, seeder, s.p.returncode))
        if time.monotonic() > deadline:
            log("%s: not done within %ss: killing it" % (tag, args.timeout + 60))
            os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.05)
    t_exit = time.monotonic()
    lines.t.join(5)
    outf.close()
    seeder_cpu1 = cs.cpu_seconds(s.pid)
    s.stop()
    if tracker:
        tracker.stop()
    res_after = cs.fincore(payload)

    # completion time: uring-bt's `complete:` line; a driver's `result:` (done_at, wall clock)
    t_done = None
    result = {}
    own_secs = None
    if dl == "uring-bt":
        t_done, line = lines.first("complete:")
        for w in (line or "").split():
            if w.startswith("secs="):
                own_secs = float(w[5:])
    else:
        t_res, line = lines.first("result:")
        if line:
            result = json.loads(line.split(":", 1)[1])
            t_done = (result["done_at"] - wall_offset) if result.get("done_at") else t_res
    if rusage is not None:
        # not ru_maxrss: a child's counts the RSS of the process it was forked from (this
        # script's Python) until its exec; VmHWM belongs to the client's own memory
        user, system = rusage.ru_utime, rusage.ru_stime
    else:
        user, system = cpu_last
    cpu = user + system
    ok = status == 0 and t_done is not None
    same = None
    if ok:
        got = out_path if os.path.exists(out_path) else None
        if got is None:  # wherever the client put it
            for root, _, files in os.walk(save):
                if name in files:
                    got = os.path.join(root, name)
        same = got is not None and subprocess.run(["cmp", "-s", payload, got]).returncode == 0
    errf.seek(0)
    err_tail = errf.read()[-1500:]
    errf.close()
    if not ok or not same:
        log("%s FAILED (exit %s, complete %s, same data %s); logs in %s\n%s"
            % (tag, status, t_done is not None, same, workdir, err_tail))
    if not args.keep:
        shutil.rmtree(save, ignore_errors=True)
        if ok and same:
            shutil.rmtree(workdir, ignore_errors=True)
    os.sync()  # the next download does not pay for this one's writeback

    got_bytes = size
    wall = (t_done - t_spawn) if t_done else None
    after_first = (t_done - t_first) if (t_done and t_first) else None
    cpu_af = (cpu - cpu_at_first) if cpu_at_first is not None else None
    served = (seeder_cpu1 - seeder_cpu0) if (seeder_cpu0 is not None and seeder_cpu1 is not None) else None
    return {
        "seeder": seeder, "downloader": dl, "round": rnd, "size": size,
        "ok": bool(ok and same), "exit": status,
        "wall_s": wall, "first_byte_s": (t_first - t_spawn) if t_first else None,
        "after_first_s": after_first,
        "mbps_after_first": (got_bytes / after_first / 1e6) if after_first else None,
        "exit_s": t_exit - t_spawn, "own_secs": own_secs,
        "cpu_s": cpu, "cpu_per_gib": cpu / (got_bytes / GIB),
        "user_per_gib": user / (got_bytes / GIB), "sys_per_gib": system / (got_bytes / GIB),
        "cpu_af_per_gib": (cpu_af / (got_bytes / GIB)) if cpu_af is not None else None,
        "vmhwm_mib": hwm / 1024, "anon_mib": anon_max / 1024,
        "seeder_cpu_per_gib": (served / (got_bytes / GIB)) if served is not None else None,
        "seeder_vmhwm_mib": seeder_hwm / 1024,
        "encrypted": enc,
        "res_before": res_before, "res_ready": res_ready, "res_after": res_after,
    }


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def rounds_table(rows):
    out = ["| downloader | round | done (s) | 1st byte (s) | after 1st byte (s) | MB/s after 1st byte "
           "| CPU s | CPU s / GiB (user + sys) | CPU s / GiB after 1st byte | peak RSS MiB "
           "| peak anon MiB | seeder CPU s / GiB | same data | payload cached: start / seeder ready / end "
           "| uring-bt's own `secs=` |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        size = r["size"]
        out.append("| %s | %d | %s | %s | %s | %s | %s | %s (%s + %s) | %s | %s | %s | %s | %s | %.0f%% / %.0f%% / %.0f%% | %s |" % (
            r["downloader"], r["round"], fmt(r["wall_s"], ".2f"), fmt(r["first_byte_s"], ".2f"),
            fmt(r["after_first_s"], ".2f"), fmt(r["mbps_after_first"], ".0f"),
            fmt(r["cpu_s"], ".2f"), fmt(r["cpu_per_gib"], ".2f"), fmt(r["user_per_gib"], ".2f"),
            fmt(r["sys_per_gib"], ".2f"), fmt(r["cpu_af_per_gib"], ".2f"),
            fmt(r["vmhwm_mib"], ".1f"), fmt(r["anon_mib"], ".1f"),
            fmt(r["seeder_cpu_per_gib"], ".2f"),
            "yes" if r["ok"] else "**NO** (exit %s)" % r["exit"],
            100.0 * r["res_before"] / size, 100.0 * r["res_ready"] / size,
            100.0 * r["res_after"] / size, fmt(r.get("own_secs"), ".2f") if r.get("own_secs") else ""))
    return "\n".join(out)


def summary(seeder, rows, downloaders):
    """Medians per downloader, and the ratios within each round."""
    out = ["| downloader | done (s) | after 1st byte (s) | MB/s after 1st byte | CPU s / GiB "
           "| user / sys | CPU s / GiB after 1st byte | peak RSS MiB | peak anon MiB | failed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in downloaders:
        rs = [r for r in rows if r["downloader"] == d]
        good = [r for r in rs if r["ok"]]
        out.append("| %s | %s | %s | %s | %s | %s / %s | %s | %s | %s | %d of %d |" % (
            "**%s**" % d if d == "uring-bt" else d,
            fmt(med(r["wall_s"] for r in good), ".2f"),
            fmt(med(r["after_first_s"] for r in good), ".2f"),
            fmt(med(r["mbps_after_first"] for r in good), ".0f"),
            fmt(med(r["cpu_per_gib"] for r in good), ".2f"),
            fmt(med(r["user_per_gib"] for r in good), ".2f"),
            fmt(med(r["sys_per_gib"] for r in good), ".2f"),
            fmt(med(r["cpu_af_per_gib"] for r in good), ".2f"),
            fmt(med(r["vmhwm_mib"] for r in good), ".1f"),
            fmt(med(r["anon_mib"] for r in good), ".1f"),
            len(rs) - len(good), len(rs)))
    notes = []
    ratios, ratios_af, firsts = [], [], []
    for rnd in sorted({r["round"] for r in rows}):
        rr = {r["downloader"]: r for r in rows if r["round"] == rnd and r["ok"]}
        if rr:
            w = min(rr.values(), key=lambda r: r["wall_s"])
            firsts.append("round %d: %s (%.2f s)" % (rnd, w["downloader"], w["wall_s"]))
        u = rr.get("uring-bt")
        peers = [r for d, r in rr.items() if d != "uring-bt"]
        peers = [r for r in peers if r["cpu_per_gib"] > 0]
        if u and peers:
            best = min(peers, key=lambda r: r["cpu_per_gib"])
            ratios.append((u["cpu_per_gib"] / best["cpu_per_gib"], best["downloader"]))
            pa = [r for r in peers if r["cpu_af_per_gib"]]
            if u["cpu_af_per_gib"] and pa:
                ba = min(pa, key=lambda r: r["cpu_af_per_gib"])
                ratios_af.append((u["cpu_af_per_gib"] / ba["cpu_af_per_gib"], ba["downloader"]))
    if ratios:
        notes.append("uring-bt CPU s/GiB over the best peer leecher's in the same round: %s "
                     "(median %.2fx)" % (", ".join("%.2fx (%s)" % r for r in ratios),
                                         med(r[0] for r in ratios)))
    if ratios_af:
        notes.append("the same after the first byte: %s (median %.2fx)"
                     % (", ".join("%.2fx (%s)" % r for r in ratios_af), med(r[0] for r in ratios_af)))
    if firsts:
        notes.append("finished first: " + "; ".join(firsts))
    own = [(r["wall_s"], r["own_secs"]) for r in rows
           if r["downloader"] == "uring-bt" and r["ok"] and r.get("own_secs")]
    if own:
        notes.append("uring-bt's own `secs=` (its download complete): %s s, against its `complete:` "
                     "line at %s s" % (", ".join("%.2f" % o for _, o in own),
                                       ", ".join("%.2f" % w for w, _ in own)))
    enc = sorted({"%s->%s: %d of %d peers encrypted" % (r["seeder"], r["downloader"], *r["encrypted"])
                  for r in rows if r.get("encrypted")})
    if enc:
        notes.append("rtorrent's connections (p.is_encrypted): " + "; ".join(enc))
    return "\n".join(out) + "\n\n" + "\n".join("- " + n for n in notes) + "\n"


def sizes_table(rows):
    out = ["| size MiB | round | done (s) | own `secs=` | MB/s after 1st byte | CPU s / GiB | peak RSS MiB "
           "| peak anon MiB | same data | payload cached start / end |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        out.append("| %d | %d | %s | %s | %s | %s | %s | %s | %s | %.0f%% / %.0f%% |" % (
            r["size"] // MIB, r["round"], fmt(r["wall_s"], ".2f"), fmt(r.get("own_secs"), ".2f"),
            fmt(r["mbps_after_first"], ".0f"),
            fmt(r["cpu_per_gib"], ".2f"), fmt(r["vmhwm_mib"], ".1f"), fmt(r["anon_mib"], ".1f"),
            "yes" if r["ok"] else "**NO**", 100.0 * r["res_before"] / r["size"],
            100.0 * r["res_after"] / r["size"]))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# the machine's floor for a leecher
# --------------------------------------------------------------------------------------------

def ceilings(leech_dir):
    out = []
    r = subprocess.run(["openssl", "speed", "-seconds", "3", "-evp", "sha1"],
                       capture_output=True, text=True, timeout=120)
    sha = None
    for line in r.stdout.splitlines():
        if line.startswith("sha1") or line.startswith("SHA1"):
            kb = line.split()[-1].rstrip("k")
            sha = float(kb) * 1000  # bytes/s at 16 KiB blocks
    if sha:
        out.append("SHA-1, one core (`openssl speed -seconds 3 -evp sha1`, 16 KiB): %.0f MB/s = "
                   "%.2f CPU s/GiB" % (sha / 1e6, GIB / sha))
    # a buffered write of 1 GiB to the leech directory (64 KiB writes; /dev/zero costs a memset)
    f = os.path.join(leech_dir, "ceiling-write.bin")
    t0 = time.monotonic()
    p = subprocess.Popen(["dd", "if=/dev/zero", "of=%s" % f, "bs=64k", "count=16384"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    os.unlink(f)
    os.sync()
    out.append("page-cache write of 1 GiB to %s (`dd if=/dev/zero bs=64k`, no fsync): %.2f CPU s "
               "(%.2f user, %.2f sys) in %.2f s" % (leech_dir, ru.ru_utime + ru.ru_stime,
                                                    ru.ru_utime, ru.ru_stime, wall))
    if shutil.which("iperf3"):
        srv = cs.spawn(["iperf3", "-s", "-B", "127.0.0.1", "-p", "5299", "-1", "-J"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.5)
        cli = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", "5299", "-t", "5", "-J"],
                             capture_output=True, text=True, timeout=60)
        try:
            srv_out = srv.communicate(timeout=20)[0]
            j = json.loads(cli.stdout)
            js = json.loads(srv_out)
            bps = j["end"]["sum_received"]["bits_per_second"] / 8
            host = j["end"]["cpu_utilization_percent"]
            rcv = js["end"]["cpu_utilization_percent"]["host_total"]
            # receiver's CPU seconds per GiB = share of a core / rate
            out.append("TCP loopback, 1 stream (`iperf3 -t 5`): %.0f MB/s; sender %.0f%%, receiver "
                       "%.0f%% of a core: receiving costs ~%.2f CPU s/GiB (on loopback part of it "
                       "runs on the sender's CPU)" % (bps / 1e6, host["host_total"], rcv,
                                                      rcv / 100 * GIB / bps))
        except (ValueError, KeyError, subprocess.TimeoutExpired) as e:
            out.append("iperf3: no figure (%s)" % e)
    return out


# --------------------------------------------------------------------------------------------

def prepare(args, size_mib):
    data = os.path.join(args.dir, "data")
    os.makedirs(data, exist_ok=True)
    payload = os.path.join(data, "payload-%dmib.bin" % size_mib)
    torrent = os.path.join(args.dir, "payload-%dmib-%dk.torrent" % (size_mib, args.piece_kib))
    cs.ensure_payload(payload, size_mib * MIB)
    cs.ensure_torrent(payload, torrent, args.piece_kib * 1024)
    return payload, {"plain": torrent}, info_hash(torrent)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--piece-kib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=2, help="rounds; each runs every pair once, rotated")
    ap.add_argument("--seeders", default=",".join(ALL_SEEDERS))
    ap.add_argument("--downloaders", default=None,
                    help="comma list out of %s (default: all, rqbit when on PATH)"
                    % ",".join(ALL_DOWNLOADERS))
    ap.add_argument("--sizes", default=None,
                    help="MiB list, e.g. 1024,8192: uring-bt only, from the first seeder")
    ap.add_argument("--ceilings", action="store_true", help="measure the machine's floor first")
    ap.add_argument("--dir", default="/var/tmp/uring-bt-leechers", help="payload and torrents (ext4)")
    ap.add_argument("--leech-dir", default=None, help="where downloaders save (default DIR/dl; ext4)")
    ap.add_argument("--uring-bt", default=None, help="path of the release binary")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound on one download")
    ap.add_argument("--check-timeout", type=float, default=600.0)
    ap.add_argument("--keep", action="store_true", help="keep downloads and logs")
    ap.add_argument("--out", help="also write the markdown report here")
    ap.add_argument("--json", help="also write every row as JSON here")
    args = ap.parse_args()

    if args.uring_bt is None:
        tgt = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        args.uring_bt = os.path.join(tgt, "release", "uring-bt")
    seeders = [s.strip() for s in args.seeders.split(",") if s.strip()]
    for s in seeders:
        if s not in ALL_SEEDERS:
            die("unknown seeder %r (known: %s)" % (s, ", ".join(ALL_SEEDERS)))
    if args.sizes:
        downloaders = ["uring-bt"]
        seeders = seeders[:1]
    elif args.downloaders:
        downloaders = [d.strip() for d in args.downloaders.split(",") if d.strip()]
    else:
        downloaders = [d for d in ALL_DOWNLOADERS if d != "rqbit" or shutil.which("rqbit")]
        if not shutil.which("rqbit"):
            log("rqbit is not on PATH: not measured")
    for d in downloaders:
        if d not in ALL_DOWNLOADERS:
            die("unknown downloader %r (known: %s)" % (d, ", ".join(ALL_DOWNLOADERS)))
        if d == "rqbit":
            die("rqbit: no driver yet in this script (install it, then add its command line)")
    if "uring-bt" in downloaders and not os.access(args.uring_bt, os.X_OK):
        die("%s is not built: cargo build --release -p uring-bt (or pass --uring-bt)" % args.uring_bt)
    need = {"rtorrent": "rtorrent", "aria2": "aria2c"}
    for k in set(seeders) | set(downloaders):
        if k in need and not shutil.which(need[k]):
            die("%s is not installed" % need[k])
    for tool in ("fincore", "cmp"):
        if not shutil.which(tool):
            die("%s is not installed" % tool)

    os.makedirs(args.dir, exist_ok=True)
    if args.leech_dir is None:
        args.leech_dir = os.path.join(args.dir, "dl")
    os.makedirs(args.leech_dir, exist_ok=True)
    for d in (args.dir, args.leech_dir):
        if cs.fs_type(d) in ("tmpfs", "ramfs"):
            die("%s is on %s: payload and downloads belong on ext4 (e.g. under /var/tmp)"
                % (d, cs.fs_type(d)))

    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [args.size_mib]
    if args.sizes:
        # the payload and one copy of each size must fit, with 2 GiB to spare
        st = os.statvfs(args.dir)
        free = st.f_bavail * st.f_frsize
        data = os.path.join(args.dir, "data")
        have = sum(os.path.getsize(os.path.join(data, "payload-%dmib.bin" % m))
                   for m in sizes if os.path.exists(os.path.join(data, "payload-%dmib.bin" % m)))
        fit = []
        for m in sorted(sizes):
            need_b = sum(x * MIB for x in fit + [m]) + m * MIB + 2 * GIB - have
            if need_b <= free:
                fit.append(m)
            else:
                log("--sizes: %d MiB does not fit in %s (%.1f GiB free): left out"
                    % (m, args.dir, free / GIB))
        sizes = fit
    if not sizes:
        die("no size fits")

    ceil = ceilings(args.leech_dir) if args.ceilings else []
    for c in ceil:
        log("ceiling: " + c)
    load0 = os.getloadavg()
    t_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    try:
        for size_mib in sizes:
            payload, torrents, ih = prepare(args, size_mib)
            for rnd in range(1, args.runs + 1):
                so = seeders[(rnd - 1) % len(seeders):] + seeders[:(rnd - 1) % len(seeders)]
                for seeder in so:
                    k = (rnd - 1) % len(downloaders)
                    for dl in downloaders[k:] + downloaders[:k]:
                        log("round %d/%d: %d MiB from %s to %s" % (rnd, args.runs, size_mib, seeder, dl))
                        r = run_pair(seeder, dl, args, payload, torrents, size_mib * MIB,
                                     args.dir, ih, rnd)
                        log("  %s: done %s s, %s CPU s/GiB, peak RSS %.1f MiB, same data %s"
                            % (dl, fmt(r["wall_s"], ".2f"), fmt(r["cpu_per_gib"], ".2f"),
                               r["vmhwm_mib"], r["ok"]))
                        rows.append(r)
                        if args.json:  # as we go: a crash later loses nothing
                            with open(args.json, "w") as f:
                                json.dump(rows, f, indent=1)
    finally:
        cs.cleanup()
    load1 = os.getloadavg()

    v = cs.versions()
    head = ["## Downloading %s (%d KiB pieces) on loopback, one seeder to one downloader"
            % (", ".join("%d MiB" % s for s in sizes), args.piece_kib), "",
            "%s to %s, kernel %s, %d CPUs, load average %.1f at the start, %.1f at the end; "
            "payload in %s (%s), downloads to %s (%s); %s" % (
                t_start, time.strftime("%H:%M UTC", time.gmtime()), platform.release(),
                os.cpu_count() or 0, load0[0], load1[0], args.dir, cs.fs_type(args.dir),
                args.leech_dir, cs.fs_type(args.leech_dir),
                ", ".join("%s %s" % kv for kv in sorted(v.items()))), ""]
    if ceil:
        head += ["Machine, measured right before:", ""] + ["- " + c for c in ceil] + [""]
    body = []
    if args.sizes:
        body += ["### uring-bt from %s, by size" % seeders[0], "", sizes_table(rows), ""]
    else:
        for s in seeders:
            rs = sorted([r for r in rows if r["seeder"] == s],
                        key=lambda r: (downloaders.index(r["downloader"]), r["round"]))
            body += ["### From %s" % s, "", summary(s, rs, downloaders), "", rounds_table(rs), ""]
    report = "\n".join(head + body)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        cs.cleanup()
        sys.exit(130)
