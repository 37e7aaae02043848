"""The tun seam against the real kernel: IFF_VNET_HDR + TUNSETOFFLOAD, in a namespace.

A script runs inside a fresh namespace (the device is created there, never on the host):
it opens a tun with offload, routes 10.201.0.0/24 through it, sends one UDP_SEGMENT run and
one TCP SYN there, and reports the virtio_net_hdr of each read. The UDP run must come out as
one GSO_UDP_L4 super-packet (USO granted); the SYN as GSO_NONE with NEEDS_CSUM (the checksum
is ours to complete). TSO super-packets need an established TCP flow: the integrity tests in
test_offload_integrity.py cover them through the data planes.
"""

from __future__ import annotations

import json
import sys
import textwrap

from tunneld.testbed import Testbed

SCRIPT = textwrap.dedent("""
    import json, os, select, socket, struct, subprocess, sys
    from tunneld.kernel.tun import TunDevice, describe_offload
    VNET_HDR = struct.Struct("<BBHHHH")
    dev = TunDevice.open(sys.argv[1], "tun", offload=True)
    subprocess.run(["ip", "addr", "add", "10.201.0.1/24", "dev", dev.name], check=True)
    subprocess.run(["ip", "link", "set", dev.name, "up", "mtu", "1400"], check=True)
    out = {"flags": describe_offload(dev.offload_flags), "reads": []}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendmsg([b"u" * 1300 * 5], [(17, 103, struct.pack("=H", 1300))], 0, ("10.201.0.2", 9))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setblocking(False)
    try:
        t.connect(("10.201.0.2", 80))
    except BlockingIOError:
        pass
    buf = memoryview(bytearray(70000))
    for _ in range(50):
        if not select.select([dev.fd], [], [], 0.5)[0]:
            break
        n = dev.readv([buf])
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
        proto = buf[10 + 9]
        out["reads"].append([n, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, proto])
    print(json.dumps(out))
""")


def test_vnet_hdr_tun_hands_over_gso_udp_and_partial_checksums(testbed: Testbed) -> None:
    ns = testbed.add_ns("k1")
    proc = ns.run([sys.executable, "-c", SCRIPT, testbed.ifname("tun")], timeout=30)
    out = json.loads(proc.stdout)
    assert out["flags"] == "csum tso4 tso6 uso4 uso6"
    reads = out["reads"]
    udp = [r for r in reads if r[7] == 17 and r[0] > 1400]
    tcp = [r for r in reads if r[7] == 6]
    # one read: the whole 5 x 1300 UDP run, as GSO_UDP_L4 with a partial checksum
    assert udp, reads
    n, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, _ = udp[0]
    assert (n, gso_type, gso_size) == (10 + 20 + 8 + 5 * 1300, 5, 1300)  # GSO_UDP_L4
    assert flags & 1 and (csum_start, csum_offset) == (20, 6) and hdr_len >= 28
    # the SYN: a single packet, GSO_NONE, checksum left to us (NEEDS_CSUM at offset 16)
    assert tcp, reads
    assert tcp[0][2] == 0 and tcp[0][1] & 1 and (tcp[0][5], tcp[0][6]) == (20, 16)
