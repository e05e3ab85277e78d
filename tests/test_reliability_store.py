"""Store integrity: `mixencoder store verify` names every damaged file; open refuses truncation.

Every kind of file of a store (vectors, offsets, docids, pooled vectors, the FAISS copy, the
shard entry, the three lookup-index arrays, the manifest, and the approximate index with its
ann.json) gets single-bit flips and truncations. ``verify`` must name exactly that file (or, for
the manifest, the manifest first); ``open`` must refuse every truncation of a file it maps or
size-checks, naming it, and must never hand out wrong reps for a damaged header.
The slow variant flips many more positions (``-m slow``).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from mixencoder.cli import main as cli_main
from mixencoder.store import CandidateStore, StoreCorruptError
from mixencoder.store._io import json_text
from mixencoder.store.layout import MANIFEST_CHECKSUM, manifest_checksum
from mixencoder.store.verify import verify_store
from reliability_support import HashScorer, make_docs

FAST_FLIPS = 6  # per file in the default run (+ the first and last byte)
SLOW_FLIPS = 200


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 build shards + 1 add shard, and an approximate index."""
    path = tmp_path_factory.mktemp("pristine") / "store"
    model = HashScorer()
    store = CandidateStore.build(path, model, make_docs(23), shard_size=10, batch_size=4)
    store.add(model, make_docs(4, prefix="n"))
    store.build_ann_index(nlist=2, nprobe=2)
    return path


def kinds(path: Path) -> list[str]:
    m = json.loads((path / "manifest.json").read_text())
    index, ann = m["index"]["name"], f"ann-{m['index']['generation']:05d}"
    shard = "shard-00001"
    return [
        "manifest.json",
        f"{shard}/vectors.npy",
        f"{shard}/offsets.npy",
        f"{shard}/docids.npy",
        f"{shard}/pooled.npy",
        f"{shard}/pooled.faiss",
        f"{shard}/shard.json",
        f"{index}/docids_sorted.npy",
        f"{index}/rows_sorted.npy",
        f"{index}/dead_rows.npy",
        f"{ann}/index.faiss",
        f"{ann}/ann.json",
    ]


KIND_IDS = ["manifest", "vectors", "offsets", "docids", "pooled", "pooled.faiss", "shard.json",
            "docids_sorted", "rows_sorted", "dead_rows", "ann.faiss", "ann.json"]


