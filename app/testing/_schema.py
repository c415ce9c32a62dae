"""The JSON Schema of chat.v1 (``app/schemas/chat.v1.json``) and validators for it.

:func:`load_schema` needs only the standard library. The ``validate_*`` helpers
need the ``jsonschema`` package, which is part of the ``test`` extra only
(``pip install 'trio-enclave[test]'``); they import it when called. The server
itself never validates against the schema: ``_messages.py`` is the parser, and the
tests keep the two in agreement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any, Final

__all__ = [
    "SCHEMA_RESOURCE",
    "load_schema",
    "validate",
    "validate_client_message",
    "validate_server_event",
    "validator",
]

#: Where the schema lives inside the ``app`` package.
SCHEMA_RESOURCE: Final = ("schemas", "chat.v1.json")


def load_schema() -> Mapping[str, Any]:
    """The parsed schema document (a fresh copy on every call)."""
    resource = files("app").joinpath(*SCHEMA_RESOURCE)
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


def validator(definition: str) -> Any:
    """A ``jsonschema`` validator for ``#/$defs/<definition>``: build once, check many.

    Raises ``KeyError`` for an unknown definition. Needs the ``test`` extra.
    """
    import jsonschema  # type: ignore[import-untyped]  # test extra only: keep it lazy

    schema = load_schema()
    if definition not in schema["$defs"]:
        raise KeyError(definition)
    return jsonschema.Draft202012Validator(
        {
            "$schema": schema["$schema"],
            "$id": schema["$id"],
            "$defs": schema["$defs"],
            "$ref": f"#/$defs/{definition}",
        }
    )


def validate(obj: Any, definition: str) -> None:
    """Check ``obj`` (parsed JSON) against ``#/$defs/<definition>``.

    Raises ``jsonschema.ValidationError`` if it does not conform, ``KeyError`` for
    an unknown definition. Needs the ``test`` extra.
    """
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

    # A union (client_message, server_event) is a oneOf discriminated by a const
    # ``type``: when ``type`` names a member, checking that member is the same check,
    # faster and with errors that say what is wrong rather than "not valid under any".
    union = load_schema()["$defs"][definition].get("oneOf", ())
    members = {entry["$ref"].rpartition("/")[2] for entry in union}
    kind = obj.get("type") if isinstance(obj, Mapping) else None
    target = kind if isinstance(kind, str) and kind in members else definition
    errors = list(validator(target).iter_errors(obj))
    if errors:
        raise best_match(errors)


def validate_client_message(obj: Any) -> None:
    """Check a parsed client -> server message; raises ``jsonschema.ValidationError``."""
    validate(obj, "client_message")


def validate_server_event(obj: Any) -> None:
    """Check a parsed server -> client event (e.g. ``json.loads`` of a received frame).

    Raises ``jsonschema.ValidationError``. Needs the ``test`` extra. Each call builds a
    validator (about 2 ms); for many frames build ``validator("server_event")`` once and
    call its ``validate`` or ``is_valid``.
    """
    validate(obj, "server_event")
