"""Every head of each tiny builder runs in every mode, image and video, through ``sam3_ops.segment``
on real FiftyOne datasets, and writes labels: the README's one offline builder serves every snippet.

Image: text, boxes, exemplars, points, auto, and the refinement of a written mask from a click.
Video (a 4-frame ffmpeg video): text, boxes, points. Thresholds are 0 where random weights score
~0.25, so that what runs also writes something to check.
"""

from __future__ import annotations

import shutil

import fiftyone as fo
import pytest

import sam3_ops
from sam3_ops.testing import build_tiny_checkpoint, build_tiny_video_checkpoint

from .test_video_core import synthetic_frames, write_video

BUILDERS = {"build_tiny_checkpoint": build_tiny_checkpoint, "build_tiny_video_checkpoint": build_tiny_video_checkpoint}
HEIGHT, WIDTH = 96, 128


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def checkpoint(request, tmp_path_factory):
    return BUILDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def images(image_paths):
    """Two images with prompt boxes (``ground_truth``) and prompt points (``clicks``)."""
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=path) for path in image_paths[:2]])
    for sample in dataset:
        sample["ground_truth"] = fo.Detections(
            detections=[fo.Detection(label="thing", bounding_box=[0.1, 0.2, 0.5, 0.4])]
        )
        sample["clicks"] = fo.Keypoints(
            keypoints=[fo.Keypoint(label="spot", points=[[0.3, 0.4], [0.8, 0.8]], sam_labels=[1, 0])]
        )
        sample.save()
    yield dataset
    dataset.delete()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """One 4-frame video with a prompt box (``frames.boxes``) and points (``frames.kps``) on frame 1."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg (apt-get install ffmpeg)")
    path = write_video(tmp_path_factory.mktemp("videos") / "short.mp4", synthetic_frames(4, HEIGHT, WIDTH))
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath=path))
    sample = dataset.first()
    sample.frames[1]["boxes"] = fo.Detections(
        detections=[fo.Detection(label="disc", bounding_box=[12 / WIDTH, 36 / HEIGHT, 24 / WIDTH, 24 / HEIGHT])]
    )
    sample.frames[1]["kps"] = fo.Keypoints(keypoints=[fo.Keypoint(label="disc", points=[[24 / WIDTH, 48 / HEIGHT]])])
    sample.save()
    yield dataset
    dataset.delete()


def _written(collection, field: str) -> list:
    """Every Detection written to ``field`` (sample or frame level), each checked to carry a mask."""
    path = f"{field}.detections" if collection.media_type == "image" else f"frames.{field}.detections"
    found = [d for detections in collection.values(path) for d in (detections or []) if d is not None]
    if collection.media_type == "video":
        found = [d for frame in found for d in (frame or [])]
    assert all(d.mask is not None and d.mask.size > 0 for d in found)
    return found


IMAGE_RUNS = {
    "text": dict(prompts=["cat", "dog"], threshold=0.0),
    "boxes": dict(mode="boxes", prompt_field="ground_truth"),
    "exemplars": dict(mode="exemplars", prompt_field="ground_truth", threshold=0.0),
    "points": dict(mode="points", prompt_field="clicks"),
    "auto": dict(mode="auto", points_per_side=2, pred_iou_threshold=0.0, stability_threshold=0.0),
}


@pytest.mark.parametrize("mode", sorted(IMAGE_RUNS))
def test_every_image_mode_writes_labels(checkpoint, images, mode):
    field = f"img_{mode}"
    result = sam3_ops.segment(images, field, model_path=checkpoint, device="cpu", num_workers=0, **IMAGE_RUNS[mode])
    assert result.samples_processed == len(images) and result.samples_skipped == 0
    assert len(_written(images, field)) > 0


def test_refining_a_written_mask_from_a_click_writes_labels(checkpoint, images):
    view = images.limit(1)
    model = sam3_ops.load_model(checkpoint, mode="points", device="cpu", cache_features=True)
    view.apply_model(model, label_field="clicked", prompt_field="clicks")
    first = view.first()["clicked"].detections[0]
    sample = view.first()
    sample["click"] = fo.Keypoints(
        keypoints=[
            fo.Keypoint(
                label="spot",
                points=[[0.3, 0.4], [0.6, 0.6]],
                sam_labels=[1, 1],
                sam3_refines=first.id,
                sam3_box=first.bounding_box,
            )
        ]
    )
    sample.save()
    view.apply_model(model, label_field="refined", prompt_field="click")
    (refined,) = _written(view, "refined")
    assert refined.label == "spot"


VIDEO_RUNS = {
    "text": dict(prompts=["red ball"], threshold=0.0, max_objects=2),
    "boxes": dict(mode="boxes", prompt_field="frames.boxes"),
    "points": dict(mode="points", prompt_field="frames.kps"),
}


@pytest.mark.parametrize("mode", sorted(VIDEO_RUNS))
def test_every_video_mode_writes_labels(checkpoint, videos, mode):
    field = f"vid_{mode}"
    result = sam3_ops.segment(videos, field, model_path=checkpoint, device="cpu", **VIDEO_RUNS[mode])
    assert result.samples_skipped == 0, result.skipped
    assert result.samples_processed == 1
    assert len(_written(videos, field)) > 0
