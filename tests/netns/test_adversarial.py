"""Adversarial peers (issue 9): each attack is dropped and counted, legitimate traffic untouched.

Fills the gaps left by test_wireguard_bad_input.py and test_vxlan_bad_input.py (which
send malformed datagrams from an attacker's own address):

* replay of captured WireGuard handshakes and transport data *with the legitimate peer's
  source address and port* (a raw socket in the attacker's namespace), so only the replay
  window and the TAI64N check can tell them apart; tunneld must not answer the replayed
  initiation, move the endpoint or re-key;
* a handshake flood from a whole /24 of sources (an AnyIP local route in the attacker's
  namespace) at the default under-load threshold: cookie replies, a legitimate handshake
  that still completes, the daemon's RSS bounded;
* a WireGuard peer sending an inner source outside its allowed_ips;
* a VXLAN sender spoofing a MAC that is static on another VTEP;
* IP-fragmented, 65,507-byte (a 65,535-byte IP datagram), IP-oversized (reassembly past
  65,535) and truncated (UDP length beyond the packet) datagrams at both ports;
* the control socket refusing a non-root user.
The overlay-spoofing and FDB-flood cases are in the bounded-state tests (issue 9, helper 5).
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time

import pytest
from scapy.all import IP, UDP, rdpcap

from tests.netns.test_wireguard_bad_input import PORT, Target
from tests.netns.vxlan_helpers import link_mac, send_udp, vxlan_config
from tests.netns.wg_helpers import FLOOD_SCRIPT, recent, tunneld_peer, wait_ping
from tunneld.testbed import wait_for

pytestmark = pytest.mark.netns("wireguard-go", "wg", "bridge", "ethtool")

# Runs in a namespace: IPv4/UDP datagrams from stdin (one JSON object a line: src, dst,
# sport, dport, hex; optional udp_len to lie about the UDP length), written with a raw
# socket (IP_HDRINCL: any source address), fragmented at 1480 bytes when larger than 1500.
RAW_SCRIPT = textwrap.dedent("""
    import json, socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for ident, line in enumerate(sys.stdin, start=0x4000):
        d = json.loads(line)
        data = bytes.fromhex(d["hex"])
        udp_len = d.get("udp_len", 8 + len(data)) & 0xFFFF
        body = struct.pack("!HHHH", d["sport"], d["dport"], udp_len, 0) + data
        src, dst = socket.inet_aton(d["src"]), socket.inet_aton(d["dst"])
        step = len(body) if len(body) <= 1480 else 1480
        for off in range(0, len(body), step):
            chunk = body[off : off + step]
            more = 0x2000 if off + step < len(body) else 0
            head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident,
                               more | off // 8, 64, 17, 0, src, dst)
            s.sendto(head + chunk, (d["dst"], 0))
""")


def raw_send(ns, datagrams: list[dict]) -> None:
    text = "".join(json.dumps(d) + "\n" for d in datagrams)
    ns.run([sys.executable, "-c", RAW_SCRIPT], input=text, timeout=60)


def snmp(ns, table: str, field: str) -> int:
    """One counter of the namespace's /proc/net/snmp (e.g. "Ip", "ReasmFails")."""
    rows = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if ln.startswith(f"{table}:")]  # fmt: skip
    return int(dict(zip(rows[0], rows[1], strict=True))[field])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def wait_delta(read, before: dict[str, int], want: dict[str, int], what: str) -> dict[str, int]:
    """Until read() differs from `before` by exactly `want` (name -> count); returns it."""

    def delta() -> dict[str, int]:
        now = read()
        return {k: now[k] - before.get(k, 0) for k in now if now[k] != before.get(k, 0)}

    try:
        wait_for(lambda: delta() == want, 10, what=what)
    except TimeoutError:
        assert delta() == want, what
    return delta()


# --- WireGuard ---------------------------------------------------------------------------------


