"""MixEncoder: the method itself (Eq. 1, Eq. 2, heads), its invariances and its persistence."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mixencoder import CandidateReps, MixEncoder

QUERIES = ["what is a lobster roll", "how to bake bread", "rain in the city"]
DOCS = [
    "a lobster roll is a sandwich of lobster on bread",
    "rain",
    "water is the city of bread and rain and the roll of the lobster, 42 times",
    "how to bake bread in the city",
]


def perturb(model: MixEncoder, seed: int = 1) -> MixEncoder:
    """Move every parameter off its initialisation so that each term of the score matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        if model.config.pooled_residual and model.config.mixing == "scalar":
            model.alpha.fill_(0.7)
            model.beta.fill_(-0.4)
    return model.eval()


def reference_score(model: MixEncoder, query: str, text: str) -> float:
    """One (query, candidate) pair, written plainly from the paper's equations.

    No batching and none of mixencoder.models.functional: a loop over heads with explicit
    concatenation of the candidate's own keys and the query's keys.
    """
    with torch.no_grad():
        q = model.tokenize_queries([query])
        hs = model.backbone(**q, output_hidden_states=True).hidden_states
        e0, c_bar = model.encode_candidates_torch(**model.tokenize_candidates([text]))
        E, H = e0[0], torch.zeros(model.hidden_size)
        nh = model.num_heads
        dh = model.hidden_size // nh
        for layer, j in zip(model.interaction, model.layer_ids):
            attn = model.backbone.encoder.layer[j - 1].attention.self
            x = hs[j - 1][0]
            Kq, Vq = attn.key(x), attn.value(x)  # (q, d): the query's keys/values at layer j
            Qc, Kc, Vc = layer.query(E), layer.key(E), layer.value(E)  # (k, d)
            ctx, ctx_h = [], []
            e_bar = E.mean(0)
            q_star = layer.h_query(e_bar)
            for head in range(nh):
                s = slice(head * dh, (head + 1) * dh)
                keys = torch.cat([Kc[:, s], Kq[:, s]])  # Eq. 1: [K'; K]
                vals = torch.cat([Vc[:, s], Vq[:, s]])  # Eq. 1: [V'; V]
                ctx.append(torch.softmax(Qc[:, s] @ keys.T / math.sqrt(dh), -1) @ vals)
                ctx_h.append(torch.softmax(q_star[s] @ Kq[:, s].T / math.sqrt(dh), -1) @ Vq[:, s])
            a = layer.attn_norm(layer.attn_out(torch.cat(ctx, -1)) + E)
            E_next = layer.ffn.norm(layer.ffn.fc_out(layer.ffn.act(layer.ffn.fc_in(a))) + a)
            new = layer.h_dense(torch.cat(ctx_h, -1))
            g = torch.sigmoid(layer.gate(torch.cat([e_bar, new, H])))  # Eq. 2's gate
            H = layer.h_norm(g * new + (1 - g) * H)
            H = layer.h_ffn.norm(layer.h_ffn.fc_out(layer.h_ffn.act(layer.h_ffn.fc_in(H))) + H)
            E = E_next
        h, e = H, E.mean(0)
        if model.config.pooled_residual and model.config.mixing == "scalar":
            h = hs[-1][0].mean(0) + model.alpha * h
            e = c_bar[0] + model.beta * e
        elif model.config.pooled_residual:
            h = hs[-1][0].mean(0) + model.mix_query.weight @ h
            e = c_bar[0] + model.mix_candidate.weight @ e
        if model.config.similarity == "cosine":
            return float(F.cosine_similarity(h, e, dim=0) * model.log_scale.exp())
        return float(h @ e)


