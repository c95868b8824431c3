"""The benches' network-namespace lab (what crates/testkit's netns is to the
tests): a bridge namespace and nodes joined to it by veth pairs, made and
removed here. Shared by benches/failover/harness.py and
benches/vrrp_failover/harness.py.
"""

import subprocess


def sh(*args, check=True):
    """Runs a command; its stdout, or an error naming it and its stderr."""
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


class Lab:
    """Namespaces `<prefix>br` (the bridge) and `<prefix>n<i>` (node i, its
    `eth0` at `<net>.<i + 1>/24`, its bridge port `p<i>`)."""

    def __init__(self, prefix, net):
        self.prefix = prefix
        self.net = net
        self.br = f"{prefix}br"

    def ns(self, i):
        return f"{self.prefix}n{i}"

    def ip(self, i):
        return f"{self.net}.{i + 1}"

    def up(self, nodes):
        sh("ip", "netns", "add", self.br)
        sh("ip", "-n", self.br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.br, "link", "set", "br0", "up")
        for i in range(nodes):
            n = self.ns(i)
            sh("ip", "netns", "add", n)
            sh("ip", "link", "add", "eth0", "netns", n, "type", "veth", "peer", "name", f"p{i}", "netns", self.br)
            sh("ip", "-n", self.br, "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", n, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", "eth0", "up")
            sh("ip", "-n", n, "link", "set", "lo", "up")

    def down(self, nodes=3):
        """Removes the nodes' namespaces and the bridge's (those that exist)."""
        for n in [self.ns(i) for i in range(nodes)] + [self.br]:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    def port(self, i, state):
        """Sets node i's bridge port state (0: disabled, a silent partition; 3: forwarding)."""
        sh("ip", "netns", "exec", self.br, "bridge", "link", "set", "dev", f"p{i}", "state", str(state))

    def has_addr(self, i, addr):
        out = sh("ip", "-n", self.ns(i), "-o", "addr", "show", "dev", "eth0", check=False)
        return f" {addr}/" in out
