"""Smoke runs of every benchmark on the tiny model: the output's shape and sanity, not speeds."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import DEMO_DATA, REPO

from engine.api.errors import UserError
from engine.bench import main
from engine.train import lora


def _finite_positive(timing: dict) -> None:
    assert timing["reps"] >= 1
    for key in ("median_s", "min_s", "max_s"):
        assert math.isfinite(timing[key]) and timing[key] > 0
    assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]


def _common(tiny_model, tmp_path) -> list[str]:
    return ["--model", str(tiny_model), "--threads", "1", "--results", str(tmp_path / "results"),
            "--plots", str(tmp_path / "plots")]


def test_throughput_records_curve_and_ideal_speedup(tiny_model, tmp_path, capsys):
    assert main(["throughput", *_common(tiny_model, tmp_path), "--seq-lens", "8", "12",
                 "--rows", "1", "2", "4", "--reps", "2", "--warmup", "1"]) == 0
    record = json.loads((tmp_path / "results" / "throughput.json").read_text())
    assert record["environment"]["torch_threads"] == 1
    assert record["environment"]["git_revision"]
    assert [c["seq_len"] for c in record["curves"]] == [8, 12]
    for curve in record["curves"]:
        assert [p["rows"] for p in curve["points"]] == [1, 2, 4]
        for point in curve["points"]:
            _finite_positive(point["timing"])
        # (q, b) pairs whose 2q·b rows were measured: (1,1), (2,1), (1,2).
        assert {(s["q"], s["b"]) for s in curve["ideal_speedups"]} == {(1, 1), (2, 1), (1, 2)}
        assert all(s["ideal_speedup"] > 0 for s in curve["ideal_speedups"])
    assert (tmp_path / "plots" / "bench-throughput.png").stat().st_size > 1000
    assert "ideal speed-up" in capsys.readouterr().out


def test_step_records_every_optimiser_and_the_ratios(tiny_model, tmp_path):
    assert main(["step", *_common(tiny_model, tmp_path), "--seq-len", "8", "--qs", "1", "2",
                 "--effective-batch", "2", "--fixed-b", "1", "--fixed-b-max-q", "2",
                 "--reps", "1", "--warmup", "1", "--profile", "--tag", "smoke"]) == 0
    record = json.loads((tmp_path / "results" / "step-smoke.json").read_text())
    assert [s["name"] for s in record["sweeps"]] == ["q·b = 2", "b = 1"]
    assert [(r["q"], r["b"]) for r in record["sweeps"][0]["rows"]] == [(1, 2), (2, 1)]
    for sweep in record["sweeps"]:
        for row in sweep["rows"]:
            assert set(row["timings"]) == {"prge dual", "prge single", "mezo", "fo",
                                           "forward 2qb", "forward b"}
            for timing in row["timings"].values():
                _finite_positive(timing)
            t = {k: v["median_s"] for k, v in row["timings"].items()}
            assert row["speedup"] == pytest.approx(t["mezo"] / t["prge dual"])
            assert row["limit_ratio"] == pytest.approx(t["prge dual"] / t["forward 2qb"])
    assert {p["what"] for p in record["profiles"]} == {"prge dual", "forward 2qb"}
    assert all(p["top"] and p["top"][0]["self_ms"] > 0 for p in record["profiles"])
    assert (tmp_path / "plots" / "bench-step-smoke.png").exists()


def test_step_times_a_baseline_revision_beside_the_working_tree(tiny_model, tmp_path):
    """--baseline REV: that revision's own lora/optim code, timed in the same interleaved run."""
    from engine.bench import baseline

    old_lora, old_optim = baseline.load("HEAD")
    assert old_lora.__name__ == "engine_at_HEAD.lora" and old_lora.__file__ != lora.__file__
    assert old_optim.build.__module__ == "engine_at_HEAD.optim"
    assert main(["step", *_common(tiny_model, tmp_path), "--seq-len", "8", "--qs", "2",
                 "--effective-batch", "2", "--fixed-b", "1", "--fixed-b-max-q", "0",
                 "--reps", "1", "--warmup", "1", "--baseline", "HEAD", "--tag", "base"]) == 0
    record = json.loads((tmp_path / "results" / "step-base.json").read_text())
    assert record["baseline"] == "HEAD"
    # --fixed-b-max-q 0 asks for the q·b sweep alone: no empty sweep to print or plot.
    assert [s["name"] for s in record["sweeps"]] == ["q·b = 2"]
    row = record["sweeps"][0]["rows"][0]
    assert {"prge dual @HEAD", "mezo @HEAD"} <= set(row["timings"])
    t = {k: v["median_s"] for k, v in row["timings"].items()}
    assert row["gain_over_baseline"]["mezo"] == pytest.approx(t["mezo @HEAD"] / t["mezo"])
    assert (tmp_path / "plots" / "bench-step-base.png").exists()
    with pytest.raises(UserError, match="--baseline no-such-rev"):
        baseline.load("no-such-rev")