@pytest.fixture
def wg(testbed):
    """tunneld (ns1) and wireguard-go (ns2) with a session; every datagram of its handshake
    and first pings captured; ns3 is the attacker on the same segment."""
    t = Target(testbed)
    with t.h1.ns.capture(t.h1.iface, f"udp port {PORT}") as pcap:
        wait_ping(t.h2.ns, "10.77.0.1")
        assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    packets = [p for p in rdpcap(pcap) if IP in p and UDP in p]
    t.from_peer = [bytes(p[UDP].payload) for p in packets if p[IP].src == t.h2.ip]
    t.from_tunneld = [bytes(p[UDP].payload) for p in packets if p[IP].src == t.h1.ip]
    return t


def _as_peer(t: Target, payloads: list[bytes]) -> list[dict]:
    """Datagrams that look like the legitimate peer's: its address and port."""
    return [{"src": t.h2.ip, "dst": t.h1.ip, "sport": PORT, "dport": PORT, "hex": p.hex()}
            for p in payloads]  # fmt: skip


def test_replayed_handshakes_and_transport_from_the_peers_own_address(wg):
    t = wg
    initiation = next(m for m in t.from_peer if m[0] == 1)
    response = next(m for m in t.from_tunneld if m[0] == 2)
    transport = [m for m in t.from_peer if m[0] == 4]
    assert len(transport) >= 3, [m[0] for m in t.from_peer]
    peer_before = tunneld_peer(t.daemon, t.go_keys.public_b64)
    go_handshake = t.go.peer(t.td_keys.public_b64)["latest_handshake"]
    before = t.drops()
    with t.h1.ns.capture(t.h1.iface, f"udp and src host {t.h1.ip}") as pcap:
        raw_send(t.h3.ns, _as_peer(t, [initiation, response, *transport]))
        # the response was tunneld's own, to wireguard-go: its mac1 is keyed for the peer
        wait_delta(t.drops, before, {"stale_timestamp": 1, "bad_mac1": 1,
                                     "replay": len(transport)}, "replays counted")  # fmt: skip
    answered = [bytes(p[UDP].payload) for p in rdpcap(pcap) if UDP in p]
    assert not [m for m in answered if m[0] == 2], "tunneld answered a replayed initiation"
    peer_after = tunneld_peer(t.daemon, t.go_keys.public_b64)
    assert peer_after["latest_handshake"] == peer_before["latest_handshake"]
    assert peer_after["endpoint"] == f"{t.h2.ip}:{PORT}"
    assert t.go.peer(t.td_keys.public_b64)["latest_handshake"] == go_handshake
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    assert t.h1.ns.ping("10.77.0.2", count=3) == (3, 3)


def test_handshake_flood_from_a_whole_slash_24(testbed):
    """254 sources (AnyIP in ns3) flood initiations with valid mac1 at 1,500/s, past the
    default threshold (128 handshakes/s): tunneld answers with cookie replies, the
    legitimate peer's handshake still completes, and the daemon's memory stays put."""
    t = Target(testbed)  # default handshake_load_threshold
    net = "198.51.100"
    t.h3.ns.ip("route", "add", "local", f"{net}.0/24", "dev", "lo")
    t.h1.ns.ip("route", "add", f"{net}.0/24", "via", t.h3.ip)
    sources = [f"{net}.{i}" for i in range(1, 255)]
    rss_before = rss_kib(t.daemon.pid)
    flood = t.h3.ns.popen([sys.executable, "-c", FLOOD_SCRIPT, t.h1.ip, str(PORT),
                           t.td_keys.public.hex(), "1500", "12", *sources],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: t.drops()["cookie_required"] > 500, 10, what="tunneld under load")
        started = time.monotonic()
        wait_ping(t.h2.ns, "10.77.0.1", timeout=15)
        took = time.monotonic() - started
        assert flood.poll() is None, "the flood ended before the handshake: not under load"
    finally:
        output, _ = flood.communicate(timeout=40)
    sent, replies = map(int, output.split())
    drops = t.drops()
    print(f"/24 flood: sent {sent}, {replies} cookie replies, handshake after {took:.1f} s, "
          f"RSS {rss_before} -> {rss_kib(t.daemon.pid)} KiB, drops {drops}")  # fmt: skip
    assert sent > 5000 and replies > 1000, (sent, replies)
    assert drops["cookie_required"] >= replies
    assert recent(t.go.peer(t.td_keys.public_b64)["latest_handshake"], within=30)
    assert rss_kib(t.daemon.pid) - rss_before < 20 * 1024
    assert t.daemon.alive
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)


