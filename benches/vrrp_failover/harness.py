#!/usr/bin/env python3
"""Failover benchmark: syncd-vrrp vs keepalived with the same configuration.

Topology (all in network namespaces created and removed here):
  n0 (master, prio 150) --+
  n1 (backup, prio 100) --+-- bridge (namespace "br")
  n2 (observer, tcpdump) -+

For each implementation, VRRP version/interval and mode, several runs:
  kill : kill -9 the master (keepalived: its VRRP child and parent);
  term : SIGTERM the master (planned switchover, priority 0).
Measured (all CLOCK_REALTIME, microseconds resolution):
  sig->VIP       master killed or SIGTERMed -> VIP bound on the backup (`ip -ts monitor address` in n1)
  sig->GARP      same -> first gratuitous ARP from the backup seen in n2 (tcpdump)
  adv->GARP      last advert of the master seen in n2 -> first GARP (detection time; RFC says
                 Master_Down_Interval for kill, Skew_Time after a priority-0 advert for term)
Usage: harness.py SYNCD_VRRP_BINARY [--runs N] [--quick]
"""

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lablib  # noqa: E402
from lablib import sh  # noqa: E402

RUNS = 5
PID = os.getpid()
PFX = f"vb{PID}"
NET = 100 + PID % 100
DIR = tempfile.mkdtemp(prefix=f"vrrp-bench-{PID}-")


LAB = lablib.Lab(PFX, f"10.{NET}.0")
ns = LAB.ns
VIP = f"10.{NET}.0.100"


def setup():
    LAB.up(3)


def teardown():
    LAB.down(3)


def mac(i):
    out = sh("ip", "-n", ns(i), "link", "show", "eth0")
    return out.split("link/ether")[1].split()[0]


def has_vip(i):
    return LAB.has_addr(i, VIP)


