"""The main job: segment a small demo dataset with SAM3 and print what was written.

    python -m sam3_ops.demo                 # facebook/sam3 (needs a Hugging Face login)
    python -m sam3_ops.demo --tiny          # a tiny random checkpoint: offline smoke test
    python -m sam3_ops.demo --model DIR     # a local checkpoint directory

The images are the photographs scikit-image ships (a FiftyOne dependency): no download.
The dataset lives on FiftyOne's embedded database under the name ``sam3-demo``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from .sdk.workers import program_name

DEMO_IMAGES = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
DEMO_PROMPTS = ("cat", "cup", "person")


def demo_image_paths(directory: str) -> list[str]:
    """Copies the demo photographs into ``directory``; returns their paths."""
    import skimage

    source = os.path.join(os.path.dirname(skimage.__file__), "data")
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in DEMO_IMAGES:
        target = os.path.join(directory, name)
        if not os.path.exists(target):
            shutil.copy(os.path.join(source, name), target)
        paths.append(target)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=program_name("sam3_ops.demo"), description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="facebook/sam3", help="hub id or local checkpoint dir")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint (offline smoke test)")
    parser.add_argument("--prompts", nargs="+", default=list(DEMO_PROMPTS))
    parser.add_argument("--dataset", default="sam3-demo")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args(argv)

    import sam3_ops

    workdir = os.path.join(tempfile.gettempdir(), "sam3_ops_demo")
    model_path = args.model
    threshold = args.threshold
    if args.tiny:
        from sam3_ops.testing import build_tiny_checkpoint

        model_path = build_tiny_checkpoint(os.path.join(workdir, "tiny-checkpoint"))
        threshold = 0.0  # random weights score ~0.25: keep everything, to show the pipeline
        print(f"Using a tiny RANDOM checkpoint at {model_path}: the masks are meaningless, the pipeline is real.")

    settings = {"model_path": model_path, "prompts": args.prompts, "threshold": threshold}
    try:
        # checks the settings and loads the weights into this process's engine pool, before any
        # dataset is made; segment() below runs on the same engine
        sam3_ops.load_model(**settings, reuse=True)
    except (sam3_ops.ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        if not args.tiny:
            print("To try the pipeline offline: python -m sam3_ops.demo --tiny", file=sys.stderr)
        return 2

    import fiftyone as fo

    if fo.dataset_exists(args.dataset):
        fo.delete_dataset(args.dataset)
    dataset = fo.Dataset(args.dataset, persistent=True)  # the user opens it in the App afterwards
    dataset.add_samples([fo.Sample(filepath=p) for p in demo_image_paths(os.path.join(workdir, "images"))])
    result = sam3_ops.segment(dataset, "sam3", batch_size=args.batch_size, num_workers=0, **settings)

    print(f"\nDataset {dataset.name!r}: {len(dataset)} samples, model {model_path}, prompts {args.prompts}")
    for sample in dataset.select_fields("sam3"):
        detections = sample.sam3.detections if sample.sam3 is not None else []
        counts = {}
        for detection in detections:
            counts[detection.label] = counts.get(detection.label, 0) + 1
        print(f"  {os.path.basename(sample.filepath):22s} {len(detections):3d} detections with masks  {counts}")
    print(
        f"Wrote field 'sam3': {result.detections} detections on {result.samples_processed} samples; "
        f"{result.samples_skipped} skipped. Its settings are recorded as run {result.run_key!r} "
        f"(dataset.get_run_info({result.run_key!r}))."
    )
    print(
        f"See them in the App: python -c \"import fiftyone as fo; fo.launch_app(fo.load_dataset('{dataset.name}')).wait()\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
