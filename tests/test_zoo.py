"""This repository as a FiftyOne model-zoo source, through FiftyOne's own zoo code: the checkout is
served as an archive on a local HTTP server (FiftyOne 1.22 registers a GitHub repository or an
archive URL, not a local path; a GitHub repository is fetched as exactly such an archive) and
registered into a temporary model-zoo directory. The tiny checkpoint stands where
``download_model`` puts the weights. Real FiftyOne, real ``ExecutionContext``s; no mocks."""

import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

import fiftyone as fo
import fiftyone.zoo as foz
import fiftyone.zoo.models as fozm
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext

import sam3_ops
from sam3_ops.app.operators import SegmentEverything, SegmentWithBoxPrompts, SegmentWithTextPrompts
from sam3_ops.app.zoo import FORM_KEY, MODELS, checkpoint_dir
from sam3_ops.core.checkpoint import ModelLoadError
from sam3_ops.sdk.model import Sam3Model
from sam3_ops.sdk.settings import Sam3Settings, SettingsError
from sam3_ops.sdk.video import Sam3VideoModel

from .helpers import REPO_ROOT

IMAGE_MODEL, VIDEO_MODEL = "sam3-ops/sam3-image-torch", "sam3-ops/sam3-video-torch"
ARCHIVE_ROOT = "sam3-ops-main"  # a GitHub archive's top folder: <repo>-<ref>


def _checkout_archive(path) -> str:
    """A zip of the checkout's files (tracked, and new ones git does not ignore) under one top
    folder, as GitHub serves a repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(set(filter(None, listed.split("\0")))):
            if os.path.isfile(os.path.join(REPO_ROOT, name)):
                archive.write(os.path.join(REPO_ROOT, name), f"{ARCHIVE_ROOT}/{name}")
    return str(path)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def served_checkout(directory):
    """The checkout as an archive on a local HTTP server while in the block; yields its URL."""
    _checkout_archive(os.path.join(directory, f"{ARCHIVE_ROOT}.zip"))
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE_ROOT}.zip"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def archive_url(tmp_path_factory):
    with served_checkout(tmp_path_factory.mktemp("served")) as url:
        yield url


def register_checkout(zoo_dir, checkpoint) -> str:
    """Registers the checkout as a zoo source in ``zoo_dir`` with ``checkpoint`` (a directory)
    copied where ``download_model`` puts ``facebook/sam3``, as a user's machine has them after
    ``register-source`` and ``download``; FiftyOne's config is restored. Returns the checkpoint's
    zoo directory. For the README's zoo section (``FIFTYONE_MODEL_ZOO_DIR=zoo_dir``)."""
    previous = _use_zoo_dir(zoo_dir)
    try:
        with tempfile.TemporaryDirectory() as served, served_checkout(served) as url:
            foz.register_zoo_model_source(url)
        target = checkpoint_dir(foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(str(zoo_dir)))
        shutil.copytree(checkpoint, target)
        return target
    finally:
        _restore_zoo_dir(previous)


def _use_zoo_dir(directory):
    """Points FiftyOne's model zoo at ``directory`` (in memory: the user's config file is untouched)
    with no custom manifests; returns what to restore."""
    previous = (fo.config.model_zoo_dir, fo.config.model_zoo_manifest_paths, fo.config.model_zoo_manifest_cache_enabled)
    fo.config.model_zoo_dir = str(directory)
    fo.config.model_zoo_manifest_paths = None
    fo.config.model_zoo_manifest_cache_enabled = False
    return previous


def _restore_zoo_dir(previous):
    fo.config.model_zoo_dir, fo.config.model_zoo_manifest_paths, fo.config.model_zoo_manifest_cache_enabled = previous


@pytest.fixture(scope="module")
def source(archive_url, tmp_path_factory):
    """The checkout registered as a zoo source in a temporary model-zoo directory; yields its URL."""
    previous = _use_zoo_dir(tmp_path_factory.mktemp("zoo"))
    foz.register_zoo_model_source(archive_url)
    yield archive_url
    _restore_zoo_dir(previous)


