"""Run provenance on FiftyOne's runs framework: what wrote a SAM3 field, and with which settings.

Each field a SAM3 run writes gets a run (``dataset.list_runs()``, ``dataset.get_run_info(key)``,
as brain and evaluation runs do) under the key :func:`run_key` (``sam3_<field>``). Its config holds
the field and the complete :class:`~sam3_ops.sdk.settings.Sam3Settings` as a plain dict; its
results, once the run ends, the summary (samples processed, detections, skipped). So a refinement
reads the run of the field it refines and reproduces its settings exactly.

:class:`Run` is the one way a run is recorded, counted and finished, whichever door it came through
(:func:`sam3_ops.segment`, the operators, shards, QA review); callers of ``dataset.apply_model`` can
call :func:`record_run` afterwards. What a run wrote comes back as a :class:`SegmentResult`: its
:class:`RunSummary` counts (which add up with ``+``), its field and its run key.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime

from .fields import ensure_detections_field, root_dataset
from .settings import Sam3Settings
from .shardstore import active_shards

#: the ``method`` of every run this plugin records
METHOD = "sam3_ops.segment"
#: where the first version of this plugin kept its run settings (read, never written)
LEGACY_INFO_KEY = "sam3_ops_runs"


def run_key(label_field: str) -> str:
    """The run key of the SAM3 run that writes ``label_field``: ``sam3_<field>`` (an identifier)."""
    return "sam3_" + re.sub(r"\W", "_", label_field)


@dataclass
class RunSummary:
    """What a run (or a part of one: a chunk, a shard, a group) segmented; parts add up with ``+``.

    Attributes:
        samples_processed: samples (videos, on a video run) segmented
        detections: detections written
        samples_skipped: samples skipped
        skipped: ``{"filepath", "reason"}`` of each sample skipped
    """

    samples_processed: int = 0
    detections: int = 0
    samples_skipped: int = 0
    skipped: list = field(default_factory=list)

    def __add__(self, other: RunSummary) -> RunSummary:
        return RunSummary(
            self.samples_processed + other.samples_processed,
            self.detections + other.detections,
            self.samples_skipped + other.samples_skipped,
            self.skipped + other.skipped,
        )

    def counts(self) -> RunSummary:
        """The counts alone (a :class:`SegmentResult` without its field and run key)."""
        return RunSummary(self.samples_processed, self.detections, self.samples_skipped, list(self.skipped))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> RunSummary:
        """The counts of a stored summary (other keys ignored; missing counts are 0)."""
        values = values or {}
        return cls(
            int(values.get("samples_processed") or 0),
            int(values.get("detections") or 0),
            int(values.get("samples_skipped") or 0),
            list(values.get("skipped") or []),
        )


@dataclass
class SegmentResult(RunSummary):
    """What a run of :func:`sam3_ops.segment` wrote: its :class:`RunSummary` counts, and

    Attributes:
        label_field: the field written
        run_key: the key of its run record (``dataset.get_run_info(run_key)``), ``None`` if not recorded
    """

    label_field: str = ""
    run_key: str | None = None


class Run:
    """One run of a field, whichever door it came through (SDK, operators, shards, review): :meth:`start`
    records it before anything is written (an interrupted run leaves its provenance and resumes with
    it), :meth:`add` counts each part segmented, :meth:`finish` stores the summed summary as the
    run's results. With ``record=False`` nothing is stored and the parts are only added up.

    Args:
        samples: the dataset or view the run segments
        label_field: the field it writes
        settings: its :class:`~sam3_ops.sdk.settings.Sam3Settings`
        record (True): record the run on the dataset
    """

    def __init__(self, samples, label_field: str, settings: Sam3Settings, record: bool = True):
        self.samples, self.label_field, self.settings, self.record = samples, label_field, settings, record
        self.summary = RunSummary()

    def start(self, shards: dict | None = None) -> Run:
        """Records the run (see :func:`record_run`); ``shards``: a sharded run's shards."""
        if self.record:
            record_run(self.samples, self.label_field, self.settings, shards=shards)
        return self

    def add(self, part: RunSummary) -> None:
        """Adds the counts of a part of the run."""
        self.summary = self.summary + part.counts()

    def finish(self, **extra) -> SegmentResult:
        """Stores the summary (with ``extra`` results, e.g. a sharded run's ``shards``) as the run's
        results, recording the run again if a concurrent write to the dataset lost its record meanwhile."""
        if self.record:
            results = self.summary.to_dict() | extra
            if root_dataset(self.samples).has_run(run_key(self.label_field)):
                save_summary(self.samples, self.label_field, results)
            else:
                record_run(self.samples, self.label_field, self.settings, summary=results)
        key = run_key(self.label_field) if self.record else None
        return SegmentResult(**self.summary.to_dict(), label_field=self.label_field, run_key=key)


