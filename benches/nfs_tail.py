#!/usr/bin/env python3
"""Where did each slow file of an NFS latency run wait? Lines up, per file
slower than SLOW_MS, what benches/nfs_latency.sh keeps in its directory:

  latency-vN.tsv    the bench: the file's last change in the export, seen
                    complete on the standby (unix seconds)
  client-vN.tsv     the client (CLIENT=keep): each call's answer
  pressure-vN.tsv   /proc/pressure/{cpu,io} and /proc/stat every 10 ms
  primary.log       with SYNCD_LOG=...,syncd::watch=trace,
                    syncd::primary::source=trace,syncd::primary=debug,
                    syncd::lease=debug: the watch thread's events, each read
                    of a file, each batch's timing and lost packets, waits
                    for the watch
  standby.log       with syncd::standby=debug: each durable flush

  python3 benches/nfs_tail.py DIR [--version 4] [--slow 50] [--show 20]

A file's time is cut into: the watch (its close handled by the primary's
watch thread, after the bench saw it), the wait for its batch (the margin
of the closed-file rule, then a batch in flight or a recheck), its batch
up to its read, and the read to the bench seeing it on the standby. The
longest part is the file's cause; a batch that was slow is explained by a
standby flush of 20 ms or more inside it, or else by the pressure stall
counters over it (the kernel's: CPU runnable but not running, tasks
waiting on I/O). Files whose times overlap form one stall.
"""

import argparse
import bisect
import datetime
import re

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\S+Z)\s+(\w+)\s+(\S+?):?\s(.*)$")
MARGIN = 0.010  # the coarse rule's margin with 4 ms ticks, if the log does not say
# The primary says at start how long after a close (its stat, or the file's
# ctime) a closed file's record can be trusted, as a Rust Duration.
TRUSTED = re.compile(r"trusted once the watch is synced ([\d.]+) ?(ns|µs|us|ms|s) past")
UNIT = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def margin_of(log):
    for _, _, _, msg in lines(log):
        m = TRUSTED.search(msg)
        if m:
            return float(m.group(1)) * UNIT[m.group(2)]
    return None


