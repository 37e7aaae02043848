"""Per-interface packet counters with drop reasons.

Each data plane defines its own `IntEnum` of drop reasons, valued 0..n-1, and
counts into flat lists indexed by the enum: `counters.rx_dropped[Drop.BAD_VNI] += 1`
costs one list store on the hot path, no dict. `as_dict()` gives the `show` shape:
every member appears, snake_case, zero or not.
"""

from __future__ import annotations

from enum import IntEnum


class Counters:
    __slots__ = (
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
        "rx_dropped",
        "tx_dropped",
        "_rx_reasons",
        "_tx_reasons",
    )

    def __init__(self, rx_reasons: type[IntEnum], tx_reasons: type[IntEnum]) -> None:
        for reasons in (rx_reasons, tx_reasons):
            if [int(m) for m in reasons] != list(range(len(reasons))):
                raise ValueError(f"{reasons.__name__} must be valued 0..n-1")
        self._rx_reasons, self._tx_reasons = rx_reasons, tx_reasons
        self.rx_packets = self.rx_bytes = self.tx_packets = self.tx_bytes = 0
        self.rx_dropped = [0] * len(rx_reasons)
        self.tx_dropped = [0] * len(tx_reasons)

    def as_dict(self) -> dict[str, object]:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_dropped": {m.name.lower(): self.rx_dropped[m] for m in self._rx_reasons},
            "tx_dropped": {m.name.lower(): self.tx_dropped[m] for m in self._tx_reasons},
        }


class OffsetCounts:
    """A list-like view of counts[offset:], so a core's own reason indices (valued 0..n-1) land
    after the owner's reasons in one flat list. Used only on drop paths (two calls per drop)."""

    __slots__ = ("counts", "offset")

    def __init__(self, counts: list[int], offset: int) -> None:
        self.counts, self.offset = counts, offset

    def __getitem__(self, index: int) -> int:
        return self.counts[self.offset + index]

    def __setitem__(self, index: int, value: int) -> None:
        self.counts[self.offset + index] = value

    def __len__(self) -> int:
        return len(self.counts) - self.offset
