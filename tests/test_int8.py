"""quantization="int8": dynamic int8 linear layers against float32, and the fingerprint that
keeps int8 stores and float32 models apart."""

from __future__ import annotations

import pytest
import torch

from mixencoder import CandidateStore, MixEncoder
from mixencoder.models.quantize import Int8Linear, quantize_linear_layers, quantize_rows
from test_model import DOCS, QUERIES, perturb

# Relevance-like passages and queries for the real-weights checks (more candidates than DOCS, so
# a rank correlation means something).
PASSAGES = [
    "The lobster roll is a sandwich native to New England, made of lobster meat on a bun.",
    "Bread is baked from a dough of flour and water, usually leavened with yeast.",
    "Rain is liquid water falling from clouds; cities drain it through storm sewers.",
    "A flea goes through egg, larva, pupa and adult stages in two weeks to months.",
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "To bake sourdough, feed the starter, mix, proof overnight and bake in a hot oven.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Maine lobster prices rise in winter when the catch is small.",
    "Vitamin D is made in the skin when it is exposed to sunlight.",
    "A sandwich is two slices of bread with a filling between them.",
    "Urban flooding happens when rainfall exceeds the capacity of drainage systems.",
]
REAL_QUERIES = ["what is a lobster roll", "how to bake bread", "why do cities flood when it rains"]
# Stated tolerance of the int8 path against float32 on the bundled all-MiniLM-L6-v2 (cosine
# scores times 20): absolute score error, and Spearman correlation of the candidate rankings
# (observed 0.986-0.993).
INT8_SCORE_ATOL = 0.6  # observed max 0.42 (scores spread with std ~3.5)
INT8_MIN_SPEARMAN = 0.95


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def test_int8_linear_is_close_to_the_float_layer():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 7, 64, generator=gen)
    layer = Int8Linear.from_linear(linear)
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    # Two 8-bit roundings: the error is a small fraction of the output's spread.
    assert float((got - expected).abs().max()) < 0.03 * float(expected.abs().max())
    # The dequantized weight is what the codes stand for.
    assert float((layer.weight - linear.weight.detach()).abs().max()) <= float(linear.weight.detach().abs().max()) / 127
    # A block of columns is the layer restricted to those input features.
    left = layer.columns(0, 32, with_bias=True)(x[..., :32])
    right = layer.columns(32, 64, with_bias=False)(x[..., 32:])
    assert float((left + right - got).abs().max()) < 0.03 * float(expected.abs().max())
    assert layer(x[:0]).shape == (0, 7, 48)


def test_quantize_rows_handles_zero_rows_and_keeps_the_range():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and bool((q[0] == 0).all()) and float(scale[0]) == 1.0
    assert int(q[1].abs().max()) == 127
    torch.testing.assert_close(q.float() * scale, x, rtol=0, atol=2.0 / 127)


def test_int8_model_scores_within_the_stated_tolerance(minilm):
    fp32 = minilm.with_inference_options()
    with torch.no_grad():  # let the interaction reach the score (an untrained model is the dual)
        gen = torch.Generator().manual_seed(0)
        fp32.mix_query.weight.copy_(torch.randn(fp32.mix_query.weight.shape, generator=gen) * 0.02)
        fp32.mix_candidate.weight.copy_(torch.randn(fp32.mix_candidate.weight.shape, generator=gen) * 0.02)
    int8 = fp32.with_inference_options(quantization="int8")
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) > 40
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    a_reps, b_reps = fp32.encode_candidates(PASSAGES), int8.encode_candidates(PASSAGES)
    for query in REAL_QUERIES:
        a = fp32.score(fp32.encode_query(query), a_reps)
        b = int8.score(int8.encode_query(query), b_reps)
        torch.testing.assert_close(b, a, rtol=0, atol=INT8_SCORE_ATOL)
        assert spearman(a, b) >= INT8_MIN_SPEARMAN
        assert int(a.argmax()) == int(b.argmax())
        assert not torch.equal(a, b)  # the int8 layers really ran


