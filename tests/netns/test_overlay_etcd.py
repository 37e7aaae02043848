"""The overlay with the etcd registry (flannel's layout), against a real etcd.

etcd runs in its own namespace on the underlay hub, listening on its underlay
address, with a data dir in the testbed's temp dir; it is started and stopped
by PID (the testbed kills whatever is left on close). Up to four tunneld hosts
lease subnets from it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import textwrap
import time

import pytest

from tunneld.testbed import TestbedError, stop_process, wait_for

pytestmark = pytest.mark.netns("etcd", "etcdctl")

PREFIX = "/coreos.com/network"
NETWORK = "10.6.0.0/16"


class Etcd:
    """One etcd member in namespace `ns` at http://ip:2379."""

    def __init__(self, testbed, ip: str) -> None:
        self.ns = testbed.add_ns("etcd")
        testbed.attach(self.ns, f"{ip}/24")
        self.ip, self.url = ip, f"http://{ip}:2379"
        self.data = os.path.join(testbed.tmpdir, "etcd-data")
        self.log = os.path.join(testbed.tmpdir, "etcd.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self.ns.popen([
                "etcd", "--name", "td", "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "td=http://127.0.0.1:2380",
            ], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: self.ctl("endpoint", "health", check=False).returncode == 0, 10, 0.1,
                 what="etcd healthy")  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def ctl(self, *args: str, check: bool = True):
        env = dict(os.environ, ETCDCTL_API="3")
        return self.ns.run(["etcdctl", "--endpoints", self.url, *args], check=check, env=env)

    def put(self, key: str, value: str) -> None:
        self.ctl("put", key, value)

    def get(self, key: str) -> str:
        return self.ctl("get", "--print-value-only", key).stdout.strip()


def etcd_config(dev: str, host, url: str, prefix: str = PREFIX, extra: str = "") -> str:
    return (
        textwrap.dedent(f"""
        [interfaces.{dev}]
        type = "overlay"
        public_ip = "{host.ip}"
        registry = "etcd"
        etcd_endpoints = ["{url}"]
        etcd_prefix = "{prefix}"
        lease_ttl = 60
    """)
        + extra
    )


@pytest.fixture
def fleet(testbed):
    hosts = testbed.hub_hosts(4)
    etcd = Etcd(testbed, f"192.168.{testbed.subnet_octet}.100")
    etcd.start()
    etcd.put(f"{PREFIX}/config", json.dumps({"Network": NETWORK, "Backend": {"Type": "udp"}}))
    return testbed.ifname("ov"), hosts, etcd


def iface(daemon, dev: str) -> dict:
    return daemon.show()["interfaces"][dev]


def overlay_ip(subnet: str) -> str:
    return subnet.split("/")[0]


def ping_all(hosts, subnets) -> None:
    for i, h in enumerate(hosts):
        for j, subnet in enumerate(subnets):
            if i != j:
                got = h.ns.ping(overlay_ip(subnet), count=1, timeout=2)
                assert got == (1, 1), (i, j, subnet)


def spawn_failure(host, text: str, name: str) -> str:
    with pytest.raises(TestbedError) as err:
        host.ns.spawn_tunneld(text, name=name, timeout=15)
    assert "exited with 1 during startup" in str(err.value), err.value
    return str(err.value)


def test_leases_routes_join_restart_and_corrupt_lease(fleet):
    dev, hosts, etcd = fleet
    corrupt_key = f"{PREFIX}/subnets/10.6.77.0-24"
    etcd.put(corrupt_key, "{not json")
    daemons = [h.ns.spawn_tunneld(etcd_config(dev, h, etcd.url), name=f"t{i}")
               for i, h in enumerate(hosts[:3], 1)]  # fmt: skip
    subnets = [iface(d, dev)["subnet"] for d in daemons]
    assert len(set(subnets)) == 3 and all(s.endswith("/24") for s in subnets), subnets
    assert "10.6.0.0/24" not in subnets  # flannel's SubnetMin skips the first subnet
    show = iface(daemons[0], dev)
    assert show["network"] == NETWORK and show["registry"]["kind"] == "etcd"
    assert show["registry"]["connected"] is True
    assert time.time() + 30 < show["registry"]["lease_expiry"] <= time.time() + 61
    ping_all(hosts[:3], subnets)
    # the corrupt lease is skipped, logged once, and hurts no other route
    assert "10.6.77.0/24" not in [r["subnet"] for r in show["routes"]]
    assert daemons[0].stderr().count("10.6.77.0-24 skipped") == 1, daemons[0].stderr()
    # lease values are flannel's JSON
    lease = json.loads(etcd.get(f"{PREFIX}/subnets/{subnets[0].replace('/', '-')}"))
    assert lease["PublicIP"] == hosts[0].ip and lease["BackendType"] == "udp"

    # a fourth host joins: the others route to it within 5 s, without a restart
    started = time.monotonic()
    d4 = hosts[3].ns.spawn_tunneld(etcd_config(dev, hosts[3], etcd.url), name="t4")
    s4 = iface(d4, dev)["subnet"]
    for d in daemons:
        wait_for(lambda d=d: s4 in [r["subnet"] for r in iface(d, dev)["routes"]], 5, 0.1,
                 what="route to the fourth host")  # fmt: skip
    assert time.monotonic() - started < 10
    assert hosts[0].ns.ping(overlay_ip(s4), count=1, timeout=2) == (1, 1)
    assert hosts[3].ns.ping(overlay_ip(subnets[1]), count=1, timeout=2) == (1, 1)

    # a stopped host gets its subnet back when it restarts (the lease was not revoked)
    assert daemons[1].stop() == 0
    again = hosts[1].ns.spawn_tunneld(etcd_config(dev, hosts[1], etcd.url), name="t2again")
    assert iface(again, dev)["subnet"] == subnets[1]
    assert hosts[0].ns.ping(overlay_ip(subnets[1]), count=1, timeout=2) == (1, 1)


