"""Training: the in-batch loss math, learning, exact resume, atomic pickle-free checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mixencoder import MixEncoder
from mixencoder.training import (
    CHECKPOINT_NAME,
    MatchingExample,
    PairExample,
    TrainingConfig,
    build_optimizer,
    collate_matching,
    in_batch_negatives_loss,
    lr_factor,
    same_query_mask,
    train,
)
from mixencoder.training import checkpoint as ckpt_module
from mixencoder.training.checkpoint import find_checkpoint

SMALL = dict(query_max_length=24, candidate_max_length=48)
LETTERS = "cdefghijklmnopqrstuvwxyz"


def matching_set(n: int = 8, negatives: int = 0) -> list[MatchingExample]:
    """Each query shares two letters (its own) with its positive and none with the others."""
    out = []
    for i in range(n):
        a, b = LETTERS[2 * i % 24], LETTERS[(2 * i + 1) % 24]
        negs = tuple(f"the {LETTERS[(2 * i + 5 + j) % 24]} of bread {j}" for j in range(negatives))
        out.append(MatchingExample(f"what is {a} {b}", f"the {a} {b} of the city", negs))
    return out


def nli_set() -> list[PairExample]:
    """The label is a function of the hypothesis's key word, so it can be learnt."""
    words = {0: "rain", 1: "bread", 2: "water"}
    premises = ["the city is a city", "how to roll", "a lobster sandwich"]
    return [PairExample(p, f"the {words[y]} is {y}", y) for p in premises for y in range(3)]


def lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def fast_config(**kw) -> TrainingConfig:
    base = dict(batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=0, seed=7)
    base.update(kw)
    return TrainingConfig(**base)


# ---------------------------------------------------------------------- loss math


def test_in_batch_loss_matches_hand_computation():
    scores = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    expected = ((lse([2.0, 1.0]) - 2.0) + (lse([0.0, 3.0]) - 3.0)) / 2
    assert in_batch_negatives_loss(scores).item() == pytest.approx(expected, abs=1e-6)


def test_in_batch_loss_hard_negative_layout():
    # B=2, h=1: columns = [pos0, pos1, neg of q0, neg of q1]; targets are columns 0 and 1.
    scores = torch.tensor([[1.0, 0.5, 2.0, -1.0], [0.2, 0.3, 0.1, 4.0]])
    rows = scores.tolist()
    expected = ((lse(rows[0]) - rows[0][0]) + (lse(rows[1]) - rows[1][1])) / 2
    assert in_batch_negatives_loss(scores).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="layout"):
        in_batch_negatives_loss(torch.zeros(2, 3))  # 3 = B + 0.5 B: not B x (B + B*h)


def test_same_query_positives_are_masked_but_hard_negatives_are_not():
    # Queries 0 and 1 are the same query (two graded positives); query 2 shares q0's positive
    # doc by id. Columns 3..5 are hard negatives and are never masked.
    qids, pids = ["q", "q", "r"], ["d1", "d2", "d1"]
    mask = same_query_mask(6, qids, pids)
    expected = torch.tensor(
        [
            [False, True, True, False, False, False],
            [True, False, False, False, False, False],
            [True, False, False, False, False, False],
        ]
    )
    assert torch.equal(mask, expected)

    scores = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = in_batch_negatives_loss(scores, qids, pids)
    s = scores.tolist()
    expected_loss = (
        (lse([s[0][0]] + s[0][3:]) - s[0][0])
        + (lse([s[1][1], s[1][2]] + s[1][3:]) - s[1][1])
        + (lse([s[2][1], s[2][2]] + s[2][3:]) - s[2][2])
    ) / 3
    assert loss.item() == pytest.approx(expected_loss, abs=1e-5)
    loss.backward()
    assert torch.all(scores.grad[expected] == 0)  # masked scores get no gradient
    assert torch.all(scores.grad[~expected] != 0)


def test_unique_ids_change_nothing():
    scores = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    plain = in_batch_negatives_loss(scores)
    with_ids = in_batch_negatives_loss(scores, ["a", "b", "c", "d"], [None, None, None, None])
    assert torch.equal(plain, with_ids)


def test_collate_puts_positives_first_then_each_querys_negatives(tiny_model_factory):
    model = tiny_model_factory(**SMALL)
    examples = matching_set(2, negatives=2)
    batch = collate_matching(model, examples, hard_negatives=2)
    texts = [e.positive for e in examples] + list(examples[0].negatives) + list(examples[1].negatives)
    assert torch.equal(batch.candidates["input_ids"], model.tokenize_candidates(texts)["input_ids"])
    assert model(batch.queries, batch.candidates).shape == (2, 6)
    # More negatives than h: one is drawn per query, from that query's own negatives.
    many = matching_set(2, negatives=3)
    one = collate_matching(model, many, hard_negatives=1)
    ids = one.candidates["input_ids"]
    for q in range(2):
        options = [model.tokenize_candidates([n])["input_ids"][0] for n in many[q].negatives]
        row = ids[2 + q][ids[2 + q] != 0]
        assert any(torch.equal(row, o) for o in options)


