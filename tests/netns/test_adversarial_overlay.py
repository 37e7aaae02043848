"""Adversarial datagram sizes at the plain overlay's UDP port 8285 (issue 9), as
test_adversarial.py does for the WireGuard and VXLAN ports (its helpers, imported; a file of
its own because that module needs wireguard-go, wg, bridge and ethtool): IP-fragmented
(3,000 bytes), the largest (65,507 bytes: a 65,535-byte IP datagram), short, IP-oversized
(reassembly past 65,535) and truncated (UDP length beyond the packet) datagrams, from an
attacker whose address is no registered host and from the registered host's own address.
Each is dropped, by tunneld with its reason or by the kernel before tunneld sees it, and the
hosts' pings still pass."""

from __future__ import annotations

import pytest
from scapy.all import IP, UDP, Raw

from tests.netns.test_adversarial import _kernel_drops_reach_nobody, raw_send, wait_delta
from tests.netns.test_overlay_static import PORT, static_config

pytestmark = pytest.mark.netns()


def _inner(src: str, size: int) -> bytes:
    """An IPv4/UDP packet of `size` bytes from `src` to host 1's overlay address."""
    head = IP(src=src, dst="10.5.1.0", ttl=64) / UDP(sport=9, dport=9)
    return bytes(head / Raw(bytes(size - 28)))


def test_overlay_datagram_sizes(testbed, three_hosts):
    dev = testbed.ifname("ov")
    h1, h2, h3 = three_hosts  # h1 and h2 are overlay hosts; h3 is registered nowhere
    daemon = h1.ns.spawn_tunneld(static_config(dev, 1, three_hosts, [1, 2]), name="t1")
    h2.ns.spawn_tunneld(static_config(dev, 2, three_hosts, [1, 2]), name="t2")
    assert h2.ns.ping("10.5.1.0", count=2, interval=0.1) == (2, 2)

    def read() -> dict[str, int]:
        counters = daemon.show(dev)["interfaces"][dev]["counters"]
        return {**counters["rx_dropped"], "rx_packets": counters["rx_packets"]}

    # the attacker: well-formed inner packets of every size are no registered host's
    attacker = {"src": h3.ip, "dst": h1.ip, "sport": 40000, "dport": PORT}
    cases = [_inner("10.5.2.0", 3000), _inner("10.5.2.0", 65507), _inner("10.5.2.0", 28)[:12]]
    before = read()
    raw_send(h3.ns, [{**attacker, "hex": c.hex()} for c in cases])
    wait_delta(read, before, {"unknown_source": 3}, "attacker's sizes")
    _kernel_drops_reach_nobody(h1.ns, h3.ns, attacker, read)

    # the registered host: past the source check, each is refused for what it carries
    peer = {"src": h2.ip, "dst": h1.ip, "sport": PORT, "dport": PORT}
    largest = bytearray(_inner("10.5.2.0", 65507))
    largest[2:4] = (65535).to_bytes(2, "big")  # claims more than the datagram holds
    cases = [_inner("10.5.9.9", 3000), bytes(largest), _inner("10.5.2.0", 28)[:12]]
    before = read()
    raw_send(h2.ns, [{**peer, "hex": c.hex()} for c in cases])
    wait_delta(read, before, {"spoofed_source": 1, "truncated": 2}, "registered host's sizes")
    _kernel_drops_reach_nobody(h1.ns, h2.ns, peer, read)

    assert daemon.alive
    assert h2.ns.ping("10.5.1.0", count=3, interval=0.1) == (3, 3)
    assert h1.ns.ping("10.5.2.0", count=3, interval=0.1) == (3, 3)
