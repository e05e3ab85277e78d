"""Crashes: a real SIGKILL of a subprocess during a store build, an add, an ANN build, training.

Each child process starts the operation, says so on stdout, and is killed with SIGKILL after a
random delay within the operation's measured duration (seeded, so the run is reproducible).
Afterwards the store opens with exactly the rows committed before the kill (or refuses with
:class:`IncompleteStoreError`), and finishing the job (``mode='resume'``, repeating the add,
rebuilding the ANN index, resuming training) gives exactly what an uninterrupted run gives.
The default run kills a few times; ``-m slow`` kills many more times.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixencoder import CandidateStore, MixEncoder
from mixencoder.store import IncompleteStoreError
from mixencoder.store.verify import verify_store
from reliability_support import PYTHON, HashScorer, make_docs, subprocess_env

SMALL = dict(query_max_length=24, candidate_max_length=48)
BUILD = dict(shard_size=8, batch_size=4)


@pytest.fixture(scope="module")
def model_dir(tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MixEncoder, so the parent and every child load the very same weights."""
    out = tmp_path_factory.mktemp("tiny-mix")
    MixEncoder.from_pretrained(tiny_backbone_dir, **SMALL).save_pretrained(out)
    return out


def docs_of(n: int, prefix: str = "d") -> list[tuple[str, str]]:
    words = "the a lobster roll city bread water rain of is".split()
    return [(f"{prefix}{i}", " ".join(words[(i + j) % len(words)] for j in range(3 + i % 7)))
            for i in range(n)]