@pytest.fixture
def damaged(pristine: Path, tmp_path: Path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    return path


def test_pristine_store_verifies_clean(pristine: Path, capsys: pytest.CaptureFixture) -> None:
    report = verify_store(pristine)
    assert report.ok, report.format()
    assert report.count == 27 and report.files_checked == 4 * 5 + 3 + 1  # shards, index, ann
    CandidateStore.open(pristine).verify()
    assert cli_main(["store", "verify", str(pristine)]) == 0
    assert "OK (27 candidates" in capsys.readouterr().out


def _positions(size: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    picks = {0, size - 1} | {rng.randrange(size) for _ in range(n)}
    return sorted(picks)


def _flip_and_check(path: Path, rel: str, n_flips: int) -> int:
    victim = path / rel
    original = victim.read_bytes()
    tried = 0
    for pos in _positions(len(original), n_flips, seed=hash(rel) & 0xFFFF):
        bit = 1 << random.Random(pos).randrange(8)
        data = bytearray(original)
        data[pos] ^= bit
        victim.write_bytes(bytes(data))
        report = verify_store(path)
        where = f"{rel} byte {pos} bit {bit}"
        if rel == "manifest.json":
            assert report.bad_files[:1] == ["manifest.json"], (where, report.format())
        else:
            assert report.bad_files == [rel], (where, report.format())
        tried += 1
    victim.write_bytes(original)
    assert verify_store(path).ok
    return tried


@pytest.mark.parametrize("kind", range(12), ids=KIND_IDS)
def test_one_flipped_bit_is_named_by_verify(damaged: Path, kind: int) -> None:
    rel = kinds(damaged)[kind]
    assert _flip_and_check(damaged, rel, FAST_FLIPS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", range(12), ids=KIND_IDS)
def test_many_flipped_bits_are_named_by_verify_slow(damaged: Path, kind: int) -> None:
    rel = kinds(damaged)[kind]
    size = (damaged / rel).stat().st_size
    assert _flip_and_check(damaged, rel, min(SLOW_FLIPS, 4 * size)) >= min(50, size)


def _expect_open_refuses(path: Path, rel: str) -> None:
    """open() (and, for the approximate index, an approximate search) refuses, naming rel."""
    name = Path(rel).name
    if rel.startswith("ann-"):
        store = CandidateStore.open(path)
        with pytest.raises(ValueError, match=re.escape(name)):
            store.search(np.ones((1, 6), np.float32), 3, approximate=True)
    elif name == "shard.json":
        # open() never reads shard.json (the manifest holds a copy): the store stays usable.
        store = CandidateStore.open(path)
        assert len(store.gather(["d0", "d15"])) == 2
    else:
        with pytest.raises(StoreCorruptError, match=re.escape(name)):
            CandidateStore.open(path)



def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


@pytest.mark.parametrize("kind", range(12), ids=KIND_IDS)
def test_truncation_is_named_by_verify_and_refused_by_open(damaged: Path, kind: int) -> None:
    rel = kinds(damaged)[kind]
    victim = damaged / rel
    original = victim.read_bytes()
    for keep in sorted({0, 1, len(original) // 2, len(original) - 1}):
        victim.write_bytes(original[:keep])
        report = verify_store(damaged)
        expected = ["manifest.json"] if rel == "manifest.json" else [rel]
        assert report.bad_files[:1] == expected, (rel, keep, report.format())
        if rel.endswith(".json") and _same_json(original, original[:keep]):
            continue  # only the final newline is gone: nothing wrong for open() to refuse
        _expect_open_refuses(damaged, rel)
    victim.write_bytes(original)
    assert verify_store(damaged).ok


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 7, 8, 9], ids=[KIND_IDS[k] for k in (1, 2, 3, 4, 7, 8, 9)])
def test_header_flips_never_yield_wrong_reps(pristine: Path, damaged: Path, kind: int) -> None:
    """A flipped bit in an .npy header: open refuses naming the file, or reps are unchanged."""
    rel = kinds(damaged)[kind]
    want = CandidateStore.open(pristine).gather([d for d, _ in make_docs(23)])
    victim = damaged / rel
    original = victim.read_bytes()
    refused = 0
    for pos in range(10, 128, 7):  # inside the header dict and its padding
        data = bytearray(original)
        data[pos] ^= 0x04
        victim.write_bytes(bytes(data))
        try:
            got = CandidateStore.open(damaged).gather([d for d, _ in make_docs(23)])
        except StoreCorruptError as e:
            assert Path(rel).name in str(e)
            refused += 1
            continue
        assert (got.vectors == want.vectors).all() and (got.lengths == want.lengths).all()
    assert refused >= 1


@pytest.mark.parametrize("n_flips", [40, pytest.param(400, marks=pytest.mark.slow)])
def test_manifest_flips_never_yield_wrong_reps(pristine: Path, damaged: Path, n_flips) -> None:
    """open() on a manifest with a flipped bit: a StoreCorruptError, or exactly the right reps."""
    docids = [d for d, _ in make_docs(23)]
    want = CandidateStore.open(pristine).gather(docids)
    victim = damaged / "manifest.json"
    original = victim.read_bytes()
    outcomes = {"refused": 0, "opened": 0}
    for pos in _positions(len(original), n_flips, seed=7):
        data = bytearray(original)
        data[pos] ^= 1 << (pos % 8)
        victim.write_bytes(bytes(data))
        try:
            got = CandidateStore.open(damaged).gather(docids)
        except StoreCorruptError:
            outcomes["refused"] += 1
            continue
        except KeyError as e:  # a flipped docid-free field cannot lose docids...
            pytest.fail(f"byte {pos}: {e!r}")
        outcomes["opened"] += 1
        assert (got.vectors == want.vectors).all() and (got.pooled == want.pooled).all()
    assert outcomes["refused"] >= 1, outcomes


# --- semantic checks that a checksum cannot make (files re-sealed after the change) ----------


def _reseal(path: Path, rel: str) -> None:
    """Record ``rel``'s current bytes in the manifest (and shard.json) as if it was written so."""
    m = json.loads((path / "manifest.json").read_text())
    m.pop(MANIFEST_CHECKSUM)
    folder, fname = rel.split("/")
    data = (path / rel).read_bytes()
    entries = m["shards"] + [m["index"]]
    for entry in entries:
        if entry["name"] == folder:
            rec = entry["files"][fname]
            rec["bytes"], rec["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            if fname.endswith(".npy"):
                arr = np.load(path / rel, mmap_mode="r")
                rec["shape"], rec["dtype"] = list(arr.shape), arr.dtype.str
            if folder.startswith("shard-"):
                (path / folder / "shard.json").write_text(json_text(entry))
    m[MANIFEST_CHECKSUM] = manifest_checksum(m)
    (path / "manifest.json").write_text(json_text(m))


def test_duplicate_docid_in_lookup_index_is_reported(damaged: Path) -> None:
    index = json.loads((damaged / "manifest.json").read_text())["index"]["name"]
    rel = f"{index}/docids_sorted.npy"
    keys = np.load(damaged / rel)
    keys[5] = keys[4]
    np.save(damaged / rel, keys)
    _reseal(damaged, rel)
    report = verify_store(damaged)
    assert any(p.file == rel and "repeats" in p.message for p in report.problems), report.format()


def test_superseded_rows_are_reported_and_refused(damaged: Path) -> None:
    """dead_rows.npy is always empty now; a store listing superseded rows (add(replace=True)
    of an earlier version) is named by verify and refused by open, never served."""
    index = json.loads((damaged / "manifest.json").read_text())["index"]["name"]
    rel = f"{index}/dead_rows.npy"
    np.save(damaged / rel, np.array([3], dtype=np.int64))
    _reseal(damaged, rel)
    report = verify_store(damaged)
    assert report.bad_files == [rel] and "superseded" in report.problems[0].message
    with pytest.raises(StoreCorruptError, match=r"superseded rows.*dead_rows\.npy"):
        CandidateStore.open(damaged)


def test_decreasing_offsets_are_reported(damaged: Path) -> None:
    rel = "shard-00001/offsets.npy"
    offsets = np.load(damaged / rel)
    offsets[3], offsets[4] = offsets[4], offsets[3]
    np.save(damaged / rel, offsets)
    _reseal(damaged, rel)
    report = verify_store(damaged)
    assert any(p.file == rel and "decreases" in p.message for p in report.problems), report.format()


def test_stale_faiss_copy_is_reported(damaged: Path) -> None:
    rel = "shard-00001/pooled.faiss"
    index = faiss.read_index(str(damaged / rel))
    x = index.reconstruct_n(0, index.ntotal)
    x[7] += 0.5
    fresh = faiss.IndexFlatIP(index.d)
    fresh.add(x)
    faiss.write_index(fresh, str(damaged / rel))
    m = json.loads((damaged / "manifest.json").read_text())
    m.pop(MANIFEST_CHECKSUM)
    data = (damaged / rel).read_bytes()
    entry = next(e for e in m["shards"] if e["name"] == "shard-00001")
    entry["files"]["pooled.faiss"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (damaged / "shard-00001" / "shard.json").write_text(json_text(entry))
    m[MANIFEST_CHECKSUM] = manifest_checksum(m)
    (damaged / "manifest.json").write_text(json_text(m))
    report = verify_store(damaged)
    assert [str(p) for p in report.problems] == [
        f"{rel} differs from pooled.npy at candidate 7 (the FAISS copy is stale)"
    ]


def test_row_mapped_to_the_wrong_docid_is_reported(damaged: Path) -> None:
    index = json.loads((damaged / "manifest.json").read_text())["index"]["name"]
    rel = f"{index}/rows_sorted.npy"
    rows = np.load(damaged / rel)
    rows[[2, 3]] = rows[[3, 2]]
    np.save(damaged / rel, rows)
    _reseal(damaged, rel)
    report = verify_store(damaged)
    assert any("maps docid" in p.message for p in report.problems), report.format()


def test_missing_shard_and_leftovers(damaged: Path) -> None:
    (damaged / ".tmp-shard-00009-1").mkdir()
    shutil.rmtree(damaged / "shard-00002")
    report = verify_store(damaged)
    assert report.bad_files[0] == "shard-00002"
    assert any(".tmp-shard-00009-1" in n for n in report.notes)


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_reports_each_problem_by_file(damaged: Path, capsys: pytest.CaptureFixture) -> None:
    for rel in ("shard-00000/vectors.npy", "shard-00002/docids.npy"):
        data = bytearray((damaged / rel).read_bytes())
        data[-1] ^= 1
        (damaged / rel).write_bytes(bytes(data))
    assert cli_main(["store", "verify", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert "shard-00000/vectors.npy has a different sha256" in out
    assert "shard-00002/docids.npy has a different sha256" in out
    assert "2 problem(s) in 2 file(s)" in out
    with pytest.raises(StoreCorruptError, match=r"vectors\.npy has a different sha256.*docids"):
        CandidateStore.open(damaged).verify()


def test_cli_refuses_paths_that_are_not_stores(tmp_path: Path, capsys) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    assert cli_main(["store", "verify", str(tmp_path / "file.txt")]) == 2
    assert "is a file, not a store directory" in capsys.readouterr().err
    assert cli_main(["store", "verify", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["store", "verify", str(tmp_path / "empty")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["store", "bogus"])


def test_incomplete_build_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CandidateStore.build(path, HashScorer(), make_docs(5))
    (path / "manifest.json").unlink()
    report = verify_store(path)
    assert report.bad_files == ["manifest.json"] and "mode='resume'" in report.problems[0].message
