"""Refinement proposals of a SAM3 field: writing one, and the ledger that accepts, undoes and
discards it. Shared by the two ways to refine: boxes (:mod:`sam3_ops.curation.refine`) and
points on one detection (:mod:`sam3_ops.curation.clicks`).

A field ``F`` can be refined when a recorded SAM3 run wrote it (:func:`validate_field`). A
refinement runs SAM3 with prompts given in memory into the preview field ``F_refined``
(:func:`preview_field_name`, shown by the App next to ``F``) through the one inference path
(:func:`run_proposal`), and :meth:`Ledger.propose` records it. Then, per sample:

- :func:`accept_refinement` moves the proposal into ``F``; its record keeps an exact backup of what
  ``F`` held (FiftyOne's own JSON: ids, masks and every attribute the user added);
- :func:`undo_refinement` restores that backup; repeated undos walk back through earlier accepts
  (the last :data:`MAX_UNDO_STEPS`);
- :func:`discard_refinement` drops a proposal that is not wanted.

The records (:class:`Record`, :class:`Status`, :class:`Kind`) stay on the sample, as a list of
flat dicts in :data:`REFINEMENTS_FIELD`, for QA review (:func:`refinement_history`): what was
used, when, the counts per prompt before and after, and what happened to it. Their stored layout
is the one this plugin has always written: a record reads back and writes out unchanged.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol

from ..core.checkpoint import ModelLoadError, device_problem, resolve_device
from ..core.images import ImageLoadError, image_size
from ..sdk.fields import detections_fields as all_detections_fields
from ..sdk.model import Sam3Model
from ..sdk.runs import RunRecord, get_run, recorded_fields
from ..sdk.segment import build_engine, segment
from ..sdk.settings import Sam3Settings, SettingsError

#: the sample field (a list of dicts) holding each sample's refinement records
REFINEMENTS_FIELD = "sam3_refinements"
#: the suffix of the preview field a proposal is written to
PREVIEW_SUFFIX = "_refined"
#: how many accepts per field can be undone; older records keep their metadata, not the masks
#: (each backup holds a whole Detections with masks, and a sample must fit in 16 MB)
MAX_UNDO_STEPS = 5


class RefineError(ValueError):
    """Input the refinement cannot use; the message is meant for the curator, as is."""


class Status(StrEnum):
    """What became of a proposal (stored as its text)."""

    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    UNDONE = "undone"
    DISCARDED = "discarded"
    SUPERSEDED = "superseded"  # replaced in the preview field by a newer proposal


class Kind(StrEnum):
    """How a proposal was made: the field's run re-run with boxes, or one detection refined with
    points. Records written before kinds existed have none (they are box refinements)."""

    BOXES = "boxes"
    POINTS = "points"


#: a record's lifecycle stamps, in the order they are stored
_STAMPS = ("accepted_at", "undone_at", "discarded_at")


@dataclass
class Record:
    """One refinement record of a sample, as stored (a flat dict; see :meth:`to_dict`).

    Attributes:
        field: the SAM3 field refined
        status: what became of the proposal
        refined_at: when it was proposed (ISO 8601 UTC; ``None`` for a proposal written by
            another tool and accepted here)
        kind: how it was made, ``None`` in records from before kinds existed
        details: what its kind records (model, prompts, boxes or points, counts before and after,
            ...), stored beside the other keys as they are
        accepted_at, undone_at, discarded_at: when that happened
        backup: FiftyOne's JSON of the field before the accept (``None``: the field was empty)
        has_backup: whether a backup is kept (the last :data:`MAX_UNDO_STEPS` accepts)
        undo_expired: an accept whose backup was dropped
    """

    field: str
    status: Status
    refined_at: str | None = None
    kind: Kind | None = None
    details: dict = dataclasses.field(default_factory=dict)
    accepted_at: str | None = None
    undone_at: str | None = None
    discarded_at: str | None = None
    backup: str | None = None
    has_backup: bool = False
    undo_expired: bool = False

    @classmethod
    def from_dict(cls, stored: dict) -> Record:
        """A stored record; keys this class does not name are kept in ``details``."""
        details = dict(stored)
        known = {key: details.pop(key) for key in ("field", "refined_at", *_STAMPS) if key in details}
        status, kind = details.pop("status", None), details.pop("kind", None)
        has_backup = "backup" in details
        return cls(
            status=Status(status),
            kind=Kind(kind) if kind is not None else None,
            backup=details.pop("backup", None),
            has_backup=has_backup,
            undo_expired=bool(details.pop("undo_expired", False)),
            details=details,
            **known,
        )

    def to_dict(self, with_backup: bool = True) -> dict:
        """The record as stored (plain strings, no enums); ``with_backup=False`` for display."""
        stored = {"field": self.field, "status": self.status.value, "refined_at": self.refined_at}
        if self.kind is not None:
            stored["kind"] = self.kind.value
        stored.update(self.details)
        stored.update({key: getattr(self, key) for key in _STAMPS if getattr(self, key) is not None})
        if self.has_backup and with_backup:
            stored["backup"] = self.backup
        if self.undo_expired:
            stored["undo_expired"] = True
        return stored


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Ledger:
    """One sample's refinement records (oldest first): read once, changed, then saved with the
    sample (:meth:`save`). Each change acts on the newest record of a field with the status it
    moves on from."""

    def __init__(self, sample):
        self.sample = sample
        stored = sample[REFINEMENTS_FIELD] if sample.has_field(REFINEMENTS_FIELD) else None
        self.records = [Record.from_dict(record) for record in stored or ()]

    def last(self, field_name: str, status: Status) -> Record | None:
        """The newest record of ``field_name`` with ``status``, or ``None``."""
        return next((r for r in reversed(self.records) if r.field == field_name and r.status == status), None)

    def of_field(self, field_name: str, *statuses: Status) -> list[Record]:
        """The records of ``field_name`` (with one of ``statuses``, if given), oldest first."""
        return [r for r in self.records if r.field == field_name and (not statuses or r.status in statuses)]

    def propose(self, field_name: str, kind: Kind, details: dict) -> Record:
        """Records a proposal just written to the preview field; the field's pending one (replaced
        there by this one) becomes superseded."""
        for record in self.of_field(field_name, Status.PROPOSED):
            record.status = Status.SUPERSEDED
        record = Record(field_name, Status.PROPOSED, _now(), kind, dict(details))
        self.records.append(record)
        return record

    def accept(self, field_name: str, backup: str | None) -> None:
        """The pending proposal is accepted, keeping ``backup``; only the last
        :data:`MAX_UNDO_STEPS` accepts of the field keep theirs."""
        record = self.last(field_name, Status.PROPOSED)
        if record is None:  # a proposal written by another tool
            record = Record(field_name, Status.PROPOSED)
            self.records.append(record)
        record.status, record.accepted_at, record.backup, record.has_backup = Status.ACCEPTED, _now(), backup, True
        undoable = [r for r in self.of_field(field_name, Status.ACCEPTED) if r.has_backup]
        for old in undoable[:-MAX_UNDO_STEPS]:
            old.backup, old.has_backup, old.undo_expired = None, False, True

    def undo(self, field_name: str) -> Record | None:
        """The last accept that can be undone, now undone (its backup is what to restore), or
        ``None`` when there is none (nothing accepted, or its backup expired)."""
        record = self.last(field_name, Status.ACCEPTED)
        if record is None or not record.has_backup:
            return None
        record.status, record.undone_at = Status.UNDONE, _now()
        return record

    def discard(self, field_name: str) -> None:
        """The pending proposal is discarded (if it has a record)."""
        record = self.last(field_name, Status.PROPOSED)
        if record is not None:
            record.status, record.discarded_at = Status.DISCARDED, _now()

    def save(self) -> None:
        """Writes the records into the sample and saves it (with whatever else was set on it)."""
        self.sample[REFINEMENTS_FIELD] = [record.to_dict() for record in self.records]
        self.sample.save()


def refinement_history(sample, field_name: str | None = None) -> list[dict]:
    """A sample's refinement records (oldest first) as stored, for QA review; backups left out."""
    records = Ledger(sample).records
    return [r.to_dict(with_backup=False) for r in records if field_name is None or r.field == field_name]


