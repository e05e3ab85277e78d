"""``mixencoder train``: train a MixEncoder or a baseline from a data file.

    mixencoder train --format msmarco-triples --train ../shared/data/msmarco/triples.train.small.tsv \\
        --limit 200000 --out runs/msmarco-mixa --batch-size 16 --max-seconds 3600
    mixencoder train --format dstc7 --train dstc7/train.json --out runs/dstc7 \\
        --hard-negatives 1 --k 2 --interaction-layers 4 5 6
    mixencoder train --task nli --format mnli --train multinli_1.0_train.jsonl --out runs/mnli --max-steps 2000
    mixencoder train --format msmarco-triples --train triples.tsv --out runs/virt \\
        --model-type virt --hard-negatives 1 --teacher runs/cross/final --distillation-weight 1

``--model`` is a backbone (default: the bundled MiniLM) on which a fresh ``--model-type`` model
is built (default mixencoder), or a saved model of any kind, which keeps its own config.
``--teacher DIR`` (a saved model, typically a trained cross-encoder) with ``--distillation-weight
LAMBDA`` trains a VIRT student with ``loss + LAMBDA * distillation_loss``; the teacher is not
checkpointed, so pass the same ``--teacher`` again when re-running to resume.

The formats are those of :mod:`mixencoder.data.training_files`; dialogue contexts (ubuntu-v2,
dstc7) are cut from the left to the model's query length. Re-running the same command resumes
from ``OUT/checkpoint-latest``; the final model is written to ``OUT/final`` (load it with
:func:`mixencoder.models.load_model`). ``torchrun --nproc_per_node N -m mixencoder.training.cli
...`` trains data-parallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from mixencoder.cli import DEFAULT_MODEL_TYPE, INPUT_ERRORS, is_saved_model_dir, load_model_flag, report_input_error
from mixencoder.data.training_files import DIALOGUE_FORMATS, MATCHING_FORMATS, NLI_FORMATS

logger = logging.getLogger(__name__)

#: The model-config flags, by their destination (the config field each sets).
MODEL_CONFIG_FLAGS = (
    "k", "interaction_layers", "similarity", "strategy", "mixing", "query_max_length", "candidate_max_length",
)
#: The TrainingConfig fields the flags set (each flag's destination is the field's name).
TRAINING_CONFIG_FLAGS = (
    "task", "batch_size", "hard_negatives_per_query", "learning_rate", "warmup_ratio", "epochs", "max_steps",
    "max_seconds", "checkpoint_every", "seed", "mixed_precision", "new_parameters_lr_scale", "distillation_weight",
)


def _parser() -> argparse.ArgumentParser:
    from mixencoder.models import MODEL_TYPES

    p = argparse.ArgumentParser(
        prog="mixencoder train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", choices=("matching", "nli"), default="matching")
    p.add_argument("--train", required=True, help="training data file")
    p.add_argument("--format", required=True, choices=sorted(set(MATCHING_FORMATS) | set(NLI_FORMATS)))
    p.add_argument("--model", default=None, help="backbone name/dir or a saved model of any kind (default: bundled MiniLM)")
    p.add_argument("--model-type", choices=sorted(MODEL_TYPES), default=None,
                   help="architecture of a fresh model built on the backbone (default mixencoder); "
                   "with a saved --model it must be the saved kind")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="a saved model directory (e.g. a trained cross encoder) to distil from; the student "
                   "needs distillation_loss (--model-type virt). Not checkpointed: pass it again when resuming")
    p.add_argument("--distillation-weight", type=float, default=0.0,
                   help="lambda of the teacher-distillation term (> 0 with --teacher)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, final model)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    training = p.add_argument_group("training (TrainingConfig)")
    training.add_argument("--batch-size", type=int, default=16, help="queries per step (the paper: 64 on GPUs)")
    training.add_argument("--lr", dest="learning_rate", type=float, default=2e-5, help="peak learning rate (the paper: 1e-5 for BERT-base)")
    training.add_argument("--epochs", type=int, default=1)
    training.add_argument("--max-steps", type=int, default=None, help="total steps (overrides --epochs)")
    training.add_argument("--max-seconds", type=float, default=None, help="time budget of this invocation; re-run to continue")
    training.add_argument("--warmup-ratio", type=float, default=0.1)
    training.add_argument("--new-params-lr-scale", dest="new_parameters_lr_scale", type=float, default=1.0,
                          help="lr multiplier for parameters with no pre-trained counterpart "
                          "(gates, special tokens, scalar mixing weights, heads); default 1")
    training.add_argument("--hard-negatives", dest="hard_negatives_per_query", type=int, default=0,
                          help="hard negatives per query")
    training.add_argument("--checkpoint-every", type=int, default=100)
    training.add_argument("--seed", type=int, default=42)
    training.add_argument("--mixed-precision", choices=("auto", "bf16", "fp32"), default="auto")
    training.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    training.add_argument("--no-resume", action="store_true", help="start over even if OUT/checkpoint-latest exists")
    model = p.add_argument_group("model config (a fresh model on a backbone; a saved model keeps its own)")
    model.add_argument("--k", type=int, default=None, help="context embeddings per candidate")
    model.add_argument("--interaction-layers", type=int, nargs="+", default=None,
                       help="1-based backbone layers that interact (default: the last)")
    model.add_argument("--similarity", choices=("cosine", "dot"), default=None)
    model.add_argument("--strategy", choices=("S", "C"), default=None)
    model.add_argument("--mixing", choices=("linear", "scalar"), default=None,
                       help="how the interaction joins the pooled vectors (MixEncoderConfig.mixing)")
    model.add_argument("--query-max-length", type=int, default=None)
    model.add_argument("--candidate-max-length", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    return p


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    formats = MATCHING_FORMATS if args.task == "matching" else NLI_FORMATS
    if args.format not in formats:
        parser.error(f"--format {args.format} does not fit --task {args.task} ({', '.join(formats)})")
    if args.teacher is not None and not args.distillation_weight > 0:
        parser.error("--teacher needs --distillation-weight > 0")
    if args.teacher is None and args.distillation_weight:
        parser.error("--distillation-weight needs --teacher DIR")
    if args.distillation_weight < 0:
        parser.error("--distillation-weight must be >= 0")
    if args.task == "nli" and (args.teacher is not None or args.model_type not in (None, "mixencoder")):
        parser.error("--task nli trains a MixEncoder only (no --teacher, no --model-type)")


def model_config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model-config fields given on the command line (and the NLI head's size for --task nli)."""
    flags = vars(args)
    overrides = {name: flags[name] for name in MODEL_CONFIG_FLAGS if flags[name] is not None}
    if args.task == "nli":
        from mixencoder.data.nli import LABELS

        overrides["num_labels"] = len(LABELS)
    return overrides


