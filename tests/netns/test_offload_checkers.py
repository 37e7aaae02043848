"""The integrity checkers can fail: each kind of damage they exist to catch is caught.

test_offload_integrity.py passes when nothing is wrong; these show that its checks are
not vacuous. A TCP receiver given a stream with one flipped byte names its offset; the
UDP flow checker counts corruption, duplication, reordering, crossed flows and loss; the
wire checker flags every bad header in a capture built with scapy; and the offload
default reaches every interface table of a config.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, VXLAN, Ether, Raw, wrpcap

from tests.netns.conftest import DEFAULT_ONLY, with_offload_default
from tests.netns.test_offload_integrity import check_capture
from tunneld.testbed.transfer import (
    FlowChecker,
    TcpResult,
    UdpResult,
    end_report,
    flat_sizes,
    start_end,
    stream_sha256,
    udp_payload,
    udp_schedule,
)

# --- TCP: one flipped byte --------------------------------------------------------------

CORRUPT_SENDER = textwrap.dedent("""
    import socket, sys
    from tunneld.testbed.transfer import CHUNK, SeededStream
    port, size, flip = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stream, buf, sent = SeededStream(1), bytearray(CHUNK), 0
    sock = socket.create_connection(("127.0.0.1", port))
    while sent < size:
        chunk = bytearray(stream.next_into(buf, min(CHUNK, size - sent)))
        if sent <= flip < sent + len(chunk):
            chunk[flip - sent] ^= 0x20
        sock.sendall(chunk)
        sent += len(chunk)
    sock.close()
