"""What the PostgreSQL and Supabase stores share: both call the SQL functions of
`schema.sql`, so both check and shape their arguments the same way first."""

from __future__ import annotations

from typing import Any

from .. import ledger
from ..errors import CheckpointError
from .base import dumps_content

#: SQLSTATEs schema.sql raises on purpose: a malformed argument, a malformed stored
#: document. Both mean CheckpointError; neither is worth a retry.
BAD_ARGUMENT = "OB001"
BAD_DOCUMENT = "OB002"
CHECKPOINT_SQLSTATES = frozenset({BAD_ARGUMENT, BAD_DOCUMENT})

MIGRATE_HINT = "apply the schema first: otel-budget migrate, or schema.sql in the SQL editor"


def prepare_merge(
    instance_id: str, entry: dict[str, Any], day_meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the arguments as ledger.merge_entry does, before any I/O (same
    CheckpointError as the other stores), and round spend_usd here: the SQL rounds
    a decimal, Python a binary float, and the two differ on exact ties."""
    if not isinstance(instance_id, str):
        raise CheckpointError(f"instance id must be a string, got {instance_id!r}")
    checked = ledger.validate_entry(dict(entry), where=f"entry for {instance_id!r}")
    checked["spend_usd"] = ledger.round_usd(checked["spend_usd"])
    if not isinstance(day_meta, dict):
        raise CheckpointError(f"day_meta must be an object, got {type(day_meta).__name__}")
    dumps_content(checked)
    dumps_content(day_meta)
    return checked, day_meta


def as_object(value: Any, *, patch_type: str, name: str) -> dict[str, Any]:
    """A row's content as returned by the database, or CheckpointError naming the row."""
    if not isinstance(value, dict):
        raise CheckpointError(
            f"row {patch_type}/{name} holds {type(value).__name__}, expected a JSON object"
        )
    return value
