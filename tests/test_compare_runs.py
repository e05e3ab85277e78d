"""Paired differences per seed and of seed-averaged values (mixencoder.experiment.compare_seeds,
and eval/compare_runs.py over it, run as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mixencoder.experiment import compare_seeds

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "compare_runs.py"


def compare_runs(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)


def write_run(directory: Path, systems: dict[str, dict[str, float]]) -> Path:
    directory.mkdir(parents=True)
    (directory / "per_query.json").write_text(json.dumps({s: {"RR": v} for s, v in systems.items()}))
    return directory


def test_differences_per_seed_and_seed_averaged(tmp_path):
    s1 = write_run(tmp_path / "s1", {"a": {"q1": 1.0, "q2": 0.5, "q3": 0.0}, "b": {"q1": 0.5, "q2": 0.5, "q3": 0.0}})
    s2 = write_run(tmp_path / "s2", {"a": {"q1": 1.0, "q2": 1.0, "q3": 0.0}, "b": {"q1": 1.0, "q2": 0.5, "q3": 0.5}})
    r = compare_seeds([f"{s1}:a", f"{s2}:a"], [f"{s1}:b", f"{s2}:b"], "RR")
    assert [d["mean"] for d in r["per_seed"]] == pytest.approx([0.5 / 3, 0.0])
    assert r["seed_sd"] == pytest.approx((2 * (0.5 / 6) ** 2) ** 0.5)
    # seed-averaged per example: a = (1, .75, 0), b = (.75, .5, .25) -> diffs (.25, .25, -.25)
    assert r["averaged"]["mean"] == pytest.approx(0.25 / 3)
    assert r["averaged"]["n"] == 3


def test_bad_specs_name_the_problem(tmp_path):
    run = write_run(tmp_path / "s1", {"a": {"q1": 1.0}})
    missing = compare_runs("--a", f"{run}:a", "--b", f"{run}:zzz", "--measure", "RR")
    assert missing.returncode == 2 and "no system 'zzz'" in missing.stderr
    uneven = compare_runs("--a", f"{run}:a", "--b", f"{run}:a", f"{run}:a", "--measure", "RR")
    assert uneven.returncode == 2 and "as many --a specs as --b specs" in uneven.stderr
    no_colon = compare_runs("--a", "nocolon", "--b", f"{run}:a", "--measure", "RR")
    assert no_colon.returncode == 2 and "DIR:SYSTEM" in no_colon.stderr


def test_the_script_prints_and_writes_the_comparison(tmp_path):
    s1 = write_run(tmp_path / "s1", {"a": {"q1": 1.0, "q2": 0.0}, "b": {"q1": 0.0, "q2": 0.0}})
    done = compare_runs("--a", f"{s1}:a", "--b", f"{s1}:b", "--measure", "RR", "--json", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    assert "RR: A - B per seed: +0.5000 (SE 0.5000)" in done.stdout
    assert json.loads((tmp_path / "c.json").read_text())[0]["averaged"]["mean"] == pytest.approx(0.5)
