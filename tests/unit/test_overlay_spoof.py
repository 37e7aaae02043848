"""Plain overlay (issue 9): a registered host may only send from its own leased subnet(s).

Before the fix, `OverlayRouter.inbound` checked only the outer source, so host B could put
host C's (or this host's) overlay address in the inner source and A delivered it.
"""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP

from tests.unit.test_overlay_core import NETWORK, OWN_SUBNET, rx, slot
from tunneld.proto.counters import Counters
from tunneld.proto.overlay import OverlayRouter, OverlayRxDrop, OverlayTxDrop

B, C = "192.168.77.2", "192.168.77.3"
OFF = 16


@pytest.fixture
def router() -> OverlayRouter:
    r = OverlayRouter(OWN_SUBNET, NETWORK, Counters(OverlayRxDrop, OverlayTxDrop))
    r.add_route(IPv4Network("10.5.2.0/24"), B, (B, 8285))
    r.add_route(IPv4Network("10.5.3.0/24"), C, (C, 8285))
    r.add_route(IPv4Network("10.5.4.0/24"), B, (B, 8285))  # B holds two subnets
    return r


@pytest.mark.parametrize("src", ["10.5.2.0", "10.5.2.77", "10.5.4.9"])
def test_sources_in_the_senders_subnets_are_delivered(router, src):
    buf, n = slot(IP(src=src, dst="10.5.1.0") / ICMP())
    assert router.inbound(buf, OFF, n, B) == n
    assert rx(router, OverlayRxDrop.SPOOFED_SOURCE) == 0


@pytest.mark.parametrize(
    "src",
    ["10.5.3.1", "10.5.1.5", "10.5.1.0", "10.5.99.1", "192.168.77.2", "0.0.0.0", "10.5.0.0"],
    ids=["other-host", "own-subnet", "own-address", "unleased", "outside", "zero", "router"],
)
def test_any_other_inner_source_is_dropped_as_spoofed(router, src):
    buf, n = slot(IP(src=src, dst="10.5.1.0") / ICMP())
    assert router.inbound(buf, OFF, n, B) == -1
    assert rx(router, OverlayRxDrop.SPOOFED_SOURCE) == 1
    assert router.counters.as_dict()["rx_dropped"]["spoofed_source"] == 1


def test_a_removed_route_stops_its_sources(router):
    router.remove_route(IPv4Network("10.5.4.0/24"))
    buf, n = slot(IP(src="10.5.4.9", dst="10.5.1.0") / ICMP())
    assert router.inbound(buf, OFF, n, B) == -1
    assert rx(router, OverlayRxDrop.SPOOFED_SOURCE) == 1
