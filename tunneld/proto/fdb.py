"""Bridge-style forwarding database for a VXLAN port: inner MAC -> remote VTEP.

Models what `bridge fdb` shows on a Linux vxlan device (RFC 7348 section 4,
"VTEP learning"): entries learned from the inner source MAC and the outer source
IP of received frames, static entries from the config, and the all-zeros entries
(here: the flood list) that receive head-end replicated broadcast, multicast and
unknown-unicast frames (RFC 7348 section 4.2 describes IP multicast for BUM
traffic; the all-zeros list is the unicast alternative the kernel offers with
`bridge fdb append 00:00:00:00:00:00 dst ...`).

Theory of operation
-------------------
* Keys are MAC addresses as 48-bit ints (`mac_key`), big-endian, so that the
  first octet's group bit is `key & MULTICAST_BIT`. The hot path reads a MAC out
  of a packet with one `struct.unpack_from("!Q")` and a mask/shift, which measured
  ~120-160 ns including the dict probe on the build machine, against ~280 ns for
  `dict.get(bytes(view[a:b]))` and ~350 ns for `int.from_bytes(view[a:b])`: the
  memoryview slice and the bytes object are two allocations, the Q unpack is one
  tuple. Control-plane methods accept `bytes` (6), `"02:00:00:00:00:01"` or an int.
* Remotes are strings holding an IP address in canonical form, exactly what
  `socket.recvfrom` reports (`"192.168.77.2"`, `"2001:db8::2"`; a link-local source
  comes as `"fe80::2"`, its scope only in the address tuple's scope id, so a
  configured `"fe80::2%eth0"` is stored without its scope: the port's socket is
  bound to the scoped local address and reaches link-local remotes on that link).
  They are hashable, compare with `==`, and go straight into
  `sock.sendto(view, (remote, port))`. The control-plane methods canonicalize
  (`canonical_remote`), so `"2001:DB8::2"` in a config equals what the socket
  reports; the hot-path `learn_key` stores what it is given. A link using a
  dual-stack AF_INET6 socket must strip the `::ffff:` prefix of IPv4-mapped
  sources itself (or use one socket per family).
* Ageing (seconds, monotonic `now` passed in): a learned entry expires when
  `now >= seen + ageing`; `ageing == 0` means learned entries never age (as the
  kernel's `ageing 0`). Expired entries are treated as absent by `lookup`
  (lazily, without deleting) and removed by `expire(now)`, which the runtime
  calls at `next_deadline()`.
* Expiry heap: a heap of expiry times, each with a bucket (list) of the keys queued
  under it; every learned entry that can age sits in exactly one bucket, the one
  at `entry.queued`. Entries learned with the same `now` (one receive batch) share
  one time, one float and one bucket: a key costs one list slot, not a tuple. A
  refresh only moves `entry.expires` (the data path does this inline), so the
  queue time is early: when its bucket pops, the entry is re-queued at its real
  expiry, or removed if due. A key whose entry is gone, static, or queued under
  another time is stale and skipped. `expire` therefore touches only due buckets,
  never the whole table, and `next_deadline()` (the heap's head) is a lower bound:
  the runtime may see spurious wake-ups (a refreshed entry, a bucket whose keys
  all went stale), which `expire` answers with 0.
* Bound: at most `max_learned` learned entries (0: unlimited, as the bridge's
  `fdb_max_learned`). When full, due entries are reaped first; if none is due, a
  new MAC is not learned and `learn_key` returns False (the VXLAN core counts
  FDB_FULL and still delivers the frame). Refreshes and moves of known MACs, and
  static entries, are never refused and static entries never count.
* Static entries are never aged, moved or replaced by learning; `learn_key`
  returns False when a static entry names another remote, and the caller counts
  NOT_ALLOWED_SOURCE. A static entry replaces a learned one for the same MAC.
* `table` is the dict `key -> FdbEntry`. It is never rebound, so the VXLAN core
  may hold a reference and probe it inline; only this module mutates it.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import sys
from collections.abc import Iterable

MAC_MASK = (1 << 48) - 1
MULTICAST_BIT = 1 << 40  # I/G bit: least significant bit of the first octet
ZERO_MAC = 0

MacLike = bytes | bytearray | memoryview | str | int
Remote = str


def mac_key(mac: MacLike) -> int:
    """MAC as bytes (6), "aa:bb:cc:dd:ee:ff"/"aa-bb-..." text or an int -> 48-bit int key.

    Raises ValueError on anything else (caller misuse or a config error).
    """
    if isinstance(mac, int) and not isinstance(mac, bool):
        if 0 <= mac <= MAC_MASK:
            return mac
        raise ValueError(f"MAC key out of range: {mac!r}")
    if isinstance(mac, str):
        parts = mac.replace("-", ":").split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError(f"not a MAC address: {mac!r}")
        try:
            return int("".join(parts), 16)
        except ValueError:
            raise ValueError(f"not a MAC address: {mac!r}") from None
    if isinstance(mac, bytes | bytearray | memoryview) and len(mac) == 6:
        return int.from_bytes(mac, "big")
    raise ValueError(f"not a MAC address: {mac!r}")


def mac_str(key: int) -> str:
    """48-bit key -> "02:00:00:00:00:01" (lower case, as `bridge fdb show`)."""
    return ":".join(f"{b:02x}" for b in key.to_bytes(6, "big"))


def canonical_remote(remote: str) -> Remote:
    """Validate an underlay address and return it as `recvfrom` would report it."""
    if not isinstance(remote, str):
        raise TypeError(f"remote must be an IP address string, not {type(remote).__name__}")
    return str(ipaddress.ip_address(remote)).partition("%")[0]  # recvfrom reports no scope


class FdbEntry:
    """One MAC's destination. `seen`/`expires` in monotonic seconds (inf when static);
    `queued`: the time of this entry's expiry-heap item (see the module doc)."""

    __slots__ = ("remote", "static", "seen", "expires", "queued")

    def __init__(self, remote: Remote, static: bool, seen: float, expires: float) -> None:
        self.remote = remote
        self.static = static
        self.seen = seen
        self.expires = expires
        self.queued = expires

    def __repr__(self) -> str:
        kind = "static" if self.static else f"seen={self.seen}"
        return f"FdbEntry({self.remote!r}, {kind})"