def load_trainee(model: str | None, model_type: str | None, overrides: dict[str, Any]) -> Any:
    """The model to train: a saved one (its config kept; a flag that contradicts it is refused)
    or a fresh ``model_type`` on a backbone with ``overrides``.

    Raises:
        ValueError: a config flag the model's kind has not, or one a saved model contradicts.
    """
    if is_saved_model_dir(model):
        trainee = load_model_flag(model, model_type)
        saved = dataclasses.asdict(trainee.config)
        clashes = {k: v for k, v in overrides.items() if k not in saved or saved[k] != v}
        if clashes:
            raise ValueError(
                f"{model} is a saved model with a different config than {clashes}; "
                "drop those flags or start from a backbone"
            )
        return trainee
    from mixencoder.models import MODEL_TYPES

    kind = model_type or DEFAULT_MODEL_TYPE
    known = {f.name for f in dataclasses.fields(MODEL_TYPES[kind].CONFIG_CLASS)}
    foreign = sorted(k for k in overrides if k not in known)
    if foreign:
        raise ValueError(f"{foreign} are not settings of a {kind} model (its config has {sorted(known)})")
    return load_model_flag(model, kind, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run ``mixencoder train ARGS``; returns the exit code (2 for an input it cannot use)."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_flags(parser, args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        _train(args)
    except INPUT_ERRORS as e:
        return report_input_error("mixencoder train", e)
    return 0


def _train(args: argparse.Namespace) -> None:
    from mixencoder.data.dialogue import left_truncate_texts
    from mixencoder.data.training_files import read_training_examples
    from mixencoder.training import TrainingConfig, train

    # The data is read first: a malformed file fails before minutes of model loading.
    examples = read_training_examples(args.train, args.format, args.task, limit=args.limit)
    if args.teacher is not None and not is_saved_model_dir(args.teacher):
        raise ValueError(f"--teacher {args.teacher} is not a saved model directory")
    model = load_trainee(args.model, args.model_type, model_config_overrides(args))
    teacher = load_model_flag(args.teacher) if args.teacher is not None else None
    if args.format in DIALOGUE_FORMATS:
        # Room for [CLS] and [SEP] around the context.
        budget = max(1, model.config.query_max_length - 2)
        contexts = left_truncate_texts(model.tokenizer, [e.query for e in examples], budget)
        examples = [dataclasses.replace(e, query=c) for c, e in zip(contexts, examples)]
    config = TrainingConfig(**{name: vars(args)[name] for name in TRAINING_CONFIG_FLAGS})
    result = train(model, examples, config, output_dir=args.out, resume=not args.no_resume,
                   device=args.device, teacher=teacher)
    logger.info(
        "%s at step %d (%.2f steps/s); final model in %s",
        result.stopped_reason, result.global_step, result.steps_per_second, result.final_dir,
    )


if __name__ == "__main__":
    raise SystemExit(main())
