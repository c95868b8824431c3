"""NFS pieces of the failover bench: nfs-ganesha on each node (the recipe of
tests/common/nfs.rs: its own rpcbind in a private /run, `Graceless`, FSAL
VFS on the node's export, listening on every address of the namespace, the
service address included) and the libnfs writers in the client namespace.
"""

import datetime
import os
import re
import statistics
import shutil
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("ganesha.nfsd", "rpcbind", "unshare")
# The one ganesha configuration, shared with the demo and the tests (src/ganesha.rs).
LAB_CONF = os.path.join(HERE, "..", "..", "contrib", "ganesha", "lab.conf")


def ganesha_conf(export, recovery, grace=None):
    """The template filled in as src/ganesha.rs `config` does: no grace
    period (`grace` None), or `grace` s with leases 5 s shorter."""
    with open(LAB_CONF) as f:
        text = f.read()
    if grace is None:
        g = "Graceless = true;"
    else:
        g = f"Graceless = false; Grace_Period = {grace}; Lease_Lifetime = {max(1, grace - 5)};"
    return text.replace("@GRACE@", g).replace("@RECOVERY@", recovery).replace("@EXPORT@", export)


def missing():
    """The first tool the NFS mode needs that is not installed, or None."""
    for t in TOOLS:
        if not shutil.which(t):
            return t
    try:
        import ctypes
        ctypes.CDLL("libnfs.so.13")
    except OSError:
        return "libnfs (libnfs.so.13)"
    return None


def start_ganesha(group, netns, d, export, seq):
    """Starts ganesha and its rpcbind in `group` (one process group: a host
    death SIGKILLs both). Returns the log path ready() reads."""
    g = f"{d}/ganesha"
    os.makedirs(f"{g}/recovery", exist_ok=True)
    conf, log = f"{g}/ganesha-{seq}.conf", f"{g}/ganesha-{seq}.log"
    with open(conf, "w") as f:
        f.write(ganesha_conf(export, f"{g}/recovery"))
    script = (f"mount -t tmpfs tmpfs /run || exit 1; rpcbind -f -w & sleep 0.3; "
              f"exec ganesha.nfsd -F -f {conf} -L {log} -p {g}/ganesha-{seq}.pid")
    group.spawn(["ip", "netns", "exec", netns, "unshare", "--mount", "sh", "-c", script], f"{g}/ganesha.out")
    return log


def serve_hook(d, export, grace):
    """The production recipe as a syncd service hook (`promote`/`demote`):
    ganesha runs only on the leader, started by the promote hook with its
    grace period on (`Graceless = false`, Grace_Period `grace` s,
    Lease_Lifetime `grace` - 5 s) and stopped by the demote hook. The NFSv4
    recovery directory is the node's own, outside the export (not
    replicated: syncd replicates the export only, and clients must not see
    it). Its process group id goes to serve.pgid so the bench's host death
    kills it too (it runs in a session of its own). Returns the script path."""
    g = f"{d}/ganesha"
    os.makedirs(f"{g}/recovery", exist_ok=True)
    conf, log = f"{g}/ganesha-serve.conf", f"{g}/ganesha-serve.log"
    with open(conf, "w") as f:
        f.write(ganesha_conf(export, f"{g}/recovery", grace))
    script = f"{d}/serve.sh"
    inner = (f"mount -t tmpfs tmpfs /run || exit 1; rpcbind -f -w & sleep 0.3; "
             f"exec ganesha.nfsd -F -f {conf} -L {log} -p {g}/ganesha-serve.pid")
    with open(script, "w") as f:
        f.write(f"""#!/bin/sh
# promote: start ganesha (grace on) and return once it serves; demote: stop it.
P={d}/serve.pgid
running() {{ [ -s $P ] && kill -0 -"$(cat $P)" 2>/dev/null; }}
case "$1" in
start)
    running && exit 0
    : > {log}
    setsid unshare --mount sh -c '{inner}' </dev/null >>{g}/ganesha.out 2>&1 &
    echo $! > $P
    for i in $(seq 200); do
        grep -q "NFS SERVER INITIALIZED" {log} 2>/dev/null && exit 0
        running || {{ echo "ganesha exited"; exit 1; }}
        sleep 0.05
    done
    echo "ganesha did not start in 10 s"; exit 1 ;;
stop)
    if running; then
        kill -TERM -"$(cat $P)"
        for i in $(seq 60); do running || break; sleep 0.05; done
        running && kill -KILL -"$(cat $P)"
        while running; do sleep 0.05; done
    fi
    rm -f $P ;;
esac
""")
    os.chmod(script, 0o755)
    return script


