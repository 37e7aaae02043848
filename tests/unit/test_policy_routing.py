"""links/policy.py against FakeNetlink: where each allowed_ips route goes for `table` =
"auto" / "off" / N, the full tunnel's rules (wg-quick's add_default: `not fwmark M table M`
then `table main suppress_prefixlength 0`, per family with a /0), the mark and table chosen,
src_valid_mark, live changes of the /0 set, and a teardown that removes exactly what was
added. The same plan against a real kernel: tests/netns/test_full_tunnel.py."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_interface, ip_network

import pytest

from tunneld.config import PeerConfig, Secret, WireguardConfig
from tunneld.kernel.fakes import FakeNetlink
from tunneld.kernel.netlink import Rule
from tunneld.kernel.nft import FakeNft
from tunneld.links.policy import SRC_VALID_MARK, PolicyRouting, firewall_table, leftover_rules

V4_ALL, V6_ALL, LAN = ip_network("0.0.0.0/0"), ip_network("::/0"), ip_network("10.9.0.0/16")


def config(*nets, **kw) -> WireguardConfig:
    peers = (PeerConfig(public_key=b"\1" * 32, allowed_ips=tuple(nets)),)
    return WireguardConfig(name="wg0", private_key=Secret(b"\2" * 32), peers=peers, **kw)


def up(cfg: WireguardConfig, nl: FakeNetlink) -> PolicyRouting:
    policy = PolicyRouting.plan("wg0", nl, cfg)
    nets = [net for p in cfg.peers for net in p.allowed_ips]
    policy.add_routes("wg0", nets)
    policy.sync_rules(nets)
    return policy


def calls(nl: FakeNetlink, *names: str) -> list[tuple]:
    return [(name, *args) for name, args in nl.calls if name in names]


def test_auto_without_a_default_route_is_plain_main_table_routing():
    nl = FakeNetlink()
    policy = up(config(LAN, fwmark=7), nl)
    assert (policy.mark, policy.table, policy.show()) == (7, None, "main")
    assert calls(nl, "add_routes", "add_rule", "sysctl") == [("add_routes", "wg0", (LAN,))]


def test_auto_full_tunnel_both_families():
    nl = FakeNetlink()
    policy = up(config(V4_ALL, V6_ALL, LAN), nl)
    assert (policy.mark, policy.table, policy.show()) == (51820, 51820, 51820)
    routes = calls(nl, "add_routes")
    assert ("add_routes", "wg0", (LAN,)) in routes  # a plain prefix stays in main
    assert ("add_routes", "wg0", (V4_ALL, V6_ALL), 51820) in routes
    assert [args[0] for _, *args in calls(nl, "add_rule")] == [
        Rule(4, 51820, fwmark=51820, invert=True, priority=32765),
        Rule(4, 254, suppress_prefixlength=0, priority=32764),  # tried first
        Rule(6, 51820, fwmark=51820, invert=True, priority=32765),
        Rule(6, 254, suppress_prefixlength=0, priority=32764),
    ]
    assert str(nl.rules[0]) == "ipv4 rule pref 32765 not fwmark 0xca6c table 51820"
    assert str(nl.rules[1]) == "ipv4 rule pref 32764 table main suppress_prefixlength 0"
    assert nl.sysctls[SRC_VALID_MARK] == "1"  # wg-quick sets it for IPv4
    added = list(nl.rules)
    policy.teardown()
    assert [args[0] for _, *args in calls(nl, "remove_rule")] == [added[1], added[0],
                                                                  added[3], added[2]]  # fmt: skip
    assert nl.rules == [] and nl.sysctls[SRC_VALID_MARK] == "0"  # put back
    policy.teardown()  # idempotent
    assert len(calls(nl, "remove_rule")) == 4


def test_ipv6_only_full_tunnel_leaves_ipv4_and_the_sysctl_alone():
    nl = FakeNetlink()
    up(config(V6_ALL), nl)
    assert {r.family for r in nl.rules} == {6} and not calls(nl, "sysctl")


def test_auto_picks_the_first_empty_table_or_the_fwmark():
    nl = FakeNetlink()
    nl.tables_in_use = {51820, 51821}
    assert PolicyRouting.plan("wg0", nl, config(V4_ALL)).table == 51822
    policy = up(config(V4_ALL, fwmark=0x1234), nl)
    assert (policy.mark, policy.table) == (0x1234, 0x1234)
    assert nl.rules[0] == Rule(4, 0x1234, fwmark=0x1234, invert=True, priority=32765)


def test_numeric_table_takes_every_route_and_adds_no_rules():
    nl = FakeNetlink()
    policy = up(config(V4_ALL, LAN, table=1000), nl)
    assert (policy.mark, policy.show()) == (0, 1000)
    assert calls(nl, "add_routes") == [("add_routes", "wg0", (V4_ALL, LAN), 1000)]
    assert nl.rules == [] and not calls(nl, "sysctl")
    policy.remove_routes("wg0", [LAN])
    assert calls(nl, "remove_routes") == [("remove_routes", "wg0", (LAN,), 1000)]


def test_table_off_adds_no_routes_and_no_rules():
    nl = FakeNetlink()
    policy = up(config(V4_ALL, LAN, table="off", fwmark=5), nl)
    assert (policy.mark, policy.show()) == (5, "off")
    policy.remove_routes("wg0", [LAN])
    assert nl.calls == []


def test_no_kernel_routes_is_off():  # tunneld-wg: wg-quick does the routing
    nl = FakeNetlink()
    policy = PolicyRouting.plan("wg0", nl, config(V4_ALL), kernel_routes=False)
    assert (policy.mode, policy.mark) == ("off", 0)


def test_the_default_routes_come_and_go_live():
    nl = FakeNetlink()
    policy = up(config(V4_ALL, V6_ALL), nl)
    policy.sync_rules([V4_ALL])  # ::/0 left the peers: its rules go, IPv4's stay
    assert {r.family for r in nl.rules} == {4}
    policy.sync_rules([V4_ALL, V6_ALL])
    assert sorted(r.family for r in nl.rules) == [4, 4, 6, 6]
    policy.sync_rules([LAN])
    assert nl.rules == [] and nl.sysctls[SRC_VALID_MARK] == "0"


@pytest.mark.parametrize("start,reload,rebuild", [
    ((LAN,), (LAN, V4_ALL), True),  # a first /0: the mark must be chosen
    ((V4_ALL,), (V4_ALL, V6_ALL), False),  # the table is there: rules added live
    ((V4_ALL,), (LAN,), False),
])  # fmt: skip
def test_needs_rebuild(start, reload, rebuild):
    policy = PolicyRouting.plan("wg0", FakeNetlink(), config(*start))
    assert policy.needs_rebuild(config(*reload)) is rebuild


def test_src_valid_mark_already_on_is_not_written_nor_put_back():
    nl = FakeNetlink()
    nl.sysctls[SRC_VALID_MARK] = "1"
    up(config(V4_ALL), nl).teardown()
    assert not calls(nl, "sysctl") and nl.sysctls[SRC_VALID_MARK] == "1"


def test_two_full_tunnels_share_src_valid_mark_until_the_last_stops():
    nl = FakeNetlink()
    a = up(config(V4_ALL), nl)
    nl.tables_in_use.add(51820)
    b = PolicyRouting.plan("wg1", nl, config(V4_ALL))
    b.add_routes("wg1", [V4_ALL])
    b.sync_rules([V4_ALL])
    assert b.table == 51821
    a.teardown()
    assert nl.sysctls[SRC_VALID_MARK] == "1"
    b.teardown()
    assert nl.sysctls[SRC_VALID_MARK] == "0"


def test_full_tunnel_firewall_is_one_table_made_and_deleted_in_one_transaction_each():
    nl, nft = FakeNetlink(), FakeNft()
    policy = up(config(V4_ALL), nl)
    addrs = [ip_interface("10.78.0.1/24"), ip_interface("fd78::1/64")]
    asyncio.run(policy.install_firewall(nft, "wg0", addrs))
    (text,) = nft.applied
    assert text.startswith("table inet tunneld-wg0 {}\ndelete table inet tunneld-wg0\n")
    assert "meta l4proto udp meta mark 51820 ct mark set meta mark" in text  # save on the way out
    assert "meta l4proto udp meta mark set ct mark" in text  # restore on the way in
    assert 'iifname != "wg0" ip daddr 10.78.0.1 fib saddr type != local drop' in text
    assert "fd78::1" not in text  # no IPv6 full tunnel: its address is not wg-quick's business
    asyncio.run(policy.remove_firewall(nft))
    asyncio.run(policy.remove_firewall(nft))  # once only
    assert nft.applied[1:] == ["table inet tunneld-wg0 {}\ndelete table inet tunneld-wg0\n"]


def test_no_full_tunnel_no_nft():
    nft = FakeNft()
    policy = up(config(LAN), FakeNetlink())
    asyncio.run(policy.install_firewall(nft, "wg0", [ip_interface("10.78.0.1/24")]))
    asyncio.run(policy.remove_firewall(nft))
    assert nft.applied == []


def test_without_nft_a_warning_and_the_routing_still_done(caplog):
    class NoNft(FakeNft):
        def available(self) -> bool:
            return False

    nl, nft = FakeNetlink(), NoNft()
    policy = up(config(V4_ALL), nl)
    with caplog.at_level(logging.WARNING, "tunneld.wireguard"):
        asyncio.run(policy.install_firewall(nft, "wg0", []))
    assert nft.applied == [] and len(nl.rules) == 2
    assert any("nft not found" in r.getMessage() for r in caplog.records)


def test_firewall_table_names():
    assert firewall_table("wg0") == "tunneld-wg0"
    odd = firewall_table("wg@0")  # not an nft identifier: hashed
    assert odd.startswith("tunneld-") and "@" not in odd and len(odd) == 16


def table_rule(family: int, priority: int, table: int = 51820, mark: int = 51820) -> Rule:
    return Rule(family, table, fwmark=mark, invert=True, priority=priority)


def suppress_rule(family: int, priority: int) -> Rule:
    return Rule(family, 254, suppress_prefixlength=0, priority=priority)


MAIN = Rule(4, 254, priority=32766)


@pytest.mark.parametrize("rules,leftover", [
    ([suppress_rule(4, 32764), table_rule(4, 32765), MAIN], [1, 0]),  # a killed run's pair
    ([suppress_rule(4, 32762), table_rule(4, 32763), suppress_rule(4, 32764),
      table_rule(4, 32765), MAIN], [1, 0, 3, 2]),  # two crashes
    ([table_rule(4, 32765), MAIN], [0]),  # killed between the two adds
    ([suppress_rule(4, 32764), MAIN], []),  # another interface's, or the user's
    ([suppress_rule(4, 32760), table_rule(4, 32765)], [1]),  # not its pair: not at P - 1
    ([suppress_rule(4, 32764), table_rule(4, 32765, mark=7)], []),  # another mark
    ([suppress_rule(4, 32764), table_rule(4, 32765, table=51821)], []),  # another table
    ([None, suppress_rule(4, 32764), table_rule(4, 32765), None], [2, 1]),  # unlike a Rule
])  # fmt: skip
def test_leftover_rules_are_exactly_the_pairs_a_full_tunnel_adds(rules, leftover):
    found = leftover_rules(rules, 51820, 51820)
    assert len(found) == len(set(found)) and set(found) == {rules[i] for i in leftover}


def test_a_start_after_a_crash_removes_the_killed_runs_rules_first():
    nl = FakeNetlink()
    up(config(V4_ALL, V6_ALL), nl)
    first = list(nl.rules)  # SIGKILL: no teardown; the device and its routes went
    nl.rules.append(Rule(4, 254, suppress_prefixlength=0, priority=32766))  # the user's
    nl.calls.clear()
    policy = up(config(V4_ALL, V6_ALL), nl)
    assert [args[0] for _, *args in calls(nl, "remove_rule")] == [
        first[0], first[1], first[2], first[3]]  # fmt: skip
    assert nl.rules == [Rule(4, 254, suppress_prefixlength=0, priority=32766), *first]
    policy.teardown()
    assert nl.rules == [Rule(4, 254, suppress_prefixlength=0, priority=32766)]


def test_rules_of_a_table_in_use_are_left_alone():
    nl = FakeNetlink()
    up(config(V4_ALL, fwmark=0x1234), nl)
    first = list(nl.rules)
    nl.tables_in_use = {0x1234}  # something routes through it: its rules are live
    up(config(V4_ALL, fwmark=0x1234), nl)
    assert not calls(nl, "remove_rule") and nl.rules[:2] == first and len(nl.rules) == 4
