"""The baselines (dual, cross, poly, colbert, deformer, virt): the stored path equals the training
path, scores ignore the batch and padding, persistence, the pure interaction functions by hand,
and the registry."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from mixencoder import CandidateStore, DualEncoder, MixEncoder, Reranker
from mixencoder.models import late_interaction as LI
from mixencoder.models.biencoder import BiEncoder
from mixencoder.models.colbert import ColBERT
from mixencoder.models.cross import CrossEncoder, decode_ids, encode_ids
from mixencoder.models.deformer import Deformer
from mixencoder.models.poly import PolyEncoder
from mixencoder.models.registry import MODEL_TYPES, SYSTEMS, build_system, load_model
from mixencoder.models.virt import VIRT, fusion_features, virt_distillation_loss, virt_interaction, virt_pair_features

QUERIES = ["what is a lobster roll", "how to bake bread", "rain in the city"]
DOCS = [
    "a lobster roll is a sandwich of lobster on bread",
    "rain",
    "water is the city of bread and rain and the roll of the lobster, 42 times",
    "how to bake bread in the city",
]

# Small enough for the tiny BERT (128 positions); ColBERT's markers must be in its vocabulary.
CONFIGS = {
    "dual": (BiEncoder, {}),
    "cross": (CrossEncoder, {"score_batch_size": 3}),
    "poly": (PolyEncoder, {"num_codes": 5}),
    "colbert": (ColBERT, {"dim": 8, "query_marker": "a", "document_marker": "b", "query_max_length": 12}),
    "deformer": (Deformer, {"candidate_max_length": 64, "score_batch_size": 3}),
    "virt": (VIRT, {}),
}
NAMES = list(CONFIGS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def _models(tiny_backbone_dir):
    return {name: cls.from_pretrained(tiny_backbone_dir, **kw) for name, (cls, kw) in CONFIGS.items()}


@pytest.fixture
def make(_models):
    """A perturbed deepcopy of a cached tiny model: every parameter off its initialisation."""

    def build(name, seed=1):
        model = copy.deepcopy(_models[name])
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        return model.eval()

    return build


def assert_varied(scores):
    assert float(scores.max() - scores.min()) > 1e-4, "scores are constant: the model ignores its input"


# ---------------------------------------------------------------------- per model


@pytest.mark.parametrize("name", NAMES)
def test_stored_scores_equal_the_training_path(make, name):
    model = make(name)
    with torch.no_grad():
        matrix = model(model.tokenize_queries(QUERIES), model.tokenize_candidates(DOCS))
    assert matrix.shape == (len(QUERIES), len(DOCS))
    reps = model.encode_candidates(DOCS, batch_size=3)
    for i, query in enumerate(QUERIES):
        online = model.score(model.encode_query(query), reps)
        torch.testing.assert_close(online, matrix[i], rtol=1e-4, atol=1e-4)
        assert_varied(online)


@pytest.mark.parametrize("name", NAMES)
def test_score_ignores_other_candidates_and_padding(make, name):
    model = make(name)
    query = model.encode_query(QUERIES[0])
    together = model.score(query, model.encode_candidates(DOCS, batch_size=4))
    alone = torch.cat([model.score(query, model.encode_candidates([d])) for d in DOCS])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    reps = model.encode_candidates(DOCS)
    perm = [3, 1, 0, 2]
    torch.testing.assert_close(model.score(query, reps.select(perm)), together[perm], rtol=1e-5, atol=1e-5)
    # Extra zero padding on the stored vectors changes nothing either.
    padded = type(reps)(torch.nn.functional.pad(reps.vectors, (0, 0, 0, 7)), reps.lengths, reps.pooled)
    torch.testing.assert_close(model.score(query, padded), together, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip_gives_identical_scores(make, name, tmp_path):
    model = make(name)
    model.save_pretrained(tmp_path / name)
    data = json.loads((tmp_path / name / "config.json").read_text())
    assert data["model_type"] == name
    assert (tmp_path / name / "model.safetensors").is_file()
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.candidate_fingerprint() == model.candidate_fingerprint()
    assert loaded.score_texts(QUERIES[1], DOCS) == model.score_texts(QUERIES[1], DOCS)
    with pytest.raises(ValueError, match="cannot be overridden"):
        type(model).from_pretrained(tmp_path / name, query_max_length=20)
    other = CrossEncoder if name != "cross" else BiEncoder
    with pytest.raises(ValueError, match=f"saved '{name}' model"):
        other.from_pretrained(tmp_path / name)


@pytest.mark.parametrize("name", ["cross", "deformer"])
def test_grouped_forward_matches_all_pairs(make, name):
    model = make(name)
    assert model.supports_in_batch_negatives is False
    q, c = model.tokenize_queries(QUERIES[:2]), model.tokenize_candidates(DOCS)
    with torch.no_grad():
        full = model(q, c)
        grouped = model.forward_grouped(q, c, group_size=2)
    torch.testing.assert_close(grouped, torch.stack([full[0, :2], full[1, 2:]]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="groups of 3"):
        model.forward_grouped(q, c, group_size=3)


def test_cross_encoder_equals_the_backbone_on_the_tokenizers_own_pair_encoding(make):
    model = make("cross")
    with torch.no_grad():
        enc = model.tokenizer([QUERIES[0]] * len(DOCS), DOCS, padding=True, return_tensors="pt")
        states = model.backbone(**enc).last_hidden_state
        expected = model.head(states[:, 0])[:, 0]
    torch.testing.assert_close(torch.tensor(model.score_texts(QUERIES[0], DOCS)), expected, rtol=1e-5, atol=1e-5)


def test_cross_token_ids_survive_a_float16_store(make, tmp_path):
    ids = torch.tensor([0, 1, 2047, 2048, 30521, 250001])
    assert torch.equal(decode_ids(encode_ids(ids).half().float()), ids)
    model = make("cross")
    store = CandidateStore.build(tmp_path / "s", model, [(str(i), d) for i, d in enumerate(DOCS)], with_pooled=False)
    direct = model.score_texts(QUERIES[0], DOCS)
    ranked = Reranker(model, store).rerank(QUERIES[0], [str(i) for i in range(len(DOCS))])
    assert {r.docid: r.score for r in ranked} == pytest.approx({str(i): s for i, s in enumerate(direct)}, abs=1e-6)
    with pytest.raises(ValueError, match="not token ids"):
        model.score(model.encode_query("rain"), type(store.gather(["0"]))(torch.full((1, 2, 2), 0.5), torch.tensor([2])))


def test_colbert_reranks_variable_length_reps_through_the_store(make, tmp_path):
    model = make("colbert")
    docs = [(f"d{i}", t) for i, t in enumerate(DOCS)]
    store = CandidateStore.build(tmp_path / "s", model, docs, dtype="float32", with_pooled=False, batch_size=2)
    gathered = store.gather(["d0", "d1", "d2"])
    lengths = gathered.lengths.tolist()
    assert len(set(lengths)) == 3 and gathered.vectors.shape == (3, max(lengths), 8)
    ranked = Reranker(model, store).rerank(QUERIES[0], ["d2", "d0", "d3", "d1"])
    expected = model.score_texts(QUERIES[0], DOCS)
    assert {r.docid: r.score for r in ranked} == pytest.approx({f"d{i}": s for i, s in enumerate(expected)}, abs=1e-5)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    # Query augmentation: every query has query_max_length vectors, all used in MaxSim.
    vectors, mask = model.encode_query("rain")
    assert vectors.shape == (12, 8) and bool(mask.all())
    # A store built by another model is refused.
    with pytest.raises(ValueError, match="different model"):
        Reranker(make("colbert", seed=2), store)


def test_deformer_stores_lower_layer_states_and_says_so(make):
    model = make("deformer")
    assert model.separate_layers == 1  # 3-layer backbone: all but the last two
    reps = model.encode_candidates(DOCS)
    n_tokens = model.tokenize_candidates(DOCS)["attention_mask"].sum(-1) - 1  # [CLS] dropped
    assert reps.lengths.tolist() == n_tokens.tolist()
    fp = model.candidate_fingerprint()
    with torch.no_grad():
        model.backbone.encoder.layer[2].output.dense.weight.add_(1.0)  # an upper layer
    assert model.candidate_fingerprint() == fp
    with torch.no_grad():
        model.backbone.encoder.layer[0].output.dense.weight.add_(1.0)  # a lower layer
    assert model.candidate_fingerprint()["sha256"] != fp["sha256"]
    with pytest.raises(ValueError, match="separate_layers must be in 1..2"):
        Deformer(type(model.config)(separate_layers=3, candidate_max_length=64), model.backbone, model.tokenizer)


def test_untrained_dual_poly_and_virt_score_like_the_mean_pooled_dual_encoder(_models, tiny_model_factory):
    expected = torch.tensor(DualEncoder(tiny_model_factory()).encoder.score_texts(QUERIES[0], DOCS))
    for name in ("dual", "virt"):
        got = torch.tensor(_models[name].score_texts(QUERIES[0], DOCS))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Poly codes start near zero: near-uniform attention, so nearly the dual encoder.
    got = torch.tensor(_models["poly"].score_texts(QUERIES[0], DOCS))
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)


def test_models_without_a_query_vector_refuse_dense_search(_models):
    for name in ("cross", "poly", "colbert", "deformer"):
        with pytest.raises(NotImplementedError, match="dense first-stage search"):
            _models[name].encode_queries_pooled(QUERIES)
    for name in ("dual", "virt"):
        assert _models[name].encode_queries_pooled(QUERIES).shape == (3, 32)


# ---------------------------------------------------------------------- pure functions by hand


def test_maxsim_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    q_mask = torch.tensor([True, True, False])  # the third query vector is padding
    c = torch.tensor(
        [
            [[0.5, 0.2], [0.1, 0.9], [9.0, 9.0]],  # third vector is padding
            [[-1.0, 2.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    c_mask = torch.tensor([[True, True, False], [True, False, False]])
    # cand 0: max(0.5, 0.1) + max(0.2, 0.9) = 1.4; cand 1: -1 + 2 = 1.
    torch.testing.assert_close(LI.maxsim(q, q_mask, c, c_mask), torch.tensor([1.4, 1.0]))
    matrix = LI.maxsim_matrix(torch.stack([q, q.flip(0)]), torch.stack([q_mask, q_mask.flip(0)]), c, c_mask)
    # The second query is [pad, (0,1), (1,0)]: the same two real vectors.
    torch.testing.assert_close(matrix, torch.tensor([[1.4, 1.0], [1.4, 1.0]]))


def test_poly_attention_by_hand():
    states = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [7.0, 7.0]]])  # last token is padding
    mask = torch.tensor([[True, True, False]])
    codes = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = LI.poly_code_attention(codes, states, mask)
    # Code 0: uniform over the two real tokens. Code 1: logits (log 3, 0) -> weights (3/4, 1/4).
    torch.testing.assert_close(y, torch.tensor([[[0.5, 1.0], [0.75, 0.5]]]))
    cand = torch.tensor([[1.0, 0.0]])
    # The candidate attends over y with logits (0.5, 0.75).
    w = torch.softmax(torch.tensor([0.5, 0.75]), 0)
    ctx = LI.poly_candidate_attention(y, cand)
    torch.testing.assert_close(ctx, (w[:, None] * y[0]).sum(0)[None, None])


def test_concat_pairs_by_hand():
    a = torch.tensor([[1, 2, 3], [4, 5, 0]])
    a_mask = a != 0
    b = torch.tensor([[6, 0], [7, 8]])
    b_mask = b != 0
    x, mask, segment = LI.concat_pairs(a, a_mask, b, b_mask)
    assert x.tolist() == [[1, 2, 3, 6], [4, 5, 7, 8]]
    assert mask.all() and segment.tolist() == [[0, 0, 0, 1], [0, 0, 1, 1]]
    states, _, _ = LI.concat_pairs(a[..., None].float(), a_mask, b[..., None].float(), b_mask)
    assert states[..., 0].tolist() == x.float().tolist()


def test_virt_pair_features_equal_the_direct_interaction():
    # The fast form never builds y~; it must equal fusing the explicit cross-attention outputs.
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 6, generator=gen), torch.randn(3, 5, 6, generator=gen)
    x_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    y_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    x_t, y_t = virt_interaction(x, x_mask, y, y_mask)
    fx, fy = virt_pair_features(x, x_mask, y, y_mask)
    torch.testing.assert_close(fx, fusion_features(x, x_t, x_mask))
    torch.testing.assert_close(fy, fusion_features(y, y_t, y_mask))
    # maxsim (one query, one GEMM) agrees with maxsim_matrix.
    torch.testing.assert_close(LI.maxsim(x[0], x_mask[0], y, y_mask), LI.maxsim_matrix(x[:1], x_mask[:1], y, y_mask)[0])


def test_virt_distillation_loss_by_hand():
    teacher = torch.tensor([[[[0.2, 0.2, 0.1], [0.3, 0.1, 0.0]]]])  # (1, 1, 2 rows, 3 cols); col 2 is padding
    rows, cols = torch.tensor([[True, True]]), torch.tensor([[True, True, False]])
    renorm = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    exact = torch.log(torch.cat([renorm, torch.zeros(2, 1)], 1))[None, None] + 3.0  # any shift, any pad
    assert float(virt_distillation_loss(exact, teacher, rows, cols)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 1, 2, 3)
    expected = 0.5 * (0.0 + (0.75 * math.log(1.5) + 0.25 * math.log(0.5)))
    assert float(virt_distillation_loss(uniform, teacher, rows, cols)) == pytest.approx(expected, rel=1e-5)
    mse = 0.5 * (0.0 + 2 * 0.25**2)
    assert float(virt_distillation_loss(uniform, teacher, rows, cols, kind="mse")) == pytest.approx(mse, rel=1e-5)


def test_virt_distillation_against_a_cross_encoder_teacher_trains(make):
    student, teacher = make("virt"), make("cross", seed=3)
    student.train()
    q, c = student.tokenize_queries(QUERIES), student.tokenize_candidates(DOCS[:3])
    loss = student.distillation_loss(teacher, q, c)
    assert loss.ndim == 0 and float(loss.detach()) > 0
    loss.backward()
    assert student.backbone.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------------- registry


def test_registry_loads_by_model_type_and_builds_the_papers_systems(tiny_backbone_dir, tmp_path, tiny_model_factory):
    assert set(MODEL_TYPES) == {"mixencoder", "dual", "cross", "poly", "colbert", "deformer", "virt"}
    with pytest.raises(ValueError, match="pass model_type"):
        load_model(tiny_backbone_dir)
    with pytest.raises(ValueError, match="unknown model_type"):
        load_model(tiny_backbone_dir, model_type="bert")
    assert isinstance(load_model(tiny_backbone_dir, model_type="poly", num_codes=3), PolyEncoder)
    mix = tiny_model_factory(k=2)
    mix.save_pretrained(tmp_path / "mix")
    assert isinstance(load_model(tmp_path / "mix"), MixEncoder)
    with pytest.raises(ValueError, match="not 'dual'"):
        load_model(tmp_path / "mix", model_type="dual")
    b = build_system("mixencoder-b", tiny_backbone_dir)
    assert b.layer_ids == [1, 2, 3] and b.config.k == 1
    c = build_system("mixencoder-c", tiny_backbone_dir)
    assert c.layer_ids == [1, 2, 3] and c.config.k == 2
    assert build_system("mixencoder-a-C", tiny_backbone_dir).config.strategy == "C"
    assert build_system("poly-360", tiny_backbone_dir).codes.shape == (360, 32)
    assert {f"mixencoder-k{k}" for k in (1, 2, 3, 4, 10)} <= set(SYSTEMS)
    with pytest.raises(ValueError, match="unknown system"):
        build_system("mixencoder", tiny_backbone_dir)


def test_bi_encoder_store_searches_as_it_scores(make, tmp_path):
    model = make("dual")
    assert model.config.similarity == "cosine" and model.search_metric == "cosine"
    docs = [(f"d{i}", t) for i, t in enumerate(DOCS)]
    store = CandidateStore.build(tmp_path / "s", model, docs, dtype="float32")
    assert store.search_metric == "cosine"
    hits = store.search(model.encode_queries_pooled([QUERIES[0]]), 4)[0]
    scores = dict(zip([f"d{i}" for i in range(len(DOCS))], model.score_texts(QUERIES[0], DOCS)))
    # cosine search ranks exactly as the model scores (an inner-product search need not)
    assert [d for d, _ in hits] == sorted(scores, key=lambda d: -scores[d])
