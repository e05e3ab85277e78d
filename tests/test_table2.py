"""Table 2 (mixencoder.experiment.paper_table, run by eval/table2.py): the table, paired
differences and plot from given metrics (no models run), the experiment each task setting
describes, and the script's command line (run as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixencoder.experiment import cli
from mixencoder.experiment import paper_table as table2

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "table2.py"


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
    done = subprocess.run([sys.executable, str(SCRIPT), "--task", "ubuntu", "--systems", "dual", "nonsense"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2  # argparse's usage error, before any model is loaded
    assert "unknown systems ['nonsense']" in done.stderr


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("task", sorted(table2.TASKS))
def test_each_task_setting_is_a_valid_experiment(task, full, tmp_path):
    """The quality half's command line parses as the experiment it names, with the user's extra
    flags after the task's settings (so they win) and every Table 2 system trained."""
    systems = [*table2.SYSTEMS, *(table2.FULL_EXTRA if full else ())]
    argv = table2.experiment_argv(task, full=full, extra=["--lr", "3e-5"], out=tmp_path, cache=tmp_path / "c",
                                  systems=systems)
    experiment, _ = cli.parse_args(argv)
    assert experiment.task == table2.TASKS[task]["task"] and experiment.lr == 3e-5
    assert experiment.systems == ["bm25", "dual-zeroshot", *systems]
    assert experiment.out == tmp_path and experiment.cache == tmp_path / "c"
    assert experiment.new_params_lr_scale == 20
    assert (experiment.backbone == "bert-base-uncased") == full
