"""A full disk during a training run: a clear error, the previous checkpoint intact, no temp files.

* ENOSPC injected at the write calls of ``mixencoder.training.train`` with ``checkpoint_every=1``
  (SQLite-style: one run counts them, then each chosen one fails in a fresh run). Every layer
  fails the way it fails on a real full disk (checked on a tmpfs): Python writes and renames with
  ``OSError(ENOSPC)``, ``safetensors.torch.save_file`` with ``SafetensorError("... (os error
  28)")``, the tokenizer's ``tokenizer.json`` writer with a bare ``Exception("... (os error
  28)")``. Each time: an ``OSError`` with errno ENOSPC naming the checkpoint and the step, the
  previous ``checkpoint-latest`` intact (or none, for the first save), nothing hidden left in the
  output directory, and resuming gives weights bit-identical to an uninterrupted run.
* A real full disk: a tmpfs (mounted in a user namespace; skipped where that is not allowed) big
  enough for one checkpoint but not for the second one being written next to it.
* ``-m slow``: every call of all three checkpoint saves (but the middle ``write()``s of a file),
  and every call of the end-of-run ``final/`` model save (``models/persistence.py``): an
  OSError each time, no temporary file left.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import tokenizers
import torch
from safetensors import SafetensorError

from mixencoder import MixEncoder
from mixencoder.training import CHECKPOINT_NAME, MatchingExample, TrainingConfig, train
from mixencoder.training.checkpoint import find_checkpoint
from reliability_support import PYTHON, subprocess_env

SMALL = dict(query_max_length=24, candidate_max_length=48)
LETTERS = "cdefghijklmnopqrstuvwxyz"
STEPS = 3  # checkpoints after steps 1 and 2 and at the end (3), then the final model


def train_set() -> list[MatchingExample]:
    return [
        MatchingExample(f"what is {LETTERS[2 * i]} {LETTERS[2 * i + 1]}",
                        f"the {LETTERS[2 * i]} {LETTERS[2 * i + 1]} of the city",
                        tuple(f"the {LETTERS[(2 * i + 5 + j) % 24]} of bread {j}" for j in range(2)))
        for i in range(8)
    ]


def train_config() -> TrainingConfig:
    # h=1 of 2 negatives draws from the data RNG, dropout from torch's: a resume must restore both.
    return TrainingConfig(batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=1,
                          max_steps=STEPS, seed=7, hard_negatives_per_query=1)


@pytest.fixture(scope="module")
def model_dir(tiny_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MixEncoder, so every run (and the child process) starts from the same weights."""
    out = tmp_path_factory.mktemp("tiny-mix")
    MixEncoder.from_pretrained(tiny_backbone_dir, **SMALL).save_pretrained(out)
    return out


def _no_space(what: str) -> OSError:
    return OSError(errno.ENOSPC, f"No space left on device (injected at {what})")


