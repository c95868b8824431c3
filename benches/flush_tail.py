#!/usr/bin/env python3
"""Is every slow file a slow flush? Lines up a latency run's per-file times
(the --tsv of benches/live_load.py: i, latency_ms, changed_unix, seen_unix)
with the standby's debug log (SYNCD_LOG=info,syncd::standby=debug: one line
per durable flush, with its duration in ms, logged when it ends).

  python3 benches/flush_tail.py LATENCY.tsv STANDBY.log [SLOW_MS=50] [FLUSH_MS=20]

Prints the flushes' p50/p99/max by kind, the files slower than SLOW_MS, and
how many of them waited on a flush of at least FLUSH_MS (one that overlaps
the time between the file's change and its arrival).
"""

import datetime
import re
import sys

LINE = re.compile(r"^(\S+Z) .*durable flush before (rename \((\S+ ?\S*)\)|the commit's reply)(.*)$")
MS = re.compile(r"\bms=([0-9.]+)")
PLAN = re.compile(r"plan=(\w+)")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def main():
    tsv, log = sys.argv[1], sys.argv[2]
    slow_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 50.0
    flush_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    flushes = []  # (start, end, ms, kind)
    for raw in open(log, errors="replace"):
        line = ansi.sub("", raw)
        m = LINE.match(line)
        if not m:
            continue
        end = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        ms = float(MS.search(line).group(1))
        if m.group(3):
            kind = "before rename, " + m.group(3)
        else:
            p = PLAN.search(line)
            kind = "before reply, " + (p.group(1) if p else "syncfs")
        flushes.append((end - ms / 1e3, end, ms, kind))
    files = []
    for row in open(tsv):
        f = row.rstrip("\n").split("\t")
        if f[0] == "i" or "NA" in f[1:4]:
            continue
        files.append((float(f[1]), float(f[2]), float(f[3])))
    print(f"{len(flushes)} flushes, {len(files)} files")
    for kind in sorted({k for *_, k in flushes}):
        xs = [ms for *_, ms, k in flushes if k == kind]
        print(f"  {kind:32} n {len(xs):6}  p50 {pct(xs, 50):7.1f}  p99 {pct(xs, 99):7.1f}  max {max(xs):7.1f} ms")
    slow = [f for f in files if f[0] > slow_ms]
    explained = 0
    worst = []
    for lat, t0, t1 in slow:
        over = [ms for s, e, ms, _ in flushes if s < t1 and e > t0 and ms >= flush_ms]
        if over:
            explained += 1
        worst.append(max(over, default=0.0))
    print(f"files slower than {slow_ms:g} ms: {len(slow)}; of them waited on a flush >= {flush_ms:g} ms: {explained}")
    if slow:
        print(f"  longest such flush per slow file: p50 {pct(worst, 50):.1f}  max {max(worst):.1f} ms")


if __name__ == "__main__":
    main()
