"""The GPU protocol: everything a GPU machine should measure, in two commands of under 10 minutes each.

On the GPU machine as it is (Python 3.12, torch, transformers, pytest; NO fiftyone, nothing fetchable)::

    python bench/gpu_protocol.py --part 1    # CUDA-path tests (-m gpu), then the engine benchmark a-d, full config
    python bench/gpu_protocol.py --part 2    # the GPU choices: bf16 vs fp32, SDPA backend, compile, batch vs memory,
                                             # the image encoder's share of the bf16 peak

then commit ``bench/results/gpu-<machine>-<date>.{json,md}`` (``<machine>``: the GPU's model, e.g. ``h100``).

Part 1
    ``python -m pytest -m gpu tests/test_gpu.py`` in a subprocess (its counts and skip / failure reasons
    are recorded as pytest reports them: on a machine without CUDA they are "skipped: no CUDA", never a
    pass), then ``bench_engine.py``'s scenarios a-d on the same in-memory model (its own functions, one
    batch size / prompt count / encoder batch at a time so that the time guard can stop between them),
    its correctness checks (ours vs the transformers loop at the same precision) and a per-stage split.
Part 2
    - bf16 autocast vs float32: the same engine code on the same weights, once as the engine runs on
      sm80+ (bf16) and once in float32 (``engine.bf16 = False``, a bench-only switch): hits, score
      differences, box IoU and mask IoU of matched hits, text and box prompts; and the speed of each;
    - the SDPA backend: which ``aten::_scaled_dot_product_*`` kernel each attention call of a real
      ``segment`` dispatches to (torch.profiler, with query shapes and whether a mask was passed), and the
      image encoder timed with each backend forced (``torch.nn.attention.sdpa_kernel``);
    - batch size vs peak device memory (``torch.cuda.max_memory_allocated``) and images/s, ours with one
      text prompt; a linear fit of peak memory in the batch size gives the largest batch that fits;
    - the image encoder's achieved TFLOP/s as a share of the GPU's dense bf16 peak (target >= 40%), at the
      batch chosen above, eager and compiled;
    - ``compile=True``: the engine's own ``_prepare`` (``torch.compile`` of the vision encoder): first-call
      (warm-up) seconds, steady images/s vs eager, the cost of a new batch shape, and agreement with eager.

The model is ``bench_engine.Bench``'s: random weights built on the device, the detector calibrated so that
about 8 hits per (image, prompt) pass the threshold, the engine given the in-memory objects.

Time guard: each part stops starting new steps when the next one's estimate (from the steps before it)
would pass ``--budget-s`` (default 510 s from the process start), and records what it skipped and why in
the results; results are written after every step, so a part killed at the limit still leaves its files.

Results: each part merges its section into ``<out>/gpu-<machine>-<date>.json`` and rewrites the ``.md``
from it (``--out``, default ``bench/results``; ``.gitignore`` lets ``bench/results/gpu-*`` be committed).
Part 2 (without ``--date``) fills the newest file of the machine that lacks it: part 1's, when that file
is in ``--out``. Exit code 1 if a GPU test failed or the engine disagreed with the reference; 0 otherwise.

CPU smoke (``tests/test_bench_smoke.py`` runs it with fiftyone made unimportable and a few images; the
defaults below take a minute or two on 2 cores; ``--threads 1`` where the cores are shared)::

    python bench/gpu_protocol.py --part 1 --device cpu --config tiny
    python bench/gpu_protocol.py --part 2 --device cpu --config tiny      # -> bench/results/protocol-cpu/

On a CPU the compile step uses ``torch.compile(backend="eager")`` (``--compile-backend``): it checks the
plumbing, not the gain (inductor takes ~30 s for the tiny encoder on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import glob
import importlib.util
import json
import logging
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree

_STARTED = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
import bench_engine as be  # noqa: E402  (puts the repo root on sys.path; never imports fiftyone)

from sam3_ops.core.queries import ImagePrompts  # noqa: E402

REPO_ROOT = be.REPO_ROOT
#: device memory a batch may use, as a share of the GPU's, for "the largest batch that fits"
MEMORY_HEADROOM = 0.9
#: the batch size the GPU choices are compared at when part 2 has not found one yet
DEFAULT_BATCH = 8


# -- where results go -----------------------------------------------------------------------------


def machine_slug(device: torch.device) -> str:
    """``h100``, ``h200``, ``a100``...: the GPU's model from its name; ``cpu`` without CUDA."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for token in name.replace("NVIDIA", " ").split():
        if any(c.isdigit() for c in token):
            return re.sub(r"[^a-z0-9]+", "", token.split("-")[0].lower()) or "gpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def default_date(out: str, machine: str, part: int) -> str:
    """The date of this machine's newest results file if it still lacks this part, else today (UTC):
    part 2 fills the file part 1 wrote, even past midnight or on another day."""
    newest = sorted(glob.glob(os.path.join(out, f"gpu-{machine}-*.json")))[-1:]
    for path in newest:
        try:
            with open(path) as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            break
        if f"part{part}" not in document and document.get("date"):
            return document["date"]
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def result_paths(out: str, machine: str, date: str) -> tuple[str, str]:
    base = os.path.join(out, f"gpu-{machine}-{date}")
    return base + ".json", base + ".md"