class DiskFull:
    """Counts the write calls under ``root``; call number ``fail_at`` fails as on a full disk.

    ``calls`` logs ``(what, path)`` per call. Python file writes (``open`` and ``os.fdopen``
    handles) count each ``write()``; safetensors files, the tokenizer's ``tokenizer.json`` and
    renames into ``root`` count one each.
    """

    def __init__(self, root: Path, fail_at: int | None) -> None:
        self.root, self.fail_at = str(root), fail_at
        self.calls: list[tuple[str, str]] = []

    def _under(self, path) -> bool:
        return str(path).startswith(self.root)

    def _tick(self, what: str, path, error) -> None:
        self.calls.append((what, str(path)))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise error

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        injector = self
        real_open, real_fdopen = builtins.open, os.fdopen
        real_save_file, real_tok_save = safetensors.torch.save_file, tokenizers.Tokenizer.save
        real_rename, real_replace = os.rename, os.replace

        class Proxy:
            def __init__(self, handle, name):
                self._h, self._name = handle, name

            def write(self, data):
                injector._tick("write", self._name, _no_space("write"))
                return self._h.write(data)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._h.__exit__(*exc)

            def __iter__(self):
                return iter(self._h)

            def __getattr__(self, name):
                return getattr(self._h, name)

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and injector._under(file):
                return Proxy(handle, file)
            return handle

        def fake_fdopen(fd, mode="r", *args, **kwargs):
            handle = real_fdopen(fd, mode, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{fd}")
            if any(c in mode for c in "wax+") and injector._under(name):
                return Proxy(handle, name)
            return handle

        def fake_save_file(tensors, filename, *args, **kwargs):
            if injector._under(filename):
                injector._tick("safetensors", filename, SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"))
            return real_save_file(tensors, filename, *args, **kwargs)

        def fake_tok_save(self, path, *args, **kwargs):
            if injector._under(path):
                injector._tick("tokenizer.json", path,
                               Exception("No space left on device (os error 28)"))
            return real_tok_save(self, path, *args, **kwargs)

        def renamer(real, what):
            def fake(src, dst, *args, **kwargs):
                if injector._under(dst):
                    injector._tick(what, dst, _no_space(what))
                return real(src, dst, *args, **kwargs)
            return fake

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "fdopen", fake_fdopen)
        monkeypatch.setattr(safetensors.torch, "save_file", fake_save_file)
        monkeypatch.setattr(tokenizers.Tokenizer, "save", fake_tok_save)
        monkeypatch.setattr(os, "rename", renamer(real_rename, "rename"))
        monkeypatch.setattr(os, "replace", renamer(real_replace, "replace"))


def hidden(out: Path) -> list[str]:
    """Temp files and directories anywhere under ``out`` (every temp name here is hidden)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.name.startswith(".") or ".tmp" in p.name)


def _phase(path: str, out: Path) -> str:
    """Which save a write belongs to: the checkpoint's temp dir or swap, or ``final``."""
    rel = Path(path).relative_to(out).parts
    if rel[0] == "final":
        return "final"
    return "checkpoint"  # temp dir of the save, or the swap's renames


def _checkpoint_saves(calls: list[tuple[str, str]], out: Path) -> list[list[int]]:
    """The call numbers (1-based) of each checkpoint save, in order."""
    saves: list[list[int]] = []
    tmp = None
    for number, (_, path) in enumerate(calls, 1):
        if _phase(path, out) != "checkpoint":
            continue
        parts = Path(path).relative_to(out).parts
        this = parts[0] if parts[0].startswith(f".{CHECKPOINT_NAME}.tmp-") else tmp
        if this != tmp:
            saves.append([])
            tmp = this
        saves[-1].append(number)
    return saves


def _points(calls: list[tuple[str, str]], numbers: list[int]) -> list[int]:
    """The first and the last write() of each file, and every other call (one per file)."""
    chosen, seen = [], {}
    for k in numbers:
        what, path = calls[k - 1]
        if what == "write":
            seen.setdefault(path, []).append(k)
        else:
            chosen.append(k)
    for ks in seen.values():
        chosen += sorted({ks[0], ks[-1]})
    return sorted(chosen)


def _shape(call: tuple[str, str], out: Path) -> str:
    """A call with its run's directory and random temp-name parts taken out."""
    rel = str(Path(call[1]).relative_to(out))
    rel = re.sub(r"\.tmp-\d+-[0-9a-f]{8}", ".tmp-*", rel)
    rel = re.sub(r"\.old-[0-9a-f]{8}", ".old-*", rel)
    return f"{call[0]} " + re.sub(r"(\.config\.json\.)[^/]+$", r"\1*", rel)


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def straight(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run (its write calls counted): weights, losses, the calls, its out dir."""
    out = tmp_path_factory.mktemp("straight") / "run"
    counter = DiskFull(out, None)
    model = MixEncoder.from_pretrained(model_dir)
    with pytest.MonkeyPatch.context() as m:
        counter.install(m)
        result = train(model, train_set(), train_config(), output_dir=out)
    assert result.global_step == STEPS
    return {"weights": _weights(model), "losses": result.losses, "calls": counter.calls, "out": out}


# Fast run: four failures in the second checkpoint save (a previous checkpoint exists), one per
# way a write fails: safetensors' error, the tokenizer's bare Exception, a Python write() (the
# last one of trainer_state.json, leaving a partial file) and the swap's last rename (the previous
# checkpoint is already renamed away and must be put back). The slow run fails every call but
# the middle write()s of each file, in all three saves (38 points).
FAST_KINDS = ("safetensors", "tokenizer.json", "write", "rename")


def _chosen_points(straight, full: bool) -> list[tuple[int, int | None]]:
    """``(call number, step of the checkpoint that must survive or None)`` to fail."""
    calls, out = straight["calls"], straight["out"]
    saves = _checkpoint_saves(calls, out)
    assert len(saves) == STEPS, [len(s) for s in saves]  # steps 1, 2 and the end-of-run save
    if full:
        return [(k, i or None) for i, numbers in enumerate(saves) for k in _points(calls, numbers)]
    second = _points(calls, saves[1])
    picked = [[k for k in second if calls[k - 1][0] == kind][0 if kind in FAST_KINDS[:2] else -1]
              for kind in FAST_KINDS]
    return [(k, 1) for k in sorted(picked)]


def _train_with_disk_full(model_dir, out, k: int, raises: type[BaseException]):
    """Train into ``out`` with the ``k``-th write call failing as a full disk; the run must
    raise ``raises``. Returns the injector (its recorded calls) and the ``pytest.raises`` info."""
    injector = DiskFull(out, k)
    with pytest.MonkeyPatch.context() as m:
        injector.install(m)
        with pytest.raises(raises) as info:
            train(MixEncoder.from_pretrained(model_dir), train_set(), train_config(), output_dir=out)
    return injector, info


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_enospc_during_training_checkpoint_saves(model_dir, straight, tmp_path, full) -> None:
    calls = straight["calls"]
    points = _chosen_points(straight, full)
    kinds = {calls[k - 1][0] for k, _ in points}
    assert set(FAST_KINDS) <= kinds, kinds  # every kind of write call is failed at least once
    for k, survivor in points:
        out = tmp_path / f"fail{k}"
        injector, info = _train_with_disk_full(model_dir, out, k, OSError)
        where = f"call {k} ({calls[k - 1][0]} {_shape(calls[k - 1], straight['out'])})"
        # The very call the count run made (the runs are deterministic).
        assert _shape(injector.calls[-1], out) == _shape(calls[k - 1], straight["out"]), where
        message = str(info.value)
        assert info.value.errno == errno.ENOSPC, (where, message)
        assert "No space left on device" in message, (where, message)
        assert f"training checkpoint of step {survivor + 1 if survivor else 1}" in message, where
        assert str(out / CHECKPOINT_NAME) in message, (where, message)
        assert hidden(out) == [], (where, hidden(out))

        ckpt = find_checkpoint(out)
        if survivor is None:
            assert ckpt is None and "no earlier checkpoint exists" in message, (where, message)
        else:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            assert state["global_step"] == survivor, where
            assert f"still holds the previous checkpoint (step {survivor})" in message, where
        # The previous checkpoint loads and resumes to exactly the uninterrupted run's weights.
        resumed = MixEncoder.from_pretrained(model_dir)
        result = train(resumed, train_set(), train_config(), output_dir=out)
        assert result.resumed_from_step == survivor, where
        assert result.losses == straight["losses"][survivor or 0 :], where
        for name, value in _weights(resumed).items():
            assert torch.equal(value, straight["weights"][name]), (where, name)
        assert hidden(out) == [], (where, hidden(out))
        shutil.rmtree(out)


@pytest.mark.slow
def test_enospc_during_the_final_model_save(model_dir, straight, tmp_path) -> None:
    """The end of a run writes ``final/`` (``MixEncoder.save_pretrained``, outside the checkpoint
    code) after the last checkpoint: a failure there keeps that checkpoint, and rerunning
    ``train`` resumes at the last step and writes ``final/`` again; every failure is an OSError
    and leaves no temporary file (``models/persistence.save_model``)."""
    calls, base = straight["calls"], straight["out"]
    finals = [k for k, (_, path) in enumerate(calls, 1) if _phase(path, base) == "final"]
    gaps = []
    for k in _points(calls, finals):
        out = tmp_path / f"fail{k}"
        _, info = _train_with_disk_full(model_dir, out, k, Exception)
        where = _shape(calls[k - 1], base)
        state = json.loads((out / CHECKPOINT_NAME / "trainer_state.json").read_text())
        assert state["global_step"] == STEPS, where
        result = train(MixEncoder.from_pretrained(model_dir), train_set(), train_config(),
                       output_dir=out)
        assert result.resumed_from_step == STEPS and result.losses == [], where
        final = MixEncoder.from_pretrained(out / "final")
        for name, value in _weights(final).items():
            assert torch.equal(value, straight["weights"][name]), (where, name)
        if not isinstance(info.value, OSError):
            gaps.append(f"{where}: {type(info.value).__name__}, not OSError")
        if hidden(out):
            gaps.append(f"{where}: left {hidden(out)} (also after the rerun)")
    assert not gaps, "; ".join(gaps)


def test_a_non_io_error_in_a_save_is_not_disguised(model_dir, tmp_path, monkeypatch) -> None:
    """Only I/O errors become OSError; a bug (here a ValueError) passes through as it is."""
    from mixencoder.training import checkpoint as ckpt_module

    def broken(*args):
        raise ValueError("a bug, not a full disk")

    monkeypatch.setattr(ckpt_module, "_flatten_optimizer", broken)
    with pytest.raises(ValueError, match="a bug, not a full disk"):
        train(MixEncoder.from_pretrained(model_dir), train_set(), train_config(),
              output_dir=tmp_path / "run")
    assert hidden(tmp_path / "run") == []


_FULL_DISK = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    from mixencoder import MixEncoder
    from mixencoder.training import train
    from test_reliability_training import train_set, train_config
    model_dir, out, keep = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    result = {}
    try:
        train(MixEncoder.from_pretrained(model_dir), train_set(), train_config(), output_dir=out)
        result["error"] = None
    except Exception as e:
        result.update(error=str(e), type=type(e).__name__, errno=getattr(e, "errno", None))
    result["files"] = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    state = out / "checkpoint-latest" / "trainer_state.json"
    result["step"] = json.loads(state.read_text())["global_step"] if state.is_file() else None
    if state.is_file():
        shutil.copytree(out / "checkpoint-latest", keep / "checkpoint-latest")
    print(json.dumps(result))
    """
)


def test_real_full_disk_during_training(model_dir, straight, tmp_path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run([unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode()[:200]}")
    # Room for one checkpoint (and the run's other files) but not for a second beside it.
    ckpt_bytes = sum(p.stat().st_size for p in (straight["out"] / CHECKPOINT_NAME).rglob("*")
                     if p.is_file())
    size_kb = int(1.5 * ckpt_bytes / 1024) + 64
    script = tmp_path / "full.py"
    script.write_text(_FULL_DISK)
    keep = tmp_path / "keep"
    cmd = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && "
           f"{PYTHON} {script} {model_dir} {mnt / 'run'} {keep}")
    proc = subprocess.run([unshare, "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["type"] == "OSError" and result["errno"] == errno.ENOSPC, result
    assert "could not save the training checkpoint of step 2" in result["error"], result
    assert result["step"] == 1, result  # the first checkpoint, intact
    assert not [f for f in result["files"] if f.startswith(".") or "/." in f], result
    # It resumes (here, on a disk with room) to the uninterrupted run's weights.
    resumed = MixEncoder.from_pretrained(model_dir)
    out = train(resumed, train_set(), train_config(), output_dir=keep)
    assert out.resumed_from_step == 1 and out.losses == straight["losses"][1:]
    for name, value in _weights(resumed).items():
        assert torch.equal(value, straight["weights"][name]), name