def data_files(path: Path) -> dict[str, str]:
    """sha256 of every shard and lookup-index data file (JSON metadata excluded)."""
    out = {}
    for p in sorted(path.glob("*/*")):
        if p.suffix in (".npy", ".faiss") and not p.parent.name.startswith((".", "ann-")):
            # The lookup index's generation counts commits (a resume of a finished build
            # commits again); its content is what must match.
            folder = "index" if p.parent.name.startswith("index-") else p.parent.name
            out[f"{folder}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    args = json.loads(sys.argv[1])
    from mixencoder import CandidateStore, MixEncoder
    from reliability_support import HashScorer, make_docs
    from test_reliability_crash import docs_of, SMALL, BUILD
    what = args["what"]
    if what in ("build", "add"):
        model = MixEncoder.from_pretrained(args["model"])
        docs = docs_of(args["n"], args.get("prefix", "d"))
        print("start", flush=True)
        if what == "build":
            CandidateStore.build(args["path"], model, docs, mode="resume", **BUILD)
        else:
            CandidateStore.open(args["path"]).add(model, docs, batch_size=4)
    elif what == "ann":
        store = CandidateStore.open(args["path"])
        print("start", flush=True)
        store.build_ann_index(nlist=8, nprobe=2, seed=0)
    elif what == "train":
        import torch
        from mixencoder.training import TrainingConfig, train
        from test_reliability_crash import train_set, train_config
        model = MixEncoder.from_pretrained(args["model"])
        print("start", flush=True)
        train(model, train_set(), train_config(), output_dir=args["path"])
    print("done", flush=True)
    """
)


def kill_during(args: dict, delay: float, timeout: float = 120) -> str:
    """Run the child, SIGKILL it ``delay`` s after it starts the operation; its last word."""
    proc = subprocess.Popen([PYTHON, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=subprocess_env(), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "start":
        proc.kill()
        pytest.fail(f"child did not start: {line!r} {proc.stderr.read()[-2000:]}")
    time.sleep(delay)
    proc.kill()  # SIGKILL: no finally blocks, no atexit, no flush
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode not in (-9, 0):
        pytest.fail(f"child failed on its own (rc {proc.returncode}): {err[-2000:]}")
    return "done" if "done" in out else "killed"


# --- store build -----------------------------------------------------------------------------


@pytest.mark.parametrize("kills", [2, pytest.param(12, marks=pytest.mark.slow)])
def test_sigkill_during_build_then_resume_equals_clean_build(model_dir, tmp_path, kills) -> None:
    n = 96
    model = MixEncoder.from_pretrained(model_dir)
    t0 = time.perf_counter()
    clean = CandidateStore.build(tmp_path / "clean", model, docs_of(n), **BUILD)
    duration = time.perf_counter() - t0
    path = tmp_path / "crashed"
    rng = random.Random(kills)
    outcomes = []
    for _ in range(kills):
        outcomes.append(kill_during(
            {"what": "build", "model": str(model_dir), "path": str(path), "n": n},
            delay=rng.uniform(0, duration),
        ))
        try:
            store = CandidateStore.open(path)
        except IncompleteStoreError:
            finished = sorted(p.name for p in path.glob("shard-*"))
            assert finished == [f"shard-{i:05d}" for i in range(len(finished))]
            continue
        assert len(store) == n  # a manifest means everything was committed
    resumed = CandidateStore.build(path, model, docs_of(n), mode="resume", **BUILD)
    assert data_files(path) == data_files(clean.path), outcomes
    assert verify_store(path).ok and not list(path.glob(".tmp-*"))
    assert torch.equal(resumed.gather([d for d, _ in docs_of(n)]).vectors,
                       clean.gather([d for d, _ in docs_of(n)]).vectors)


# --- add ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kills", [1, pytest.param(10, marks=pytest.mark.slow)])
def test_sigkill_during_add_leaves_old_or_new_state(model_dir, tmp_path, kills) -> None:
    model = MixEncoder.from_pretrained(model_dir)
    base, extra = docs_of(16), docs_of(40, prefix="x")
    reference = CandidateStore.build(tmp_path / "ref", model, base, **BUILD)
    t0 = time.perf_counter()
    reference.add(model, extra, batch_size=4)
    duration = time.perf_counter() - t0
    rng = random.Random(100 + kills)
    outcomes = []
    for k in range(kills):
        path = tmp_path / f"crashed{k}"
        CandidateStore.build(path, model, base, **BUILD)
        outcomes.append(kill_during(
            {"what": "add", "model": str(model_dir), "path": str(path), "n": 40, "prefix": "x"},
            delay=rng.uniform(0, duration),
        ))
        store = CandidateStore.open(path)
        assert len(store) in (16, 56), len(store)
        ids = store.docids()
        want = reference.gather(ids)
        got = store.gather(ids)
        assert torch.equal(got.vectors, want.vectors) and torch.equal(got.pooled, want.pooled)
        assert verify_store(path).ok
        if len(store) == 16:
            store.add(model, extra, batch_size=4)  # the add, run again to completion
        assert data_files(path) == data_files(reference.path), (k, outcomes)
        assert not list(path.glob(".tmp-*"))


# --- ANN index ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kills", [2, pytest.param(10, marks=pytest.mark.slow)])
def test_sigkill_during_ann_build_leaves_no_half_index(tmp_path, kills) -> None:
    path = tmp_path / "s"
    store = CandidateStore.build(path, HashScorer(pooled_dim=32), make_docs(6000), shard_size=2000,
                                 batch_size=256)
    t0 = time.perf_counter()
    store.build_ann_index(nlist=8, nprobe=2, seed=0)
    duration = time.perf_counter() - t0
    queries = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    want = store.search(queries, 10, approximate=True)
    for old in path.glob("ann-*"):
        import shutil

        shutil.rmtree(old)
    rng = random.Random(200 + kills)
    for _ in range(kills):
        kill_during({"what": "ann", "path": str(path)}, delay=rng.uniform(0, duration))
        fresh = CandidateStore.open(path)
        try:
            got = fresh.search(queries, 10, approximate=True)
        except FileNotFoundError:
            continue  # no index committed: approximate search says so
        assert got == want
    fresh = CandidateStore.open(path)
    fresh.build_ann_index(nlist=8, nprobe=2, seed=0)
    assert fresh.search(queries, 10, approximate=True) == want
    assert verify_store(path).ok and not list(path.glob(".tmp-*"))


# --- training ----------------------------------------------------------------------------------


def train_set():
    from mixencoder.training import MatchingExample

    letters = "cdefghijklmnopqrstuvwxyz"
    return [
        MatchingExample(f"what is {letters[2 * i]} {letters[2 * i + 1]}",
                        f"the {letters[2 * i]} {letters[2 * i + 1]} of the city")
        for i in range(8)
    ]


def train_config():
    from mixencoder.training import TrainingConfig

    return TrainingConfig(batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=1,
                          max_steps=8, seed=7)


@pytest.mark.parametrize("kills", [1, pytest.param(8, marks=pytest.mark.slow)])
def test_sigkill_during_training_then_resume_equals_straight_run(model_dir, tmp_path, kills):
    from mixencoder.training import CHECKPOINT_NAME, train

    straight = MixEncoder.from_pretrained(model_dir)
    t0 = time.perf_counter()
    train(straight, train_set(), train_config(), output_dir=tmp_path / "straight")
    duration = time.perf_counter() - t0
    out = tmp_path / "crashed"
    rng = random.Random(300 + kills)
    steps = []
    for _ in range(kills):
        kill_during({"what": "train", "model": str(model_dir), "path": str(out)},
                    delay=rng.uniform(0, duration))
        state = out / CHECKPOINT_NAME / "trainer_state.json"
        steps.append(json.loads(state.read_text())["global_step"] if state.is_file() else 0)
    resumed = MixEncoder.from_pretrained(model_dir)
    result = train(resumed, train_set(), train_config(), output_dir=out)
    assert result.global_step == 8
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), (name, steps)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], steps
