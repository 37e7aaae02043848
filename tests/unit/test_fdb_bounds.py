"""FDB bound (issue 9): at most `max_learned` learned entries, static ones never count,
expiry from a heap (no scan per expiry), and a VXLAN flood of random source MACs counted
as `fdb_full` while its frames are still delivered."""

from __future__ import annotations

import math
import random
import struct

from hypothesis import settings
from hypothesis.stateful import initialize, invariant, precondition, rule

from tests.unit.test_fdb import AGEING, FdbMachine, macs, remotes
from tunneld.proto.counters import Counters
from tunneld.proto.fdb import DEFAULT_MAX_LEARNED, Fdb, mac_key
from tunneld.proto.vxlan import VxlanDrop, VxlanPort, VxlanTxDrop, write_header

MAX = 3


class BoundedFdbMachine(FdbMachine):
    """The naive model of test_fdb, with a bound: a new MAC is refused while MAX learned
    entries are present and none of them is due (the table reaps due ones first)."""

    @initialize()
    def start(self) -> None:
        super().start()
        self.fdb = Fdb(AGEING, max_learned=MAX)

    def _model_learned(self) -> int:
        return sum(1 for _, s, _ in self.model.values() if not s)

    @rule(mac=macs, remote=remotes)
    def learn(self, mac: bytes, remote: str) -> None:
        entry = self.model.get(mac)
        if entry is not None and entry[1]:
            expected = entry[0] == remote
        elif entry is not None:
            self.model[mac] = (remote, False, self.now)
            expected = True
        else:
            if self._model_learned() >= MAX:
                for m, (_, s, seen) in list(self.model.items()):
                    if not s and self.now >= seen + AGEING:
                        del self.model[m]
            expected = self._model_learned() < MAX
            if expected:
                self.model[mac] = (remote, False, self.now)
        assert self.fdb.learn(mac, remote, self.now) is expected

    @precondition(lambda self: hasattr(self, "fdb"))
    @invariant()
    def learned_count_matches_and_stays_bounded(self) -> None:
        assert self.fdb.learned == self._model_learned() <= MAX


BoundedFdbMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
TestBoundedFdbStateful = BoundedFdbMachine.TestCase


def test_default_bound_is_at_most_65536_and_zero_is_unlimited():
    assert 0 < DEFAULT_MAX_LEARNED <= 65536
    assert Fdb(300.0).max_learned == DEFAULT_MAX_LEARNED
    fdb = Fdb(300.0, max_learned=0)
    for i in range(1, 2001):
        assert fdb.learn_key(i << 8, "192.0.2.1", 0.0)
    assert fdb.learned == 2000


def test_full_table_refuses_new_macs_but_refreshes_moves_and_statics_work():
    fdb = Fdb(10.0, max_learned=2)
    fdb.add_static("02:00:00:00:00:99", "192.0.2.9")  # never counts
    assert fdb.learn("02:00:00:00:00:01", "192.0.2.1", 0.0)
    assert fdb.learn("02:00:00:00:00:02", "192.0.2.1", 1.0)
    assert not fdb.learn("02:00:00:00:00:03", "192.0.2.1", 2.0)  # full
    assert fdb.lookup("02:00:00:00:00:03", 2.0) is None
    assert fdb.learn("02:00:00:00:00:01", "192.0.2.5", 3.0)  # a move is never refused
    fdb.add_static("02:00:00:00:00:98", "192.0.2.9")  # statics are never refused either
    assert fdb.learned == 2 and len(fdb) == 4
    fdb.add_static("02:00:00:00:00:02", "192.0.2.2")  # static replaces learned: a slot frees
    assert fdb.learned == 1
    assert fdb.learn("02:00:00:00:00:03", "192.0.2.1", 4.0)
    assert fdb.lookup("02:00:00:00:00:99", 1e9) == "192.0.2.9"


def test_a_full_table_reaps_due_entries_before_refusing():
    fdb = Fdb(10.0, max_learned=2)
    fdb.learn("02:00:00:00:00:01", "192.0.2.1", 0.0)
    fdb.learn("02:00:00:00:00:02", "192.0.2.1", 5.0)
    assert fdb.learn("02:00:00:00:00:03", "192.0.2.1", 10.0)  # 01 was due: reaped
    assert fdb.lookup("02:00:00:00:00:01", 10.0) is None
    assert fdb.learned == 2


