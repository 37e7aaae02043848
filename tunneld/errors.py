"""Errors that reach the user: each names the thing and the fix."""

from __future__ import annotations


class TunneldError(Exception):
    """Base for errors shown to the user as one line, without a traceback."""

    exit_code = 1


class ConfigError(TunneldError):
    """A config file is invalid: names the file, the key path and the reason."""

    exit_code = 2

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


class SetupError(TunneldError):
    """The daemon cannot set something up (device, socket, route, registry)."""

    exit_code = 1


class UsageError(TunneldError):
    """Bad command line."""

    exit_code = 2
