#!/usr/bin/env python3
"""Pair failover benchmark: `syncd --role auto` vs keepalived + seed 000's
`inotifywait | rsync` loop, same lab, same client, same kill.

Two nodes in network namespaces on a bridge, a service address that VRRP
moves between them. A client writes a small file every 5 ms (~200 files/s)
into the export of whichever live node holds the address (directly, as the
pair lab in tests/ does). Each round:

  1. node 0 leads; the client writes for WARM seconds;
  2. node 0's host dies: everything in its namespace SIGKILLed, its bridge
     port set to state 0 (a silent partition, not carrier loss);
  3. the client keeps writing; we time how long no write could be made
     (no live node held the address);
  4. after OUTAGE seconds node 0 "reboots": port up, its daemons start again
     (it has the higher priority: keepalived's default preempt takes the
     address back at once; a returning syncd node follows and catches up,
     since `--role auto` never preempts: failing back is a switchover);
  5. the client writes for AFTER more seconds, stops, replication drains
     for DRAIN seconds, and every write the client was told succeeded is
     counted: readable on the leader with the right content, only in a
     syncd conflicts area, only on the other node's disk (not served), or
     nowhere.

The seed's loop (seed 000, run on both nodes, each pushing to its peer's
rsync daemon): `inotifywait -mrq -e modify,move,create,delete DIR | while
read ...; do rsync -az DIR/ PEER::wwwroot; done`. The seed itself pushes to
the load balancer's address, a misconfiguration `syncd migrate` reports;
here each node pushes to its peer. The `--delete` variant is what lsyncd's
default.rsync does. keepalived uses the seed's settings with one vrid on
both nodes (the seed's 51 vs 1 would give two masters).

`--nfs` (nfs.py): each node also runs nfs-ganesha on its export (in the
node's process group, so the kill takes it and its rpcbind too), and the
client is a third namespace on the bridge running two libnfs writers
through the service address (nfs_writer.py): one offering ~200 files/s that
mounts afresh after an error, one at 20/s that keeps its first session.
Timed: the kill to the reconnecting writer's next acknowledged write; for
syncd also a planned `syncd switchover` on the leader after the old leader
has returned and caught up (what it prints, and the writer's longest gap).

`--switchover-only` (implies `--nfs --only syncd`): no kill; each round
node 0 leads, the writers run, `syncd switchover` hands over to node 1, and
each step's time is printed from both nodes' logs and the writer's lines.

`--hold-open` (with `--switchover-only`): just before each switchover a
third client creates a file and keeps it open without writing it, as a
client the fence cuts off between OPEN and WRITE leaves it (ganesha holds
it open for writing, the create verifier as its mtime); the drain must
ship it as it is (empty) once quiet for `settle_ms`.

FAILOVER_DEBUG=1 keeps each round's directory (logs, exports) and prints
more; the syncd nodes then log at debug unless SYNCD_LOG says otherwise
(the environment is passed on).

Usage: benches/failover.sh [--rounds N] [--only syncd|loop|loop-delete] [--nfs] [--switchover-only] [--hold-open]
Needs root, keepalived, rsync, inotify-tools, iproute2; --nfs also
nfs-ganesha (ganesha.nfsd, FSAL VFS), rpcbind and libnfs 4 (libnfs.so.13).
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import nfs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lablib  # noqa: E402
from lablib import sh  # noqa: E402

PFX = f"sfb{os.getpid() % 100000}"
NET = "10.214.0"
LAB = lablib.Lab(PFX, NET)
VIP = f"{NET}.100"
WARM, OUTAGE, AFTER, DRAIN = 4.0, 6.0, 6.0, 5.0
PERIOD = 0.005
HOLD_OPEN = False
# FENCE_HOOK: another fence script, e.g. to compare with an earlier one.
FENCE = os.environ.get("FENCE_HOOK") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "fence.sh")


ns = LAB.ns


def lab_up(nodes=2):
    """Two nodes (.1, .2) and, for the NFS mode, a client namespace (.3)."""
    LAB.up(nodes)


def lab_down():
    LAB.down(3)


def port(i, state):
    LAB.port(i, state)


def holds_vip(i):
    return LAB.has_addr(i, VIP)


class Group:
    """Processes started in their own process group: a host death ends them whole."""

    def __init__(self):
        self.procs = []

    def spawn(self, args, log, **kw):
        f = open(log, "a")
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs.append((p, f))
        return p

    def kill(self, sig=signal.SIGKILL):
        for p, f in self.procs:
            try:
                os.killpg(p.pid, sig)
            except OSError:
                pass
        for p, f in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            f.close()
        self.procs = []


class Syncd:
    name = "syncd --role auto"

    def __init__(self, binary, base, fence=False, grace=None):
        self.bin, self.base = binary, base
        # NFS mode: hooks fence the NFS port while a node does not lead;
        # with `grace` (the production recipe) they start and stop ganesha.
        self.serves = grace is not None
        fps, hooks = [], []
        for i in range(2):
            d = self.dir(i)
            os.makedirs(f"{d}/export")
            hook = nfs.serve_hook(d, self.export(i), grace) if self.serves else FENCE
            hooks.append(f'[hooks]\npromote = ["{hook}", "start"]\ndemote = ["{hook}", "stop"]\n\n'
                         if fence or self.serves else "")
            out = sh(self.bin, "keygen", "--out", f"{d}/keys", "--name", f"node{i}")
            fps.append(next(l.split()[1] for l in out.splitlines() if l.startswith("fingerprint")))
        for i in range(2):
            prio = 150 if i == 0 else 100
            with open(self.config(i), "w") as f:
                f.write(
                    f'node_id = "node{i}"\nexport = "export"\nstate_dir = "state"\n'
                    f'listen = "{NET}.{i + 1}:7400"\npeer = "{NET}.{2 - i}:7400"\n'
                    f'admin = "127.0.0.1:7401"\ncert = "keys/node.crt"\nkey = "keys/node.key"\n'
                    f'peer_fingerprint = "{fps[1 - i]}"\n[pair]\npeer_wait_secs = 3\n\n{hooks[i]}'
                    f'[[vrrp]]\nname = "VI_NFS"\ninterface = "eth0"\nvrid = 61\npriority = {prio}\n'
                    f'advert_int = 1\nversion = 2\nvirtual_ips = ["{VIP}/24"]\n'
                )
        sh(self.bin, "promote", "--force", "--config", self.config(0))
        self.groups = [Group(), Group()]

    def dir(self, i):
        return f"{self.base}/node{i}"

    def config(self, i):
        return f"{self.dir(i)}/node.toml"

    def export(self, i):
        return f"{self.dir(i)}/export"

    def start(self, i):
        self.groups[i].spawn(["ip", "netns", "exec", ns(i), self.bin, "--role", "auto", "--config", self.config(i)],
                             f"{self.dir(i)}/syncd.log")

    def kill(self, i):
        self.groups[i].kill()
        nfs.kill_served(self.dir(i))

    def ready(self, i=1):
        """Follower i has synced once: a node that never synced may not lead."""
        out = subprocess.run(["ip", "netns", "exec", ns(i), self.bin, "status", "--config", self.config(i)],
                             capture_output=True, text=True).stdout
        return "data: current" in out

    def conflicts(self):
        """{name: [content, ...]} of every file kept in a conflicts area."""
        kept = {}
        for i in range(2):
            root = f"{self.dir(i)}/state/conflicts"
            for d, _, files in os.walk(root):
                for n in files:
                    try:
                        with open(os.path.join(d, n)) as f:
                            kept.setdefault(n, []).append(f.read())
                    except OSError:
                        pass
        return kept

    def connected(self, i):
        """Node i's replication session is up (`connected since` a time)."""
        out = subprocess.run(["ip", "netns", "exec", ns(i), self.bin, "status", "--config", self.config(i)],
                             capture_output=True, text=True).stdout
        return "connected since: " in out and "connected since: not connected" not in out

    def switchover(self, i):
        """`syncd switchover` on leader i: (exit code, its output)."""
        r = subprocess.run(["ip", "netns", "exec", ns(i), self.bin, "switchover", "--config", self.config(i)],
                           capture_output=True, text=True)
        return r.returncode, (r.stdout + r.stderr).strip()

    def stop_all(self):
        for g in self.groups:
            g.kill(signal.SIGTERM)
        for i in range(2):
            nfs.kill_served(self.dir(i))


