"""VIRT's teacher distillation in the trainer: the distillation term is added and learnt, the
misuses are refused, and a distilled run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from mixencoder.models.biencoder import BiEncoder
from mixencoder.models.cross import CrossEncoder
from mixencoder.models.virt import VIRT
from mixencoder.training import (
    CHECKPOINT_NAME,
    MatchingExample,
    TrainingConfig,
    collate_matching,
    train,
)
from mixencoder.training.distributed import DistContext
from mixencoder.training.trainer import _validate_teacher, distillation_pairs, distillation_term

SMALL = dict(query_max_length=16, candidate_max_length=24)
LETTERS = "cdefghijklmnopqrstuvwxyz"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def matching_set(n: int = 8, negatives: int = 0) -> list[MatchingExample]:
    out = []
    for i in range(n):
        a, b = LETTERS[2 * i % 24], LETTERS[(2 * i + 1) % 24]
        negs = tuple(f"the {LETTERS[(2 * i + 5 + j) % 24]} of bread {j}" for j in range(negatives))
        out.append(MatchingExample(f"what is {a} {b}", f"the {a} {b} of the city", negs))
    return out


def fast_config(**kw) -> TrainingConfig:
    base = dict(batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=0, seed=7,
                mixed_precision="fp32")
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def _cached(tiny_backbone_dir):
    teacher = CrossEncoder.from_pretrained(tiny_backbone_dir, **SMALL)
    # A teacher off the student's initialisation, so that there is something to distil.
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return {
        "virt": VIRT.from_pretrained(tiny_backbone_dir, **SMALL),
        "dual": BiEncoder.from_pretrained(tiny_backbone_dir, **SMALL),
        "cross": teacher,
    }


@pytest.fixture
def make(_cached):
    import copy

    return lambda name: copy.deepcopy(_cached[name])


def _eval_distillation(student, teacher, examples) -> float:
    student.eval()
    with torch.no_grad():
        batch = collate_matching(student, examples)
        return float(distillation_term(student, teacher, batch))


def test_distillation_pairs_follow_the_candidate_layout(make):
    student = make("virt")
    examples = matching_set(3, negatives=2)
    flat = collate_matching(student, examples, hard_negatives=2)
    assert distillation_pairs(flat).tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]
    grouped = collate_matching(student, examples, hard_negatives=2, grouped=True)
    assert distillation_pairs(grouped).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Without hard negatives: each query with its positive.
    assert distillation_pairs(collate_matching(student, examples)).tolist() == [0, 1, 2]


def test_distillation_is_added_to_the_loss_and_learnt(make, tmp_path):
    examples = matching_set(8, negatives=1)
    teacher = make("cross")
    steps, lr = 8, 1e-2
    plain_student = make("virt")
    plain = train(plain_student, examples,
                  fast_config(max_steps=steps, hard_negatives_per_query=1, learning_rate=lr),
                  output_dir=tmp_path / "plain", show_progress_bar=False)
    assert plain.distillation_losses == []

    student = make("virt")
    before = _eval_distillation(student, teacher, examples)
    config = fast_config(max_steps=steps, hard_negatives_per_query=1, learning_rate=lr,
                         distillation_weight=5.0)
    result = train(student, examples, config, output_dir=tmp_path / "distil", teacher=teacher,
                   show_progress_bar=False)
    d = result.distillation_losses
    assert len(d) == steps and all(torch.isfinite(torch.tensor(d)))
    assert d[0] > 0
    # Step 0 sees the same batch, weights and dropout draws before the distillation term, so the
    # total is the in-batch loss plus 5 x the term.
    assert result.losses[0] == pytest.approx(plain.losses[0] + 5.0 * d[0], rel=1e-4)
    assert result.losses != plain.losses
    # The term is learnt (measured: 0.52 -> 0.38) while training without the teacher leaves it
    # where it was (0.52).
    after = _eval_distillation(student, teacher, examples)
    assert after < 0.85 * before
    assert after < 0.85 * _eval_distillation(plain_student, teacher, examples)
    assert sum(d[-3:]) < sum(d[:3])
    # The teacher was frozen and left untouched.
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_misuse_is_refused(make, tmp_path):
    examples = matching_set(4)
    teacher = make("cross")
    with pytest.raises(ValueError, match="does not distill from one"):
        train(make("dual"), examples, fast_config(max_steps=1, distillation_weight=1.0),
              output_dir=tmp_path / "a", teacher=teacher)
    with pytest.raises(ValueError, match="distillation_weight is 0"):
        train(make("virt"), examples, fast_config(max_steps=1), output_dir=tmp_path / "b",
              teacher=teacher)
    with pytest.raises(ValueError, match="no teacher"):
        train(make("virt"), examples, fast_config(max_steps=1, distillation_weight=1.0),
              output_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=">= 0"):
        fast_config(distillation_weight=-1.0)
    with pytest.raises(ValueError, match="matching"):
        fast_config(task="nli", distillation_weight=1.0)
    # A student whose pairs do not fit the teacher's positions (tiny BERT: 128).
    student = make("virt")
    student.config.candidate_max_length = 200
    with pytest.raises(ValueError, match="positions"):
        train(student, examples, fast_config(max_steps=1, distillation_weight=1.0),
              output_dir=tmp_path / "d", teacher=teacher)
    assert not any((tmp_path / name / CHECKPOINT_NAME).exists() for name in "abcd")
    # Data-parallel runs refuse a teacher (checked before any process group work).
    with pytest.raises(ValueError, match="single-process"):
        _validate_teacher(make("virt"), teacher, fast_config(distillation_weight=1.0),
                          DistContext(rank=0, world_size=2))


def test_distilled_run_resumes_like_an_uninterrupted_one(make, tmp_path):
    # 8 examples, batch 4: 2 batches per epoch; 4 steps cross an epoch boundary, h=1 of 2
    # negatives draws from the data RNG and dropout from torch's.
    examples = matching_set(8, negatives=2)
    teacher = make("cross")
    config = fast_config(hard_negatives_per_query=1, max_steps=4, checkpoint_every=2,
                         warmup_ratio=0.25, distillation_weight=2.0)
    straight = make("virt")
    full = train(straight, examples, config, output_dir=tmp_path / "straight", teacher=teacher,
                 show_progress_bar=False)

    class Crash(RuntimeError):
        pass

    def crash_at_2(step: int, loss: float) -> None:
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        train(make("virt"), examples, config, output_dir=tmp_path / "b", teacher=teacher,
              on_step=crash_at_2, show_progress_bar=False)
    state = json.loads((tmp_path / "b" / CHECKPOINT_NAME / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # The teacher is not checkpointed: resuming without it is refused.
    with pytest.raises(ValueError, match="no teacher"):
        train(make("virt"), examples, config, output_dir=tmp_path / "b")

    resumed_model = make("virt")
    resumed = train(resumed_model, examples, config, output_dir=tmp_path / "b", teacher=teacher,
                    show_progress_bar=False)
    assert resumed.resumed_from_step == 2 and resumed.global_step == 4
    assert resumed.losses == full.losses[2:]
    assert resumed.distillation_losses == full.distillation_losses[2:]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name
