"""Faults and hostile inputs: full disks, wrong paths, no code on load.

* ENOSPC injected at every write call of a store build, an add and an ANN build (SQLite-style:
  run once to count the write calls, then fail each one in turn): an ``OSError`` with errno
  ENOSPC, the previous store intact (opens, verifies, same reps), no temp files left behind.
* A real full disk: a 1 MiB tmpfs mounted in a user namespace (skipped where that is not
  allowed), filled by an ``add``.
* A store path that is a file, an index directory that is not a Lucene index: clear errors.
* Security: no pickle, ``eval``/``exec`` or unsafe ``torch.load`` in the package; a saved model
  naming an unknown ``model_type`` is refused; a backbone whose config asks for remote code
  does not run it.
"""

from __future__ import annotations

import builtins
import errno
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import faiss
import pytest
import torch

from mixencoder import CandidateStore
from mixencoder.store import IncompleteStoreError
from mixencoder.store.verify import verify_store
from reliability_support import PYTHON, REPO, HashScorer, make_docs, subprocess_env

PACKAGE = REPO / "plugin" / "mixencoder"


class DiskFull:
    """Counts write calls to files under ``root``; raises ENOSPC at call number ``fail_at``.

    Covers Python-level writes (``open(...).write``, which ``np.save``, ``shutil.copyfileobj``
    and the JSON writer all go through) and ``faiss.write_index`` (C++ I/O, failed the way
    FAISS fails: a RuntimeError).
    """

    def __init__(self, root: Path, fail_at: int | None) -> None:
        self.root, self.fail_at, self.calls = str(root), fail_at, 0

    def _tick(self, what: str) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {what})")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_write_index = builtins.open, faiss.write_index
        injector = self

        class Proxy:
            def __init__(self, handle):
                self._h = handle

            def write(self, data):
                injector._tick("write")
                return self._h.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._h.__exit__(*exc)

            def __getattr__(self, name):
                return getattr(self._h, name)

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and str(file).startswith(injector.root):
                return Proxy(handle)
            return handle

        def fake_write_index(index, path):
            if str(path).startswith(injector.root):
                try:
                    injector._tick("faiss.write_index")
                except OSError as e:
                    raise RuntimeError(f"Error in faiss::FileIOWriter: {e}") from None
            return real_write_index(index, path)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(faiss, "write_index", fake_write_index)


def leftovers(path: Path) -> list[str]:
    return sorted(
        str(p.relative_to(path)) for p in path.rglob("*")
        if p.name.startswith(".") or p.suffix in (".raw", ".tmp") or ".tmp-" in p.name
    )


def _each_write_fails(tmp_path: Path, monkeypatch, prepare, operation, check, limit=None):
    """Count the write calls of ``operation``, then fail each one (or ``limit`` spread out)."""
    base = tmp_path / "count"
    prepare(base)
    counter = DiskFull(base, None)
    with monkeypatch.context() as m:
        counter.install(m)
        operation(base)
    total = counter.calls
    assert total >= 2
    points = list(range(1, total + 1))
    if limit is not None and total > limit:
        step = total / limit
        points = sorted({1, total} | {int(1 + i * step) for i in range(limit)})
    for k in points:
        path = tmp_path / f"fail{k}"
        prepare(path)
        injector = DiskFull(path, k)
        with monkeypatch.context() as m:
            injector.install(m)
            with pytest.raises(OSError) as info:
                operation(path)
        assert info.value.errno == errno.ENOSPC or "No space left" in str(info.value), k
        assert leftovers(path) == [], (k, leftovers(path))
        check(path)
        shutil.rmtree(path)
    return len(points)


FAST_POINTS = 12


@pytest.mark.parametrize("limit", [FAST_POINTS, pytest.param(None, marks=pytest.mark.slow)])
def test_enospc_during_add_keeps_the_previous_store(tmp_path, monkeypatch, limit) -> None:
    model = HashScorer()
    reference = CandidateStore.build(tmp_path / "ref", model, make_docs(12), shard_size=5)
    want = reference.gather([d for d, _ in make_docs(12)])

    def prepare(path):
        shutil.copytree(reference.path, path)

    def operation(path):
        CandidateStore.open(path).add(model, make_docs(11, prefix="x"), batch_size=4)

    def check(path):
        store = CandidateStore.open(path)
        assert len(store) == 12 and verify_store(path).ok
        assert torch.equal(store.gather([d for d, _ in make_docs(12)]).vectors, want.vectors)
        store.add(model, make_docs(11, prefix="x"), batch_size=4)  # works once space is back
        assert len(store) == 23

    assert _each_write_fails(tmp_path, monkeypatch, prepare, operation, check, limit) >= 5


@pytest.mark.parametrize("limit", [FAST_POINTS, pytest.param(None, marks=pytest.mark.slow)])
def test_enospc_during_build_leaves_a_resumable_build(tmp_path, monkeypatch, limit) -> None:
    model = HashScorer()
    clean = CandidateStore.build(tmp_path / "clean", model, make_docs(13), shard_size=5)

    def operation(path):
        CandidateStore.build(path, model, make_docs(13), shard_size=5, mode="resume")

    def check(path):
        # Nothing committed: an unfinished build, or (failed at the first write) no store yet.
        with pytest.raises((IncompleteStoreError, FileNotFoundError)):
            CandidateStore.open(path)
        resumed = CandidateStore.build(path, model, make_docs(13), shard_size=5, mode="resume")
        ids = [d for d, _ in make_docs(13)]
        assert torch.equal(resumed.gather(ids).vectors, clean.gather(ids).vectors)

    assert _each_write_fails(tmp_path, monkeypatch, lambda p: None, operation, check, limit) >= 5


