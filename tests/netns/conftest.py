"""Fixtures for the network-namespace tests: a fresh Testbed per test.

Every test gets its own namespaces (unique `td<hex>-` prefix) and loses them at
teardown, also when it fails. Underlay addresses are 192.168.X.0/24 and
fdXX::/64 with X derived from the run's random prefix; they live only inside
this run's namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tunneld.testbed import Host, Testbed


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
