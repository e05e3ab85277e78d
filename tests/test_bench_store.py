"""eval/bench_store.py at a small size, and the approximate (IVF) search it measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mixencoder import CandidateStore
from mixencoder.models.base import CandidateReps

REPO = Path(__file__).resolve().parents[1]


def test_bench_store_small(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "eval" / "bench_store.py"),
        "--rows",
        "2000",
        "--passages",
        "32",
        "--json",
        str(out),
        "--dir",
        str(tmp_path / "store"),
        "--cache",
        str(tmp_path / "cache"),
        "--warm-requests",
        "20",
        "--cold-requests",
        "3",
        "--sweep",
        "8",
        "64",
    ]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    for key in (
        "open_s",
        "open_rss_mb",
        "gather_ms",
        "search_ms",
        "ann_recall_at_1000",
        "bytes_per_candidate",
    ):
        assert key in result, key
    assert result["rows"] == 2000 and result["dim"] == 384
    assert 0 < result["open_s"] < 5 and result["open_rss_mb"] < 50
    for case in ("cold", "warm"):
        ms = result["gather_ms"][case]
        assert 0 < ms["p50"] <= ms["p99"], case
    assert result["gather_ms"]["cold_check"]["vectors_cached_fraction_max"] < 0.5
    # The floor (a numpy take of the same rows; the bench checks it read the same values).
    for key in ("floor_take", "floor_take_f32", "ratio_to_floor_take", "ratio_to_floor_take_cpu"):
        assert result["gather_ms"][key]["p50"] > 0, key
    assert set(result["search_ms"]) >= {"flat", "ann"}
    # 2000 rows -> nlist 45 lists; probing 64 >= 45 lists scans everything: exact recall.
    assert result["ann"]["nlist"] == 45
    assert result["ann_sweep"]["64"]["recall_at_1000"] == 1.0
    assert 0 <= result["ann_recall_at_1000"] <= 1
    # fp16 k=1 vectors (768 B) + fp16 pooled (768 B) + float32 FAISS copy (1536 B) + docids.
    assert 3072 < result["bytes_per_candidate"] < 3200

    store = CandidateStore.open(tmp_path / "store")
    assert len(store) == 2000
    collection = shared_data / "msmarco" / "dl20" / "collection.tsv"
    pid = collection.read_text(encoding="utf-8").split("\t", 1)[0]
    reps = store.gather([f"{pid}-0", f"{pid}-1"])  # two noisy copies of one passage
    a, b = reps.vectors[0, 0], reps.vectors[1, 0]
    assert not torch.equal(a, b) and torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def _store(
    path: Path, n: int = 3000, dim: int = 16, shard_size: int = 1000
) -> tuple[CandidateStore, Any]:
    class Model:
        search_metric = "ip"

        def candidate_fingerprint(self) -> dict:
            return {"sha256": "ann-test"}

        def encode_candidates(self, texts, **kwargs) -> CandidateReps:
            rows = [int(t) for t in texts]
            x = np.stack([np.random.default_rng(r).standard_normal(dim) for r in rows])
            x = torch.from_numpy(x.astype(np.float32))
            return CandidateReps(x[:, None, :], torch.ones(len(rows), dtype=torch.int64), x)

    docs = [(f"d{i}", str(i)) for i in range(n)]
    return CandidateStore.build(path, Model(), docs, shard_size=shard_size, batch_size=500), Model()


def test_approximate_search_matches_exact_when_every_list_is_probed(tmp_path: Path) -> None:
    store, model = _store(tmp_path / "s")
    ann = store.build_ann_index(nlist=20, nprobe=4)
    assert ann.info["count"] == 3000 and ann.info["kind"] == "ivf-sqfp16"
    queries = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    exact = store.search(queries, k=50)
    full = CandidateStore.open(tmp_path / "s").search(queries, k=50, approximate=True, nprobe=20)
    for e, a in zip(exact, full):
        assert [d for d, _ in e] == [d for d, _ in a]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in e], rtol=1e-5)
    few = store.search(queries, k=50, approximate=True, nprobe=1)  # probes 1 of 20 lists
    overlap = np.mean([len({d for d, _ in e} & {d for d, _ in a}) / 50 for e, a in zip(exact, few)])
    assert overlap < 1.0

    # The index belongs to one state of the store: after add() it is refused until rebuilt.
    store.add(model, [("d-new", "123456")])
    with pytest.raises(ValueError, match="build_ann_index"):
        store.search(queries, k=5, approximate=True)
    store.build_ann_index(nlist=20)
    assert len(store.search(queries, k=5, approximate=True)[0]) == 5
    with pytest.raises(FileNotFoundError, match="build_ann_index"):
        CandidateStore.build(tmp_path / "t", model, [("a", "1"), ("b", "2")]).search(
            queries, k=1, approximate=True
        )