def _clean(value):
    """JSON-safe: numpy scalars to Python, non-finite floats to ``None``, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    return value


def environment(device: torch.device) -> dict:
    """What ran where: versions, the device, whether fiftyone could be imported, the load."""
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "fiftyone_importable": importlib.util.find_spec("fiftyone") is not None,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_mem_gib=props.total_memory / 2**30,
            capability=".".join(map(str, torch.cuda.get_device_capability(device))),
            multiprocessors=props.multi_processor_count,
        )
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


class Results:
    """One part's results, merged into the day's JSON (and its Markdown rewritten) after every step."""

    def __init__(self, args):
        self.args = args
        self.json_path, self.md_path = result_paths(args.out, args.machine, args.date)
        self.part = {
            "config": args.config,
            "device": str(args.device),
            "budget_s": args.budget_s,
            "environment": environment(args.device),
            "steps": [],
            "skipped": [],
        }

    def step(self, name: str, status: str, seconds: float, **extra) -> dict:
        record = {"name": name, "status": status, "wall_s": seconds, **extra}
        self.part["steps"].append(record)
        return record

    def write(self) -> None:
        os.makedirs(self.args.out, exist_ok=True)
        document = {}
        if os.path.exists(self.json_path):
            with open(self.json_path) as handle:
                document = json.load(handle)
        self.part["wall_s"] = time.perf_counter() - _STARTED
        self.part["fiftyone_imported"] = sys.modules.get("fiftyone") is not None
        document.update(
            {"machine": self.args.machine, "date": self.args.date, f"part{self.args.part}": _clean(self.part)}
        )
        with open(self.json_path + ".tmp", "w") as handle:
            json.dump(document, handle, indent=1, allow_nan=False)
        os.replace(self.json_path + ".tmp", self.json_path)
        with open(self.md_path, "w") as handle:
            handle.write(render_markdown(document))


class Guard:
    """Starts a step only if its estimated time still fits in the part's budget (from the process start)."""

    def __init__(self, budget_s: float, results: Results):
        self.budget_s, self.results = budget_s, results

    @staticmethod
    def elapsed() -> float:
        return time.perf_counter() - _STARTED

    def allows(self, step: str, estimate_s: float) -> bool:
        if self.elapsed() + estimate_s <= self.budget_s:
            return True
        reason = (
            f"skipped: time guard (at {self.elapsed():.0f} s of the {self.budget_s:.0f} s budget, "
            f"this step was estimated at {estimate_s:.0f} s)"
        )
        print(f"[guard] {step}: {reason}", flush=True)
        self.results.part["skipped"].append({"step": step, "reason": reason})
        return False


def run_step(results: Results, name: str, function, *args, **kwargs):
    """Runs one step; an exception is recorded (with its traceback's end) and the part goes on."""
    print(f"\n== {name} (at {Guard.elapsed():.0f} s)", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    try:
        value = function(*args, **kwargs)
    except Exception as error:  # one failed measurement must not lose the others of a scarce GPU run
        if results.args.device.type == "cuda":
            torch.cuda.empty_cache()
        results.step(
            name,
            "error",
            time.perf_counter() - start,
            cpu_s=time.process_time() - cpu,
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc()[-3000:],
        )
        print(f"[error] {name}: {type(error).__name__}: {error}", flush=True)
        results.write()
        return None
    results.step(name, "done", time.perf_counter() - start, cpu_s=time.process_time() - cpu)
    results.write()
    return value


# -- part 1 ---------------------------------------------------------------------------------------


def run_gpu_tests(args, timeout_s: float) -> dict:
    """``python -m pytest -m gpu tests/test_gpu.py`` in a subprocess; the counts from its JUnit report."""
    with tempfile.TemporaryDirectory(prefix="sam3ops-protocol-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "tests/test_gpu.py",
            "-q",
            "-rA",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
        ]
        start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            returncode, output = (
                None,
                f"{expired.stdout or ''}{expired.stderr or ''}\n[timed out after {timeout_s:.0f} s]",
            )
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        cases = _junit_cases(junit) if os.path.exists(junit) else []
    print(output[-4000:], flush=True)
    counts = {kind: sum(1 for c in cases if c["outcome"] == kind) for kind in ("passed", "failed", "error", "skipped")}
    if returncode is None:
        status = "timed out"
    elif counts["failed"] or counts["error"] or returncode not in (0, 5) or not cases:
        status = "failed"
    elif counts["passed"] == 0:
        reasons = sorted({c["message"] for c in cases if c["outcome"] == "skipped"})
        status = ("skipped: no CUDA" if not torch.cuda.is_available() else "skipped") + f" ({'; '.join(reasons)})"
    else:
        status = "passed" + (f" ({counts['skipped']} skipped)" if counts["skipped"] else "")
    return {
        "command": "python -m pytest -m gpu tests/test_gpu.py",
        "status": status,
        "returncode": returncode,
        "wall_s": seconds,
        "cpu_s": cpu,
        **counts,
        "cases": cases,
        "output_tail": output[-3000:],
    }


def _junit_cases(path: str) -> list[dict]:
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(kind)
            if found is not None:
                outcome, message = name, (found.get("message") or "").strip()[:300]
                break
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "message": message})
    return cases


def _sub(args, **overrides) -> argparse.Namespace:
    """A copy of the bench arguments with some fields replaced (one sub-step of a scenario)."""
    return argparse.Namespace(**{**vars(args), **overrides})


