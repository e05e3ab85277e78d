"""The online scoring path (flat rows, all heads per GEMM, Eq. 2 folded into the query) against
the batched functions and the plain per-pair equations."""

from __future__ import annotations

import pytest
import torch

from mixencoder.models import functional as MF
from test_model import CONFIGS, DOCS, QUERIES, perturb, reference_score


def test_flat_candidate_attention_equals_the_batched_function():
    gen = torch.Generator().manual_seed(0)
    n, k, q, heads, dh = 5, 3, 7, 4, 8
    d = heads * dh
    q_c, k_c, v_c = (torch.randn(n, k, d, generator=gen) for _ in range(3))
    k_q, v_q = torch.randn(q, heads, dh, generator=gen), torch.randn(q, heads, dh, generator=gen)
    expected = MF.candidate_query_attention(
        MF.split_heads(q_c[None], heads), MF.split_heads(k_c[None], heads), MF.split_heads(v_c[None], heads),
        k_q[None], v_q[None], torch.ones(1, q, dtype=torch.bool),
    )[0]
    flat = MF.candidate_query_attention_flat(
        q_c, k_c, v_c, MF.block_diagonal_keys(k_q), MF.block_diagonal_values(v_q), heads
    )
    torch.testing.assert_close(flat, MF.merge_heads(expected).reshape(n * k, d), rtol=1e-5, atol=1e-5)


def test_flat_pooled_attention_equals_the_batched_function():
    gen = torch.Generator().manual_seed(1)
    n, q, heads, dh = 6, 5, 3, 4
    q_star = torch.randn(n, heads, dh, generator=gen)
    k_q, v_q = torch.randn(q, heads, dh, generator=gen), torch.randn(q, heads, dh, generator=gen)
    expected = MF.pooled_query_attention(q_star[None], k_q[None], v_q[None], torch.ones(1, q, dtype=torch.bool))[0]
    scores = MF.merge_heads(q_star) @ MF.block_diagonal_keys(k_q) / dh**0.5
    probs = MF.pooled_query_attention_flat(scores, heads)
    out = probs @ MF.block_diagonal_values(v_q)
    torch.testing.assert_close(out, MF.merge_heads(expected), rtol=1e-5, atol=1e-5)


def test_block_diagonal_layout_puts_each_head_in_its_own_block():
    k_q = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (q=2, H=3, dh=2)
    keys = MF.block_diagonal_keys(k_q)
    assert keys.shape == (6, 6)
    torch.testing.assert_close(keys[2:4, 2:4], k_q[:, 1].T)  # head 1: rows dh-block 1, cols q-block 1
    assert not bool(keys[0:2, 2:].any())
    values = MF.block_diagonal_values(k_q)
    torch.testing.assert_close(values[4:6, 4:6], k_q[:, 2])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
def test_a_padded_query_scores_like_the_same_query_alone(tiny_model_factory, config):
    # score() drops the query's padding instead of masking it; a row of a padded batch must
    # score exactly as the query encoded alone.
    model = perturb(tiny_model_factory(**config))
    reps = model.encode_candidates(DOCS)
    with torch.no_grad():
        batch = model.encode_queries_torch(**model.tokenize_queries(QUERIES))
    short = min(range(len(QUERIES)), key=lambda i: int(batch.mask[i].sum()))
    assert not bool(batch.mask[short].all()), "the test needs a padded query"
    row = type(batch)(
        [x[short : short + 1] for x in batch.keys], [x[short : short + 1] for x in batch.values],
        batch.mask[short : short + 1], batch.pooled[short : short + 1],
    )
    alone = model.score(model.encode_query(QUERIES[short]), reps)
    torch.testing.assert_close(model.score(row, reps), alone, rtol=1e-5, atol=1e-5)
    expected = torch.tensor([reference_score(model, QUERIES[short], d) for d in DOCS])
    torch.testing.assert_close(alone, expected, rtol=1e-4, atol=1e-4)


def test_scores_do_not_depend_on_the_chunking(tiny_model_factory, monkeypatch):
    import mixencoder.models.mixencoder as mixencoder_module

    model = perturb(tiny_model_factory(k=2, interaction_layers=[2, 3]))
    reps = model.encode_candidates(DOCS * 3)
    query = model.encode_query(QUERIES[0])
    whole = model.score(query, reps)
    monkeypatch.setattr(mixencoder_module, "SCORE_CHUNK", 5)
    torch.testing.assert_close(model.score(query, reps), whole, rtol=1e-6, atol=1e-6)


def test_bench_speed_smoke(shared_data, tmp_path):
    # Not a benchmark: one query, one round, a tiny backbone; checks the variants run, the
    # JSON keeps its schema and the FLOP model counts what the precomputed layout saves.
    import json
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer, BertConfig, BertModel

    root = Path(__file__).resolve().parents[1]
    backbone = tmp_path / "tiny-bert-512"  # room for the default 180 candidate tokens
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(str(root / "tests" / "fixtures" / "tiny-bert"), max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(backbone))
    AutoTokenizer.from_pretrained(str(root / "tests" / "fixtures" / "tiny-bert")).save_pretrained(str(backbone))
    out = tmp_path / "speed.json"
    systems = "mixencoder-a@batched,mixencoder-a,mixencoder-a@precomputed,mixencoder-a@int8"
    subprocess.run(
        [sys.executable, str(root / "eval" / "bench_speed.py"), "--systems", systems, "--queries", "1",
         "--rounds", "1", "--warmup", "0", "--build-docs", "2", "--threads", "1", "--backbone", str(backbone),
         "--data-dir", str(shared_data / "msmarco" / "dl20"), "--cache", str(tmp_path / "cache"), "--json", str(out)],
        check=True, capture_output=True, timeout=600,
    )
    report = json.loads(out.read_text())
    plain, pre = report["systems"]["mixencoder-a"], report["systems"]["mixencoder-a@precomputed"]
    for result in report["systems"].values():
        for n in ("1000", "100"):
            assert result[n]["ms_per_query"] > 0 and result[n]["speedup_vs_reference"] > 0
            assert result[n]["lower_bound_ms"] > 0
        assert result["encode_docs_per_s"] > 0
    assert report["systems"]["mixencoder-a@batched"]["1000"]["speedup_vs_reference"] == 1.0
    d = 32  # the tiny backbone's width, k = 1: Q', K', V' and the gate's mean-E block, 2 FLOPs per MAC
    assert plain["1000"]["flops"] - pre["1000"]["flops"] == 2 * 1000 * (3 * d * d + d * d)
    assert pre["bytes_per_candidate"] > plain["bytes_per_candidate"]


def test_few_and_many_candidates_score_alike(tiny_model_factory):
    # Past H*q candidates score() folds h_query/h_dense into the query; below it does not.
    model = perturb(tiny_model_factory(k=2, interaction_layers=[2, 3]))
    query = model.encode_query(QUERIES[0])
    few = model.encode_candidates(DOCS)
    many = model.encode_candidates(DOCS * 40)
    assert len(few) < model.num_heads * int(query.mask.sum()) < len(many)
    torch.testing.assert_close(model.score(query, many)[: len(DOCS)], model.score(query, few), rtol=1e-5, atol=1e-5)
