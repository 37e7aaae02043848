"""Small native helpers for the datapath: the C extension `_cnative` if it is built, else the
pure-Python `_fallback`, which gives identical results (tests/unit/test_native.py compares them).

    checksum(data, initial=0) -> int     RFC 1071 ones'-complement sum, not inverted
    ChaChaRun(key)                       RFC 8439 ChaCha20-Poly1305 over runs of WireGuard
                                         transport messages, sealed and opened in place

Chosen once, at import. TUNNELD_NATIVE=python forces the fallback; TUNNELD_NATIVE=c demands
the extension (ImportError without it, for CI). `IMPLEMENTATION` is "c" or "python";
`FALLBACK_REASON` says why the fallback is in use ("" with C), for the start-up log.
Everything here is pure computation on caller buffers: protocol decisions stay in the callers.
"""

from __future__ import annotations

import os

_CHOICE = os.environ.get("TUNNELD_NATIVE", "").strip().lower()
if _CHOICE not in ("", "c", "python"):
    raise ImportError(f"TUNNELD_NATIVE={_CHOICE!r}: expected 'c' or 'python' (or unset)")

FALLBACK_REASON = ""
if _CHOICE == "python":
    FALLBACK_REASON = "TUNNELD_NATIVE=python"
else:
    try:
        from tunneld.native._cnative import ChaChaRun, checksum
    except ImportError as exc:
        if _CHOICE == "c":
            raise ImportError(
                f"TUNNELD_NATIVE=c but the C extension is not importable ({exc}); "
                "install gcc, python3-dev and libssl-dev, then reinstall tunneld"
            ) from exc
        FALLBACK_REASON = f"C extension not built ({exc})"

if FALLBACK_REASON:
    from tunneld.native._fallback import ChaChaRun, checksum  # type: ignore[assignment]

IMPLEMENTATION = "python" if FALLBACK_REASON else "c"

__all__ = ["FALLBACK_REASON", "IMPLEMENTATION", "ChaChaRun", "checksum"]
