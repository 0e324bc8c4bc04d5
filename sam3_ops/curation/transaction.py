"""The one field-transaction helper: change a label field in place with nothing lost.

:func:`backed_up` clones the field to a backup first and hands the caller a staging field to
work in; the caller writes the field itself only as its last step. If anything fails before that,
the backup and the staging field are removed and the field is as it was. The backup stays after a
success: :func:`~sam3_ops.curation.edits.restore_field` puts the field back from it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..sdk.fields import root_dataset

#: the suffix of a staging field (ours by name: one left by a crashed process is removed)
STAGING_SUFFIX = "_sam3_staging"


def check_backup_field(samples, field: str, backup_field: str | None) -> str:
    """The backup field to use for ``field`` (default ``<field>_backup``), which must not exist.

    Raises:
        ValueError: the backup is the field itself, or exists (an earlier change not yet undone)
    """
    backup_field = backup_field or f"{field}_backup"
    if backup_field == field:
        raise ValueError("backup_field must differ from the field it backs up")
    if root_dataset(samples).get_field(backup_field) is not None:
        raise ValueError(
            f"backup field {backup_field!r} already exists (an earlier change not yet undone): restore it with "
            f"restore_field(..., {field!r}, {backup_field!r}), delete it, or choose another backup_field"
        )
    return backup_field


def drop_field(dataset, name: str) -> None:
    """Deletes ``name`` from ``dataset`` if it exists."""
    if dataset.get_field(name) is not None:
        dataset.delete_sample_field(name)


@contextmanager
def backed_up(samples, field: str, backup_field: str) -> Iterator[str]:
    """Clones ``field`` to ``backup_field`` and yields the name of a fresh staging field.

    On leaving the block the staging field is deleted; if the block raised, the backup is deleted
    too (the field was not written, so there is nothing to restore).
    """
    dataset = root_dataset(samples)
    staging = f"{field}{STAGING_SUFFIX}"
    drop_field(dataset, staging)  # left by a crashed process: ours by name
    dataset.clone_sample_field(field, backup_field)
    try:
        yield staging
    except BaseException:
        drop_field(dataset, backup_field)
        raise
    finally:
        drop_field(dataset, staging)