def wait(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


class Proc:
    def __init__(self, args, log, child_pidfile=None):
        self.log = log
        self.f = open(log, "w")
        self.p = subprocess.Popen(args, stdout=self.f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.child_pidfile = child_pidfile

    def send(self, sig):
        if self.child_pidfile and sig == signal.SIGKILL:
            try:
                os.kill(int(open(self.child_pidfile).read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        try:
            self.p.send_signal(sig)
        except OSError:
            pass

    def stop(self, sig=signal.SIGKILL):
        self.send(sig)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.f.close()


SEQ = [0]


def start(impl, binary, node, prio, version, adv):
    SEQ[0] += 1
    k = SEQ[0]
    if impl == "syncd":
        cfg = f"{DIR}/n{node}-{k}.toml"
        with open(cfg, "w") as f:
            f.write(
                f'[[vrrp]]\nname = "VI_1"\ninterface = "eth0"\nvrid = 51\npriority = {prio}\n'
                f'advert_int = {adv}\nversion = {version}\nvirtual_ips = ["{VIP}/24"]\n'
            )
        return Proc(["ip", "netns", "exec", ns(node), binary, "--config", cfg], f"{DIR}/syncd-n{node}-{k}.log")
    cfg = f"{DIR}/ka-n{node}-{k}.conf"
    with open(cfg, "w") as f:
        f.write(
            "global_defs {\n  router_id bench\n}\n"
            f"vrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n"
            f"  priority {prio}\n  advert_int {adv}\n  version {version}\n"
            f"  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
        )
    vp = f"{DIR}/ka-n{node}-{k}.vrrp.pid"
    args = ["ip", "netns", "exec", ns(node), "keepalived", "-n", "-l", "-R", "--vrrp", "-f", cfg,
            "-p", f"{DIR}/ka-n{node}-{k}.pid", "-r", vp, "-c", f"{DIR}/ka-n{node}-{k}.chk.pid"]
    return Proc(args, f"{DIR}/ka-n{node}-{k}.log", vp)


def ts_tcpdump(line):
    try:
        return float(line.split()[0])
    except (ValueError, IndexError):
        return None


def ts_monitor(line):
    m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]", line)
    if not m:
        return None
    # `ip -ts` prints local time
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def one_run(impl, binary, version, adv, mode, phase):
    for i in (0, 1):
        subprocess.run(["ip", "-n", ns(i), "addr", "del", f"{VIP}/24", "dev", "eth0"], capture_output=True)
    m = start(impl, binary, 0, 150, version, adv)
    procs = [m]
    try:
        if not wait(lambda: has_vip(0), 15):
            raise RuntimeError(f"{impl}: master never took the VIP; see {m.log}")
        b = start(impl, binary, 1, 100, version, adv)
        procs.append(b)
        time.sleep(max(1.5, 4 * adv + 0.5))
        if has_vip(1):
            raise RuntimeError(f"{impl}: backup holds the VIP too; see {b.log}")
        SEQ[0] += 1
        cap = Proc(["ip", "netns", "exec", ns(2), "tcpdump", "-i", "eth0", "-n", "-l", "-tt", "-e",
                    "arp or ip proto 112"], f"{DIR}/cap-{SEQ[0]}.txt")
        mon = Proc(["ip", "-n", ns(1), "-ts", "monitor", "address"], f"{DIR}/mon-{SEQ[0]}.txt")
        procs += [cap, mon]
        # vary the phase of the signal vs. the advert timer, identically for both implementations
        time.sleep(0.5 + adv * phase)
        t0 = time.time()
        m.send(signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        ok = wait(lambda: has_vip(1), 10)
        time.sleep(0.3)
        m.stop()
        cap.stop(signal.SIGTERM)
        mon.stop(signal.SIGTERM)
        if not ok:
            raise RuntimeError(f"{impl}: backup never took the VIP")
        mac_b = mac(1)
        lines = open(cap.log).read().splitlines()
        master_ip = f"10.{NET}.0.1 > "
        adverts = [ts_tcpdump(l) for l in lines if master_ip in l and "VRRP" in l and ts_tcpdump(l)]
        last_adv = max([t for t in adverts if t <= t0 + 0.05] or [float("nan")])
        prio0 = [ts_tcpdump(l) for l in lines if master_ip in l and "prio 0," in l]
        garps = [ts_tcpdump(l) for l in lines if mac_b in l and f"tell {VIP}" in l]
        garp = min([t for t in garps if t >= t0 - 0.001] or [float("nan")])
        vips = [ts_monitor(l) for l in open(mon.log).read().splitlines() if f"inet {VIP}/" in l and "Deleted" not in l]
        vip_t = min([t for t in vips if t] or [float("nan")])
        ref = prio0[0] if (mode == "term" and prio0) else last_adv
        return {
            "sig->VIP": (vip_t - t0) * 1000,
            "sig->GARP": (garp - t0) * 1000,
            "adv->GARP": (garp - ref) * 1000,
        }
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.stop()


def mdi_ms(prio, adv, version):
    skew = (256 - prio) / 256 * (adv if version == 3 else 1.0)
    return (3 * adv + skew) * 1000, skew * 1000


def fmt(xs):
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    return f"{statistics.mean(xs):8.1f} [{min(xs):7.1f} .. {max(xs):7.1f}]"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    binary = os.path.abspath(sys.argv[1])
    runs = RUNS
    if "--runs" in sys.argv:
        runs = int(sys.argv[sys.argv.index("--runs") + 1])
    cases = [(3, 1.0, "kill"), (3, 0.1, "kill"), (3, 1.0, "term"), (3, 0.1, "term"), (2, 1.0, "kill")]
    if "--quick" in sys.argv:
        cases = [(3, 0.1, "kill"), (3, 0.1, "term")]
    if os.geteuid() != 0:
        print("SKIP: needs root (network namespaces)")
        return
    teardown()
    setup()
    results = {}
    try:
        for version, adv, mode in cases:
            for impl in ("syncd", "keepalived"):
                rs = []
                for r in range(runs):
                    res = one_run(impl, binary, version, adv, mode, (r % runs) / runs)
                    rs.append(res)
                    print(f"  {impl:10} v{version} adv {adv:>4}s {mode:4} run {r + 1}: "
                          + "  ".join(f"{k} {v:7.1f} ms" for k, v in res.items()), flush=True)
                results[(version, adv, mode, impl)] = rs
    finally:
        teardown()
    print()
    print(f"{'case':26} {'impl':10} {'sig->VIP ms mean [min..max]':32} {'sig->GARP ms':32} {'adv->GARP ms':32} target")
    for version, adv, mode in cases:
        mdi, skew = mdi_ms(100, adv, version)
        target = f"<= {mdi + 20:.1f} (MDI+20)" if mode == "kill" else f"<= {skew + 20:.1f} (Skew+20)"
        means = {}
        for impl in ("syncd", "keepalived"):
            rs = results[(version, adv, mode, impl)]
            cols = [fmt([r[k] for r in rs]) for k in ("sig->VIP", "sig->GARP", "adv->GARP")]
            means[impl] = {k: statistics.mean([r[k] for r in rs if r[k] == r[k]] or [float('nan')])
                           for k in ("sig->VIP", "sig->GARP", "adv->GARP")}
            case = f"v{version} adv {adv}s {'kill -9' if mode == 'kill' else 'SIGTERM'}"
            print(f"{case:26} {impl:10} {cols[0]:32} {cols[1]:32} {cols[2]:32} {target}")
        ratio = "  ".join(f"{k} {means['syncd'][k] / means['keepalived'][k]:.3f}"
                          for k in ("sig->VIP", "sig->GARP", "adv->GARP") if means['keepalived'][k])
        print(f"{'':26} {'ratio':10} syncd/keepalived: {ratio}")


if __name__ == "__main__":
    main()
