"""Data-parallel training: 2 gloo processes on 127.0.0.1 train exactly like one process on the
same global batch (losses, final weights, resume), for every model kind (in-batch negatives
gathered across ranks, or each query's own group for the pairwise kinds), and the
grouped-scoring hook for models without in-batch negatives."""

from __future__ import annotations

import json
import os
import socket
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from mixencoder import MixEncoder
from mixencoder.models import MODEL_TYPES, load_model
from mixencoder.training import MatchingExample, TrainingConfig, in_batch_negatives_loss, train
from mixencoder.training.losses import same_query_mask
from mixencoder.training.trainer import batch_loss, collate_matching

FIXTURES = Path(__file__).parent / "fixtures"
WORLD = 2
CRASH_AT = 2
STEPS = 4


def matching_examples() -> list[MatchingExample]:
    """8 examples with 2 hard negatives each; examples 1 and 6 are two positives of one query,
    so the same-query mask matters whenever they share a global batch."""
    letters = "cdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(8):
        a, b = letters[2 * i], letters[2 * i + 1]
        negs = tuple(f"the {letters[(2 * i + 5 + j) % 24]} of bread {j}" for j in range(2))
        qid = "shared" if i in (1, 6) else f"q{i}"
        out.append(MatchingExample(f"what is {a} {b}", f"the {a} {b} of the city", negs, qid))
    return out


