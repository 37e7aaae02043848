"""Network-namespace testbed for the netns tests, `tunneld demo` and `bench/`.

Theory of operation: a `Testbed` owns everything it creates and nothing else.
Every namespace it adds is named `<prefix>-<role>`, where the prefix is `td`
plus four random hex digits, unique per run; every device it names starts with
the same prefix. Veth pairs are created *inside* namespaces (`ip -n A link add
... peer ... netns B`), so nothing ever appears in the host's namespace. Every
process started through `Netns.popen` is tracked and, on close, terminated and
then killed by its PID. Closing deletes the namespaces (which deletes their
devices) and the temporary directory. `close()` is idempotent and runs from
`__exit__`, from `atexit` and from a SIGTERM/SIGHUP handler; it never touches
anything this run did not create.

Needs root, iproute2 and, per helper, ping, iperf3 or tcpdump. No pytest here:
the demo and the benchmarks use it too.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import threading
from typing import Any

from tunneld.testbed.common import (
    _LIVE,
    _LIVE_LOCK,
    _PREFIX_RE,
    Addrs,
    TestbedError,
    _check_ifname,
    _install_signal_handlers,
    _run,
    stop_process,
    wait_for,
)
from tunneld.testbed.daemon import TunneldProcess
from tunneld.testbed.netns import Host, Link, Netns

__all__ = [
    "Host",
    "Link",
    "Netns",
    "Testbed",
    "TestbedError",
    "TunneldProcess",
    "stop_process",
    "wait_for",
]

# --- the testbed ------------------------------------------------------------------------


class Testbed:
    """Namespaces, links and processes for one run; everything removed on close.

    `prefix` defaults to "td" + 4 random hex digits. `subnet_octet` is a value in
    20..219 derived from it, used to pick per-run underlay subnets.
    """

    __test__ = False

    def __init__(self, prefix: str | None = None) -> None:
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix {prefix!r}: 2..8 chars, [a-z][a-z0-9]*")
        self.prefix = prefix or _fresh_prefix()
        self.subnet_octet = 20 + int.from_bytes(self.prefix.encode(), "big") % 200
        self.namespaces: dict[str, Netns] = {}
        self.links: list[Link] = []
        self.hub: Netns | None = None
        self._procs: list[subprocess.Popen] = []
        self._closed = False
        self._lock = threading.RLock()
        self.tmpdir = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        with _LIVE_LOCK:
            _LIVE.append(self)
        _install_signal_handlers()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Testbed({self.prefix!r}, ns={list(self.namespaces)})"

    def _track(self, proc: subprocess.Popen) -> subprocess.Popen:
        with self._lock:
            self._procs.append(proc)
            if self._closed:
                stop_process(proc, 0)
                raise TestbedError("testbed already closed")
        return proc

    def ifname(self, suffix: str) -> str:
        """A device name carrying this run's prefix (at most 15 characters)."""
        return _check_ifname(f"{self.prefix}{suffix}")

    def add_ns(self, role: str) -> Netns:
        """Create namespace `<prefix>-<role>` with lo up."""
        if self._closed:
            raise TestbedError("testbed already closed")
        if role in self.namespaces:
            raise ValueError(f"namespace role {role!r} already exists")
        ns = Netns(self, role, f"{self.prefix}-{role}")
        _run(["ip", "netns", "add", ns.name])
        self.namespaces[role] = ns  # registered before anything else can fail
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(
        self,
        ns_a: Netns,
        ns_b: Netns,
        addr_a: Addrs = None,
        addr_b: Addrs = None,
        mtu: int = 1500,
        name_a: str | None = None,
        name_b: str | None = None,
    ) -> Link:
        """A veth pair between two namespaces (never via the host), addressed and up.

        Addresses are CIDR strings, IPv4 or IPv6, one or a list per side.
        """
        n = len(self.links)
        if_a = _check_ifname(name_a or self.ifname(f"v{n}a"))
        if_b = _check_ifname(name_b or self.ifname(f"v{n}b"))
        ns_a.ip(
            "link",
            "add",
            "name",
            if_a,
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "mtu",
            str(mtu),
            "netns",
            ns_b.name,
        )
        link = Link(ns_a, if_a, ns_b, if_b)
        self.links.append(link)
        for ns, ifname, addrs in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            ns.add_addrs(ifname, addrs)
            ns.ip("link", "set", ifname, "up")
        return link

    def add_hub(self, mtu: int = 1500) -> Netns:
        """A namespace holding one bridge: `attach` puts 3+ hosts on one L2 segment."""
        if self.hub is None:
            hub = self.add_ns("hub")
            hub.ip(
                "link",
                "add",
                "br0",
                "mtu",
                str(mtu),
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            )
            hub.ip("link", "set", "br0", "up")
            self.hub = hub
        return self.hub

    def attach(self, ns: Netns, addr: Addrs = None, mtu: int = 1500) -> Link:
        """Join `ns` to the hub's bridge by a veth; returns the Link (ns side is `ifname_b`)."""
        hub = self.add_hub(mtu)
        link = self.link(hub, ns, None, addr, mtu=mtu)
        hub.ip("link", "set", link.ifname_a, "master", "br0")
        return link

    def two_hosts(self, mtu: int = 1500) -> tuple[Host, Host]:
        """ns1 and ns2 joined by one veth: 192.168.X.1-2/24 and fdX::1-2/64 (X per run)."""
        ns1, ns2 = self.add_ns("ns1"), self.add_ns("ns2")
        hosts = [self._host(ns1, 1), self._host(ns2, 2)]
        link = self.link(
            ns1, ns2, [hosts[0].cidr, hosts[0].cidr6], [hosts[1].cidr, hosts[1].cidr6], mtu=mtu
        )
        return (self._host(ns1, 1, link.ifname_a), self._host(ns2, 2, link.ifname_b))

    def routed_hosts(self, far_mtu: int, mtu: int = 1500) -> tuple[Host, Netns, Host]:
        """ns1 - router - ns2 on two routed subnets: ns1 on 192.168.X.1/24 and fdX::1/64
        (the router .254 / ::fe), ns2 on 192.168.X+1.2/24 and fdX:1::2/64 behind a link of
        `far_mtu` (both ends), so a datagram from ns1 larger than far_mtu with DF gets ICMP
        frag-needed / Packet Too Big from the router, as on a real path. Forwarding is on in
        the router only (its own namespace's sysctls)."""
        ns1, router, ns2 = self.add_ns("ns1"), self.add_ns("router"), self.add_ns("ns2")
        x = self.subnet_octet
        near = self.link(ns1, router, [f"192.168.{x}.1/24", f"fd{x:02x}::1/64"],
                         [f"192.168.{x}.254/24", f"fd{x:02x}::fe/64"], mtu=mtu)  # fmt: skip
        far = self.link(router, ns2, [f"192.168.{x + 1}.254/24", f"fd{x:02x}:1::fe/64"],
                        [f"192.168.{x + 1}.2/24", f"fd{x:02x}:1::2/64"], mtu=far_mtu)  # fmt: skip
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            router.run(["sysctl", "-q", "-w", key])
        ns1.ip("route", "add", f"192.168.{x + 1}.0/24", "via", f"192.168.{x}.254")
        ns1.ip("-6", "route", "add", f"fd{x:02x}:1::/64", "via", f"fd{x:02x}::fe")
        ns2.ip("route", "add", f"192.168.{x}.0/24", "via", f"192.168.{x + 1}.254")
        ns2.ip("-6", "route", "add", f"fd{x:02x}::/64", "via", f"fd{x:02x}:1::fe")
        a = Host(ns1, near.ifname_a, f"192.168.{x}.1", f"fd{x:02x}::1",
                 f"192.168.{x}.1/24", f"fd{x:02x}::1/64")  # fmt: skip
        b = Host(ns2, far.ifname_b, f"192.168.{x + 1}.2", f"fd{x:02x}:1::2",
                 f"192.168.{x + 1}.2/24", f"fd{x:02x}:1::2/64")  # fmt: skip
        return a, router, b

    def hub_hosts(self, count: int = 3, mtu: int = 1500) -> list[Host]:
        """`count` namespaces ns1..nsN on one bridged segment (same addressing as two_hosts)."""
        hosts = []
        for i in range(1, count + 1):
            ns, plan = self.add_ns(f"ns{i}"), self._host(None, i)
            link = self.attach(ns, [plan.cidr, plan.cidr6], mtu=mtu)
            hosts.append(self._host(ns, i, link.ifname_b))
        return hosts

    def _host(self, ns: Any, index: int, iface: str = "") -> Host:
        ip, ip6 = f"192.168.{self.subnet_octet}.{index}", f"fd{self.subnet_octet:02x}::{index}"
        return Host(ns, iface, ip, ip6, f"{ip}/24", f"{ip6}/64")

    def close(self) -> None:
        """Stop tracked processes, delete the namespaces and the temp dir. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                stop_process(proc)
        for ns in reversed(list(self.namespaces.values())):
            _run(["ip", "netns", "del", ns.name], check=False)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        with _LIVE_LOCK, contextlib.suppress(ValueError):
            _LIVE.remove(self)

    def leftovers(self) -> list[str]:
        """Namespaces with this run's prefix that still exist (empty after close)."""
        out = _run(["ip", "netns", "list"], check=False).stdout
        return sorted(
            line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")
        )


def _fresh_prefix() -> str:
    existing = _run(["ip", "netns", "list"], check=False).stdout
    for _ in range(100):
        prefix = "td" + secrets.token_hex(2)
        if f"{prefix}-" not in existing:
            return prefix
    raise TestbedError("no free namespace prefix")
