#!/bin/sh
# syncd's service hook in the bench's NFS mode: a node that does not lead
# answers NFS with a TCP reset (demote: `stop`), so a switchover's fence
# stops writes at once and the client retries through the address.
# The rule sits in prerouting, not input: after a hand-over the client's ARP
# entry still points here for a moment, and a SYN to the address this node
# just released would otherwise be dropped silently, so the client would
# wait out TCP's 1 s SYN retransmission before it tries the new leader.
set -e
case "$1" in
stop)
    /usr/sbin/nft -f - <<'NFT'
table inet syncdfence
delete table inet syncdfence
table inet syncdfence {
    chain prerouting {
        type filter hook prerouting priority 0;
        tcp dport 2049 reject with tcp reset
    }
}
NFT
    ;;
start)
    /usr/sbin/nft delete table inet syncdfence 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
