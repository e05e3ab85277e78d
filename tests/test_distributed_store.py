"""Store builds on Ray Data: the same store as the single-process build, resumable by either
builder, duplicates named with their shards."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from mixencoder import CandidateStore, MixEncoder
from mixencoder.cli import main as mixencoder_command
from mixencoder.data.corpus import read_corpus, write_jsonl_collection
from mixencoder.models import load_model
from mixencoder.models.base import CandidateReps
from mixencoder.models.registry import build_system
from mixencoder.store.distributed import build_store_distributed
from mixencoder.store.shard import ShardWriter

N_DOCS = 300
SHARD = 128  # 300 docs -> shards of 128, 128, 44
RAY_ARGS = dict(workers=2, shard_size=SHARD, block_size=32, batch_size=16)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) for the module; the builds reuse it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MixEncoder: what every Ray actor (and the driver) loads."""
    out = tmp_path_factory.mktemp("tiny-mix")
    model = MixEncoder.from_pretrained(
        tiny_backbone_dir, query_max_length=24, candidate_max_length=64
    )
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vaswani_slice(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 documents of Vaswani as a JsonCollection directory."""
    out = tmp_path_factory.mktemp("vaswani300") / "corpus"
    docs = itertools.islice(read_corpus(shared_data / "vaswani" / "doc-text.trec"), N_DOCS)
    assert write_jsonl_collection(docs, out) == N_DOCS
    return out


@pytest.fixture(scope="module")
def ray_store(ray_local, model_dir: Path, vaswani_slice: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("built") / "ray"
    store = build_store_distributed(path, str(model_dir), vaswani_slice, **RAY_ARGS)
    stats = store.last_build_stats
    assert stats["docs"] == N_DOCS and stats["workers"] == 2 and stats["docs_per_s"] > 0
    assert 1 <= stats["workers_used"] <= 2
    return path


def _file_hashes(store: CandidateStore, name: str) -> list[str]:
    return [s["files"][name]["sha256"] for s in store.manifest["shards"]]


def test_ray_build_equals_single_process_build(
    ray_store: Path, model_dir: Path, vaswani_slice: Path, tmp_path: Path
) -> None:
    model = MixEncoder.from_pretrained(model_dir)
    single = CandidateStore.build(
        tmp_path / "single", model, read_corpus(vaswani_slice), shard_size=SHARD, batch_size=16
    )
    on_ray = CandidateStore.open(ray_store, model=model)  # same fingerprint, opens transparently
    on_ray.verify()
    assert len(on_ray) == len(single) == N_DOCS
    assert [s["count"] for s in on_ray.manifest["shards"]] == [128, 128, 44]
    # The same docids in the same rows of the same shards (byte-identical files) ...
    for name in ("docids.npy", "offsets.npy"):
        assert _file_hashes(on_ray, name) == _file_hashes(single, name), name
    # ... holding the same vectors up to float rounding (the batches are padded differently).
    ids = [d.docid for d in read_corpus(vaswani_slice)]
    a, b = single.gather(ids), on_ray.gather(ids)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(b.vectors, a.vectors, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(b.pooled, a.pooled, rtol=2e-3, atol=2e-3)
    assert a.vectors.std() > 0.1  # real encodings, not a constant
    queries = model.encode_queries_pooled(["measurement of dielectric constant", "ferrite cores"])
    for hits_a, hits_b in zip(single.search(queries, k=5), on_ray.search(queries, k=5)):
        assert [d for d, _ in hits_a] == [d for d, _ in hits_b]
    # `mixencoder store compare`, the check the README gives for a full corpus, agrees
    assert mixencoder_command(["store", "compare", str(tmp_path / "single"), str(ray_store), "--atol", "2e-3"]) == 0


def test_ray_build_resumes_skipping_finished_shards(
    ray_store: Path, model_dir: Path, vaswani_slice: Path, tmp_path: Path
) -> None:
    reference = CandidateStore.open(ray_store)
    ids = [d.docid for d in read_corpus(vaswani_slice)]
    expected = reference.gather(ids)

    def interrupt(path: Path) -> dict[str, int]:
        """Leave what a crash after shard 1 leaves: shards 0-1 and the build state."""
        shutil.rmtree(path / "shard-00002")
        (path / "manifest.json").unlink()
        build_state = {k: reference.manifest[k] for k in ("fingerprint", "shard_size", "dtype")}
        (path / "build.json").write_text(json.dumps({**build_state, "with_pooled": True}))
        return {n: (path / n / "vectors.npy").stat().st_ino for n in ("shard-00000", "shard-00001")}

    path = tmp_path / "resumed"
    shutil.copytree(ray_store, path)
    inodes = interrupt(path)
    with pytest.raises(FileExistsError, match="unfinished"):
        build_store_distributed(path, str(model_dir), vaswani_slice, **RAY_ARGS)
    store = build_store_distributed(path, str(model_dir), vaswani_slice, mode="resume", **RAY_ARGS)
    assert store.last_build_stats["docs"] == N_DOCS - 2 * SHARD  # only the last shard
    assert {n: (path / n / "vectors.npy").stat().st_ino for n in inodes} == inodes  # untouched
    got = store.gather(ids)
    torch.testing.assert_close(got.vectors, expected.vectors, rtol=2e-3, atol=2e-3)
    assert _file_hashes(store, "docids.npy") == _file_hashes(reference, "docids.npy")

    # A finished store resumes as a no-op, without starting any encoding.
    again = build_store_distributed(path, str(model_dir), vaswani_slice, mode="resume", **RAY_ARGS)
    assert again.last_build_stats["docs"] == 0 and len(again) == N_DOCS

    # The single-process builder finishes a Ray build's interrupted run too (same layout).
    interrupt(path)
    model = MixEncoder.from_pretrained(model_dir)
    encoded: list[str] = []
    original = model.encode_candidates

    def counting(texts, **kwargs):
        encoded.extend(texts)
        return original(texts, **kwargs)

    model.encode_candidates = counting
    store = CandidateStore.build(
        path, model, read_corpus(vaswani_slice), mode="resume", shard_size=SHARD, batch_size=16
    )
    assert len(encoded) == N_DOCS - 2 * SHARD and len(store) == N_DOCS
    torch.testing.assert_close(store.gather(ids).vectors, expected.vectors, rtol=2e-3, atol=2e-3)


def test_duplicate_docids_across_shards_are_named(
    ray_local, model_dir: Path, vaswani_slice: Path, tmp_path: Path
) -> None:
    docs = list(itertools.islice(read_corpus(vaswani_slice), 200))
    docs[140] = docs[140]._replace(docid=docs[5].docid)  # shard 1 repeats a docid of shard 0
    corpus = tmp_path / "dups"  # written by hand: write_jsonl_collection refuses duplicates
    corpus.mkdir()
    with open(corpus / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d.docid, "contents": d.text}) + "\n")
    dup = docs[5].docid
    with pytest.raises(ValueError, match=rf"'{dup}' in shard-00001 and shard-00000"):
        build_store_distributed(tmp_path / "store", str(model_dir), corpus, **RAY_ARGS)
    # The finished shard stays for a resume; the unfinished one and the manifest do not exist.
    assert sorted(p.name for p in (tmp_path / "store").glob("shard-*")) == ["shard-00000"]
    assert not (tmp_path / "store" / "manifest.json").exists()


@pytest.mark.parametrize("system", ["dual", "poly-64"])
def test_ray_build_of_a_saved_baseline_equals_its_single_process_build(
    ray_local, system: str, tiny_backbone_dir: Path, vaswani_slice: Path, tmp_path: Path
) -> None:
    """The actors load any saved model kind (mixencoder.models.load_model), not only MixEncoder,
    and the store takes the model's own search_metric (a cosine BiEncoder's store ranks by
    cosine)."""
    saved = tmp_path / system
    build_system(system, tiny_backbone_dir, candidate_max_length=32).save_pretrained(saved)
    corpus = tmp_path / "corpus"
    write_jsonl_collection(itertools.islice(read_corpus(vaswani_slice), 100), corpus)
    on_ray = build_store_distributed(tmp_path / "ray", str(saved), corpus, workers=2,
                                     shard_size=64, block_size=32, batch_size=16)
    model = load_model(saved)
    assert type(model).__name__ != "MixEncoder"
    single = CandidateStore.build(tmp_path / "single", model, read_corpus(corpus), shard_size=64,
                                  batch_size=16)
    on_ray = CandidateStore.open(tmp_path / "ray", model=model)  # same fingerprint
    on_ray.verify()
    assert on_ray.search_metric == single.search_metric == model.search_metric
    assert _file_hashes(on_ray, "docids.npy") == _file_hashes(single, "docids.npy")
    ids = [d.docid for d in read_corpus(corpus)]
    a, b = single.gather(ids), on_ray.gather(ids)
    assert torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(b.vectors, a.vectors, rtol=2e-3, atol=2e-3)
    assert a.vectors.std() > 0.01  # real encodings, not a constant


# ---------------------------------------------------------------------- from_shards (no Ray)


def _write_shard(root: Path, number: int, docids: list[str], seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    n = len(docids)
    reps = CandidateReps(
        torch.randn(n, 2, 4, generator=gen), torch.full((n,), 2), torch.randn(n, 3, generator=gen)
    )
    writer = ShardWriter(root, number, dtype=np.dtype("float16"), with_pooled=True, origin="build")
    writer.add([d.encode() for d in docids], reps)
    return writer.finish()["name"]


def test_from_shards_assembles_and_names_duplicates(tmp_path: Path) -> None:
    fingerprint = {"sha256": "0" * 64, "kind": "test"}
    good = tmp_path / "good"
    good.mkdir()
    names = [_write_shard(good, 0, ["a", "b"], 0), _write_shard(good, 1, ["c"], 1)]
    store = CandidateStore.from_shards(good, names, fingerprint=fingerprint, shard_size=2)
    reopened = CandidateStore.open(good)
    assert len(reopened) == 3 and reopened.missing(["a", "b", "c", "d"]) == ["d"]
    assert reopened.gather(["c", "a"]).vectors.shape == (2, 2, 4)
    assert store.fingerprint == fingerprint

    bad = tmp_path / "bad"
    bad.mkdir()
    names = [_write_shard(bad, 0, ["x", "y"], 0), _write_shard(bad, 1, ["z", "y"], 1)]
    with pytest.raises(ValueError, match=r"'y' in shard-00000, shard-00001"):
        CandidateStore.from_shards(bad, names, fingerprint=fingerprint, shard_size=2)
    assert not (bad / "manifest.json").exists()
    with pytest.raises(ValueError, match="with_pooled"):
        CandidateStore.from_shards(
            good, ["shard-00000"], fingerprint=fingerprint, shard_size=2, with_pooled=False
        )


def test_a_worker_with_another_model_fails_the_build(
    ray_local, model_dir: Path, vaswani_slice: Path, tmp_path: Path
) -> None:
    driver = os.getpid()

    def load() -> MixEncoder:  # pickled by value: a different model on every Ray worker
        model = MixEncoder.from_pretrained(model_dir)
        if os.getpid() != driver:
            with torch.no_grad():
                model.special_embeddings.add_(1.0)
        return model

    with pytest.raises(ValueError, match=r"Ray worker .* different model .*\['sha256'\]"):
        build_store_distributed(tmp_path / "store", load, vaswani_slice, **RAY_ARGS)
    assert not (tmp_path / "store" / "manifest.json").exists()