class Loop:
    """keepalived + seed 000's inotifywait | rsync loop on each node."""

    def __init__(self, base, delete):
        self.base, self.delete = base, delete
        self.name = "keepalived + loop" + (" --delete" if delete else "")
        self.groups = [Group(), Group()]
        self.seq = 0
        for i in range(2):
            d = self.dir(i)
            os.makedirs(f"{d}/export")
            with open(f"{d}/rsyncd.conf", "w") as f:
                f.write(f"uid = root\ngid = root\nuse chroot = no\naddress = {NET}.{i + 1}\nport = 873\n"
                        f"pid file = {d}/rsyncd.pid\n[wwwroot]\npath = {d}/export\nread only = no\n")
            with open(f"{d}/loop.sh", "w") as f:
                opt = "-az --delete" if delete else "-az"
                f.write("#!/bin/bash\n"
                        f'A="inotifywait -mrq -e modify,move,create,delete {d}/export/"\n'
                        f'B="rsync {opt} {d}/export/ {NET}.{2 - i}::wwwroot"\n'
                        "$A | while read directory event file\ndo\n    $B\ndone\n")
            os.chmod(f"{d}/loop.sh", 0o755)

    def dir(self, i):
        return f"{self.base}/node{i}"

    def export(self, i):
        return f"{self.dir(i)}/export"

    def start(self, i):
        d = self.dir(i)
        self.seq += 1
        k = self.seq
        state, prio = ("MASTER", 100) if i == 0 else ("BACKUP", 99)
        cfg = f"{d}/keepalived-{k}.conf"
        with open(cfg, "w") as f:
            f.write("global_defs {\n  router_id LVS_DEVEL\n}\n"
                    f"vrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id 51\n"
                    f"  priority {prio}\n  advert_int 1\n  authentication {{\n    auth_type PASS\n"
                    f"    auth_pass 1111\n  }}\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n")
        try:
            os.unlink(f"{d}/rsyncd.pid")
        except OSError:
            pass
        g = self.groups[i]
        g.spawn(["ip", "netns", "exec", ns(i), "keepalived", "-n", "-l", "-D", "--vrrp", "-f", cfg,
                 "-p", f"{d}/ka-{k}.pid", "-r", f"{d}/ka-{k}.vrrp.pid"], f"{d}/keepalived.log")
        g.spawn(["ip", "netns", "exec", ns(i), "rsync", "--daemon", "--no-detach", f"--config={d}/rsyncd.conf"],
                f"{d}/rsyncd.log")
        g.spawn(["ip", "netns", "exec", ns(i), f"{d}/loop.sh"], f"{d}/loop.log")

    def kill(self, i):
        self.groups[i].kill()

    def ready(self, i=1):
        return True

    def conflicts(self):
        return {}

    def stop_all(self):
        for g in self.groups:
            g.kill(signal.SIGTERM)