def test_inner_source_outside_allowed_ips_is_dropped(wg):
    """wireguard-go sends packets whose inner source (10.77.0.99) is not in the peer's
    allowed_ips (10.77.0.2/32): authenticated, decrypted, then dropped and counted."""
    t = wg
    t.h2.ns.add_addrs(t.go.name, "10.77.0.99/32")
    before = t.drops()
    out = t.h2.ns.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.77.0.99",
                       "10.77.0.1"], check=False).stdout  # fmt: skip
    assert " 0 received" in out, out
    wait_delta(t.drops, before, {"not_allowed_source": 3}, "spoofed inner sources counted")
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)
    assert tunneld_peer(t.daemon, t.go_keys.public_b64)["endpoint"] == f"{t.h2.ip}:{PORT}"


def test_wireguard_datagram_sizes(wg):
    """Fragmented (3,000 bytes), the largest (65,507: a 65,535-byte IP datagram) and
    oversized/truncated datagrams at the WireGuard port, from the attacker's address."""
    t = wg
    header = next(m for m in t.from_peer if m[0] == 4)[:8]  # a live receiver index
    forged = header + struct.pack("<Q", 1 << 40)
    attacker = {"src": t.h3.ip, "dst": t.h1.ip, "sport": 40000, "dport": PORT}
    cases = [forged + os.urandom(3000 - 16), forged + os.urandom(65507 - 16),
             b"\x01\0\0\0" + os.urandom(65503)]  # fmt: skip
    before = t.drops()
    raw_send(t.h3.ns, [{**attacker, "hex": c.hex()} for c in cases])
    wait_delta(t.drops, before, {"decrypt_failed": 2, "bad_size": 1}, "large datagrams")
    _kernel_drops_reach_nobody(t.h1.ns, t.h3.ns, attacker, t.drops)
    assert t.daemon.alive
    assert t.h2.ns.ping("10.77.0.1", count=3) == (3, 3)


def _kernel_drops_reach_nobody(ns, attacker_ns, attacker: dict, read) -> None:
    """A datagram whose fragments add up past 65,535 bytes and one whose UDP length runs
    past its end: the kernel drops both (ReasmFails, Udp InErrors); tunneld sees nothing."""
    fails, errors, before = snmp(ns, "Ip", "ReasmFails"), snmp(ns, "Udp", "InErrors"), read()
    raw_send(attacker_ns, [{**attacker, "hex": os.urandom(65628 - 8).hex()},
                           {**attacker, "hex": os.urandom(40).hex(), "udp_len": 200}])  # fmt: skip
    wait_for(lambda: snmp(ns, "Ip", "ReasmFails") > fails, 10, what="oversized reassembly")
    wait_for(lambda: snmp(ns, "Udp", "InErrors") > errors, 10, what="short UDP dropped")
    time.sleep(0.3)
    assert read() == before


# --- VXLAN -------------------------------------------------------------------------------------


@pytest.fixture
def vx(testbed):
    """tunneld (ns1) and a kernel vxlan (ns2) whose MAC is a static FDB entry; ns3 attacks."""
    h1, h2, h3 = testbed.hub_hosts(3)
    h2.ns.add_kernel_vxlan("vx0", vni=42, local=h2.ip, dev=h2.iface, flood=[h1.ip],
                           address="10.88.0.2/24")  # fmt: skip
    mac = link_mac(h2.ns, "vx0")
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24",
                                              fdb=[(mac, h2.ip)]))  # fmt: skip
    wait_for(lambda: h1.ns.ping("10.88.0.2", count=1, timeout=1)[1] == 1, 10, what="ping")
    return h1, h2, h3, daemon, mac