CONFIGS = [
    dict(),  # MixEncoder-a: k=1, last layer, S strategy, cosine, pooled residual, linear mixing
    dict(mixing="scalar"),  # the first pooled-residual design: scalar mixing weights
    dict(k=2, interaction_layers=[2, 3]),  # MixEncoder-c on 3 layers
    dict(k=3, strategy="C", similarity="dot"),
    dict(interaction_layers=[1, 2, 3], pooled_residual=False, similarity="dot"),  # paper-pure -b
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
def test_stored_scores_equal_the_equations_pair_by_pair(tiny_model_factory, config):
    model = perturb(tiny_model_factory(**config))
    reps = model.encode_candidates(DOCS, batch_size=2)
    for query in QUERIES:
        online = model.score(model.encode_query(query), reps)
        expected = torch.tensor([reference_score(model, query, d) for d in DOCS])
        torch.testing.assert_close(online, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: str(c) or "default")
def test_training_forward_matches_online_scoring(tiny_model_factory, config):
    # The batched training path (padded queries x all candidates) gives the same matrix.
    model = perturb(tiny_model_factory(**config))
    with torch.no_grad():
        matrix = model(model.tokenize_queries(QUERIES), model.tokenize_candidates(DOCS))
    reps = model.encode_candidates(DOCS)
    for i, query in enumerate(QUERIES):
        torch.testing.assert_close(matrix[i], model.score(model.encode_query(query), reps), rtol=1e-4, atol=1e-4)


def test_score_does_not_depend_on_other_candidates_or_padding(tiny_model_factory):
    model = perturb(tiny_model_factory(k=2))
    query = model.encode_query(QUERIES[0])
    together = model.score(query, model.encode_candidates(DOCS, batch_size=4))
    alone = torch.cat([model.score(query, model.encode_candidates([d], batch_size=1)) for d in DOCS])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    # Reordering the candidates reorders the scores and changes nothing else.
    reps = model.encode_candidates(DOCS)
    perm = [3, 1, 0, 2]
    torch.testing.assert_close(model.score(query, reps.select(perm)), together[perm])


def test_untrained_model_scores_exactly_like_the_mean_pooled_dual_encoder(tiny_model_factory):
    # pooled_residual with alpha = beta = 0 and special token = [CLS]: step 0 is the dual encoder.
    model = tiny_model_factory()
    with torch.no_grad():
        bb, tok = model.backbone, model.tokenizer

        def embed(texts, max_length):
            x = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out = bb(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
            m = x["attention_mask"][..., None].float()
            return F.normalize((out * m).sum(1) / m.sum(1), dim=-1)

        expected = embed([QUERIES[0]], 32) @ embed(DOCS, 180).T * 20.0
    torch.testing.assert_close(torch.tensor(model.score_texts(QUERIES[0], DOCS)), expected[0], rtol=1e-5, atol=1e-5)


def test_query_is_encoded_once_however_many_candidates(tiny_model_factory):
    model = perturb(tiny_model_factory(interaction_layers=[2, 3]))
    reps = model.encode_candidates(DOCS * 50)  # 200 candidates
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        scores = model.score(model.encode_query(QUERIES[0]), reps)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert scores.shape == (200,)


def test_interaction_weights_are_copies_not_ties(tiny_model_factory):
    model = tiny_model_factory()
    layer = model.backbone.encoder.layer[-1]
    torch.testing.assert_close(model.interaction[0].query.weight, layer.attention.self.query.weight)
    with torch.no_grad():
        model.interaction[0].query.weight.add_(1.0)
        model.interaction[0].ffn.fc_in.weight.add_(1.0)
    assert not torch.equal(model.interaction[0].query.weight, layer.attention.self.query.weight)
    assert not torch.equal(model.interaction[0].ffn.fc_in.weight, layer.intermediate.dense.weight)


@pytest.mark.parametrize("mixing", ["linear", "scalar"])
def test_interaction_changes_scores_once_trained(tiny_model_factory, mixing):
    # Guard against a head that silently ignores H and E: with mixing weights != 0 the scores move.
    model = tiny_model_factory(mixing=mixing)
    before = model.score_texts(QUERIES[0], DOCS)
    with torch.no_grad():
        if mixing == "scalar":
            model.alpha.fill_(1.0)
            model.beta.fill_(1.0)
        else:
            model.mix_query.weight.copy_(torch.eye(model.hidden_size))
            model.mix_candidate.weight.copy_(torch.eye(model.hidden_size))
    after = model.score_texts(QUERIES[0], DOCS)
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3


def test_save_and_load_round_trip_gives_identical_scores(tiny_model_factory, tmp_path):
    model = perturb(tiny_model_factory(k=2, interaction_layers=[2, 3], num_labels=3, learnable_scale=True))
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "tokenizer_config.json"}
    loaded = MixEncoder.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.candidate_fingerprint() == model.candidate_fingerprint()
    assert loaded.score_texts(QUERIES[1], DOCS) == model.score_texts(QUERIES[1], DOCS)
    pairs = list(zip(QUERIES, DOCS))
    torch.testing.assert_close(torch.tensor(loaded.predict(pairs)), torch.tensor(model.predict(pairs)))


def test_fingerprint_tracks_candidate_side_weights_only(tiny_model_factory):
    model = tiny_model_factory()
    fp = model.candidate_fingerprint()
    with torch.no_grad():
        model.mix_query.weight.fill_(0.5)  # online-only parameter: stored reps stay valid
    assert model.candidate_fingerprint() == fp
    with torch.no_grad():
        model.special_embeddings.add_(0.1)
    assert model.candidate_fingerprint()["sha256"] != fp["sha256"]


def test_classifier_head_gives_probabilities(tiny_model_factory):
    model = perturb(tiny_model_factory(num_labels=3))
    probs = model.predict([("a lobster roll", "bread"), ("rain", "water in the city")])
    assert probs.shape == (2, 3)
    torch.testing.assert_close(torch.tensor(probs.sum(1)), torch.ones(2))


def test_bad_input_is_a_clear_error(tiny_model_factory, tmp_path):
    model = tiny_model_factory()
    with pytest.raises(ValueError, match="query text 0 is empty"):
        model.encode_query("   ")
    with pytest.raises(ValueError, match="candidate text 1 is empty"):
        model.encode_candidates(["ok", ""])
    with pytest.raises(TypeError, match="single string"):
        model.encode_candidates("not a list")
    with pytest.raises(ValueError, match=re.escape("interaction_layers [7] outside the backbone's layers 1..3")):
        tiny_model_factory(interaction_layers=[7])
    other = tiny_model_factory(k=2)
    with pytest.raises(ValueError, match="do not fit this model"):
        model.score(model.encode_query("rain"), other.encode_candidates(DOCS))
    no_pooled = model.encode_candidates(DOCS)
    no_pooled = CandidateReps(no_pooled.vectors, no_pooled.lengths, None)
    with pytest.raises(ValueError, match="pooled vectors"):
        model.score(model.encode_query("rain"), no_pooled)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        MixEncoder.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="cannot be overridden"):
        MixEncoder.from_pretrained(tmp_path / "m", k=3)


