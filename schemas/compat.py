"""Compatibility of a schema with its published version: within v1, only additive, optional changes.

``schemas/published/<name>.json`` is a frozen copy of each schema as it was first published (the version
downstream teams copied). :func:`incompatibilities` walks the published and the current schema side by side
and lists every change docs/schemas.md does not allow within a version:

* a new property is allowed only if it is not required (an additive, optional field), at any depth;
  a new ``$defs`` entry is allowed (nothing refers to it unless a new optional field does);
* every published property and definition must still be there, compatible in turn;
* ``required`` must stay the same set (adding makes old events invalid; removing lets fields vanish);
* every other keyword (``type``, ``enum``, ``const``, bounds, ``pattern``, ``format``, ``additionalProperties``,
  ``items`` ...) must keep its value, subschemas compared recursively; a keyword may not be added or removed.
  Enum values count too: readers ``match`` over them (docs/schemas.md).
* annotations (``title``, ``description``, ``examples``, ``$comment``, ``default``, ``deprecated``) may change.

Deliberately stricter than "every old instance still validates": relaxing a constraint of an output schema
lets producers write what old readers do not expect, and telling a harmless relaxation from a harmful one
is a review, not a test. A real change of that kind is a new version (``<name>.v2.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from schemas import SCHEMA_DIR, SCHEMA_NAMES, load_schema

__all__ = ["ANNOTATIONS", "PUBLISHED_DIR", "check_all", "incompatibilities", "load_published"]

#: Frozen copies of the schemas as first published.
PUBLISHED_DIR: Final = SCHEMA_DIR / "published"

#: Keywords a schema may gain: new (optional) properties or definitions constrain no existing field.
_ADDABLE: Final = frozenset({"properties", "$defs", "definitions"})
#: Keywords that only document; changing them changes no instance's validity.
ANNOTATIONS: Final = frozenset({"title", "description", "examples", "$comment", "default", "deprecated"})
#: Keywords whose value is one subschema.
_SUBSCHEMA: Final = frozenset(
    {"items", "additionalProperties", "propertyNames", "if", "then", "else", "not", "contains",
     "unevaluatedItems", "unevaluatedProperties"}
)
#: Keywords whose value is a list of subschemas (compared position by position).
_SUBSCHEMA_LIST: Final = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
#: Keywords whose value maps names to subschemas; new names are allowed only for these.
_SUBSCHEMA_MAP: Final = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def load_published(name: str, directory: Path = PUBLISHED_DIR) -> dict[str, Any]:
    with (directory / f"{name}.json").open("rb") as fh:
        return json.load(fh)


def incompatibilities(published: Any, current: Any, path: str = "$") -> list[str]:
    """Every change from ``published`` to ``current`` that v1 does not allow, as ``path: what`` lines.

    An empty list means ``current`` is a compatible evolution of ``published``.
    """
    if not isinstance(published, dict) or not isinstance(current, dict):
        return [] if published == current else [f"{path}: changed from {published!r} to {current!r}"]
    problems: list[str] = []
    for keyword in sorted((published.keys() | current.keys()) - ANNOTATIONS):
        where = f"{path}.{keyword}"
        if keyword not in current:
            problems.append(f"{where}: removed")
        elif keyword not in published:
            if keyword not in _ADDABLE:
                problems.append(f"{where}: added (a new constraint)")
        elif keyword == "required":
            if set(published[keyword]) != set(current[keyword]):
                added = sorted(set(current[keyword]) - set(published[keyword]))
                removed = sorted(set(published[keyword]) - set(current[keyword]))
                problems.append(f"{where}: changed (now required: {added}, no longer required: {removed})")
        elif keyword in _SUBSCHEMA_MAP and isinstance(published[keyword], dict):
            old, new = published[keyword], current[keyword]
            if not isinstance(new, dict):
                problems.append(f"{where}: no longer an object")
                continue
            for name in old:
                if name not in new:
                    problems.append(f"{where}.{name}: removed")
                else:
                    problems.extend(incompatibilities(old[name], new[name], f"{where}.{name}"))
            if keyword == "patternProperties" and new.keys() - old.keys():
                problems.append(f"{where}: new patterns {sorted(new.keys() - old.keys())} constrain existing fields")
            # New properties: allowed when optional, which "required" (compared above) decides.
        elif keyword in _SUBSCHEMA:
            problems.extend(incompatibilities(published[keyword], current[keyword], where))
        elif keyword in _SUBSCHEMA_LIST and isinstance(published[keyword], list):
            old, new = published[keyword], current[keyword]
            if not isinstance(new, list) or len(old) != len(new):
                problems.append(f"{where}: changed from {old!r} to {new!r}")
            else:
                for i, (a, b) in enumerate(zip(old, new, strict=True)):
                    problems.extend(incompatibilities(a, b, f"{where}[{i}]"))
        elif published[keyword] != current[keyword]:
            problems.append(f"{where}: changed from {published[keyword]!r} to {current[keyword]!r}")
    return problems


def check_all(directory: Path = PUBLISHED_DIR) -> dict[str, list[str]]:
    """name -> incompatibilities of the shipped schema with its published copy, for every published schema.

    A published schema that is no longer shipped is reported too (removing a file breaks its readers).
    """
    report: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*.json")):
        name = path.name.removesuffix(".json")
        if name not in SCHEMA_NAMES:
            report[name] = ["$: the published schema is no longer shipped"]
        else:
            report[name] = incompatibilities(load_published(name, directory), load_schema(name))
    return report