def test_schedule_warms_up_then_decays_and_never_runs_at_zero():
    factors = [lr_factor(s, 10, 2) for s in range(10)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(b < a for a, b in zip(factors[2:], factors[3:]))
    assert min(factors) > 0 and max(factors) == 1.0


def test_no_weight_decay_on_bias_layernorm_and_scalars(tiny_model_factory):
    model = tiny_model_factory(**SMALL)
    optimizer, names = build_optimizer(model, TrainingConfig())
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}
    assert "alpha" not in decayed and "beta" not in decayed
    assert not any(n.endswith("bias") or "LayerNorm" in n or "norm." in n for n in decayed)
    assert "interaction.0.query.weight" in decayed


def test_config_round_trips_and_rejects_unknown_fields():
    config = TrainingConfig(task="nli", batch_size=4, max_steps=10, seed=3)
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        TrainingConfig.from_dict({"batch_sise": 4})
    with pytest.raises(ValueError):
        TrainingConfig(mixed_precision="fp16")


# ---------------------------------------------------------------------- learning


def _rank_of_positive(model: MixEncoder, examples: list[MatchingExample]) -> list[int]:
    model.eval()
    with torch.no_grad():
        scores = model(
            model.tokenize_queries([e.query for e in examples]),
            model.tokenize_candidates([e.positive for e in examples]),
        )
    return [int((scores[i] > scores[i, i]).sum()) for i in range(len(examples))]


def test_matching_loss_decreases_and_positives_rise_to_the_top(tiny_model_factory, tmp_path):
    model = tiny_model_factory(**SMALL)
    examples = matching_set(8)
    before = _rank_of_positive(model, examples)
    result = train(model, examples, fast_config(max_steps=30), output_dir=tmp_path)
    losses = result.losses
    assert len(losses) == 30 and result.stopped_reason == "completed"
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5
    after = _rank_of_positive(model, examples)
    assert sum(after) < sum(before) and sum(after) == 0  # every positive ranked first
    reloaded = MixEncoder.from_pretrained(result.final_dir)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_nli_loss_decreases(tiny_model_factory, tmp_path):
    model = tiny_model_factory(num_labels=3, **SMALL)
    result = train(model, nli_set(), fast_config(task="nli", batch_size=9, max_steps=30), output_dir=tmp_path)
    losses = result.losses
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    with pytest.raises(ValueError, match="classifier"):
        train(tiny_model_factory(**SMALL), nli_set(), fast_config(task="nli"), output_dir=tmp_path / "x")


def test_wrong_example_type_is_refused(tiny_model_factory, tmp_path):
    with pytest.raises(ValueError, match="MatchingExample"):
        train(tiny_model_factory(**SMALL), nli_set(), fast_config(), output_dir=tmp_path)


# ---------------------------------------------------------------------- checkpoints and resume


