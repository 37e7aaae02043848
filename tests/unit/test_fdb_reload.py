"""FDB ageing changed by a reload (issue 9): the new ageing applies to entries already learned.

Before the fix, lowering `ageing` left every learned entry's expiry and the table's
deadline at the old value, and going from ageing 0 (never) to N left the deadline at
None, so no learned entry was ever removed until a new MAC was learned.
"""

from __future__ import annotations

import math

from tunneld.proto.fdb import Fdb

MAC1, MAC2, STATIC = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:99"


def test_lowering_ageing_moves_the_deadline_and_expires_at_the_new_value():
    fdb = Fdb(300.0)
    fdb.learn(MAC1, "192.0.2.1", 0.0)
    fdb.learn(MAC2, "192.0.2.2", 4.0)
    assert fdb.next_deadline() == 300.0
    fdb.ageing = 10.0
    assert fdb.ageing == 10.0
    assert fdb.next_deadline() == 10.0  # seen 0 + 10, not the old 300
    assert fdb.lookup(MAC1, 10.0) is None
    assert fdb.expire(10.0) == 1
    assert fdb.next_deadline() == 14.0
    assert fdb.lookup(MAC2, 13.9) == "192.0.2.2"
    assert fdb.expire(14.0) == 1 and len(fdb) == 0


def test_ageing_zero_to_n_ages_entries_learned_while_it_was_zero():
    fdb = Fdb(0.0)
    fdb.add_static(STATIC, "192.0.2.9")
    fdb.learn(MAC1, "192.0.2.1", 5.0)
    assert fdb.next_deadline() is None  # never ages
    fdb.ageing = 30.0
    assert fdb.next_deadline() == 35.0
    assert fdb.expire(35.0) == 1
    assert fdb.lookup(MAC1, 35.0) is None
    assert fdb.lookup(STATIC, 1e9) == "192.0.2.9"  # static entries never age
    assert fdb.next_deadline() is None


def test_ageing_n_to_zero_keeps_learned_entries_forever():
    fdb = Fdb(10.0)
    fdb.learn(MAC1, "192.0.2.1", 0.0)
    fdb.ageing = 0.0
    assert fdb.next_deadline() is None
    assert fdb.expire(1e6) == 0
    assert fdb.lookup(MAC1, 1e6) == "192.0.2.1"
    fdb.learn(MAC2, "192.0.2.2", 1.0)
    assert fdb.table[fdb_key(MAC2)].expires == math.inf


def test_raising_ageing_lets_entries_live_longer():
    fdb = Fdb(10.0)
    fdb.learn(MAC1, "192.0.2.1", 0.0)
    fdb.ageing = 100.0
    assert fdb.lookup(MAC1, 50.0) == "192.0.2.1"
    assert fdb.expire(50.0) == 0
    assert fdb.expire(100.0) == 1


def fdb_key(mac: str) -> int:
    from tunneld.proto.fdb import mac_key

    return mac_key(mac)
