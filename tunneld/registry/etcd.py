"""The etcd registry: flannel's subnet leases in etcd v3 (layout in registry/flannel.py).

Client: etcd3gw, etcd's own gRPC-gateway JSON API through `requests`. It is
synchronous, so the registry runs in one daemon thread and hands every change
to the event loop with `call_soon_threadsafe`; the loop thread alone touches
`hosts` and the link's route table.

Theory of operation (one thread, `_run`):
1. Acquire, retrying with exponential backoff while etcd is unreachable (the
   link's `start()` awaits this, so READY=1 waits for a lease): read
   `<prefix>/config` (missing: retry, like flannel; invalid: SetupError); list
   `<prefix>/subnets/` in one transaction (so the list carries its revision);
   reuse the lease holding our PublicIP (restart), else the configured
   preferred subnet if free, else a random free one, each created with a
   transaction whose compare is `version(key) == 0`, the key bound to a lease of
   `lease_ttl` seconds. No free subnet: SetupError.
2. Serve: a watch on `<prefix>/subnets/` from the listed revision + 1 turns
   puts and deletes into route changes. Every PROBE seconds a status call checks
   etcd: a failure marks the registry disconnected (routes stay as they are:
   forwarding goes on with the last table), stops the watch, and retries with
   backoff; on success it re-lists and re-watches. etcd3gw does not report a
   watch that ends or is cancelled by compaction, so the registry also re-lists
   whenever etcd's raft term changes (a restart or a new leader) and every
   RESYNC seconds. The lease is kept alive every lease_ttl / 3 and re-created
   for the same subnet if it expired. The lease is never revoked.
A lease value that is not flannel's JSON is logged once (per key revision, the
memory of logged revisions bounded by BAD_LEASE_LOG) and skipped; the other leases
are unaffected. A subnet key outside the network's pool (another length, outside
SubnetMin..SubnetMax: a /32 would out-match a real host's /24) is skipped the same
way, so the route table holds at most the pool's size (capped at MAX_HOSTS).
Dual stack (network config "EnableIPv6"): this host's key holds an IPv6 subnet too
(flannel's `10.5.1.0-24&fd10:5:0:1::-64`; the preferred `ipv6_subnet`, else a random
free one of the IPv6 pool); a lease of ours without one (or with one outside the pool)
is deleted and a new one created, as flannel's tryAcquireLease does. Other hosts' IPv6
subnets must lie in the IPv6 pool (else the lease is skipped as above); without
EnableIPv6 they are ignored. Leases are read for the address of our underlay's family
(PublicIP or PublicIPv6, registry/flannel.py).

Threads: etcd3gw's watch thread only hands each event to the loop
(`call_soon_threadsafe`); parsing and every change of `hosts` happen on the loop.
Errors: only connection failures, timeouts and HTTP 5xx (`is_transient`) are retried;
anything else is a bug or a permanent refusal: it fails `start()`, or, once serving,
stops the registry with the error logged (forwarding goes on with the last routes).
"""

from __future__ import annotations

import asyncio
import base64
import http
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network
from typing import Any
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
    WatchTimedOut,
)
from etcd3gw.lease import Lease
from etcd3gw.watch import Watcher

from tunneld.errors import SetupError
from tunneld.registry.base import ChangeCallback, Host, Registry
from tunneld.registry.flannel import (
    NetworkConfig,
    choose_subnet,
    lease_value,
    parse_lease,
    parse_network_config,
    parse_subnet_key,
    parse_subnet_keys,
    subnet_key,
    subnets_prefix,
)

log = logging.getLogger("tunneld.etcd")