class Client:
    """Writes a file every PERIOD to the live node holding the address."""

    def __init__(self, tool):
        self.tool = tool
        self.dead = [False, False]
        self.holder = None
        self.written = {}
        self.when = {}
        self.gaps = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.t_watch = threading.Thread(target=self.watch, daemon=True)
        self.t_write = threading.Thread(target=self.write, daemon=True)

    def watch(self):
        while not self.stop.is_set():
            h = next((i for i in range(2) if not self.dead[i] and holds_vip(i)), None)
            with self.lock:
                self.holder = h
            time.sleep(0.02)

    def write(self):
        n, down_since = 0, None
        while not self.stop.is_set():
            with self.lock:
                h = self.holder
            if h is None:
                down_since = down_since or time.monotonic()
            else:
                name = f"w{n:06d}.txt"
                body = f"write {n} to node {h}\n"
                try:
                    with open(os.path.join(self.tool.export(h), name), "w") as f:
                        f.write(body)
                    self.written[name] = body
                    self.when[name] = (time.monotonic(), h)
                    if down_since is not None:
                        self.gaps.append(time.monotonic() - down_since)
                        down_since = None
                except OSError:
                    down_since = down_since or time.monotonic()
                n += 1
            time.sleep(PERIOD)

    def start(self):
        self.t_watch.start()
        self.t_write.start()

    def finish(self):
        self.stop.set()
        self.t_write.join()
        self.t_watch.join()