@pytest.fixture(scope="module")
def weights(source, tiny_checkpoint):
    """The tiny checkpoint where ``download_model`` puts ``facebook/sam3``; yields that directory."""
    model_path = foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(fo.config.model_zoo_dir)
    directory = checkpoint_dir(model_path)
    shutil.copytree(tiny_checkpoint, directory)
    return directory


# -- the source -----------------------------------------------------------------------------------


def test_a_registered_checkout_lists_its_models_with_their_metadata(source):
    assert source in foz.list_zoo_model_sources()
    assert foz.list_zoo_models(source=source) == sorted(MODELS)
    assert set(MODELS) <= set(foz.list_zoo_models(tags=["segmentation", "zero-shot", "sam3"]))
    assert foz.list_zoo_models(tags="video", source=source) == [VIDEO_MODEL]
    for name in MODELS:
        model = foz.get_zoo_model(name)
        assert isinstance(model, fozm.RemoteZooModel)
        assert model.license == "SAM License" and "facebook/sam3" in model.source
        assert "gated" in model.description and model.size_bytes > 3e9
        packages = model.requirements.packages
        assert any(p.startswith("transformers>=5.14") for p in packages) and "fiftyone" not in " ".join(packages)
    # FiftyOne copied the manifest's folder: the whole checkout, package included, so the source
    # needs no separate install of sam3_ops
    copied = os.path.dirname(foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(fo.config.model_zoo_dir))
    assert {"manifest.json", "__init__.py", "fiftyone.yml", "sam3_ops"} <= set(os.listdir(copied))


def test_both_models_share_one_download(source, weights):
    for name in MODELS:
        assert foz.is_zoo_model_downloaded(name), name
        assert checkpoint_dir(foz.find_zoo_model(name)) == weights
    assert sorted(fozm.list_downloaded_zoo_models()) == sorted(MODELS)


# -- loading ----------------------------------------------------------------------------------------


def test_the_zoo_model_is_load_models_model_with_the_same_output(source, weights, dataset):
    settings = dict(prompts=["cat", {"text": "dog", "label": "canine"}], threshold=0.0, device="cpu", max_detections=5)
    zoo_model = foz.load_zoo_model(IMAGE_MODEL, **settings)
    direct = sam3_ops.load_model(weights, **settings)
    assert type(zoo_model) is Sam3Model
    assert zoo_model.settings == direct.settings == Sam3Settings(model_path=weights, **settings)

    samples = dataset.limit(3)  # three image sizes: enough to compare, quick on a busy CPU
    samples.apply_model(zoo_model, label_field="zoo", batch_size=3, num_workers=0)
    samples.apply_model(direct, label_field="direct", batch_size=3, num_workers=0)
    compared = 0
    for sample in samples:
        zoo, ref = sample["zoo"].detections, sample["direct"].detections
        assert [d.label for d in zoo] == [d.label for d in ref]
        for a, b in zip(zoo, ref):
            assert a.bounding_box == b.bounding_box and a.confidence == b.confidence
            assert np.array_equal(a.mask, b.mask)
            compared += 1
    assert compared >= len(samples) * 2  # there was something to compare: threshold 0 keeps hits
    assert {"cat", "canine"} <= set(samples.distinct("zoo.detections.label"))
    # the README's zoo route with a run record: segment(model=<the zoo model>)
    fresh = foz.load_zoo_model(IMAGE_MODEL, cache=False, **settings)  # a model's counts add up over its runs
    result = sam3_ops.segment(samples, "zoo_run", model=fresh, num_workers=0)
    assert (result.samples_processed, result.detections) == (len(samples), compared) and result.run_key
    assert dataset.get_run_info(result.run_key).config.settings["model_path"] == weights


def test_every_setting_is_a_keyword_validated_by_the_settings(source, weights):
    model = foz.load_zoo_model(IMAGE_MODEL, mode="boxes", multimask="best", prompt_field="ground_truth", cache=False)
    assert (model.settings.mode, model.settings.multimask, model.settings.prompt_field) == (
        "boxes",
        "best",
        "ground_truth",
    )
    for bad, setting in (
        ({"prompts": ["cat"], "threshold": 1.5}, "threshold"),
        ({"mode": "boxes", "prompts": ["cat"]}, "prompts"),
    ):
        with pytest.raises(SettingsError) as zoo_error:
            foz.load_zoo_model(IMAGE_MODEL, cache=False, **bad)
        with pytest.raises(SettingsError) as direct_error:
            sam3_ops.load_model(weights, **bad)
        assert zoo_error.value.field == setting and str(zoo_error.value) == str(direct_error.value)


