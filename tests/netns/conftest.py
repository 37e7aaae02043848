"""Fixtures for the network-namespace tests: a fresh Testbed per test, both offload modes.

Every test gets its own namespaces (unique `td<hex>-` prefix) and loses them at
teardown, also when it fails. Underlay addresses are 192.168.X.0/24 and
fdXX::/64 with X derived from the run's random prefix; they live only inside
this run's namespaces.

Offload modes: every test here that builds a testbed runs twice, with `offload = true`
and with `offload = false` as the default of every tunneld interface it starts (ids
`offload-on` / `offload-off`). The config helpers (vxlan_helpers, wg_helpers) write the
key; configs built elsewhere get it added to each `[interfaces.X]` table that does not
set it, when the daemon is spawned or its config rewritten. A table that sets `offload`
itself keeps its value. Tests that parametrize `offload` themselves (test_offload_*.py)
are not doubled again; DEFAULT_ONLY lists the tests that run once, with the daemon's
own default, and why. Add `@pytest.mark.offload_default_only` to a new test to do the same.
"""

from __future__ import annotations

import pwd
import re
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.netns import vxlan_helpers, wg_helpers
from tunneld.testbed import Host, Testbed
from tunneld.testbed.daemon import TunneldProcess
from tunneld.testbed.netns import Netns

OFFLOAD_MODES = [True, False]
OFFLOAD_IDS = ["offload-on", "offload-off"]

# Run once, with the default (offload = true): "file" or "file::test" -> why.
DEFAULT_ONLY = {
    "test_wireguard_go.py::test_rekey_real_timers_past_120s":
        "132 s of real REKEY_AFTER_TIME at 2 pings/s; offload changes no timer, and the "
        "shortened-rekey test (doubled) crosses rekeys under traffic in both modes",
    "test_testbed.py": "tests the testbed itself; its one tunneld start moves no data",
    "test_capabilities.py": "the daemon exits before it opens a device",
    "test_kernel_offload.py": "drives the kernel seams directly; no daemon, no config",
    "test_adversarial.py::test_replayed_handshakes_and_transport_from_the_peers_own_address":
        "replay window and TAI64N checks; the GRO path's replay handling is the doubled "
        "bad-input and datagram-size tests'",
    "test_adversarial.py::test_handshake_flood_from_a_whole_slash_24":
        "handshake messages never take the offload path; 12 s of flood",
    "test_adversarial.py::test_inner_source_outside_allowed_ips_is_dropped":
        "one allowed-source check for both receive paths (pings are single datagrams)",
    "test_adversarial.py::test_vxlan_sender_spoofing_a_static_mac":
        "the static-MAC check happens in decap, before any offload step",
    "test_adversarial.py::test_control_socket_refuses_a_non_root_user":
        "the control socket's mode; no data moves",
    "test_mtu.py": "the default (offload on) is the mode whose GSO fallback must still yield "
                   "the ICMP error; offload off is the same exception path after the fallback",
    "test_reload.py": "reload swaps control-plane state only; the data paths it keeps are "
        "the doubled suite's",
    "test_faults.py": "faults on the underlay and crashes; the offload paths have their own "
                      "integrity tests, and twice would double a 2-minute file",
    "test_soak.py": "60 s of iperf3 sampling RSS and fds; it builds its own testbed, "
                    "no fixture to double",
    "test_demo.py": "the demos run as their own processes with their own testbeds (the "
                    "daemon's default offload); no fixture to double",
    "test_dns_endpoint.py": "endpoint names are control plane (lookups, update_peer); the "
                            "datapath is the doubled wireguard suite's",
    "test_overlay_ipv6.py": "IPv6 underlay and dual-stack routing in the control plane and "
                            "router; the offload paths under it are the doubled overlay suites'",
    "test_nat.py": "nftables rules in the gateway's namespace; the datapath under them is "
                   "the doubled wireguard suite's",
}  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "offload_default_only: run once with the default offload mode (see DEFAULT_ONLY)"
    )


