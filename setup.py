"""Builds the optional C helper tunneld.native._cnative (metadata lives in pyproject.toml).

The extension needs a C compiler, Python's headers and OpenSSL's libcrypto headers (Debian:
gcc, python3-dev, libssl-dev). Without them the install still succeeds, with a warning, and
tunneld.native uses its pure-Python fallback.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


class optional_build_ext(build_ext):  # noqa: N801 (setuptools command naming)
    """build_ext that turns a failed build of an optional extension into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as exc:  # no compiler at all fails before any extension
            self._warn_fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            if not ext.optional:
                raise
            self._warn_fallback(exc)

    def _warn_fallback(self, exc: BaseException) -> None:
        self.warn(
            f"tunneld: C helper not built ({exc}); tunneld.native will use its pure-Python "
            "fallback. Install gcc, python3-dev and libssl-dev, then reinstall, for the fast path."
        )


setup(
    ext_modules=[
        Extension(
            "tunneld.native._cnative",
            sources=["tunneld/native/_cnative.c", "tunneld/native/_chacharun.c"],
            depends=["tunneld/native/_cnative.h"],
            libraries=["crypto"],
            extra_compile_args=[
                "-std=c11",
                "-O3",
                "-Wall",
                "-Wextra",
                "-Wno-missing-field-initializers",
                "-fvisibility=hidden",  # only PyInit__cnative is exported
            ],
            optional=True,
        )
    ],
    cmdclass={"build_ext": optional_build_ext},
)
