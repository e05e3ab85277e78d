"""Response selection on the Ubuntu-IRC derived set (Ubuntu Dialogue Corpus V2 CSV layout).

Each ``valid.csv`` example is a dialogue context with 10 candidate responses (the ground truth
and 9 random replies of the same split); systems rank the 10 and are scored with ir-measures:
``R@1``, ``R@2``, ``R@5`` (one relevant candidate, so R@k is the usual R10@k) and ``RR``.
Report the figures as "Ubuntu-IRC derived", never as the official benchmark.

Usage (from the project root)::

    python eval/run_ubuntu.py                                  # every default below
    python eval/run_ubuntu.py --out runs/ubuntu-b --interaction-layers -3 -2 -1 --budget 12m
    python eval/run_ubuntu.py --model work/cache/train/ubuntu-mixencoder-.../final \\
        --systems mixencoder                                   # evaluate a saved model only
    python eval/run_ubuntu.py --limit-train 2000 --limit-eval 200 --budget 30steps \\
        --out runs/ubuntu-quick                                # a quick look
    python eval/run_ubuntu.py --folds 5                        # 5-fold CV on valid.csv itself

Systems (``--systems``, default all):

* ``bm25``: BM25 over each example's candidates (k1=0.9, b=0.4), implemented here in pure
  Python. Term statistics (document frequencies, average length) come from the training split's
  distinct responses (every ``Utterance`` of ``train.csv``, both labels); the query is the whole
  context. Tokenisation: lowercase, then ``\\w+`` runs (no stemming, no stopword list;
  ``__user__`` nick masks stay one token with a low idf). idf is Lucene's
  ``ln(1 + (N - df + 0.5) / (df + 0.5))``; a query term that occurs ``n`` times counts ``n``
  times, as in a Lucene bag-of-words query. With ``--folds K`` the statistics come from the
  candidate texts of the K-1 training folds.
* ``dual-zeroshot``: :class:`mixencoder.models.DualEncoder` over the backbone (bundled
  all-MiniLM-L6-v2): mean-pooled cosine, no training.
* ``mixencoder-zeroshot``: a fresh MixEncoder with ``pooled_residual=True``; its mixing weights
  start at 0, so it must score exactly like ``dual-zeroshot`` (a sanity check of the pipeline).
* ``mixencoder``: the MixEncoder trained on ``train.csv`` (label-1 rows as (context, response)
  pairs with in-batch negatives; label-0 rows are dropped), or the ``--model`` given.

* ``SYSTEM+bm25`` / ``SYSTEM+rrf`` beside every system when ``bm25`` runs (``--no-fusion``
  leaves them out): fused with BM25's scores (:mod:`mixencoder.fusion`), interpolation alpha
  cross-fitted on ``--fusion-measure`` (default RR) over 5 folds of the evaluated examples (the
  CV folds with ``--folds``), and RRF with k=60.

Dialogue contexts are joined oldest turn first and truncated from the **left** to
``query_max_length - 2`` tokens of the model's tokenizer (the latest turns decide the response;
the tokenizer itself would cut the end). Candidates are cut by the tokenizer at
``candidate_max_length`` tokens (64 covers ~97% of the responses here: their token lengths are
15 / 36 / 46 / 81 at the 50th / 90th / 95th / 99th percentile).

Model defaults and why: ``query_max_length=256`` (the authors' code; the contexts' token
lengths are 86 / 202 / 239 at the 50th / 90th / 95th percentile, and for the zero-shot dual
keeping the latest 256 tokens beat the latest 32 / 64 / 128 and the first 32: R@1 0.504 vs
0.480 / 0.497 / 0.492 / 0.422), ``candidate_max_length=64``, ``k=1``, ``pooled_residual=True``,
``--lr 5e-5``, batch 16 and **one interaction layer, the last** (MixEncoder-a). With the first
design of the pooled residual (``mixing="scalar"``, session 1) the interaction layers got no
gradient to speak of and the trained MixEncoder-b scored like its own backbone as a dual
encoder (R@1 0.5815 against 0.5810). With the zero-initialised mixing maps (``mixing="linear"``,
the default now) the interaction does train: after 240 steps it adds R@1 +0.0069 (SE 0.0044)
and RR +0.0050 (SE 0.0025) over the same weights with it switched off (``--ablate-interaction``,
full validation set). One layer gave the same quality (session 1) and costs what the dual costs
online, while three cost ~1.5x per query, hence the default; ``--interaction-layers -3 -2 -1``
is the paper's MixEncoder-b.

Evaluation details: qrels and runs come from ``to_qrels_and_candidates`` with a docid salt
(``--docid-salt``), so docid order (the tie-breaker) says nothing about a candidate's position
and a system that ties cannot look better than it is. The candidate store holds each distinct
candidate text once (the 20,240 candidates of valid.csv are 1,942 distinct texts); a
candidate's score depends only on its text, so duplicates get the same score. Neural systems
rerank through the product's Reranker and CandidateStore (``eval/common.py``); ``ms_per_query``
is the online time per example (query encoding, store gather, scoring), ``store_bytes`` the size
of the deduplicated store on disk.

Training budget: ``--budget 10m`` (default) is a wall-clock cap; the learning-rate schedule (10% warm-up,
linear decay) is planned over ``budget / --est-step-seconds`` steps so that it decays within the
budget (a pure time budget would plan the schedule over 1000 epochs and never leave warm-up).
``--budget 500steps`` trains exactly 500 steps. Trained models and stores are cached under
``--cache`` and reused while inputs and settings are unchanged; an interrupted training resumes.

Runtime (2 CPU cores shared with other jobs, load 5-12): the default run took 21 min (10 min
training reached 71 of the 120 planned steps; ~4 min per neural system to rerank the 2,024
examples one query at a time; BM25 under a second). An earlier run with a 12m budget and three
interaction layers took 28.6 min under heavier load, hence the 10m default. The scripts set
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: with other jobs on the cores,
spinning OpenMP threads made training steps 3-5x slower.

Options beyond the shared contract (see ``--help``): ``--limit-train N`` (first N rows of the
training file), ``--limit-eval N`` (first N evaluation examples), ``--lr``, ``--k``,
``--interaction-layers`` (negative numbers count from the last layer), ``--query-max-length``,
``--candidate-max-length``, ``--hard-negatives``, ``--est-step-seconds``, ``--systems``,
``--docid-salt``, ``--eval-file``, ``--train-file``.

Outputs: ``OUT/metrics.json`` ({system: {measure: value}}), ``OUT/per_query.json``,
``OUT/runs/<system>.trec``, ``OUT/notes.json`` (settings, training info, timings, paired
differences).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning
# threads made training steps 3-5x slower (set before torch is imported; an explicit
# OMP_WAIT_POLICY in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    BASELINE_SYSTEMS, Results, plan_budget, rerank_queries, setup_logging, store_cached, system_config,
    train_system,
)

from mixencoder import DualEncoder, MixEncoder  # noqa: E402
from mixencoder.data import kfold_split, read_ubuntu_v2_eval, read_ubuntu_v2_train, to_qrels_and_candidates  # noqa: E402
from mixencoder.data.dialogue import ResponseExample  # noqa: E402
from mixencoder.training import MatchingExample  # noqa: E402

logger = logging.getLogger("eval")

SYSTEMS = ("bm25", "dual-zeroshot", "mixencoder-zeroshot", "mixencoder")
UBUNTU_MEASURES = ("R@1", "R@2", "R@5", "RR")
#: The paired differences printed by the response-selection scripts.
COMPARISONS = [
    ("mixencoder", "dual-zeroshot", "R@1"),
    ("mixencoder", "dual-zeroshot", "RR"),
    ("mixencoder", "bm25", "R@1"),
    ("mixencoder", "bm25", "RR"),
    ("mixencoder-zeroshot", "dual-zeroshot", "RR"),
]


# ---------------------------------------------------------------------- arguments


def add_dialogue_args(
    p: argparse.ArgumentParser,
    *,
    eval_file: str,
    train_file: str,
    lr: float,
    layers: Sequence[int],
    est_step_seconds: float,
) -> argparse.ArgumentParser:
    """The options shared by the response-selection scripts (beyond eval/common.py's)."""
    p.add_argument("--eval-file", default=eval_file, help=f"file in --data-dir (default {eval_file})")
    p.add_argument("--train-file", default=train_file, help=f"file in --train-dir (default {train_file})")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training records")
    p.add_argument("--limit-eval", type=int, default=None, help="evaluate only the first N examples")
    p.add_argument(
        "--systems", nargs="+", choices=SYSTEMS + BASELINE_SYSTEMS, default=list(SYSTEMS), metavar="SYSTEM",
        help=f"default: {' '.join(SYSTEMS)}; also trainable: {' '.join(BASELINE_SYSTEMS)} (the paper's "
        "baselines and MixEncoder variants, trained exactly like mixencoder)",
    )
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--k", type=int, default=1, help="context embeddings per candidate (default 1)")
    p.add_argument(
        "--interaction-layers", type=int, nargs="+", default=list(layers),
        help="1-based backbone layers that interact; negative numbers count from the end "
        f"(-1 = last); default {' '.join(map(str, layers))}",
    )
    p.add_argument("--query-max-length", type=int, default=256, help="context tokens (default 256)")
    p.add_argument("--candidate-max-length", type=int, default=64, help="response tokens (default 64)")
    p.add_argument("--hard-negatives", type=int, default=0, help="hard negatives per query (default 0)")
    p.add_argument(
        "--est-step-seconds", type=float, default=est_step_seconds,
        help="seconds per training step assumed to plan the schedule of a time budget "
        f"(default {est_step_seconds:g}, measured on 2 CPU cores)",
    )
    p.add_argument("--docid-salt", default="ubuntu-irc-eval", help="salt of the candidate docids")
    p.add_argument(
        "--detach-interaction", action="store_true",
        help="train MixEncoders with interaction_trains_backbone=False (the backbone learns from "
        "the pooled vectors only; the interaction learns on top)",
    )
    p.add_argument("--fusion-measure", default="RR",
                   help="measure the fused systems' alpha is fitted on, over the other folds' examples (default RR)")
    p.add_argument("--no-fusion", action="store_true",
                   help="leave out the SYSTEM+bm25 (interpolation) and SYSTEM+rrf rows")
    p.add_argument(
        "--ablate-interaction", action="store_true",
        help="also evaluate each trained pooled-residual MixEncoder with its interaction switched "
        "off (its own fine-tuned backbone as a mean-pooled dual encoder), as SYSTEM-pooled",
    )
    return p


def resolve_path(directory: Path, name: str) -> Path:
    """``directory / name``, or ``directory`` itself when it names a file."""
    return directory if directory.is_file() else directory / name


def resolve_layers(spec: Sequence[int] | None, backbone: str | None) -> list[int] | None:
    """Interaction layers as 1-based numbers; negative entries count from the backbone's end."""
    if not spec:
        return None
    if all(j > 0 for j in spec):
        return sorted(spec)
    from transformers import AutoConfig

    from mixencoder.models.backbone import default_backbone_path

    depth = AutoConfig.from_pretrained(str(backbone or default_backbone_path())).num_hidden_layers
    layers = sorted(j if j > 0 else depth + 1 + j for j in spec)
    if any(j < 1 for j in layers):
        raise SystemExit(f"--interaction-layers {list(spec)}: the backbone has {depth} layers")
    return layers


def fresh_model_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The MixEncoder config of fresh models from the shared dialogue/NLI options."""
    return {
        "k": args.k,
        "interaction_layers": resolve_layers(args.interaction_layers, args.backbone),
        "query_max_length": args.query_max_length,
        "candidate_max_length": args.candidate_max_length,
        "pooled_residual": True,
        # --detach-interaction belongs to the response-selection options; run_mnli lacks it.
        "interaction_trains_backbone": not getattr(args, "detach_interaction", False),
        **extra,
    }


# ---------------------------------------------------------------------- text helpers


def left_truncate_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Cuts each text from the **left** to ``max_tokens`` tokens, keeping the latest ones.

    The same approach as pipelines/train.py: the string is cut at a token's character offset,
    so no text is re-spelt, and the model's (right-)truncating tokenizer then sees the end of
    the context.
    """
    texts = list(texts)
    if not texts:
        return []
    if not getattr(tokenizer, "is_fast", False):
        from mixencoder.data import join_context

        return [join_context([t], max_chars=4 * max_tokens) for t in texts]
    out: list[str] = []
    for start in range(0, len(texts), 4096):
        chunk = texts[start : start + 4096]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, offsets in zip(chunk, enc["offset_mapping"]):
            out.append(text if len(offsets) <= max_tokens else text[offsets[len(offsets) - max_tokens][0] :])
    return out


def text_id(text: str) -> str:
    """The store docid of a candidate text (one store entry per distinct text)."""
    return "t" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


_TOKEN_RE = re.compile(r"\w+")


def bm25_tokens(text: str) -> list[str]:
    """BM25's tokenisation: lowercase, ``\\w+`` runs."""
    return _TOKEN_RE.findall(text.lower())


class BM25:
    """Okapi BM25 with term statistics from a fixed collection (Lucene's idf)."""

    def __init__(self, collection: Iterable[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self.df: Counter[str] = Counter()
        self.n = 0
        total = 0
        for text in collection:
            tokens = bm25_tokens(text)
            self.n += 1
            total += len(tokens)
            self.df.update(set(tokens))
        if self.n == 0:
            raise ValueError("BM25 needs a non-empty collection for its term statistics")
        self.avgdl = total / self.n
        self._idf: dict[str, float] = {}

    def idf(self, term: str) -> float:
        value = self._idf.get(term)
        if value is None:
            df = self.df.get(term, 0)
            value = self._idf[term] = math.log(1 + (self.n - df + 0.5) / (df + 0.5))
        return value

    def score(self, query: Counter[str], doc_tokens: Sequence[str]) -> float:
        tf = Counter(doc_tokens)
        norm = self.k1 * (1 - self.b + self.b * len(doc_tokens) / self.avgdl)
        return sum(
            qtf * self.idf(t) * tf[t] * (self.k1 + 1) / (tf[t] + norm)
            for t, qtf in query.items()
            if t in tf
        )


# ---------------------------------------------------------------------- the evaluation


@dataclass
class Fold:
    """One train/test split: what to train on and which queries to evaluate."""

    name: str
    test_qids: list[str]
    train_examples: list[MatchingExample]  # contexts not yet truncated
    bm25_collection: list[str]


def matching_examples_from(examples: Iterable[ResponseExample], hard_negatives: int) -> list[MatchingExample]:
    """(context, positive) pairs of response-selection examples; the other candidates become
    hard negatives only when they are used (``hard_negatives > 0``)."""
    out = []
    for ex in examples:
        positives = set(ex.positive_ids)
        negatives = tuple(t for t, c in zip(ex.candidates, ex.candidate_ids) if c not in positives)
        for text, cid in zip(ex.candidates, ex.candidate_ids):
            if cid in positives:
                out.append(
                    MatchingExample(
                        " ".join(ex.context), text, negatives if hard_negatives else (),
                        query_id=ex.example_id, positive_id=f"{ex.example_id}:{cid}",
                    )
                )
    return out


def cv_folds(
    examples: Sequence[ResponseExample], k: int, seed: int, hard_negatives: int
) -> list[Fold]:
    """Query-level K-fold CV on the evaluation examples themselves."""
    by_id = {ex.example_id: ex for ex in examples}
    folds = []
    for i, (train_ids, test_ids) in enumerate(kfold_split(list(by_id), k, seed)):
        train = [by_id[q] for q in train_ids]
        collection = sorted({t for ex in train for t in ex.candidates})
        folds.append(Fold(f"fold{i}", test_ids, matching_examples_from(train, hard_negatives), collection))
    return folds


def run_response_selection(
    args: argparse.Namespace,
    *,
    task: str,
    eval_examples: Sequence[ResponseExample],
    load_train: Callable[[], tuple[list[MatchingExample], list[str]]],
    measures: Sequence[str],
    comparisons: Sequence[tuple[str, str, str]],
) -> dict[str, dict[str, float]]:
    """Evaluates every requested system on ``eval_examples`` and writes the outputs.

    ``load_train()`` returns the training examples (untruncated contexts) and the BM25
    collection; it is only called when a system needs it and ``--folds`` is not given.
    """
    wall = time.perf_counter()
    timings: dict[str, float] = {}
    qrels, raw_queries, candidates = to_qrels_and_candidates(eval_examples, docid_salt=args.docid_salt)
    qids = list(qrels)
    model_config = fresh_model_config(args)
    results = Results(args.out, qrels, list(measures))
    results.notes.update(
        task=task,
        eval_examples=len(qids),
        candidates=sum(len(c) for c in candidates.values()),
        distinct_candidate_texts=len({t for c in candidates.values() for t in c.values()}),
        model_config=model_config,
        args={k: str(v) for k, v in vars(args).items()},
    )
    logger.info("%s: %d examples, %d candidates", task, len(qids), results.notes["candidates"])

    if args.folds >= 2:
        folds = cv_folds(eval_examples, args.folds, args.seed, args.hard_negatives)
        results.notes["protocol"] = f"{args.folds}-fold query-level CV on the evaluation examples"
    else:
        need_train = "bm25" in args.systems or any(s in args.systems for s in BASELINE_SYSTEMS) or (
            "mixencoder" in args.systems and args.model is None
        )
        start = time.perf_counter()
        train_examples, collection = load_train() if need_train else ([], [])
        timings["read_train_s"] = time.perf_counter() - start
        folds = [Fold("all", qids, train_examples, collection)]
        results.notes["protocol"] = "train on the training file, evaluate every example"
        results.notes["train_examples"] = len(train_examples)
        results.notes["bm25_collection"] = len(collection)

    def texts_of(qid_list: Iterable[str]) -> dict[str, str]:
        return {text_id(t): t for q in qid_list for t in candidates[q].values()}

    def neural_run(system: str, model: Any, tokenizer_model: MixEncoder, fold: Fold, store_name: str) -> tuple[dict, float, int]:
        cfg = tokenizer_model.config
        texts = [raw_queries[q] for q in fold.test_qids]
        queries = dict(zip(fold.test_qids, left_truncate_texts(tokenizer_model.tokenizer, texts, cfg.query_max_length - 2)))
        start = time.perf_counter()
        store = store_cached(model, texts_of(fold.test_qids), cache=args.cache, name=store_name)
        timings[f"{system}_{fold.name}_store_s"] = time.perf_counter() - start
        unique = {q: list(dict.fromkeys(text_id(t) for t in candidates[q].values())) for q in fold.test_qids}
        start = time.perf_counter()
        by_text, ms = rerank_queries(model, store, queries, unique)
        timings[f"{system}_{fold.name}_rerank_s"] = time.perf_counter() - start
        run = {q: {d: by_text[q][text_id(t)] for d, t in candidates[q].items()} for q in fold.test_qids}
        return run, ms, store.nbytes

    def add(system: str, parts: list[tuple[dict, float, int]]) -> None:
        run = {q: hits for part, _, _ in parts for q, hits in part.items()}
        n = [len(part) for part, _, _ in parts]
        extra = {"ms_per_query": sum(ms * k for (_, ms, _), k in zip(parts, n)) / max(sum(n), 1)}
        if any(nbytes for _, _, nbytes in parts):
            extra["store_bytes"] = sum(nbytes for _, _, nbytes in parts) / len(parts)
        results.add(system, {q: run[q] for q in qids if q in run}, **extra)

    if "bm25" in args.systems:
        parts = []
        for fold in folds:
            bm25 = BM25(fold.bm25_collection)
            start = time.perf_counter()
            run = {}
            tokens: dict[str, list[str]] = {}  # candidate texts repeat across examples
            for q in fold.test_qids:
                query = Counter(bm25_tokens(raw_queries[q]))
                run[q] = {}
                for d, t in candidates[q].items():
                    if t not in tokens:
                        tokens[t] = bm25_tokens(t)
                    run[q][d] = bm25.score(query, tokens[t])
            parts.append((run, 1000 * (time.perf_counter() - start) / max(len(fold.test_qids), 1), 0))
        results.notes["bm25"] = {"k1": bm25.k1, "b": bm25.b, "collection_docs": bm25.n, "avgdl": round(bm25.avgdl, 2)}
        add("bm25", parts)

    fresh = None
    if "dual-zeroshot" in args.systems or "mixencoder-zeroshot" in args.systems:
        fresh = MixEncoder.from_pretrained(args.backbone, **model_config)
        for system, model in (("dual-zeroshot", DualEncoder(fresh)), ("mixencoder-zeroshot", fresh)):
            if system in args.systems:
                add(system, [neural_run(system, model, fresh, fold, f"{task}-{system}") for fold in folds])

    trained = [s for s in args.systems if s == "mixencoder" or s in BASELINE_SYSTEMS]
    train_info: dict[str, dict[str, Any]] = {}
    truncated: dict[str, list[MatchingExample]] = {}
    ablated: dict[str, list[tuple[dict, float, int]]] = {}
    for system in trained:
        parts = []
        if system == "mixencoder" and args.model is not None:
            model = MixEncoder.from_pretrained(args.model)
            results.notes["mixencoder_model"] = str(args.model)
            results.notes["model_config"] = {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"}
            all_fold = Fold("all", qids, [], [])
            parts.append(neural_run("mixencoder", model, model, all_fold, f"{task}-mixencoder-given"))
        else:
            budget = plan_budget(args.budget, args.est_step_seconds, len(folds))
            results.notes["budget_per_run"] = {"seconds": budget.seconds, "planned_steps": budget.steps}
            tokenizer_model = fresh or MixEncoder.from_pretrained(args.backbone, **model_config)
            fresh = tokenizer_model
            config = system_config(system, model_config)
            for fold in folds:
                if fold.name not in truncated:  # every system trains on the same truncated contexts
                    contexts = left_truncate_texts(
                        tokenizer_model.tokenizer, [e.query for e in fold.train_examples], args.query_max_length - 2
                    )
                    truncated[fold.name] = [
                        MatchingExample(c, e.positive, e.negatives, e.query_id, e.positive_id)
                        for c, e in zip(contexts, fold.train_examples)
                    ]
                examples = truncated[fold.name]
                start = time.perf_counter()
                model, info = train_system(
                    system,
                    examples,
                    name_of=lambda s, fold=fold: f"{task}-{s}-{fold.name}",
                    hard_negatives=args.hard_negatives,
                    seed=args.seed,
                    cache=args.cache,
                    budget=budget,
                    batch_size=args.batch_size,
                    backbone=args.backbone,
                    model_config=config,
                    learning_rate=args.lr,
                    new_parameters_lr_scale=args.new_params_lr_scale,
                    distillation_weight=args.distillation_weight,
                )
                timings[f"train_{system}_{fold.name}_s"] = time.perf_counter() - start
                train_info.setdefault(system, {})[fold.name] = info
                logger.info("trained %s %s: %s", system, fold.name, info)
                parts.append(neural_run(system, model, tokenizer_model, fold, f"{task}-{system}-{fold.name}"))
                if args.ablate_interaction and isinstance(model, MixEncoder) and model.config.pooled_residual:
                    # Same trained weights, interaction off: what the interaction itself adds.
                    ablated.setdefault(system, []).append(neural_run(
                        f"{system}-pooled", DualEncoder(model), tokenizer_model, fold,
                        f"{task}-{system}-pooled-{fold.name}",
                    ))
        add(system, parts)
        if system in ablated:
            add(f"{system}-pooled", ablated[system])
            comparisons = [*comparisons, *((system, f"{system}-pooled", m) for m in ("R@1", "RR"))]
        if system != "dual" and "dual" in args.systems:
            comparisons = [*comparisons, *((system, "dual", m) for m in ("R@1", "RR"))]
    if trained:
        # one system: {fold: info} as before; several: {system: {fold: info}}
        results.notes["training"] = train_info[trained[0]] if len(trained) == 1 else train_info

    if "bm25" in results.runs and not args.no_fusion:
        # alpha cross-fitted over 5 folds of the evaluated examples (the CV folds with --folds):
        # each example's weight comes from the other folds' examples, never its own label.
        fit_folds = [f.test_qids for f in folds] if len(folds) >= 2 else [
            t for _, t in kfold_split(qids, min(5, len(qids)), args.seed)
        ]
        comparisons = [*comparisons, *results.add_fused("bm25", fit_folds, args.fusion_measure)]
        for system in trained:
            if system != "dual" and "dual" in args.systems:
                comparisons = [*comparisons, *((f"{system}+bm25", "dual+bm25", m) for m in ("R@1", "RR"))]
    timings["wall_s"] = time.perf_counter() - wall
    results.notes["timings"] = {k: round(v, 1) for k, v in timings.items()}
    results.write(comparisons)
    print(f"wall time {timings['wall_s'] / 60:.1f} min; outputs in {args.out}")
    return results.metrics


# ---------------------------------------------------------------------- Ubuntu V2


def load_ubuntu_train(path: Path, limit: int | None) -> tuple[list[MatchingExample], list[str]]:
    """Label-1 rows as training pairs (label-0 rows dropped) and the distinct responses of every
    row as BM25's collection; only the first ``limit`` rows when given."""
    examples: list[MatchingExample] = []
    responses: set[str] = set()
    rows = 0
    for row in read_ubuntu_v2_train(path):
        if limit is not None and rows >= limit:
            break
        rows += 1
        responses.add(row.response)
        if row.label == 1:
            examples.append(MatchingExample(" ".join(row.context), row.response))
    logger.info("%s: %d rows, %d positive pairs, %d distinct responses", path, rows, len(examples), len(responses))
    return examples, sorted(responses)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(
        __doc__.split("\n\n")[0], data_dir="../shared/data/ubuntu/v2", out="runs/ubuntu", budget="10m"
    )
    add_dialogue_args(
        p, eval_file="valid.csv", train_file="train.csv", lr=5e-5, layers=(-1,), est_step_seconds=5.0
    )
    args = p.parse_args(argv)
    setup_logging()
    if args.folds >= 2 and args.train_dir is not None:
        p.error("give either --train-dir or --folds K, not both")
    if args.hard_negatives and args.folds < 2:
        p.error("--hard-negatives: train.csv pairs carry no negatives (label-0 rows are dropped); "
                "training uses in-batch negatives")
    train_dir = args.train_dir or args.data_dir
    eval_path = resolve_path(args.data_dir, args.eval_file)
    examples = []
    for ex in read_ubuntu_v2_eval(eval_path):
        if args.limit_eval is not None and len(examples) >= args.limit_eval:
            break
        examples.append(ex)
    run_response_selection(
        args,
        task="ubuntu",
        eval_examples=examples,
        load_train=lambda: load_ubuntu_train(resolve_path(train_dir, args.train_file), args.limit_train),
        measures=UBUNTU_MEASURES,
        comparisons=COMPARISONS,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
