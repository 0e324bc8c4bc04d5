"""FiftyOne's built-in SAM3 zoo model vs this plugin: same images, same prompts, same device, one run.

The built-in is ``foz.load_zoo_model("segment-anything-3-image-torch")`` (``fiftyone.utils.sam3``,
which wraps Meta's ``sam3`` package from PyPI); the plugin is ``sam3_ops.load_model(..., mode="text")``
(transformers). Both run through ``dataset.apply_model`` on the same N images (640x480 photos from
scikit-image) with the same K text prompts, K = 1 and K = 4, on ``--device``. Reported per side and K:
wall seconds per image and images/s (after a warm-up image), CPU seconds per image (the process's
user + system time: robust to other jobs on the machine, which stretch the wall clock), peak memory
(the process's RSS high-water mark during that phase, reset before it via ``/proc/self/clear_refs``;
on CUDA also ``torch.cuda.max_memory_allocated``), and the detections written.

Weights: both sides are full size and RANDOM (no real weights can be fetched here), so scores mean
nothing: the comparison is of speed and memory, not accuracy. To keep the work realistic each side's
score threshold is set, after its warm-up image, to the quantile that keeps about
``--dets-per-prompt`` hits per (image, prompt) in that warm-up's scores (read with a forward hook; the
same formula both use: sigmoid(logit) * sigmoid(presence)), separately for K = 1 and K = 4; the hits
written are counted and shown.

What of the built-in is bypassed (everything else is its real code path: ``load_zoo_model``, its
``GetItem``, its ``collate_fn`` building Meta's ``Datapoint`` batch with Meta's transforms, Meta's
``Sam3Image.forward``, its output processors and ``Detection`` conversion, ``apply_model``'s writes):

- the weights: ``entrypoint_args={"checkpoint_path": None, "load_from_HF": False, "bpe_path": ...}``.
  FiftyOne then skips its hub download (it downloads only when ``checkpoint_path`` is absent) and
  Meta's ``build_sam3_image_model`` builds the full-size model without loading a checkpoint. The BPE
  vocabulary (CLIP's ``bpe_simple_vocab_16e6.txt.gz``, which FiftyOne would download from GitHub) is
  the copy shipped in the ``open_clip_torch`` wheel, or ``--bpe-path``. Two parameters of Meta's
  text encoder are created with ``torch.empty`` (a checkpoint always overwrites them) and hold NaN or
  garbage without one: ``positional_embedding`` and ``text_projection`` get CLIP's initialisation
  (``init_unloaded_params``), else every score is NaN.
- on a machine without CUDA only: Meta's ``sam3`` 0.1.4 hard-codes CUDA in three places (upstream
  issues facebookresearch/sam3#406, #550, #587): ``position_encoding.py:47`` and ``decoder.py:281``
  build caches with ``device="cuda"`` at construction, ``geometry_encoders.py:659`` calls
  ``pin_memory()`` in every forward. A ``TorchFunctionMode`` (``MetaCpuShim``) active around the
  built-in's load and ``apply_model`` maps ``device="cuda"`` to the CPU and makes ``pin_memory()`` a
  no-op; it counts what it rewrote (in the JSON). Not used with ``--device cuda``.

The plugin side reads a full-size random ``sam3_video`` checkpoint (``Sam3Config()`` +
``Sam3TrackerVideoConfig()``, the in-memory byte-level tokenizer of ``sam3_ops.testing``), written
once to ``--checkpoint-dir`` (~4 GB, cached; reruns reuse it) by a subprocess.

The database is a private mongod in a temporary directory (``sam3_ops.testing.PrivateMongo``), as are
FiftyOne's model-zoo and dataset directories; all removed at exit.

Usage (a venv with fiftyone, sam3, open_clip_torch, transformers; see ``bench/builtin.md``)::

    PYTHONPATH=. python bench/bench_builtin.py --device cpu --images 3
    PYTHONPATH=. python bench/bench_builtin.py --device cuda --images 64 --batch-size 8

Results: a table on stdout, ``results.json`` and ``results.md`` under ``bench/results/builtin/``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO_NAME = "segment-anything-3-image-torch"
PROMPTS = ["person", "cat", "car", "tree"]
SKIMAGE_PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field"]
_COMPLETE = "BENCH_CHECKPOINT_COMPLETE"


# -- the plugin's full-size random checkpoint (built in a subprocess, cached) ------------------------


def build_full_checkpoint(path: str, seed: int = 0) -> None:
    """Writes a full-size random ``sam3_video`` checkpoint + processor to ``path`` (as testing.py does
    for the tiny one: ``save_file`` of the state dict under the module names, ``config.save_pretrained``)."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        Sam3Config,
        Sam3ImageProcessor,
        Sam3Processor,
        Sam3TrackerVideoConfig,
        Sam3VideoConfig,
        Sam3VideoModel,
    )

    from sam3_ops.testing import tiny_processor

    detector = Sam3Config()
    # the in-memory byte-level tokenizer has <|startoftext|> = 0, <|endoftext|> = 1 (ids only: the
    # vocabulary of 49408 and every layer stay full-size)
    text = detector.text_config
    text.bos_token_id, text.eos_token_id, text.pad_token_id = 0, 1, 1
    config = Sam3VideoConfig(detector_config=detector, tracker_config=Sam3TrackerVideoConfig())
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    del model
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tiny_processor().tokenizer).save_pretrained(path)
    with open(os.path.join(path, _COMPLETE), "w") as f:
        f.write(f"seed={seed}\n")


