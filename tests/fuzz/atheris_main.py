"""Run one fuzz target under atheris (libFuzzer, coverage-guided).

    python -m tests.fuzz.atheris_main TARGET [libFuzzer flags] [CORPUS_DIR ...]

tunneld's modules are imported with atheris's coverage instrumentation, so libFuzzer's
`cov:` and `ft:` figures are tunneld's branches and features. libFuzzer writes new inputs
into the first corpus directory and a crashing input to -artifact_prefix; the seeds should
be a later (read-only) directory. `--list` prints the target names.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    import atheris

    if len(argv) < 2:
        raise SystemExit("usage: python -m tests.fuzz.atheris_main TARGET|--list [libFuzzer args]")
    with atheris.instrument_imports(include=["tunneld"]):
        from tests.fuzz import targets

        known = targets.names()  # imports every target module, and what they use, in here
    if argv[1] == "--list":
        print("\n".join(known))
        return
    one = targets.make(argv[1])
    atheris.Setup([argv[0], *argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
