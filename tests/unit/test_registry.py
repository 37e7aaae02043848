"""Registries: flannel's etcd layout (config defaults, keys, lease JSON, pool) and the
static registry's reload diff. The etcd client itself is exercised against a real
etcd in tests/netns/test_overlay_etcd.py."""

from __future__ import annotations

import asyncio
import base64
import json
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest

from tunneld.registry.base import Host
from tunneld.registry.flannel import (
    choose_subnet,
    lease_value,
    parse_lease,
    parse_network_config,
    parse_subnet_key,
    subnet_key,
    wireguard_backend_data,
)
from tunneld.registry.static import StaticRegistry

# (config JSON, SubnetLen, SubnetMin, SubnetMax), defaults as flannel's CheckNetworkConfig
DEFAULTS = [
    ({"Network": "10.5.0.0/16"}, 24, "10.5.1.0", "10.5.255.0"),
    ({"Network": "10.0.0.0/8"}, 24, "10.0.1.0", "10.255.255.0"),
    ({"Network": "10.5.0.0/22"}, 24, "10.5.1.0", "10.5.3.0"),
    ({"Network": "10.5.0.0/23"}, 25, "10.5.0.128", "10.5.1.128"),
    ({"Network": "10.7.0.0/28"}, 30, "10.7.0.4", "10.7.0.12"),
    ({"Network": "10.7.0.0/28", "SubnetLen": 30}, 30, "10.7.0.4", "10.7.0.12"),
    ({"Network": "10.5.0.0/16", "SubnetLen": 20}, 20, "10.5.16.0", "10.5.240.0"),
    (
        {"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0", "SubnetMax": "10.5.20.0"},
        24,
        "10.5.10.0",
        "10.5.20.0",
    ),
]


@pytest.mark.parametrize(("doc", "length", "low", "high"), DEFAULTS)
def test_network_config_defaults_follow_flannel(doc, length, low, high) -> None:
    cfg = parse_network_config(json.dumps(doc))
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (length, low, high)
    assert cfg.backend_type == "udp"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{nope", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ({}, "Network is missing"),
        ({"Network": "banana"}, "is not an IPv4 prefix"),
        ({"Network": "fd00::/64"}, "is not an IPv4 prefix"),
        ({"Network": "10.5.0.0/29"}, "too small"),
        ({"Network": "10.5.0.0/16", "SubnetLen": 31}, "at most 30"),
        ({"Network": "10.5.0.0/16", "SubnetLen": 17}, "fewer than four subnets"),
        (
            {"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"},
            "SubnetMin 10.6.0.0 is not in Network",
        ),
        ({"Network": "10.5.0.0/16", "SubnetMax": "10.5.3.7"}, "not on a SubnetLen (/24) boundary"),
        ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.9.0", "SubnetMax": "10.5.3.0"}, "above"),
        ({"Network": "10.5.0.0/16", "Backend": "udp"}, "Backend must be a JSON object"),
        ({"Network": "10.5.0.0/16", "EnableIPv4": False}, "EnableIPv4"),
    ],
)
def test_invalid_network_configs_say_what_is_wrong(doc, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_network_config(doc if isinstance(doc, str) else json.dumps(doc))


def test_subnet_keys_round_trip_and_reject_strangers() -> None:
    net = IPv4Network("10.5.1.0/24")
    key = subnet_key("/coreos.com/network", net)
    assert key == "/coreos.com/network/subnets/10.5.1.0-24"
    assert parse_subnet_key("/coreos.com/network", key.encode()) == net
    for other in (
        "/coreos.com/network/config",
        "/coreos.com/network/subnets/10.5.1.0",
        "/coreos.com/network/subnets/10.5.1.7-24",
        "/other/subnets/10.5.1.0-24",
        "/coreos.com/network/subnets/x-24",
    ):
        assert parse_subnet_key("/coreos.com/network", other) is None, other


def test_lease_values_are_flannels_json() -> None:
    net = IPv4Network("10.5.1.0/24")
    value = lease_value("192.168.77.1", "udp", {})
    assert json.loads(value) == {
        "PublicIP": "192.168.77.1",
        "BackendType": "udp",
        "BackendData": {},
    }
    assert parse_lease(net, value) == Host(net, "192.168.77.1", "udp")
    # what flannel's own udp backend writes (no BackendData)
    assert parse_lease(net, b'{"PublicIP":"10.0.0.9","BackendType":"udp"}').public_ip == "10.0.0.9"
    key = base64.b64encode(bytes(range(32))).decode()
    wg = parse_lease(
        net,
        json.dumps(
            {
                "PublicIP": "10.0.0.9",
                "BackendType": "wireguard",
                "BackendData": {"PublicKey": key, "Port": 51821},
            }
        ),
    )
    assert (wg.backend_type, wg.public_key, wg.port) == ("wireguard", bytes(range(32)), 51821)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"PublicIP": "banana"}',
        b'{"PublicIP": "fd00::1"}',
        b"{}",
        b'{"PublicIP": "10.0.0.1", "BackendType": "wireguard", "BackendData": {"PublicKey": "xx"}}',
        b'{"PublicIP": "10.0.0.1", "BackendData": 7}',
        b"\xff\xfe",
    ],
)
def test_corrupt_leases_raise_value_error(raw) -> None:
    with pytest.raises(ValueError):
        parse_lease(IPv4Network("10.5.1.0/24"), raw)


