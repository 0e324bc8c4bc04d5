"""FiftyOne's own behaviour that the README warns about, pinned so that we learn when it changes.

FiftyOne 1.22.1's ``apply_model`` (with any model that takes FiftyOne's data-loader route: a
``SupportsGetItem`` / ``TorchModelMixin`` model, as ``sam3_ops.load_model``'s) saves through a
``select_fields`` view with asynchronous writes. Its ``SaveContext`` copies the pending writes, sends
them, then reloads every ``Sample`` saved so far, including those whose writes were queued while
the first ones were in flight: those are reloaded before they are written, and never again. The
database has the labels; ``Sample`` objects the caller still holds show the old value (``None``)
until ``dataset.reload()``. The README says so; ``sam3_ops.segment`` reloads the dataset itself.
"""

import time

import fiftyone as fo
import fiftyone.core.models as fom
import fiftyone.utils.torch as fout
import pytest

from tests.helpers import write_image

README_NOTE = (
    "the README's note on held samples after apply_model (section 'Python SDK', 'dataset.reload()') "
    "and this test can go"
)


class _PathItem(fout.GetItem):
    """Loads nothing: the model gets each sample's filepath."""

    @property
    def required_keys(self):
        return ["filepath"]

    def __call__(self, d):
        return d["filepath"]


class _PlainModel(fom.Model, fom.SupportsGetItem):
    """The smallest model on FiftyOne's data-loader route: one Classification per image, after
    ``seconds`` of "inference" per batch (long enough for FiftyOne's default write batching,
    every 0.2 s, to send a write while the batch's other samples are still being saved)."""

    media_type = "image"
    ragged_batches = False
    transforms = None
    preprocess = False
    has_collate_fn = True

    def __init__(self, seconds: float):
        self.seconds = seconds

    @staticmethod
    def collate_fn(batch):
        return list(batch)

    def build_get_item(self, field_mapping=None):
        return _PathItem(field_mapping=field_mapping)

    def predict(self, arg):
        return self.predict_all([arg])[0]

    def predict_all(self, args):
        time.sleep(self.seconds)
        return [fo.Classification(label="seen") for _ in args]


@pytest.fixture
def default_batching(monkeypatch):
    """FiftyOne's default write batching (whatever the environment sets)."""
    monkeypatch.setattr(fo.config, "default_batcher", "latency")
    monkeypatch.setattr(fo.config, "batcher_target_latency", 0.2)


@pytest.fixture
def sixteen(tmp_path):
    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=write_image(tmp_path / f"{i}.png", 32, 48, seed=i)) for i in range(16)])
    yield dataset
    dataset.delete()


def test_fiftyone_apply_model_leaves_held_samples_stale_until_reload(sixteen, default_batching):
    held = list(sixteen)  # Sample objects a user holds (FiftyOne keeps one in-memory object per sample)
    assert not sixteen.has_field("seen")

    sixteen.apply_model(_PlainModel(0.25), label_field="seen", batch_size=16, num_workers=0, progress=False)

    assert sixteen.count("seen") == len(held), "the database has every label"
    stale = [sample.id for sample in held if sample["seen"] is None]
    assert stale, f"FiftyOne {fo.__version__} now refreshes the samples a caller holds after apply_model: {README_NOTE}"

    sixteen.reload()
    assert [sample["seen"].label for sample in held] == ["seen"] * len(held), "dataset.reload() refreshes them"


def test_sam3_ops_segment_leaves_held_samples_current(dataset, tiny_checkpoint, default_batching, monkeypatch):
    import sam3_ops

    # a write sent after every save: the most chances for the race above (FiftyOne's default waits 0.2 s)
    monkeypatch.setattr(fo.config, "batcher_target_latency", 0.0)
    held = list(dataset)
    boxes = {sample.id: len(sample["ground_truth"].detections) for sample in held}
    assert all(boxes.values()) and not dataset.has_field("sam3")

    sam3_ops.segment(
        dataset,
        "sam3",
        model_path=str(tiny_checkpoint),
        mode="boxes",
        prompt_field="ground_truth",
        device="cpu",
        batch_size=2,
        num_workers=0,
        progress=False,
    )

    # one mask per prompt box, on the samples the caller holds, as in the database
    assert {sample.id: len(sample["sam3"].detections) for sample in held} == boxes
    for sample in held:
        stored = fo.Detections.from_dict(dataset._sample_collection.find_one({"_id": sample._id})["sam3"])
        assert [d.id for d in sample["sam3"].detections] == [d.id for d in stored.detections]
