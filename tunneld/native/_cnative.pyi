# Stubs for the C extension built from _cnative.c; _fallback.py has the same API in Python
# and documents each call (units, buffer layout, exceptions).

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

def checksum(data: Buffer, initial: int = 0) -> int: ...

class ChaChaRun:
    def __init__(self, key: Buffer) -> None: ...
    def seal_run(
        self,
        buf: Buffer,
        start: int,
        stride: int,
        count: int,
        plain_len: int,
        last_plain_len: int,
        receiver: int,
        counter0: int,
    ) -> None: ...
    def open_run(
        self,
        buf: Buffer,
        start: int,
        stride: int,
        count: int,
        cipher_len: int,
        last_cipher_len: int,
        ok: Buffer,
    ) -> int: ...
    def seal(self, buf: Buffer, offset: int, plain_len: int, counter: int) -> None: ...
    def open(self, buf: Buffer, offset: int, cipher_len: int, counter: int) -> bool: ...
    def _seal_with(
        self, nonce: Buffer, aad: Buffer, buf: Buffer, offset: int, plain_len: int
    ) -> None: ...
    def _open_with(
        self, nonce: Buffer, aad: Buffer, buf: Buffer, offset: int, cipher_len: int
    ) -> bool: ...
