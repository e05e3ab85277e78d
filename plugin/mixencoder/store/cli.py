"""``mixencoder store``: build, check and compare candidate stores on disk.

    mixencoder store build --corpus ../shared/data/vaswani/doc-text.trec --out work/vaswani/store
    mixencoder store build ... --ray --workers 2          # local Ray, 2 model actors
    mixencoder store build ... --ray auto --workers 8     # an existing Ray cluster
    mixencoder store verify work/vaswani/store
    mixencoder store compare work/vaswani/store work/vaswani/store-ray [--atol 1e-2]

``build`` encodes a corpus (a Pyserini JsonCollection, an MS MARCO collection.tsv or TREC <DOC>
files) with a model and prints the build's figures as JSON; an interrupted build continues with
``--mode resume``, with or without ``--ray`` (both builders write the same shards). With ``--ray``
the documents are encoded by ``--workers`` model actors on Ray Data (one GPU each where the
cluster has GPUs); without ADDRESS a local Ray instance is started and stopped by the job.

``verify`` reads every file of each store and prints one line per problem, naming the file
(:func:`mixencoder.store.verify.verify_store`): exit 0 when every store is sound, 1 when a problem
was found, 2 for a path that is not a store.

``compare`` checks that two stores hold the same docids with the same vectors to ``--atol``
(:func:`mixencoder.store.compare.compare_stores`): exit 0 when they do, 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mixencoder.cli import INPUT_ERRORS, add_inference_flags, load_model_flag, report_input_error

from .compare import DEFAULT_ATOL

#: ``--ray`` without an address: start a local Ray instance for the build.
LOCAL_RAY = "local"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixencoder store", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="encode a corpus with a model into a new store")
    build.add_argument("--corpus", required=True, help="corpus file or directory")
    build.add_argument("--out", required=True, help="store directory")
    build.add_argument("--model", default=None, help="saved model directory (any kind) or a backbone for a fresh MixEncoder (default: bundled MiniLM)")
    add_inference_flags(build)
    build.add_argument("--mode", choices=["create", "overwrite", "resume"], default="create")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--shard-size", type=int, default=10_000)
    build.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    build.add_argument(
        "--ray", nargs="?", const=LOCAL_RAY, default=None, metavar="ADDRESS",
        help="encode on Ray Data: a local instance, or the cluster at ADDRESS (e.g. auto)",
    )
    build.add_argument("--workers", type=int, default=2, help="model actors with --ray (default 2)")
    build.add_argument("--block-size", type=int, default=512, help="documents per Ray Data block")

    verify = sub.add_parser(
        "verify", help="read every file of a store and report each problem by file (like Lucene's CheckIndex)"
    )
    verify.add_argument("paths", nargs="+", metavar="PATH", help="store directory")
    verify.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO")

    compare = sub.add_parser("compare", help="check that two stores hold the same candidates (to a tolerance)")
    compare.add_argument("a", metavar="STORE_A")
    compare.add_argument("b", metavar="STORE_B")
    compare.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"largest absolute difference allowed (default {DEFAULT_ATOL})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mixencoder store ARGS``; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        try:
            return _build(args)
        except INPUT_ERRORS as e:
            return report_input_error("mixencoder store build", e)
    if args.command == "compare":
        try:
            return _compare(args)
        except INPUT_ERRORS as e:
            return report_input_error("mixencoder store compare", e)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return _verify(args.paths)


def _build(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from .distributed import build_store_distributed

        store = build_store_distributed(
            args.out, args.model, args.corpus, workers=args.workers,
            address=None if args.ray == LOCAL_RAY else args.ray, batch_size=args.batch_size,
            block_size=args.block_size, shard_size=args.shard_size, dtype=args.dtype, mode=args.mode,
        )
    else:
        from mixencoder.data.corpus import read_corpus

        from .candidate_store import CandidateStore

        store = CandidateStore.build(
            args.out, load_model_flag(args.model, candidate_layout=args.candidate_layout, quantization=args.quantization), read_corpus(args.corpus), batch_size=args.batch_size,
            mode=args.mode, shard_size=args.shard_size, dtype=args.dtype,
        )
    stats = {
        **store.last_build_stats,
        "builder": "ray" if args.ray is not None else "single-process",
        "count": len(store),
        "bytes_per_candidate": store.bytes_per_candidate(),
    }
    print(json.dumps(stats, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .candidate_store import CandidateStore
    from .compare import compare_stores, same_candidates

    result = compare_stores(CandidateStore.open(args.a), CandidateStore.open(args.b))
    for key, value in result.items():
        print(f"{key}: {value}")
    same = same_candidates(result, args.atol)
    print("SAME (within --atol)" if same else "DIFFERENT")
    return 0 if same else 1


def _verify(paths: list[str]) -> int:
    from .verify import verify_store

    code = 0
    for path in paths:
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
