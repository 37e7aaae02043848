"""The etcd registry against a real etcd on 127.0.0.1 (issue 9): watch events are parsed on
the loop thread (never on etcd3gw's), the memory of logged bad lease revisions is bounded,
and subnet keys outside the network's pool never become routes.

etcd runs with a data dir in tmp_path and free loopback ports, and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest

PREFIX = "/coreos.com/network"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd(tmp_path):
    if shutil.which("etcd") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is not installed (tunneld.sh installs it)")
        pytest.skip("etcd is not installed: run ./tunneld.sh test to install it")
    client, peer = _free_port(), _free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"t={peer_url}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from etcd3gw.client import Etcd3Client

    c = Etcd3Client(host="127.0.0.1", port=client, timeout=2, api_path="/v3/")
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                c.status()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("etcd did not come up") from None
                time.sleep(0.1)
        c.put(f"{PREFIX}/config", json.dumps({"Network": "10.6.0.0/16"}))
        yield url, c
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cfg(url: str) -> SimpleNamespace:
    return SimpleNamespace(name="ov0", etcd_prefix=PREFIX, etcd_endpoints=(url,),
                           public_ip=IPv4Address("192.168.77.1"), encryption="none",
                           network=None, subnet_len=None, subnet=None, port=8285,
                           lease_ttl=60)  # fmt: skip


def _lease(ip: str) -> str:
    return json.dumps({"PublicIP": ip, "BackendType": "udp", "BackendData": None})


def test_watch_parsing_on_the_loop_bounded_bad_log_and_pool_only_routes(etcd):
    from tunneld.registry.etcd import BAD_LEASE_LOG, EtcdRegistry

    url, client = etcd

    async def scenario():
        loop_thread = threading.get_ident()
        changes: list[int] = []
        reg = EtcdRegistry(_cfg(url), lambda a, r: changes.append(threading.get_ident()))
        parsed_on: set[str] = set()
        real_parse = reg._parse_one

        def recording(subnet, kv):
            t = threading.current_thread()
            parsed_on.add("loop" if t.ident == loop_thread else t.name)
            return real_parse(subnet, kv)

        reg._parse_one = recording
        await asyncio.wait_for(reg.start(), 15)
        try:
            parsed_on.clear()  # the start-up list ran on the registry's own thread
            subnets = f"{PREFIX}/subnets/"
            await asyncio.to_thread(client.put, subnets + "10.6.7.0-24", _lease("127.0.0.7"))
            await asyncio.to_thread(client.put, subnets + "10.6.7.9-32", _lease("127.0.0.66"))
            await asyncio.to_thread(client.put, subnets + "10.9.1.0-24", _lease("127.0.0.66"))

            def flood_bad():  # every put is a new revision of a corrupt lease
                for i in range(BAD_LEASE_LOG * 2 + 50):
                    client.put(subnets + "10.6.8.0-24", f"garbage {i}")

            await asyncio.to_thread(flood_bad)
            await asyncio.to_thread(client.put, subnets + "10.6.9.0-24", _lease("127.0.0.9"))
            for _ in range(200):
                if IPv4Network("10.6.9.0/24") in reg.hosts:
                    break
                await asyncio.sleep(0.05)
            return reg, parsed_on, changes, loop_thread
        finally:
            await reg.stop()

    reg, parsed_on, changes, loop_thread = asyncio.run(scenario())
    assert sorted(map(str, reg.hosts)) == ["10.6.7.0/24", "10.6.9.0/24"]  # no /32, no 10.9
    assert parsed_on == {"loop"}, parsed_on  # never etcd3gw's watch thread
    assert changes and set(changes) == {loop_thread}
    assert 0 < len(reg._logged_bad) <= BAD_LEASE_LOG
