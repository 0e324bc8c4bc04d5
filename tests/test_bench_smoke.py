"""Smoke tier: the GPU protocol (``bench/gpu_protocol.py``) runs end to end here, on the CPU with the tiny
config, in processes where fiftyone cannot be imported (as on the GPU machine), before it first meets a GPU.

Both parts run as the GPU session would run them (``--part 1`` then ``--part 2``, into one output
directory), with a ``sitecustomize`` that makes ``import fiftyone`` fail in the protocol and in the
``pytest -m gpu`` run it starts. Small sizes keep it to ~30-60 s on two busy cores.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

DATE = "2000-01-01"
#: the smallest run that still exercises every step: 2 images, one batch size, K = 1 and 2
SMALL = [
    "--device",
    "cpu",
    "--config",
    "tiny",
    "--images",
    "2",
    "--batch-sizes",
    "2",
    "--prompt-counts",
    "1,2",
    "--encoder-batches",
    "1",
    "--memory-batch-sizes",
    "1,2",
]
#: in every process of the run: ``import fiftyone`` raises ImportError and find_spec says it is absent
BLOCK_FIFTYONE = "import sys\nsys.modules['fiftyone'] = None\n"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """Runs part 1 then part 2 into one directory; returns (the JSON, the Markdown, the two processes)."""
    root = tmp_path_factory.mktemp("protocol")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_FIFTYONE)
    out = root / "results"
    # one thread: on two cores shared with other work, torch's second OpenMP thread spins and slows it ~10x
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    runs = []
    # part 1 dated; part 2 finds part 1's file by itself (the newest of this machine that lacks part 2)
    for part, dated in ((1, ["--date", DATE]), (2, [])):
        runs.append(
            subprocess.run(
                [sys.executable, "bench/gpu_protocol.py", "--part", str(part), *SMALL, *dated, "--out", str(out)],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
        )
    json_path, md_path = out / f"gpu-cpu-{DATE}.json", out / f"gpu-cpu-{DATE}.md"
    document = json.loads(json_path.read_text()) if json_path.exists() else None
    markdown = md_path.read_text() if md_path.exists() else None
    return document, markdown, runs


def test_both_parts_exit_zero_and_write_one_file_pair(protocol):
    document, markdown, runs = protocol
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert document is not None and markdown is not None
    assert document["machine"] == "cpu" and document["date"] == DATE
    assert {"part1", "part2"} <= set(document)  # part 2 merged into part 1's file, not over it
    assert "## Part 1" in markdown and "## Part 2" in markdown


def test_no_fiftyone_anywhere(protocol):
    document, _, _ = protocol
    for part in ("part1", "part2"):
        assert document[part]["environment"]["fiftyone_importable"] is False  # the block worked
        assert document[part]["fiftyone_imported"] is False


def test_gpu_tests_are_recorded_as_skipped_without_cuda_not_as_passed(protocol):
    document, markdown, _ = protocol
    tests = document["part1"]["gpu_tests"]
    # collected without fiftyone (conftest and test_gpu import none), every test skipped, none claimed
    assert tests["cases"], tests["output_tail"]
    assert tests["status"].startswith("skipped: no CUDA"), tests
    assert tests["passed"] == tests["failed"] == tests["error"] == 0
    assert tests["skipped"] == len(tests["cases"])
    assert all("CUDA" in case["message"] for case in tests["cases"])
    assert "**skipped: no CUDA" in markdown


def test_part1_measures_every_engine_scenario_and_checks_it(protocol):
    document, markdown, _ = protocol
    engine = document["part1"]["engine"]
    rows = engine["rows"]
    for scenario in "abc":
        pipelines = {r["pipeline"] for r in rows if r["scenario"] == scenario}
        assert {"ours", "ref-fp32"} <= pipelines, scenario
    assert [r["prompts"] for r in rows if r["scenario"] == "b" and r["pipeline"] == "ours"] == [1, 2]
    assert any(r["scenario"] == "d" and r["tflops"] > 0 for r in rows)
    assert all(r["images_per_s"] > 0 for r in rows)
    assert len(engine["correctness"]) == 4 and engine["all_agree"]  # a, b (K = 1, 2), c
    assert engine["breakdown_ours"]
    assert not document["part1"]["skipped"]
    assert [s["name"] for s in document["part1"]["steps"] if s["status"] != "done"] == []
    for line in (
        "| a | ours | batch=2 |",
        "| b | ref-fp32 | K=2 |",
        "| c | ours | 10 boxes |",
        "| d | vision encoder |",
    ):
        assert line in markdown, line


def test_part2_measures_each_gpu_choice(protocol):
    document, markdown, _ = protocol
    part = document["part2"]
    assert [s["name"] for s in part["steps"] if s["status"] != "done"] == []
    choices = part["choices"]
    precision = choices["precision"]
    assert precision["compared"].startswith("fp32 vs fp32")  # no bf16 path on a CPU: says so
    for kind in ("text", "boxes"):  # the same fp32 code twice: identical results
        assert precision[kind]["hits"] == precision[kind]["hits_reference"] > 0
        assert precision[kind]["matched_share"] == 1.0 and precision[kind]["max_score_diff"] == 0.0
    sdpa = choices["sdpa"]
    assert sdpa["calls"] > 0 and sum(sdpa["by_backend"].values()) == sdpa["calls"]
    assert "unknown" not in sdpa["by_backend"]
    forced = sdpa["encoder_forced_backend"]["results"]
    assert forced["MATH"].get("images_per_s", 0) > 0  # the math backend runs anywhere
    memory = choices["batch_memory"]
    assert [r["batch"] for r in memory["rows"]] == [1, 2] and memory["chosen_batch"] in (1, 2)
    assert choices["encoder_share"]["tflops"] > 0 and choices["encoder_share"]["share_of_peak"] is None
    compiled = choices["compile"]
    assert compiled["backend"] == "eager" and compiled["first_call_s"] > 0
    assert compiled["agreement_vs_eager"]["matched_share"] == 1.0
    for row in ("| bf16 autocast", "| SDPA backend", "| batch size", "| image encoder share", "| `compile=True`"):
        assert row in markdown, row


def test_time_guard_skips_steps_with_a_note_instead_of_overrunning(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_protocol", os.path.join(REPO_ROOT, "bench", "gpu_protocol.py"))
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)
    argv = ["--part", "1", *SMALL, "--date", DATE, "--out", str(tmp_path), "--skip", "tests", "--budget-s", "0"]
    argv += ["--threads", "1"]
    threads = protocol.torch.get_num_threads()
    try:
        assert protocol.main(argv) == 0
    finally:
        protocol.torch.set_num_threads(threads)  # process-wide: give the other tests theirs back
    document = json.loads((tmp_path / f"gpu-cpu-{DATE}.json").read_text())
    skipped = [s["step"] for s in document["part1"]["skipped"]]
    assert skipped[:2] == ["a: batch=2", "b: K=1"] and "c: boxes" in skipped
    assert all("time guard" in s["reason"] for s in document["part1"]["skipped"])
    assert document["part1"]["engine"]["rows"] == []
    assert "time guard" in (tmp_path / f"gpu-cpu-{DATE}.md").read_text()


def test_the_calibration_bench_runs_and_compares_something(tmp_path):
    """``bench/bench_calibrate.py`` on 2 images (tiny): it exits 0 only when calibrate's curves equal
    the per-class-and-wording ``evaluate_detections`` reference and every class matched some hits."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "bench/bench_calibrate.py", "--images", "2", "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["problems"] == [] and results["images"] == 2 and results["wordings"] == 12
    assert len(results["classes_table"]) == 4 and all(row["tp"] > 0 for row in results["classes_table"])
    assert results["hits"] > 0 and results["inference_s"] > 0 and results["sweep_s"] > 0
    assert "sweep =" in (tmp_path / "results.md").read_text()