def test_pool_choice_skips_taken_and_reports_exhaustion() -> None:
    cfg = parse_network_config('{"Network": "10.7.0.0/28", "SubnetLen": 30}')
    assert cfg.pool_size() == 3
    taken = {IPv4Network("10.7.0.4/30"), IPv4Network("10.7.0.12/30")}
    assert choose_subnet(cfg, taken, lambda free: free[0]) == IPv4Network("10.7.0.8/30")
    assert choose_subnet(cfg, taken | {IPv4Network("10.7.0.8/30")}, lambda f: f[0]) is None
    assert cfg.in_pool(IPv4Network("10.7.0.8/30")) and not cfg.in_pool(IPv4Network("10.7.0.0/30"))
    big = parse_network_config('{"Network": "10.0.0.0/8", "SubnetLen": 30}')
    assert len(big.free_subnets(set())) == 100  # bounded scan, like flannel
    assert big.subnet_min == IPv4Address("10.0.0.4")


def _static_cfg(*hosts: tuple[str, str]) -> SimpleNamespace:
    return SimpleNamespace(
        subnet=IPv4Network("10.5.1.0/24"),
        network=IPv4Network("10.5.0.0/16"),
        subnet_len=24,
        encryption="none",
        listen_port=51820,
        hosts=tuple(
            SimpleNamespace(subnet=IPv4Network(s), public_ip=IPv4Address(ip), public_key=None)
            for s, ip in hosts
        ),
    )


def test_static_registry_reports_additions_and_removals() -> None:
    changes: list[tuple[list[str], list[str]]] = []
    reg = StaticRegistry(
        _static_cfg(("10.5.2.0/24", "192.168.77.2")),
        lambda a, r: changes.append(([str(h.subnet) for h in a], [str(h.subnet) for h in r])),
    )
    asyncio.run(reg.start())
    assert changes == [(["10.5.2.0/24"], [])]
    assert reg.status() == {"kind": "static", "connected": True, "lease_expiry": None}
    assert reg.reload(_static_cfg(("10.5.3.0/24", "192.168.77.3"), ("10.5.2.0/24", "192.168.77.2")))
    assert changes[-1] == (["10.5.3.0/24"], [])
    assert reg.reload(_static_cfg(("10.5.3.0/24", "192.168.77.9")))  # moved and removed
    added, removed = changes[-1]
    assert (added, sorted(removed)) == (["10.5.3.0/24"], ["10.5.2.0/24", "10.5.3.0/24"])
    assert [h.public_ip for h in reg.hosts.values()] == ["192.168.77.9"]
    moved = _static_cfg()
    moved.subnet = IPv4Network("10.5.9.0/24")
    assert reg.reload(moved) is False  # a new own subnet needs a rebuild


# --- flannel's wireguard backend: lease BackendData {"PublicKey", "Port"} -------------------
# flannel pkg/backend/wireguard: wireguard_network.go `wireguardLeaseAttrs{PublicKey string;
# Port uint16}`, marshalled by wireguard.go newSubnetAttrs into LeaseAttrs.BackendData; a
# reader falls back to its own listen port when Port is 0 or missing (older flannel).
WG_KEY = bytes(range(1, 33))
WG_KEY_B64 = base64.b64encode(WG_KEY).decode()

WG_LEASES = [  # (BackendData as JSON, public key, port) - one table for encode and decode
    ({"PublicKey": WG_KEY_B64, "Port": 51820}, WG_KEY, 51820),
    ({"PublicKey": WG_KEY_B64, "Port": 1}, WG_KEY, 1),
    ({"PublicKey": WG_KEY_B64, "Port": 65535}, WG_KEY, 65535),
]