def part1(args, results: Results, guard: Guard) -> int:
    status = 0
    if "tests" not in args.skip:
        timeout = max(30.0, min(args.tests_timeout_s, args.budget_s - guard.elapsed() - 120))
        tests = run_step(results, "gpu tests", run_gpu_tests, args, timeout)
        results.part["gpu_tests"] = tests
        results.write()
        if tests is None or tests["status"] in ("failed", "timed out"):
            status = 1
    bench = run_step(results, "build model", be.Bench, args.config, args.device, max_queries=args.max_queries)
    if bench is None:
        return 1
    engine = results.part["engine"] = {
        "params": bench.params,
        "attn_implementation": bench.attn_implementation,
        "rows": [],
        "correctness": [],
        "breakdown_ours": {},
    }
    images = be.make_images(args.images)
    threshold = run_step(
        results, "calibrate", be.calibrate_detector, bench, be.make_images(4, seed=99), args.dets_per_image
    )
    if threshold is None:
        return 1
    engine["score_threshold"] = threshold

    def scenario(name, function, *call_args, estimate):
        if not guard.allows(name, estimate):
            return None
        start = time.perf_counter()
        output = run_step(results, name, function, *call_args)
        if output is None:
            return None
        rows, extra = output
        engine["rows"] += rows
        if isinstance(extra, list):
            engine["correctness"] += extra
        else:
            engine["d"] = extra
        engine["speedups"] = be.speedups(engine["rows"])
        results.write()
        return time.perf_counter() - start

    def sweep(label, values, call, work=lambda value: 1.0):
        """One scenario, one value at a time; each step's estimate scales the last one's time by its work."""
        last = None  # (seconds, value) of the last step that ran
        for value in values:
            estimate = args.first_estimate_s if last is None else last[0] * 1.2 * work(value) / work(last[1])
            taken = scenario(label.format(value), *call(value), estimate=estimate)
            if taken is not None:
                last = (taken, value)

    report = be.print_rows
    if "a" not in args.skip:  # the same images at every batch size: about the same work
        sweep(
            "a: batch={}",
            args.batch_sizes,
            lambda b: (be.scenario_a, bench, images, _sub(args, batch_sizes=[b]), threshold, report),
        )
    if "b" not in args.skip:  # the reference runs every image K times
        sweep(
            "b: K={}",
            args.prompt_counts,
            lambda k: (be.scenario_b, bench, images, _sub(args, prompt_counts=[k]), threshold, report),
            work=float,
        )
    if "c" not in args.skip:
        sweep("c: boxes", [None], lambda _: (be.scenario_c, bench, images, args, report))
    if "d" not in args.skip:  # encoder_iters forwards of the batch
        sweep(
            "d: encoder batch={}",
            args.encoder_batches,
            lambda b: (be.scenario_d, bench, _sub(args, encoder_batches=[b]), report),
            work=float,
        )
    if "breakdown" not in args.skip:
        ours = [r for r in engine["rows"] if r["scenario"] == "a" and r["pipeline"] == "ours" and r["images_per_s"]]
        if ours and guard.allows("breakdown", 3 * max(r["seconds"] for r in ours)):
            best = max(ours, key=lambda r: r["images_per_s"])["batch"]
            prompts = [ImagePrompts(texts=(be.PROMPTS[0],))] * len(images)
            split = run_step(
                results, "breakdown a", be.engine_breakdown, bench, images, prompts, "text", best, threshold
            )
            if split is not None:
                engine["breakdown_ours"][f"a: 1 prompt, batch {best}"] = split
    bad = [c for c in engine["correctness"] if not c.get("ok")]
    engine["all_agree"] = not bad
    results.write()
    return 1 if bad else status


# -- part 2 ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def using_engine(bench, engine):
    """``bench_engine``'s pipelines run ``bench.engine``: run them on another engine for a while."""
    original, bench.engine = bench.engine, engine
    try:
        yield engine
    finally:
        bench.engine = original


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def _mask_iou(a, i, b, j) -> float:
    """IoU of hit ``i`` of segmentation ``a`` and hit ``j`` of ``b``, pasted into the image."""
    x0 = int(min(a.boxes_xyxy[i][0], b.boxes_xyxy[j][0]))
    y0 = int(min(a.boxes_xyxy[i][1], b.boxes_xyxy[j][1]))
    x1 = int(max(a.boxes_xyxy[i][2], b.boxes_xyxy[j][2]))
    y1 = int(max(a.boxes_xyxy[i][3], b.boxes_xyxy[j][3]))
    canvases = []
    for seg, k in ((a, i), (b, j)):
        canvas = np.zeros((y1 - y0, x1 - x0), bool)
        bx, by = int(seg.boxes_xyxy[k][0]) - x0, int(seg.boxes_xyxy[k][1]) - y0
        mask = seg.masks[k]
        canvas[by : by + mask.shape[0], bx : bx + mask.shape[1]] = mask
        canvases.append(canvas)
    union = (canvases[0] | canvases[1]).sum()
    return float((canvases[0] & canvases[1]).sum() / union) if union else 1.0


def agreement(candidate, reference) -> dict:
    """How close two engines' results are: hit counts, and per reference hit its best partner (same
    label and prompt, highest box IoU): the share matched (box IoU >= 0.9), score differences, mask IoU."""
    matched, total, score_diffs, mask_ious, box_ious = 0, 0, [], [], []
    for got, want in zip(candidate, reference):
        unused = set(range(len(got)))
        for j in range(len(want)):
            total += 1
            partners = [
                i for i in unused if got.labels[i] == want.labels[j] and got.prompt_index[i] == want.prompt_index[j]
            ]
            if not partners:
                continue
            i = max(partners, key=lambda i: _box_iou(got.boxes_xyxy[i], want.boxes_xyxy[j]))
            iou = _box_iou(got.boxes_xyxy[i], want.boxes_xyxy[j])
            box_ious.append(iou)
            if iou < 0.9:
                continue
            unused.discard(i)
            matched += 1
            score_diffs.append(abs(float(got.scores[i]) - float(want.scores[j])))
            mask_ious.append(_mask_iou(got, i, want, j))
    return {
        "hits": int(sum(len(s) for s in candidate)),
        "hits_reference": int(sum(len(s) for s in reference)),
        "matched_share": matched / total if total else None,
        "max_score_diff": max(score_diffs) if score_diffs else None,
        "mean_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
        "mean_mask_iou": float(np.mean(mask_ious)) if mask_ious else None,
        "min_mask_iou": min(mask_ious) if mask_ious else None,
    }


