"""mixencoder.models.persistence: the on-disk format every model shares, and the fingerprint
digest that keys stores on disk (both must stay stable across refactors)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mixencoder.models import persistence as P
from mixencoder.models.biencoder import BiEncoder


class _Tokenizer:
    """Stands in for a Hugging Face tokenizer: what save_model and the digest use of one."""

    def save_pretrained(self, directory: str) -> None:
        (Path(directory) / "tokenizer.json").write_text("{}")

    def get_vocab(self) -> dict[str, int]:
        return {"[PAD]": 0, "a": 1}


def test_write_json_atomic_is_sorted_and_leaves_no_temp_file(tmp_path):
    P.write_json_atomic(tmp_path / "config.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "config.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_read_config(tmp_path):
    assert P.read_config(tmp_path) is None
    assert P.read_config(tmp_path / "not-a-dir") is None
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        P.read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert P.read_config(tmp_path) == {"model_type": "bert"}
    assert not P.is_saved_model({"model_type": "bert"})
    assert P.is_saved_model({"format_version": 1, "config": {}})


def test_save_model_layout_and_load_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    P.save_model(tmp_path, "toy", {"x": 1}, model, _Tokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    data = json.loads((tmp_path / "config.json").read_text())
    assert data == {
        "model_type": "toy",
        "format_version": P.FORMAT_VERSION,
        "mixencoder_version": P.package_version(),
        "config": {"x": 1},
    }
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "model.safetensors"))) == sorted(model.state_dict())

    other = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    P.load_weights(other, tmp_path / "model.safetensors")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)

    with pytest.raises(ValueError, match="does not match its config.json"):
        P.load_weights(nn.Linear(3, 2), tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="is missing; the saved model is incomplete"):
        P.load_weights(other, tmp_path / "absent.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        P.load_weights(other, tmp_path / "model.safetensors")


def _reference_digest(named, tokenizer, unnamed=()):
    """The digest as first defined (stores on disk are keyed by it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for tensor in unnamed:
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(P.tokenizer_bytes(tokenizer))
    return digest.hexdigest()


def test_candidate_digest_is_the_reference_and_ignores_input_order():
    tok = _Tokenizer()
    named = [("b", torch.arange(4.0)), ("a", torch.ones(2, 2, dtype=torch.float16))]
    extra = [torch.zeros(3)]
    assert P.candidate_digest(named, tok) == _reference_digest(named, tok)
    assert P.candidate_digest(named[::-1], tok, unnamed=extra) == _reference_digest(named, tok, extra)
    assert P.candidate_digest(named, tok) != P.candidate_digest(named, tok, unnamed=extra)
    assert P.tokenizer_bytes(tok) == json.dumps([["[PAD]", 0], ["a", 1]]).encode()


def test_model_fingerprints_use_the_reference_digest(tiny_model_factory, tiny_backbone_dir):
    mix = tiny_model_factory(k=2)
    fp = mix.candidate_fingerprint()
    ref = _reference_digest(mix.backbone.state_dict().items(), mix.tokenizer, [mix.special_or_codes])
    assert fp["sha256"] == ref
    assert set(fp) == {"model_type", "strategy", "k", "dim", "candidate_max_length", "sha256"}

    dual = BiEncoder.from_pretrained(tiny_backbone_dir)
    fp = dual.candidate_fingerprint()
    assert fp["sha256"] == _reference_digest(dual.backbone.state_dict().items(), dual.tokenizer)
    assert fp == {
        "model_type": "dual", "candidate_max_length": 180, "dim": dual.hidden_size,
        "pooling": "mean", "layout": "one pooled vector", "sha256": fp["sha256"],
    }


def test_loading_the_bundled_backbone_reports_nothing():
    # transformers' LOAD REPORT about the bundled MiniLM's unused pooler weights reads as an
    # error to a user; loading must not print it (real warnings still go through).
    import os
    import subprocess
    import sys

    code = "from mixencoder import MixEncoder; m = MixEncoder.from_pretrained(); assert m.backbone.pooler is None"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOAD REPORT" not in out.stderr + out.stdout and "UNEXPECTED" not in out.stderr + out.stdout