def test_resume_after_crash_equals_uninterrupted_run(tiny_model_factory, tmp_path):
    # 8 examples, batch 4: 2 batches per epoch, so 6 steps cross two epoch boundaries; h=1 out
    # of 2 negatives draws from the data RNG and dropout (p=0.1) from torch's.
    examples = matching_set(8, negatives=2)
    config = fast_config(batch_size=4, hard_negatives_per_query=1, max_steps=6, checkpoint_every=3,
                         warmup_ratio=0.2)
    straight = tiny_model_factory(**SMALL)
    full = train(straight, examples, config, output_dir=tmp_path / "straight")

    class Crash(RuntimeError):
        pass

    def crash_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(tiny_model_factory(**SMALL), examples, config, output_dir=tmp_path / "b", on_step=crash_at_3)
    state = json.loads((tmp_path / "b" / CHECKPOINT_NAME / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["epoch"] == 1 and state["position"] == 1

    resumed_model = tiny_model_factory(**SMALL)
    resumed = train(resumed_model, examples, config, output_dir=tmp_path / "b")
    assert resumed.resumed_from_step == 3 and resumed.global_step == 6
    assert resumed.losses == full.losses[3:]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_checkpoint_is_pickle_free_and_a_crashed_save_leaves_the_previous_one(
    tiny_model_factory, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    leftover = out / f".{CHECKPOINT_NAME}.tmp-999-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half a file")
    examples = matching_set(8)
    train(tiny_model_factory(**SMALL), examples, fast_config(max_steps=2, checkpoint_every=1),
          output_dir=out)
    assert not leftover.exists()  # the crashed save's temp dir was cleaned up
    ckpt = out / CHECKPOINT_NAME
    for path in _files(ckpt) + _files(out / "final"):
        assert path.suffix in {".json", ".safetensors", ".txt"}, path
        assert not path.read_bytes().startswith(b"\x80"), path  # pickle protocol header
    assert {"optimizer.safetensors", "rng.safetensors", "trainer_state.json"} <= {
        p.name for p in ckpt.iterdir()
    }

    # A save that dies half-way (here: while capturing RNG states) leaves step 2's checkpoint.
    def boom():
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "_capture_rng", boom)
    with pytest.raises(OSError, match="disk full"):
        train(tiny_model_factory(**SMALL), examples, fast_config(max_steps=4, checkpoint_every=1),
              output_dir=tmp_path / "other")
    assert not list((tmp_path / "other").glob(".*"))
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2

    # A crash between the swap's two renames leaves only the backup: it is moved back.
    ckpt.rename(out / f".{CHECKPOINT_NAME}.old-0000")
    assert find_checkpoint(out) == ckpt and (ckpt / "trainer_state.json").is_file()


def test_max_seconds_stops_at_a_step_boundary_with_a_checkpoint(tiny_model_factory, tmp_path):
    examples = matching_set(8)
    model = tiny_model_factory(**SMALL)
    result = train(model, examples, fast_config(max_steps=3, max_seconds=1e-3), output_dir=tmp_path)
    assert result.stopped_reason == "max_seconds" and result.global_step == 1
    state = json.loads((tmp_path / CHECKPOINT_NAME / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert (tmp_path / "final" / "model.safetensors").is_file()
    # The budget is per invocation, not part of the run's identity: resuming without it finishes.
    rest = train(tiny_model_factory(**SMALL), examples, fast_config(max_steps=3), output_dir=tmp_path)
    assert rest.resumed_from_step == 1 and rest.global_step == 3 and len(rest.losses) == 2


def test_mismatched_checkpoint_config_is_refused(tiny_model_factory, tmp_path):
    examples = matching_set(8)
    train(tiny_model_factory(**SMALL), examples, fast_config(max_steps=1), output_dir=tmp_path)
    with pytest.raises(ValueError, match="training config.*learning_rate"):
        train(tiny_model_factory(**SMALL), examples, fast_config(max_steps=2, learning_rate=1e-4),
              output_dir=tmp_path)
    with pytest.raises(ValueError, match="model config.*k:"):
        train(tiny_model_factory(k=2, **SMALL), examples, fast_config(max_steps=1), output_dir=tmp_path)
    with pytest.raises(ValueError, match="different examples"):
        train(tiny_model_factory(**SMALL), examples[::-1], fast_config(max_steps=1), output_dir=tmp_path)
    # resume=False starts over instead.
    fresh = train(tiny_model_factory(k=2, **SMALL), examples, fast_config(max_steps=1),
                  output_dir=tmp_path, resume=False)
    assert fresh.resumed_from_step is None and fresh.global_step == 1


def test_training_starts_from_the_given_weights(tiny_model_factory, tmp_path):
    # A re-initialisation would lose the step-0 property (pooled-residual MixEncoder scores as
    # the backbone's dual encoder): with a vanishing learning rate nothing may move.
    model = tiny_model_factory(**SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, matching_set(8), fast_config(max_steps=1, learning_rate=1e-12, weight_decay=0.0),
          output_dir=tmp_path)
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name], atol=1e-9), name
    assert float(model.mix_query.weight.detach().abs().max()) == pytest.approx(0.0, abs=1e-9)


def test_new_parameters_get_their_own_learning_rate(tiny_model_factory):
    """new_parameters_lr_scale multiplies the lr of exactly the model's new_parameter_names()."""
    from mixencoder.training.trainer import build_optimizer

    assert {"alpha", "beta"} <= set(tiny_model_factory(mixing="scalar").new_parameter_names())
    model = tiny_model_factory(pooled_residual=True)
    fresh = set(model.new_parameter_names())
    assert not any(n.startswith(("backbone.", "mix_")) for n in fresh)
    assert any(".gate." in n for n in fresh) and not any(".query." in n for n in fresh)
    optimizer, names = build_optimizer(model, TrainingConfig(new_parameters_lr_scale=30.0))
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        expected = 30.0 if by_id[id(group["params"][0])] in fresh else 1.0
        assert group["lr_scale"] == expected
        assert all((by_id[id(p)] in fresh) == (expected == 30.0) for p in group["params"])
    with pytest.raises(ValueError, match="new_parameters_lr_scale"):
        TrainingConfig(new_parameters_lr_scale=0)