def kill_served(d):
    """Host death: the hook-started ganesha dies with the node."""
    try:
        with open(f"{d}/serve.pgid") as f:
            os.killpg(int(f.read().strip()), 9)
    except (OSError, ValueError):
        pass


def ganesha_ready(log):
    try:
        with open(log) as f:
            return "NFS SERVER INITIALIZED" in f.read()
    except OSError:
        return False


def content(name):
    return (name + "\n") * 20


class Writer:
    """One nfs_writer.py in the client namespace; collects its lines."""

    def __init__(self, netns, host, prefix, interval_ms, mode, log):
        self.ok = []  # (t, name), in order
        self.held = None  # the file a `hold` writer keeps open
        self.errors = 0
        self.err_t = []
        self.err_lines = []  # (t, message)
        self.log = open(log, "w")
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", netns, "python3", f"{HERE}/nfs_writer.py", host, prefix,
             str(interval_ms), mode],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        for line in self.p.stdout:
            self.log.write(line)
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "ok":
                try:
                    self.ok.append((float(parts[2]), parts[1]))
                except ValueError:
                    pass
            elif len(parts) >= 2 and parts[0] == "held":
                self.held = parts[1]
            elif parts and parts[0] == "err":
                self.errors += 1
                try:
                    self.err_t.append(float(parts[2]))
                    self.err_lines.append((float(parts[2]), " ".join(parts[3:])))
                except (IndexError, ValueError):
                    pass

    def finish(self):
        try:
            os.killpg(self.p.pid, 9)
        except OSError:
            pass
        self.p.wait()
        self.t.join(timeout=5)
        self.log.close()

    def error_kinds(self, t0, t1=None):
        """{message: count} of the errors in [t0, t1], file names left out."""
        kinds = {}
        for t, m in self.err_lines:
            if t >= t0 and (t1 is None or t <= t1):
                m = re.sub(r"[a-z]\d{6}", "FILE", m)
                kinds[m] = kinds.get(m, 0) + 1
        return kinds

    def written(self):
        return {name: content(name) for _, name in self.ok}

    def first_ok_after(self, t0):
        return next((t - t0 for t, _ in self.ok if t > t0), None)

    def longest_gap(self, t0=None, t1=None):
        """Longest time between successive acknowledged writes (within [t0, t1])."""
        ts = [t for t, _ in self.ok if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        if t0 is not None and self.ok:
            # The gap that spans t0 counts from the last write before it.
            before = [t for t, _ in self.ok if t < t0]
            if before:
                ts.insert(0, before[-1])
        return max((b - a for a, b in zip(ts, ts[1:])), default=0.0)


def must(v, what):
    if v is None:
        raise RuntimeError(what)
    return v


def one_round(tool, h, base):
    """A round of the harness's with ganesha serving each node's export and
    the writers in the client namespace going through the service address;
    for syncd, then a planned switchover under the same load. `h` is the
    harness (lab helpers and the counting)."""
    logs, seq = [None, None], [0]

    def start(i):
        tool.start(i)
        seq[0] += 1
        if not getattr(tool, "serves", False):
            logs[i] = start_ganesha(tool.groups[i], h.ns(i), tool.dir(i), tool.export(i), seq[0])

    for i in range(2):
        start(i)
    must(h.wait(lambda: h.holds_vip(0), 30), f"{tool.name}: node 0 never took the address")
    must(h.wait(tool.ready, 60), f"{tool.name}: node 1 never reported its data current")
    must(h.wait(lambda: all(ganesha_ready(x) for x in logs if x), 60), f"ganesha did not start: see {base}")
    time.sleep(1.0)
    w = Writer(h.ns(2), h.VIP, "r", 5, "reconnect", f"{base}/writer-reconnect.log")
    k = Writer(h.ns(2), h.VIP, "k", 50, "keep", f"{base}/writer-keep.log")
    try:
        must(h.wait(lambda: w.ok and k.ok, 30), f"the NFS client never wrote: see {base}")
        time.sleep(h.WARM)
        t_kill = time.monotonic()
        tool.kill(0)
        h.port(0, 0)
        took = h.wait(lambda: h.holds_vip(1), 20)
        time.sleep(max(0.0, h.OUTAGE - (time.monotonic() - t_kill)))
        # Reboot: the address a dead host held is gone with it.
        subprocess.run(["ip", "-n", h.ns(0), "addr", "del", f"{h.VIP}/24", "dev", "eth0"], capture_output=True)
        h.port(0, 3)
        start(0)
        time.sleep(h.AFTER)
        t_back = time.monotonic()
        first = w.first_ok_after(t_kill)
        res = {
            "errors_after_kill": w.error_kinds(t_kill, None if first is None else t_kill + first),
            "keep_errors_after_kill": k.error_kinds(t_kill),
            "failover_s": took,
            "first_write_s": w.first_ok_after(t_kill),
            "no_write_s": w.longest_gap(None, t_back),
            "keep_ok_after_kill": sum(1 for t, _ in k.ok if t > t_kill),
            # What the reconnecting writer reached before the kill (it offers ~200/s).
            "rate": sum(1 for t, _ in w.ok if t <= t_kill) / max(1e-9, t_kill - w.ok[0][0]),
        }
        if hasattr(tool, "switchover"):
            res.update(switchover(tool, h, w))
    finally:
        w.finish()
        k.finish()
    time.sleep(h.DRAIN)
    leader = next((i for i in range(2) if h.holds_vip(i)), 1)
    written = {**w.written(), **k.written()}
    when = {name: (t, "?") for t, name in w.ok + k.ok}
    res.update(h.count(tool, written, when, leader, t_kill))
    if "switchover_t0" in res:
        # No demote hook fences the export here: writes go on through the
        # drain, so count the ones made from the switchover on separately.
        since = {n: b for n, b in written.items() if when[n][0] >= res["switchover_t0"]}
        c = h.count(tool, since, when, leader, t_kill)
        res["switchover_not_on_leader"] = c["conflicts"] + c["other_node_only"] + c["gone"]
        res["switchover_written"] = len(since)
    res.update(written=len(written), errors=w.errors, leader=leader)
    tool.stop_all()
    return res


def switchover(tool, h, w):
    """`syncd switchover` on the leader once its follower is current: what it
    prints, and the client's longest gap between acknowledged writes from
    the command's start to AFTER seconds after the address moved."""
    leader = next((i for i in range(2) if h.holds_vip(i)), None)
    if leader is None:
        return {"switchover": "no leader"}
    if h.wait(lambda: tool.ready(1 - leader), 60) is None:
        return {"switchover": "follower never current"}
    # `data: current` compares generations only; the drain needs the session.
    # Tried anyway if the leader never says it is connected (seen: its status
    # said "not connected" while its primary logged "in sync").
    h.wait(lambda: tool.connected(leader), 10)
    time.sleep(2.0)
    holder = None
    if getattr(h, "HOLD_OPEN", False):
        # A client that created a file and was cut off before writing it:
        # the fence finds it open for writing in the leader's ganesha.
        holder = Writer(h.ns(2), h.VIP, "h", 0, "hold", f"{tool.base}/writer-hold.log")
        h.wait(lambda: holder.held or holder.p.poll() is not None, 10)
        time.sleep(0.2)
    t0_wall, t0 = time.time(), time.monotonic()
    rc, out = tool.switchover(leader)
    moved = h.wait(lambda: h.holds_vip(1 - leader), 20)
    time.sleep(h.AFTER)
    m = re.search(r"unavailable for (\d+) ms", out)
    steps = breakdown(tool, leader, t0_wall, w, t0)
    held = None
    if holder is not None:
        holder.finish()
        held = holder.held and [file_state(tool.export(i), holder.held) for i in range(2)]
    end = next((ms for label, ms in steps if label.startswith("client's first write after")), None)
    return {
        "switchover_errors": w.error_kinds(t0, None if end is None else t0 + end / 1000),
        "switchover_steps": steps,
        "switchover_t0": t0,
        "switchover": f"exit {rc}" if rc or not m else "ok",
        "switchover_out": out.splitlines()[-1] if out else "",
        "switchover_all": out,
        "switchover_printed_s": int(m.group(1)) / 1000 if m else None,
        "switchover_gap_s": w.longest_gap(t0, time.monotonic()),
        "switchover_moved": moved is not None,
        "held": held,
    }


def file_state(export, name):
    """(size, mtime year) of a file, or None."""
    try:
        st = os.stat(os.path.join(export, name))
    except OSError:
        return None
    return st.st_size, time.gmtime(st.st_mtime).tm_year


# Log lines of the switchover's steps, in order: (label, node, pattern).
# "old" is the leader handing over, "new" the peer taking over.
STEPS = [
    ("fence asked", "old", "switchover: fencing writes"),
    ("fenced (demote hook done)", "old", "demote hook (ok|failed|timeout)"),
    ("drained, handing over", "old", "switchover: drained"),
    ("old left MASTER (priority 0 sent, address removed)", "old", "MASTER -> (FAULT|BACKUP)"),
    ("new VRRP MASTER (skew time over)", "new", "-> MASTER"),
    ("new asks consent", "new", "asking the peer's consent"),
    ("new promoting (generation durable, source started)", "new", "promoting: becoming the replication source"),
    ("old source stopped", "old", "primary stopped"),
    ("new promote hook started", "new", "running .*hook=\"promote\""),
    ("new promote hook done", "new", "promote hook (ok|failed|timeout)"),
    ("new leads (address added, ARP sent)", "new", "role: promoted"),
    ("old hears the peer lead (command answers)", "old", "switchover: handed over"),
]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z")


def log_times(path, since_wall):
    """(wall time, line) of each log line at or after `since_wall`."""
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = STAMP.match(line)
                if not m:
                    continue
                t = datetime.datetime.fromisoformat(m.group(1)).replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                if t >= since_wall:
                    out.append((t, line))
    except OSError:
        pass
    return out


def breakdown(tool, old, t0_wall, w, t0_mono):
    """Each step of a switchover in ms from the command's start, from both
    nodes' logs (wall clock) and the writer's lines (monotonic)."""
    lines = {"old": log_times(f"{tool.dir(old)}/syncd.log", t0_wall),
             "new": log_times(f"{tool.dir(1 - old)}/syncd.log", t0_wall)}
    steps = []
    for label, who, pat in STEPS:
        rx = re.compile(pat)
        t = next((t for t, l in lines[who] if rx.search(l)), None)
        steps.append((label, None if t is None else (t - t0_wall) * 1000))
    last_ok = max((t for t, _ in w.ok if t < t0_mono), default=None)
    # No write gets through from the drain's end to the new leader's promotion.
    drained = next((ms for label, ms in steps if label.startswith("drained")), None)
    since = t0_mono + (drained or 0) / 1000
    first_ok = next((t - t0_mono for t, _ in w.ok if t > since), None)
    steps.insert(0, ("client's last write before", None if last_ok is None else (last_ok - t0_mono) * 1000))
    if first_ok is not None:
        errs = [t for t in w.err_t if t0_mono <= t < t0_mono + first_ok]
        if errs:
            steps.append((f"client's last error before it ({len(errs)} errors)", (errs[-1] - t0_mono) * 1000))
    steps.append(("client's first write after the drain", None if first_ok is None else first_ok * 1000))
    return steps


def switchover_round(tool, h, base):
    """Only a planned switchover under the writers' load: node 0 leads, node
    1 follows; `syncd switchover` on node 0; counted like a round."""
    logs = [None, None]
    for i in range(2):
        tool.start(i)
        if not getattr(tool, "serves", False):
            logs[i] = start_ganesha(tool.groups[i], h.ns(i), tool.dir(i), tool.export(i), i + 1)
    must(h.wait(lambda: h.holds_vip(0), 30), f"{tool.name}: node 0 never took the address")
    must(h.wait(tool.ready, 60), f"{tool.name}: node 1 never reported its data current")
    must(h.wait(lambda: all(ganesha_ready(x) for x in logs if x), 60), f"ganesha did not start: see {base}")
    time.sleep(1.0)
    w = Writer(h.ns(2), h.VIP, "r", 5, "reconnect", f"{base}/writer-reconnect.log")
    k = Writer(h.ns(2), h.VIP, "k", 50, "keep", f"{base}/writer-keep.log")
    try:
        must(h.wait(lambda: w.ok and k.ok, 30), f"the NFS client never wrote: see {base}")
        time.sleep(3.0)
        res = switchover(tool, h, w)
        t0 = res.get("switchover_t0", 0)
        res["keep_ok_after"] = sum(1 for t, _ in k.ok if t > t0)
        res["keep_errors_after"] = k.error_kinds(t0)
    finally:
        w.finish()
        k.finish()
    time.sleep(h.DRAIN)
    leader = next((i for i in range(2) if h.holds_vip(i)), 1)
    written = {**w.written(), **k.written()}
    when = {name: (t, "?") for t, name in w.ok + k.ok}
    since = {n: b for n, b in written.items() if when[n][0] >= res.get("switchover_t0", 0)}
    c = h.count(tool, since, when, leader, 0)
    res["switchover_not_on_leader"] = c["conflicts"] + c["other_node_only"] + c["gone"]
    res["switchover_written"] = len(since)
    res.update(written=len(written), errors=w.errors, leader=leader)
    tool.stop_all()
    return res


def print_switchover_round(r, res):
    so = res.get("switchover_printed_s")
    print(f"round {r + 1} switchover: {res['switchover']}, printed {secs(so)}, client's longest gap "
          f"{secs(res.get('switchover_gap_s'))}, address moved: {res.get('switchover_moved')}, "
          f"{res.get('switchover_not_on_leader')} of {res.get('switchover_written')} writes since not on the leader",
          flush=True)
    for line in res.get("switchover_all", "").splitlines():
        print(f"          | {line}")
    print(f"          errors until the first write after it: {kinds(res.get('switchover_errors'))}")
    if res.get("held") is not None:
        print(f"          file held open through the fence (size, mtime year) on node 0, node 1: {res['held']}")
    if "keep_ok_after" in res:
        print(f"          kept-session client: {res['keep_ok_after']} writes after the switchover; "
              f"errors {kinds(res.get('keep_errors_after'))}")
    print_breakdown(res.get("switchover_steps", []))


def print_breakdown(steps):
    for label, ms in steps:
        print(f"          {'-' if ms is None else f'{ms:8.0f} ms'}  {label}", flush=True)


def kinds(d):
    """The commonest error messages, with counts."""
    if not d:
        return "none"
    top = sorted(d.items(), key=lambda x: -x[1])[:4]
    return "; ".join(f"{n}x {m}" for m, n in top)


def secs(v):
    return "never" if v is None else f"{v:.2f} s"


def print_round(r, tool, res):
    print(f"round {r + 1} {tool.name:26} written {res['written']:5} ({res['rate']:.0f}/s, failed {res['errors']})  "
          f"address moved {secs(res['failover_s']):>8}  first write after kill {secs(res['first_write_s']):>8}  "
          f"longest no-write {res['no_write_s']:.2f} s  | on leader {res['on_leader']:5}  "
          f"conflicts {res['conflicts']:4}  other node only {res['other_node_only']:4}  gone {res['gone']:4}  "
          f"| kept-session client: {res['keep_ok_after_kill']} writes after the kill", flush=True)
    print(f"        errors until the first write after the kill: {kinds(res.get('errors_after_kill'))}; "
          f"kept-session client's: {kinds(res.get('keep_errors_after_kill'))}", flush=True)
    if "switchover" in res:
        so = res.get("switchover_printed_s")
        print(f"        switchover: {res['switchover']}, printed {secs(so)}, client's longest gap "
              f"{secs(res.get('switchover_gap_s'))}, address moved: {res.get('switchover_moved')}, "
              f"{res.get('switchover_not_on_leader')} of {res.get('switchover_written')} writes since not on the leader"
              f"  [{res.get('switchover_out', '')}]", flush=True)
        print_breakdown(res.get("switchover_steps", []))


def print_summary(kinds, results, names):
    def med(xs):
        xs = [x for x in xs if x is not None]
        return f"{statistics.median(xs):.2f}" if xs else "-"
    print()
    print(f"{'':28}{'first write after kill s':>26}{'longest no-write s':>20}{'gone':>8}"
          f"{'switchover printed / client gap s':>36}   (medians; gone: worst)")
    for k in kinds:
        rs = results[k]
        so = (f"{med(x.get('switchover_printed_s') for x in rs)} / {med(x.get('switchover_gap_s') for x in rs)}"
              if k == "syncd" else "-")
        print(f"{names[k]:28}{med(x['first_write_s'] for x in rs):>26}{med(x['no_write_s'] for x in rs):>20}"
              f"{max(x['gone'] for x in rs):>8}{so:>36}")


def print_switchover_summary(rs):
    def med(xs):
        xs = [x for x in xs if x is not None]
        return f"{statistics.median(xs):.2f}" if xs else "-"
    print()
    print(f"switchover, {len(rs)} rounds: printed {med(x.get('switchover_printed_s') for x in rs)} s, "
          f"client's longest gap {med(x.get('switchover_gap_s') for x in rs)} s (medians); "
          f"writes since not on the leader: worst {max(x.get('switchover_not_on_leader') or 0 for x in rs)}")
