"""Fuzz targets: one function per parser that sees outside input.

Each target module defines `make_<name>()` factories; `TARGETS` maps a target name to its
factory. A factory builds whatever state the target needs once (keys, handshakes, tables)
and returns `one(data: bytes) -> None`, which feeds one input and checks the invariant of
issue 9: the input is handled or dropped with exactly one counted reason, no exception
escapes (an AssertionError is an invariant broken; any other exception is a crash), and no
table grows past its bound. The same `one` serves atheris (tests/fuzz/atheris_main.py,
coverage-guided) and Hypothesis (tests/fuzz/test_properties.py).

Seeds for each target live in tests/fuzz/corpus/<name>/, built by make_corpus.py from the
real codecs and handshakes.
"""

from __future__ import annotations

from collections.abc import Callable

One = Callable[[bytes], None]


def _registry() -> dict[str, Callable[[], One]]:
    from tests.fuzz.targets import control, links, net, wg

    found = {
        "vxlan_decap": net.make_vxlan_decap,
        "vxlan_link": links.make_vxlan_link,
        "gso_segment": net.make_gso_segment,
        "gso_coalesce": net.make_gso_coalesce,
        "overlay": net.make_overlay,
        "icmp": net.make_icmp,
        "wg_receive": wg.make_wg_receive,
        "wg_batch": wg.make_wg_batch,
        "control_request": control.make_control_request,
        "metrics_request": control.make_metrics_request,
        "config": control.make_config,
        "wg_import": control.make_wg_import,
        "flannel_lease": control.make_flannel_lease,
    }
    uapi = control.make_uapi_or_none()
    if uapi is not None:
        found["wg_uapi"] = uapi
    return found


def names() -> list[str]:
    return list(_registry())


def make(name: str) -> One:
    return _registry()[name]()