def ddp_config(**overrides: Any) -> TrainingConfig:
    base = dict(
        batch_size=4,  # the global batch: 2 queries per rank
        hard_negatives_per_query=1,  # 1 of 2 negatives drawn per query: exercises the data RNG
        learning_rate=3e-3,
        warmup_ratio=0.25,
        max_steps=STEPS,
        checkpoint_every=CRASH_AT,
        seed=11,
        mixed_precision="fp32",
    )
    base.update(overrides)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def no_dropout_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT without dropout, so that ranks' dropout masks cannot differ."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    backbone = tmp_path_factory.mktemp("tiny-bert-nodrop")
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(
        str(FIXTURES / "tiny-bert"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(str(backbone))
    AutoTokenizer.from_pretrained(str(FIXTURES / "tiny-bert")).save_pretrained(str(backbone))
    return backbone


@pytest.fixture(scope="module")
def no_dropout_model_dir(no_dropout_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny MixEncoder without dropout."""
    model = MixEncoder.from_pretrained(no_dropout_backbone, query_max_length=24, candidate_max_length=48)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert all(layer.dropout == 0 for layer in model.interaction)
    out = tmp_path_factory.mktemp("tiny-mix-nodrop")
    model.save_pretrained(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Crash(RuntimeError):
    pass


def _ddp_worker(rank: int, ports: Sequence[int], model_dir: str, out_dir: str) -> None:
    """One rank: train until a crash at step CRASH_AT, then resume to the end (torchrun env)."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    examples, config = matching_examples(), ddp_config()
    seen: list[float] = []

    def crash(step: int, loss: float) -> None:
        seen.append(loss)
        if step == CRASH_AT:
            raise _Crash

    # Each run creates (and destroys) its own process group from the env, as under torchrun.
    os.environ["MASTER_PORT"] = str(ports[0])
    try:
        train(
            MixEncoder.from_pretrained(model_dir),
            examples,
            config,
            output_dir=out_dir,
            device="cpu",
            on_step=crash,
            show_progress_bar=False,
        )
    except _Crash:
        pass
    os.environ["MASTER_PORT"] = str(ports[1])
    model = MixEncoder.from_pretrained(model_dir)  # fresh weights: the checkpoint must restore
    result = train(
        model, examples, config, output_dir=out_dir, device="cpu", show_progress_bar=False
    )
    report = {"first": seen, "second": result.losses, "resumed_from": result.resumed_from_step}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(Path(out_dir, f"rank{rank}.safetensors")),
    )


def test_two_process_ddp_matches_single_process_and_resumes(
    no_dropout_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    examples, config = matching_examples(), ddp_config()
    single_model = MixEncoder.from_pretrained(no_dropout_model_dir)
    single = train(
        single_model,
        examples,
        config,
        output_dir=tmp_path / "single",
        device="cpu",
        show_progress_bar=False,
    )
    assert len(single.losses) == STEPS

    out = tmp_path / "ddp"
    mp.spawn(
        _ddp_worker,
        args=([_free_port(), _free_port()], str(no_dropout_model_dir), str(out)),
        nprocs=WORLD,
        join=True,
    )
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0] == reports[1]  # every rank logs the global batch's loss
    report = reports[0]
    assert report["resumed_from"] == CRASH_AT
    ddp_losses = report["first"] + report["second"]
    assert len(ddp_losses) == STEPS
    # The global pool of in-batch negatives: the same B x (B + B*h) losses as one process.
    torch.testing.assert_close(
        torch.tensor(ddp_losses), torch.tensor(single.losses), rtol=1e-4, atol=0
    )

    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]
    expected = single_model.state_dict()
    final = MixEncoder.from_pretrained(out / "final").state_dict()  # written by rank 0
    moved = 0
    for name, value in expected.items():
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks diverged on {name}"
        # atol 1e-5: DDP sums gradients in another order than one process; for an entry whose
        # gradient is near zero Adam's g / sqrt(v) magnifies that fp32 rounding (seen on an
        # AMX Xeon: one entry of 1,184 off by 2.6e-6 after 6 steps).
        # atol 1e-3, a third of one Adam step (lr 3e-3): the ranks' summed gradients differ from
        # one process's in fp32 rounding, and Adam's g / sqrt(v) turns that noise into steps of
        # up to lr where the true gradient is zero. The softmax losses are shift-invariant, so
        # the pairwise kinds' head.bias has exactly that (seen: 8e-4 after 3 steps); the losses
        # above, which every direction that matters moves, agree to 1e-5.
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(final[name], weights[0][name]), name
        initial = MixEncoder.from_pretrained(no_dropout_model_dir).state_dict()[name]
        moved += int(not torch.equal(initial, value))
    assert moved > 10  # training changed the weights, so the comparison is not vacuous
    # Rank 0 alone wrote the checkpoint; nothing half-written was left behind.
    assert (out / "checkpoint-latest" / "trainer_state.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_row_slices_of_the_loss_average_to_the_full_loss() -> None:
    # What each rank computes: its rows of the global score matrix, with global targets.
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 8, generator=gen)  # B=4, h=1
    qids, pids = ["a", "b", "a", "c"], ["p", "q", "r", "s"]
    full = in_batch_negatives_loss(scores, qids, pids)
    mask = same_query_mask(8, qids, pids)
    parts = [
        in_batch_negatives_loss(scores[r], mask=mask[r], targets=torch.arange(r.start, r.stop))
        for r in (slice(0, 2), slice(2, 4))
    ]
    assert torch.allclose(sum(parts) / 2, full, atol=1e-6)
    with pytest.raises(ValueError, match="mask="):
        in_batch_negatives_loss(scores[:2], qids, pids, targets=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lie in"):
        in_batch_negatives_loss(scores[:2], targets=torch.tensor([0, 8]))


# ---------------------------------------------------------------------- every model kind

# Config fields per kind that fit the tiny BERT (128 positions; ColBERT's markers in its vocab).
KINDS = {
    "mixencoder": {"k": 2, "interaction_layers": [2, 3]},
    "dual": {},
    "cross": {},
    "poly": {"num_codes": 5},
    "colbert": {"dim": 8, "query_marker": "a", "document_marker": "b", "query_max_length": 12},
    "deformer": {"candidate_max_length": 64},
    "virt": {},
}
KIND_STEPS = 3


def kind_config() -> TrainingConfig:
    return ddp_config(max_steps=KIND_STEPS, checkpoint_every=0)


STORE_DOCS = {f"d{i}": f"the {w} of the city and its bread number {i}" for i, w in enumerate("abcdefgh")}
STORE_EXAMPLES = [
    MatchingExample(f"what is {w}", f"d{i}", (f"d{(i + 3) % 8}",), query_id=f"q{i}") for i, w in enumerate("abcdefgh")
]
FIRST_STAGE = {f"q{i}": {f"d{i}": 3.0, f"d{(i + 3) % 8}": 1.0, f"d{(i + 1) % 8}": 2.0} for i in range(8)}


def _train_on_store(model_dir: Path | str, store_dir: Path | str, out_dir: Path | str) -> Any:
    """Fusion-aware training of a MixEncoder's query side on a frozen store (docids as texts)."""
    from mixencoder import CandidateStore
    from mixencoder.training.frozen_store import train_on_store

    return train_on_store(
        MixEncoder.from_pretrained(model_dir), CandidateStore.open(store_dir), STORE_EXAMPLES, kind_config(),
        output_dir=out_dir, first_stage=FIRST_STAGE, show_progress_bar=False,
    )


def _kinds_worker(rank: int, ports: Sequence[int], model_dirs: dict[str, str], out_dir: str) -> None:
    """One rank: train every kind in turn, then a MixEncoder on a frozen store (model_dirs'
    "store-model" and "store"), each under its own process group (torchrun env)."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    for port, kind in zip(ports, KINDS):
        os.environ["MASTER_PORT"] = str(port)
        model = load_model(model_dirs[kind])
        result = train(
            model, matching_examples(), kind_config(), output_dir=str(Path(out_dir, kind)),
            device="cpu", show_progress_bar=False,
        )
        Path(out_dir, f"{kind}-rank{rank}.json").write_text(json.dumps(result.losses))
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(Path(out_dir, f"{kind}-rank{rank}.safetensors")),
        )
    os.environ["MASTER_PORT"] = str(ports[-1])
    result = _train_on_store(model_dirs["store-model"], model_dirs["store"], Path(out_dir, "store-run"))
    Path(out_dir, f"store-rank{rank}.json").write_text(json.dumps(result.losses))


@pytest.fixture(scope="module")
def kind_runs(no_dropout_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """Each kind saved untrained (and a MixEncoder with its store), and the directory of one
    2-rank run that trained them all."""
    from mixencoder import CandidateStore

    assert set(KINDS) == set(MODEL_TYPES)
    dirs = {}
    for kind, fields in KINDS.items():
        dirs[kind] = tmp_path_factory.mktemp(f"untrained-{kind}")
        load_model(no_dropout_backbone, model_type=kind, **fields).save_pretrained(dirs[kind])
    dirs["store-model"] = tmp_path_factory.mktemp("store-model")
    split = MixEncoder.from_pretrained(no_dropout_backbone, candidate_max_length=48).with_separate_query_encoder()
    split.save_pretrained(dirs["store-model"])
    dirs["store"] = tmp_path_factory.mktemp("frozen") / "store"
    CandidateStore.build(dirs["store"], split, STORE_DOCS.items(), show_progress_bar=False)
    out = tmp_path_factory.mktemp("ddp-kinds")
    mp.spawn(
        _kinds_worker,
        args=([_free_port() for _ in range(len(KINDS) + 1)], {k: str(d) for k, d in dirs.items()}, str(out)),
        nprocs=WORLD,
        join=True,
    )
    return dirs, out


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_trains_data_parallel_as_one_process(kind_runs, kind: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    dirs, out = kind_runs
    single_model = load_model(dirs[kind])
    single = train(
        single_model, matching_examples(), kind_config(), output_dir=tmp_path, device="cpu",
        show_progress_bar=False,
    )
    losses = [json.loads((out / f"{kind}-rank{r}.json").read_text()) for r in range(WORLD)]
    assert losses[0] == losses[1] and len(losses[0]) == KIND_STEPS
    # In-batch kinds score against the candidates of both ranks; the pairwise kinds (cross,
    # deformer) against each query's own group. Either way: one process's losses.
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(single.losses), rtol=1e-5, atol=0)
    weights = [load_file(str(out / f"{kind}-rank{r}.safetensors")) for r in range(WORLD)]
    initial = load_model(dirs[kind]).state_dict()
    final = load_model(out / kind / "final").state_dict()  # written by rank 0
    moved = 0
    for name, value in single_model.state_dict().items():
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks diverged on {name}"
        # atol 1e-3, a third of one Adam step (lr 3e-3): the ranks' summed gradients differ from
        # one process's in fp32 rounding, and Adam's g / sqrt(v) turns that noise into steps of
        # up to lr where the true gradient is zero. The softmax losses are shift-invariant, so
        # the pairwise kinds' head.bias has exactly that (seen: 8e-4 after 3 steps); the losses
        # above, which every direction that matters moves, agree to 1e-5.
        torch.testing.assert_close(weights[0][name], value, rtol=1e-4, atol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
        assert torch.equal(final[name], weights[0][name]), name
        moved += int(not torch.equal(initial[name], value))
    assert moved > 5  # training changed the weights, so the comparison is not vacuous


def test_training_on_a_frozen_store_runs_data_parallel_as_one_process(kind_runs, tmp_path: Path) -> None:
    dirs, out = kind_runs
    single = _train_on_store(dirs["store-model"], dirs["store"], tmp_path)
    losses = [json.loads((out / f"store-rank{r}.json").read_text()) for r in range(WORLD)]
    assert losses[0] == losses[1] and len(losses[0]) == KIND_STEPS
    # The stored candidates (and their first-stage scores) of both ranks are every query's negatives.
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(single.losses), rtol=1e-5, atol=0)
    ddp_final = MixEncoder.from_pretrained(out / "store-run" / "final")
    single_final = MixEncoder.from_pretrained(tmp_path / "final")
    assert ddp_final.candidate_fingerprint() == single_final.candidate_fingerprint()  # the store stays valid
    moved = 0
    initial = MixEncoder.from_pretrained(dirs["store-model"]).state_dict()
    for name, value in single_final.state_dict().items():
        torch.testing.assert_close(ddp_final.state_dict()[name], value, rtol=1e-4, atol=1e-3, msg=lambda m, name=name: f"{name}: {m}")
        moved += int(not torch.equal(initial[name], value))
    assert moved > 5


# ---------------------------------------------------------------------- grouped scoring hook


class FakeCrossEncoder(nn.Module):
    """Scores (query, candidate) pairs jointly; cannot afford all-pairs in-batch scoring. It
    declares the capabilities the trainer reads (those of RankingModel), nothing more."""

    supports_in_batch_negatives = False
    supports_distillation = False
    num_labels = 0

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.EmbeddingBag(512, 8, mode="mean")
        self.head = nn.Linear(16, 1)
        self.config = SimpleNamespace(to_dict=lambda: {"model_type": "fake-cross"}, num_labels=0)
        self.candidate_texts: list[list[str]] = []
        self.group_sizes: list[int] = []

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def new_parameter_names(self) -> list[str]:
        return []

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids = [[zlib.crc32(w.encode()) % 511 + 1 for w in t.split()] for t in texts]
        width = max(len(i) for i in ids)
        return {"input_ids": torch.tensor([i + [i[-1]] * (width - len(i)) for i in ids])}

    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._tokenize(texts)

    def tokenize_candidates(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        self.candidate_texts.append(list(texts))
        return self._tokenize(texts)

    def forward_grouped(
        self, queries: dict[str, torch.Tensor], candidates: dict[str, torch.Tensor], group_size: int
    ) -> torch.Tensor:
        self.group_sizes.append(group_size)
        q = self.embed(queries["input_ids"])  # (B, 8)
        c = self.embed(candidates["input_ids"]).view(q.shape[0], group_size, -1)
        pairs = torch.cat([q[:, None, :].expand(-1, group_size, -1), c], dim=-1)
        return self.head(pairs).squeeze(-1)  # (B, group_size)

    def forward(self, *args: Any) -> torch.Tensor:
        raise AssertionError("all-pairs forward must not be called for this model")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        Path(directory).mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(Path(directory) / "model.safetensors"))


def test_grouped_hook_scores_each_query_against_its_own_group(tmp_path: Path) -> None:
    examples = matching_examples()
    model = FakeCrossEncoder()
    batch = collate_matching(model, examples[:3], 2, grouped=True)
    assert batch.group_size == 3
    texts = model.candidate_texts[-1]
    for i, ex in enumerate(examples[:3]):
        group = texts[3 * i : 3 * i + 3]
        assert group[0] == ex.positive and set(group[1:]) == set(ex.negatives)
    loss = batch_loss(model, batch)
    scores = model.forward_grouped(batch.queries, batch.candidates, 3)
    assert torch.allclose(loss, F.cross_entropy(scores, torch.zeros(3, dtype=torch.long)))

    config = TrainingConfig(
        batch_size=4,
        hard_negatives_per_query=2,
        learning_rate=0.05,
        warmup_ratio=0.0,
        max_steps=12,
        checkpoint_every=0,
        seed=3,
        mixed_precision="fp32",
    )
    result = train(
        model, examples, config, output_dir=tmp_path / "run", device="cpu", show_progress_bar=False
    )
    assert set(model.group_sizes) == {3}
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_grouped_hook_needs_hard_negatives(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hard_negatives_per_query must be >= 1"):
        train(
            FakeCrossEncoder(),
            matching_examples(),
            TrainingConfig(batch_size=4, max_steps=1),
            output_dir=tmp_path,
            device="cpu",
        )
