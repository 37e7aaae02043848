"""PrefixTable: a Hypothesis state machine against a scan-all-prefixes model, plus edges."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tunneld.proto.routing import PrefixTable

# Addresses and prefixes drawn from small spaces so that prefixes nest and collide.
V4_BASE, V6_BASE = int(ipaddress.ip_address("10.0.0.0")), int(ipaddress.ip_address("2001:db8::"))


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if draw(st.booleans()):
        plen = draw(st.sampled_from([0, 8, 16, 23, 24, 25, 30, 32]))
        addr = V4_BASE | draw(st.integers(0, 0xFFFF)) << 8 | draw(st.sampled_from([0, 1, 128]))
        return ipaddress.ip_network((addr, plen), strict=False)
    plen = draw(st.sampled_from([0, 32, 48, 64, 65, 127, 128]))
    addr = V6_BASE | draw(st.integers(0, 3)) << 64 | draw(st.sampled_from([0, 1, 1 << 63]))
    return ipaddress.ip_network((addr, plen), strict=False)


@st.composite
def addresses(draw: st.DrawFn) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if draw(st.booleans()):
        low = draw(st.integers(0, 0xFFFF)) << 8 | draw(st.sampled_from([0, 1, 2, 128, 255]))
        return ipaddress.IPv4Address(draw(st.sampled_from([V4_BASE | low, low << 8])))
    low = draw(st.integers(0, 3)) << 64 | draw(st.sampled_from([0, 1, 2, 1 << 63]))
    return ipaddress.IPv6Address(draw(st.sampled_from([V6_BASE | low, low])))


class RoutingMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.table: PrefixTable[str] = PrefixTable()
        self.model: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}

    def expected(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        best = None
        for net, value in self.model.items():
            if net.version == addr.version and addr in net:
                if best is None or net.prefixlen > best[0].prefixlen:
                    best = (net, value)
        return None if best is None else best[1]

    @rule(net=networks(), value=st.sampled_from(["peer-a", "peer-b", "peer-c"]))
    def insert(self, net: ipaddress.IPv4Network, value: str) -> None:
        assert self.table.insert(net, value) == self.model.get(net)
        self.model[net] = value

    @rule(net=networks())
    def remove(self, net: ipaddress.IPv4Network) -> None:
        assert self.table.remove(net) == self.model.pop(net, None)

    @rule(addr=addresses())
    def lookup(self, addr: ipaddress.IPv4Address) -> None:
        want = self.expected(addr)
        packed = addr.packed
        assert self.table.lookup_ip(addr) == want
        assert self.table.lookup(packed, addr.version) == want
        assert self.table.lookup(int(addr), addr.version) == want
        buf = memoryview(bytearray(3) + packed + bytearray(2))  # address at an offset
        fast = self.table.lookup_v4 if addr.version == 4 else self.table.lookup_v6
        assert fast(buf, 3) == want

    @precondition(lambda self: hasattr(self, "table"))
    @invariant()
    def items_match(self) -> None:
        assert dict(self.table.items()) == self.model
        assert len(self.table) == len(self.model)


RoutingMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestRoutingStateful = RoutingMachine.TestCase


def test_longest_match_and_default_routes() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.insert("0.0.0.0/0", "default4")
    t.insert("10.5.0.0/16", "overlay")
    t.insert("10.5.2.0/24", "host2")
    t.insert("10.5.2.7/32", "pinned")
    t.insert("::/0", "default6")
    t.insert("fd00::/8", "ula")
    assert t.lookup_ip("10.5.2.7") == "pinned"
    assert t.lookup_ip("10.5.2.8") == "host2"
    assert t.lookup_ip("10.5.3.1") == "overlay"
    assert t.lookup_ip("192.0.2.1") == "default4"
    assert t.lookup_ip("fd12::1") == "ula"
    assert t.lookup_ip("2001:db8::1") == "default6"
    assert t.get("10.5.0.0/16") == "overlay" and t.get("10.5.0.0/17") is None
    assert [str(n) for n in t][:2] == ["10.5.2.7/32", "10.5.2.0/24"]


def test_families_do_not_mix() -> None:
    t: PrefixTable[str] = PrefixTable()
    t.insert("0.0.0.0/0", "v4")
    assert t.lookup_ip("::1") is None
    assert t.lookup(1, 6) is None and t.lookup(1, 4) == "v4"


def test_levels_shrink_when_emptied() -> None:
    t: PrefixTable[int] = PrefixTable()
    t.insert("10.0.0.0/8", 1)
    t.insert("10.1.0.0/16", 2)
    assert t.remove("10.1.0.0/16") == 2
    assert t.remove("10.1.0.0/16") is None
    assert t._levels4 == ((0xFF000000, {0x0A000000: 1}),)
    t.clear()
    assert len(t) == 0 and t.lookup_ip("10.0.0.1") is None


def test_misuse_raises() -> None:
    t: PrefixTable[object] = PrefixTable()
    with pytest.raises(ValueError):
        t.insert("10.0.0.1/8", "host bits set")
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", None)
