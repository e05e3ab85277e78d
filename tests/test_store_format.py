"""The on-disk format does not drift: stores committed under tests/fixtures/stores open, verify
and gather unchanged, and rebuilding them with today's code writes the same bytes.

The fixtures were written by the store code at commit fda49ad (before the store was
restructured) with :func:`write_fixture`; regenerate them only on a deliberate format change:
``python tests/test_store_format.py`` (it overwrites tests/fixtures/stores).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixencoder.store import CandidateStore
from mixencoder.store.verify import verify_store

from reliability_support import HashScorer, make_docs

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
#: Fields that measure the run that wrote a file (time), not its content.
TIMINGS = {"build_docs_per_s", "manifest_sha256", "build_s", "info_sha256"}

# name -> (build kwargs, docs added with add() after the build, build an approximate index)
RECIPES = {
    "fp16-pooled-added-ann": (dict(shard_size=4, batch_size=3), 3, True),
    "fp32-no-pooled": (dict(shard_size=5, batch_size=2, dtype="float32", with_pooled=False), 0, False),
    "fp16-cosine": (dict(shard_size=6, batch_size=4, search_metric="cosine"), 0, False),
}


def write_fixture(path: Path, name: str) -> CandidateStore:
    """Build the store ``name`` of :data:`RECIPES` at ``path`` (which must not exist)."""
    kwargs, added, ann = RECIPES[name]
    model = HashScorer()
    store = CandidateStore.build(path, model, make_docs(9), show_progress_bar=False, **kwargs)
    if added:
        store.add(model, make_docs(added, prefix="n"), batch_size=2, show_progress_bar=False)
    if ann:
        store.build_ann_index(nlist=2, nprobe=1, seed=0)
    return store


def _content(path: Path) -> dict[str, object]:
    """Every file of a store: JSON files parsed without their timing fields, others hashed."""
    out: dict[str, object] = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(path))
        if p.suffix == ".json":
            out[rel] = _without_timings(json.loads(p.read_text()))
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _without_timings(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_committed_store_opens_verifies_and_gathers(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    shutil.copytree(FIXTURES / name, path)  # open() must not need to write, but may not touch
    report = verify_store(path)
    assert report.ok and not report.notes, report.format()
    model = HashScorer()
    store = CandidateStore.open(path, model=model)
    kwargs, added, _ = RECIPES[name]
    docs = make_docs(9) + make_docs(added, prefix="n")
    assert len(store) == len(docs) and sorted(store.docids()) == sorted(d for d, _ in docs)
    rounded = (lambda a: a) if kwargs.get("dtype") == "float32" else (
        lambda a: a.astype(np.float16).astype(np.float32)
    )
    reps = store.gather([d for d, _ in reversed(docs)])
    for i, (_, text) in enumerate(reversed(docs)):
        vectors, pooled = model.expected(text)
        n = int(reps.lengths[i])
        np.testing.assert_array_equal(reps.vectors[i, :n].numpy(), rounded(vectors))
        if reps.pooled is not None:
            np.testing.assert_array_equal(reps.pooled[i].numpy(), rounded(pooled))
    assert (reps.pooled is None) == (kwargs.get("with_pooled") is False)
    if reps.pooled is not None:
        q = model.encode_candidates(["a query"]).pooled.numpy()
        exact = store.search(q, k=len(docs))[0]
        assert len(exact) == len(docs) and len({d for d, _ in exact}) == len(docs)
        if RECIPES[name][2]:
            approx = store.search(q, k=3, approximate=True)[0]
            assert approx and {d for d, _ in approx} <= {d for d, _ in exact}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_todays_code_writes_the_committed_bytes(name: str, tmp_path: Path) -> None:
    write_fixture(tmp_path / name, name)
    assert _content(tmp_path / name) == _content(FIXTURES / name)


if __name__ == "__main__":
    for recipe in RECIPES:
        shutil.rmtree(FIXTURES / recipe, ignore_errors=True)
        FIXTURES.mkdir(parents=True, exist_ok=True)
        write_fixture(FIXTURES / recipe, recipe)
        print("wrote", FIXTURES / recipe)
