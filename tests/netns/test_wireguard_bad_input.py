"""Hostile input against tunneld's WireGuard link, next to a legitimate peer.

  ns1  tunneld (10.77.0.1)        the target
  ns2  wireguard-go (10.77.0.2)   a legitimate peer; its pings must keep working
  ns3  an attacker on the same underlay segment

Each kind of bad datagram must be dropped and counted under its own reason
(`show --json` counters), the daemon must stay up and the legitimate peer's
session must not notice. The packets that need real keys (bad tag, replay,
stale TAI64N) are captured from the legitimate peer and re-sent by ns3.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time

import pytest
from scapy.all import IP, UDP, rdpcap

from tests.netns.wg_helpers import (
    FLOOD_SCRIPT,
    SEND_SCRIPT,
    Keys,
    PeerSpec,
    WgGo,
    mac1,
    recent,
    tunneld_peer,
    tunneld_wg_config,
    udp_rcvbuf_errors,
    wait_ping,
    wg_show,
)
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("wireguard-go", "wg")

PORT = 51820


class Target:
    def __init__(self, testbed, threshold: int | None = None):
        self.h1, self.h2, self.h3 = testbed.hub_hosts(3)
        self.td_keys, self.go_keys = Keys.new(), Keys.new()
        self.go = WgGo.start(self.h2.ns, testbed.ifname("wg"), self.go_keys, PORT,
                             "10.77.0.2/24")  # fmt: skip
        self.go.set_peer(self.td_keys.public_b64, ["10.77.0.1/32"], f"{self.h1.ip}:{PORT}")
        peer = PeerSpec(self.go_keys.public_b64, ["10.77.0.2/32"])  # no endpoint: ns2 initiates
        config = tunneld_wg_config(
            self.td_keys,
            ["10.77.0.1/24"],
            [peer],
            listen_port=PORT,
            handshake_load_threshold=threshold,
        )
        self.daemon = self.h1.ns.spawn_tunneld(config)

    def drops(self) -> dict[str, int]:
        return wg_show(self.daemon)["counters"]["rx_dropped"]

    def send(self, payloads: list[bytes], burst: int = 200) -> None:
        text = "".join(p.hex() + "\n" for p in payloads)
        self.h3.ns.run([sys.executable, "-c", SEND_SCRIPT, self.h1.ip, str(PORT), str(burst)],
                       input=text, timeout=120)  # fmt: skip

    def expect(self, payloads: list[bytes], **reasons: int) -> None:
        """Send `payloads` from ns3; exactly `reasons` (name=count) more drops follow."""
        before = self.drops()
        self.send(payloads)

        def delta() -> dict[str, int]:
            now = self.drops()
            return {k: now[k] - before[k] for k in now if now[k] != before[k]}

        try:
            wait_for(lambda: delta() == reasons, 5, what=f"drops {reasons}")
        except TimeoutError:
            assert delta() == reasons


@pytest.fixture
def target(testbed):
    t = Target(testbed)
    with t.h1.ns.capture(t.h1.iface, f"udp and src host {t.h2.ip}") as pcap:
        wait_ping(t.h2.ns, "10.77.0.1")  # ns2 initiates: its initiation is captured
        assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    t.captured = [bytes(p[UDP].payload) for p in rdpcap(pcap) if IP in p and UDP in p]
    return t


def _first(captured: list[bytes], kind: int, min_len: int) -> bytes:
    return next(m for m in captured if m[0] == kind and len(m) >= min_len)


def test_each_kind_of_bad_datagram_dropped_and_counted(target):
    t, pub = target, target.td_keys.public
    rand = os.urandom
    sizes = [b"\x01\0\0\0" + rand(n - 4) for n in (147, 149, 20)]
    sizes += [b"\x02\0\0\0" + rand(n - 4) for n in (91, 93)]
    sizes += [b"\x03\0\0\0" + rand(n - 4) for n in (63, 65)]
    sizes += [b"\x04\0\0\0" + rand(n - 4) for n in (31, 16, 4)]
    t.expect(sizes, bad_size=len(sizes))
    t.expect([b"", b"\x01", b"\x05\0\0\0" + rand(60), b"\x01\x01\0\0" + rand(144)],
             bad_type=4)  # fmt: skip
    t.expect([b"\x01\0\0\0" + rand(144), b"\x02\0\0\0" + rand(88)], bad_mac1=2)
    response = struct.pack("<III", 2, 7, 0xDEAD) + rand(48)
    t.expect([b"\x04\0\0\0" + rand(60), response + mac1(pub, response) + bytes(16),
              b"\x03\0\0\0" + rand(60)], unknown_receiver=3)  # fmt: skip
    transport = _first(t.captured, 4, 33)
    kind, receiver, counter = struct.unpack_from("<IIQ", transport)
    forged = bytearray(struct.pack("<IIQ", kind, receiver, counter + 1_000_000) + transport[16:])
    forged[20] ^= 0x40
    t.expect([bytes(forged)], decrypt_failed=1)
    t.expect([transport], replay=1)
    t.expect([_first(t.captured, 1, 148)], stale_timestamp=1)
    assert tunneld_peer(t.daemon, t.go_keys.public_b64)["endpoint"] == f"{t.h2.ip}:{PORT}"
    assert t.daemon.alive
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    assert t.h1.ns.ping("10.77.0.2", count=3) == (3, 3)


def _random_datagrams(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        size = rng.choice([0, 3, 4, 31, 32, 64, 92, 148, rng.randrange(0, 400)])
        data = bytearray(rng.randbytes(size))
        if size >= 4 and rng.random() < 0.7:  # mostly plausible types, to reach deeper
            data[0:4] = struct.pack("<I", rng.randrange(0, 6))
        out.append(bytes(data))
    return out


def test_ten_thousand_random_datagrams(target):
    t = target
    before, lost_before = t.drops(), udp_rcvbuf_errors(t.h1.ns)
    ping = t.h2.ns.popen(["ping", "-n", "-i", "0.1", "-c", "40", "-W", "1", "10.77.0.1"],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    t.send(_random_datagrams(10_000, seed=1234), burst=250)
    output, _ = ping.communicate(timeout=30)
    assert " 40 received" in output or " 39 received" in output, output

    def total() -> int:
        return sum(t.drops().values()) - sum(before.values())

    lost = udp_rcvbuf_errors(t.h1.ns) - lost_before
    wait_for(lambda: total() >= 10_000 - lost, 10, what="10,000 drops counted")
    assert total() == 10_000 - lost, (total(), lost)
    assert lost < 100, f"{lost} datagrams never reached tunneld (socket buffer)"
    delta = {k: v - before[k] for k, v in t.drops().items() if v != before[k]}
    assert {"bad_size", "bad_type", "bad_mac1", "unknown_receiver"} <= delta.keys(), delta
    assert t.daemon.alive
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    assert tunneld_peer(t.daemon, t.go_keys.public_b64)["endpoint"] == f"{t.h2.ip}:{PORT}"


def test_initiation_flood_cookie_replies_and_legit_handshake(testbed):
    """Forged initiations with valid mac1 from 40 sources put tunneld under load
    (handshake_load_threshold lowered to 20/s); the sources get cookie replies, and
    wireguard-go still completes its handshake (mac2 from the cookie) within 15 s."""
    t = Target(testbed, threshold=20)
    octets = range(100, 140)
    prefix = t.h3.ip.rsplit(".", 1)[0]
    for o in octets:
        t.h3.ns.add_addrs(t.h3.iface, f"{prefix}.{o}/24")
    sources = [f"{prefix}.{o}" for o in octets]
    flood = t.h3.ns.popen([sys.executable, "-c", FLOOD_SCRIPT, t.h1.ip, str(PORT),
                           t.td_keys.public.hex(), "800", "20", *sources],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: t.drops()["cookie_required"] > 100, 10, what="tunneld under load")
    started = time.monotonic()
    wait_ping(t.h2.ns, "10.77.0.1", timeout=15)
    took = time.monotonic() - started
    assert took < 15
    assert flood.poll() is None, "the flood ended before the handshake: not under load"
    assert recent(t.go.peer(t.td_keys.public_b64)["latest_handshake"], within=20)
    output, _ = flood.communicate(timeout=40)
    sent, replies = map(int, output.split())
    assert sent > 5000 and replies > 1000, (sent, replies)
    drops = t.drops()
    print(
        f"handshake under load after {took:.1f} s; flood sent {sent}, {replies} cookie "
        f"replies came back; drops {drops}"
    )
    assert drops["cookie_required"] >= replies, drops
    assert t.daemon.alive
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
