"""Limits of the offload cores that come from the kernel's interfaces, not the protocols.

Found in review: a flow of tiny TCP segments (an MSS of 48 is allowed) once merged past
IOV_MAX, so the gather write failed with EINVAL and the run was lost; the largest
super-packets a tun may hand over must fit the links' read buffers.
"""

from __future__ import annotations

import os

from scapy.layers.inet import IP, TCP

from tunneld.links.datapath import MAX_DEVICE_PACKET, TX_BUFFER_SIZE
from tunneld.links.wireguard import HEADROOM, TAILROOM
from tunneld.proto.gso import TCP_MAX_SEGMENTS, VNET_HDR_LEN, Coalescer


def test_a_flow_of_tiny_segments_is_written_in_runs_writev_accepts() -> None:
    co = Coalescer(0, verify=False, udp=False, max_packets=2048)
    buf = memoryview(bytearray(2048 * 128))
    seq = 1000
    for i in range(1100):
        tcp = TCP(sport=1, dport=2, seq=seq, ack=5, flags="A")
        pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / tcp / (b"x" * 40))
        buf[i * 128 : i * 128 + len(pkt)] = pkt
        co.add(buf, i * 128, len(pkt))
        seq += 40
    writes: list[int] = []
    payload = bytearray()
    co.flush(lambda views: (writes.append(len(views)), payload.extend(
        b"".join(bytes(v) for v in views[1:]))))  # fmt: skip
    assert max(writes) <= TCP_MAX_SEGMENTS + 1 < os.sysconf("SC_IOV_MAX")
    assert sum(w - 1 for w in writes) == 1100  # every packet written once


def test_the_largest_super_packet_fits_a_links_read() -> None:
    # the tun read iov is buf[HEADROOM - 10 : TX_BUFFER_SIZE - TAILROOM]
    assert TX_BUFFER_SIZE - TAILROOM - (HEADROOM - VNET_HDR_LEN) > VNET_HDR_LEN + MAX_DEVICE_PACKET
    assert MAX_DEVICE_PACKET >= 65535 + 14 + 4  # IP maximum + Ethernet + one VLAN tag
