"""Small native helpers for the datapath, with a pure-Python fallback giving identical results.

Seed version: pure Python only (the C extension lands beside it). Everything here is pure
computation on caller buffers; protocol decisions stay in the callers.
"""

from __future__ import annotations

IMPLEMENTATION = "python"


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum of `data` as big-endian 16-bit words (an odd final
    byte is padded with zero), added to `initial` (0..0xffff), folded with end-around
    carry to 16 bits; NOT inverted. The result is 0 only when data and initial are all
    zero (a non-zero sum that is a multiple of 0xffff folds to 0xffff)."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
    total = (int.from_bytes(data, "big") if n else 0) + initial
    if not total:
        return 0
    s = total % 0xFFFF
    return s or 0xFFFF


class ChaChaRun:
    """ChaCha20-Poly1305 (RFC 8439) with one key, sealing/opening runs of WireGuard transport
    messages laid out at a fixed stride in one buffer (seed: pure Python, per message)."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        if len(key) != 32:
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        self._aead = ChaCha20Poly1305(key)
        self._nonce = bytearray(12)

    def seal_run(self, buf: memoryview, start: int, stride: int, count: int, plain_len: int,
                 last_plain_len: int, receiver: int, counter0: int) -> None:  # fmt: skip
        """Message i at d = start + i*stride: header (type 4, receiver u32 LE, counter0+i u64 LE)
        to buf[d:d+16], plaintext buf[d+16:d+16+L] sealed in place, tag after it."""
        _check_run(buf, start, stride, count, plain_len + 32, last_plain_len + 32)
        header, enc = _HEADER.pack_into, self._aead.encrypt_into
        nonce = self._nonce
        for i in range(count):
            d = start + i * stride
            length = last_plain_len if i == count - 1 else plain_len
            header(buf, d, 4, receiver, counter0 + i)
            nonce[4:12] = buf[d + 8 : d + 16]
            body = buf[d + 16 : d + 32 + length]
            enc(nonce, body[:length], b"", body)

    def open_run(self, buf: memoryview, start: int, stride: int, count: int, cipher_len: int,
                 last_cipher_len: int, ok: bytearray) -> int:  # fmt: skip
        """Message i at d: counter at buf[d+8:d+16]; for ok[i] != 0 decrypt buf[d+16:d+16+C]
        in place to buf[d+16:d+C]; ok[i] = 0 where the tag fails. Returns the number ok."""
        from cryptography.exceptions import InvalidTag

        _check_run(buf, start, stride, count, cipher_len + 16, last_cipher_len + 16)
        if min(cipher_len, last_cipher_len) < 16 or len(ok) < count:
            raise ValueError("ciphertexts hold a 16-byte tag; ok needs count entries")
        dec, nonce, good = self._aead.decrypt_into, self._nonce, 0
        for i in range(count):
            if not ok[i]:
                continue
            d = start + i * stride
            length = last_cipher_len if i == count - 1 else cipher_len
            nonce[4:12] = buf[d + 8 : d + 16]
            body = buf[d + 16 : d + 16 + length]
            try:
                dec(nonce, body, b"", body[: length - 16])
            except InvalidTag:
                ok[i] = 0
                continue
            good += 1
        return good


def _check_run(buf: memoryview, start: int, stride: int, count: int, size: int,
               last_size: int) -> None:  # fmt: skip
    if count < 0 or start < 0 or stride < 0 or size < 0 or last_size < 0:
        raise ValueError("negative run argument")
    if count and (start + (count - 1) * stride + last_size > len(buf)
                  or (count > 1 and start + (count - 2) * stride + size > len(buf))):  # fmt: skip
        raise ValueError("run falls outside the buffer")


_HEADER = __import__("struct").Struct("<B3xIQ")
