"""Shared bits for the VXLAN namespace tests: configs, MACs, packet senders."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tunneld.testbed import Netns, stop_process

# The `offload` key written when a config helper is not given one: None writes none (the
# daemon's default, true). conftest's `offload_default` fixture sets it per test.
DEFAULT_OFFLOAD: bool | None = None


def offload_line(offload: bool | None) -> str:
    """The `offload = ...` line for an interface table ("" for the daemon's default)."""
    value = DEFAULT_OFFLOAD if offload is None else offload
    return "" if value is None else f"offload = {'true' if value else 'false'}\n"


def vxlan_config(
    local: str,
    flood: list[str],
    address: str | list[str],
    *,
    ageing: float = 300,
    fdb: list[tuple[str, str]] = (),
    learning: bool = True,
    offload: bool | None = None,
) -> str:
    flood_list = ", ".join(f'"{r}"' for r in flood)
    addresses = ", ".join(f'"{a}"' for a in ([address] if isinstance(address, str) else address))
    static = "".join(
        f'[[interfaces.vx0.fdb]]\nmac = "{mac}"\nremote = "{remote}"\n' for mac, remote in fdb
    )
    return (
        textwrap.dedent(f"""\
        [daemon]
        log_level = "info"
        [interfaces.vx0]
        type = "vxlan"
        vni = 42
        address = [{addresses}]
        local = "{local}"
        flood = [{flood_list}]
        learning = {"true" if learning else "false"}
        ageing = {ageing}
        """)
        + offload_line(offload)
        + static
    )


def link_mac(ns: Netns, ifname: str) -> str:
    out = ns.ip("-o", "link", "show", ifname).stdout
    return out.split("link/ether ")[1].split()[0].lower()


def send_udp(ns: Netns, dst: str, dport: int, payloads_hex: list[str], sport: int = 0) -> None:
    """Send raw UDP payloads (hex) from `ns` with a fresh socket per call."""
    script = textwrap.dedent(f"""\
        import socket, sys
        s = socket.socket(socket.AF_INET6 if ":" in {dst!r} else socket.AF_INET, socket.SOCK_DGRAM)
        if {sport}: s.bind(("", {sport}))
        for line in sys.stdin:
            s.sendto(bytes.fromhex(line.strip()), ({dst!r}, {dport}))
        """)
    ns.run([sys.executable, "-c", script], input="\n".join(payloads_hex) + "\n")


def udp_flows(ns: Netns, sink_ns: Netns, dst: str, ports: range) -> None:
    """Three small UDP datagrams to each port, one inner flow per port, from one socket.

    A sink listens on every port in `sink_ns` so no ICMP port-unreachable comes
    back (it would surface as ECONNREFUSED on the sender's next sendto)."""
    sink = sink_ns.popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
        import socket, time
        socks = []
        for p in {list(ports)!r}:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(({dst!r}, p))
            socks.append(s)
        print("ready", flush=True)
        time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        ns.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""\
            import socket
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for p in {list(ports)!r}:
                for _ in range(3):
                    s.sendto(b"flow", ({dst!r}, p))
            """),
            ]
        )
    finally:
        stop_process(sink)