def unix(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def lines(path):
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    for raw in f:
        m = TS.match(ANSI.sub("", raw))
        if m:
            yield unix(m.group(1)), m.group(2), m.group(3), m.group(4)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class Pressure:
    def __init__(self, path):
        self.t, self.rows = [], []
        try:
            f = open(path)
        except FileNotFoundError:
            return
        next(f, None)
        for row in f:
            v = row.split()
            if len(v) == 8:
                self.t.append(float(v[0]))
                self.rows.append([int(x) for x in v[1:]])

    def over(self, a, b):
        """Share of [a, b] with cpu some, io some, io full stalls, and the
        machine's CPU busy share (of 2 cores)."""
        if not self.t or b <= a:
            return None
        i = max(0, bisect.bisect_right(self.t, a) - 1)
        j = min(len(self.t) - 1, bisect.bisect_left(self.t, b))
        if j <= i:
            return None
        dt = (self.t[j] - self.t[i]) * 1e6
        d = [y - x for x, y in zip(self.rows[i], self.rows[j])]
        ticks = d[4] + d[5] + d[6]
        return dict(cpu=d[0] / dt, io=d[2] / dt, io_full=d[3] / dt,
                    busy=d[4] / ticks if ticks else float("nan"), iowait=d[5] / ticks if ticks else float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--version", default="4")
    ap.add_argument("--slow", type=float, default=50.0)
    ap.add_argument("--flush", type=float, default=20.0)
    ap.add_argument("--show", type=int, default=20)
    a = ap.parse_args()
    d, v = a.dir, a.version
    tag = "v%s-" % v

    files = {}
    for row in open("%s/latency-v%s.tsv" % (d, v)):
        f = row.rstrip("\n").split("\t")
        if f[0] == "i" or "NA" in f[1:4]:
            continue
        files[int(f[0])] = dict(lat=float(f[1]), change=float(f[2]), seen=float(f[3]), reads=[], close=None, create=None)
    client = {}
    try:
        for row in open("%s/client-v%s.tsv" % (d, v)):
            f = row.rstrip("\n").split("\t")
            if f[0] == "i":
                continue
            client[int(f[0])] = [None if x == "NA" else float(x) for x in f[1:]]
    except FileNotFoundError:
        pass

    global MARGIN
    said = margin_of(d + "/primary.log")
    if said is not None:
        MARGIN = said
    print("  closed-file margin: %.1f ms (%s)" % (MARGIN * 1e3, "from primary.log" if said is not None else "assumed"))

    name = re.compile(re.escape(tag) + r"(\d{8})")
    batches, syncs, losses = [], [], []
    for t, level, target, msg in lines(d + "/primary.log"):
        if target == "syncd::watch" and msg.startswith("event"):
            m = name.search(msg)
            if not m or int(m.group(1)) not in files:
                continue
            x = files[int(m.group(1))]
            if "Create(" in msg and x["create"] is None:
                x["create"] = t
            elif "Close(Write)" in msg and x["close"] is None:
                x["close"] = t
        elif target == "syncd::primary::source" and msg.startswith("read"):
            m = name.search(msg)
            if m and int(m.group(1)) in files:
                files[int(m.group(1))]["reads"].append((t, "busy" if "busy" in msg or "Busy" in msg else msg.split("end=")[-1].split()[0]))
        elif "batch timing" in msg:
            kv = dict(re.findall(r"(\w+)=(\d+)", msg))
            rec, com = int(kv.get("reconcile_us", 0)) / 1e6, int(kv.get("commit_us", 0)) / 1e6
            batches.append((t - com - rec, t - com, t, int(kv.get("changes", 0))))
        elif "QUIC packets lost" in msg:
            losses.append((t, int(re.search(r"lost=(\d+)", msg).group(1))))
        elif "synced with the watch thread" in msg:
            kv = dict(re.findall(r"(\w+)=(\w+)", msg))
            syncs.append((t - int(kv["waited_us"]) / 1e6, t, kv.get("reached")))
    batches.sort()
    bstart = [b[0] for b in batches]

    flushes = []
    for t, level, target, msg in lines(d + "/standby.log"):
        if "durable flush before" not in msg:
            continue
        m = re.search(r"\bms=([0-9.]+)", msg)
        if m:
            ms = float(m.group(1))
            kind = "rename" if "before rename" in msg else "reply"
            flushes.append((t - ms / 1e3, t, ms, kind))
    pressure = Pressure("%s/pressure-v%s.tsv" % (d, v))

    def batch_at(t):
        """The batch in flight at t (start <= t <= end), or None."""
        i = bisect.bisect_right(bstart, t) - 1
        if i >= 0 and batches[i][2] >= t:
            return batches[i]
        return None

    def explain(a0, b0):
        """What made [a0, b0] slow: a long standby flush, else pressure."""
        long = [f for f in flushes if f[0] < b0 and f[1] > a0 and f[2] >= a.flush]
        if long:
            f = max(long, key=lambda f: f[2])
            return "standby flush before %s (%.0f ms)" % (f[3], f[2])
        lo = [n for t, n in losses if a0 <= t <= b0 + 0.001]
        if lo:
            return "QUIC packets lost (%d)" % sum(lo)
        sl = [s for s in syncs if s[0] < b0 and s[1] > a0 and s[1] - s[0] >= 0.005]
        if sl:
            return "reader waited for the watch thread (%.0f ms)" % (max(s[1] - s[0] for s in sl) * 1e3)
        p = pressure.over(a0, b0)
        if p is None:
            return "unexplained (no pressure samples)"
        if p["io_full"] >= 0.3 or p["io"] >= 0.5:
            return "I/O stall (io some %.0f%%, full %.0f%%)" % (p["io"] * 100, p["io_full"] * 100)
        if p["cpu"] >= 0.3 or p["busy"] >= 0.9:
            return "CPU (cpu some %.0f%%, busy %.0f%% of 2 cores)" % (p["cpu"] * 100, p["busy"] * 100)
        return "unexplained (cpu some %.0f%%, io some %.0f%%, busy %.0f%%)" % (p["cpu"] * 100, p["io"] * 100, p["busy"] * 100)

    lat = sorted(x["lat"] for x in files.values())
    print("%d files: p50 %.1f p90 %.1f p99 %.1f max %.1f ms; %d batches (duration p50 %.1f p99 %.1f max %.1f ms); %d standby flushes"
          % (len(lat), pct(lat, 50), pct(lat, 90), pct(lat, 99), lat[-1] if lat else float("nan"), len(batches),
             pct([(b[2] - b[0]) * 1e3 for b in batches], 50), pct([(b[2] - b[0]) * 1e3 for b in batches], 99),
             max([(b[2] - b[0]) * 1e3 for b in batches], default=float("nan")), len(flushes)))
    for kind in ("rename", "reply"):
        xs = [f[2] for f in flushes if f[3] == kind]
        if xs:
            print("  standby flush before %-6s n %5d  p50 %6.1f  p99 %6.1f  max %7.1f ms" % (kind, len(xs), pct(xs, 50), pct(xs, 99), max(xs)))
    if losses:
        print("  QUIC packets lost: %d in %d batches" % (sum(n for _, n in losses), len(losses)))
    if syncs:
        w = [(s[1] - s[0]) * 1e3 for s in syncs]
        print("  reader waits for the watch thread >= 1 ms: %d (p50 %.1f, max %.1f ms, %d not reached)"
              % (len(w), pct(w, 50), max(w), sum(1 for s in syncs if s[2] == "false")))
    p = pressure.over(min(x["change"] for x in files.values()), max(x["seen"] for x in files.values())) if files else None
    if p:
        print("  whole run: cpu some %.0f%%, io some %.0f%% (full %.0f%%), CPU busy %.0f%% of 2 cores, iowait %.0f%%"
              % (p["cpu"] * 100, p["io"] * 100, p["io_full"] * 100, p["busy"] * 100, p["iowait"] * 100))

    # Client: time from the call's start to the server's CLOSE answer.
    if client:
        cl = [(r[4] - r[1]) * 1e3 for r in client.values() if r[4] and r[1]]
        late = [(r[1] - r[0]) * 1e3 for r in client.values() if r[1] and r[0]]
        print("  client: create+write+close p50 %.1f p99 %.1f max %.1f ms; start behind schedule p50 %.1f p99 %.1f max %.1f ms"
              % (pct(cl, 50), pct(cl, 99), max(cl), pct(late, 50), pct(late, 99), max(late)))

    # Every file: read busy first (its close record young), and then left
    # out of the very next batch.
    young = skipped_any = 0
    for x in files.values():
        rb = [q[0] for q in x["reads"] if q[1] == "busy"]
        sent = [q[0] for q in x["reads"] if q[1] == "Sent"]
        if not rb or not sent:
            continue
        young += 1
        bb, bs = batch_at(rb[-1]), batch_at(sent[-1])
        if bb and bs and any(bb[2] < s0 < bs[0] for s0 in bstart[bisect.bisect_left(bstart, bb[0]):bisect.bisect_left(bstart, bs[0])]):
            skipped_any += 1
    print("  files read while their close record was young: %d; of them left out of the next batch: %d" % (young, skipped_any))

    slow = sorted((i for i, x in files.items() if x["lat"] > a.slow), key=lambda i: files[i]["change"])
    causes, rows = {}, []
    for i in slow:
        x = files[i]
        t0, seen = x["change"], x["seen"]
        w = x["close"]
        sent = [r for r in x["reads"] if r[1] == "Sent"]
        r = sent[-1][0] if sent else (x["reads"][-1][0] if x["reads"] else None)
        busy = sum(1 for q in x["reads"] if q[1] == "busy")
        b = batch_at(r) if r else None
        seg = {}
        if w is not None:
            seg["watch"] = w - t0
        ready = max(w if w is not None else t0, t0 + MARGIN)
        if b is not None:
            seg["wait for batch"] = b[0] - ready
            seg["batch to read"] = r - b[0]
        seg["read to seen"] = seen - (r if r else ready)
        part = max(seg, key=seg.get)
        if part == "watch":
            cause = "watch thread behind: " + explain(t0, w)
        elif part == "wait for batch":
            inflight = batch_at(ready)
            # Read busy (a young record) in one batch, then not in the
            # next one although due: a deferral that missed it.
            rb = [q[0] for q in x["reads"] if q[1] == "busy"]
            bb = batch_at(rb[-1]) if rb else None
            skipped = sum(1 for s0 in bstart if bb and b and bb[2] < s0 < b[0])
            if skipped:
                cause = "deferred past the next batch (%d skipped)" % skipped
            elif inflight is not None and inflight[2] - inflight[0] > a.slow / 1e3:
                cause = "batch in flight slow: " + explain(inflight[0], inflight[2])
            elif busy > 1:
                cause = "rechecks (%d busy reads)" % busy
            else:
                cause = "loop did not ship: " + explain(ready, b[0])
        else:
            cause = "own batch slow: " + explain(b[0] if b else ready, seen)
        key = re.sub(r" \(.*", "", cause)
        causes[key] = causes.get(key, 0) + 1
        rows.append((i, x, seg, busy, cause, client.get(i)))

    # Stalls: slow files whose [change, seen] overlap.
    stalls = []
    for i, x, *_ in rows:
        if stalls and x["change"] <= stalls[-1][1]:
            stalls[-1][1] = max(stalls[-1][1], x["seen"])
            stalls[-1][2] += 1
        else:
            stalls.append([x["change"], x["seen"], 1])
    print("files slower than %g ms: %d, in %d stalls (longest %s)" % (
        a.slow, len(slow), len(stalls), ", ".join("%.0f ms x %d files" % ((s[1] - s[0]) * 1e3, s[2]) for s in sorted(stalls, key=lambda s: s[0] - s[1])[:5])))
    for k, n in sorted(causes.items(), key=lambda kv: -kv[1]):
        print("  %5d  %s" % (n, k))
    print("slowest %d (ms: watch / wait for batch / batch to read / read to seen; busy reads; client call; cause):" % a.show)
    for i, x, seg, busy, cause, c in sorted(rows, key=lambda r: -r[1]["lat"])[:a.show]:
        cc = "%.1f" % ((c[4] - c[1]) * 1e3) if c and c[4] and c[1] else "-"
        print("  %s%08d %7.1f: %s; %d; %s; %s" % (tag, i, x["lat"], " / ".join(
            "%.1f" % (seg[k] * 1e3) if k in seg else "-" for k in ("watch", "wait for batch", "batch to read", "read to seen")), busy, cc, cause))


if __name__ == "__main__":
    main()
