"""Helpers shared by the tests/test_reliability_*.py files (not a test module itself)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mixencoder.models.base import CandidateReps

REPO = Path(__file__).resolve().parents[1]


class HashScorer:
    """A deterministic Scorer whose reps are a pure function of the text (no torch model).

    Enough for store mechanics; the tests that need real encodings use the tiny MixEncoder.
    """

    search_metric = "ip"

    def __init__(self, dim: int = 8, pooled_dim: int = 6, max_vectors: int = 4, seed: int = 0):
        self.dim, self.pooled_dim, self.max_vectors, self.seed = dim, pooled_dim, max_vectors, seed

    def candidate_fingerprint(self) -> dict[str, Any]:
        return {"sha256": hashlib.sha256(f"hash-{self.seed}".encode()).hexdigest(), "dim": self.dim}

    def expected(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        digest = hashlib.sha256(f"{self.seed}:{text}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        m = int(rng.integers(1, self.max_vectors + 1))
        return (
            rng.standard_normal((m, self.dim)).astype(np.float32),
            rng.standard_normal(self.pooled_dim).astype(np.float32),
        )

    def encode_candidates(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None
    ) -> CandidateReps:
        outs = [self.expected(t) for t in texts]
        return CandidateReps.from_list([v for v, _ in outs], np.stack([p for _, p in outs]))


def make_docs(n: int, prefix: str = "d", start: int = 0) -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", f"text of passage {prefix}{i}") for i in range(start, start + n)]


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: offline, the package importable.

    Thread counts are inherited from this process, so a child computes bit-for-bit what the
    parent computes (results of killed and resumed children are compared with the parent's).
    """
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO / "plugin"), str(REPO / "tests")]),
    )
    return env


PYTHON = sys.executable


def store_from_reps(path: Path, model: Any, docids: Sequence[str], reps: CandidateReps, *,
                    shard_size: int = 25_000, dtype: str = "float16"):
    """A real store holding ``reps`` for ``docids``, written without encoding anything.

    The rows go through the store's own writer (:class:`~mixencoder.store.shard.ShardWriter`,
    then ``CandidateStore.from_shards``), stamped with ``model``'s candidate fingerprint, so a
    ``Reranker(model, store)`` accepts it. For stores too large to encode in a fast test.
    """
    from mixencoder import CandidateStore
    from mixencoder.store.shard import ShardWriter

    path.mkdir(parents=True, exist_ok=True)
    names = []
    for number, start in enumerate(range(0, len(docids), shard_size)):
        stop = min(start + shard_size, len(docids))
        writer = ShardWriter(path, number, dtype=np.dtype(dtype), with_pooled=reps.pooled is not None,
                             origin="build")
        writer.add([d.encode("utf-8") for d in docids[start:stop]], reps.select(np.arange(start, stop)))
        names.append(writer.finish()["name"])
    return CandidateStore.from_shards(path, names, fingerprint=model.candidate_fingerprint(),
                                      shard_size=shard_size, dtype=dtype,
                                      with_pooled=reps.pooled is not None)


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples RSS every ``interval`` seconds in a thread; ``extra`` = peak minus the start."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.start, self.peak = interval, 0, 0

    def __enter__(self) -> "PeakRSS":
        import threading

        self._stop = threading.Event()
        self.start = self.peak = rss_bytes()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_bytes())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def wait_for_health(proc: Any, client: Any, log_path: Path, seconds: float = 120.0) -> None:
    """Poll ``GET /health`` of a server process just started until it answers 200; fail the test
    with the tail of its log if it exits or stays silent for ``seconds``."""
    import time

    import httpx
    import pytest

    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not answer /health in {seconds:g} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