def test_int8_fingerprint_keeps_stores_apart(tiny_model_factory, tmp_path):
    fp32 = perturb(tiny_model_factory())
    int8 = fp32.with_inference_options(quantization="int8")
    assert "quantization" not in fp32.candidate_fingerprint()
    assert int8.candidate_fingerprint()["quantization"] == "int8"
    both = int8.with_inference_options(candidate_layout="precomputed").candidate_fingerprint()
    assert both["quantization"] == "int8" and both["candidate_layout"] == "precomputed"
    docs = [(f"d{i}", t) for i, t in enumerate(DOCS)]
    CandidateStore.build(tmp_path / "int8", int8, docs)
    with pytest.raises(ValueError, match="quantization"):
        CandidateStore.open(tmp_path / "int8", model=fp32)
    CandidateStore.build(tmp_path / "fp32", fp32, docs)
    with pytest.raises(ValueError, match="quantization"):
        CandidateStore.open(tmp_path / "fp32", model=int8)
    with pytest.raises(ValueError, match="cannot be turned back"):
        int8.with_inference_options(quantization="none")


def test_int8_model_saves_and_loads_with_identical_scores(tiny_model_factory, tmp_path):
    int8 = perturb(tiny_model_factory()).with_inference_options(quantization="int8")
    int8.save_pretrained(tmp_path / "m")
    loaded = MixEncoder.from_pretrained(tmp_path / "m")
    assert loaded.config.quantization == "int8"
    assert loaded.candidate_fingerprint() == int8.candidate_fingerprint()
    reps = int8.encode_candidates(DOCS)
    for query in QUERIES:
        torch.testing.assert_close(loaded.score(loaded.encode_query(query), reps), int8.score(int8.encode_query(query), reps))
    # A used model (oneDNN's packed weights cached) copies into one that scores the same.
    copied = int8.with_inference_options()
    torch.testing.assert_close(copied.score(copied.encode_query(QUERIES[0]), reps), int8.score(int8.encode_query(QUERIES[0]), reps))


def test_a_float_checkpoint_loads_into_int8_layers(tiny_model_factory):
    fp32 = perturb(tiny_model_factory())
    linear_only = torch.nn.Sequential(torch.nn.Linear(8, 4))
    quantize_linear_layers(linear_only)
    linear_only.load_state_dict({"0.weight": torch.ones(4, 8), "0.bias": torch.zeros(4)})
    torch.testing.assert_close(linear_only(torch.ones(2, 8)), torch.full((2, 4), 8.0))
    # A whole float32 model's state dict loads into its int8 twin as the int8 conversion gives it.
    int8 = fp32.with_inference_options(quantization="int8")
    twin = tiny_model_factory().with_inference_options(quantization="int8")
    twin.load_state_dict(fp32.state_dict())
    reps = int8.encode_candidates(DOCS)
    state = int8.encode_query(QUERIES[0])
    torch.testing.assert_close(twin.score(state, reps), int8.score(state, reps))


def test_an_int8_model_refuses_to_train(tiny_model_factory):
    int8 = tiny_model_factory().with_inference_options(quantization="int8")
    int8.train()
    with pytest.raises(RuntimeError, match="for inference"):
        int8(int8.tokenize_queries(QUERIES), int8.tokenize_candidates(DOCS))


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "int_mm"])
def test_both_int8_kernels_and_the_fused_gelu_are_close_to_float(monkeypatch, per_row, onednn):
    import mixencoder.models.quantize as quantize

    monkeypatch.setattr(quantize, "_ONEDNN", onednn and quantize._ONEDNN)
    gen = torch.Generator().manual_seed(3)
    linear = torch.nn.Linear(48, 40)
    x = torch.randn(9, 48, generator=gen)
    layer = Int8Linear.from_linear(linear, per_row=per_row)
    with torch.no_grad():
        expected = linear(x)
        spread = float(expected.abs().max())
        assert float((layer(x) - expected).abs().max()) < 0.03 * spread
        gelu = layer(x, post_op="gelu")
    assert float((gelu - torch.nn.functional.gelu(expected)).abs().max()) < 0.03 * spread