def precision_report(bench, images, threshold, batch) -> dict:
    """The engine as it runs on sm80+ (bf16 autocast) vs the same engine in float32: results and speed."""
    fp32 = be.make_engine(
        bench.detector, bench.tracker, bench.processor, bench.device, bench.engine.max_queries_per_forward
    )
    fp32.bf16 = False  # bench only: the engine decides by the GPU's capability (sam3_ops.core.checkpoint.uses_bf16)
    default = bench.engine
    label = "bf16 autocast vs fp32" if default.bf16 else "fp32 vs fp32 (no bf16 path on this device)"
    texts = be.PROMPTS[:2]
    boxes = be.make_boxes(images, 10)
    report = {"compared": label, "images": len(images), "batch": batch, "text_prompts": texts, "boxes_per_image": 10}
    outputs = {}
    for name, engine in (("default", default), ("fp32", fp32)):
        with using_engine(bench, engine):
            outputs[name] = {
                "text": be.ours_text(bench, images, texts, batch, threshold),
                "boxes": be.ours_boxes(bench, images, boxes, batch),
            }
            speed = be.measure(
                bench.device,
                lambda: be.ours_text(bench, images, texts[:1], batch, threshold),
                len(images),
                warmup=lambda: be.ours_text(bench, images[:batch], texts[:1], batch, threshold),
            )
            report[f"{name}_speed"] = {k: v for k, v in speed.items() if k != "output"}
    report["text"] = agreement(outputs["default"]["text"], outputs["fp32"]["text"])
    report["boxes"] = agreement(outputs["default"]["boxes"], outputs["fp32"]["boxes"])
    report["speedup_default_over_fp32"] = report["default_speed"]["images_per_s"] / max(
        report["fp32_speed"]["images_per_s"], 1e-9
    )
    return report


#: the backend ops of ``aten::scaled_dot_product_attention``, by the name the profiler records
SDPA_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (other)",
}


def _sdpa_calls(events) -> list[dict]:
    """Each ``aten::scaled_dot_product_attention`` call of a profile: its backend, query shape, mask."""
    calls = []
    for event in events:
        if event.name != "aten::scaled_dot_product_attention":
            continue
        backend = "unknown"
        stack = list(event.cpu_children)
        while stack:  # the backend op may sit under wrappers (autocast, views)
            child = stack.pop(0)
            if child.name in SDPA_OPS:
                backend = SDPA_OPS[child.name]
                break
            stack.extend(child.cpu_children)
        shapes = list(event.input_shapes or [])
        calls.append(
            {
                "backend": backend,
                "query_shape": shapes[0] if shapes else None,
                "mask_shape": shapes[3] if len(shapes) > 3 and shapes[3] else None,
            }
        )
    return calls


def sdpa_report(bench, images, threshold, batch, iters) -> dict:
    """Which SDPA kernels a real ``segment`` runs (profiler), and the image encoder with each backend forced."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    texts = be.PROMPTS[:1]
    boxes = be.make_boxes(images[:2], 4)
    be.ours_text(bench, images[:2], texts, 2, threshold)  # warm-up outside the profile
    with profile(activities=activities, record_shapes=True) as prof:
        be.ours_text(bench, images[:2], texts, 2, threshold)
        be.ours_boxes(bench, images[:2], boxes, 2)
        be.sync(bench.device)
    calls = _sdpa_calls(prof.events())
    grouped: dict = {}
    for call in calls:
        key = (call["backend"], str(call["query_shape"]), str(call["mask_shape"]))
        grouped[key] = grouped.get(key, 0) + 1
    kernels = {}
    if bench.device.type == "cuda":
        for event in prof.key_averages():
            if re.search(r"flash|fmha|attention|sdpa", event.key, re.IGNORECASE) and not event.key.startswith("aten::"):
                kernels[event.key[:120]] = {"calls": event.count, "device_ms": _device_time_ms(event)}
    report = {
        "calls": len(calls),
        "by_backend": {b: sum(1 for c in calls if c["backend"] == b) for b in sorted({c["backend"] for c in calls})},
        "by_shape": [
            {"backend": b, "query_shape": q, "mask_shape": m, "calls": n} for (b, q, m), n in sorted(grouped.items())
        ],
        "cuda_attention_kernels": kernels,
        "softmax_calls": sum(e.count for e in prof.key_averages() if e.key in ("aten::softmax", "aten::_softmax")),
    }
    # the image encoder with one backend allowed at a time (an error: that backend cannot run these inputs)
    pixel_values = torch.randn(batch, 3, bench.image_size, bench.image_size, device=bench.device)

    def encode():
        with torch.inference_mode(), bench.engine._autocast():
            for _ in range(iters):
                bench.detector.get_vision_features(pixel_values=pixel_values)

    forced = {}
    choices = [("default (no restriction)", None)] + [
        (name, getattr(SDPBackend, name))
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
        if hasattr(SDPBackend, name)
    ]
    for name, backend in choices:
        context = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
        try:
            with context:
                stats = be.measure(bench.device, encode, batch * iters, warmup=encode)
            forced[name] = {k: v for k, v in stats.items() if k != "output"}
        except Exception as error:  # "No available kernel": this backend cannot run these inputs
            forced[name] = {
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            }
    report["encoder_forced_backend"] = {"batch": batch, "iters": iters, "dtype": _dtype(bench), "results": forced}
    return report


def _device_time_ms(event) -> float:
    for attribute in ("device_time_total", "cuda_time_total"):
        value = getattr(event, attribute, None)
        if value is not None:
            return value / 1000
    return 0.0


def _dtype(bench) -> str:
    return "bf16 autocast" if bench.engine.bf16 else "fp32"


class _OomLog(logging.Handler):
    """Counts the engine's "Out of device memory ... retrying" warnings (its halve-and-retry)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if "Out of device memory" in record.getMessage():
            self.count += 1


