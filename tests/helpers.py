"""Helpers the tests share (import these from here, never from conftest: importing conftest.py
as a module would run it a second time, and with it a second database server)."""

import os

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZES = [(120, 160), (300, 200), (224, 224), (97, 333), (180, 240), (64, 64)]  # (height, width)


def write_image(path, height, width, seed=0, mode="RGB"):
    """Writes a random image of ``height x width``; returns its path."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return str(path)


def add_ground_truth(dataset, seed=0):
    """Gives each sample 1-3 ground-truth boxes with labels, attributes and a negative box."""
    import fiftyone as fo

    rng = np.random.default_rng(seed)
    for sample in dataset:
        detections = []
        for j in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0.05, 0.5, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            detections.append(fo.Detection(label=["cat", "dog"][j % 2], bounding_box=[x, y, w, h], annotator="ann"))
        sample["ground_truth"] = fo.Detections(detections=detections)
        sample["not_wanted"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0.6, 0.6, 0.2, 0.2])])
        sample.save()
    return dataset
