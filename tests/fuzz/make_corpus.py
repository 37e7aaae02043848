"""Build the seed corpora in tests/fuzz/corpus/<target>/ from the real codecs and handshakes.

    .venv/bin/python -m tests.fuzz.make_corpus      # rewrites every seed (deterministic)
    .venv/bin/python -m tests.fuzz.make_corpus --kernel-capture   # root: also kernel_* seeds
    .venv/bin/python -m tests.fuzz.make_corpus --wireguard-go-capture   # root: also wggo_*

With --kernel-capture (root, network namespaces) the VXLAN seeds also get datagrams a Linux
kernel vxlan device really sent (ARP, ICMP echo, IPv6 neighbour discovery), captured
between two namespaces of a testbed; those files are kept when the script runs again
without the option.

With --wireguard-go-capture (root) the WireGuard seeds also get the datagrams tunneld and
Debian's wireguard-go really exchanged on the underlay (both handshake roles, transport
data, keepalives and, if wireguard-go got under load, a cookie reply) as
`wg_receive/wggo_*` and, in GRO-batch records, `wg_batch/wggo_*`; kept like kernel_*.

Seeds are what the parsers meet in service: VXLAN datagrams laid out as a kernel vxlan
device sends them (scapy's Ether/IP frames behind tunneld's own header writer, the same
bytes on the wire), super-packets as a TSO/USO tun read delivers them (tests/unit/test_gso
helpers), the segments a peer's kernel puts on the wire, genuine WireGuard messages from a
two-peer handshake (targets/wg.py's world), the example configs, flannel's JSON, and the
requests `tunneld show`, `wg` and `wg set` send. Multi-mode targets get their selector byte.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tests.fuzz.targets import net, wg
from tests.unit.test_gso import Case, build, kernel_read, payload_bytes, split, super_read
from tunneld.proto.vxlan import write_header

ROOT = Path(__file__).parent / "corpus"
REPO = Path(__file__).resolve().parents[2]
STATIC = "02:00:00:00:00:02"


def vxlan_seeds() -> dict[str, bytes]:
    frames = {
        "arp_broadcast": Ether(src="02:00:00:00:00:05", dst="ff:ff:ff:ff:ff:ff")
        / ARP(psrc="10.88.0.2", pdst="10.88.0.1"),
        "icmp_echo": Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
        / IP(src="10.88.0.2", dst="10.88.0.1")
        / ICMP()
        / (b"x" * 56),
        "tcp_syn": Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
        / IP(src="10.88.0.2", dst="10.88.0.1")
        / TCP(sport=40000, dport=5201, flags="S"),
        "udp6": Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
        / IPv6(src="fd88::2", dst="fd88::1")
        / UDP(sport=5000, dport=5001)
        / b"hello",
        "icmp6_echo": Ether(src="02:00:00:00:00:05", dst="33:33:00:00:00:01")
        / IPv6(src="fe80::5", dst="ff02::1")
        / ICMPv6EchoRequest(),
        "vlan_full": Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
        / Dot1Q(vlan=7)
        / IP(src="10.88.0.2", dst="10.88.0.1")
        / UDP()
        / bytes(1450 - 28),
        "static_mac_source": Ether(src=STATIC, dst="02:00:00:00:00:01")
        / IP(src="10.88.0.2", dst="10.88.0.1")
        / ICMP(),
    }
    out = {}
    for name, frame in frames.items():
        raw = bytes(frame)
        datagram = bytearray(8 + len(raw))
        write_header(datagram, 0, net.VNI)
        datagram[8:] = raw
        out[name] = bytes(datagram)
    return out


GSO_CASES = [
    Case("tcp4", payload=3000, gso=1000, flags="PA"),
    Case("tcp4_timestamps", options=True, payload=2900, gso=1000),
    Case("tcp6_fin", v=6, payload=3000, gso=1000, flags="FA"),
    Case("udp4", proto="udp", payload=2500, gso=1000),
    Case("udp6", v=6, proto="udp", payload=2500, gso=1000),
    Case("tap_tcp4", l2=14, payload=3000, gso=1000),
    Case("tap_vlan_tcp4", l2=14, vlan=True, payload=2000, gso=1000),
    Case("tap_udp6", l2=14, v=6, proto="udp", payload=2000, gso=900),
    Case("tcp4_one_segment", payload=500, gso=1000),
    Case("tcp4_cwr", flags="AC", payload=3000, gso=1000),
]


def vxlan_link_seeds() -> dict[str, bytes]:
    datagrams = list(vxlan_seeds().values())
    same = [d for d in datagrams if len(d) == len(datagrams[1])]
    return {
        "one_each": b"\0" + net.join_records(datagrams),
        "one_each_other_source": b"\x02" + net.join_records(datagrams),
        "gro_batch": b"\x01" + net.join_records([datagrams[1]] * 4 + same),
        "gro_batch_short_last": b"\x01" + net.join_records([datagrams[1]] * 3 + [datagrams[0]]),
    }


def gso_segment_seeds() -> dict[str, bytes]:
    out = {}
    for case in GSO_CASES:
        out[case.name] = bytes([1 if case.l2 else 0]) + super_read(case)
    plain = bytes(IP(src="10.77.0.1", dst="10.77.0.2") / UDP() / b"no gso")
    out["gso_none"] = b"\0" + bytes(10) + plain
    out["max_segments_3"] = b"\x02" + super_read(Case("tcp4_4", payload=4000, gso=1000))
    return out


def gso_coalesce_seeds() -> dict[str, bytes]:
    out = {}
    for case in GSO_CASES:
        if case.vlan:
            continue
        segs = split(case, super_read(case))
        selector = (1 if case.l2 else 0) | 2 | (4 if case.proto == "udp" else 0)
        out[case.name] = bytes([selector]) + net.join_records(segs)
    a = Case("flow_a", payload=1200, gso=400)
    b = Case("flow_b", payload=1200, gso=400)
    segs_a = split(a, kernel_read(a, bytes(build(a, payload_bytes(1200, 1), sport=1))))
    segs_b = split(b, kernel_read(b, bytes(build(b, payload_bytes(1200, 2), sport=2))))
    mixed = [segs_a[0], segs_b[0], segs_a[1], segs_b[1], segs_a[2], segs_b[2]]
    out["two_flows_interleaved"] = b"\x02" + net.join_records(mixed)
    out["reordered"] = b"\x02" + net.join_records([segs_a[1], segs_a[0], segs_a[2]])
    return out


def overlay_seeds() -> dict[str, bytes]:
    pkts = {
        "routed_icmp": IP(src="10.5.2.5", dst="10.5.1.7", ttl=64) / ICMP() / (b"p" * 32),
        "no_route": IP(src="10.5.1.7", dst="10.9.0.1", ttl=64) / UDP(sport=1, dport=2) / b"x",
        "own_subnet": IP(src="10.5.1.7", dst="10.5.1.8") / TCP(flags="S"),
        "ttl_1": IP(src="10.5.2.5", dst="10.5.1.7", ttl=1) / UDP() / b"ttl",
        "options": IP(src="10.5.2.5", dst="10.5.1.7", options=b"\x01\x01\x01\x00") / UDP(),
        "fragment": IP(src="10.5.2.5", dst="10.5.1.7", flags="MF", frag=0) / UDP() / bytes(64),
        "icmp_error_inside": IP(src="10.5.1.7", dst="10.9.0.1")
        / ICMP(type=3, code=1)
        / IP(src="10.9.0.1", dst="10.5.1.7")
        / UDP(),
    }
    return {name: bytes(p) for name, p in pkts.items()}


def icmp_seeds() -> dict[str, bytes]:
    out = {}
    for i, (name, data) in enumerate(overlay_seeds().items()):
        out[name] = bytes([i & 3]) + data
    out["echo_from_host"] = b"\x01" + bytes(IP(src="192.0.2.7", dst="10.5.3.3") / ICMP())
    return out


def control_seeds() -> dict[str, bytes]:
    requests = {
        "show": {"cmd": "show", "iface": None},
        "show_one": {"cmd": "show", "iface": "vx0"},
        "show_unknown": {"cmd": "show", "iface": "nope0"},
        "ping": {"cmd": "ping"},
        "unknown_cmd": {"cmd": "reload"},
    }
    out = {name: json.dumps(r).encode() + b"\n" for name, r in requests.items()}
    out["two_lines"] = out["ping"] + out["show_one"]
    return out


def metrics_seeds() -> dict[str, bytes]:
    """What Prometheus, curl and a browser send, and a few that get errors."""
    prometheus = (
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9586\r\nUser-Agent: Prometheus/2.53.0\r\n"
        b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-"
        b"text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n"
        b"Accept-Encoding: gzip\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n"
    )
    return {
        "prometheus": prometheus,
        "curl": b"GET /metrics HTTP/1.1\r\nHost: localhost:9586\r\nUser-Agent: curl/7.88.1\r\n"
        b"Accept: */*\r\n\r\n",
        "head_root": b"HEAD / HTTP/1.0\r\n\r\n",
        "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "not_found": b"GET /favicon.ico HTTP/1.1\r\n\r\n",
        "http09": b"GET /metrics\r\n\r\n",
    }


def config_seeds() -> dict[str, bytes]:
    out = {p.stem: p.read_bytes() for p in sorted((REPO / "configs").glob("*.toml"))}
    out["minimal_vxlan"] = (
        b'[interfaces.vx0]\ntype = "vxlan"\nvni = 42\nlocal = "192.0.2.1"\n'
        b'flood = ["192.0.2.2"]\n[[interfaces.vx0.fdb]]\nmac = "02:00:00:00:00:02"\n'
        b'remote = "192.0.2.2"\n'
    )
    return out


def wg_import_seeds() -> dict[str, bytes]:
    key, pub = (
        "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
        "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
    )
    return {
        "server": (
            f"[Interface]\nPrivateKey = {key}\nListenPort = 51820\nAddress = 10.77.0.1/24, "
            f"fd77::1/64\nMTU = 1420\n# a comment\n\n[Peer]\nPublicKey = {pub}\n"
            "AllowedIPs = 10.77.0.2/32, fd77::2/128\nEndpoint = 192.0.2.2:51820\n"
            "PersistentKeepalive = 25\n"
        ).encode(),
        "client_full_tunnel": (
            f"[Interface]\nPrivateKey = {key}\nAddress = 10.77.0.2/32\nDNS = 10.77.0.1\n"
            "Table = auto\nPostUp = echo up\nFwMark = 0x1234\nSaveConfig = false\n"
            f"[Peer]\nPublicKey = {pub}\nPresharedKey = {key}\nAllowedIPs = 0.0.0.0/0, ::/0\n"
            "Endpoint = [fd00::1]:51820\n"
        ).encode(),
    }


def flannel_seeds() -> dict[str, bytes]:
    network = {
        "Network": "10.5.0.0/16",
        "SubnetLen": 24,
        "SubnetMin": "10.5.1.0",
        "SubnetMax": "10.5.20.0",
        "Backend": {"Type": "udp", "Port": 8285},
    }
    udp_lease = {"PublicIP": "192.0.2.2", "BackendType": "udp", "BackendData": {}}
    wg_lease = {
        "PublicIP": "192.0.2.3",
        "BackendType": "wireguard",
        "BackendData": {"PublicKey": "A" * 43 + "=", "Port": 51820},
    }
    return {
        "network_config": b"\0" + json.dumps(network).encode(),
        "network_minimal": b"\0" + b'{"Network": "10.6.0.0/22"}',
        "lease_udp": b"\x01" + json.dumps(udp_lease).encode(),
        "lease_wireguard": b"\x01" + json.dumps(wg_lease).encode(),
        "subnet_key": b"\x02/coreos.com/network/subnets/10.5.1.0-24",
    }


def uapi_seeds() -> dict[str, bytes]:
    key = "e8" * 32
    return {
        "get": b"get=1\n\n",
        "set_device": f"set=1\nprivate_key={key}\nlisten_port=51820\nfwmark=0\n\n".encode(),
        "set_peer": (
            f"set=1\nreplace_peers=true\npublic_key={'5a' * 32}\npreshared_key={'00' * 32}\n"
            "endpoint=192.0.2.2:51820\nendpoint=[fd00::2%eth0]:51820\n"
            "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
            "allowed_ip=10.77.0.2/32\nallowed_ip=fd77::/64\nprotocol_version=1\n\n"
        ).encode(),
        "remove_peer": f"set=1\npublic_key={'5a' * 32}\nremove=true\n\nget=1\n\n".encode(),
        "update_only": f"set=1\npublic_key={'6b' * 32}\nupdate_only=true\n\n".encode(),
    }


def wg_batch_seeds() -> dict[str, bytes]:
    m = wg.build_world().seeds
    data = [m["transport_a_to_b"], *(m[f"transport_a_to_b_{i}"] for i in range(3))]
    batches = {
        "in_order": data,
        "duplicate_inside": [data[0], data[1], data[1], data[2]],
        "reordered": [data[2], data[0], data[3], data[1]],
        "keepalive_last": [data[0], data[1], m["keepalive"]],
        "handshake_first": [m["initiation_rekey"], data[0]],
        "spoofed_inner_source": [data[0], m["transport_spoofed_source"], data[1]],
        "one": [data[3]],
    }
    return {name: net.join_records(records) for name, records in batches.items()}


def all_seeds() -> dict[str, dict[str, bytes]]:
    return {
        "vxlan_decap": vxlan_seeds(),
        "vxlan_link": vxlan_link_seeds(),
        "gso_segment": gso_segment_seeds(),
        "gso_coalesce": gso_coalesce_seeds(),
        "overlay": overlay_seeds(),
        "icmp": icmp_seeds(),
        "wg_receive": wg.build_world().seeds,
        "wg_batch": wg_batch_seeds(),
        "control_request": control_seeds(),
        "metrics_request": metrics_seeds(),
        "config": config_seeds(),
        "wg_import": wg_import_seeds(),
        "flannel_lease": flannel_seeds(),
        "wg_uapi": uapi_seeds(),
    }


def kernel_vxlan_capture(limit: int = 6) -> dict[str, bytes]:
    """VXLAN payloads two kernel vxlan devices exchange (ARP, ICMP echo, IPv6 ND/MLD)."""
    from scapy.all import rdpcap

    from tunneld.testbed import Testbed

    with Testbed() as bed:
        h1, h2 = bed.two_hosts()
        for me, other, addr in ((h1, h2, "10.88.0.1/24"), (h2, h1, "10.88.0.2/24")):
            me.ns.add_kernel_vxlan(
                "vx0",
                vni=net.VNI,
                local=me.ip,
                dev=me.iface,
                flood=[other.ip],
                address=addr,
                userspace_peer=False,
            )
        with h1.ns.capture(h1.iface, "udp port 4789") as pcap:
            h1.ns.ping("10.88.0.2", count=3)
        found: dict[str, bytes] = {}
        for packet in rdpcap(pcap):
            if UDP in packet and len(found) < limit:
                payload = bytes(packet[UDP].payload)
                found.setdefault(f"kernel_{payload[20:22].hex()}_{len(found)}", payload)
    return found


Seeds = dict[str, bytes]
WG_PORT = 51820
WG_KINDS = {1: "initiation", 2: "response", 3: "cookie", 4: "transport"}
WG_CAP = {"initiation": 2, "response": 2, "cookie": 1, "transport": 3, "keepalive": 2}


def _wg_kind(payload: bytes) -> str:
    if payload[:1] == b"\x04" and len(payload) == 32:  # header + empty AEAD: a keepalive
        return "keepalive"
    return WG_KINDS.get(payload[0], "other") if payload else "other"


def wireguard_go_capture() -> tuple[Seeds, Seeds]:
    """Datagrams tunneld (ns1) and wireguard-go (ns2) exchange on the underlay: wireguard-go
    initiates (its persistent keepalive), then tunneld, restarted without a session, does;
    a valid-mac1 initiation flood from ns1 may put wireguard-go under load (cookie replies).
    Returns (wg_receive seeds, wg_batch seeds)."""
    from scapy.all import rdpcap

    from tests.netns.wg_helpers import (
        FLOOD_SCRIPT,
        Keys,
        PeerSpec,
        WgGo,
        tunneld_wg_config,
        wait_ping,
    )
    from tunneld.testbed import Testbed

    with Testbed() as bed:
        h1, h2 = bed.two_hosts()
        td_keys, go_keys = Keys.new(), Keys.new()
        peer = PeerSpec(go_keys.public_b64, ["10.77.0.2/32"], f"{h2.ip}:{WG_PORT}")
        config = tunneld_wg_config(td_keys, ["10.77.0.1/24"], [peer], listen_port=WG_PORT)
        daemon = h1.ns.spawn_tunneld(config)
        with h1.ns.capture(h1.iface, f"udp port {WG_PORT}") as pcap:
            go = WgGo.start(h2.ns, bed.ifname("wg"), go_keys, WG_PORT, "10.77.0.2/24")
            go.set_peer(td_keys.public_b64, ["10.77.0.1/32"], f"{h1.ip}:{WG_PORT}",
                        persistent_keepalive=1)  # fmt: skip
            wait_ping(h2.ns, "10.77.0.1")
            h2.ns.ping("10.77.0.1", count=2, interval=1.0)  # time for keepalives
            daemon.stop()
            daemon.restart()  # no session now: its first ping starts a handshake
            wait_ping(h1.ns, "10.77.0.2")
            h1.ns.ping("10.77.0.2", count=2)
        with h1.ns.capture(h1.iface, f"udp and src host {h2.ip}") as flood:
            h1.ns.run([sys.executable, "-c", FLOOD_SCRIPT, h2.ip, str(WG_PORT),
                       go_keys.public.hex(), "100000", "3", h1.ip], timeout=30)  # fmt: skip
        packets = [pkt for path in (pcap, flood) for pkt in rdpcap(path)]
        sent = [(p[IP].src, bytes(p[UDP].payload)) for p in packets if IP in p and UDP in p]
    return _wg_seeds(sent, h2.ip)


def _wg_seeds(sent: list[tuple[str, bytes]], go_ip: str) -> tuple[Seeds, Seeds]:
    """At most WG_CAP[kind] datagrams of each (sender, kind), and a few batches of them."""
    single: dict[str, bytes] = {}
    count: dict[str, int] = {}
    for src, payload in sent:
        kind = _wg_kind(payload)
        name = kind if src == go_ip else f"tunneld_{kind}"
        if kind == "other" or count.get(name, 0) >= WG_CAP[kind] or payload in single.values():
            continue
        single[f"wggo_{name}_{count.get(name, 0)}"] = payload
        count[name] = count.get(name, 0) + 1
    from_go = [p for src, p in sent if src == go_ip and _wg_kind(p) != "cookie"]
    data = [p for p in from_go if _wg_kind(p) == "transport"][:6]
    handshake = [p for p in from_go if _wg_kind(p) in ("initiation", "response")][:1]
    keepalive = [p for p in from_go if _wg_kind(p) == "keepalive"][:2]
    batches = {
        "wggo_transport_run": data,
        "wggo_handshake_then_data": handshake + data[:3],
        "wggo_data_and_keepalives": data[:2] + keepalive,
        "wggo_both_directions": data[:2] + [p for s, p in sent if s != go_ip][:4],
    }
    return single, {k: net.join_records(v[:8]) for k, v in batches.items() if len(v) >= 2}


def _keep(folder: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob(pattern)} if folder.is_dir() else {}


def main() -> None:
    args = sys.argv[1:]
    seeds_by_target = all_seeds()
    if "--kernel-capture" in args:
        seeds_by_target["vxlan_decap"].update(kernel_vxlan_capture())
    else:  # keep earlier captures
        seeds_by_target["vxlan_decap"].update(_keep(ROOT / "vxlan_decap", "kernel_*"))
    if "--wireguard-go-capture" in args:
        single, batches = wireguard_go_capture()
        seeds_by_target["wg_receive"].update(single)
        seeds_by_target["wg_batch"].update(batches)
    else:
        for target in ("wg_receive", "wg_batch"):
            seeds_by_target[target].update(_keep(ROOT / target, "wggo_*"))
    for target, seeds in seeds_by_target.items():
        folder = ROOT / target
        # a finding's input stays a seed (tests/fuzz/README.md)
        seeds.update(_keep(folder, "regression-*"))
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