def test_the_video_model_tracks_and_refuses_image_only_settings(source, weights):
    model = foz.load_zoo_model(VIDEO_MODEL, prompts=["cat"], max_objects=7, cache=False)
    assert type(model) is Sam3VideoModel and model.settings.max_objects == 7
    with pytest.raises(SettingsError, match="nms_iou"):
        foz.load_zoo_model(VIDEO_MODEL, prompts=["cat"], nms_iou=0.5, cache=False)
    with pytest.raises(ValueError, match="media_type"):
        foz.load_zoo_model(IMAGE_MODEL, prompts=["cat"], media_type="video", cache=False)


# -- downloading ------------------------------------------------------------------------------------


def test_download_without_network_fails_fast_saying_the_hub_is_unreachable(source, weights, monkeypatch):
    from huggingface_hub import constants

    closed = __import__("socket").socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    before = sorted(os.listdir(weights))
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable") as error:
        foz.download_zoo_model(IMAGE_MODEL, overwrite=True)
    closed.close()
    assert time.monotonic() - start < 30
    assert "HF_TOKEN" not in str(error.value) or "hf auth login" in str(error.value)
    assert sorted(os.listdir(weights)) == before  # the download it would replace is kept
    assert foz.is_zoo_model_downloaded(IMAGE_MODEL)


# -- the App's "Apply zoo model" form ---------------------------------------------------------------


def _zoo_form(name, dataset, params):
    """The zoo model's form as FiftyOne's "Apply zoo model" operator builds it: through the zoo
    (``RemoteZooModel.resolve_input``), its values nested under ``remote_params``."""
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {FORM_KEY: dict(params)}})
    return foz.get_zoo_model(name).resolve_input(ctx).type.properties


def _operator_form(operator, dataset, params):
    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": dict(params)})
    return operator.resolve_input(ctx).type.properties


def _flags(properties):
    return {name: prop.error_message for name, prop in properties.items() if getattr(prop, "invalid", False)}


_TEXT = {"mode": "text", "prompts": ["cat"], "threshold": 0.3}
_BOXES = {"mode": "boxes", "prompt_field": "ground_truth"}
_AUTO = {"mode": "auto"}


@pytest.mark.parametrize(
    "operator, values, change",
    [
        (SegmentWithTextPrompts, _TEXT, {"threshold": 1.5}),
        (SegmentWithTextPrompts, _TEXT, {"mask_threshold": -0.1}),
        (SegmentWithTextPrompts, _TEXT, {"prompts": ["cat", "  "]}),
        (SegmentWithTextPrompts, _TEXT, {"prompts": []}),
        (SegmentWithTextPrompts, _TEXT, {"prompts": " , "}),
        (SegmentWithTextPrompts, _TEXT, {"prompt_table": [{"text": "dog", "threshold": 3}]}),
        (SegmentWithTextPrompts, _TEXT, {"nms_iou": 0.0, "max_detections": 0, "min_area": 2.0}),
        (SegmentWithBoxPrompts, _BOXES, {"prompt_field": "no_such_field"}),
        (SegmentWithBoxPrompts, _BOXES, {"mode": "exemplars", "nms_containment": 1.5}),
        (SegmentEverything, _AUTO, {"points_per_side": 0, "pred_iou_threshold": 1.5, "auto_label": ""}),
    ],
)
def test_the_zoo_form_flags_bad_settings_as_the_segment_operators_do(source, dataset, operator, values, change):
    params = {**values, **change}
    zoo = _flags(_zoo_form(IMAGE_MODEL, dataset, params))
    segment = _flags(_operator_form(operator(), dataset, {**params, "label_field": "out", "model_path": "/nowhere"}))
    segment.pop("model_path")  # the operators' checkpoint input: the zoo's checkpoint is its download
    assert zoo, f"nothing flagged for {change}"
    assert zoo == segment