DEFAULT_MAX_LEARNED = 65536


class Fdb:
    """MAC -> remote table with learning (at most `max_learned` entries, 0: unlimited),
    static entries, ageing from a heap and a flood list."""

    __slots__ = ("table", "lifetime", "flood", "max_learned", "learned", "_ageing", "_heap",
                 "_buckets", "_last_now", "_last_expires")  # fmt: skip

    def __init__(self, ageing: float, max_learned: int = DEFAULT_MAX_LEARNED) -> None:
        if max_learned < 0:
            raise ValueError(f"max_learned must be >= 0, got {max_learned!r}")
        self.table: dict[int, FdbEntry] = {}
        self.flood: tuple[Remote, ...] = ()
        self.max_learned = max_learned  # settable (reload): a lower bound evicts nothing
        self.learned = 0  # learned entries in `table` (expired ones until `expire` runs)
        self._heap: list[float] = []  # expiry times, each a key of _buckets
        self._buckets: dict[float, list[int]] = {}
        self._last_now = self._last_expires = math.nan  # one float per receive batch
        self.ageing = ageing

    @property
    def ageing(self) -> float:
        """Configured ageing, seconds (0: never). Settable on reload: applies to learned entries."""
        return self._ageing

    @ageing.setter
    def ageing(self, ageing: float) -> None:
        if not ageing >= 0:
            raise ValueError(f"ageing must be >= 0 seconds, got {ageing!r}")
        self._ageing = float(ageing)
        # What the data path adds to `now`: inf makes "ageing 0" mean "never expires".
        self.lifetime: float = self._ageing if ageing > 0 else math.inf
        self._reage()

    def _reage(self) -> None:
        """A new ageing applies to the entries already learned (reload): each expires at
        seen + lifetime, and the heap is rebuilt (once per reload, O(n))."""
        lifetime = self.lifetime
        self._heap, self._buckets = [], {}
        self._last_now = self._last_expires = math.nan
        for key, entry in self.table.items():
            if not entry.static:
                entry.expires = entry.seen + lifetime
                self._queue(key, entry)

    def _queue(self, key: int, entry: FdbEntry) -> None:
        """Put `key` in the bucket of `entry.expires` (nothing if it never expires)."""
        expires = entry.queued = entry.expires
        if expires == math.inf:
            return
        bucket = self._buckets.get(expires)
        if bucket is None:
            self._buckets[expires] = [key]
            heapq.heappush(self._heap, expires)
        else:
            bucket.append(key)

    # -- data path (int keys, no validation) --------------------------------

    def learn_key(self, key: int, remote: Remote, now: float) -> bool:
        """Learn/refresh/move `key` -> `remote`. False if a static entry names another
        remote, or `key` is new and the table holds `max_learned` live learned entries."""
        entry = self.table.get(key)
        if entry is None:
            if self.max_learned and self.learned >= self.max_learned:
                self.expire(now)  # reap what is due (heap head only), then look again
                if self.learned >= self.max_learned:
                    return False
            if now == self._last_now:
                expires = self._last_expires  # share the batch's float
            else:
                self._last_now, expires = now, now + self.lifetime
                self._last_expires = expires
            entry = self.table[key] = FdbEntry(sys.intern(remote), False, now, expires)
            self.learned += 1
            self._queue(key, entry)
            return True
        if entry.static:
            return entry.remote == remote
        entry.remote = remote
        entry.seen = now
        entry.expires = now + self.lifetime
        return True

    def lookup_key(self, key: int, now: float) -> Remote | None:
        """The remote for `key`, or None if absent or expired."""
        entry = self.table.get(key)
        if entry is not None and now < entry.expires:
            return entry.remote
        return None

    # -- bytes/str API -------------------------------------------------------

    def learn(self, mac: MacLike, remote: Remote, now: float) -> bool:
        """`learn_key` for a MAC given as bytes/str/int (tests, tools)."""
        return self.learn_key(mac_key(mac), remote, now)

    def lookup(self, mac: MacLike, now: float) -> Remote | None:
        return self.lookup_key(mac_key(mac), now)

    # -- control plane ---------------------------------------------------------

    def add_static(self, mac: MacLike, remote: str) -> None:
        """Pin `mac` to `remote`, replacing any learned or static entry for it.

        The all-zeros MAC is refused: flooding is configured with `set_flood`.
        """
        key = _static_key(mac)
        self._drop_learned(key)
        self.table[key] = FdbEntry(canonical_remote(remote), True, math.inf, math.inf)

    def remove_static(self, mac: MacLike) -> bool:
        """Remove a static entry. False if `mac` has none (learned entries stay)."""
        key = mac_key(mac)
        entry = self.table.get(key)
        if entry is None or not entry.static:
            return False
        del self.table[key]
        return True

    def replace_static(self, entries: Iterable[tuple[MacLike, str]]) -> tuple[int, int]:
        """Make the static set exactly `entries` (for reload). Returns (added_or_changed, removed).

        Validates everything before changing anything; the same MAC twice with
        different remotes is a ValueError. Learned entries for other MACs stay.
        """
        wanted: dict[int, Remote] = {}
        for mac, remote in entries:
            key, canon = _static_key(mac), canonical_remote(remote)
            if wanted.setdefault(key, canon) != canon:
                raise ValueError(f"{mac_str(key)}: two static remotes ({wanted[key]}, {canon})")
        table = self.table
        stale = [k for k, e in table.items() if e.static and k not in wanted]
        for key in stale:
            del table[key]
        changed = 0
        for key, remote in wanted.items():
            entry = table.get(key)
            if entry is None or not entry.static or entry.remote != remote:
                self._drop_learned(key)
                table[key] = FdbEntry(remote, True, math.inf, math.inf)
                changed += 1
        return changed, len(stale)

    def set_flood(self, remotes: Iterable[str]) -> None:
        """Set the all-zeros entries (order kept, duplicates dropped)."""
        self.flood = tuple(dict.fromkeys(canonical_remote(r) for r in remotes))

    def flood_list(self) -> tuple[Remote, ...]:
        return self.flood

    # -- ageing ----------------------------------------------------------------

    def _drop_learned(self, key: int) -> None:
        """A static entry is about to replace `key`: uncount a learned entry there (its heap
        item goes stale)."""
        entry = self.table.get(key)
        if entry is not None and not entry.static:
            self.learned -= 1

    def expire(self, now: float) -> int:
        """Remove learned entries expired at `now`, opening due buckets only (module doc).
        Returns the number removed."""
        heap, buckets, table, removed = self._heap, self._buckets, self.table, 0
        while heap and heap[0] <= now:
            queued = heapq.heappop(heap)
            for key in buckets.pop(queued):
                entry = table.get(key)
                if entry is None or entry.static or entry.queued != queued:
                    continue  # stale: the entry went, turned static, or was re-queued
                if now >= entry.expires:
                    del table[key]
                    self.learned -= 1
                    removed += 1
                else:  # refreshed since queued: queue it at its real expiry
                    self._queue(key, entry)
        return removed

    def next_deadline(self) -> float | None:
        """Earliest time a learned entry may expire (may be early, never late), or None."""
        return self._heap[0] if self._heap else None

    def queued(self) -> int:
        """Keys in the expiry buckets (learned entries that can age, plus stale keys not yet
        popped); for tests and `show`."""
        return sum(map(len, self._buckets.values()))

    def entries(self, now: float) -> list[tuple[str, Remote, bool, int | None]]:
        """(mac, remote, static, age seconds or None) for `show`, sorted by MAC; expired omitted."""
        return [
            (mac_str(k), e.remote, e.static, None if e.static else int(now - e.seen))
            for k, e in sorted(self.table.items())
            if now < e.expires
        ]

    def __len__(self) -> int:
        return len(self.table)


def _static_key(mac: MacLike) -> int:
    key = mac_key(mac)
    if key == ZERO_MAC:
        raise ValueError("00:00:00:00:00:00 is the flood list: use `flood`, not a static entry")
    return key