def wait(cond, timeout):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if cond():
            return time.monotonic() - t
        time.sleep(0.02)
    return None


def count(tool, written, when, leader, t_kill):
    """Every write the client was told succeeded: readable on the leader with
    its content / only in a conflicts area / only on the other node / gone.
    `when` maps a name to (time, node) for FAILOVER_DEBUG's lines."""
    kept = tool.conflicts()
    on_leader = in_conflicts = elsewhere = gone = 0
    for name, body in written.items():
        def has(i):
            try:
                with open(os.path.join(tool.export(i), name)) as f:
                    return f.read() == body
            except OSError:
                return False
        if has(leader):
            on_leader += 1
        elif body in kept.get(name, []):
            in_conflicts += 1
            if os.environ.get("FAILOVER_DEBUG"):
                t, h = when.get(name, (t_kill, "?"))
                print(f"  in conflicts: {name} written to node {h} at {t - t_kill:+.3f} s from the kill")
        elif has(1 - leader):
            elsewhere += 1
        else:
            gone += 1
            if os.environ.get("FAILOVER_DEBUG"):
                t, h = when.get(name, (t_kill, "?"))
                seen = []
                for i in range(2):
                    try:
                        with open(os.path.join(tool.export(i), name)) as f:
                            seen.append(f"node {i}: {len(f.read())} of {len(body)} bytes")
                    except OSError:
                        seen.append(f"node {i}: missing")
                print(f"  gone: {name} written to node {h} at {t - t_kill:+.3f} s from the kill; {', '.join(seen)}")
    return {"on_leader": on_leader, "conflicts": in_conflicts, "other_node_only": elsewhere, "gone": gone}


def one_round(tool):
    c = Client(tool)
    for i in range(2):
        tool.start(i)
    if wait(lambda: holds_vip(0), 30) is None:
        raise RuntimeError(f"{tool.name}: node 0 never took the address")
    if wait(tool.ready, 60) is None:
        raise RuntimeError(f"{tool.name}: node 1 never reported its data current")
    time.sleep(1.0)
    c.start()
    time.sleep(WARM)
    c.dead[0] = True
    t_kill = time.monotonic()
    tool.kill(0)
    port(0, 0)
    took = wait(lambda: holds_vip(1), 20)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - t_kill)))
    # Reboot: the address a dead host held is gone with it.
    subprocess.run(["ip", "-n", ns(0), "addr", "del", f"{VIP}/24", "dev", "eth0"], capture_output=True)
    port(0, 3)
    c.dead[0] = False
    tool.start(0)
    time.sleep(AFTER)
    c.finish()
    time.sleep(DRAIN)
    leader = next((i for i in range(2) if holds_vip(i)), 1)
    counts = count(tool, c.written, c.when, leader, t_kill)
    tool.stop_all()
    return {
        "written": len(c.written),
        "leader": leader,
        "failover_s": took,
        "no_write_s": max(c.gaps) if c.gaps else 0.0,
        **counts,
    }


