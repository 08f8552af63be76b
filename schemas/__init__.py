"""The event contracts of enrich: JSON Schema (draft 2020-12) files shipped as package data.

Downstream services trust these files, so they are the source of truth: ``consumer/events.py`` validates
input and output against them at run time rather than against a second, hand-written copy of the rules.
File names carry the version (``product-event.v1.json``); see ``docs/schemas.md`` for the evolution policy.

Format checking is explicit: ``jsonschema`` only checks ``"format": "date-time"`` when the optional
``rfc3339-validator`` package happens to be installed, and silently passes everything otherwise. A
contract that depends on what else is in the environment is no contract, so :data:`FORMAT_CHECKER`
carries its own RFC 3339 check.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

__all__ = [
    "EXAMPLES_DIR",
    "FORMAT_CHECKER",
    "SCHEMA_DIR",
    "SCHEMA_NAMES",
    "is_rfc3339_datetime",
    "load_schema",
    "validator",
]

#: Directory holding ``<name>.json`` schema files (inside the installed package).
SCHEMA_DIR: Path = Path(__file__).resolve().parent
#: ``examples/<name>/*.json`` must validate; ``examples/invalid/<name>/*.json`` must not.
EXAMPLES_DIR: Path = SCHEMA_DIR / "examples"
#: Every schema this package ships, by versioned name.
SCHEMA_NAMES: tuple[str, ...] = ("product-event.v1", "attributes-enriched.v1", "dead-letter.v1")

_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})(?P<frac>\.\d+)?"
    r"(?P<tz>[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,  # \d would otherwise match any Unicode digit
)


def is_rfc3339_datetime(value: object) -> bool:
    """True for an RFC 3339 ``date-time`` (``2024-05-01T12:00:00Z``, ``...T12:00:00.5+02:00``).

    Stricter than ``datetime.fromisoformat``, which also takes dates without a time, a missing offset and
    a space separator: a timestamp without an offset is ambiguous, and downstream parsers disagree on the
    rest. A leap second (``:60``) is accepted, as RFC 3339 allows. Non-strings pass, as JSON Schema
    formats only constrain strings (``type`` rejects them separately). Never raises.
    """
    if not isinstance(value, str):
        return True
    match = _RFC3339.fullmatch(value)  # not match + $: $ also matches before a final newline
    if match is None:
        return False
    seconds = "59" if match["s"] == "60" else match["s"]
    tz = "+00:00" if match["tz"] in ("Z", "z") else match["tz"]
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{match['h']}:{match['m']}:{seconds}{tz}")
    except ValueError:
        return False
    offset = parsed.utcoffset()
    return offset is not None and abs(offset.total_seconds()) < 24 * 3600


#: Format checker used by every :func:`validator`; only the formats our schemas use.
FORMAT_CHECKER = FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(is_rfc3339_datetime)


def _path(name: str) -> Path:
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return SCHEMA_DIR / f"{name}.json"


@cache
def _load(name: str) -> dict[str, Any]:
    with _path(name).open("rb") as fh:
        schema: dict[str, Any] = json.load(fh)
    Draft202012Validator.check_schema(schema)
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` (e.g. ``"product-event.v1"``) as a fresh dict the caller may modify.

    Raises ``KeyError`` for a name this package does not ship (a typo must not look like an empty
    schema, which would accept everything) and ``jsonschema.SchemaError`` for a malformed file.
    """
    return copy.deepcopy(_load(name))


@cache
def validator(name: str) -> Draft202012Validator:
    """A cached draft 2020-12 validator for ``name`` that also checks ``date-time`` formats.

    Cached because building a validator compiles the schema's references; the consumer validates every
    message with it. Validators are stateless, so one instance can be shared across threads.
    """
    return Draft202012Validator(_load(name), format_checker=FORMAT_CHECKER)
