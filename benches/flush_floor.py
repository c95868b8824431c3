#!/usr/bin/env python3
"""The floor of a durable commit on this machine, by flush method.

Creates 1 KiB files at RATE/s in DIR (default: a directory under
/work, the filesystem the benches' exports live on) and makes each batch
durable the way the standby does it: content flushed, then renamed into
place, then the rename flushed. Batches form as on the standby: while one
flush is in flight, new files gather for the next (group commit).

Methods, alternating within every round:
  syncfs  syncfs(2) of the filesystem, rename, syncfs again (today's standby)
  fsync   fsync of each file of the batch (in parallel threads, so ext4 can
          join them into one journal commit), rename, fsync of each touched
          directory

Each method runs quiet, and beside a writer dirtying the same filesystem
(NOISE_MBPS of buffered writes into a scratch file, never flushed by it,
as ganesha's or a build's writes are).

Prints every (round, rate, noise, method): per-batch flush time p50/p99/max
and per-file creation-to-durable latency p50/p99/max, then medians.

  ROUNDS=3 SECONDS=8 RATES=200,1000 NOISE_MBPS=32 DIR=/work/flushbench \
      python3 benches/flush_floor.py
"""

import concurrent.futures as cf
import ctypes
import os
import shutil
import statistics
import threading
import time

LIBC = ctypes.CDLL(None, use_errno=True)


def syncfs(fd):
    if LIBC.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Noise(threading.Thread):
    """Buffered writes of MBPS MiB/s into a 64 MiB scratch file, rewritten in a ring."""

    def __init__(self, d, mbps):
        super().__init__(daemon=True)
        self.path = os.path.join(d, "noise.bin")
        self.mbps = mbps
        self.stop = threading.Event()

    def run(self):
        chunk = os.urandom(1 << 20)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        off, t = 0, time.monotonic()
        try:
            while not self.stop.is_set():
                os.pwrite(fd, chunk, off)
                off = (off + len(chunk)) % (64 << 20)
                t += 1.0 / self.mbps
                d = t - time.monotonic()
                if d > 0:
                    time.sleep(d)
        finally:
            os.close(fd)


def flush_syncfs(root_fd, tmps, _pool):
    syncfs(root_fd)
    for tmp, final in tmps:
        os.rename(tmp, final)
    syncfs(root_fd)


def fsync_path(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush_fsync(_root_fd, tmps, pool):
    list(pool.map(fsync_path, [t for t, _ in tmps]))
    dirs = set()
    for tmp, final in tmps:
        os.rename(tmp, final)
        dirs.add(os.path.dirname(final))
    list(pool.map(fsync_path, sorted(dirs)))


METHODS = {"syncfs": flush_syncfs, "fsync": flush_fsync}


def run_case(base, rate, seconds, method, noise_mbps):
    d = os.path.join(base, "case")
    shutil.rmtree(d, ignore_errors=True)
    subdirs = [os.path.join(d, f"d{i}") for i in range(4)]
    for s in subdirs:
        os.makedirs(s)
    os.makedirs(os.path.join(d, ".stage"))
    root_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    syncfs(root_fd)
    noise = Noise(d, noise_mbps) if noise_mbps else None
    if noise:
        noise.start()
        time.sleep(1.0)
    pending, lock = [], threading.Lock()
    done = threading.Event()
    payload = os.urandom(1024)

    def produce():
        t0 = time.monotonic()
        n = 0
        while True:
            t = t0 + n / rate
            if t - t0 >= seconds:
                break
            w = t - time.monotonic()
            if w > 0:
                time.sleep(w)
            tmp = os.path.join(d, ".stage", f"t{n}")
            final = os.path.join(subdirs[n % len(subdirs)], f"f{n}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
            with lock:
                pending.append((time.monotonic(), tmp, final))
            n += 1
        done.set()

    batch_ms, file_ms = [], []
    pool = cf.ThreadPoolExecutor(max_workers=16)
    prod = threading.Thread(target=produce)
    prod.start()
    flush = METHODS[method]
    while True:
        with lock:
            batch, pending[:] = list(pending), []
        if not batch:
            if done.is_set():
                break
            time.sleep(0.0005)
            continue
        s = time.monotonic()
        flush(root_fd, [(t, f) for _, t, f in batch], pool)
        e = time.monotonic()
        batch_ms.append((e - s) * 1000)
        file_ms.extend((e - c) * 1000 for c, _, _ in batch)
    prod.join()
    pool.shutdown()
    if noise:
        noise.stop.set()
        noise.join()
    os.close(root_fd)
    shutil.rmtree(d, ignore_errors=True)
    nfiles = len(file_ms)
    return {
        "batches": len(batch_ms),
        "files": nfiles,
        "rate": nfiles / seconds,
        "b50": pct(batch_ms, 50),
        "b99": pct(batch_ms, 99),
        "bmax": max(batch_ms) if batch_ms else float("nan"),
        "f50": pct(file_ms, 50),
        "f99": pct(file_ms, 99),
        "fmax": max(file_ms) if file_ms else float("nan"),
    }


def main():
    rounds = int(os.environ.get("ROUNDS", "3"))
    seconds = float(os.environ.get("SECONDS", "8"))
    rates = [int(r) for r in os.environ.get("RATES", "200,1000").split(",")]
    noise_mbps = float(os.environ.get("NOISE_MBPS", "32"))
    base = os.environ.get("DIR", "/work/flushbench")
    os.makedirs(base, exist_ok=True)
    results = {}
    print(f"# {time.strftime('%F %T')} dir={base} seconds={seconds} noise={noise_mbps} MiB/s")
    print("round rate noise  method  batches files/s | batch ms p50 p99 max | file ms p50 p99 max | load")
    for r in range(rounds):
        for rate in rates:
            for noise in (0, noise_mbps):
                order = list(METHODS)
                if r % 2:
                    order.reverse()
                for m in order:
                    x = run_case(base, rate, seconds, m, noise)
                    results.setdefault((rate, noise, m), []).append(x)
                    load = os.getloadavg()[0]
                    print(
                        f"{r:5} {rate:4} {noise:5.0f} {m:>7} {x['batches']:8} {x['rate']:7.0f} |"
                        f" {x['b50']:6.1f} {x['b99']:6.1f} {x['bmax']:6.1f} |"
                        f" {x['f50']:6.1f} {x['f99']:6.1f} {x['fmax']:6.1f} | {load:.2f}",
                        flush=True,
                    )
    print("# medians over rounds (of each round's p50 / p99 / max), and the worst round's p99")
    for (rate, noise, m), xs in sorted(results.items()):
        med = {k: statistics.median(x[k] for x in xs) for k in ("b50", "b99", "f50", "f99", "fmax")}
        worst = max(x["f99"] for x in xs)
        print(
            f"rate {rate:4} noise {noise:3.0f} {m:>7}: batch p50 {med['b50']:.1f} p99 {med['b99']:.1f} ms;"
            f" file p50 {med['f50']:.1f} p99 {med['f99']:.1f} max {med['fmax']:.1f} ms; worst p99 {worst:.1f}"
        )
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