def batch_memory_report(bench, threshold, batch_sizes, guard: Guard, min_images: int) -> dict:
    """Ours (1 text prompt) at each batch size: images/s and peak device memory; the batch to use."""
    logger = logging.getLogger("sam3_ops.core.engine")
    rows = []
    last, last_count = None, 1
    for batch in batch_sizes:
        count = max(2 * batch, min_images)
        if last is not None and not guard.allows(f"batch/memory: batch={batch}", last * 1.3 * count / last_count):
            break
        images = be.make_images(count, seed=batch)
        oom = _OomLog()
        logger.addHandler(oom)
        start = time.perf_counter()
        try:
            stats = be.measure(
                bench.device,
                lambda b=batch, images=images: be.ours_text(bench, images, be.PROMPTS[:1], b, threshold),
                count,
                warmup=lambda b=batch, images=images: be.ours_text(bench, images[:b], be.PROMPTS[:1], b, threshold),
            )
        finally:
            logger.removeHandler(oom)
        last, last_count = time.perf_counter() - start, count
        row = {"batch": batch, "images": count, **{k: v for k, v in stats.items() if k != "output"}}
        row["oom_halvings"] = oom.count
        rows.append(row)
        print(
            f"  batch={batch:<4} {row['images_per_s']:8.2f} img/s  peak {be._fmt(row['peak_mem_gib'], 2)} GiB"
            f"{'  (halved on OOM)' if oom.count else ''}",
            flush=True,
        )
        if stats.get("oom") or oom.count:
            break
    report = {"rows": rows, "headroom": MEMORY_HEADROOM}
    good = [r for r in rows if r["images_per_s"] and not r.get("oom") and not r["oom_halvings"]]
    if good:
        best = max(good, key=lambda r: r["images_per_s"])
        # the smallest batch within 5% of the best throughput: the same speed with the most memory to spare
        chosen = min((r for r in good if r["images_per_s"] >= 0.95 * best["images_per_s"]), key=lambda r: r["batch"])
        report.update(fastest_batch=best["batch"], chosen_batch=chosen["batch"])
    measured = [(r["batch"], r["peak_mem_gib"]) for r in good if r["peak_mem_gib"] is not None]
    if bench.device.type == "cuda" and len(measured) >= 2:
        x, y = np.array(measured, dtype=float).T
        slope, intercept = np.polyfit(x, y, 1)
        total = torch.cuda.get_device_properties(bench.device).total_memory / 2**30
        report.update(
            gib_per_image=float(slope),
            gib_fixed=float(intercept),
            device_gib=total,
            largest_batch_that_fits=int((MEMORY_HEADROOM * total - intercept) / slope) if slope > 0 else None,
        )
    else:
        report["note"] = "peak device memory is measured on CUDA only"
    return report


def encoder_share(bench, batch, iters, peak_tflops, flops_per_image=None) -> dict:
    """The image encoder's achieved TFLOP/s at ``batch`` (the engine's precision) and its share of the peak.

    ``flops_per_image`` (None: counted here, by ``bench_engine.vision_flops_per_image``): pass the eager
    count for a compiled encoder (FlopCounterMode's module hooks do not belong inside a compiled module).
    """
    if flops_per_image is None:
        flops = be.vision_flops_per_image(bench)
        flops_per_image = max(flops["flop_counter"], flops["analytic_vit_backbone"])
    per_image = flops_per_image
    pixel_values = torch.randn(batch, 3, bench.image_size, bench.image_size, device=bench.device)

    def run():
        with torch.inference_mode(), bench.engine._autocast():
            for _ in range(iters):
                bench.detector.get_vision_features(pixel_values=pixel_values)

    stats = be.measure(bench.device, run, batch * iters, warmup=run)
    achieved = per_image * stats["images_per_s"] / 1e12
    return {
        "batch": batch,
        "dtype": _dtype(bench),
        "flops_per_image": per_image,
        "images_per_s": stats["images_per_s"],
        "ms_per_image": stats["ms_per_image"],
        "peak_mem_gib": stats["peak_mem_gib"],
        "tflops": achieved,
        "peak_tflops": peak_tflops,
        "share_of_peak": achieved / peak_tflops if peak_tflops else None,
    }


@contextlib.contextmanager
def compile_backend(backend: str):
    """``torch.compile`` with another backend for a while (``"inductor"``, its default: unchanged)."""
    if backend == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


