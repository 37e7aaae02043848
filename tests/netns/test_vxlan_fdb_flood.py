"""An FDB flood (issue 9): 1,000,000 VXLAN datagrams with random source MACs on the right VNI.

The table stays at `max_learned` (the default), the daemon's RSS stays within 20 MB of its
value before the flood, `fdb_full` is counted, a static entry stays, and a ping between the
legitimate VTEPs (tunneld <-> kernel vxlan) keeps working during and after the flood, also
from a MAC first seen while the table is full (delivered, not learned, replies flooded).

The datagrams are preassembled with struct and sent as UDP GSO runs (64 equal datagrams per
sendmsg; each is its own datagram on the wire) from a plain UDP socket in the peer's
namespace, paced so the daemon's receive queue is not simply overrun by the kernel.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.netns.vxlan_helpers import vxlan_config
from tunneld.testbed import wait_for

pytestmark = [pytest.mark.netns("bridge", "ethtool"), pytest.mark.offload_default_only]

FLOOD = 1_000_000
STATIC_MAC = "02:00:00:00:99:99"
NEW_MAC = "02:00:00:00:77:77"
MAX_LEARNED = 65536  # the default: the config below does not set it

SENDER = textwrap.dedent("""\
    import os, socket, struct, sys, time
    dst, total, daemon_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    UDP_SEGMENT, RUN = 103, 64
    head = struct.pack("!II", 0x08000000, 42 << 8) + b"\\xff" * 6   # VXLAN + broadcast dst
    tail = struct.pack("!H", 0x88B5) + bytes(46)                     # local experimental type
    size = len(head) + 6 + len(tail)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, 4789))
    macs = bytearray(os.urandom(6 * total))
    macs[0::6] = bytes((b & 0xFE) | 0x02 for b in macs[0::6])       # unicast, local
    runs = [b"".join(head + macs[6 * i : 6 * i + 6] + tail for i in range(r, min(total, r + RUN)))
            for r in range(0, total, RUN)]
    cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    udp = open(f"/proc/{daemon_pid}/net/udp", "rb")  # the daemon's namespace, seen from here

    def backlog():  # bytes queued on the daemon's port 4789 (:12B5)
        udp.seek(0)
        return sum(int(f[4].split(b":")[1], 16) for f in (l.split() for l in udp.readlines()[1:])
                   if f[1].endswith(b":12B5"))

    sent, waits, t0 = 0, 0, time.monotonic()
    for n, run in enumerate(runs):
        if n % 8 == 0:
            while backlog() > 1 << 20:  # closed loop: keep the daemon busy, not overrun
                waits += 1
                time.sleep(0.001)
        s.sendmsg([run], cmsg)
        sent += len(run) // size
    print(sent, round(time.monotonic() - t0, 2), waits, flush=True)
    """)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _backlog(pid: int) -> int:
    """Bytes queued on the daemon's UDP port 4789, from its own namespace's /proc/net/udp."""
    with open(f"/proc/{pid}/net/udp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(int(r[4].split(":")[1], 16) for r in rows if r[1].endswith(":12B5"))


def _rx_processed(counters: dict) -> int:
    return counters["rx_packets"] + sum(
        v for k, v in counters["rx_dropped"].items() if k != "fdb_full"
    )


def test_a_million_random_macs_leave_the_table_bounded(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(
        vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24", fdb=[(STATIC_MAC, h2.ip)])
    )
    h2.ns.add_kernel_vxlan(
        "vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip], address="10.88.0.2/24"
    )
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    assert h1.ns.ping("10.88.0.2", count=3, interval=0.2) == (3, 3)
    before_show = daemon.show("vx0")["interfaces"]["vx0"]
    assert before_show["max_learned"] == MAX_LEARNED
    rss_before = _rss_kb(daemon.pid)

    ping = h2.ns.popen(
        ["ping", "-n", "-c", "30", "-i", "0.2", "-W", "1", "10.88.0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    cmd = [sys.executable, "-c", SENDER, h1.ip, str(FLOOD), str(daemon.pid)]
    out = h2.ns.run(cmd, timeout=90).stdout
    sent = int(out.split()[0])
    assert sent == FLOOD, out
    ping_out, _ = ping.communicate(timeout=30)

    wait_for(lambda: _backlog(daemon.pid) == 0, 20, what="the daemon drained its socket")
    rss_after = _rss_kb(daemon.pid)  # before the big `show` replies below allocate
    assert daemon.alive, daemon.stderr()
    vx = daemon.show("vx0")["interfaces"]["vx0"]
    learned = [e for e in vx["fdb"] if not e["static"]]
    statics = [e for e in vx["fdb"] if e["static"]]
    processed = _rx_processed(vx["counters"]) - _rx_processed(before_show["counters"])
    full = vx["counters"]["rx_dropped"]["fdb_full"]
    print(
        f"sent {sent} ({out.split()[1]} s, {out.split()[2]} waits), daemon processed "
        f"{processed}, learned {len(learned)}, fdb_full {full}, "
        f"RSS {rss_before} -> {rss_after} kB"
    )
    assert processed >= 0.95 * FLOOD, "the daemon must see (nearly) the whole flood"
    assert len(learned) <= MAX_LEARNED and vx["fdb_learned"] == len(learned)
    assert len(learned) >= MAX_LEARNED - 16  # it did fill up (a few kernel MACs may age)
    assert full >= processed - MAX_LEARNED - 200  # less the ping and ARP frames
    assert statics == [{"mac": STATIC_MAC, "remote": h2.ip, "static": True, "age": None}]
    assert rss_after - rss_before <= 20 * 1024, (rss_before, rss_after)
    received = int(ping_out.split(" received")[0].rsplit(",", 1)[1])
    # Legitimate traffic through the flood: 30 of 30 measured (20 ms RTT behind the flood's
    # backlog); a little slack for the shared 2-core machine (24 of 30 seen under 8 jobs).
    assert received >= 27, ping_out
    assert h1.ns.ping("10.88.0.2", count=3, interval=0.2) == (3, 3)
    assert h2.ns.ping("10.88.0.1", count=3, interval=0.2) == (3, 3)

    # A legitimate MAC first seen while the table is full (no entry ages for 300 s): not
    # learned, but its frames are delivered and the replies reach it by flooding.
    h2.ns.run(["ip", "link", "set", "vx0", "address", NEW_MAC])
    h1.ns.run(["ip", "neigh", "flush", "dev", "vx0"])
    assert h2.ns.ping("10.88.0.1", count=3, interval=0.2) == (3, 3)
    assert h1.ns.ping("10.88.0.2", count=3, interval=0.2) == (3, 3)
    vx = daemon.show("vx0")["interfaces"]["vx0"]
    assert NEW_MAC not in {e["mac"] for e in vx["fdb"]} and vx["fdb_learned"] == len(learned)
    assert vx["counters"]["rx_dropped"]["fdb_full"] > full  # counted: not learned
