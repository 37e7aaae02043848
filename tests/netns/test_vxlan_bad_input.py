"""Malformed datagrams at tunneld's VXLAN port: dropped, counted by reason, nobody disturbed."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import pytest

from tests.netns.vxlan_helpers import send_udp, vxlan_config
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("bridge", "ethtool")

ETH = bytes.fromhex("ffffffffffff0200000000990800")


def _vxlan(vni: int, frame: bytes, flags: int = 0x08000000) -> bytes:
    return struct.pack("!II", flags, vni << 8) + frame


@pytest.fixture
def pair(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24"))
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip], address="10.88.0.2/24"
    )
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    return h1, h2, daemon


def test_each_malformed_datagram_is_counted_by_reason(pair):
    h1, h2, daemon = pair
    cases = {
        "short": b"\x08\x00",
        "bad_flags": _vxlan(42, ETH + bytes(46), flags=0),
        "wrong_vni": _vxlan(43, ETH + bytes(46)),
        "oversized": _vxlan(42, ETH + bytes(1600)),
        "bad_source_mac": _vxlan(42, bytes.fromhex("ffffffffffffffffffffffff0800") + bytes(46)),
    }
    before = daemon.show("vx0")["interfaces"]["vx0"]["counters"]["rx_dropped"]
    send_udp(h2.ns, h1.ip, 4789, [c.hex() for c in cases.values()])
    wait_for(
        lambda: (
            daemon.show("vx0")["interfaces"]["vx0"]["counters"]["rx_dropped"]["short"]
            > before["short"]
        ),
        5,
        what="drops counted",
    )
    after = daemon.show("vx0")["interfaces"]["vx0"]["counters"]["rx_dropped"]
    for reason in cases:
        assert after[reason] == before[reason] + 1, (reason, after)
    assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)


def test_ten_thousand_random_datagrams_while_pinging(pair):
    h1, h2, daemon = pair
    ping = h2.ns.popen(
        ["ping", "-n", "-c", "40", "-i", "0.1", "10.88.0.1"], stdout=subprocess.PIPE, text=True
    )
    fuzz = textwrap.dedent(f"""\
        import os, random, socket, struct
        rng = random.Random(7)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(10_000):
            n = rng.randrange(0, 1600)
            body = os.urandom(n)
            if i % 3 == 0:   # a valid header in front: exercises decap, learning and the tap
                body = struct.pack("!II", 0x08000000, 42 << 8) + body
            elif i % 3 == 1: # valid flags, random VNI and reserved bits
                body = struct.pack("!II", 0x08000000, rng.getrandbits(32)) + body
            try:
                s.sendto(body, ({h1.ip!r}, 4789))
            except OSError:
                pass
        """)
    h2.ns.run([sys.executable, "-c", fuzz], timeout=60)
    out, _ = ping.communicate(timeout=30)
    assert daemon.alive, daemon.stderr()
    received = int(out.split(" received")[0].rsplit(",", 1)[1])
    assert received >= 36, out
    counters = daemon.show("vx0")["interfaces"]["vx0"]["counters"]
    assert sum(counters["rx_dropped"].values()) >= 3000, counters
    assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)