def compile_report(bench, images, threshold, batch, backend, iters, peak_tflops, eager_share, guard) -> dict:
    """``compile=True`` as the engine does it (``Sam3Engine._prepare``): warm-up, gain, a new shape's cost."""
    engine = be.make_engine(
        bench.detector, bench.tracker, bench.processor, bench.device, bench.engine.max_queries_per_forward
    )
    engine.compile = True
    text = be.PROMPTS[:1]
    report = {"backend": backend, "batch": batch, "images": len(images)}
    eager = be.measure(
        bench.device,
        lambda: be.ours_text(bench, images, text, batch, threshold),
        len(images),
        warmup=lambda: be.ours_text(bench, images[:batch], text, batch, threshold),
    )
    report["eager"] = {k: v for k, v in eager.items() if k != "output"}
    original_encoder = bench.detector.vision_encoder
    try:
        with compile_backend(backend):
            engine._detector = engine._prepare(bench.detector)  # swaps in the compiled vision encoder
        with using_engine(bench, engine):

            def timed(function):
                be.sync(bench.device)
                start = time.perf_counter()
                output = function()
                be.sync(bench.device)
                return time.perf_counter() - start, output

            report["first_call_s"], _ = timed(lambda: be.ours_text(bench, images[:batch], text, batch, threshold))
            report["second_call_s"], _ = timed(lambda: be.ours_text(bench, images[:batch], text, batch, threshold))
            compiled = be.measure(
                bench.device,
                lambda: be.ours_text(bench, images, text, batch, threshold),
                len(images),
                warmup=lambda: be.ours_text(bench, images[:batch], text, batch, threshold),
            )
            report["compiled"] = {k: v for k, v in compiled.items() if k != "output"}
            report["agreement_vs_eager"] = agreement(compiled["output"], eager["output"])
            flops = eager_share["flops_per_image"] if eager_share else None
            report["encoder_compiled"] = encoder_share(bench, batch, iters, peak_tflops, flops)
            other = max(1, batch - 3)  # a tail batch: a new input shape, which may compile again
            if guard.allows("compile: a new batch shape", 1.5 * report["first_call_s"]):
                report["new_shape_batch"] = other
                report["new_shape_first_call_s"], _ = timed(
                    lambda: be.ours_text(bench, images[:other], text, other, threshold)
                )
                report["new_shape_second_call_s"], _ = timed(
                    lambda: be.ours_text(bench, images[:other], text, other, threshold)
                )
    finally:
        bench.detector.vision_encoder = original_encoder
    report["encoder_eager"] = eager_share
    report["gain"] = eager["ms_per_image"] / compiled["ms_per_image"] if compiled["ms_per_image"] else None
    saved_ms = eager["ms_per_image"] - compiled["ms_per_image"]
    warmup = report["first_call_s"] - report["second_call_s"]
    report["warmup_s"] = warmup
    report["break_even_images"] = 1000 * warmup / saved_ms if saved_ms > 0 else None
    return report


def part2(args, results: Results, guard: Guard) -> int:
    bench = run_step(results, "build model", be.Bench, args.config, args.device, max_queries=args.max_queries)
    if bench is None:
        return 1
    threshold = run_step(
        results, "calibrate", be.calibrate_detector, bench, be.make_images(4, seed=99), args.dets_per_image
    )
    if threshold is None:
        return 1
    choices = results.part["choices"] = {"score_threshold": threshold, "params": bench.params}
    cuda = args.device.type == "cuda"
    images = be.make_images(args.images)
    batch = min(DEFAULT_BATCH, len(images))
    steps = [
        ("bf16 vs fp32", "precision", 60 if cuda else 10, lambda: precision_report(bench, images, threshold, batch)),
        (
            "SDPA backend",
            "sdpa",
            60 if cuda else 10,
            lambda: sdpa_report(bench, images, threshold, batch, args.encoder_iters),
        ),
        (
            "batch size vs memory",
            "batch_memory",
            60 if cuda else 10,
            lambda: batch_memory_report(bench, threshold, args.memory_batch_sizes, guard, args.images),
        ),
    ]
    for name, key, estimate, function in steps:
        if name.split()[0].lower() in args.skip or not guard.allows(name, estimate):
            continue
        value = run_step(results, name, function)
        if value is not None:
            choices[key] = value
            results.write()
    chosen = choices.get("batch_memory", {}).get("chosen_batch") or DEFAULT_BATCH
    encoder_batch = min(chosen, args.encoder_batch_cap)
    eager_share = None
    if "encoder" not in args.skip and guard.allows("encoder share", 30 if cuda else 5):
        eager_share = run_step(
            results, "encoder share", encoder_share, bench, encoder_batch, args.encoder_iters, args.peak_tflops
        )
        if eager_share is not None:
            choices["encoder_share"] = eager_share
            results.write()
    if "compile" not in args.skip and guard.allows("compile", args.compile_estimate_s):
        value = run_step(
            results,
            "compile",
            compile_report,
            bench,
            images,
            threshold,
            min(encoder_batch, len(images)),
            args.compile_backend,
            args.encoder_iters,
            args.peak_tflops,
            eager_share,
            guard,
        )
        if value is not None:
            choices["compile"] = value
    results.write()
    return 0


# -- the Markdown ---------------------------------------------------------------------------------


def _f(value, digits=2, suffix="") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _environment_lines(env: dict) -> list[str]:
    device = env.get("gpu") or f"CPU ({env.get('cpu_count')} cores)"
    memory = f", {env['gpu_mem_gib']:.0f} GiB, sm{env.get('capability', '?')}" if env.get("gpu_mem_gib") else ""
    load = ", ".join(f"{v:.2f}" for v in env.get("loadavg") or [])
    return [
        f"- device: {device}{memory}; Python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('cuda')}), "
        f"transformers {env.get('transformers')}; commit {env.get('git_commit') or '?'}",
        f"- command: `{env.get('command')}`; load average at the start: {load or '-'}; "
        f"fiftyone importable: {env.get('fiftyone_importable')}",
    ]


def _steps_lines(part: dict) -> list[str]:
    lines = [
        f"- wall time: {_f(part.get('wall_s'), 0)} s of a {_f(part.get('budget_s'), 0)} s budget; "
        f"fiftyone imported: {part.get('fiftyone_imported')}"
    ]
    for step in part.get("steps", []):
        if step["status"] == "error":
            lines.append(f"- **error** in {step['name']}: `{step.get('error')}`")
    for skipped in part.get("skipped", []):
        lines.append(f"- {skipped['step']}: {skipped['reason']}")
    return lines


