"""etcd registry reliability (issue 9): which errors are retried, a bounded log of bad
leases, routes kept to the network's pool, and watch events handed to the loop.

The real etcd versions of these are in tests/runtime/test_etcd_registry.py."""

from __future__ import annotations

import asyncio
import json
import threading
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
import requests
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
    PreconditionFailedError,
    WatchTimedOut,
)

from tunneld.registry import etcd as etcd_mod
from tunneld.registry.etcd import (
    BAD_LEASE_LOG,
    EtcdRegistry,
    _BadLeaseLog,
    _Transient,
    is_transient,
)
from tunneld.registry.flannel import parse_network_config

PREFIX = "/coreos.com/network"


def _cfg() -> SimpleNamespace:
    return SimpleNamespace(name="ov0", etcd_prefix=PREFIX, etcd_endpoints=("http://127.0.0.1:1",),
                           public_ip=IPv4Address("192.168.77.1"), encryption="none", network=None,
                           subnet_len=None, subnet=None, port=8285, lease_ttl=60)  # fmt: skip


def _lease(ip: str) -> bytes:
    return json.dumps({"PublicIP": ip, "BackendType": "udp", "BackendData": None}).encode()


def _kv(subnet: str, value: bytes, rev: int = 1) -> dict:
    key = f"{PREFIX}/subnets/{subnet.replace('/', '-')}".encode()
    return {"key": key, "value": value, "mod_revision": rev}


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionFailedError("down"),
        ConnectionTimeoutError("slow"),
        InternalServerError("x"),
        WatchTimedOut(),
        Etcd3Exception("body", "Bad Gateway"),
        Etcd3Exception("", "Service Unavailable"),
        requests.exceptions.ConnectionError(),
        requests.exceptions.ReadTimeout(),
        _Transient("lost a race"),
    ],  # fmt: skip
    ids=lambda e: type(e).__name__,
)
def test_connection_timeout_and_5xx_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        KeyError("revision"),
        ValueError("bad json"),
        TypeError("bug"),
        AttributeError("bug"),
        PreconditionFailedError("x"),
        Etcd3Exception("", "Bad Request"),
        Etcd3Exception("", "Not Found"),
        Etcd3Exception("weird"),
        requests.exceptions.InvalidURL(),
    ],  # fmt: skip
    ids=lambda e: f"{type(e).__name__}-{e.args[-1] if e.args else ''}",
)
def test_bugs_and_refusals_are_not_transient(exc):
    assert not is_transient(exc)


class _FakeEtcd:
    endpoint = "http://127.0.0.1:1"

    def fail_over(self) -> None:
        pass


def test_acquire_retries_transient_errors_and_raises_a_bug_at_once(monkeypatch):
    monkeypatch.setattr(etcd_mod, "BACKOFF_MIN", 0.001)
    monkeypatch.setattr(etcd_mod, "BACKOFF_MAX", 0.001)
    reg = EtcdRegistry(_cfg(), lambda a, r: None)
    calls: list[int] = []

    def flaky(etcd):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionFailedError("down")
        return 7, []

    monkeypatch.setattr(reg, "_acquire", flaky)
    assert reg._acquire_with_retry(_FakeEtcd()) == (7, [])
    assert len(calls) == 3

    def buggy(etcd):
        calls.append(1)
        raise KeyError("header")

    calls.clear()
    monkeypatch.setattr(reg, "_acquire", buggy)
    with pytest.raises(KeyError):
        reg._acquire_with_retry(_FakeEtcd())
    assert len(calls) == 1, "a bug is not retried"


def test_a_bug_while_serving_stops_the_registry_instead_of_retrying_forever(monkeypatch):
    reg = EtcdRegistry(_cfg(), lambda a, r: None)
    reg.connected = True
    probes: list[int] = []

    class Broken(_FakeEtcd):
        def raft_term(self) -> int:
            probes.append(1)
            raise ValueError("unexpected answer")

    monkeypatch.setattr(etcd_mod, "PROBE", 0.001)
    monkeypatch.setattr(reg, "_start_watch", lambda etcd, rev: None)
    reg._serve_or_fail(Broken(), 1)  # returns: before the fix it looped forever
    assert probes == [1]
    assert not reg.connected and reg.status()["failed"] == "unexpected answer"


