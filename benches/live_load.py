#!/usr/bin/env python3
"""Load generator and change->replica latency meter for benches/live.sh.

    live_load.py prep  --src DIR [--dirs N]
    live_load.py load  --src DIR --dst DIR --rate R --seconds S [--size B]
                       [--dirs N] [--tag T] [--grace S] [--label L] [--tsv FILE]
    live_load.py nfs   --src DIR --dst DIR --url URL --netns NS --stage DIR
                       --rate R --seconds S [--size B] [--tag T] [--grace S]
                       [--client keep|fresh] [--jobs J] [--label L] [--tsv FILE]
    live_load.py probe --src DIR --dst DIR [--timeout S]
    live_load.py gen   --dir DIR --files N [--size B]
    live_load.py waitlive --log FILE --pattern TEXT --src DIR --dst DIR --t0 T
    live_load.py cpu PGID...
    live_load.py pressure --out FILE [--interval S]

`load` writes R new files per second (B bytes each, spread over N
subdirectories d00..) into SRC for S seconds, paced on an absolute schedule
(file i is due at t0 + i/R; a late writer catches up instead of drifting).
The time of each file is taken right after its close(). The same process
watches the pre-existing subdirectories of DST with inotify (IN_CREATE,
IN_MOVED_TO, IN_CLOSE_WRITE: a replica file appears under its name by a
link/rename of a complete file, or by a write that ends in a close) and, on
an event for an outstanding name, stats just that name: the file counts as
arrived when it has its full size. Writer and watcher share one thread and
CLOCK_MONOTONIC, so the timestamps are directly comparable and the meter
costs one stat per arrival. A slow sweep (once a second, and at once after
an inotify queue overflow) stats outstanding names as a safety net; files
it finds are counted separately ("by sweep"; expected to be 0). After the
last write it keeps watching for GRACE seconds (or until all arrived), then
reads every arrived file back and compares its content.

`nfs` writes through an NFS server instead, SRC being the export the
server serves: a child process in namespace NS creates, writes and closes
R files/s. With `--client keep` (the default) it is one libnfs session
mounted once from URL (which may end in a ?query: version=, nfsport=) and
kept, as a mount is; with `--client fresh` a new libnfs client per file
(`ip netns exec NS nfs-cp STAGED URL/NAME`, at most J at once, default 16:
a process, a connection and a mount per file). The parent only measures: it watches
SRC and DST with inotify; a file's time is its last change in SRC
(IN_MODIFY, or IN_CLOSE_WRITE: over NFSv4 the server closes the file just
before it answers the client's CLOSE; NFSv3 has no close, so there it is
the last WRITE), and it has arrived when DST has it complete under its
name. Failed copies are counted (nfs_failed), not measured.

The result is one human line and one `RESULT key=value ...` line for the
harness. Latencies are in milliseconds.
"""

import argparse
import ctypes
import errno
import os
import select
import struct
import subprocess
import sys
import time

clock = time.monotonic  # CLOCK_MONOTONIC on Linux

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000
EVENT_HDR = struct.Struct("iIII")


class Inotify:
    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def add(self, path, mask):
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, "inotify_add_watch %s: %s" % (path, os.strerror(e)))
        return wd

    def read(self):
        """All queued events as (wd, mask, name bytes); [] when none."""
        out = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return out
            off, n = 0, len(buf)
            while off < n:
                wd, mask, _cookie, ln = EVENT_HDR.unpack_from(buf, off)
                off += EVENT_HDR.size
                name = buf[off:off + ln].rstrip(b"\0")
                off += ln
                out.append((wd, mask, name))


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(round((len(sorted_vals) - 1) * p)))]


def dirname(i, ndirs):
    return "d%02d" % (i % ndirs)


def content(tag, i, size):
    head = ("%s %d\n" % (tag, i)).encode()
    return (head + b"x" * size)[:size]


def cmd_prep(a):
    for d in range(a.dirs):
        os.makedirs(os.path.join(a.src, dirname(d, a.dirs)), exist_ok=True)


def wait_dirs(dst, ndirs, timeout):
    end = clock() + timeout
    while True:
        missing = [d for d in range(ndirs) if not os.path.isdir(os.path.join(dst, dirname(d, ndirs)))]
        if not missing:
            return
        if clock() > end:
            sys.exit("live_load: %d of the %d subdirectories never appeared in %s (is the replicator running?)" % (len(missing), ndirs, dst))
        time.sleep(0.05)


