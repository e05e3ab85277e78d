"""The ``mixencoder`` command: one entry point, one subcommand per job.

``mixencoder SUBCOMMAND [ARGS...]`` hands ``ARGS`` to the subcommand's own ``main(argv)``;
each subcommand module is imported only when it runs, so ``mixencoder rerank`` never imports
the web stack and ``mixencoder serve`` never imports what it does not serve.

Add a subcommand by adding one entry to :data:`SUBCOMMANDS`: ``name -> (module, help)``; the
module must define ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module with ``main(argv) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "rerank": ("mixencoder.rerank", "rerank a TREC or MS MARCO run file (python -m mixencoder.rerank)"),
    "serve": ("mixencoder.service", "HTTP rerank service (TEI, Cohere and Jina request shapes; store endpoint)"),
    "store": ("mixencoder.store.cli", "candidate store tools: `store verify PATH` checks every file of a store"),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "usage: mixencoder SUBCOMMAND [ARGS...]\n\nsubcommands:\n" + "\n".join(lines) + (
        "\n\n`mixencoder SUBCOMMAND --help` shows a subcommand's arguments.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"mixencoder: unknown subcommand {name!r}; known: {', '.join(SUBCOMMANDS)}\n\n{_usage()}")
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