# -- refinable fields ---------------------------------------------------------------------------


def preview_field_name(field_name: str) -> str:
    """The field a proposal for ``field_name`` is written to (shown in the App next to it)."""
    return f"{field_name}{PREVIEW_SUFFIX}"


def detections_fields(dataset) -> list[str]:
    """The dataset's Detections fields (without refinement previews): sources of boxes."""
    names = all_detections_fields(dataset)
    previews = {preview_field_name(name) for name in names}
    return [name for name in names if name not in previews]


def sam3_fields(dataset) -> list[str]:
    """The Detections fields that a recorded SAM3 run wrote: the fields that can be refined."""
    recorded = set(recorded_fields(dataset))
    return [name for name in detections_fields(dataset) if name in recorded]


def validate_field(dataset, field_name: str | None) -> RunRecord:
    """The recorded run of a field that can be refined.

    Raises:
        RefineError: no field chosen, no such field, not Detections, or no recorded run
    """
    if not field_name:
        fields = sam3_fields(dataset)
        if not fields:
            raise RefineError(
                "This dataset has no SAM3 result field: run 'Segment with text prompts' (or sam3_ops.segment) first"
            )
        raise RefineError(f"Choose the SAM3 field to refine ({', '.join(fields)})")
    if not dataset.has_sample_field(field_name):
        raise RefineError(f"The dataset has no field '{field_name}'")
    if field_name not in all_detections_fields(dataset):
        raise RefineError(f"Field '{field_name}' does not hold Detections; only SAM3 Detections fields can be refined")
    record = get_run(dataset, field_name)
    if record is None:
        raise RefineError(
            f"Field '{field_name}' has no recorded SAM3 prompts, so it cannot be re-run: refine a field "
            "written by a SAM3 run of this plugin"
        )
    return record