@pytest.fixture
def sst2_like(tmp_path):
    """The demo reviews in SST-2's file format (sentence<TAB>label, header)."""
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:80]]
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(
        f"{r['text']}\t{int(r['label'] == 'positive')}\n" for r in rows))
    return path


def test_accuracy_runs_every_optimiser_on_one_held_out_set(tiny_model, tmp_path, sst2_like):
    assert main(["accuracy", *_common(tiny_model, tmp_path), "--sst2", str(sst2_like),
                 "--steps", "2", "--eval-every", "1", "--eval-rows", "8", "--train-rows", "40",
                 "--work", str(tmp_path / "runs")]) == 0
    record = json.loads((tmp_path / "results" / "accuracy.json").read_text())
    names = [r["name"] for r in record["runs"]]
    assert names == ["prge q=4 b=4", "prge q=16 b=1", "fo b=16", "mezo q=4 b=4", "prge q=1 b=16"]
    assert 0 <= record["zero_shot_accuracy"] <= 1
    for run in record["runs"]:
        assert run["config"]["eval_dataset"].endswith("sst2-eval.jsonl")
        curve = run["curve"]
        assert run["seed"] == 0
        assert curve[0]["step"] == 0 and curve[0]["train_seconds"] == 0
        # Every run starts from B = 0: the same zero-shot model on the same rows.
        assert curve[0]["accuracy"] == record["zero_shot_accuracy"]
        assert curve[-1]["train_seconds"] > 0
        assert all(0 <= p["accuracy"] <= 1 and math.isfinite(p["loss"]) for p in curve)
    held_out = (tmp_path / "runs" / "data" / "sst2-eval.jsonl").read_text().splitlines()
    assert len(held_out) == 8
    assert (tmp_path / "plots" / "bench-accuracy.png").exists()