def _render_part1(part: dict) -> list[str]:
    lines = ["## Part 1: CUDA-path tests and the engine benchmark", ""]
    lines += _environment_lines(part.get("environment", {})) + _steps_lines(part) + [""]
    tests = part.get("gpu_tests")
    if tests:
        lines += [
            f"### `{tests['command']}`",
            "",
            f"**{tests['status']}**: {tests['passed']} passed, {tests['failed']} failed, {tests['error']} errors, "
            f"{tests['skipped']} skipped ({_f(tests['wall_s'], 0)} s, exit code {tests['returncode']})",
            "",
        ]
        lines += [f"- {c['test']}: {c['outcome']} {c['message']}" for c in tests["cases"] if c["outcome"] != "passed"]
        lines.append("")
    engine = part.get("engine")
    if engine:
        lines += [
            f"### Engine benchmark (`bench_engine.py` scenarios, config `{part['config']}`)",
            "",
            f"Score threshold {_f(engine.get('score_threshold'), 4)} (calibrated for ~8 hits per image and prompt); "
            f"attention: {engine.get('attn_implementation')}; parameters: {engine.get('params')}.",
            "",
        ]
        rows = [
            {**r, "ms_per_image": math.inf if r.get("ms_per_image") is None else r["ms_per_image"]}
            for r in engine.get("rows", [])
        ]
        if rows:
            lines += [be.markdown_table(rows), ""]
        if engine.get("speedups"):
            lines += ["| ratio | value |", "|---|---:|"]
            lines += [f"| {k} | {_f(v)} |" for k, v in engine["speedups"].items()] + [""]
        if engine.get("d"):
            lines += [f"Vision encoder FLOPs per image: {engine['d'].get('flops_per_image')}", ""]
        for name, split in engine.get("breakdown_ours", {}).items():
            lines += [f"Ours, {name}: " + ", ".join(f"{k} {_pct(v)}" for k, v in split["share"].items()), ""]
        checks = engine.get("correctness", [])
        bad = [c for c in checks if not c.get("ok")]
        lines.append(
            f"Correctness (ours vs the reference at the same precision): {len(checks) - len(bad)} of {len(checks)} "
            f"checks agree" + (f"; **disagreements**: {bad}" if bad else "")
        )
        agreements = [c["mask_pixel_agreement_in_box"] for c in checks if c.get("mask_pixel_agreement_in_box")]
        diffs = [c["max_score_diff"] for c in checks if c.get("max_score_diff") is not None]
        if agreements:
            lines.append(
                f"(min in-box mask agreement {min(agreements):.4f}, max score difference {max(diffs or [0]):.4f})"
            )
        lines.append("")
    return lines


def _choice_rows(choices: dict) -> list[str]:
    """The summary table of the GPU choices (issue item 4), one row per choice."""
    rows = []
    precision = choices.get("precision")
    if precision:
        text, boxes = precision["text"], precision["boxes"]
        rows.append(
            f"| bf16 autocast (sm80+) | {precision['compared']}: text hits {text['hits']} vs {text['hits_reference']}, "
            f"{_pct(text['matched_share'])} matched, max score diff {_f(text['max_score_diff'], 3)}, mean mask IoU "
            f"{_f(text['mean_mask_iou'], 3)}; boxes: mean mask IoU {_f(boxes['mean_mask_iou'], 3)} "
            f"(min {_f(boxes['min_mask_iou'], 3)}) | {_f(precision['speedup_default_over_fp32'])}x the fp32 speed |"
        )
    sdpa = choices.get("sdpa")
    if sdpa:
        forced = sdpa["encoder_forced_backend"]["results"]
        timing = "; ".join(
            f"{name.split()[0].lower()}: "
            + (f"{_f(r.get('ms_per_image'))} ms/img" if "error" not in r else "cannot run")
            for name, r in forced.items()
        )
        backends = ", ".join(f"{b} x{n}" for b, n in sdpa["by_backend"].items())
        rows.append(f"| SDPA backend | calls in one text + one box batch: {backends} | encoder: {timing} |")
    memory = choices.get("batch_memory")
    if memory:
        fits = memory.get("largest_batch_that_fits")
        peaks = ", ".join(f"{r['batch']}: {_f(r['peak_mem_gib'], 1)} GiB" for r in memory["rows"])
        rows.append(
            f"| batch size | peak memory by batch: {peaks}"
            + (f"; fit {_f(memory.get('gib_per_image'))} GiB/image + {_f(memory.get('gib_fixed'))} GiB" if fits else "")
            + f" | chosen batch {memory.get('chosen_batch')} (fastest {memory.get('fastest_batch')}); "
            f"largest that fits in {int(100 * memory['headroom'])}%: {_f(fits)} |"
        )
    share = choices.get("encoder_share")
    compiled = choices.get("compile")
    if share:
        target = (
            ""
            if share["share_of_peak"] is None
            else (" (meets 40%)" if share["share_of_peak"] >= 0.4 else " (below 40%)")
        )
        extra = ""
        if compiled and compiled.get("encoder_compiled"):
            extra = f"; compiled: {_pct(compiled['encoder_compiled']['share_of_peak'])}"
        rows.append(
            f"| image encoder share of the bf16 peak | {_f(share['tflops'], 1)} TFLOP/s at batch {share['batch']} "
            f"({share['dtype']}) of {_f(share['peak_tflops'], 0)} | {_pct(share['share_of_peak'])}{target}{extra} |"
        )
    if compiled:
        rows.append(
            f"| `compile=True` ({compiled['backend']}) | warm-up {_f(compiled['warmup_s'], 1)} s, new batch shape "
            f"{_f(compiled.get('new_shape_first_call_s'), 1)} s; {_f(compiled['eager']['ms_per_image'])} -> "
            f"{_f(compiled['compiled']['ms_per_image'])} ms/image | gain {_f(compiled['gain'])}x, pays back after "
            f"{_f(compiled['break_even_images'], 0)} images |"
        )
    return rows


