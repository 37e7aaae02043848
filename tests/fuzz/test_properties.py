"""Hypothesis over the fuzz targets: random bytes, mutated seeds, structured documents.

The same `one(data)` invariants atheris checks (tests/fuzz/targets/), driven by Hypothesis
with a bounded profile (TUNNELD_FUZZ_EXAMPLES per test, default 150), plus structure-aware
strategies the byte fuzzer reaches only slowly: random TOML documents over the config
vocabulary, random JSON control requests and flannel documents. The GSO properties of
tests/unit/test_gso_fuzz.py are not repeated here. Regression tests for the long run's
findings are at the end.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from tests.fuzz.targets import control

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("TUNNELD_FUZZ_EXAMPLES", "150"))
bounded = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NAMES = targets.names()


@cache
def target(name: str) -> targets.One:
    return targets.make(name)


def seeds(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir())]


def test_every_target_has_seeds() -> None:
    assert set(NAMES) <= {p.name for p in CORPUS.iterdir()}
    for name in NAMES:
        assert seeds(name), name


@pytest.mark.parametrize("name", NAMES)
def test_seeds_hold_the_invariant(name: str) -> None:
    for data in seeds(name):
        target(name)(data)


@pytest.mark.parametrize("name", NAMES)
@bounded
@given(data=st.binary(max_size=1600))
def test_random_bytes(name: str, data: bytes) -> None:
    target(name)(data)


@st.composite
def mutated_seed(draw: st.DrawFn, name: str) -> bytes:
    """A seed with a few bytes replaced, a few inserted or deleted, maybe cut short."""
    raw = bytearray(draw(st.sampled_from(seeds(name))))
    for _ in range(draw(st.integers(0, 4))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            raw[at] = draw(st.integers(0, 255))
        elif op == 1:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[at : at + draw(st.integers(1, 4))]
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


@pytest.mark.parametrize("name", NAMES)
@bounded
@given(data=st.data())
def test_mutated_seeds(name: str, data: st.DataObject) -> None:
    target(name)(data.draw(mutated_seed(name)))


# --- structured: config documents ------------------------------------------------------------

KEYS = [
    "daemon",
    "interfaces",
    "control_socket",
    "log_level",
    "type",
    "vni",
    "address",
    "mtu",
    "local",
    "port",
    "learning",
    "ageing",
    "flood",
    "bridge",
    "fdb",
    "mac",
    "remote",
    "listen_port",
    "private_key",
    "private_key_file",
    "peers",
    "public_key",
    "preshared_key",
    "endpoint",
    "allowed_ips",
    "persistent_keepalive",
    "network",
    "subnet_len",
    "public_ip",
    "encryption",
    "registry",
    "subnet",
    "hosts",
    "etcd_endpoints",
    "etcd_prefix",
    "lease_ttl",
    "offload",
    "max_learned",
]
WORDS = [
    "vxlan",
    "wireguard",
    "overlay",
    "static",
    "etcd",
    "none",
    "info",
    "10.88.0.1/24",
    "192.0.2.1",
    "192.0.2.2:51820",
    "[fd00::1]:51820",
    "10.5.0.0/16",
    "10.5.1.0/24",
    "02:00:00:00:00:02",
    "00:00:00:00:00:00",
    "fe80::1%eth0",
    "/dev/null",
    "x.key",
    "http://127.0.0.1:2379",
    "A" * 43 + "=",
    "",
    "vx0",
    "br0",
]

scalars = (
    st.sampled_from(WORDS)
    | st.text(max_size=12)
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([0, 1, 42, 1420, 4789, 65535, 65536, 16777216, -1])
    | st.booleans()
    | st.floats(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v) if not isinstance(v, float) or v == v and abs(v) != float("inf") else "0"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


interface = st.fixed_dictionaries(
    {"type": st.sampled_from(["vxlan", "wireguard", "overlay"]) | st.text(max_size=4)},
    optional={k: values for k in KEYS[4:] if k != "type"},
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": st.dictionaries(
            st.sampled_from(KEYS[2:4] + ["metrics_listen", "user"]), values, max_size=3
        ),
        "interfaces": st.dictionaries(
            st.sampled_from(["vx0", "wg0", "flannel0", "x"]) | st.text(max_size=16),
            interface,
            max_size=3,
        ),
    },
)


def toml_document(doc: dict[str, object]) -> str:
    lines = []
    for table, body in doc.items():
        if table == "interfaces":
            for name, iface in body.items():  # type: ignore[attr-defined]
                lines.append(f"[interfaces.{json.dumps(name)}]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in iface.items()]
        else:
            lines.append(f"[{table}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n"


@bounded
@given(doc=documents)
def test_random_config_documents_load_or_raise_config_error(
    doc: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = str(tmp_path_factory.getbasetemp() / "site.toml")
    control.check_config_text(toml_document(doc), path)


# --- structured: control requests and flannel JSON ---------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["show", "ping", "vx0", "wg0"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@bounded
@given(
    request=st.dictionaries(
        st.sampled_from(["cmd", "iface", "version"]) | st.text(max_size=5), json_values, max_size=4
    )
)
def test_random_control_requests(request: dict[str, object]) -> None:
    target("control_request")(json.dumps(request).encode())


@bounded
@given(
    kind=st.sampled_from([b"\0", b"\x01"]),
    doc=st.dictionaries(
        st.sampled_from(
            [
                "Network",
                "SubnetLen",
                "SubnetMin",
                "SubnetMax",
                "Backend",
                "Type",
                "EnableIPv4",
                "PublicIP",
                "BackendType",
                "BackendData",
                "PublicKey",
                "Port",
            ]
        ),
        json_values
        | st.sampled_from(
            ["10.5.0.0/16", "10.5.1.0", "192.0.2.2", "wireguard", "A" * 43 + "=", 24, 30, 0, 65535]
        ),
        max_size=6,
    ),
)
def test_random_flannel_documents(kind: bytes, doc: dict[str, object]) -> None:
    target("flannel_lease")(kind + json.dumps(doc).encode())


# --- regressions: what the fuzzers found -------------------------------------------------------

DEEP = b"[" * 100_000  # json's C scanner recurses per level: RecursionError, not ValueError


@pytest.mark.parametrize("kind", [b"\0", b"\x01"], ids=["network_config", "lease"])
def test_deeply_nested_flannel_json_is_a_value_error(kind: bytes) -> None:
    """A lease or network config nested deeper than the recursion limit raised
    RecursionError out of parse_lease/parse_network_config (the etcd watch callback)."""
    target("flannel_lease")(kind + DEEP)


def test_deeply_nested_control_request_is_a_bad_request() -> None:
    """A 60,000-deep JSON request was answered "internal error" with a logged traceback."""
    target("control_request")(b"[" * 60_000)


def test_a_cloned_interface_answers_every_seed_as_a_fresh_one() -> None:
    """wg_batch starts over from clones of a pristine B (targets/wg.clone) rather than new
    handshakes: a clone must take each seed exactly as a freshly built B does."""
    from tests.fuzz.targets.wg import A_ADDR, NOW, build_world, clone

    world, delivered = build_world(), 0
    for name, seed in world.seeds.items():
        fresh, copied = build_world().b, clone(world.b)
        outs = []
        for iface in (fresh, copied):
            out = memoryview(bytearray(4096))
            n = iface.receive(memoryview(bytearray(seed)), A_ADDR, NOW, out)
            outs.append((n, bytes(out[: max(n, 0)]), list(iface.rx_dropped),
                         [type(x) for x in iface.take_actions(NOW, NOW)]))  # fmt: skip
        assert outs[0] == outs[1], name
        delivered += outs[1][0] > 0
    assert delivered >= 4  # the transport seeds authenticate at the clone too