REQUEST_TIMEOUT = 2.0  # seconds per etcd call
PROBE = 1.0  # seconds between health checks while connected
RESYNC = 60.0  # seconds between full re-lists (etcd3gw hides watch cancellation)
BACKOFF_MIN, BACKOFF_MAX = 0.25, 4.0
RACE_RETRIES = 10  # create-if-absent attempts, like flannel
BAD_LEASE_LOG = 256  # (key, revision) pairs remembered as already logged
MAX_HOSTS = 65536  # other hosts (routes) at most, whatever the pool allows
_TRANSIENT_ETCD = (InternalServerError, ConnectionFailedError, ConnectionTimeoutError,
                   WatchTimedOut)  # fmt: skip
_TRANSIENT_HTTP = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
_PHRASES = {s.phrase: s.value for s in http.HTTPStatus}


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: etcd unreachable, too slow, or answering HTTP 5xx. Anything else
    (KeyError, ValueError, a 4xx, a failed precondition) is a bug or a permanent refusal."""
    if isinstance(exc, (_Transient, *_TRANSIENT_ETCD, *_TRANSIENT_HTTP)):
        return True
    if type(exc) is Etcd3Exception:  # other status codes: etcd3gw keeps only the reason
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        return _PHRASES.get(reason, 0) >= 500
    return False


class _BadLeaseLog:
    """Which bad (key, revision) pairs were logged: the newest BAD_LEASE_LOG only."""

    def __init__(self, size: int = BAD_LEASE_LOG) -> None:
        self.size, self._seen = size, OrderedDict[tuple[bytes, int], None]()
        self._lock = threading.Lock()  # the registry thread (lists) and the loop (watch)

    def first_time(self, mark: tuple[bytes, int]) -> bool:
        with self._lock:
            if mark in self._seen:
                self._seen.move_to_end(mark)
                return False
            self._seen[mark] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._seen)


def _encode(data: str | bytes) -> str:
    """etcd's JSON gateway carries keys and values as base64."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _decode(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: str) -> str:
    """The key just past every key starting with `prefix` (etcd's prefix range)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class _Transient(Exception):
    """etcd did not answer usefully; retry later."""


class EtcdClient:
    """etcd3gw clients for the configured endpoints; fails over on errors."""

    def __init__(self, endpoints: tuple[str, ...], timeout: float = REQUEST_TIMEOUT) -> None:
        self.endpoints, self.timeout, self._index = endpoints, timeout, 0
        self.client = self._connect()

    def _connect(self) -> Etcd3Client:
        url = urlsplit(self.endpoints[self._index])
        return Etcd3Client(
            host=url.hostname or "127.0.0.1",
            port=url.port or 2379,
            protocol=url.scheme,
            timeout=self.timeout,
            api_path="/v3/",
        )

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def fail_over(self) -> None:
        self._index = (self._index + 1) % len(self.endpoints)
        self.client = self._connect()

    def range_prefix(self, prefix: str) -> tuple[int, list[dict[str, Any]]]:
        """(revision, kvs with decoded key/value) of every key under `prefix`, atomically."""
        txn = {
            "compare": [],
            "failure": [],
            "success": [
                {
                    "request_range": {
                        "key": _encode(prefix),
                        "range_end": _encode(_range_end(prefix)),
                    }
                }
            ],
        }
        result = self.client.transaction(txn)
        kvs = result.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
        for kv in kvs:
            kv["key"], kv["value"] = _decode(kv["key"]), _decode(kv.get("value", ""))
        return int(result["header"]["revision"]), kvs

    def delete(self, key: str) -> None:
        self.client.delete(key)

    def get(self, key: str) -> bytes | None:
        values = self.client.get(key)
        return values[0] if values else None

    def create(self, key: str, value: str, lease_id: int) -> bool:
        """Put key=value bound to the lease if the key does not exist (version == 0)."""
        k = _encode(key)
        txn = {
            "compare": [{"key": k, "result": "EQUAL", "target": "VERSION", "version": 0}],
            "success": [{"request_put": {"key": k, "value": _encode(value), "lease": lease_id}}],
            "failure": [],
        }
        return bool(self.client.transaction(txn).get("succeeded", False))

    def replace(self, key: str, value: str, lease_id: int, mod_revision: int) -> bool:
        """Put key=value bound to the lease if the key is unchanged since `mod_revision`."""
        k = _encode(key)
        txn = {
            "compare": [
                {"key": k, "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}
            ],
            "success": [{"request_put": {"key": k, "value": _encode(value), "lease": lease_id}}],
            "failure": [],
        }
        return bool(self.client.transaction(txn).get("succeeded", False))

    def grant(self, ttl: int) -> tuple[int, int]:
        result = self.client.post(self.client.get_url("/lease/grant"), json={"TTL": ttl, "ID": 0})
        return int(result["ID"]), int(result["TTL"])

    def keepalive(self, lease_id: int) -> int:
        """Remaining TTL after a renewal, or -1 if the lease is gone."""
        return Lease(lease_id, self.client).refresh()

    def revoke(self, lease_id: int) -> None:
        Lease(lease_id, self.client).revoke()

    def raft_term(self) -> int:
        status: dict[str, Any] = dict(self.client.status())
        term = status.get(
            "raft_term", status.get("raftTerm", status.get("header", {}).get("raft_term", 0))
        )
        return int(term)

    def watch(
        self, prefix: str, start_revision: int, callback: Callable[[dict[str, Any]], None]
    ) -> Watcher:
        return Watcher(
            self.client,
            prefix,
            callback,
            range_end=_range_end(prefix),
            start_revision=start_revision,
        )


class Backoff:
    def __init__(self) -> None:
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(BACKOFF_MAX, max(BACKOFF_MIN, self.delay * 2))
        return self.delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.delay = 0.0


class EtcdRegistry(Registry):
    kind = "etcd"

    def __init__(
        self,
        cfg: Any,
        on_change: ChangeCallback,
        backend_type: str = "udp",
        backend_data: dict[str, Any] | None = None,
    ) -> None:
        """`backend_type`/`backend_data`: what this host's lease publishes (the transport's
        flannel BackendType and BackendData, e.g. "wireguard" and {"PublicKey", "Port"})."""
        super().__init__(on_change)
        self.cfg = cfg
        self.prefix = cfg.etcd_prefix
        self.family = cfg.public_ip.version  # leases are read for this underlay family
        self.own_ip = str(cfg.public_ip).partition("%")[0]
        self.backend_type, self.backend_data = backend_type, dict(backend_data or {})
        self.connected = False
        self.lease_expiry: float | None = None  # unix seconds
        self.lease_id = 0
        self.netcfg: NetworkConfig | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Any = None
        self._logged_bad = _BadLeaseLog()
        self.failed: str | None = None  # set when a non-transient error stopped the registry
        self.over_limit = 0  # valid leases left without a route: MAX_HOSTS reached
        self._reacquire = False

    # --- the loop side ----------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), daemon=True, name=f"etcd-{self.cfg.name}"
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._stop.set()
            raise

    def reload(self, cfg: Any) -> bool:
        return bool(cfg == self.cfg)

    def status(self) -> dict[str, Any]:
        expiry = None if self.lease_expiry is None else int(self.lease_expiry)
        return {
            "kind": self.kind,
            "connected": self.connected,
            "lease_expiry": expiry,
            "endpoints": list(self.cfg.etcd_endpoints),
            **({"failed": self.failed} if self.failed else {}),
            **({"leases_over_limit": self.over_limit} if self.over_limit else {}),
        }

    async def stop(self) -> None:
        self._stop.set()
        self._stop_watch()

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: we are shutting down
            self._stop.set()

    def _settle(self, ready: asyncio.Future[None], exc: BaseException | None) -> None:
        if ready.done():
            return
        if exc is not None:
            ready.set_exception(exc)
        else:
            ready.set_result(None)

    # --- the thread ---------------------------------------------------------------------

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            etcd = EtcdClient(self.cfg.etcd_endpoints)
            revision, hosts = self._acquire_with_retry(etcd)
        except SetupError as exc:
            self._post(self._settle, ready, exc)
            return
        except BaseException as exc:  # a bug: fail start() loudly rather than hang
            log.exception("%s: etcd registry failed", self.cfg.name)
            self._post(self._settle, ready, SetupError(f"etcd registry: {exc!r}"))
            return
        if self._stop.is_set():
            return
        self._post(self._adopt, hosts, ready)
        self._serve_or_fail(etcd, revision)

    def _adopt(self, hosts: list[Host], ready: asyncio.Future[None]) -> None:
        self.replace_hosts(hosts)
        self._settle(ready, None)

    def _acquire_with_retry(self, etcd: EtcdClient) -> tuple[int, list[Host]]:
        backoff, failures, last_log = Backoff(), 0, float("-inf")
        while not self._stop.is_set():
            try:
                return self._acquire(etcd)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                if time.monotonic() - last_log >= 30 or failures == 1:
                    last_log = time.monotonic()
                    log.warning(
                        "%s: etcd at %s: %s; retrying (attempt %d)",
                        self.cfg.name,
                        etcd.endpoint,
                        _reason(exc),
                        failures,
                    )
                if not isinstance(exc, _Transient):
                    etcd.fail_over()
                self._stop.wait(backoff.next())
        raise SetupError("stopped while waiting for etcd")

    def _serve_or_fail(self, etcd: EtcdClient, revision: int) -> None:
        try:
            self._serve(etcd, revision)
        except Exception as exc:  # not transient (is_transient): retrying would loop forever
            log.exception("%s: etcd registry stopped by an error that is not transient; "
                          "forwarding with the last known routes", self.cfg.name)  # fmt: skip
            self.connected, self.failed = False, _reason(exc)
            self._stop_watch()

    def _acquire(self, etcd: EtcdClient) -> tuple[int, list[Host]]:
        netcfg = self.netcfg = self._network_config(etcd)  # _parse keeps to its pool
        for _ in range(RACE_RETRIES):
            revision, kvs = etcd.range_prefix(subnets_prefix(self.prefix))
            hosts, meta = self._parse(kvs)
            subnet = self._claim(etcd, netcfg, hosts, meta)
            if subnet is not None:
                self.netcfg, self.connected = netcfg, True
                self.subnet, self.network = subnet, netcfg.network
                self.network6 = netcfg.ipv6.network if netcfg.ipv6 else None
                log.info(
                    "%s: leased %s%s from etcd (%s), lease expires %s",
                    self.cfg.name,
                    subnet,
                    f" and {self.subnet6}" if self.subnet6 else "",
                    etcd.endpoint,
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.lease_expiry)),
                )
                return revision, [h for h in hosts.values() if h.subnet != subnet]
        raise _Transient("lost the race for a free subnet 10 times")

    def _network_config(self, etcd: EtcdClient) -> NetworkConfig:
        key = f"{self.prefix}/config"
        raw = etcd.get(key)
        if raw is None:
            raise _Transient(f"no network config at {key} yet (write flannel's JSON there)")
        try:
            netcfg = parse_network_config(raw)
        except ValueError as exc:
            raise SetupError(f"etcd {key}: invalid network config: {exc}") from None
        self._check_agreement(key, netcfg)
        return netcfg

    def _check_agreement(self, key: str, netcfg: NetworkConfig) -> None:
        cfg, where = self.cfg, f"interfaces.{self.cfg.name}"
        if cfg.network is not None and cfg.network != netcfg.network:
            raise SetupError(
                f"{where}.network is {cfg.network} but etcd {key} says Network "
                f"{netcfg.network}; remove it from the file or make them agree"
            )
        if cfg.subnet_len is not None and cfg.subnet_len != netcfg.subnet_len:
            raise SetupError(
                f"{where}.subnet_len is {cfg.subnet_len} but etcd {key} says "
                f"SubnetLen {netcfg.subnet_len}; make them agree"
            )
        wanted = self.backend_type
        if netcfg.backend_type != wanted:
            raise SetupError(
                f"etcd {key}: Backend.Type is {netcfg.backend_type!r}; "
                f"{where} (encryption = {cfg.encryption!r}) needs {wanted!r}"
            )
        port = netcfg.backend.get("Port")
        if wanted == "udp" and port is not None and port != cfg.port:
            raise SetupError(
                f"etcd {key}: Backend.Port is {port} but {where}.port is "
                f"{cfg.port}; every host must use the same port"
            )
        listen = netcfg.backend.get("ListenPort", 51820)  # flannel's wireguard default
        if wanted == "wireguard" and listen != self.backend_data.get("Port"):
            log.warning(
                "%s: etcd %s: Backend.ListenPort is %s but listen_port is %s; flannel "
                "hosts older than 0.26.5 ignore the lease's Port and will send to %s",
                cfg.name,
                key,
                listen,
                self.backend_data.get("Port"),
                listen,
            )
        if cfg.subnet is not None and not netcfg.in_pool(cfg.subnet):
            raise SetupError(
                f"{where}.subnet {cfg.subnet} is not a /{netcfg.subnet_len} between "
                f"SubnetMin {netcfg.subnet_min} and SubnetMax {netcfg.subnet_max} "
                f"of etcd {key}"
            )
        self._check_ipv6_agreement(key, netcfg)

    def _check_ipv6_agreement(self, key: str, netcfg: NetworkConfig) -> None:
        cfg, where, pool = self.cfg, f"interfaces.{self.cfg.name}", netcfg.ipv6
        given = [k for k in ("ipv6_network", "ipv6_subnet_len", "ipv6_subnet")
                 if getattr(cfg, k, None) is not None]  # fmt: skip
        if pool is None:
            if given:
                raise SetupError(f"{where}.{given[0]} is set but etcd {key} does not enable "
                                 "IPv6 (EnableIPv6, IPv6Network); remove it or enable IPv6 "
                                 "there")  # fmt: skip
            return
        for name, mine, theirs in (
            ("ipv6_network", getattr(cfg, "ipv6_network", None), pool.network),
            ("ipv6_subnet_len", getattr(cfg, "ipv6_subnet_len", None), pool.subnet_len),
        ):
            if mine is not None and mine != theirs:
                raise SetupError(f"{where}.{name} is {mine} but etcd {key} says {theirs}; "
                                 "remove it from the file or make them agree")  # fmt: skip
        subnet6 = getattr(cfg, "ipv6_subnet", None)
        if subnet6 is not None and not pool.in_pool(subnet6):
            raise SetupError(
                f"{where}.ipv6_subnet {subnet6} is not a /{pool.subnet_len} between "
                f"IPv6SubnetMin {pool.subnet_min} and IPv6SubnetMax {pool.subnet_max} "
                f"of etcd {key}"
            )

    def _parse(
        self, kvs: list[dict[str, Any]]
    ) -> tuple[dict[IPv4Network, Host], dict[IPv4Network, dict[str, Any]]]:
        """Valid leases by subnet, and every subnet key's metadata (corrupt ones included)."""
        hosts, meta, over = {}, {}, 0
        for kv in kvs:
            subnet = parse_subnet_key(self.prefix, kv["key"])
            if subnet is None:
                continue
            meta[subnet] = kv
            host = self._parse_one(subnet, kv)
            if host is not None and len(hosts) < MAX_HOSTS:
                hosts[subnet] = host
            elif host is not None:
                over += 1
        self.over_limit = over
        if over:
            log.warning("etcd %s: %d leases past the %d hosts a route table holds; not routed",
                        self.prefix, over, MAX_HOSTS)  # fmt: skip
        return hosts, meta

    def _parse_one(self, subnet: IPv4Network, kv: dict[str, Any]) -> Host | None:
        try:
            netcfg = self.netcfg
            if netcfg is not None and not netcfg.in_pool(subnet):
                raise ValueError(
                    f"{subnet} is not a /{netcfg.subnet_len} between SubnetMin "
                    f"{netcfg.subnet_min} and SubnetMax {netcfg.subnet_max}"
                )
            subnet6 = self._subnet6_of(kv)
            return parse_lease(subnet, kv["value"], subnet6, self.family)
        except ValueError as exc:
            mark = (kv["key"], int(kv.get("mod_revision", 0)))
            if self._logged_bad.first_time(mark):
                log.warning(
                    "%s: etcd lease %s skipped: %s",
                    self.cfg.name,
                    kv["key"].decode(errors="replace"),
                    exc,
                )
            return None

    def _subnet6_of(self, kv: dict[str, Any]) -> IPv6Network | None:
        """The key's IPv6 subnet when the network carries IPv6 (ValueError: outside the
        IPv6 pool); None without one, or when the network config does not enable IPv6."""
        pair = parse_subnet_keys(self.prefix, kv["key"])
        pool = self.netcfg.ipv6 if self.netcfg is not None else None
        if pair is None or pair[1] is None or pool is None:
            return None
        if not pool.in_pool(pair[1]):
            raise ValueError(
                f"{pair[1]} is not a /{pool.subnet_len} between IPv6SubnetMin "
                f"{pool.subnet_min} and IPv6SubnetMax {pool.subnet_max}"
            )
        return pair[1]

    def _compatible(self, netcfg: NetworkConfig, subnet: IPv4Network, kv: dict[str, Any]) -> bool:
        """Our old lease fits the network config (flannel's isSubnetConfigCompat and
        isIPv6SubnetConfigCompat): in the pool, and an IPv6 subnet in the IPv6 pool
        exactly when IPv6 is enabled."""
        pair = parse_subnet_keys(self.prefix, kv["key"])
        six = pair[1] if pair is not None else None
        if not netcfg.in_pool(subnet):
            return False
        if netcfg.ipv6 is None:
            return six is None
        return six is not None and netcfg.ipv6.in_pool(six)

    def _claim(
        self,
        etcd: EtcdClient,
        netcfg: NetworkConfig,
        hosts: dict[IPv4Network, Host],
        meta: dict[IPv4Network, dict[str, Any]],
    ) -> IPv4Network | None:
        """Take a subnet: our previous lease, the preferred one, or a random free one.

        None: lost a race (someone changed the keys); the caller re-lists.
        Raises SetupError when the pool is full.
        """
        value = self._lease_value()
        for subnet, host in sorted(hosts.items()):
            if host.public_ip != self.own_ip:
                continue
            if self._compatible(netcfg, subnet, meta[subnet]):
                return self._reuse(etcd, subnet, meta[subnet], value)
            if netcfg.in_pool(subnet):  # an IPv6 change: flannel deletes it and leases anew
                log.warning("%s: our lease %s does not fit the IPv6 settings of the network "
                            "config; deleting it", self.cfg.name,
                            meta[subnet]["key"].decode(errors="replace"))  # fmt: skip
                etcd.delete(meta[subnet]["key"].decode())
                return None  # re-list
        subnet6 = self._pick_subnet6(netcfg, meta)
        wanted = self.subnet or self.cfg.subnet  # after an expiry: the subnet we had
        if wanted is not None and wanted not in meta:
            if self._create(etcd, wanted, value, subnet6):
                return wanted
            return None
        if wanted is not None and self.subnet is None:
            log.warning("%s: preferred subnet %s is taken; leasing another", self.cfg.name, wanted)
        subnet = choose_subnet(netcfg, meta.keys(), random.choice)
        if subnet is None:
            raise SetupError(
                f"etcd {self.prefix}: no free subnet: all {netcfg.pool_size()} "
                f"/{netcfg.subnet_len} subnets between {netcfg.subnet_min} and "
                f"{netcfg.subnet_max} of {netcfg.network} "
                "are leased; widen Network or SubnetMin/SubnetMax, or delete stale leases"
            )
        return subnet if self._create(etcd, subnet, value, subnet6) else None

    def _pick_subnet6(
        self, netcfg: NetworkConfig, meta: dict[IPv4Network, dict[str, Any]]
    ) -> IPv6Network | None:
        """With IPv6 enabled: the IPv6 subnet we had or prefer if free, else a random free
        one (flannel's allocateSubnet); SetupError when none is. None without IPv6."""
        pool = netcfg.ipv6
        if pool is None:
            return None
        taken = set()
        for kv in meta.values():
            pair = parse_subnet_keys(self.prefix, kv["key"])
            if pair is not None and pair[1] is not None:
                taken.add(pair[1])
        wanted = self.subnet6 or getattr(self.cfg, "ipv6_subnet", None)
        if wanted is not None and wanted not in taken and pool.in_pool(wanted):
            return wanted
        subnet6 = choose_subnet(pool, taken, random.choice)  # type: ignore[arg-type]
        if subnet6 is None:
            raise SetupError(
                f"etcd {self.prefix}: no free IPv6 subnet: all {pool.pool_size()} "
                f"/{pool.subnet_len} subnets between {pool.subnet_min} and {pool.subnet_max} "
                "are leased; widen IPv6Network or IPv6SubnetMin/IPv6SubnetMax"
            )
        return subnet6  # type: ignore[return-value]

    def _lease_value(self) -> str:
        """This host's LeaseAttrs: the address under PublicIP or PublicIPv6 by its family;
        with IPv6 inside, BackendV6Data like flannel's (the same data for one device)."""
        six = self.netcfg is not None and self.netcfg.ipv6 is not None
        v6_data = dict(self.backend_data) if six and self.backend_type == "wireguard" else None
        if self.family == 6:
            return lease_value("0.0.0.0", self.backend_type, self.backend_data, self.own_ip,
                               v6_data)  # fmt: skip
        return lease_value(self.own_ip, self.backend_type, self.backend_data, None, v6_data)

    def _reuse(
        self, etcd: EtcdClient, subnet: IPv4Network, kv: dict[str, Any], value: str
    ) -> IPv4Network | None:
        lease_id = int(kv.get("lease", 0) or 0)
        ttl = etcd.keepalive(lease_id) if lease_id else -1
        if ttl <= 0:
            lease_id, ttl = etcd.grant(self.cfg.lease_ttl)
        if kv["value"] != value.encode() or int(kv.get("lease", 0) or 0) != lease_id:
            if not etcd.replace(kv["key"].decode(), value, lease_id, int(kv["mod_revision"])):
                return None
        pair = parse_subnet_keys(self.prefix, kv["key"])
        self.subnet6 = pair[1] if pair is not None else None
        self.lease_id, self.lease_expiry = lease_id, time.time() + ttl
        log.info("%s: reusing our lease on %s", self.cfg.name, subnet)
        return subnet

    def _create(
        self, etcd: EtcdClient, subnet: IPv4Network, value: str, subnet6: IPv6Network | None
    ) -> bool:
        lease_id, ttl = etcd.grant(self.cfg.lease_ttl)
        if etcd.create(subnet_key(self.prefix, subnet, subnet6), value, lease_id):
            self.lease_id, self.lease_expiry = lease_id, time.time() + ttl
            self.subnet6 = subnet6
            return True
        etcd.revoke(lease_id)  # never held a key: not ours to keep
        return False

    # --- serving: watch, probe, renew ---------------------------------------------------

    def _serve(self, etcd: EtcdClient, revision: int) -> None:
        backoff, etcd_term = Backoff(), None
        need_list, next_resync = False, time.monotonic() + RESYNC
        renew_every = max(1.0, self.cfg.lease_ttl / 3)
        next_renew = time.monotonic() + renew_every
        self._start_watch(etcd, revision)
        delay = PROBE
        while not self._stop.wait(delay):
            try:
                term = etcd.raft_term()
                if etcd_term is not None and term != etcd_term:
                    need_list = True  # restart or new leader: the watch may be gone
                etcd_term = term
                if need_list or self._reacquire or time.monotonic() >= next_resync:
                    self._relist(etcd)
                    need_list, next_resync = False, time.monotonic() + RESYNC
                if time.monotonic() >= next_renew:
                    self._renew(etcd)
                    next_renew = time.monotonic() + renew_every
                if not self.connected:
                    log.info("%s: etcd at %s is back", self.cfg.name, etcd.endpoint)
                self.connected, delay = True, PROBE
                backoff.reset()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self.connected:
                    log.warning(
                        "%s: etcd at %s unreachable (%s); forwarding with the last "
                        "known routes, reconnecting",
                        self.cfg.name,
                        etcd.endpoint,
                        _reason(exc),
                    )
                self.connected, need_list, etcd_term = False, True, None
                self._stop_watch()
                etcd.fail_over()
                delay = backoff.next()
        self._stop_watch()

    def _relist(self, etcd: EtcdClient) -> None:
        self._stop_watch()
        revision, kvs = etcd.range_prefix(subnets_prefix(self.prefix))
        hosts, meta = self._parse(kvs)
        mine = hosts.get(self.subnet)  # type: ignore[arg-type]
        if self._reacquire or mine is None or mine.public_ip != self.own_ip:
            self._restore_lease(etcd, meta)
        self._post(self.replace_hosts, [h for h in hosts.values() if h.subnet != self.subnet])
        self._start_watch(etcd, revision)

    def _restore_lease(self, etcd: EtcdClient, meta: dict[IPv4Network, dict[str, Any]]) -> None:
        """Our key vanished (lease expired or deleted): take the same subnet back if free."""
        assert self.subnet is not None and self.netcfg is not None
        value = self._lease_value()
        kv = meta.get(self.subnet)
        if kv is None and self._create(etcd, self.subnet, value, self.subnet6):
            log.warning(
                "%s: our lease on %s had expired; re-created it", self.cfg.name, self.subnet
            )
            self._reacquire = False
            return
        self.lease_expiry = None
        log.error(
            "%s: our subnet %s is leased by another host now; restart tunneld to lease a new one",
            self.cfg.name,
            self.subnet,
        )
        self._reacquire = False

    def _renew(self, etcd: EtcdClient) -> None:
        ttl = etcd.keepalive(self.lease_id)
        if ttl <= 0:
            log.warning("%s: lease on %s expired; re-creating it", self.cfg.name, self.subnet)
            self._reacquire = True
            self._relist(etcd)
            return
        self.lease_expiry = time.time() + ttl

    def _start_watch(self, etcd: EtcdClient, revision: int) -> None:
        self._stop_watch()
        self._watcher = etcd.watch(subnets_prefix(self.prefix), revision + 1, self._on_event)

    def _stop_watch(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                watcher.stop()
            except Exception:  # closing a dead stream: nothing to do
                pass

    def _on_event(self, event: dict[str, Any]) -> None:
        """A watch event, on etcd3gw's thread: hand it to the loop, touch nothing here."""
        self._post(self._apply_event, event)

    def _apply_event(self, event: dict[str, Any]) -> None:
        """A watch event, on the loop: turn it into a route change."""
        kv = event.get("kv", {})
        subnet = parse_subnet_key(self.prefix, kv.get("key", b""))
        if subnet is None:
            return
        if subnet == self.subnet:
            if event.get("type") == "DELETE":
                self._reacquire = True  # the next probe re-lists and re-creates it
            return
        if event.get("type") == "DELETE":
            self.drop_host(subnet)
            return
        host = self._parse_one(subnet, kv)
        if host is None:
            self.drop_host(subnet)
        elif subnet in self.hosts or len(self.hosts) < MAX_HOSTS:
            self.put_host(host)
        else:
            self.over_limit += 1
            log.warning("etcd %s: lease %s past the %d hosts a route table holds; not routed",
                        self.prefix, subnet, MAX_HOSTS)  # fmt: skip


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
