"""The ``mixencoder`` command: one entry point, one subcommand per job.

``mixencoder SUBCOMMAND [ARGS...]`` hands ``ARGS`` to the subcommand's own ``main(argv)``;
each subcommand module is imported only when it runs, so ``mixencoder rerank`` never imports
the web stack and ``mixencoder serve`` never imports the trainer.

Every subcommand is thin in Pyserini's manner: parse the flags, make one library call, write
the result. Add one by adding an entry to :data:`SUBCOMMANDS`: ``name -> (module, help)``; the
module must define ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

#: name -> (module with ``main(argv) -> int``, one-line help), in the order a job runs them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "index": ("mixencoder.first_stage.cli", "build a BM25 (Lucene) index with Pyserini; optionally write a BM25 run"),
    "store": ("mixencoder.store.cli", "candidate stores: `store build`, `store verify`, `store compare`"),
    "train": ("mixencoder.training.cli", "train a MixEncoder or a baseline from a data file"),
    "rerank": ("mixencoder.rerank", "rerank a TREC or MS MARCO run file (also python -m mixencoder.rerank)"),
    "eval": ("mixencoder.experiment.cli", "run an experiment: a task (msmarco, trec, ubuntu, dstc7, mnli) or --config FILE"),
    "serve": ("mixencoder.service", "HTTP rerank service (TEI, Cohere and Jina request shapes; store endpoint)"),
}

#: What ``--model`` builds on a backbone (a directory that is not a saved model, a hub name, or
#: nothing for the bundled MiniLM) when no ``--model-type`` says otherwise.
DEFAULT_MODEL_TYPE = "mixencoder"


def load_model_flag(
    model: str | os.PathLike | None,
    model_type: str | None = None,
    *,
    candidate_layout: str | None = None,
    quantization: str | None = None,
    **config: Any,
) -> Any:
    """The model a ``--model`` flag names: a saved model of any kind (its ``config.json`` says
    which), or a fresh ``model_type`` (default :data:`DEFAULT_MODEL_TYPE`) on a backbone; then
    ``candidate_layout`` / ``quantization`` (see :func:`add_inference_flags`) if given.

    ``model_type`` given with a saved model must match it; ``config`` fields apply to a fresh model.
    Raises ``ValueError`` (from :func:`mixencoder.models.load_model`) on a mismatch, or for an
    inference option the model does not have.
    """
    from .models import load_model

    if model_type is None and not is_saved_model_dir(model):
        model_type = DEFAULT_MODEL_TYPE
    loaded = load_model(model, model_type=model_type, **config)
    return loaded.with_inference_options(candidate_layout=candidate_layout, quantization=quantization)


def add_inference_flags(parser: Any) -> None:
    """``--quantization`` and ``--candidate-layout``: how a MixEncoder scores and what its store
    holds. Both enter the candidate fingerprint, so a store and the model serving it must agree."""
    parser.add_argument("--quantization", choices=("none", "int8"), default=None,
                        help="int8: int8 linear layers on CPU (~1.8x faster scoring); the store must be built with it too")
    parser.add_argument("--candidate-layout", choices=("embeddings", "precomputed"), default=None,
                        help="precomputed: the store also holds the first interaction layer's projections (3x bytes)")


def is_saved_model_dir(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a directory written by a model's ``save_pretrained`` (not a backbone)."""
    from .models.persistence import is_saved_model, read_config

    if path is None:
        return False
    data = read_config(path)
    return data is not None and is_saved_model(data)


#: What a library call raises for bad input (a missing file, a malformed line, a store of another
#: model): a subcommand reports it in one line and exits 2 rather than printing a traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, KeyError)


def report_input_error(command: str, error: BaseException) -> int:
    """Write ``command: error`` to stderr; return exit code 2."""
    # str(KeyError) wraps the message in quotes; its argument is the message.
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    sys.stderr.write(f"{command}: {message}\n")
    return 2


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
