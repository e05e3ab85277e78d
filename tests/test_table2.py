"""eval/table2.py: the table, paired differences and plot from given metrics (no models run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

import table2  # noqa: E402


def _inputs():
    qids = [f"q{i}" for i in range(4)]
    per_query = {
        "dual": {"R@1": dict(zip(qids, [1.0, 0.0, 0.0, 1.0]))},
        "mixencoder-b": {"R@1": dict(zip(qids, [1.0, 1.0, 0.0, 1.0]))},
        "cross": {"R@1": dict(zip(qids, [1.0, 1.0, 1.0, 1.0]))},
    }
    metrics = {s: {"R@1": sum(v["R@1"].values()) / 4, "store_bytes": 1000.0} for s, v in per_query.items()}
    speed = {"systems": {
        "dual": {"1000": {"speedup_vs_cross": 500.0, "ms_per_query": 20.0}, "bytes_per_candidate": 800.0},
        "mixencoder-b": {"1000": {"speedup_vs_cross": 100.0, "ms_per_query": 100.0}, "bytes_per_candidate": 1600.0},
        "cross": {"1000": {"speedup_vs_cross": 1.0, "ms_per_query": 10000.0}, "bytes_per_candidate": 300.0},
    }}
    return metrics, per_query, speed


def test_table_rows_and_paired_differences(tmp_path):
    metrics, per_query, speed = _inputs()
    table = table2.build_table(metrics, per_query, speed, ["dual", "mixencoder-b", "cross"], ["R@1"], "R@1")
    assert table["rows"]["mixencoder-b"]["R@1"] == pytest.approx(0.75)
    assert table["rows"]["mixencoder-b"]["speedup_vs_cross"] == 100.0
    d = table["paired_differences"]["mixencoder-b - dual [R@1]"]
    assert d["mean"] == pytest.approx(0.25) and d["n"] == 4 and d["se"] == pytest.approx(0.25)
    assert table["paired_differences"]["mixencoder-b - cross [R@1]"]["mean"] == pytest.approx(-0.25)
    text = table2.format_table(table, ["R@1"])
    assert "| mixencoder-b" in text and "100.0x" in text and "+0.2500 (paired SE 0.2500, n=4)" in text
    table2.plot(table, tmp_path / "t.png", "test")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_system_is_rejected():
    with pytest.raises(SystemExit) as exc:
        table2.parse_args(["--task", "ubuntu", "--systems", "dual", "nonsense"])
    assert exc.value.code == 2  # argparse's usage error, not a clean exit


def test_extra_flags_after_double_dash_go_to_the_task_script():
    args, extra = table2.parse_args(["--task", "dl20", "--", "--lr", "3e-5"])
    assert extra == ["--lr", "3e-5"] and args.out == Path("runs/table2-dl20")
    assert args.speed_json == Path("runs/table2-dl20/speed.json")
    cpu = table2.TASKS["dl20"]["cpu"]  # the defaults are plain argv strings
    assert cpu and all(isinstance(a, str) for a in cpu), cpu
    assert json.loads(json.dumps(cpu)) == cpu
