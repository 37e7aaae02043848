"""`tunneld/proto/` stays sans-IO: no module under it imports an I/O or clock module.

STYLE.md rule 1 and issue 2 acceptance 8. The checker walks the AST, so
`import os.path`, `from os import path`, `import socket as s` and
`__import__("time")`/`importlib.import_module("time")` with a literal name are
all caught; the self-tests below prove the checker can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = frozenset({"asyncio", "socket", "os", "time", "random", "fcntl", "pyroute2"})
PROTO = Path(__file__).resolve().parents[2] / "tunneld" / "proto"


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """'line: module' for every forbidden import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names = [arg.value]
        found += [f"{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def proto_modules() -> list[Path]:
    return sorted(PROTO.rglob("*.py"))


def test_proto_tree_is_found() -> None:
    names = {p.name for p in proto_modules()}
    assert {"vxlan.py", "fdb.py", "routing.py", "frames.py", "counters.py"} <= names


@pytest.mark.parametrize("path", proto_modules(), ids=lambda p: str(p.relative_to(PROTO)))
def test_proto_module_is_pure(path: Path) -> None:
    assert forbidden_imports(path.read_text(), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import socket as s",
        "from os import path",
        "from os.path import join",
        "import json, time",
        "from asyncio import get_event_loop",
        "import pyroute2.netlink",
        "def f():\n    import random\n",
        "try:\n    import fcntl\nexcept ImportError:\n    pass\n",
        "__import__('time')",
        "import importlib\nimportlib.import_module('socket')",
    ],
)
def test_checker_catches(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import struct, zlib, ipaddress",
        "from enum import IntEnum",
        "from tunneld.proto.fdb import Fdb",
        "from . import counters",
        "from .os import thing",  # relative: a sibling module that happens to be named os
        "import osmosis",
        "import timeit_helpers",
        "x = 'import os'",
    ],
)
def test_checker_allows(source: str) -> None:
    assert forbidden_imports(source) == []