@dataclass(frozen=True)
class RunRecord:
    """A recorded SAM3 run.

    Attributes:
        key: its run key
        label_field: the field it wrote
        settings: its settings, exactly
        timestamp: when it was registered (UTC), ``None`` for a legacy record
        summary: its results (``samples_processed``, ``detections``, ``samples_skipped``, ...)
            once it ended, else ``None``
        shards: a sharded run's ``run_id``, shard ``count``, ``edges`` and ``operator``
            (:mod:`~sam3_ops.sdk.shards`), else ``None``
    """

    key: str
    label_field: str
    settings: Sam3Settings
    timestamp: datetime | None = None
    summary: dict | None = None
    shards: dict | None = None


def record_run(
    samples,
    label_field: str,
    source,
    prompt_field: str | None = None,
    negative_field: str | None = None,
    summary: dict | None = None,
    shards: dict | None = None,
) -> RunRecord:
    """Records the run that wrote ``label_field`` on ``samples``, after making sure the field is
    declared (see :func:`~sam3_ops.sdk.fields.ensure_detections_field`).

    Args:
        samples: the dataset or view the run segmented
        label_field: the field it wrote
        source: its :class:`~sam3_ops.sdk.settings.Sam3Settings`, or the
            :class:`~sam3_ops.sdk.model.Sam3Model` it ran
        prompt_field (None), negative_field (None): the fields given to ``apply_model``, when
            they are not in the settings
        summary (None): the model's summary, stored as the run's results
        shards (None): a sharded run's shards (:func:`~sam3_ops.sdk.shards.queue_shards`)

    Returns:
        the :class:`RunRecord`

    Raises:
        ValueError: a sharded run of ``label_field`` is still going (a new run would be overwritten
            by its shards; wait for it or cancel it)
    """
    settings = getattr(source, "settings", source)
    changes = {k: v for k, v in (("prompt_field", prompt_field), ("negative_field", negative_field)) if v}
    settings = settings.replace(**changes) if changes else settings
    if shards is None:  # a new run of the field while its sharded run goes on would be overwritten by it
        problem = active_run_problem(samples, label_field)
        if problem:
            raise ValueError(problem)
    ensure_detections_field(samples, label_field)
    key = run_key(label_field)
    extra = {"shards": shards} if shards else {}
    config = samples.init_run(method=METHOD, label_field=label_field, settings=settings.to_dict(), **extra)
    samples.register_run(key, config, overwrite=True)
    if summary is not None:
        save_summary(samples, label_field, summary)
    return get_run(samples, label_field)


def active_run_problem(samples, label_field: str) -> str | None:
    """Why a new run of ``label_field`` cannot start now (a sharded run of it is still going), or ``None``."""
    record = get_run(samples, label_field)
    if record is None or not record.shards:
        return None
    active = active_shards(root_dataset(samples), record.shards["run_id"])
    if not active:
        return None
    return (
        f"a sharded run of {label_field!r} is still going ({active} shards queued, running or stopping): wait for "
        f"it (sam3_ops.shard_status(dataset, {label_field!r})) or cancel it (sam3_ops.cancel_shards(dataset, "
        f"{label_field!r})) first; a cancelled shard stops before its next batch"
    )