def test_enospc_during_ann_build_keeps_exact_search(tmp_path, monkeypatch) -> None:
    model = HashScorer(pooled_dim=8)
    reference = CandidateStore.build(tmp_path / "ref", model, make_docs(400), shard_size=200)
    q = torch.randn(3, 8).numpy()
    exact = reference.search(q, 5)

    def operation(path):
        CandidateStore.open(path).build_ann_index(nlist=4, nprobe=4)

    def check(path):
        store = CandidateStore.open(path)
        assert store.search(q, 5) == exact and verify_store(path).ok
        with pytest.raises(FileNotFoundError, match="no approximate index"):
            store.search(q, 5, approximate=True)

    n = _each_write_fails(tmp_path, monkeypatch, lambda p: shutil.copytree(reference.path, p),
                          operation, check)
    assert n >= 2  # index.faiss and ann.json


_FULL_DISK = textwrap.dedent(
    """
    import errno, json, sys
    from pathlib import Path
    from mixencoder import CandidateStore
    from mixencoder.store.verify import verify_store
    from reliability_support import HashScorer, make_docs
    root = Path(sys.argv[1])
    model = HashScorer(dim=64, pooled_dim=64, max_vectors=8)
    store = CandidateStore.build(root / "s", model, make_docs(40), shard_size=20)
    before = store.gather([d for d, _ in make_docs(40)]).vectors.numpy().tobytes()
    out = {}
    try:
        store.add(model, make_docs(5000, prefix="x"), batch_size=64)
        out["error"] = None
    except OSError as e:
        out["error"], out["errno"] = str(e), e.errno
    again = CandidateStore.open(root / "s")
    out["count"] = len(again)
    out["same"] = again.gather([d for d, _ in make_docs(40)]).vectors.numpy().tobytes() == before
    out["verify_ok"] = verify_store(root / "s").ok
    out["left"] = sorted(p.name for p in (root / "s").rglob("*") if ".tmp" in p.name or
                         p.suffix == ".raw")
    print(json.dumps(out))
    """
)


def test_real_full_disk_on_a_small_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    cmd = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
           f"{PYTHON} {script} {mnt}")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode()[:200]}")
    proc = subprocess.run([unshare, "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errno"] == errno.ENOSPC, out
    assert out["count"] == 40 and out["same"] and out["verify_ok"] and out["left"] == [], out


# --- clear errors for wrong paths ------------------------------------------------------------


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "store"
    f.write_text("not a store")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CandidateStore.open(f)
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        CandidateStore.build(f, HashScorer(), make_docs(3))
    with pytest.raises(FileNotFoundError, match="is a file, not a store directory"):
        verify_store(f)
    assert f.read_text() == "not a store"


def test_index_dir_that_is_not_a_lucene_index(tmp_path: Path) -> None:
    from mixencoder.first_stage import BM25Searcher

    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"is not a Lucene index \(it has no segments_N"):
        BM25Searcher(tmp_path)
    with pytest.raises(FileNotFoundError, match="Lucene index not found"):
        BM25Searcher(tmp_path / "nowhere")


def test_wrong_java_home_is_a_clear_error(tmp_path: Path) -> None:
    code = ("from mixencoder.first_stage import java\n"
            f"java.configure_java({str(tmp_path)!r})\n")
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode != 0
    assert f"java_home={tmp_path} does not contain a usable Java" in proc.stderr


# --- security ----------------------------------------------------------------------------------

_UNSAFE = [
    (re.compile(r"\bimport\s+(c?pickle|dill|joblib|marshal|shelve)\b"), "pickle-family import"),
    (re.compile(r"\b(c?pickle|dill|joblib|marshal)\.(loads?|Unpickler)\b"), "unpickling call"),
    (re.compile(r"(?<![\w.])eval\("), "eval()"),
    (re.compile(r"(?<![\w.])exec\("), "exec()"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_no_pickle_eval_or_unsafe_torch_load_in_the_package() -> None:
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern, what in _UNSAFE:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{path.relative_to(REPO)}:{line}: {what}")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                problems.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert problems == []


def test_scanner_catches_what_it_should(tmp_path: Path) -> None:
    bad = "import pickle\nx = eval('1')\ntorch.load(f)\nm(trust_remote_code=True)\n"
    hits = [what for pattern, what in _UNSAFE if pattern.search(bad)]
    assert hits == ["pickle-family import", "eval()", "trust_remote_code=True"]
    assert not any(p.search("model.eval()\nself.eval()") for p, _ in _UNSAFE)


def test_unknown_model_type_is_refused(tiny_model_factory, tmp_path: Path) -> None:
    from mixencoder.models.registry import load_model

    model = tiny_model_factory()
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "evil"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'evil', which this version does not know"):
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown model_type"):
        load_model(tmp_path / "m", model_type="../../etc/passwd")


def test_backbone_asking_for_remote_code_does_not_run_it(tiny_backbone_dir, tmp_path) -> None:
    from mixencoder import MixEncoder

    evil = tmp_path / "evil"
    shutil.copytree(tiny_backbone_dir, evil)
    marker = tmp_path / "code-ran"
    (evil / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import BertModel\nclass EvilModel(BertModel):\n    pass\n"
    )
    cfg = json.loads((evil / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps(cfg))
    try:
        MixEncoder.from_pretrained(evil)
    except ValueError as e:  # transformers refuses custom code without trust_remote_code
        assert "trust_remote_code" in str(e)
    assert not marker.exists(), "code from the model directory was executed"