def _vx_drops(daemon) -> dict[str, int]:
    return daemon.show("vx0")["interfaces"]["vx0"]["counters"]["rx_dropped"]


def test_vxlan_sender_spoofing_a_static_mac(vx):
    h1, h2, h3, daemon, mac = vx
    ping = h1.ns.popen(["ping", "-n", "-c", "20", "-i", "0.1", "10.88.0.2"],
                       stdout=subprocess.PIPE, text=True)  # fmt: skip
    spoof = bytes.fromhex(mac.replace(":", ""))
    frames = []
    for i in range(50):  # ARP replies and IPv4 frames "from" the static MAC
        eth = bytes.fromhex("020000000001") + spoof
        body = (b"\x08\x06" + bytes(28)) if i % 2 else (b"\x08\x00" + bytes(46))
        frames.append((struct.pack("!II", 0x08000000, 42 << 8) + eth + body).hex())
    before = _vx_drops(daemon)
    send_udp(h3.ns, h1.ip, 4789, frames)
    wait_delta(lambda: _vx_drops(daemon), before, {"not_allowed_source": 50}, "spoofs counted")
    out, _ = ping.communicate(timeout=30)
    assert " 20 received" in out, out
    entry = next(e for e in daemon.show("vx0")["interfaces"]["vx0"]["fdb"] if e["mac"] == mac)
    assert entry == {"mac": mac, "remote": h2.ip, "static": True, "age": None}
    assert h2.ns.ping("10.88.0.1", count=3) == (3, 3)


def test_vxlan_datagram_sizes(vx):
    h1, h2, h3, daemon, _ = vx
    head = struct.pack("!II", 0x08000000, 42 << 8) + bytes.fromhex("0200000000010200000000990800")
    attacker = {"src": h3.ip, "dst": h1.ip, "sport": 40000, "dport": 4789}
    cases = [head + bytes(3000), head + bytes(65507 - len(head)), head[:8]]
    before = _vx_drops(daemon)
    raw_send(h3.ns, [{**attacker, "hex": c.hex()} for c in cases])
    wait_delta(lambda: _vx_drops(daemon), before, {"oversized": 2, "short": 1}, "sizes")
    _kernel_drops_reach_nobody(h1.ns, h3.ns, attacker, lambda: _vx_drops(daemon))
    assert daemon.alive
    assert h1.ns.ping("10.88.0.2", count=3) == (3, 3)


# --- control socket ----------------------------------------------------------------------------

NOBODY = 65534


def test_control_socket_refuses_a_non_root_user(testbed, two_hosts):
    h1, h2 = two_hosts
    daemon = h1.ns.spawn_tunneld(vxlan_config(h1.ip, [h2.ip], "10.88.0.1/24"))
    path = daemon.socket_path
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == 0
    # As in /run/tunneld (0755): the directories let anyone through, so the socket's own
    # mode is what refuses; the testbed's temp dirs are 0700, opened up for this test.
    folder = os.path.dirname(path)
    while folder != os.path.dirname(testbed.tmpdir):
        os.chmod(folder, os.stat(folder).st_mode | 0o011)
        folder = os.path.dirname(folder)
    probe = textwrap.dedent(f"""
        import os, socket
        os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect({path!r})
        except PermissionError:
            print("refused")
        else:
            s.sendall(b'{{"cmd": "show"}}\\n'); print("answered", s.recv(100))
    """)
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=15).stdout.strip() == "refused"  # fmt: skip
    cli = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                          sys.executable, "-m", "tunneld", "show", "--socket", path],
                         capture_output=True, text=True, timeout=15)  # fmt: skip
    assert cli.returncode == 1 and "permission denied" in cli.stderr, cli
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert daemon.show("vx0")["interfaces"]["vx0"]["type"] == "vxlan"  # root still served