def test_bad_lease_log_is_bounded_and_logs_each_revision_once(caplog):
    reg = EtcdRegistry(_cfg(), lambda a, r: None)
    subnet = IPv4Network("10.6.9.0/24")
    for rev in range(1, 5001):
        assert reg._parse_one(subnet, _kv("10.6.9.0/24", b"not json", rev)) is None
    assert len(reg._logged_bad) <= BAD_LEASE_LOG
    caplog.clear()
    reg._parse_one(subnet, _kv("10.6.9.0/24", b"not json", 5000))  # seen: not logged again
    assert "skipped" not in caplog.text
    log = _BadLeaseLog(3)
    assert [log.first_time((b"k", r)) for r in (1, 2, 1, 3, 4, 2)] == [True, True, False, True,
                                                                        True, True]  # fmt: skip
    assert len(log) == 3


def test_routes_keep_to_the_pool_and_to_max_hosts(monkeypatch):
    reg = EtcdRegistry(_cfg(), lambda a, r: None)
    reg.netcfg = parse_network_config('{"Network": "10.6.0.0/16"}')
    kvs = [_kv("10.6.5.7/32", _lease("192.168.77.66")),  # would out-match 10.6.5.0/24's owner
           _kv("10.6.0.0/16", _lease("192.168.77.66")),
           _kv("10.9.1.0/24", _lease("192.168.77.66")),  # another network
           _kv("10.6.5.0/24", _lease("192.168.77.5"))]  # fmt: skip
    hosts, meta = reg._parse(kvs)
    assert list(hosts) == [IPv4Network("10.6.5.0/24")]
    assert len(meta) == 4  # all keys still count as taken when choosing a free subnet
    monkeypatch.setattr(etcd_mod, "MAX_HOSTS", 10)
    many = [_kv(f"10.6.{i}.0/24", _lease(f"192.168.78.{i}")) for i in range(1, 200)]
    hosts, _ = reg._parse(many)
    assert len(hosts) == 10
    assert reg.over_limit == 189 and reg.status()["leases_over_limit"] == 189
    reg.hosts = dict(hosts)  # what the registry routes; the watch must keep to the bound too
    reg._apply_event({"type": "PUT", "kv": _kv("10.6.201.0/24", _lease("192.168.79.1"))})
    assert len(reg.hosts) == 10 and IPv4Network("10.6.201.0/24") not in reg.hosts
    assert reg.over_limit == 190
    known = next(iter(hosts))  # a known host's lease may still change at the bound
    reg._apply_event({"type": "PUT", "kv": _kv(str(known), _lease("192.168.79.2"))})
    assert reg.hosts[known].public_ip == "192.168.79.2" and reg.over_limit == 190


def test_watch_events_are_applied_on_the_loop_thread_only():
    async def scenario():
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        reg = EtcdRegistry(_cfg(), lambda added, removed: seen.append(threading.get_ident()))
        reg._loop = loop
        reg.netcfg = parse_network_config('{"Network": "10.6.0.0/16"}')
        parsed_on: list[int] = []
        real_parse = reg._parse_one
        reg._parse_one = lambda s, kv: parsed_on.append(threading.get_ident()) or real_parse(s, kv)
        event = {"type": "PUT", "kv": _kv("10.6.3.0/24", _lease("192.168.77.3"))}
        watcher = threading.Thread(target=reg._on_event, args=(event,))  # etcd3gw's thread
        watcher.start()
        watcher.join()
        untouched = (dict(reg.hosts), list(parsed_on))
        await asyncio.sleep(0)  # the loop runs what was handed over
        await asyncio.sleep(0)
        return untouched, reg.hosts, parsed_on, seen, threading.get_ident()

    (hosts_before, parsed_before), hosts, parsed_on, seen, loop_thread = asyncio.run(scenario())
    assert hosts_before == {} and parsed_before == []
    assert list(hosts) == [IPv4Network("10.6.3.0/24")]
    assert parsed_on == [loop_thread] and seen == [loop_thread]