def test_empty_candidate_list_gives_empty_scores(tiny_model_factory):
    model = tiny_model_factory()
    reps = model.encode_candidates([])
    assert reps.vectors.shape == (0, 1, 32)
    scores = model.score(model.encode_query("rain"), reps)
    assert scores.shape == (0,)


def test_bundled_minilm_reproduces_the_sentence_transformers_embedding(minilm):
    # Real weights: the untrained MixEncoder's scores are all-MiniLM's cosine similarities x 20.
    q = "what is a lobster roll"
    docs = ["A lobster roll is a sandwich native to New England.", "Rain is expected tomorrow."]
    scores = minilm.score_texts(q, docs)
    qv = minilm.encode_queries_pooled([q])
    dv = minilm.encode_candidates(docs).pooled.numpy()
    cos = (qv @ dv.T) / (
        (qv**2).sum(1, keepdims=True) ** 0.5 * ((dv**2).sum(1) ** 0.5)[None, :]
    )
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(cos[0] * 20.0), rtol=1e-4, atol=1e-4)
    assert scores[0] > scores[1] + 5  # the relevant passage wins by a wide margin


def test_fingerprint_is_stable_across_loads_and_use(tiny_backbone_dir):
    # The tokenizer keeps truncation/padding state after a call; that must not change identity.
    a = MixEncoder.from_pretrained(tiny_backbone_dir)
    b = MixEncoder.from_pretrained(tiny_backbone_dir)
    a.encode_candidates(["rain in the city"])
    a.encode_query("bread")
    assert a.candidate_fingerprint() == b.candidate_fingerprint()


