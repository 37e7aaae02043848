"""Pure-Python twin of the C extension `_cnative`: the same functions, results and exceptions.

Used when the extension is not built (no compiler or headers at install time) or when
TUNNELD_NATIVE=python. The internet checksum is RFC 1071; the AEAD is ChaCha20-Poly1305
(RFC 8439) through `cryptography`, laid out as WireGuard transport messages (whitepaper 5.4.6).
Everything works on caller buffers; protocol decisions stay with the callers.
"""

from __future__ import annotations

import struct
from operator import index

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_LEN = 16 * 2
TAG_LEN = 16
HEADER_LEN = 16
MESSAGE_TRANSPORT = 4
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1

# type (u8), 3 reserved zero bytes, receiver (u32 LE), counter (u64 LE): whitepaper 5.4.6
_HEADER = struct.Struct("<B3xIQ")
_COUNTER = struct.Struct("<Q")

Buffer = bytes | bytearray | memoryview


def checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum of `data` as big-endian 16-bit words (an odd final
    byte is padded with zero), added to `initial`, folded with end-around carry to 16 bits;
    NOT inverted. The result is 0 only when data and initial are all zero (a non-zero sum
    that is a multiple of 0xffff folds to 0xffff).

    `data` is any buffer (read-only too; a non-contiguous one is read in C order), taken as
    its raw bytes whatever its item format. `initial` is normally 0..0xffff (a previous
    partial sum); any non-negative int works, a negative one raises ValueError.
    """
    initial = index(initial)
    if initial < 0:
        raise ValueError("initial must be non-negative")
    view = memoryview(data)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    n = len(view)
    total = int.from_bytes(view, "big") if n else 0
    if n & 1:
        total <<= 8  # pad the odd final byte with zero
    total += initial
    if not total:
        return 0
    # 2**16 == 1 (mod 0xffff), so the big number and the sum of its 16-bit words agree mod 0xffff
    return total % 0xFFFF or 0xFFFF


class ChaChaRun:
    """ChaCha20-Poly1305 (RFC 8439) with one 32-byte key, sealing and opening WireGuard
    transport messages (whitepaper 5.4.6) in place, one at a time or as a run laid out at a
    fixed stride in one buffer. Nonce = 4 zero bytes || counter (u64 LE); no AAD.

    Caller misuse (a datagram outside the buffer, a negative length, a counter past 2**64-1)
    raises ValueError before anything is written; a read-only buffer raises TypeError.
    A failed tag is peer input: it is reported (False, ok[i] = 0), never raised.
    """

    def __init__(self, key: Buffer) -> None:
        raw = bytes(memoryview(key))
        if len(raw) != KEY_LEN:
            raise ValueError("a ChaCha20-Poly1305 key is 32 bytes")
        self._aead = ChaCha20Poly1305(raw)
        self._nonce = bytearray(12)

    def seal_run(self, buf: Buffer, start: int, stride: int, count: int, plain_len: int,
                 last_plain_len: int, receiver: int, counter0: int) -> None:  # fmt: skip
        """Datagram i (0 <= i < count) at d = start + i*stride: writes the 16-byte header
        (type 4, receiver u32 LE, counter0+i u64 LE) to buf[d:d+16], seals the plaintext at
        buf[d+16:d+16+L] in place (L = plain_len, last_plain_len for the last datagram) and
        writes the 16-byte tag after it, so a datagram is L + 32 bytes. Datagrams are done in
        order, so overlapping strides give the same bytes in both implementations."""
        mv = _writable(buf)
        start, stride, count = index(start), index(stride), index(count)
        plain_len, last_plain_len = index(plain_len), index(last_plain_len)
        receiver, counter0 = index(receiver), index(counter0)
        if not 0 <= receiver <= _U32_MAX:
            raise ValueError("receiver must fit in 32 bits")
        _check_counter(counter0, count)
        _check_run(len(mv), start, stride, count, plain_len, last_plain_len, HEADER_LEN + TAG_LEN)
        header, enc, nonce = _HEADER.pack_into, self._aead.encrypt_into, self._nonce
        for i in range(count):
            d = start + i * stride
            length = last_plain_len if i == count - 1 else plain_len
            header(mv, d, MESSAGE_TRANSPORT, receiver, counter0 + i)
            nonce[4:12] = mv[d + 8 : d + 16]
            body = mv[d + 16 : d + 32 + length]
            enc(nonce, body[:length], b"", body)

    def open_run(self, buf: Buffer, start: int, stride: int, count: int, cipher_len: int,
                 last_cipher_len: int, ok: bytearray | memoryview) -> int:  # fmt: skip
        """Datagram i at d = start + i*stride: header at buf[d:d+16] (counter u64 LE at d+8),
        ciphertext and tag at buf[d+16:d+16+C] (C = cipher_len, last_cipher_len for the last;
        both >= 16). For each i with ok[i] != 0, decrypts in place to buf[d+16:d+C] and
        verifies the tag; where it fails, sets ok[i] = 0 (that plaintext region then holds
        unverified bytes). ok is a writable buffer of at least count bytes. Returns how many
        datagrams are ok."""
        mv, okv = _writable(buf), _writable(ok)
        start, stride, count = index(start), index(stride), index(count)
        cipher_len, last_cipher_len = index(cipher_len), index(last_cipher_len)
        _check_run(len(mv), start, stride, count, cipher_len, last_cipher_len, HEADER_LEN)
        if min(cipher_len, last_cipher_len) < TAG_LEN:
            raise ValueError("a ciphertext holds at least its 16-byte tag")
        if len(okv) < count:
            raise ValueError("ok needs count entries")
        dec, nonce, good = self._aead.decrypt_into, self._nonce, 0
        for i in range(count):
            if not okv[i]:
                continue
            d = start + i * stride
            length = last_cipher_len if i == count - 1 else cipher_len
            nonce[4:12] = mv[d + 8 : d + 16]
            body = mv[d + 16 : d + 16 + length]
            try:
                dec(nonce, body, b"", body[: length - TAG_LEN])
            except InvalidTag:
                okv[i] = 0
                continue
            good += 1
        return good

    def seal(self, buf: Buffer, offset: int, plain_len: int, counter: int) -> None:
        """Seals one message body in place: plaintext buf[offset:offset+plain_len] becomes
        ciphertext, and the 16-byte tag goes to buf[offset+plain_len:offset+plain_len+16]."""
        mv = _writable(buf)
        offset, plain_len, counter = index(offset), index(plain_len), index(counter)
        _check_counter(counter, 1)
        _check_run(len(mv), offset, 0, 1, plain_len, plain_len, TAG_LEN)
        body = mv[offset : offset + plain_len + TAG_LEN]
        self._aead.encrypt_into(self._nonce_for(counter), body[:plain_len], b"", body)

    def open(self, buf: Buffer, offset: int, cipher_len: int, counter: int) -> bool:
        """Opens one message body in place: ciphertext and tag at buf[offset:offset+cipher_len]
        (cipher_len >= 16) become the plaintext at buf[offset:offset+cipher_len-16]. Returns
        False if the tag fails (the plaintext region then holds unverified bytes)."""
        mv = _writable(buf)
        offset, cipher_len, counter = index(offset), index(cipher_len), index(counter)
        _check_counter(counter, 1)
        _check_run(len(mv), offset, 0, 1, cipher_len, cipher_len, 0)
        if cipher_len < TAG_LEN:
            raise ValueError("a ciphertext holds at least its 16-byte tag")
        body = mv[offset : offset + cipher_len]
        try:
            self._aead.decrypt_into(self._nonce_for(counter), body, b"", body[: cipher_len - 16])
        except InvalidTag:
            return False
        return True

    def _seal_with(self, nonce: Buffer, aad: Buffer, buf: Buffer, offset: int,
                   plain_len: int) -> None:  # fmt: skip
        """Test hook for published vectors, whose nonce and AAD are not WireGuard's: like
        seal() with an explicit 12-byte nonce and associated data."""
        mv = _writable(buf)
        nonce_bytes, aad_bytes = _nonce_and_aad(nonce, aad)
        offset, plain_len = index(offset), index(plain_len)
        _check_run(len(mv), offset, 0, 1, plain_len, plain_len, TAG_LEN)
        body = mv[offset : offset + plain_len + TAG_LEN]
        self._aead.encrypt_into(nonce_bytes, body[:plain_len], aad_bytes, body)

    def _open_with(self, nonce: Buffer, aad: Buffer, buf: Buffer, offset: int,
                   cipher_len: int) -> bool:  # fmt: skip
        """Test hook for published vectors: open() with an explicit nonce and AAD."""
        mv = _writable(buf)
        nonce_bytes, aad_bytes = _nonce_and_aad(nonce, aad)
        offset, cipher_len = index(offset), index(cipher_len)
        _check_run(len(mv), offset, 0, 1, cipher_len, cipher_len, 0)
        if cipher_len < TAG_LEN:
            raise ValueError("a ciphertext holds at least its 16-byte tag")
        body = mv[offset : offset + cipher_len]
        try:
            self._aead.decrypt_into(nonce_bytes, body, aad_bytes, body[: cipher_len - 16])
        except InvalidTag:
            return False
        return True

    def _nonce_for(self, counter: int) -> bytearray:
        _COUNTER.pack_into(self._nonce, 4, counter)
        return self._nonce


def _writable(buf: Buffer) -> memoryview:
    """A flat byte view of a writable C-contiguous buffer; TypeError for anything else."""
    view = memoryview(buf)
    if view.readonly or not view.c_contiguous:
        raise TypeError("expected a writable contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _nonce_and_aad(nonce: Buffer, aad: Buffer) -> tuple[bytes, bytes]:
    nonce_bytes, aad_bytes = bytes(memoryview(nonce)), bytes(memoryview(aad))
    if len(nonce_bytes) != 12:
        raise ValueError("a ChaCha20-Poly1305 nonce is 12 bytes")
    return nonce_bytes, aad_bytes


def _check_counter(counter0: int, count: int) -> None:
    if counter0 < 0 or counter0 + max(count, 1) - 1 > _U64_MAX:
        raise ValueError("counters must fit in 64 bits")


def _check_run(buf_len: int, start: int, stride: int, count: int, body_len: int,
               last_body_len: int, overhead: int) -> None:  # fmt: skip
    """ValueError unless every datagram of the run lies inside a buffer of buf_len bytes:
    datagram i < count-1 is body_len + overhead bytes, the last one last_body_len + overhead."""
    if min(start, stride, count, body_len, last_body_len) < 0:
        raise ValueError("negative run argument")
    if not count:
        return
    size, last_size = body_len + overhead, last_body_len + overhead
    if start + (count - 1) * stride + last_size > buf_len or (
        count > 1 and start + (count - 2) * stride + size > buf_len
    ):
        raise ValueError("run falls outside the buffer")