NAMES = {"syncd": "syncd --role auto", "loop": "keepalived + loop", "loop-delete": "keepalived + loop --delete"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["syncd", "loop", "loop-delete"])
    ap.add_argument("--syncd", required=True, help="path to the syncd binary")
    ap.add_argument("--nfs", action="store_true",
                    help="ganesha on each node, a libnfs client writing through the address")
    ap.add_argument("--grace", type=int, metavar="SECS",
                    help="with --nfs: the production recipe (ganesha started by the promote hook, "
                         "stopped by the demote hook, Graceless = false, Grace_Period SECS)")
    ap.add_argument("--switchover-only", action="store_true",
                    help="with --nfs: only planned switchovers under load (no kill), with each step's time")
    ap.add_argument("--hold-open", action="store_true",
                    help="with --switchover-only: a client keeps a created file open, unwritten, through the fence")
    a = ap.parse_args()
    if a.switchover_only:
        a.nfs, a.only = True, "syncd"
    global HOLD_OPEN
    HOLD_OPEN = a.hold_open
    if os.environ.get("FAILOVER_DEBUG"):
        os.environ.setdefault("SYNCD_LOG", "info,syncd=debug")
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for tool in ("keepalived", "rsync", "inotifywait"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    if a.nfs and nfs.missing():
        sys.exit(f"--nfs needs {nfs.missing()}")
    kinds = [a.only] if a.only else ["syncd", "loop", "loop-delete"]
    results = {k: [] for k in kinds}
    for r in range(a.rounds):
        # Alternate the order of the tools across rounds.
        order = kinds if r % 2 == 0 else list(reversed(kinds))
        for k in order:
            base = tempfile.mkdtemp(prefix=f"syncd-failover-bench-{k}-")
            lab_up(3 if a.nfs else 2)
            try:
                tool = (Syncd(a.syncd, base, fence=a.nfs, grace=a.grace) if k == "syncd"
                        else Loop(base, k == "loop-delete"))
                if a.switchover_only:
                    res = nfs.switchover_round(tool, sys.modules[__name__], base)
                else:
                    res = nfs.one_round(tool, sys.modules[__name__], base) if a.nfs else one_round(tool)
            finally:
                lab_down()
            results[k].append(res)
            if a.switchover_only:
                nfs.print_switchover_round(r, res)
                if not os.environ.get("FAILOVER_DEBUG"):
                    shutil.rmtree(base, ignore_errors=True)
                continue
            if a.nfs:
                nfs.print_round(r, tool, res)
                if not os.environ.get("FAILOVER_DEBUG"):
                    shutil.rmtree(base, ignore_errors=True)
                continue
            fo = "never" if res["failover_s"] is None else f"{res['failover_s']:.2f} s"
            print(f"round {r + 1} {tool.name:26} written {res['written']:5}  address moved {fo:>8}  "
                  f"longest no-write {res['no_write_s']:.2f} s  | on leader {res['on_leader']:5}  "
                  f"conflicts {res['conflicts']:4}  other node only {res['other_node_only']:4}  "
                  f"gone {res['gone']:4}", flush=True)
            if not os.environ.get("FAILOVER_DEBUG"):
                shutil.rmtree(base, ignore_errors=True)
            else:
                print(f"  kept {base}")
    if a.switchover_only:
        nfs.print_switchover_summary(results["syncd"])
        return
    if a.nfs:
        nfs.print_summary(kinds, results, NAMES)
        return
    print()
    print(f"{'':28}{'no-write s (median, worst)':>28}{'not served (median, worst)':>30}{'gone (median, worst)':>24}")
    for k in kinds:
        rs = results[k]
        nw = [x["no_write_s"] for x in rs]
        ns_ = [x["other_node_only"] + x["gone"] for x in rs]
        gone = [x["gone"] for x in rs]
        name = {"syncd": "syncd --role auto", "loop": "keepalived + loop", "loop-delete": "keepalived + loop --delete"}[k]
        print(f"{name:28}{statistics.median(nw):>18.2f} {max(nw):>8.2f}"
              f"{statistics.median(ns_):>20} {max(ns_):>8}{statistics.median(gone):>14} {max(gone):>8}")
    if "syncd" in results and "loop" in results:
        a_ = statistics.median(x["no_write_s"] for x in results["syncd"])
        b_ = statistics.median(x["no_write_s"] for x in results["loop"])
        if b_:
            print(f"ratio syncd/keepalived+loop, median longest no-write time: {a_ / b_:.2f}")


if __name__ == "__main__":
    main()
