"""FDB core: a Hypothesis state machine against a naive model, plus edge cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tunneld.proto.fdb import Fdb, canonical_remote, mac_key, mac_str

AGEING = 10.0
MACS = [bytes([0x02, 0, 0, 0, 0, i]) for i in range(1, 5)] + [b"\x00\x00\x5e\x00\x53\x01"]
REMOTES = ["192.168.77.2", "192.168.77.3", "2001:db8::4"]
macs = st.sampled_from(MACS)
remotes = st.sampled_from(REMOTES)


class FdbMachine(RuleBasedStateMachine):
    """Model: mac -> (remote, static, seen). Expired learned entries stay until expire()."""

    @initialize()
    def start(self) -> None:
        self.fdb = Fdb(AGEING)
        self.model: dict[bytes, tuple[str, bool, float]] = {}
        self.flood: tuple[str, ...] = ()
        self.now = 1000.0

    def _live(self, mac: bytes) -> str | None:
        entry = self.model.get(mac)
        if entry is None:
            return None
        remote, static, seen = entry
        return remote if static or self.now < seen + AGEING else None

    @rule(mac=macs, remote=remotes)
    def learn(self, mac: bytes, remote: str) -> None:
        entry = self.model.get(mac)
        if entry is not None and entry[1]:
            expected = entry[0] == remote
        else:
            self.model[mac] = (remote, False, self.now)
            expected = True
        assert self.fdb.learn(mac, remote, self.now) is expected

    @rule(mac=macs, remote=remotes)
    def add_static(self, mac: bytes, remote: str) -> None:
        self.fdb.add_static(mac, remote)
        self.model[mac] = (remote, True, math.nan)

    @rule(mac=macs)
    def remove_static(self, mac: bytes) -> None:
        was_static = mac in self.model and self.model[mac][1]
        if was_static:
            del self.model[mac]
        assert self.fdb.remove_static(mac) is was_static

    @rule(entries=st.dictionaries(macs, remotes, max_size=4))
    def replace_static(self, entries: dict[bytes, str]) -> None:
        for mac in [m for m, e in self.model.items() if e[1] and m not in entries]:
            del self.model[mac]
        for mac, remote in entries.items():
            self.model[mac] = (remote, True, math.nan)
        self.fdb.replace_static(entries.items())

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 4.0, 9.5, 10.0, 30.0]))
    def advance_time(self, dt: float) -> None:
        self.now += dt

    @rule(mac=macs)
    def lookup(self, mac: bytes) -> None:
        assert self.fdb.lookup(mac, self.now) == self._live(mac)

    @rule()
    def expire(self) -> None:
        dead = [m for m, (_, s, seen) in self.model.items() if not s and self.now >= seen + AGEING]
        for mac in dead:
            del self.model[mac]
        assert self.fdb.expire(self.now) == len(dead)

    @rule(flood=st.lists(remotes, max_size=4))
    def set_flood(self, flood: list[str]) -> None:
        self.fdb.set_flood(flood)
        self.flood = tuple(dict.fromkeys(flood))

    @precondition(lambda self: hasattr(self, "fdb"))
    @invariant()
    def flood_matches(self) -> None:
        assert self.fdb.flood_list() == self.flood

    @precondition(lambda self: hasattr(self, "fdb"))
    @invariant()
    def static_entries_never_move_or_age(self) -> None:
        statics = {mac_key(m): e[0] for m, e in self.model.items() if e[1]}
        assert {k: e.remote for k, e in self.fdb.table.items() if e.static} == statics
        for key in statics:
            assert self.fdb.lookup_key(key, self.now + 1e9) == statics[key]

    @precondition(lambda self: hasattr(self, "fdb"))
    @invariant()
    def show_matches_model(self) -> None:
        expected = []
        for mac in sorted(self.model, key=mac_key):
            remote, static, seen = self.model[mac]
            if self._live(mac) is not None:
                age = None if static else int(self.now - seen)
                expected.append((mac_str(mac_key(mac)), remote, static, age))
        assert self.fdb.entries(self.now) == expected

    @precondition(lambda self: hasattr(self, "fdb"))
    @invariant()
    def deadline_is_never_late(self) -> None:
        expiries = [seen + AGEING for _, s, seen in self.model.values() if not s]
        deadline = self.fdb.next_deadline()
        if expiries:
            assert deadline is not None and deadline <= min(expiries)


FdbMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestFdbStateful = FdbMachine.TestCase


# -- edge cases -------------------------------------------------------------------------

MAC = "02:00:00:00:00:01"


def test_mac_key_forms_agree() -> None:
    key = 0x020000000001
    assert mac_key(MAC) == mac_key("02-00-00-00-00-01") == mac_key(bytes.fromhex("020000000001"))
    assert mac_key(key) == key and mac_str(key) == MAC
    assert mac_str(mac_key("AA:BB:CC:DD:EE:FF")) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    "bad",
    ["02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.0001", b"\x02" * 5, 1 << 48, -1, True, None],
)
def test_mac_key_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        mac_key(bad)  # type: ignore[arg-type]


def test_remotes_are_canonical_strings() -> None:
    fdb = Fdb(AGEING)
    fdb.add_static(MAC, "2001:DB8:0:0::2")
    fdb.set_flood(["192.168.77.2", "2001:db8::0002", "192.168.77.2"])
    assert fdb.lookup(MAC, 0.0) == "2001:db8::2"
    assert fdb.flood_list() == ("192.168.77.2", "2001:db8::2")
    assert canonical_remote("::ffff:192.168.77.2") == "::ffff:c0a8:4d02"  # the link maps these
    with pytest.raises(ValueError):
        fdb.add_static(MAC, "not-an-address")
    with pytest.raises(TypeError):
        fdb.set_flood([("192.168.77.2", 4789)])  # type: ignore[list-item]


def test_static_replaces_learned_and_refuses_learning() -> None:
    fdb = Fdb(AGEING)
    assert fdb.learn(MAC, "192.168.77.3", 0.0)
    fdb.add_static(MAC, "192.168.77.2")
    assert not fdb.learn(MAC, "192.168.77.3", 1.0)
    assert fdb.learn(MAC, "192.168.77.2", 1.0)  # same remote: allowed, nothing changes
    assert fdb.entries(5000.0) == [(MAC, "192.168.77.2", True, None)]
    assert fdb.expire(1e9) == 0


def test_learned_entry_moves_refreshes_and_ages() -> None:
    fdb = Fdb(AGEING)
    fdb.learn(MAC, "192.168.77.2", 0.0)
    assert fdb.next_deadline() == AGEING
    fdb.learn(MAC, "192.168.77.3", 4.0)  # moved (a VM migrated)
    assert fdb.lookup(MAC, 13.9) == "192.168.77.3"
    assert fdb.entries(7.5) == [(MAC, "192.168.77.3", False, 3)]
    assert fdb.expire(AGEING) == 0  # the early deadline is a spurious wake-up ...
    assert fdb.next_deadline() == 14.0  # ... that recomputes the real one
    assert fdb.lookup(MAC, 14.0) is None  # expired at seen + ageing, lazily
    assert len(fdb) == 1
    assert fdb.expire(14.0) == 1 and len(fdb) == 0 and fdb.next_deadline() is None


def test_ageing_zero_never_expires() -> None:
    fdb = Fdb(0)
    fdb.learn(MAC, "192.168.77.2", 0.0)
    assert fdb.lookup(MAC, 1e12) == "192.168.77.2"
    assert fdb.next_deadline() is None and fdb.expire(1e12) == 0
    with pytest.raises(ValueError):
        Fdb(-1)


def test_replace_static_diff_and_atomic_validation() -> None:
    fdb = Fdb(AGEING)
    fdb.replace_static([(MAC, "192.168.77.2"), ("02:00:00:00:00:02", "192.168.77.2")])
    fdb.learn("02:00:00:00:00:09", "192.168.77.9", 0.0)
    assert fdb.replace_static([(MAC, "192.168.77.2"), ("02:00:00:00:00:03", "192.168.77.3")]) == (
        1,
        1,
    )
    before = fdb.entries(1.0)
    for bad in (
        [(MAC, "192.168.77.2"), (MAC, "192.168.77.3")],
        [("02:00:00:00:00:04", "192.168.77.4"), ("00:00:00:00:00:00", "192.168.77.2")],
        [("02:00:00:00:00:04", "nope")],
    ):
        with pytest.raises(ValueError):
            fdb.replace_static(bad)
        assert fdb.entries(1.0) == before
    assert ("02:00:00:00:00:09", "192.168.77.9", False, 1) in before


def test_all_zeros_is_the_flood_list_not_a_static_entry() -> None:
    with pytest.raises(ValueError, match="flood"):
        Fdb(AGEING).add_static("00:00:00:00:00:00", "192.168.77.2")