def cmd_load(a):
    rate, n, size, ndirs, tag = a.rate, int(a.rate * a.seconds), a.size, a.dirs, a.tag
    src, dst = a.src, a.dst
    wait_dirs(dst, ndirs, a.dir_timeout)
    ino = Inotify()
    wd_dir = {}
    for d in range(ndirs):
        wd_dir[ino.add(os.path.join(dst, dirname(d, ndirs)), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR)] = d
    prefix = (tag + "-").encode()
    plen = len(prefix)
    src_paths = [os.path.join(src, dirname(i, ndirs), "%s-%08d" % (tag, i)) for i in range(n)]
    dst_paths = [os.path.join(dst, dirname(i, ndirs), "%s-%08d" % (tag, i)) for i in range(n)]
    t_close = [0.0] * n
    t_seen = [0.0] * n
    outstanding = set()
    by_sweep = 0
    overflows = 0
    partial_seen = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    blob = b"x" * size

    def check(i, now):
        nonlocal partial_seen
        try:
            st = os.stat(dst_paths[i])
        except FileNotFoundError:
            return False
        if st.st_size != size:
            partial_seen += 1
            return False
        t_seen[i] = now
        outstanding.discard(i)
        return True

    def handle_events():
        nonlocal overflows
        evs = ino.read()
        if not evs:
            return False
        now = clock()
        for wd, mask, name in evs:
            if mask & IN_Q_OVERFLOW:
                overflows += 1
                continue
            if not name.startswith(prefix):
                continue
            try:
                i = int(name[plen:])
            except ValueError:
                continue
            if i < n and t_close[i] and not t_seen[i]:
                check(i, now)
        return True

    def sweep(limit=None):
        nonlocal by_sweep
        now = clock()
        cand = sorted(outstanding)
        if limit is not None:
            cand = cand[:limit]
        for i in cand:
            if check(i, now):
                by_sweep += 1

    burst_max = 64
    ru0 = os.times()
    t0 = clock() + 0.05
    i = 0
    max_late = 0.0
    next_sweep = t0 + 1.0
    while i < n:
        now = clock()
        due = t0 + i / rate
        if due <= now:
            k = 0
            while i < n and k < burst_max and t0 + i / rate <= now:
                fd = os.open(src_paths[i], flags, 0o644)
                os.write(fd, ("%s %d\n" % (tag, i)).encode() + blob[: size - len("%s %d\n" % (tag, i))])
                os.close(fd)
                t = clock()
                t_close[i] = t
                late = t - (t0 + i / rate)
                if late > max_late:
                    max_late = late
                outstanding.add(i)
                i += 1
                k += 1
                now = t
        handle_events()
        if now >= next_sweep:
            if overflows:
                sweep()
            else:
                sweep(limit=2000)
            next_sweep = now + 1.0
        if i < n:
            wait = t0 + i / rate - clock()
            if wait > 0:
                select.select([ino.fd], [], [], wait)
    t_end = clock()
    write_secs = t_close[n - 1] - t_close[0] if n > 1 else 0.0
    achieved = (n - 1) / write_secs if write_secs > 0 else float("nan")
    # Grace: wait for the rest.
    deadline = t_end + a.grace
    last_sweep = clock()
    while outstanding and clock() < deadline:
        r, _, _ = select.select([ino.fd], [], [], 0.1)
        if r:
            handle_events()
        if clock() - last_sweep >= 1.0:
            sweep()
            last_sweep = clock()
    handle_events()
    if outstanding:
        sweep()
    missing = len(outstanding)
    drained = clock() - t_end
    ru1 = os.times()
    self_cpu = (ru1.user + ru1.system) - (ru0.user + ru0.system)
    # Content check of everything that arrived.
    bad = 0
    for j in range(n):
        if t_seen[j]:
            try:
                with open(dst_paths[j], "rb") as f:
                    if f.read() != content(tag, j, size):
                        bad += 1
            except OSError:
                bad += 1
    lat = [(t_seen[j] - t_close[j]) * 1e3 for j in range(n) if t_seen[j]]
    s = sorted(lat)
    # Trend: p50 of the files written in each third of the run.
    thirds = []
    for k in range(3):
        part = sorted((t_seen[j] - t_close[j]) * 1e3 for j in range(k * n // 3, (k + 1) * n // 3) if t_seen[j])
        thirds.append(pct(part, 0.5))
    if a.tsv:
        with open(a.tsv, "w") as f:
            f.write("i\tclose_s\tlatency_ms\n")
            for j in range(n):
                f.write("%d\t%.6f\t%s\n" % (j, t_close[j] - t0, "%.3f" % ((t_seen[j] - t_close[j]) * 1e3) if t_seen[j] else "NA"))
    res = dict(
        label=a.label, rate=rate, seconds=a.seconds, files=n, achieved=round(achieved, 1),
        max_late_ms=round(max_late * 1e3, 1), arrived=len(lat), missing=missing,
        p50_ms=round(pct(s, 0.5), 2), p90_ms=round(pct(s, 0.9), 2), p99_ms=round(pct(s, 0.99), 2),
        p999_ms=round(pct(s, 0.999), 2), max_ms=round(s[-1], 2) if s else float("nan"),
        mean_ms=round(sum(s) / len(s), 2) if s else float("nan"),
        p50_thirds_ms="/".join("%.1f" % x for x in thirds),
        drain_s=round(drained, 3), by_sweep=by_sweep, overflows=overflows,
        partial_seen=partial_seen, bad_content=bad, load_cpu_s=round(self_cpu, 2),
    )
    print("%-8s %6d files at %d/s (achieved %.0f/s, writer max %.1f ms late): p50 %.1f ms  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f ms; "
          "p50 by third %s ms; %d never arrived (grace %.0f s); %d found by sweep, %d inotify overflows, %d bad content; "
          "generator+meter CPU %.1f s"
          % (a.label, n, rate, achieved, max_late * 1e3, res["p50_ms"], res["p90_ms"], res["p99_ms"], res["p999_ms"],
             res["max_ms"], res["p50_thirds_ms"], missing, a.grace, by_sweep, overflows, bad, self_cpu), file=sys.stderr)
    print("RESULT " + " ".join("%s=%s" % kv for kv in res.items()))


class NfsSession:
    """One libnfs 4.0 context (ctypes), mounted once from a directory URL
    and kept: the client a mount is, with its session and the export's
    file handle, writing one file after another."""

    class Url(ctypes.Structure):
        _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]

    def __init__(self, url):
        lib = self.lib = ctypes.CDLL("libnfs.so.13")
        P = ctypes.c_void_p
        lib.nfs_init_context.restype = P
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_get_error.argtypes = [P]
        lib.nfs_set_timeout.argtypes = [P, ctypes.c_int]
        lib.nfs_parse_url_dir.restype = ctypes.POINTER(self.Url)
        lib.nfs_parse_url_dir.argtypes = [P, ctypes.c_char_p]
        lib.nfs_destroy_url.argtypes = [ctypes.POINTER(self.Url)]
        lib.nfs_mount.argtypes = [P, ctypes.c_char_p, ctypes.c_char_p]
        lib.nfs_create.argtypes = [P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(P)]
        lib.nfs_write.argtypes = [P, P, ctypes.c_uint64, ctypes.c_char_p]
        lib.nfs_close.argtypes = [P, P]
        self.nfs = lib.nfs_init_context()
        lib.nfs_set_timeout(self.nfs, 5000)
        # The URL's query (version=, nfsport=) configures the context.
        u = lib.nfs_parse_url_dir(self.nfs, url.encode())
        if not u:
            raise OSError("nfs url %s: %s" % (url, self.error()))
        try:
            if lib.nfs_mount(self.nfs, u.contents.server, u.contents.path) != 0:
                raise OSError("nfs mount %s: %s" % (url, self.error()))
        finally:
            lib.nfs_destroy_url(u)

    def error(self):
        return (self.lib.nfs_get_error(self.nfs) or b"").decode(errors="replace")

    def put(self, name, data, times=None):
        """Create, write and close /NAME; True when the server said yes to all three.
        `times`, a list, gets the clock when each of the three returned."""
        fh = ctypes.c_void_p()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        mark = times.append if times is not None else (lambda _t: None)
        if self.lib.nfs_create(self.nfs, ("/" + name).encode(), flags, 0o644, ctypes.byref(fh)) != 0:
            return False
        mark(clock())
        wrote = self.lib.nfs_write(self.nfs, fh, len(data), data) == len(data)
        mark(clock())
        closed = self.lib.nfs_close(self.nfs, fh) == 0
        mark(clock())
        return closed and wrote


def enter_netns(name):
    """Move this process into network namespace NAME (as `ip netns exec`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/run/netns/" + name) as f:
        if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "setns " + name)


def nfs_writer_keep(a, names, w):
    """The child of `nfs --client keep`: R files/s through one long-lived
    libnfs session; writes the number of failed files to pipe `w`."""
    enter_netns(a.netns)
    session = NfsSession(a.url)
    failed = 0
    rows = []
    t0 = clock()
    for i, name in enumerate(names):
        due = t0 + i / a.rate
        wait = due - clock()
        if wait > 0:
            time.sleep(wait)
        times = [clock()]
        if not session.put(name, content(a.tag, i, a.size), times):
            failed += 1
        rows.append([due] + times)
    if a.client_tsv:
        # Where the client's time went, per file (unix seconds): due, the
        # call began, CREATE (OPEN), WRITE and CLOSE answered.
        wall = time.time() - clock()
        with open(a.client_tsv, "w") as f:
            f.write("i\tdue_unix\tbegin_unix\tcreated_unix\twritten_unix\tclosed_unix\n")
            for i, r in enumerate(rows):
                r = r + [None] * (5 - len(r))
                f.write("%d\t%s\n" % (i, "\t".join("%.6f" % (t + wall) if t else "NA" for t in r)))
    os.write(w, b"%d %.3f\n" % (failed, clock() - t0))


def nfs_writer(a, names, w):
    """The child of `nfs --client fresh`: R files/s by a fresh nfs-cp each;
    writes the number of failed copies to pipe `w`."""
    if a.client == "keep":
        return nfs_writer_keep(a, names, w)
    base, _, query = a.url.partition("?")
    query = "?" + query if query else ""
    blob = b"x" * a.size
    running, failed = [], 0
    t0 = clock()
    for i, name in enumerate(names):
        while True:
            still = []
            for p in running:
                if p.poll() is None:
                    still.append(p)
                elif p.returncode != 0:
                    failed += 1
            running = still
            wait = t0 + i / a.rate - clock()
            if wait <= 0 and len(running) < a.jobs:
                break
            time.sleep(max(min(wait, 0.001), 0.0005))
        head = ("%s %d\n" % (a.tag, i)).encode()
        staged = os.path.join(a.stage, name)
        with open(staged, "wb") as f:
            f.write(head + blob[: a.size - len(head)])
        running.append(subprocess.Popen(["ip", "netns", "exec", a.netns, "nfs-cp", staged, "%s/%s%s" % (base, name, query)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in running:
        if p.wait() != 0:
            failed += 1
    os.write(w, b"%d %.3f\n" % (failed, clock() - t0))


def cmd_nfs(a):
    n, size, tag = int(a.rate * a.seconds), a.size, a.tag
    names = ["%s-%08d" % (tag, i) for i in range(n)]
    ino = Inotify()
    src_wd = ino.add(a.src, IN_MODIFY | IN_CLOSE_WRITE | IN_ONLYDIR)
    ino.add(a.dst, IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_ONLYDIR)
    prefix = (tag + "-").encode()
    t_change = [0.0] * n
    t_seen = [0.0] * n
    partial_seen = overflows = 0
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            nfs_writer(a, names, w)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(w)

    def check(i, now):
        nonlocal partial_seen
        try:
            st = os.stat(os.path.join(a.dst, names[i]))
        except FileNotFoundError:
            return
        if st.st_size != size:
            partial_seen += 1
            return
        t_seen[i] = now

    def handle_events():
        nonlocal overflows
        evs = ino.read()
        now = clock()
        for wd, mask, name in evs:
            if mask & IN_Q_OVERFLOW:
                overflows += 1
                continue
            if not name.startswith(prefix):
                continue
            try:
                i = int(name[len(prefix):])
            except ValueError:
                continue
            if i >= n:
                continue
            if wd == src_wd:
                t_change[i] = now
            elif not t_seen[i]:
                check(i, now)

    done = None
    while done is None:
        select.select([ino.fd, r], [], [], 1.0)
        handle_events()
        if os.waitpid(child, os.WNOHANG)[0]:
            done = os.read(r, 100).split()
    if len(done) != 2:
        sys.exit("live_load nfs: the writer died (see above)")
    failed, write_secs = int(done[0]), float(done[1])
    deadline = clock() + a.grace
    while clock() < deadline and any(t_change[i] and not t_seen[i] for i in range(n)):
        select.select([ino.fd], [], [], 0.2)
        handle_events()
        for i in range(n):  # a sweep for late files
            if t_change[i] and not t_seen[i]:
                check(i, clock())
    bad = 0
    for i in range(n):
        if t_seen[i]:
            with open(os.path.join(a.dst, names[i]), "rb") as f:
                if f.read() != content(tag, i, size):
                    bad += 1
    lat = sorted((t_seen[i] - t_change[i]) * 1e3 for i in range(n) if t_seen[i] and t_change[i])
    if a.tsv:
        with open(a.tsv, "w") as f:
            # Wall-clock times too, to line files up with the daemons' logs.
            wall = time.time() - clock()
            f.write("i\tlatency_ms\tchanged_unix\tseen_unix\n")
            for i in range(n):
                ms = "%.3f" % ((t_seen[i] - t_change[i]) * 1e3) if t_seen[i] and t_change[i] else "NA"
                at = ["%.6f" % (t + wall) if t else "NA" for t in (t_change[i], t_seen[i])]
                f.write("%d\t%s\t%s\t%s\n" % (i, ms, at[0], at[1]))
    res = dict(
        label=a.label, rate=a.rate, seconds=a.seconds, files=n, achieved=round(n / write_secs, 1) if write_secs else "nan",
        nfs_failed=failed, written=sum(1 for t in t_change if t), arrived=len(lat),
        missing=sum(1 for i in range(n) if t_change[i] and not t_seen[i]),
        p50_ms=round(pct(lat, 0.5), 2), p90_ms=round(pct(lat, 0.9), 2), p99_ms=round(pct(lat, 0.99), 2),
        max_ms=round(lat[-1], 2) if lat else float("nan"),
        partial_seen=partial_seen, bad_content=bad, overflows=overflows,
    )
    print("%-8s %6d files offered at %g/s through NFS (client achieved %s/s, %d failed): p50 %.1f ms  p90 %.1f  p99 %.1f  max %.1f ms; "
          "%d never arrived (grace %.0f s); %d bad content"
          % (a.label, n, a.rate, res["achieved"], failed, res["p50_ms"], res["p90_ms"], res["p99_ms"], res["max_ms"],
             res["missing"], a.grace, bad), file=sys.stderr)
    print("RESULT " + " ".join("%s=%s" % kv for kv in res.items()))


def cmd_probe(a):
    """Write one file in SRC and print how long (ms) until it is in DST."""
    name = "probe-%d-%d" % (os.getpid(), time.time_ns())
    data = name.encode()
    with open(os.path.join(a.src, name), "wb") as f:
        f.write(data)
    t = clock()
    p = os.path.join(a.dst, name)
    while clock() - t < a.timeout:
        try:
            if os.stat(p).st_size == len(data):
                print("%.1f" % ((clock() - t) * 1e3))
                return
        except FileNotFoundError:
            pass
        time.sleep(0.001)
    print("probe %s not in %s after %.0f s" % (name, a.dst, a.timeout), file=sys.stderr)
    sys.exit(1)


def cmd_gen(a):
    """FILES files of SIZE bytes, 1000 per directory."""
    blob = os.urandom(a.size + 4096)
    for i in range(a.files):
        d = os.path.join(a.dir, "t%03d" % (i // 1000))
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        off = i % 4096
        with open(os.path.join(d, "f%06d" % i), "wb") as f:
            f.write(blob[off:off + a.size])


def cmd_waitlive(a):
    """After a restart begun at T0 (unix time): wait for PATTERN in the
    primary's log, then write a file and wait for it on the standby. Prints
    `RESULT sync_s=.. probe_ms=.. live_s=..`."""
    end = time.time() + a.timeout
    pat = a.pattern.encode()
    while True:
        try:
            with open(a.log, "rb") as f:
                if pat in f.read():
                    break
        except FileNotFoundError:
            pass
        if time.time() > end:
            sys.exit("waitlive: %r not in %s after %.0f s" % (a.pattern, a.log, a.timeout))
        time.sleep(0.005)
    t_sync = time.time()
    name = "restart-probe-%d" % time.time_ns()
    with open(os.path.join(a.src, name), "wb") as f:
        f.write(b"probe")
    t_w = time.time()
    p = os.path.join(a.dst, name)
    while True:
        try:
            if os.stat(p).st_size == 5:
                break
        except FileNotFoundError:
            pass
        if time.time() > end:
            sys.exit("waitlive: probe not on the standby after %.0f s" % a.timeout)
        time.sleep(0.001)
    t_live = time.time()
    print("RESULT sync_s=%.3f probe_ms=%.1f live_s=%.3f" % (t_sync - a.t0, (t_live - t_w) * 1e3, t_live - a.t0))


def cmd_pressure(a):
    """Samples, every INTERVAL s until killed, the kernel's pressure stall
    counters (/proc/pressure/{cpu,io}: "some" and "full" microseconds, as
    totals) and the CPU time of the whole machine (/proc/stat, clock
    ticks: busy = user+nice+system+irq+softirq, iowait, idle) into OUT, a
    TSV with unix times: the difference of two rows is what that interval
    held (a stall, a saturated CPU)."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    def psi(kind):
        with open("/proc/pressure/" + kind) as f:
            some, full = f.read().splitlines()[:2]
        return [some.rsplit("=", 1)[1], full.rsplit("=", 1)[1]]

    def cpu():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        return [str(v[0] + v[1] + v[2] + v[5] + v[6]), str(v[4]), str(v[3])]

    with open(a.out, "w", buffering=1 << 16) as f:
        f.write("unix\tcpu_some_us\tcpu_full_us\tio_some_us\tio_full_us\tbusy_ticks\tiowait_ticks\tidle_ticks\n")
        nxt = time.time()
        try:
            while True:
                f.write("%.6f\t%s\n" % (time.time(), "\t".join(psi("cpu") + psi("io") + cpu())))
                nxt += a.interval
                time.sleep(max(0.0, nxt - time.time()))
        finally:
            f.flush()


def cmd_cpu(a):
    """Sum of utime+stime+cutime+cstime (clock ticks) over the processes
    whose process group is one of PGID..."""
    groups = set(a.pgid)
    total = 0
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e, "rb") as f:
                s = f.read()
        except OSError:
            continue
        f = s[s.rindex(b")") + 2:].split()
        # after "comm)": 0 state, 1 ppid, 2 pgrp, ..., 11 utime, 12 stime, 13 cutime, 14 cstime
        if int(f[2]) in groups:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    print(total)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prep")
    p.add_argument("--src", required=True)
    p.add_argument("--dirs", type=int, default=100)
    p.set_defaults(fn=cmd_prep)
    p = sub.add_parser("load")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--dirs", type=int, default=100)
    p.add_argument("--tag", default="f")
    p.add_argument("--grace", type=float, default=30)
    p.add_argument("--dir-timeout", type=float, default=120)
    p.add_argument("--label", default="load")
    p.add_argument("--tsv")
    p.set_defaults(fn=cmd_load)
    p = sub.add_parser("nfs")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--url", required=True, help="libnfs URL of SRC on the server (nfs://HOST/PATH?QUERY)")
    p.add_argument("--netns", required=True, help="the client's network namespace")
    p.add_argument("--stage", required=True, help="a local directory for the files to copy")
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--tag", default="n")
    p.add_argument("--grace", type=float, default=30)
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--client", choices=["keep", "fresh"], default="keep",
                   help="keep: one long-lived libnfs session (as a mount); fresh: a new nfs-cp per file")
    p.add_argument("--label", default="nfs")
    p.add_argument("--tsv")
    p.add_argument("--client-tsv", help="with --client keep: each file's client-side times")
    p.set_defaults(fn=cmd_nfs)
    p = sub.add_parser("probe")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(fn=cmd_probe)
    p = sub.add_parser("gen")
    p.add_argument("--dir", required=True)
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--size", type=int, default=1024)
    p.set_defaults(fn=cmd_gen)
    p = sub.add_parser("waitlive")
    p.add_argument("--log", required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(fn=cmd_waitlive)
    p = sub.add_parser("pressure")
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.set_defaults(fn=cmd_pressure)
    p = sub.add_parser("cpu")
    p.add_argument("pgid", type=int, nargs="+")
    p.set_defaults(fn=cmd_cpu)
    a = ap.parse_args()
    if getattr(a, "size", 64) < 32:
        ap.error("--size must be at least 32 bytes")
    a.fn(a)


if __name__ == "__main__":
    main()
