"""nft(8) from Debian's nftables package, run as a child process off the event loop.

The only code that runs nft. `Nft.check(text)` is `nft -c -f -` (parse and validate the
whole transaction in the kernel without committing it), `Nft.apply(text)` is `nft -f -`
(one atomic transaction: all of it or nothing). Both raise SetupError with nft's own
message. `FakeNft` records what would have run, for tests without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil

from tunneld.errors import SetupError

NFT_TIMEOUT = 10.0  # seconds for one nft run
PR_CAP_AMBIENT_RAISE = 2  # include/uapi/linux/prctl.h


class Nft:
    def __init__(self, argv0: str = "nft") -> None:
        self.argv0 = argv0

    def available(self) -> bool:
        return shutil.which(self.argv0) is not None

    async def check(self, text: str) -> None:
        await self._run(["-c", "-f", "-"], text, "check")

    async def apply(self, text: str) -> None:
        await self._run(["-f", "-"], text, "apply")

    async def _run(self, args: list[str], text: str, what: str) -> str:
        if not self.available():
            raise SetupError("nft not found: masquerade and forward need nftables "
                             "(apt-get install nftables)")  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                self.argv0, *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, preexec_fn=_keep_net_admin,
            )  # fmt: skip
        except OSError as exc:
            raise SetupError(f"nft: cannot run {self.argv0}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(text.encode()), NFT_TIMEOUT)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            message = " ".join(err.decode(errors="replace").split()) or f"exit {proc.returncode}"
            hint = " (nft needs CAP_NET_ADMIN)" if "Operation not permitted" in message else ""
            raise SetupError(f"nft {what} failed: {message}{hint}")
        return out.decode(errors="replace")


def _keep_net_admin() -> None:
    """In the child, before exec: after `[daemon] user` the daemon is not root, and exec
    would drop CAP_NET_ADMIN (capabilities(7), "Transformation of capabilities during
    execve"); put it into the inheritable and ambient sets so nft keeps it. As root,
    nothing to do."""
    if os.geteuid() == 0:
        return
    from tunneld.kernel import privileges as p

    header = p._CapHeader(p._LINUX_CAPABILITY_VERSION_3, 0)
    data = (p._CapData * 2)()
    bit = 1 << p.CAP_NET_ADMIN
    data[0].effective = data[0].permitted = data[0].inheritable = bit
    p._check(p._libc.capset(ctypes.byref(header), data), "capset")
    p._check(p._libc.prctl(p.PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, p.CAP_NET_ADMIN, 0, 0),
             "prctl(PR_CAP_AMBIENT_RAISE)")  # fmt: skip


class FakeNft:
    """Nft's methods without a kernel: `checked` and `applied` hold each text given;
    `fail` (a message) makes check and apply raise."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.checked: list[str] = []
        self.fail: str | None = None

    def available(self) -> bool:
        return True

    async def check(self, text: str) -> None:
        self.checked.append(text)
        if self.fail is not None:
            raise SetupError(f"nft check failed: {self.fail}")

    async def apply(self, text: str) -> None:
        if self.fail is not None:
            raise SetupError(f"nft apply failed: {self.fail}")
        self.applied.append(text)