def test_a_valid_zoo_form_flags_nothing_and_parses_to_load_model_keywords(source, weights, dataset):
    params = {"mode": "text", "prompts": "cat, dog", "prompt_table": [{"text": "bird", "label": "", "threshold": 0.2}]}
    params |= {"threshold": 0.1, "device": "auto", "nms_iou": 0.5, "not_a_setting": 1}
    properties = _zoo_form(IMAGE_MODEL, dataset, params)
    assert not _flags(properties)
    assert {"mode", "prompts", "prompt_table", "threshold", "mask_threshold", "nms_iou", "device"} <= set(properties)
    assert "prompt_field" not in properties and "model_path" not in properties

    ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": {FORM_KEY: params}})
    foz.get_zoo_model(IMAGE_MODEL).parse_parameters(ctx, params)  # as the zoo operator calls it: in place
    assert params["prompts"] == [{"text": "bird", "threshold": 0.2}, "cat", " dog"]
    assert params["device"] is None and "not_a_setting" not in params and "model_path" not in params
    model = foz.load_zoo_model(IMAGE_MODEL, cache=False, **params)
    assert [p.text for p in model.settings.prompts] == ["bird", "cat", "dog"]
    assert model.settings.prompts[0].threshold == 0.2 and model.settings.nms_iou == 0.5


def test_the_zoo_form_offers_each_media_its_modes(source, dataset):
    properties = _zoo_form(IMAGE_MODEL, dataset, {"mode": "boxes"})
    assert properties["mode"].type.values == ["text", "boxes", "exemplars", "points", "auto"]
    assert properties["prompt_field"].type.values == ["ground_truth", "not_wanted"] and "multimask" in properties
    # the video model on an image dataset: refused on the form, not at run time
    assert "media_mismatch" in _flags(_zoo_form(VIDEO_MODEL, dataset, {"mode": "text", "prompts": ["cat"]}))


@pytest.fixture
def video_dataset(tmp_path):
    """A video dataset with a frame-level Detections field (forms read the schema, not the video)."""
    dataset = fo.Dataset()
    sample = fo.Sample(filepath=str(tmp_path / "clip.mp4"))
    sample.frames[1]["boxes"] = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    dataset.add_sample(sample)
    yield dataset
    dataset.delete()


@pytest.mark.parametrize(
    "operator, params",
    [
        (SegmentWithBoxPrompts, {"mode": "boxes", "prompt_field": "boxes", "max_objects": 0}),
        (SegmentWithBoxPrompts, {"mode": "boxes", "prompt_field": "frames.nothing"}),
        (SegmentWithTextPrompts, {"mode": "text", "prompts": ["cat"], "threshold": 2.0}),
    ],
)
def test_the_video_form_flags_bad_settings_as_the_video_operators_do(source, video_dataset, operator, params):
    zoo = _flags(_zoo_form(VIDEO_MODEL, video_dataset, params))
    segment = _flags(_operator_form(operator(), video_dataset, {**params, "label_field": "out", "model_path": "/x"}))
    segment.pop("model_path")
    assert zoo and zoo == segment


def test_the_video_form_offers_the_video_modes_and_parses_to_a_video_model(source, weights, video_dataset):
    properties = _zoo_form(VIDEO_MODEL, video_dataset, {"mode": "boxes"})
    assert properties["mode"].type.values == ["text", "boxes", "points"]
    assert properties["prompt_field"].type.values == ["boxes"] and "direction" in properties
    assert not _flags(properties) and "multimask" not in properties and "nms_iou" not in properties

    params = {"mode": "boxes", "prompt_field": "frames.boxes", "direction": "both", "max_objects": 3}
    foz.get_zoo_model(VIDEO_MODEL).parse_parameters(None, params)
    model = foz.load_zoo_model(VIDEO_MODEL, cache=False, **params)
    assert (model.settings.prompt_field, model.settings.direction, model.settings.max_objects) == ("boxes", "both", 3)
    # the image model on a video dataset is refused on the form
    assert "media_mismatch" in _flags(_zoo_form(IMAGE_MODEL, video_dataset, {"prompts": ["cat"]}))


