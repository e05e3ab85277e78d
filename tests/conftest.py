"""Shared fixtures: a tiny random BERT (offline, seeded) and paths to the real shared data."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; CI lays ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a tiny random-weight BERT (3 layers, d=32) and its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(FIXTURES / "tiny-bert"))
    BertModel(config, add_pooling_layer=False).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(FIXTURES / "tiny-bert")).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def _tiny_model_cache(tiny_backbone_dir: Path) -> dict:
    return {}


@pytest.fixture
def tiny_model_factory(tiny_backbone_dir: Path, _tiny_model_cache: dict):
    """Builds (and caches per config) a tiny MixEncoder; each call returns a fresh deepcopy."""
    from mixencoder import MixEncoder

    def make(**config):
        key = tuple(sorted((k, str(v)) for k, v in config.items()))
        if key not in _tiny_model_cache:
            _tiny_model_cache[key] = MixEncoder.from_pretrained(tiny_backbone_dir, **config)
        return copy.deepcopy(_tiny_model_cache[key])

    return make


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 as a MixEncoder (real weights, offline)."""
    from mixencoder import MixEncoder

    return MixEncoder.from_pretrained()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (restored after): on a shared 2-core CPU, OpenMP spin-waits
    made small batches ~30x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
