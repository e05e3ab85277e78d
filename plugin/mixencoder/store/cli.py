"""``mixencoder store``: tools for candidate stores on disk.

``mixencoder store verify PATH [PATH ...]`` reads every file of each store and prints one line
per problem, naming the file (see :func:`mixencoder.store.verify.verify_store`); the exit code
is 0 when every store is sound, 1 when a problem was found, 2 for a path that is not a store.
"""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixencoder store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify",
        help="read every file of a store and report each problem by file (like Lucene's CheckIndex)",
    )
    verify.add_argument("paths", nargs="+", metavar="PATH", help="store directory")
    verify.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mixencoder store ARGS``; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    from .verify import verify_store

    code = 0
    for path in args.paths:
        try:
            report = verify_store(path)
        except FileNotFoundError as e:
            sys.stderr.write(f"mixencoder store verify: {e}\n")
            code = max(code, 2)
            continue
        sys.stdout.write(report.format() + "\n")
        if not report.ok:
            code = max(code, 1)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
