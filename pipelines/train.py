"""Trains a MixEncoder (matching with in-batch negatives, or NLI) from a data file.

Examples::

    python pipelines/train.py --task matching --format msmarco-triples \\
        --train ../shared/data/msmarco/triples.train.small.tsv --limit 200000 \\
        --out runs/msmarco-mixa --batch-size 16 --max-seconds 3600
    python pipelines/train.py --task matching --format dstc7 --train dstc7/train.json \\
        --out runs/dstc7 --hard-negatives 1 --k 2 --interaction-layers 4 5 6
    python pipelines/train.py --task nli --format mnli --train multinli_1.0_train.jsonl \\
        --out runs/mnli --max-steps 2000
    python pipelines/train.py --format msmarco-triples --train triples.tsv --out runs/virt \\
        --model-type virt --hard-negatives 1 --teacher runs/cross/final --distillation-weight 1

``--model-type`` builds a fresh baseline (``virt``, ``cross``, ...) on the backbone instead of a
MixEncoder; a saved model of any type is loaded as it is. ``--teacher DIR`` (a saved model,
typically a trained cross-encoder) with ``--distillation-weight LAMBDA`` trains a VIRT student
with ``loss + LAMBDA * distillation_loss``; the teacher is not checkpointed, so pass the same
``--teacher`` again when re-running to resume.

Formats: ``ubuntu-v2`` (train.csv; label-1 rows become pairs, label-0 rows are dropped since
training uses in-batch negatives), ``dstc7`` (JSON; each correct answer is a positive and the
other options are hard negatives), ``msmarco-triples`` (query, positive, negative TSV),
``mnli`` (jsonl/TSV, task nli) and ``pairs-jsonl``: one JSON object per line,
``{"query": ..., "positive": ..., "negatives": [...], "query_id": ..., "positive_id": ...}``
for matching (only query/positive required) or ``{"premise", "hypothesis", "label"}`` for nli.

Re-running the same command resumes from ``OUT/checkpoint-latest``; the final model is written
to ``OUT/final`` (load it with ``MixEncoder.from_pretrained``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

try:
    import mixencoder  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from mixencoder import MixEncoder
from mixencoder.models.registry import MODEL_TYPES
from mixencoder.models.registry import load_model as load_any_model
from mixencoder.training import MatchingExample, PairExample, TrainingConfig, train

logger = logging.getLogger("train")

MATCHING_FORMATS = ("ubuntu-v2", "dstc7", "msmarco-triples", "pairs-jsonl")
NLI_FORMATS = ("mnli", "pairs-jsonl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("matching", "nli"), default="matching")
    parser.add_argument("--train", required=True, help="training data file")
    parser.add_argument("--format", required=True,
                        choices=sorted(set(MATCHING_FORMATS) | set(NLI_FORMATS)))
    parser.add_argument("--model", default=None,
                        help="backbone name/dir or a saved model of any type (default: bundled "
                        "MiniLM)")
    parser.add_argument("--model-type", choices=sorted(MODEL_TYPES), default="mixencoder",
                        help="architecture of a fresh model built on the backbone (a saved "
                        "--model keeps its own); default mixencoder")
    parser.add_argument("--teacher", default=None, metavar="DIR",
                        help="a saved model directory (e.g. a trained cross encoder) to distil "
                        "from; the student needs distillation_loss (--model-type virt). Not "
                        "checkpointed: pass it again when resuming")
    parser.add_argument("--distillation-weight", type=float, default=0.0,
                        help="lambda of the teacher-distillation term (> 0 with --teacher)")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, final model)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training examples")
    # Training config.
    parser.add_argument("--batch-size", type=int, default=16,
                        help="queries per step (the paper: 64 on GPUs)")
    parser.add_argument("--lr", type=float, default=2e-5,
                        help="peak learning rate (the paper: 1e-5 for BERT-base)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="total steps (overrides --epochs)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="time budget of this invocation; re-run to continue")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--new-params-lr-scale", type=float, default=1.0,
                        help="lr multiplier for parameters with no pre-trained counterpart "
                        "(gates, special tokens, scalar mixing weights, heads); default 1")
    parser.add_argument("--hard-negatives", type=int, default=0, help="hard negatives per query")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--mixed-precision", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over even if OUT/checkpoint-latest exists")
    # Model config (only for a fresh model built on a backbone).
    parser.add_argument("--k", type=int, default=None, help="context embeddings per candidate")
    parser.add_argument("--interaction-layers", type=int, nargs="+", default=None,
                        help="1-based backbone layers that interact (default: the last)")
    parser.add_argument("--similarity", choices=("cosine", "dot"), default=None)
    parser.add_argument("--strategy", choices=("S", "C"), default=None)
    parser.add_argument("--mixing", choices=("linear", "scalar"), default=None,
                        help="how the interaction joins the pooled vectors (MixEncoderConfig.mixing)")
    parser.add_argument("--query-max-length", type=int, default=None)
    parser.add_argument("--candidate-max-length", type=int, default=None)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    formats = MATCHING_FORMATS if args.task == "matching" else NLI_FORMATS
    if args.format not in formats:
        parser.error(f"--format {args.format} does not fit --task {args.task} "
                     f"({', '.join(formats)})")
    if args.teacher is not None and not args.distillation_weight > 0:
        parser.error("--teacher needs --distillation-weight > 0")
    if args.teacher is None and args.distillation_weight:
        parser.error("--distillation-weight needs --teacher DIR")
    if args.distillation_weight < 0:
        parser.error("--distillation-weight must be >= 0")
    if args.task == "nli" and (args.teacher is not None or args.model_type != "mixencoder"):
        parser.error("--task nli trains a MixEncoder only (no --teacher, no --model-type)")
    return args


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The MixEncoderConfig fields given on the command line."""
    given = {
        "k": args.k,
        "interaction_layers": args.interaction_layers,
        "similarity": args.similarity,
        "strategy": args.strategy,
        "mixing": args.mixing,
        "query_max_length": args.query_max_length,
        "candidate_max_length": args.candidate_max_length,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.task == "nli":
        from mixencoder.data.nli import LABELS

        overrides["num_labels"] = len(LABELS)
    return overrides


def load_model(args: argparse.Namespace) -> Any:
    """A fresh model of ``--model-type`` on the backbone, or a saved one (whose config is then
    kept)."""
    overrides = model_overrides(args)
    saved = _saved_model_type(Path(args.model)) if args.model is not None else None
    if (saved or args.model_type) != "mixencoder":  # a saved or a fresh baseline
        return _load_baseline(args, saved, overrides)
    if saved is not None and args.model_type != "mixencoder":
        raise SystemExit(f"{args.model} is a saved mixencoder, not --model-type {args.model_type}")
    if saved == "mixencoder":
        model = MixEncoder.from_pretrained(args.model)
        # A saved model keeps its config: only refuse the flags that would contradict it.
        clashes = {k: v for k, v in overrides.items() if getattr(model.config, k) != v}
        if clashes:
            raise SystemExit(
                f"{args.model} is a saved MixEncoder with a different config than {clashes}; "
                "drop those flags or start from a backbone"
            )
        return model
    return MixEncoder.from_pretrained(args.model, **overrides)


def _load_baseline(args: argparse.Namespace, saved: str | None, overrides: dict[str, Any]) -> Any:
    """A saved model of another type than MixEncoder, or a fresh ``--model-type`` baseline."""
    only_mix = sorted(k for k in ("k", "interaction_layers", "strategy") if k in overrides)
    kind = saved or args.model_type
    if only_mix:
        raise SystemExit(f"{only_mix} are MixEncoder settings; a {kind} model has none")
    if saved is not None:
        if args.model_type not in ("mixencoder", saved):
            raise SystemExit(f"{args.model} is a saved {saved}, not --model-type {args.model_type}")
        model = load_any_model(args.model)
        clashes = {k: v for k, v in overrides.items() if getattr(model.config, k, v) != v}
        if clashes:
            raise SystemExit(
                f"{args.model} is a saved {saved} with a different config than {clashes}; "
                "drop those flags or start from a backbone"
            )
        return model
    return load_any_model(args.model, model_type=args.model_type, **overrides)


def load_teacher(args: argparse.Namespace) -> Any:
    """The saved ``--teacher`` model, or ``None``."""
    if args.teacher is None:
        return None
    if _saved_model_type(Path(args.teacher)) is None:
        raise SystemExit(f"--teacher {args.teacher} is not a saved model directory")
    return load_any_model(args.teacher)


def _saved_model_type(path: Path) -> str | None:
    """The ``model_type`` of a saved model directory, or ``None`` (a backbone, a hub name)."""
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("model_type") == "mixencoder":
        return "mixencoder"
    if "format_version" in data and "config" in data and data.get("model_type") in MODEL_TYPES:
        return data["model_type"]
    return None


def _is_saved_mixencoder(path: Path) -> bool:
    return _saved_model_type(path) == "mixencoder"


# ---------------------------------------------------------------------- data glue


def left_truncate_texts(tokenizer: Any, texts: list[str], max_tokens: int) -> list[str]:
    """Cuts each text from the **left** to about ``max_tokens`` tokens, keeping the latest ones.

    Dialogue contexts end with the turns that decide the response, but the model's tokenizer
    truncates from the right; cutting the string here (at a token's character offset, so no
    text is re-spelt) makes the model see the end of the context.
    """
    if not getattr(tokenizer, "is_fast", False):
        from mixencoder.data.dialogue import join_context

        # Slow tokenizers have no offsets: fall back to ~4 characters per token.
        return [join_context([t], max_chars=4 * max_tokens) for t in texts]
    # verbose=False: these texts are meant to be longer than the model limit before the cut.
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        if len(offsets) <= max_tokens:
            out.append(text)
        else:
            out.append(text[offsets[len(offsets) - max_tokens][0] :])
    return out


def read_examples(args: argparse.Namespace, model: MixEncoder) -> list[Any]:
    """Reads the training file into MatchingExample / PairExample (first ``--limit`` only)."""
    path = args.train
    fmt = args.format
    if fmt == "pairs-jsonl":
        stream: Iterable[Any] = _read_pairs_jsonl(path, args.task)
    elif fmt == "msmarco-triples":
        from mixencoder.data.triples import read_triples

        stream = (MatchingExample(t.query, t.positive, (t.negative,)) for t in read_triples(path))
    elif fmt == "ubuntu-v2":
        from mixencoder.data.dialogue import read_ubuntu_v2_train

        stream = _ubuntu_examples(read_ubuntu_v2_train(path))
    elif fmt == "dstc7":
        from mixencoder.data.dialogue import read_dstc7

        stream = _dstc7_examples(read_dstc7(path))
    elif fmt == "mnli":
        from mixencoder.data.nli import read_mnli

        pairs, skipped = read_mnli(path)
        logger.info("MNLI: %d labelled pairs, %d without gold label skipped", len(pairs), skipped)
        stream = (PairExample(p.premise, p.hypothesis, p.label_id) for p in pairs)
    else:  # argparse already restricts the choices
        raise ValueError(f"unknown format {fmt!r}")
    examples = list(itertools.islice(stream, args.limit) if args.limit else stream)
    if fmt in ("ubuntu-v2", "dstc7"):
        # Budget for [CLS] and [SEP] around the context.
        budget = max(1, model.config.query_max_length - 2)
        contexts = left_truncate_texts(model.tokenizer, [e.query for e in examples], budget)
        examples = [
            MatchingExample(c, e.positive, e.negatives, e.query_id, e.positive_id)
            for c, e in zip(contexts, examples)
        ]
    logger.info("Read %d %s examples from %s", len(examples), fmt, path)
    return examples


def _ubuntu_examples(rows: Iterable[Any]) -> Iterator[MatchingExample]:
    dropped = 0
    for row in rows:
        if row.label != 1:
            dropped += 1  # a random response; in-batch negatives replace it
            continue
        yield MatchingExample(" ".join(row.context), row.response)
    logger.info("Ubuntu V2: dropped %d label-0 rows (training uses in-batch negatives)", dropped)


def _dstc7_examples(examples: Iterable[Any]) -> Iterator[MatchingExample]:
    for ex in examples:
        context = " ".join(ex.context)
        positives = set(ex.positive_ids)
        negatives = tuple(t for t, c in zip(ex.candidates, ex.candidate_ids) if c not in positives)
        for text, cid in zip(ex.candidates, ex.candidate_ids):
            if cid in positives:
                yield MatchingExample(context, text, negatives, query_id=ex.example_id,
                                      positive_id=f"{ex.example_id}:{cid}")


def _read_pairs_jsonl(path: str, task: str) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
                if task == "matching":
                    yield MatchingExample(
                        obj["query"], obj["positive"], tuple(obj.get("negatives", ())),
                        query_id=_opt_str(obj.get("query_id")),
                        positive_id=_opt_str(obj.get("positive_id")),
                    )
                else:
                    yield PairExample(obj["premise"], obj["hypothesis"], obj["label"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: bad {task} record: {e!r}") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    """Runs the pipeline; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = load_model(args)
    teacher = load_teacher(args)
    examples = read_examples(args, model)
    config = TrainingConfig(
        task=args.task,
        batch_size=args.batch_size,
        hard_negatives_per_query=args.hard_negatives,
        learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_seconds=args.max_seconds,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        new_parameters_lr_scale=args.new_params_lr_scale,
        distillation_weight=args.distillation_weight,
    )
    result = train(model, examples, config, output_dir=args.out, resume=not args.no_resume,
                   device=args.device, teacher=teacher)
    logger.info(
        "%s at step %d (%.2f steps/s); final model in %s",
        result.stopped_reason, result.global_step, result.steps_per_second, result.final_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