""")


@pytest.mark.offload_default_only  # no tunnel here: nothing to run in two modes
def test_tcp_receiver_names_the_first_corrupted_byte(testbed):
    ns = testbed.add_ns("tcp")
    size, flip = 3 * 2**20 + 17, 1_234_567
    receiver = start_end(ns, ["tcp", "--mode", "listen", "--action", "recv", "--addr", "127.0.0.1",
                           "--port", "7400", "--size", str(size), "--seed", "1"],
                      expect="listening")  # fmt: skip
    ns.run([sys.executable, "-c", CORRUPT_SENDER, "7400", str(size), str(flip)])
    report = end_report(receiver, timeout=30)
    assert report["bytes"] == size and report["first_mismatch"] == flip, report
    sender = {"action": "send", "bytes": size, "sha256": stream_sha256(1, size), "error": ""}
    problems = TcpResult("test", size, 1, sender, report).problems()
    assert any("sha256" in p for p in problems) and any(str(flip) in p for p in problems)
    short = dict(report, bytes=size - 1, first_mismatch=None)
    assert TcpResult("test", size, 1, sender, short).problems()  # a lost tail is caught too


# --- UDP: the flow checker ----------------------------------------------------------------


@pytest.fixture
def flow():
    sizes = flat_sizes(udp_schedule(0, 1392, seed=1))
    return sizes, [udp_payload(0, seq, size) for seq, size in enumerate(sizes)]


def _checked(sizes, datagrams) -> dict:
    checker = FlowChecker(0, sizes)
    for d in datagrams:
        checker.feed(d)
    return checker.report()


def test_schedule_covers_every_size_and_bursts(flow):
    sizes, _ = flow
    assert set(range(1, 1393)) <= set(sizes)
    bursts = [s for s in udp_schedule(0, 1392, seed=1) if len(s) > 1]
    assert len(bursts) == 12 and {1392, 1391, 1} <= {b[0] for b in bursts}


def test_flow_checker_passes_an_intact_flow_and_counts_loss(flow):
    sizes, datagrams = flow
    report = _checked(sizes, datagrams)
    assert report["received"] == len(sizes) and not report["examples"], report
    lossy = _checked(sizes, datagrams[::2])
    assert lossy["received"] == (len(sizes) + 1) // 2 and not lossy["examples"]
    result = UdpResult("test", [lossy])
    assert result.problems() and not result.problems(min_delivered=0.4)


@pytest.mark.parametrize(
    "damage, counter",
    [
        ("flip", "corrupt"),
        ("truncate", "corrupt"),
        ("other_flow", "corrupt"),
        ("one_byte_other_flow", "corrupt"),
        ("swap", "reordered"),
        ("duplicate", "duplicates"),
    ],
)
def test_flow_checker_catches(flow, damage, counter):
    sizes, datagrams = flow
    seq = next(i for i, s in enumerate(sizes) if s > 100)
    one = next(i for i, s in enumerate(sizes) if s == 1)
    damaged = list(datagrams)
    if damage == "flip":
        damaged[seq] = damaged[seq][:50] + bytes([damaged[seq][50] ^ 1]) + damaged[seq][51:]
    elif damage == "truncate":
        damaged[seq] = damaged[seq][:-1]
    elif damage == "other_flow":
        damaged[seq] = udp_payload(1, seq, sizes[seq])
    elif damage == "one_byte_other_flow":
        damaged[one] = udp_payload(1, one, 1)
    elif damage == "swap":
        damaged[seq], damaged[seq + 1] = damaged[seq + 1], damaged[seq]
    else:
        damaged.insert(seq + 5, damaged[seq])
    report = _checked(sizes, damaged)
    assert report[counter] == 1, report
    assert UdpResult("test", [report]).problems()


# --- the wire checker -----------------------------------------------------------------------

A, B = "192.168.9.1", "192.168.9.2"


def _vxlan(inner_payload: bytes = b"x" * 100, **outer) -> Ether:
    inner = Ether() / IP(src="10.88.0.1", dst="10.88.0.2") / TCP(sport=1, dport=2, flags="A")
    return (Ether() / IP(src=A, dst=B, **outer) / UDP(sport=5000, dport=4789, chksum=0)
            / VXLAN(vni=42, flags=0x08) / inner / Raw(inner_payload))  # fmt: skip


def _overlay(payload_len: int = 100, **udp) -> Ether:
    inner = IP(src="10.5.1.0", dst="10.5.2.0") / UDP(sport=9, dport=9) / Raw(b"y" * payload_len)
    return Ether() / IP(src=A, dst=B) / UDP(sport=8285, dport=8285, **udp) / inner


def _bad_inner_tcp() -> bytes:
    frame = bytearray(bytes(_vxlan()))
    frame[-1] ^= 0xFF  # payload byte: the inner TCP checksum no longer matches
    return bytes(frame)


def _bad_outer_ip() -> bytes:
    frame = bytearray(bytes(_overlay()))
    frame[14 + 8] ^= 0x01  # TTL changed under the header checksum
    return bytes(frame)


def _check(tmp_path, frames, inner: str, mtu: int):
    path = str(tmp_path / "wire.pcap")
    wrpcap(path, [f if isinstance(f, Ether) else Ether(f) for f in frames])
    return check_capture(path, inner, mtu)


def test_wire_checker_passes_valid_frames(tmp_path):
    vx = _check(tmp_path, [_vxlan(), _vxlan(b"z" * 1410)], "ethernet", 1450)
    assert not vx.problems and vx.checked["tcp"] == 2 and vx.largest == 1500, vx
    ov = _check(tmp_path, [_overlay(), _overlay(1444)], "ipv4", 1472)
    assert not ov.problems and ov.checked["udp"] == 2 and ov.largest == 1500, ov


WIRE_DAMAGE = [
    (lambda: _overlay(1501 - 56), "ipv4", "over_mtu"),
    (lambda: _vxlan(flags="MF"), "ethernet", "fragment"),
    (lambda: _bad_inner_tcp(), "ethernet", "inner_tcp_checksum"),
    (lambda: _bad_outer_ip(), "ipv4", "outer_ip_checksum"),
    (lambda: _overlay(chksum=0), "ipv4", "outer_udp_no_checksum"),
    (lambda: _overlay(chksum=0x1234), "ipv4", "outer_udp_checksum"),
    (lambda: Ether() / IP(src=A, dst=B) / UDP(dport=51820) / Raw(b"\x04\0\0\0" + bytes(45)),
     "sealed", "wireguard_padding"),
]  # fmt: skip


@pytest.mark.parametrize("frame, inner, kind", WIRE_DAMAGE, ids=[d[2] for d in WIRE_DAMAGE])
def test_wire_checker_flags(tmp_path, frame, inner, kind):
    mtu = {"ethernet": 1450, "ipv4": 1472, "sealed": 1420}[inner]
    stats = _check(tmp_path, [frame()], inner, mtu)
    assert stats.problems == {kind: 1}, (dict(stats.problems), stats.examples)


# --- the offload default --------------------------------------------------------------------


def test_offload_default_reaches_every_interface_table():
    text = '[daemon]\n[interfaces.vx0]\ntype = "vxlan"\n[interfaces."ov0"] # overlay\nx = 1\n'
    assert with_offload_default(text, False) == (
        '[daemon]\n[interfaces.vx0]\noffload = false\ntype = "vxlan"\n'
        '[interfaces."ov0"] # overlay\noffload = false\nx = 1\n'
    )
    explicit = '[interfaces.wg0]\ntype = "wireguard"\noffload = true\n'
    assert with_offload_default(explicit, False) == explicit
    assert with_offload_default("[interfaces.vx0\n", True) == "[interfaces.vx0\n"  # not TOML
    with pytest.raises(ValueError, match="no \\[interfaces.vx0\\] header"):
        with_offload_default('interfaces.vx0.type = "vxlan"\n', True)


def test_default_only_entries_name_existing_tests():
    """A renamed test must not silently start running in both modes (or stop running once)."""
    here = Path(__file__).parent
    for entry in DEFAULT_ONLY:
        file, _, name = entry.partition("::")
        assert (here / file).is_file(), entry
        assert not name or f"def {name}(" in (here / file).read_text(), entry


def test_the_doubled_suite_really_switches_the_daemon(two_hosts, offload_default):
    """A config written by hand (no helper) still runs in this test's mode: conftest adds
    the key, and the daemon's `show` says whether its tap has offloads."""
    h1, h2 = two_hosts
    text = f'[interfaces.vx0]\ntype = "vxlan"\nvni = 42\nlocal = "{h1.ip}"\n'
    state = h1.ns.spawn_tunneld(text).show("vx0")["interfaces"]["vx0"]["offload"]
    assert offload_default in (True, False)  # this test is one of a doubled pair
    assert (state["device"] != "off") is offload_default, state
