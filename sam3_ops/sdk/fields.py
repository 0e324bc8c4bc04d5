"""Label fields: which fields hold ``Detections`` (or ``Keypoints``), checking a field before a run
uses it, and keeping a field declared when two processes extend one schema at once."""

from __future__ import annotations

import re

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol

_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def root_dataset(samples):
    """The dataset behind a dataset or view."""
    return samples._root_dataset if hasattr(samples, "_root_dataset") else samples


def label_fields(samples, label_type=fol.Detections) -> list[str]:
    """The names of the top-level fields of ``samples`` holding ``label_type``, sorted."""
    return sorted(samples.get_field_schema(embedded_doc_type=label_type))


def detections_fields(samples) -> list[str]:
    """The names of the top-level ``Detections`` fields of ``samples``, sorted."""
    return label_fields(samples, fol.Detections)


def holds(field, label_type=fol.Detections) -> bool:
    """Whether a schema field holds ``label_type`` labels."""
    return isinstance(field, fof.EmbeddedDocumentField) and issubclass(field.document_type, label_type)


def field_name_problem(name) -> str | None:
    """Why ``name`` cannot be a new top-level field name, or ``None``."""
    if name is not None and not isinstance(name, str):
        return f"label_field must be a field name (text, e.g. 'sam3'), not {type(name).__name__} {name!r}"
    if not name or not name.strip():
        return "Give the field to write to (label_field), e.g. 'sam3'"
    if not _FIELD_NAME.match(name):
        return f"{name!r} is not a valid field name: use letters, digits and underscores, starting with a letter (e.g. 'sam3_masks')"
    return None


def prompt_label_type(mode: str):
    """The label type of a mode's prompt field: ``Keypoints`` in ``points`` mode, else ``Detections``."""
    return fol.Keypoints if mode == "points" else fol.Detections


def check_label_field(
    samples, field_name, label_type=fol.Detections, require_labels: bool = False, what: str = "field"
) -> str:
    """Checks that ``field_name`` is a ``label_type`` field of ``samples`` (with labels); returns it.

    Raises:
        ValueError: naming the problem and the fields of that type there are
    """
    choices = label_fields(samples, label_type)
    kind = label_type.__name__
    listing = ", ".join(repr(name) for name in choices) or "none"
    if not isinstance(field_name, str) or not field_name:
        raise ValueError(f"{what} must be the name of a {kind} field; the {kind} fields are: {listing}")
    schema_field = samples.get_field(field_name)
    if schema_field is None:
        raise ValueError(f"{what} {field_name!r} does not exist; the {kind} fields are: {listing}")
    if field_name not in choices:
        held = getattr(schema_field, "document_type", None) or type(schema_field)
        raise ValueError(
            f"{what} {field_name!r} holds {held.__name__} values, not {kind}; the {kind} fields are: {listing}"
        )
    labels = label_type._LABEL_LIST_FIELD  # "detections", "keypoints"
    if require_labels and not samples.count(f"{field_name}.{labels}"):
        raise ValueError(f"{what} {field_name!r} has no {labels} on these {len(samples)} samples")
    return field_name


def output_field_problem(samples, name, overwrite: bool = True, reserved=()) -> str | None:
    """What stops ``name`` from receiving SAM3 ``Detections`` on ``samples``, or ``None``.

    An existing field of another type is never overwritten; an existing ``Detections`` field is
    replaced on the target samples only with ``overwrite``; ``reserved`` are the fields the run
    reads (its prompt fields), which it must not write. On a video collection the field is the
    frame-level ``frames.<name>``, and ``<name>_tracks`` (the done-marker) must be free or an int field.
    """
    problem = field_name_problem(name)
    if problem:
        return problem
    if name in reserved:
        return f"{name!r} holds this run's prompts; write the masks to another field"
    if is_video_collection(samples):  # the labels go to frames.<name>, the done-marker to <name>_tracks
        marker = samples.get_field(tracks_field(name))
        if marker is not None and not isinstance(marker, fof.IntField):
            return (
                f"Field {tracks_field(name)!r} exists and holds {type(marker).__name__} values; a video run of "
                f"{name!r} marks each video done there: choose another name"
            )
        name = f"frames.{name}"
    field = samples.get_field(name)
    if field is None:
        return None
    if not holds(field, fol.Detections):
        return (
            f"Field {name!r} already exists and holds {type(field).__name__} values, not Detections; "
            "it is never overwritten: choose another name"
        )
    if not overwrite:
        return (
            f"Field {name!r} already exists: tick 'Overwrite' to replace its values on the target samples, "
            "or choose another name"
        )
    return None


def ensure_detections_field(samples, label_field: str) -> bool:
    """Declares ``label_field`` as a ``Detections`` field if the dataset's schema lacks it (a
    frame-level field, ``frames.<label_field>``, on a video dataset).

    Two processes that add different fields to one dataset at once can lose one declaration:
    each saves the dataset's field list as it knew it (FiftyOne does not merge them). The
    values are in the samples, but FiftyOne will not read them until the field is declared again.

    Returns:
        whether the declaration had to be restored
    """
    dataset = root_dataset(samples)
    dataset.reload()
    if is_video_collection(dataset):  # video runs write frame-level labels
        label_field = frame_field_name(label_field)
        if dataset.has_frame_field(label_field):
            return False
        dataset.add_frame_field(label_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
        return True
    if dataset.has_sample_field(label_field):
        return False
    dataset.add_sample_field(label_field, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    return True


# -- videos ---------------------------------------------------------------------------------------


def is_video_collection(samples) -> bool:
    """Whether ``samples`` (a dataset or view) holds videos."""
    return getattr(samples, "media_type", None) == "video"


def frame_field_name(name: str) -> str:
    """A frame-level field's name without FiftyOne's optional ``frames.`` prefix."""
    return name[len("frames.") :] if isinstance(name, str) and name.startswith("frames.") else name


def tracks_field(label_field: str) -> str:
    """The sample-level field that marks a video done for a video run writing ``frames.<label_field>``:
    ``<label_field>_tracks``, the number of instances tracked in it, written after its last frame."""
    return f"{frame_field_name(label_field)}_tracks"


def frame_label_fields(samples, label_type=fol.Detections) -> list[str]:
    """The names of the frame-level fields of a video collection holding ``label_type``, sorted
    (without ``frames.``); ``[]`` for an image collection."""
    if not is_video_collection(samples):
        return []
    return sorted(samples.get_frame_field_schema(embedded_doc_type=label_type) or {})
