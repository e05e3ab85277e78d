"""eval/compare_runs.py: paired differences per seed and of seed-averaged values."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import compare_runs  # noqa: E402


def write_run(directory: Path, systems: dict[str, dict[str, float]]) -> Path:
    directory.mkdir(parents=True)
    (directory / "per_query.json").write_text(json.dumps({s: {"RR": v} for s, v in systems.items()}))
    return directory


def test_differences_per_seed_and_seed_averaged(tmp_path):
    s1 = write_run(tmp_path / "s1", {"a": {"q1": 1.0, "q2": 0.5, "q3": 0.0}, "b": {"q1": 0.5, "q2": 0.5, "q3": 0.0}})
    s2 = write_run(tmp_path / "s2", {"a": {"q1": 1.0, "q2": 1.0, "q3": 0.0}, "b": {"q1": 1.0, "q2": 0.5, "q3": 0.5}})
    r = compare_runs.compare([f"{s1}:a", f"{s2}:a"], [f"{s1}:b", f"{s2}:b"], "RR")
    assert [d["mean"] for d in r["per_seed"]] == pytest.approx([0.5 / 3, 0.0])
    assert r["seed_sd"] == pytest.approx((2 * (0.5 / 6) ** 2) ** 0.5)
    # seed-averaged per example: a = (1, .75, 0), b = (.75, .5, .25) -> diffs (.25, .25, -.25)
    assert r["averaged"]["mean"] == pytest.approx(0.25 / 3)
    assert r["averaged"]["n"] == 3


def test_bad_specs_name_the_problem(tmp_path, capsys):
    run = write_run(tmp_path / "s1", {"a": {"q1": 1.0}})
    assert compare_runs.main(["--a", f"{run}:a", "--b", f"{run}:zzz", "--measure", "RR"]) == 2
    assert "no system 'zzz'" in capsys.readouterr().err
    assert compare_runs.main(["--a", f"{run}:a", "--b", f"{run}:a", f"{run}:a", "--measure", "RR"]) == 2
    assert compare_runs.main(["--a", "nocolon", "--b", f"{run}:a", "--measure", "RR"]) == 2
    assert "DIR:SYSTEM" in capsys.readouterr().err