def _default_only(definition: pytest.Item) -> bool:
    file = definition.path.name
    return (
        definition.get_closest_marker("offload_default_only") is not None
        or file in DEFAULT_ONLY
        or f"{file}::{definition.originalname}" in DEFAULT_ONLY
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "testbed" not in names or "offload" in names or _default_only(metafunc.definition):
        return
    metafunc.parametrize("offload_default", OFFLOAD_MODES, ids=OFFLOAD_IDS, indirect=True)


@pytest.fixture(autouse=True)
def offload_default(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool | None:
    """The offload mode this test runs its daemons with (None: the daemon's own default)."""
    mode: bool | None = getattr(request, "param", None)
    if mode is None:
        return None
    monkeypatch.setattr(vxlan_helpers, "DEFAULT_OFFLOAD", mode)
    monkeypatch.setattr(wg_helpers, "DEFAULT_OFFLOAD", mode)
    spawn, rewrite = Netns.spawn_tunneld, TunneldProcess.rewrite_config

    def spawn_with_default(self: Netns, config_text: str, *args: Any, **kw: Any):
        return spawn(self, with_offload_default(config_text, mode), *args, **kw)

    def rewrite_with_default(self: TunneldProcess, config_text: str) -> None:
        rewrite(self, with_offload_default(config_text, mode))

    monkeypatch.setattr(Netns, "spawn_tunneld", spawn_with_default)
    monkeypatch.setattr(TunneldProcess, "rewrite_config", rewrite_with_default)
    return mode


def with_offload_default(text: str, offload: bool) -> str:
    """`text` with `offload = <offload>` in every [interfaces.X] table that lacks the key.

    Text that is not TOML is returned as it is (a test feeding a broken config wants it
    broken). Raises ValueError when an interface is not written as a `[interfaces.X]`
    header (a dotted key or inline table): that test would otherwise run unnoticed with
    the daemon's default."""
    try:
        interfaces = tomllib.loads(text).get("interfaces")
    except tomllib.TOMLDecodeError:
        return text
    if not isinstance(interfaces, dict):
        return text
    lines = text.splitlines(keepends=True)
    for name, table in interfaces.items():
        if not isinstance(table, dict) or "offload" in table:
            continue
        header = re.compile(rf'^\s*\[\s*interfaces\s*\.\s*("?){re.escape(name)}\1\s*\](\s*#.*)?$')
        at = next((i for i, line in enumerate(lines) if header.match(line.rstrip("\r\n"))), None)
        if at is None:
            raise ValueError(f"offload default: no [interfaces.{name}] header in:\n{text}")
        lines[at] = lines[at].rstrip("\r\n") + "\n"
        lines.insert(at + 1, f"offload = {'true' if offload else 'false'}\n")
    out = "".join(lines)
    written = tomllib.loads(out)["interfaces"]
    assert all(not isinstance(t, dict) or "offload" in t for t in written.values()), out
    return out


@pytest.fixture
def testbed(request: pytest.FixtureRequest) -> Iterator[Testbed]:
    """A Testbed, closed by a finalizer even if the test fails."""
    bed = Testbed()
    request.addfinalizer(bed.close)
    with bed:
        yield bed


@pytest.fixture
def two_hosts(testbed: Testbed) -> tuple[Host, Host]:
    """ns1 and ns2 joined by one veth: .1 and .2 of a per-run /24 (and /64)."""
    return testbed.two_hosts()


@pytest.fixture
def three_hosts(testbed: Testbed) -> list[Host]:
    """ns1, ns2, ns3 on one bridged segment (a hub namespace): .1, .2, .3."""
    return testbed.hub_hosts(3)


@pytest.fixture
def wire_hosts(testbed: Testbed) -> tuple[Host, Host, list[str]]:
    """ns1 and ns2 on a hub that puts true wire frames on its ports; returns both hosts and
    the hub's port toward each (in the hub namespace: `testbed.hub`).

    Why a hub: a veth hands a UDP GSO super-datagram (or a TSO segment) to its peer whole,
    with the checksum still CHECKSUM_PARTIAL (only the pseudo-header sum in the field), so a
    capture on either end of one veth sees 5 KB "datagrams" with wrong UDP checksums (seen
    here on Linux 6.18), whichever GRO setting the receiver has. A NIC would segment and
    checksum on transmit. The hub's ports have tx checksumming off, so the kernel segments
    and checksums every such packet in software before it leaves the hub (validate_xmit_skb),
    and the packet tap on a hub port's transmit side sees exactly what a wire would carry:
    capture there, filtered by source (the same port's receive side still sees the raw
    super-packets from its own host). The hosts keep the veth defaults (checksum and
    segmentation offload on), so tunneld's GSO sends are not refused or turned off, and get
    GRO on, so their UDP_GRO sockets really receive coalesced batches.
    """
    a, b = testbed.hub_hosts(2)
    hub = testbed.hub
    assert hub is not None
    ports = [link.ifname_a for link in testbed.links if link.ns_a is hub]
    for port in ports:
        hub.run(["ethtool", "-K", port, "tx", "off"])
    for host in (a, b):
        host.ns.run(["ethtool", "-K", host.iface, "gro", "on"])
    return a, b, ports


@pytest.fixture
def system_user() -> Iterator[pwd.struct_passwd]:
    """A system user made for this test (unique name, no home, no shell), deleted after it:
    for `[daemon] user`. Needs useradd/userdel (Debian's passwd)."""
    name = f"td{uuid.uuid4().hex[:10]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