def test_lowering_the_bound_evicts_nothing_and_refuses_until_below():
    fdb = Fdb(10.0, max_learned=0)
    for i in range(1, 6):
        fdb.learn_key(i << 8, "192.0.2.1", 0.0)
    fdb.max_learned = 3
    assert len(fdb) == 5 and not fdb.learn_key(99 << 8, "192.0.2.1", 1.0)
    assert fdb.expire(10.0) == 5
    assert fdb.learn_key(99 << 8, "192.0.2.1", 10.0)


class _CountingDict(dict):
    """A table that counts iterations over itself: expiry must never scan it."""

    scans = 0

    def items(self):  # type: ignore[override]
        type(self).scans += 1
        return super().items()

    def values(self):  # type: ignore[override]
        type(self).scans += 1
        return super().values()

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


def test_expiry_pops_the_heap_and_never_scans_the_table():
    fdb = Fdb(10.0, max_learned=0)
    table = _CountingDict()
    fdb.table = table
    for i in range(1, 10001):
        fdb.learn_key(i << 8, "192.0.2.1", i * 0.001)  # seen 0.001 .. 10.0
    _CountingDict.scans = 0
    removed, now = 0, 10.0
    while (deadline := fdb.next_deadline()) is not None:
        now = max(now, deadline)
        removed += fdb.expire(now)
    assert removed == 10000 and len(fdb) == 0 and fdb.learned == 0
    assert _CountingDict.scans == 0
    assert fdb.queued() == 0


def test_heap_stays_bounded_under_refresh_and_churn():
    fdb = Fdb(10.0, max_learned=100)
    rng = random.Random(7)
    now = 0.0
    for _ in range(20000):
        now += 0.01
        fdb.learn_key(rng.randrange(1, 300) << 8, "192.0.2.1", now)
        if (deadline := fdb.next_deadline()) is not None and deadline <= now:
            fdb.expire(now)
    assert fdb.learned <= 100
    assert fdb.queued() <= 2 * 100  # one item per entry, plus stale ones being popped


def test_ageing_zero_entries_have_no_heap_items():
    fdb = Fdb(0.0, max_learned=0)
    fdb.learn_key(1 << 8, "192.0.2.1", 0.0)
    assert fdb.queued() == 0 and fdb.next_deadline() is None
    assert fdb.table[1 << 8].expires == math.inf


def _frame(src_mac: int, dst: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytearray:
    buf = bytearray(8 + 14 + 28)
    write_header(buf, 0, 42)
    buf[8:14] = dst
    buf[14:20] = src_mac.to_bytes(6, "big")
    struct.pack_into("!H", buf, 20, 0x0800)
    return buf


def test_vxlan_flood_of_random_macs_counts_fdb_full_and_delivers_frames():
    fdb = Fdb(300.0, max_learned=1000)
    static = mac_key("02:00:00:00:00:99")
    fdb.add_static(static, "192.0.2.9")
    counters = Counters(VxlanDrop, VxlanTxDrop)
    port = VxlanPort(42, fdb, counters, 1500, True)
    rng = random.Random(1)
    delivered = 0
    for _ in range(5000):
        mac = (rng.getrandbits(48) & ~(1 << 40)) | (1 << 41)  # unicast, locally administered
        buf = _frame(mac)
        if port.decap(memoryview(buf), len(buf), "192.0.2.66", 1.0) > 0:
            delivered += 1
    assert delivered == 5000  # a full table stops learning, not forwarding
    assert fdb.learned == 1000 and len(fdb) == 1001
    assert counters.rx_dropped[VxlanDrop.FDB_FULL] == 4000
    assert counters.as_dict()["rx_dropped"]["fdb_full"] == 4000
    assert fdb.lookup_key(static, 1.0) == "192.0.2.9"
    spoof = _frame(static)
    assert port.decap(memoryview(spoof), len(spoof), "192.0.2.66", 1.0) == -1
    assert counters.rx_dropped[VxlanDrop.NOT_ALLOWED_SOURCE] == 1


VX = '[interfaces.vx0]\ntype = "vxlan"\nvni = 42\nlocal = "192.0.2.1"\n'


def test_config_max_learned_default_65536_zero_unlimited_and_rejections():
    import pytest

    from tunneld.config import loads
    from tunneld.errors import ConfigError

    assert loads(VX).interfaces["vx0"].max_learned == 65536
    assert loads(VX + "max_learned = 0\n").interfaces["vx0"].max_learned == 0
    assert loads(VX + "max_learned = 100\n").interfaces["vx0"].max_learned == 100
    with pytest.raises(ConfigError, match=r"interfaces\.vx0\.max_learned: -1 is out of range"):
        loads(VX + "max_learned = -1\n")
    with pytest.raises(ConfigError, match=r"interfaces\.vx0\.max_learned: expected an integer"):
        loads(VX + "max_learned = true\n")