def save_summary(samples, label_field: str, summary: dict) -> None:
    """Stores ``summary`` as the results of the run of ``label_field``."""
    key = run_key(label_field)
    samples.save_run_results(key, samples.init_run_results(key, **summary), overwrite=True)


def get_run(samples, label_field: str) -> RunRecord | None:
    """The recorded run that wrote ``label_field``, or ``None``."""
    dataset = root_dataset(samples)
    key = run_key(label_field)
    if dataset.has_run(key):
        info = dataset.get_run_info(key)
        config = info.config
        if getattr(config, "method", None) == METHOD and getattr(config, "label_field", None) == label_field:
            results = dataset.load_run_results(key, cache=False, load_view=False)
            summary = None
            if results is not None:
                summary = {
                    k: v
                    for k, v in vars(results).items()
                    if not k.startswith("_") and k not in ("samples", "config", "key", "backend")
                }
            shards = getattr(config, "shards", None)
            return RunRecord(key, label_field, Sam3Settings.from_dict(config.settings), info.timestamp, summary, shards)
    legacy = (dataset.info.get(LEGACY_INFO_KEY) or {}).get(label_field)
    if legacy:
        known = {k: v for k, v in legacy.items() if k in Sam3Settings.names()}
        return RunRecord(key, label_field, Sam3Settings.from_dict(known))
    return None


def recorded_fields(samples) -> list[str]:
    """The fields of ``samples`` that a recorded SAM3 run wrote."""
    dataset = root_dataset(samples)
    fields = [dataset.get_run_info(key).config.label_field for key in dataset.list_runs(method=METHOD)]
    fields += list(dataset.info.get(LEGACY_INFO_KEY) or {})
    frames = dataset.media_type == "video"  # video runs write frame-level fields
    return [name for name in dict.fromkeys(fields) if dataset.has_field(f"frames.{name}" if frames else name)]


#: the ``method`` of the calibration runs of :func:`sam3_ops.calibrate`
CALIBRATION_METHOD = "sam3_ops.calibrate"


def calibration_run_key(key: str) -> str:
    """The run key of the calibration ``key``: ``sam3_calibration_<key>``.

    Raises:
        ValueError: ``key`` is not a non-empty identifier (letters, digits, underscores)
    """
    if not isinstance(key, str) or not re.fullmatch(r"\w+", key):
        raise ValueError(f"a calibration key must be letters, digits and underscores, not {key!r}")
    return "sam3_calibration_" + key


def record_calibration(samples, key: str, config: dict, results: dict) -> str:
    """Stores a calibration as a run of ``samples`` (replacing one of the same key): ``config``
    (its arguments; dicts stored as ``[key, value]`` pairs, class names may hold dots) and
    ``results`` (:meth:`~sam3_ops.curation.calibrate.CalibrationResult.to_dict`). Returns the run key."""
    run = calibration_run_key(key)
    stored = {
        name: list(map(list, value.items())) if isinstance(value, dict) else value for name, value in config.items()
    }
    samples.register_run(run, samples.init_run(method=CALIBRATION_METHOD, **stored), overwrite=True)
    samples.save_run_results(run, samples.init_run_results(run, calibration=results), overwrite=True)
    return run


def load_calibration(samples, key: str) -> dict | None:
    """The results of the calibration ``key`` stored by :func:`record_calibration`, or ``None``."""
    dataset = root_dataset(samples)
    run = calibration_run_key(key)
    if not dataset.has_run(run) or getattr(dataset.get_run_info(run).config, "method", None) != CALIBRATION_METHOD:
        return None
    results = dataset.load_run_results(run, cache=False, load_view=False)
    return None if results is None else results.calibration