def test_pool_exhaustion_and_invalid_network_config_exit_1(fleet):
    dev, hosts, etcd = fleet
    # /28 split in /30s: SubnetMin skips 10.7.0.0/30, leaving .4, .8 and .12
    etcd.put("/tiny/config", json.dumps({"Network": "10.7.0.0/28", "SubnetLen": 30}))
    for i, last in enumerate((4, 8, 12)):
        etcd.put(f"/tiny/subnets/10.7.0.{last}-30",
                 json.dumps({"PublicIP": f"192.0.2.{i + 1}", "BackendType": "udp"}))  # fmt: skip
    text = spawn_failure(hosts[0], etcd_config(dev, hosts[0], etcd.url, "/tiny"), "full")
    assert "no free subnet" in text and "3 /30 subnets" in text, text

    etcd.put("/bad/config", json.dumps({"Network": "10.8.0.0/16", "SubnetLen": 31}))
    text = spawn_failure(hosts[0], etcd_config(dev, hosts[0], etcd.url, "/bad"), "bad")
    assert "invalid network config" in text and "SubnetLen 31" in text, text
    etcd.put("/bad2/config", "{this is not json")
    text = spawn_failure(hosts[0], etcd_config(dev, hosts[0], etcd.url, "/bad2"), "bad2")
    assert "/bad2/config: invalid network config: not valid JSON" in text, text


def test_etcd_outage_keeps_forwarding_and_watches_resume(fleet):
    dev, hosts, etcd = fleet
    d1, d2 = (h.ns.spawn_tunneld(etcd_config(dev, h, etcd.url), name=f"t{i}")
              for i, h in enumerate(hosts[:2], 1))  # fmt: skip
    s1, s2 = iface(d1, dev)["subnet"], iface(d2, dev)["subnet"]
    assert hosts[0].ns.ping(overlay_ip(s2), count=1, timeout=2) == (1, 1)

    etcd.stop()
    wait_for(lambda: iface(d1, dev)["registry"]["connected"] is False, 5, 0.1,
             what="registry disconnected")  # fmt: skip
    assert hosts[0].ns.ping(overlay_ip(s2), count=3, interval=0.1) == (3, 3)
    assert hosts[1].ns.ping(overlay_ip(s1), count=1) == (1, 1)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # a third host starts while etcd is down: it retries, and is ready only with a lease
        future = pool.submit(hosts[2].ns.spawn_tunneld,
                             etcd_config(dev, hosts[2], etcd.url), "t3", 30)  # fmt: skip
        time.sleep(1.0)
        assert not future.done()
        etcd.start()
        d3 = future.result(timeout=40)
    s3 = iface(d3, dev)["subnet"]
    for d in (d1, d2):
        wait_for(lambda d=d: s3 in [r["subnet"] for r in iface(d, dev)["routes"]], 10, 0.1,
                 what="route to the host that joined during the outage")  # fmt: skip
        wait_for(lambda d=d: iface(d, dev)["registry"]["connected"], 10, 0.1, what="reconnect")
    assert hosts[0].ns.ping(overlay_ip(s3), count=1, timeout=2) == (1, 1)
    assert hosts[2].ns.ping(overlay_ip(s2), count=1, timeout=2) == (1, 1)


def test_short_lease_is_renewed_and_a_deleted_lease_is_recreated(fleet):
    dev, hosts, etcd = fleet
    short = lambda h: etcd_config(dev, h, etcd.url).replace("lease_ttl = 60", "lease_ttl = 3")  # noqa: E731
    d1, d2 = (h.ns.spawn_tunneld(short(h), name=f"t{i}") for i, h in enumerate(hosts[:2], 1))
    s1 = iface(d1, dev)["subnet"]
    key = f"{PREFIX}/subnets/{s1.replace('/', '-')}"
    time.sleep(4.5)  # longer than the TTL: only keepalives keep the key
    assert json.loads(etcd.get(key))["PublicIP"] == hosts[0].ip
    assert iface(d1, dev)["registry"]["lease_expiry"] > time.time()
    etcd.ctl("del", key)  # as if the lease had expired
    wait_for(lambda: etcd.get(key), 5, 0.1, what="lease re-created")
    wait_for(lambda: s1 in [r["subnet"] for r in iface(d2, dev)["routes"]], 5, 0.1,
             what="route back on the other host")  # fmt: skip
    assert iface(d1, dev)["subnet"] == s1
    assert hosts[1].ns.ping(overlay_ip(s1), count=1, timeout=2) == (1, 1)