def _render_part2(part: dict) -> list[str]:
    lines = ["## Part 2: the GPU choices, measured", ""]
    lines += _environment_lines(part.get("environment", {})) + _steps_lines(part) + [""]
    choices = part.get("choices", {})
    rows = _choice_rows(choices)
    if rows:
        lines += ["| choice | measured | result |", "|---|---|---|", *rows, ""]
    sdpa = choices.get("sdpa")
    if sdpa:
        lines += ["SDPA calls by backend and shape (query shape, mask shape):", ""]
        lines += [
            f"- {r['backend']}: q {r['query_shape']}, mask {r['mask_shape']}: {r['calls']}" for r in sdpa["by_shape"]
        ]
        if sdpa.get("cuda_attention_kernels"):
            lines += [f"- kernel `{k}`: {v['calls']} calls" for k, v in sdpa["cuda_attention_kernels"].items()]
        lines.append("")
    memory = choices.get("batch_memory")
    if memory:
        lines += ["| batch | images/s | ms/image | peak GiB | OOM halvings |", "|---:|---:|---:|---:|---:|"]
        lines += [
            f"| {r['batch']} | {_f(r['images_per_s'])} | {_f(r['ms_per_image'])} | {_f(r['peak_mem_gib'], 2)} | "
            f"{r['oom_halvings']} |"
            for r in memory["rows"]
        ] + [""]
    return lines


def render_markdown(document: dict) -> str:
    lines = [
        f"# GPU protocol: {document.get('machine')}, {document.get('date')}",
        "",
        "`python bench/gpu_protocol.py --part 1` and `--part 2` (see `bench/README.md`). Random full-size weights: "
        "speed and agreement, not accuracy.",
        "",
    ]
    if "part1" in document:
        lines += _render_part1(document["part1"])
    else:
        lines += ["## Part 1: not run yet", ""]
    if "part2" in document:
        lines += _render_part2(document["part2"])
    else:
        lines += ["## Part 2: not run yet", ""]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", type=int, choices=(1, 2), required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", choices=("tiny", "small", "full"), default=None, help="default: full on cuda")
    parser.add_argument(
        "--out",
        default=None,
        help="default bench/results (git-tracked gpu-* files); bench/results/protocol-cpu on a CPU",
    )
    parser.add_argument("--machine", default=None, help="default: the GPU's model (h100, h200, ...) or cpu")
    parser.add_argument("--date", default=None, help="default: the newest file's that lacks this part, else today")
    parser.add_argument("--budget-s", type=float, default=510.0, help="start no step that would end after this")
    parser.add_argument(
        "--skip",
        default="",
        help="steps to leave out: tests,a,b,c,d,breakdown (part 1); bf16,sdpa,batch,encoder,compile (part 2)",
    )
    parser.add_argument("--images", type=int, default=None, help="images per measurement (default 64 cuda, 8 cpu)")
    parser.add_argument("--batch-sizes", default=None, help="(a) default 1,4,8,16,32 cuda; 1,4 cpu")
    parser.add_argument("--prompt-counts", default=None, help="(b) default 1,2,4,8 cuda; 1,4 cpu")
    parser.add_argument("--encoder-batches", default=None, help="(d) default 1,8,32 cuda; 1,2 cpu")
    parser.add_argument("--encoder-iters", type=int, default=None, help="encoder forwards per timing (5 cuda, 1 cpu)")
    parser.add_argument("--memory-batch-sizes", default=None, help="part 2: default 1,2,4,8,16,32,64 cuda; 1,2,4 cpu")
    parser.add_argument("--encoder-batch-cap", type=int, default=32, help="part 2: encoder share batch at most this")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor cuda, eager cpu)")
    parser.add_argument("--compile-estimate-s", type=float, default=None, help="time budgeted for compile (240 cuda)")
    parser.add_argument("--first-estimate-s", type=float, default=None, help="budget of a scenario's first step")
    parser.add_argument("--tests-timeout-s", type=float, default=300.0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak (default: by GPU name)")
    parser.add_argument("--dets-per-image", type=float, default=8.0)
    parser.add_argument("--max-queries", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    args.config = args.config or ("full" if cuda else "tiny")
    args.machine = args.machine or machine_slug(args.device)
    if args.out is None:  # CPU trials stay out of the committed GPU results
        args.out = os.path.join(REPO_ROOT, "bench", "results", *([] if cuda else ["protocol-cpu"]))
    args.date = args.date or default_date(args.out, args.machine, args.part)
    args.images = args.images or (64 if cuda else 8)
    args.batch_sizes = _ints(args.batch_sizes or ("1,4,8,16,32" if cuda else "1,4"))
    args.prompt_counts = _ints(args.prompt_counts or ("1,2,4,8" if cuda else "1,4"))
    args.encoder_batches = _ints(args.encoder_batches or ("1,8,32" if cuda else "1,2"))
    args.encoder_iters = args.encoder_iters or (5 if cuda else 1)
    args.memory_batch_sizes = _ints(args.memory_batch_sizes or ("1,2,4,8,16,32,64" if cuda else "1,2,4"))
    args.compile_backend = args.compile_backend or ("inductor" if cuda else "eager")
    args.compile_estimate_s = args.compile_estimate_s or (240.0 if cuda else 10.0)
    args.first_estimate_s = args.first_estimate_s or (45.0 if cuda else 5.0)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.peak_tflops is None and cuda:
        name = torch.cuda.get_device_name(args.device)
        args.peak_tflops = next((v for k, v in be.PEAK_BF16_TFLOPS.items() if k in name), None)
    # bench_engine's scenarios read these
    args.prompt_batch, args.boxes_per_image, args.box_batch = 8, 10, 8
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    be.REPEATS = max(1, args.repeats)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Results(args)
    guard = Guard(args.budget_s, results)
    print(f"GPU protocol part {args.part}: {args.device}, config {args.config} -> {results.json_path}", flush=True)
    results.write()
    status = (part1 if args.part == 1 else part2)(args, results, guard)
    results.write()
    print(f"\nwrote {results.json_path} and {results.md_path} ({Guard.elapsed():.0f} s); exit {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