def get_sample(dataset, sample_id: str):
    """``dataset[sample_id]``, or a :class:`RefineError` a curator can act on."""
    try:
        return dataset[sample_id]
    except (KeyError, ValueError, TypeError):
        raise RefineError(
            f"Sample {sample_id} is not in the dataset: refinement works on the dataset's own samples "
            "(not on patches, clips or frames views)"
        ) from None


def image_size_of(sample) -> tuple[int, int]:
    """``(width, height)`` of a sample's image, read from its header.

    Raises:
        RefineError: an image that cannot be read, naming the sample
    """
    try:
        height, width = image_size(sample.filepath)
    except ImageLoadError as error:
        raise RefineError(f"Cannot read the image of sample {sample.id}: {error}") from None
    return width, height


def count_per_prompt(detections, prompts: Sequence[str] = ()) -> dict[str, int]:
    """The number of detections per label: every prompt first (zero if none), then other labels."""
    found = Counter(str(d.label) for d in detections.detections) if detections is not None else Counter()
    counts = {str(p): found.pop(str(p), 0) for p in prompts}
    counts.update(sorted(found.items()))
    return counts


def ensure_refinement_fields(dataset, field_name: str) -> None:
    """Declares the preview field of ``field_name`` and the records field, if they are missing."""
    preview = preview_field_name(field_name)
    if not dataset.has_sample_field(preview):
        dataset.add_sample_field(preview, fof.EmbeddedDocumentField, embedded_doc_type=fol.Detections)
    if not dataset.has_sample_field(REFINEMENTS_FIELD):
        dataset.add_sample_field(REFINEMENTS_FIELD, fof.ListField, subfield=fof.DictField)


# -- writing a proposal ---------------------------------------------------------------------------


def settings_for_here(settings: Sam3Settings) -> tuple[Sam3Settings, list[str]]:
    """A recorded run's settings to re-run on this machine: on its best device if the recorded one
    is not here (with a note saying so)."""
    if not device_problem(settings.device):
        return settings, []
    note = f"The run used device {settings.device!r}, which is not here: refined on {resolve_device(None)}"
    return settings.replace(device=None), [note]