@pytest.mark.parametrize(("data", "key", "port"), WG_LEASES)
def test_wireguard_lease_encode_and_decode(data, key, port) -> None:
    assert wireguard_backend_data(key, port) == data
    value = lease_value("192.168.77.1", "wireguard", wireguard_backend_data(key, port))
    doc = json.loads(value)
    assert doc == {"PublicIP": "192.168.77.1", "BackendType": "wireguard", "BackendData": data}
    assert list(doc["BackendData"]) == ["PublicKey", "Port"]  # Go's field order
    host = parse_lease(IPv4Network("10.6.1.0/24"), value)
    assert host == Host(IPv4Network("10.6.1.0/24"), "192.168.77.1", "wireguard", key, port)


def test_wireguard_lease_as_flannel_writes_it() -> None:
    # Go's encoding/json of lease.LeaseAttrs: PublicIPv6 is a nil pointer -> null
    raw = (
        '{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"wireguard",'
        f'"BackendData":{{"PublicKey":"{WG_KEY_B64}","Port":51821}}}}'
    )
    host = parse_lease(IPv4Network("10.6.2.0/24"), raw)
    assert (host.public_ip, host.public_key, host.port) == ("192.168.77.2", WG_KEY, 51821)


@pytest.mark.parametrize(
    "data",
    [
        {"PublicKey": WG_KEY_B64},
        {"PublicKey": WG_KEY_B64, "Port": 0},
        {"PublicKey": WG_KEY_B64, "Port": None},
    ],
)
def test_wireguard_lease_without_port_means_our_listen_port(data) -> None:
    raw = json.dumps({"PublicIP": "10.0.0.9", "BackendType": "wireguard", "BackendData": data})
    assert parse_lease(IPv4Network("10.6.1.0/24"), raw).port is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"PublicKey": ""},
        {"PublicKey": 7, "Port": 51820},
        {"PublicKey": base64.b64encode(bytes(31)).decode()},
        {"PublicKey": WG_KEY_B64[:-1] + "!"},
        {"PublicKey": WG_KEY_B64, "Port": "51820"},
        {"PublicKey": WG_KEY_B64, "Port": 65536},
        {"PublicKey": WG_KEY_B64, "Port": -1},
        {"PublicKey": WG_KEY_B64, "Port": True},
        {"PublicKey": WG_KEY_B64, "Port": 51820.5},
    ],
)
def test_corrupt_wireguard_backend_data_raises(data) -> None:
    raw = json.dumps({"PublicIP": "10.0.0.9", "BackendType": "wireguard", "BackendData": data})
    with pytest.raises(ValueError):
        parse_lease(IPv4Network("10.6.1.0/24"), raw)


@pytest.mark.parametrize(("key", "port"), [(bytes(31), 51820), (WG_KEY, 0), (WG_KEY, 70000)])
def test_wireguard_backend_data_refuses_bad_input(key, port) -> None:
    with pytest.raises(ValueError):
        wireguard_backend_data(key, port)


def _etcd_cfg(encryption: str = "wireguard") -> SimpleNamespace:
    return SimpleNamespace(
        name="ov0",
        etcd_prefix="/coreos.com/network",
        etcd_endpoints=("http://127.0.0.1:2379",),
        public_ip=IPv4Address("192.168.77.1"),
        encryption=encryption,
        network=None,
        subnet_len=None,
        subnet=None,
        port=8285,
        lease_ttl=60,
    )


def test_etcd_registry_publishes_the_transports_backend() -> None:
    from tunneld.errors import SetupError
    from tunneld.registry.etcd import EtcdRegistry

    data = wireguard_backend_data(WG_KEY, 51820)
    reg = EtcdRegistry(_etcd_cfg(), lambda a, r: None, "wireguard", data)
    lease = {"PublicIP": "192.168.77.1", "BackendType": "wireguard", "BackendData": data}
    assert json.loads(reg._lease_value()) == lease
    netcfg = parse_network_config('{"Network": "10.6.0.0/16", "Backend": {"Type": "wireguard"}}')
    reg._check_agreement("/coreos.com/network/config", netcfg)  # agrees: no error
    with pytest.raises(SetupError, match="needs 'wireguard'"):
        reg._check_agreement(
            "/coreos.com/network/config", parse_network_config('{"Network": "10.6.0.0/16"}')
        )
    plain = EtcdRegistry(_etcd_cfg("none"), lambda a, r: None)
    assert json.loads(plain._lease_value())["BackendType"] == "udp"
    with pytest.raises(SetupError, match="needs 'udp'"):
        plain._check_agreement("/coreos.com/network/config", netcfg)