def ensure_checkpoint(path: str) -> float:
    """Builds the checkpoint in a subprocess unless a complete one is there; returns seconds spent."""
    if os.path.isfile(os.path.join(path, _COMPLETE)):
        return 0.0
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, os.path.abspath(__file__), "--build-checkpoint", path], check=True, env=env)
    return time.perf_counter() - start


# -- measurement ---------------------------------------------------------------------------------------


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_gb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 2**20


class Phase:
    """Wall time, CPU time, peak RSS (VmHWM, reset at entry) and CUDA peak of one phase of this process."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        try:  # Linux >= 4.0: "5" resets this process's peak RSS (VmHWM) to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_start = rss_gb()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu0 = usage.ru_utime + usage.ru_stime
        self.load0 = os.getloadavg()[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall = time.perf_counter() - self.t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = usage.ru_utime + usage.ru_stime - self.cpu0
        hwm = _status_kb("VmHWM") if self.hwm_reset else None
        # without the reset, ru_maxrss is the whole process's peak so far (an upper bound)
        self.peak_rss = hwm / 2**20 if hwm is not None else usage.ru_maxrss / 2**20
        self.rss_end = rss_gb()
        self.cuda_peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None
        self.loadavg = max(self.load0, os.getloadavg()[0])
        return False

    def as_dict(self) -> dict:
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "peak_rss_gb": self.peak_rss,
            "peak_rss_is_phase_peak": self.hwm_reset,
            "rss_start_gb": self.rss_start,
            "rss_end_gb": self.rss_end,
            "cuda_peak_gb": self.cuda_peak,
            "loadavg_1min": self.loadavg,
        }


class ScoreProbe:
    """Collects detector scores, sigmoid(logit) * sigmoid(presence) per query, from a forward hook.

    Meta's ``Sam3Image.forward`` returns a ``SAM3Output`` (last step: ``pred_logits`` [P, Q, 1],
    ``presence_logit_dec`` [P, 1]); transformers' ``Sam3Model`` an output with ``pred_logits`` [P, Q]
    and ``presence_logits`` [P, 1]. P = (image, prompt) pairs, Q = queries (200).
    """

    def __init__(self):
        self.scores = []
        self.handle = None

    def attach_module(self, module):
        self.handle = module.register_forward_hook(self._hook)
        return self

    def attach_class(self, class_name: str):
        import torch

        def hook(module, args, output):
            if type(module).__name__ == class_name:
                self._hook(module, args, output)

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def _hook(self, module, args, output):
        if isinstance(output, dict) or hasattr(output, "presence_logits"):
            out = output
        else:  # SAM3Output: stages -> steps -> dict
            out = list(output)[-1]
            out = out[-1] if isinstance(out, list) else out
        get = out.get if isinstance(out, dict) else lambda k: getattr(out, k, None)
        logits = get("pred_logits").detach().float()
        presence = get("presence_logit_dec") if get("presence_logit_dec") is not None else get("presence_logits")
        logits = logits.reshape(logits.shape[0], -1)
        scores = logits.sigmoid() * presence.detach().float().reshape(logits.shape[0], 1).sigmoid()
        self.scores.append(scores.cpu())

    def detach(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def threshold(self, dets_per_prompt: float, prompts: int) -> float:
        """The score that keeps about ``dets_per_prompt`` hits per prompt among the first ``prompts``
        prompts of what was seen (the warm-up: one image, its rows in prompt order). Random weights give
        each prompt its own presence level, so one threshold for all 4 prompts would keep the hits of one
        prompt only: K = 1 and K = 4 each get theirs, keeping ~``prompts * dets_per_prompt`` per image."""
        import torch

        scores = torch.cat(self.scores)  # [pairs, queries]
        if scores.shape[0] >= prompts:
            scores = scores[:prompts]
        keep = min(max(dets_per_prompt / scores.shape[1], 0.0), 1.0)
        value = float(torch.quantile(scores.flatten(), 1.0 - keep)) if keep > 0 else 1.0
        return min(max(value, 1e-6), 1 - 1e-6)

    def summary(self) -> dict:
        import torch

        scores = torch.cat(self.scores)
        return {"min": float(scores.min()), "max": float(scores.max()), "std": float(scores.std()), "n": scores.numel()}


def init_unloaded_params(sam3_image) -> list[str]:
    """CLIP's initialisation for the two text-encoder parameters Meta's constructor leaves as ``torch.empty``."""
    import torch

    encoder = sam3_image.backbone.language_backbone.encoder
    torch.nn.init.normal_(encoder.positional_embedding, std=0.01)
    names = ["positional_embedding"]
    if isinstance(encoder.text_projection, torch.nn.Parameter):
        torch.nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)
        names.append("text_projection")
    return [f"backbone.language_backbone.encoder.{name}" for name in names]


def make_meta_cpu_shim():
    """A ``TorchFunctionMode`` that lets Meta's sam3 0.1.4 run without CUDA (see the module docstring)."""
    import torch
    from torch.overrides import TorchFunctionMode

    class MetaCpuShim(TorchFunctionMode):
        hits = collections.Counter()

        def _record(self, func):
            frame = traceback.extract_stack(limit=3)[0]
            where = frame.filename.split("site-packages" + os.sep)[-1]
            self.hits[f"{where}:{frame.lineno} {getattr(func, '__name__', func)}"] += 1

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.Tensor.pin_memory:
                self._record(func)
                return args[0]
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda":
                self._record(func)
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    return MetaCpuShim()


