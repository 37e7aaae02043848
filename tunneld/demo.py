"""`tunneld demo [vxlan|wireguard|overlay|sites]`: tunneld shown working in namespaces.

The default (`tunneld demo`, `tunneld demo vxlan`) is a VXLAN tunnel between tunneld and
the Linux kernel; the other scenarios are in tunneld/demo_scenarios.py.

Builds two network namespaces joined by a veth underlay, runs tunneld (vxlan,
VNI 42) in the first and a kernel vxlan device in the second, pings across the
overlay, prints `tunneld show` and the kernel's `bridge fdb`, and removes
everything it made, also on Ctrl-C or SIGTERM. Needs root, iproute2 and ping.
Exit 0 when the pings got through, 1 otherwise, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from tunneld.testbed import Host, Testbed, TestbedError

VNI = 42
PORT = 4789
OVERLAY_A, OVERLAY_B = "10.88.0.1", "10.88.0.2"


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def indent(text: str) -> str:
    return textwrap.indent(text.rstrip("\n"), "    ") + "\n"


def _preflight(scenario: str = "vxlan") -> str | None:
    if os.geteuid() != 0:
        return "the demo creates network namespaces: run it as root (e.g. sudo tunneld demo)"
    tools = ["ip", "bridge", "ping", "ethtool", *(["nft"] if scenario == "sites" else [])]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return (
            f"missing tools: {', '.join(missing)} "
            "(apt-get install iproute2 iputils-ping ethtool nftables, or run ./tunneld.sh demo)"
        )
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (modprobe tun)"
    return None


def _tunneld_config(a: Host, b: Host) -> str:
    return textwrap.dedent(f"""\
        [daemon]
        log_level = "info"

        [interfaces.vx0]
        type = "vxlan"
        vni = {VNI}
        address = ["{OVERLAY_A}/24"]
        local = "{a.ip}"
        port = {PORT}
        learning = true
        flood = ["{b.ip}"]
    """)


def _build(bed: Testbed) -> tuple[Host, Host]:
    a, b = bed.two_hosts()
    say(
        f"namespaces {a.ns.name} (A) and {b.ns.name} (B), joined by a veth underlay: "
        f"A={a.ip} on {a.iface}, B={b.ip} on {b.iface}"
    )
    say(
        f"B: kernel vxlan device vx0, VNI {VNI}, UDP port {PORT}, overlay {OVERLAY_B}/24, "
        f"flooding to {a.ip}"
    )
    b.ns.add_kernel_vxlan(
        "vx0", VNI, local=b.ip, dev=b.iface, port=PORT, flood=[a.ip], address=f"{OVERLAY_B}/24"
    )
    return a, b


def _run(bed: Testbed, pings: int) -> int:
    a, b = _build(bed)
    say(
        f"A: starting tunneld (vxlan vx0, VNI {VNI}, overlay {OVERLAY_A}/24, learning, "
        f"flooding to {b.ip})"
    )
    daemon = a.ns.spawn_tunneld(_tunneld_config(a, b), "demo")
    say(
        f"tunneld is up (pid {daemon.pid}); pinging {OVERLAY_B} (the kernel side) from A "
        f"through tunneld: ARP goes out by flooding, then both sides learn"
    )
    sent, received = a.ns.ping(OVERLAY_B, count=pings, interval=0.3)
    print(f"    {sent} packets transmitted, {received} received", flush=True)
    back_sent, back_received = b.ns.ping(OVERLAY_A, count=2, interval=0.3)
    say(
        f"and back from the kernel side to {OVERLAY_A}: "
        f"{back_sent} transmitted, {back_received} received"
    )
    say("tunneld show:")
    sys.stdout.write(indent(daemon.show_text()))
    say("bridge fdb show dev vx0 in B (the kernel's table, with tunneld's MAC learned):")
    sys.stdout.write(indent(b.ns.run(["bridge", "fdb", "show", "dev", "vx0"]).stdout))
    say("stopping tunneld")
    code = daemon.stop(timeout=2)
    if code != 0:
        say(f"tunneld exited with {code}")
    ok = received >= max(1, pings - 1) and back_received > 0
    return 0 if ok else 1


SCENARIOS = ("vxlan", "wireguard", "overlay", "sites")


def _scenario(name: str) -> Any:
    if name == "vxlan":
        return _run
    from tunneld.demo_scenarios import SCENARIOS as RUNS  # imports this module: not at top

    return RUNS[name]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunneld demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "scenario", nargs="?", default="vxlan", choices=SCENARIOS,
        help="vxlan (default): tunneld and a kernel vxlan; wireguard: two tunneld WireGuard "
        "peers; overlay: three overlay hosts; sites: two sites joined by VXLAN over "
        "WireGuard, masquerade to an internet",
    )  # fmt: skip
    parser.add_argument("--pings", type=int, default=5, help="pings across the tunnel (5)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    problem = _preflight(args.scenario)
    if problem:
        print(f"tunneld demo: {problem}", file=sys.stderr)
        return 1
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    bed, code = None, 1
    try:
        with Testbed() as bed:
            code = _scenario(args.scenario)(bed, args.pings)
    except KeyboardInterrupt:
        print(flush=True)
        say("interrupted")
        code = 130
    except TestbedError as exc:
        print(f"tunneld demo: {exc}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if bed is not None:
        say(f"removed namespaces {bed.prefix}-* and everything in them")
    if code != 130:
        say(f"success: the {args.scenario} demo works" if code == 0 else "FAILED: see above")
    return code


if __name__ == "__main__":
    sys.exit(main())