def proposal_model(settings: Sam3Settings, prompts: dict[str, dict], token: str | None = None, **changes) -> Sam3Model:
    """The model a proposal runs: ``settings`` (with ``changes``) on the process's pooled engine
    with its feature cache (refining an image again costs no image-encoder work, and each written
    mask's logits are kept), prompted in memory (``prompts``: ``{sample_id: {"prompt_field": ...,
    "negative_field": ...}}``).

    Raises:
        RefineError: settings or a model that cannot be used
    """
    try:
        settings = settings.replace(**changes) if changes else settings
        return Sam3Model(settings, build_engine(settings, token), cache_features=True, prompt_overrides=prompts)
    except (ModelLoadError, SettingsError) as error:
        raise RefineError(str(error)) from None


def run_proposal(dataset, model: Sam3Model, sample_ids: Iterable[str], field_name: str) -> list[str]:
    """Runs ``model`` (:func:`proposal_model`) on the samples into the preview field of
    ``field_name``, through the one inference path; returns notes on the samples skipped.

    Unrecorded (the field's run stays the one that wrote it); loader workers are not used: the
    App's server process must not fork.
    """
    ensure_refinement_fields(dataset, field_name)
    ran = segment(
        dataset.select(list(sample_ids)),
        preview_field_name(field_name),
        model=model,
        record=False,
        num_workers=0,
        progress=False,
    )
    return [f"Skipped {skipped['filepath']}: {skipped['reason']}" for skipped in ran.skipped]


# -- accept, undo, discard ----------------------------------------------------------------------


def accept_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Writes each sample's proposal into ``field_name``, keeping an exact backup for undo.

    Returns:
        the ids of the samples whose field was replaced

    Raises:
        RefineError: a bad field, or no proposal on any of the samples (nothing written)
    """
    validate_field(dataset, field_name)
    preview = preview_field_name(field_name)
    samples = [get_sample(dataset, i) for i in dict.fromkeys(sample_ids or ())]
    pending = [s for s in samples if dataset.has_sample_field(preview) and s[preview] is not None]
    if not pending:
        raise RefineError("Nothing to accept: press Refine first")
    for sample in pending:
        previous = sample[field_name]
        ledger = Ledger(sample)
        ledger.accept(field_name, previous.to_json() if previous is not None else None)
        sample[field_name] = sample[preview]
        sample[preview] = None
        ledger.save()
    return [s.id for s in pending]


def undo_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Restores what ``field_name`` held before each sample's last accepted refinement, exactly.

    Returns:
        the ids of the samples restored

    Raises:
        RefineError: a bad field, or no accepted refinement to undo on any of the samples
    """
    validate_field(dataset, field_name)
    restored = []
    for sample in [get_sample(dataset, i) for i in dict.fromkeys(sample_ids or ())]:
        ledger = Ledger(sample)
        record = ledger.undo(field_name)
        if record is None:  # nothing accepted, or past MAX_UNDO_STEPS
            continue
        sample[field_name] = fol.Detections.from_json(record.backup) if record.backup else None
        ledger.save()
        restored.append(sample.id)
    if not restored:
        raise RefineError(
            f"Nothing to undo: no accepted refinement of '{field_name}' on the current sample(s) "
            f"(the last {MAX_UNDO_STEPS} accepts can be undone)"
        )
    return restored


def discard_refinement(dataset, sample_ids: Sequence[str], field_name: str | None) -> list[str]:
    """Drops each sample's pending proposal (the field is untouched); returns the samples changed.

    Raises:
        RefineError: a bad field, or no proposal on any of the samples
    """
    validate_field(dataset, field_name)
    preview = preview_field_name(field_name)
    if not dataset.has_sample_field(preview):
        raise RefineError("Nothing to discard: there is no pending refinement")
    changed = []
    for sample_id in dict.fromkeys(sample_ids or ()):
        sample = get_sample(dataset, sample_id)
        if sample[preview] is None:
            continue
        ledger = Ledger(sample)
        ledger.discard(field_name)
        sample[preview] = None
        ledger.save()
        changed.append(sample_id)
    if not changed:
        raise RefineError("Nothing to discard: there is no pending refinement on the current sample(s)")
    return changed