@pytest.mark.parametrize("media", ["image", "video"])
def test_the_zoo_forms_show_the_segment_operators_defaults(source, dataset, video_dataset, media):
    """Each input the zoo's form shares with the segment operators' has their default and words;
    an empty score threshold is the model's own, named for the media (videos: the checkpoint's)."""
    name, collection = (IMAGE_MODEL, dataset) if media == "image" else (VIDEO_MODEL, video_dataset)
    zoo = _zoo_form(name, collection, {"mode": "text", "prompts": ["cat"]})
    operator = _operator_form(
        SegmentWithTextPrompts(), collection, {"prompts": ["cat"], "label_field": "out", "model_path": "/x"}
    )
    shared = (set(zoo) & set(operator)) - {"mode"}
    assert {"threshold", "mask_threshold", "device"} <= shared
    for input_name in shared:
        assert zoo[input_name].default == operator[input_name].default, input_name
        assert zoo[input_name].view.description == operator[input_name].view.description, input_name
    threshold = zoo["threshold"]
    assert threshold.default == Sam3Settings.__dataclass_fields__["threshold"].default  # the settings' own
    if threshold.default is None:
        own = "the checkpoint's detection thresholds" if media == "video" else "0.5"
        assert f"empty: the model's own ({own})" in threshold.view.description


# -- the plugin and the source side by side ---------------------------------------------------------


def test_neither_entry_point_imports_torch(source):
    """The plugin's root module and the zoo's listing, lookup and module import (FiftyOne's own
    ``_import_zoo_module`` of the registered copy) stay clear of torch."""
    copied = os.path.dirname(foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(fo.config.model_zoo_dir))
    script = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("sam3_plugin", {os.path.join(REPO_ROOT, "__init__.py")!r})
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
assert callable(plugin.register), "no register(p)"
assert "torch" not in sys.modules, "the plugin's root module imported torch"
import fiftyone as fo, fiftyone.zoo as foz, fiftyone.zoo.models as fozm
fo.config.model_zoo_dir = {fo.config.model_zoo_dir!r}
assert foz.list_zoo_models(source={source!r}) == {sorted(MODELS)!r}
module = fozm._import_zoo_module({copied!r})
assert {{"download_model", "load_model", "resolve_input", "parse_parameters"}} <= set(dir(module))
assert "torch" not in sys.modules, "the zoo imported torch"
print("clear")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "clear", result.stderr[-2000:]


def test_the_plugin_is_still_discovered_beside_the_manifest(plugins_dir):
    import fiftyone.plugins as fop

    assert os.path.isfile(os.path.join(plugins_dir, "sam3", "manifest.json"))
    assert "@sam3-ops/sam3" in [plugin.name for plugin in fop.list_plugins()]


def test_deleting_the_source_removes_it_and_only_it(archive_url, tmp_path):
    previous = _use_zoo_dir(tmp_path / "zoo")
    other = tmp_path / "zoo" / "someone-else" / "weights.pt"  # another model of the zoo directory
    other.parent.mkdir(parents=True)
    other.write_bytes(b"kept")
    try:
        foz.register_zoo_model_source(archive_url)
        copied = os.path.dirname(foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(fo.config.model_zoo_dir))
        os.makedirs(checkpoint_dir(foz.get_zoo_model(IMAGE_MODEL).get_path_in_dir(fo.config.model_zoo_dir)))
        assert all(foz.is_zoo_model_downloaded(name) for name in MODELS)
        foz.delete_zoo_model(VIDEO_MODEL)  # the one download of both models
        assert not any(foz.is_zoo_model_downloaded(name) for name in MODELS)
        assert os.path.isfile(os.path.join(copied, "manifest.json"))  # the source stays registered
        foz.delete_zoo_model_source(archive_url)
        assert archive_url not in foz.list_zoo_model_sources()
        assert foz.list_zoo_models(source=archive_url) == [] and not set(MODELS) & set(foz.list_zoo_models())
        assert not os.path.exists(copied) and other.read_bytes() == b"kept"
        assert os.path.isfile(os.path.join(REPO_ROOT, "manifest.json"))  # the checkout itself is untouched
    finally:
        _restore_zoo_dir(previous)