# -- the two sides -----------------------------------------------------------------------------------


def default_bpe_path() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
        if os.path.isfile(path):
            return path
    return None


def make_images(directory: str, count: int, size=(640, 480)) -> list[str]:
    """``count`` JPEGs of scikit-image's sample photos, resized to ``size`` (COCO-like)."""
    import skimage.data
    from PIL import Image

    paths = []
    for i in range(count):
        name = SKIMAGE_PHOTOS[i % len(SKIMAGE_PHOTOS)]
        array = getattr(skimage.data, name)()
        image = Image.fromarray(array).convert("RGB").resize(size, Image.BILINEAR)
        path = os.path.join(directory, f"{i:03d}_{name}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def count_hits(dataset, field: str) -> dict:
    return {
        "detections": int(dataset.count(f"{field}.detections")),
        "samples_labelled": int(len(dataset.exists(field))),
    }


def run_builtin(dataset, warm, args, device, report):
    import fiftyone.zoo as foz
    import torch

    shim = make_meta_cpu_shim() if device.type != "cuda" else None
    torch.manual_seed(0)  # Meta's random initialisation, reproducible from run to run
    side_start = rss_gb()
    with Phase(device) as load:
        entry = {"checkpoint_path": None, "load_from_HF": False, "bpe_path": args.bpe_path}
        with shim if shim is not None else _null():
            model = foz.load_zoo_model(
                ZOO_NAME, classes=PROMPTS[: max(args.prompts)], device=str(device), entrypoint_args=entry
            )
        initialised = init_unloaded_params(model._model)
        probe = ScoreProbe().attach_module(model._model)
        with shim if shim is not None else _null():
            warm.apply_model(model, label_field="builtin_warmup", batch_size=1, num_workers=0, skip_failures=False)
        probe.detach()
    thresholds = {k: probe.threshold(args.dets_per_prompt, k) for k in args.prompts}
    params = sum(p.numel() for p in model._model.parameters())
    report["sides"]["builtin"] = {
        "load_and_warmup": load.as_dict(),
        "thresholds": thresholds,
        "warmup_scores": probe.summary(),
        "params": params,
        "initialised_empty_params": initialised,
        "class": f"{type(model).__module__}.{type(model).__name__}",
    }
    for k in args.prompts:
        model.config.classes = PROMPTS[:k]  # what load_zoo_model(..., classes=...) sets
        # the score threshold of its concept output processor (what output_processor_args["mask_thresh"] sets)
        model._concept_output_processor.mask_thresh = threshold = thresholds[k]
        field = f"builtin_k{k}"
        with Phase(device) as phase:
            with shim if shim is not None else _null():
                dataset.apply_model(
                    model, label_field=field, batch_size=args.builtin_batch_size, num_workers=0, skip_failures=False
                )
        report["rows"].append(
            _row("built-in (Meta sam3)", k, args.builtin_batch_size, phase, dataset, field, threshold, side_start)
        )
        print_row(report["rows"][-1], flush=True)
        save(report, args.out)
    if shim is not None:
        report["sides"]["builtin"]["cpu_shim_rewrites"] = dict(shim.hits)
    del model, probe
    gc.collect()


def run_plugin(dataset, warm, args, device, report):
    import sam3_ops

    def load(prompts, threshold):
        return sam3_ops.load_model(
            args.checkpoint_dir, mode="text", prompts=prompts, threshold=threshold, device=str(device), reuse=True
        )

    side_start = rss_gb()
    with Phase(device) as phase_load:
        model = load(PROMPTS[: max(args.prompts)], 0.5)
        probe = ScoreProbe().attach_class("Sam3Model")
        warm.apply_model(model, label_field="plugin_warmup", batch_size=1, num_workers=0, skip_failures=False)
        probe.detach()
    thresholds = {k: probe.threshold(args.dets_per_prompt, k) for k in args.prompts}
    report["sides"]["plugin"] = {
        "load_and_warmup": phase_load.as_dict(),
        "thresholds": thresholds,
        "warmup_scores": probe.summary(),
        "class": f"{type(model).__module__}.{type(model).__name__}",
    }
    for k in args.prompts:
        threshold = thresholds[k]
        model = load(PROMPTS[:k], threshold)  # reuse=True: the same in-memory engine, new prompts/threshold
        field = f"plugin_k{k}"
        with Phase(device) as phase:
            dataset.apply_model(model, label_field=field, batch_size=args.batch_size, num_workers=0)
        report["rows"].append(
            _row("plugin (sam3_ops)", k, args.batch_size, phase, dataset, field, threshold, side_start)
        )
        print_row(report["rows"][-1], flush=True)
        save(report, args.out)
    del model, probe
    gc.collect()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _row(side, k, batch, phase, dataset, field, threshold, side_start) -> dict:
    n = len(dataset)
    hits = count_hits(dataset, field)
    return {
        "side": side,
        "K": k,
        "images": n,
        "batch_size": batch,
        "s_per_image": phase.wall / n,
        "images_per_s": n / phase.wall,
        "cpu_s_per_image": phase.cpu / n,
        "dets_per_image": hits["detections"] / n,
        "threshold": threshold,
        # what this side added: objects of a side run earlier in this process may still be resident
        "peak_rss_above_side_start_gb": phase.peak_rss - side_start if side_start is not None else None,
        "side_start_rss_gb": side_start,
        **hits,
        **phase.as_dict(),
    }


# -- report ------------------------------------------------------------------------------------------

COLUMNS = [
    ("side", "side", "{}"),
    ("K", "K", "{}"),
    ("images", "N", "{}"),
    ("batch_size", "batch", "{}"),
    ("s_per_image", "s/img", "{:.1f}"),
    ("images_per_s", "img/s", "{:.4f}"),
    ("cpu_s_per_image", "CPU s/img", "{:.1f}"),
    ("peak_rss_gb", "peak RSS GB", "{:.2f}"),
    ("peak_rss_above_side_start_gb", "RSS added GB", "{:.2f}"),
    ("cuda_peak_gb", "CUDA peak GB", "{:.2f}"),
    ("dets_per_image", "dets/img", "{:.1f}"),
    ("samples_labelled", "labelled", "{}"),
    ("loadavg_1min", "load avg", "{:.1f}"),
]


def _cell(row, key, fmt):
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def print_row(row, flush=False):
    print("  ".join(f"{title}={_cell(row, key, fmt)}" for key, title, fmt in COLUMNS), flush=flush)


def markdown(rows) -> str:
    lines = ["| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def save(report, out) -> None:
    """Writes ``results.json`` and ``results.md`` (after every row, so an interrupted run keeps its rows)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown(report["rows"]) + "\n")


def machine(device) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torch", "torchvision", "transformers", "fiftyone", "sam3", "open_clip_torch", "numpy"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


# -- main --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--images", type=int, default=4, help="N images timed per (side, K) (default 4)")
    parser.add_argument("--prompts", default="1,4", help="K values, comma-separated (at most 4)")
    parser.add_argument("--sides", default="builtin,plugin", help="which sides to run, in this order")
    parser.add_argument("--batch-size", type=int, default=1, help="the plugin's apply_model batch size")
    parser.add_argument(
        "--builtin-batch-size",
        type=int,
        default=1,
        help="the built-in's (FiftyOne's default, 1; see builtin.md for what it does above 1)",
    )
    parser.add_argument("--dets-per-prompt", type=float, default=5.0, help="target hits per (image, prompt)")
    parser.add_argument("--checkpoint-dir", default=os.path.join(tempfile.gettempdir(), "sam3ops-full-random-ckpt"))
    parser.add_argument("--bpe-path", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "builtin"))
    parser.add_argument("--build-checkpoint", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.prompts = [int(k) for k in args.prompts.split(",") if k]
    args.sides = [s for s in args.sides.split(",") if s]
    if max(args.prompts) > len(PROMPTS) or min(args.prompts) < 1:
        parser.error(f"K must be in 1..{len(PROMPTS)}")
    if set(args.sides) - {"builtin", "plugin"}:
        parser.error("--sides: builtin and/or plugin")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_checkpoint:
        build_full_checkpoint(args.build_checkpoint)
        return 0
    sys.path.insert(0, REPO)
    from sam3_ops.testing import PrivateMongo  # imports neither fiftyone nor torch

    if "builtin" in args.sides:
        args.bpe_path = args.bpe_path or default_bpe_path()
        if not args.bpe_path or not os.path.isfile(args.bpe_path):
            sys.exit("no CLIP BPE vocabulary: pip install open_clip_torch, or pass --bpe-path")
    report = {"args": vars(args).copy(), "sides": {}, "rows": []}
    if "plugin" in args.sides:
        report["checkpoint_build_s"] = ensure_checkpoint(args.checkpoint_dir)

    # Before fiftyone is imported: our own database server and directories, no telemetry, no hub.
    tmp = tempfile.mkdtemp(prefix="sam3ops-bench-builtin-")
    os.environ.update(
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DATABASE_DIR=os.path.join(tmp, "fiftyone-db"),
        FIFTYONE_MODEL_ZOO_DIR=os.path.join(tmp, "zoo"),
        FIFTYONE_DEFAULT_DATASET_DIR=os.path.join(tmp, "datasets"),
        HF_HUB_OFFLINE="1",
    )
    mongo = PrivateMongo(tmp).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops mongod on kill
    try:
        import fiftyone as fo
        import torch

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        report["machine"] = machine(device)
        images = os.path.join(tmp, "images")
        os.makedirs(images)
        dataset = fo.Dataset()
        dataset.add_samples([fo.Sample(filepath=p) for p in make_images(images, args.images)])
        warm = dataset[:1]
        report["rss_baseline_gb"] = rss_gb()
        print(f"{len(dataset)} images, K = {args.prompts}, device {device}, sides {args.sides}", flush=True)
        for side in args.sides:
            (run_builtin if side == "builtin" else run_plugin)(dataset, warm, args, device, report)
        dataset.delete()
    finally:
        mongo.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    save(report, args.out)
    print()
    print(markdown(report["rows"]))
    for side, info in report["sides"].items():
        print(f"{side}: load + warm-up {info['load_and_warmup']['wall_s']:.0f} s, thresholds {info['thresholds']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