def _interaction_grad_norm(model: MixEncoder) -> float:
    model.train()
    model.zero_grad()
    scores = model(model.tokenize_queries(QUERIES[:2]), model.tokenize_candidates(DOCS[:2]))
    F.cross_entropy(scores, torch.arange(2)).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("interaction.") and p.grad is not None]
    return float(sum(g.norm() ** 2 for g in grads) ** 0.5)


def test_linear_mixing_lets_the_interaction_layers_train(tiny_model_factory):
    # At step 0 both designs score as the dual encoder, so the interaction layers get no
    # gradient. The zero maps themselves get a full d x d gradient, and once they move (one
    # step) the interaction layers get gradient; that is what scalar mixing lacked in practice.
    model = tiny_model_factory(mixing="linear")
    assert _interaction_grad_norm(model) == 0.0
    g = model.mix_query.weight.grad
    assert torch.linalg.matrix_rank(g) >= 2  # not a one-number signal like a scalar's
    with torch.no_grad():
        model.mix_query.weight.sub_(0.1 * g)
        model.mix_candidate.weight.sub_(0.1 * model.mix_candidate.weight.grad)
    assert _interaction_grad_norm(model) > 0.0


def test_configs_saved_before_mixing_existed_load_as_scalar(tiny_model_factory, tmp_path):
    import json

    model = perturb(tiny_model_factory(mixing="scalar"))
    model.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    data = json.loads(config_path.read_text())
    assert data["config"].pop("mixing") == "scalar"
    config_path.write_text(json.dumps(data))
    loaded = MixEncoder.from_pretrained(tmp_path / "old")
    assert loaded.config.mixing == "scalar"
    assert loaded.score_texts(QUERIES[0], DOCS) == model.score_texts(QUERIES[0], DOCS)


def test_detached_interaction_leaves_the_backbone_to_the_pooled_vectors(tiny_model_factory):
    # interaction_trains_backbone=False: the backbone's gradient is exactly that of the pooled
    # score with h and mean(E) held constant.
    model = perturb(tiny_model_factory(similarity="dot", interaction_layers=[2, 3], interaction_trains_backbone=False))
    q, c = model.tokenize_queries(QUERIES[:2]), model.tokenize_candidates(DOCS[:2])
    model.zero_grad()
    model(q, c).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("backbone.") and p.grad is not None}

    model.zero_grad()
    with torch.no_grad():
        state = model.encode_queries_torch(**q)
        e0, _ = model.encode_candidates_torch(**c)
        h, e = model.interact(state, e0.unsqueeze(0).expand(2, -1, -1, -1))
    qbar = model.encode_queries_torch(**q).pooled
    cbar = model.encode_candidates_torch(**c)[1]
    scores = (qbar[:, None] + model.mix_query(h)) @ (cbar[None] + model.mix_candidate(e)).transpose(-1, -2)
    torch.diagonal(scores, dim1=-2, dim2=-1).sum().backward()  # (B, C, C): keep candidate c's row
    want = {n: p.grad for n, p in model.named_parameters() if n.startswith("backbone.") and p.grad is not None}
    assert set(got) == set(want) and got
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    # With the default (True) the interaction does reach the backbone: gradients differ.
    model.config.interaction_trains_backbone = True
    model.zero_grad()
    model(q, c).sum().backward()
    assert any(not torch.allclose(p.grad, got[n], atol=1e-6) for n, p in model.named_parameters() if n in got)


def test_truncated_candidates_are_counted(tiny_model_factory, caplog):
    import logging

    model = tiny_model_factory(candidate_max_length=16)
    with caplog.at_level(logging.INFO, logger="mixencoder.models.text"):
        model.encode_candidates(["rain", " ".join(["bread"] * 40), "lobster " * 30], show_progress_bar=False)
    assert "2 of 3 candidate texts are longer than 16 tokens and were truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mixencoder.models.text"):
        model.encode_candidates(["rain", "bread"], show_progress_bar=False)
    assert "truncated" not in caplog.text