def test_bad_sst2_file_names_the_line(tiny_model, tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("sentence\tlabel\nfine movie\t1\nbroken row without label\n")
    result = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "accuracy", "--model", str(tiny_model),
         "--sst2", str(bad), "--results", str(tmp_path), "--work", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert f"{bad}:3:" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "accuracy", "--sst2", str(tmp_path / "none.tsv"),
         "--results", str(tmp_path), "--work", str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 2 and "SST-2 not found" in missing.stderr


def test_memory_measures_each_variant_in_its_own_process(tiny_model, tmp_path):
    assert main(["memory", *_common(tiny_model, tmp_path), "--q", "2", "--b", "1", "--seq-len", "8",
                 "12", "--steps", "1", "--variants", "inference", "prge dual", "--dtypes", "float32",
                 "int8"]) == 0
    record = json.loads((tmp_path / "results" / "memory.json").read_text())
    assert [(p["dtype"], p["seq_len"]) for p in record["points"]] == [
        ("float32", 8), ("float32", 12), ("int8", 8), ("int8", 12)]
    pids = set()
    for point in record["points"]:
        assert [v["variant"] for v in point["variants"]] == ["inference", "prge dual"]
        for v in point["variants"]:
            # The peak is the steps' own: the mark starts afresh after the load.
            assert v["peak_since_load"] and v["peak_rss_bytes"] >= v["rss_after_load_bytes"] > 0
            assert v["load_peak_rss_bytes"] >= v["rss_after_load_bytes"] > v["weights_bytes"] > 0
            pids.add(v["pid"])
        assert point["prge_dual_over_inference"] > 0
        assert point["fo_over_prge_dual"] is None  # fo was not measured
        assert set(point["estimate"]) == {"inference", "prge dual"}
        for variant, error in point["estimate_error"].items():
            peak = next(v["peak_rss_bytes"] for v in point["variants"] if v["variant"] == variant)
            assert error == pytest.approx(point["estimate"][variant] / peak - 1)
    assert len(pids) == 8
    weights = {p["dtype"]: p["variants"][0]["weights_bytes"] for p in record["points"]}
    assert weights["int8"] < weights["float32"] / 2
    assert (tmp_path / "plots" / "bench-memory.png").exists()

    # --reestimate redoes the arithmetic over the measured points and measures nothing.
    path = tmp_path / "results" / "memory.json"
    stale = json.loads(path.read_text())
    for point in stale["points"]:
        point["estimate"] = {v: 1 for v in point["estimate"]}
    path.write_text(json.dumps(stale))
    assert main(["memory", "--reestimate", str(path)]) == 0
    again = json.loads(path.read_text())
    assert [p["estimate"] for p in again["points"]] == [p["estimate"] for p in record["points"]]
    assert [p["variants"] for p in again["points"]] == [p["variants"] for p in record["points"]]
    assert again["estimate_revision"]


# 75 s (it lowers a training program): the default suite stays under 15 minutes on 2 cores;
# tests/test_executorch_train.py covers the backend itself there.
@pytest.mark.slow
def test_backend_times_eager_against_the_executorch_program(tiny_model, tmp_path, capsys):
    assert main(["backend", *_common(tiny_model, tmp_path), "--q", "2", "--b", "2", "--seq-len", "8",
                 "--reps", "2", "--warmup", "1"]) == 0
    record = json.loads((tmp_path / "results" / "backend.json").read_text())
    assert set(record["timings"]) == {"pytorch", "executorch"}
    for timing in record["timings"].values():
        _finite_positive(timing)
    assert record["program_bytes"] > 10_000 and record["lower_seconds"] > 0
    # Both adapters took 3 steps from the same seed: the program computed eager's losses.
    assert record["steps_per_backend"] == 3
    assert record["max_theta"] > 0
    assert record["max_theta_difference"] <= 1e-4 * record["max_theta"]
    assert "executorch speed-up over eager" in capsys.readouterr().out


def test_convergence_runs_each_variant_on_its_time_budget(tiny_model, tmp_path, sst2_like):
    assert main(["convergence", *_common(tiny_model, tmp_path), "--data", str(sst2_like),
                 "--variants", "prge today", "+ cosine + top 8 layers", "--minutes", "0.002",
                 "--eval-every", "1000", "--eval-rows", "8", "--train-rows", "40",
                 "--work", str(tmp_path / "runs")]) == 0
    record = json.loads((tmp_path / "results" / "convergence-sst2.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["prge today", "+ cosine + top 8 layers"]
    for run in record["runs"]:
        assert run["reason"] == "time budget" and run["steps_run"] >= 1
        assert run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == run["steps_run"]
        assert run["curve"][-1]["train_seconds"] >= 0.12
    assert record["runs"][1]["config"]["optimizer"]["schedule"] == "cosine"
    assert (tmp_path / "plots" / "bench-convergence-sst2.png").exists()


def test_convergence_reads_topic_data_and_names_a_bad_label(tiny_model, tmp_path):
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:40]]
    good = tmp_path / "topics.tsv"
    good.write_text("text\tlabel\n" + "".join(
        f"{r['text']}\t{['World', 'Sports'][r['label'] == 'positive']}\n" for r in rows))
    assert main(["convergence", *_common(tiny_model, tmp_path), "--task", "agnews", "--data", str(good),
                 "--variants", "prge today", "--minutes", "0.001", "--eval-rows", "8",
                 "--train-rows", "24", "--work", str(tmp_path / "runs")]) == 0
    record = json.loads((tmp_path / "results" / "convergence-agnews.json").read_text())
    assert record["runs"][0]["config"]["label_words"] == [" world", " sports", " business", " science"]
    bad = tmp_path / "bad.tsv"
    bad.write_text(good.read_text().replace("\tSports\n", "\tsport\n", 1))
    with pytest.raises(UserError, match=r"bad.tsv:\d+: label 'sport'"):
        main(["convergence", *_common(tiny_model, tmp_path), "--task", "agnews", "--data", str(bad),
              "--variants", "prge today", "--minutes", "0.001", "--work", str(tmp_path / "runs2")])


def test_step_costs_time_each_variant_interleaved(tiny_model, tmp_path, sst2_like):
    assert main(["convergence", "--step-costs", *_common(tiny_model, tmp_path), "--data", str(sst2_like),
                 "--variants", "prge today", "+ one-sided q=7", "--reps", "2", "--warmup", "1",
                 "--work", str(tmp_path / "runs")]) == 0
    record = json.loads((tmp_path / "results" / "step-costs-sst2.json").read_text())
    assert [v["name"] for v in record["variants"]] == ["prge today", "+ one-sided q=7"]
    for variant in record["variants"]:
        _finite_positive(variant["timing"])
