"""The contract cannot drift: each shipped schema is a compatible evolution of its first published version.

``schemas/published/`` holds the files as first published (the commit that added ``schemas/``); within a
version only additive, optional fields are allowed (docs/schemas.md). The incompatible edits below are made
on copies, to show the check catches each kind.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from schemas import SCHEMA_DIR, SCHEMA_NAMES, load_schema
from schemas.compat import PUBLISHED_DIR, check_all, incompatibilities, load_published

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_schema_is_published_and_compatible() -> None:
    assert {p.name.removesuffix(".json") for p in PUBLISHED_DIR.glob("*.json")} == set(SCHEMA_NAMES)
    assert check_all() == {name: [] for name in SCHEMA_NAMES}


def test_published_copies_are_the_first_committed_versions() -> None:
    """The frozen copies are what git first recorded under schemas/ (skipped without git history)."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout")
    for name in SCHEMA_NAMES:
        path = f"schemas/{name}.json"
        log = subprocess.run([git, "log", "--diff-filter=A", "--format=%H", "--", path],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        if not log:
            pytest.skip(f"{path} not in this clone's history (shallow clone?)")
        first = subprocess.run([git, "show", f"{log[-1]}:{path}"], cwd=REPO, capture_output=True, check=True).stdout
        assert json.loads(first) == load_published(name), name


def _edit(schema: dict[str, Any], change: Any) -> dict[str, Any]:
    edited = copy.deepcopy(schema)
    change(edited)
    return edited


ENRICHED = "attributes-enriched.v1"
DEAD = "dead-letter.v1"
PRODUCT = "product-event.v1"

BREAKING: dict[str, tuple[str, Any, str]] = {
    "remove a field": (ENRICHED, lambda s: s["properties"].pop("enriched_at"), "$.properties.enriched_at: removed"),
    "add a required field": (ENRICHED, lambda s: (s["properties"].update(locale={"type": "string"}),
                                                  s["required"].append("locale")), "$.required: changed"),
    "make a field optional": (DEAD, lambda s: s["required"].remove("detail"), "$.required: changed"),
    "change a type": (ENRICHED, lambda s: s["$defs"]["source"]["properties"]["offset"].update(type="string"),
                      "$.$defs.source.properties.offset.type: changed"),
    "add an enum value": (DEAD, lambda s: s["properties"]["reason"]["enum"].append("timeout"),
                          "$.properties.reason.enum: changed"),
    "tighten a bound": (PRODUCT, lambda s: s["properties"]["title"].update(maxLength=100),
                        "$.properties.title.maxLength: changed"),
    "add a constraint": (ENRICHED, lambda s: s["properties"]["retailer"].update(pattern="^[a-z]+$"),
                         "$.properties.retailer.pattern: added"),
    "close the object": (ENRICHED, lambda s: s.update(additionalProperties=False), "$.additionalProperties: added"),
    "rename a definition": (ENRICHED, lambda s: s["$defs"].update(img=s["$defs"].pop("image")),
                            "$.$defs.image: removed"),
    "change the schema constant": (ENRICHED, lambda s: s["properties"]["schema"].update(const="enrich.x.v1"),
                                   "$.properties.schema.const: changed"),
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_incompatible_edit_is_caught(case: str) -> None:
    name, change, expected = BREAKING[case]
    problems = incompatibilities(load_published(name), _edit(load_schema(name), change))
    assert any(p.startswith(expected) for p in problems), problems


ALLOWED: dict[str, tuple[str, Any]] = {
    "new optional top-level field": (ENRICHED, lambda s: s["properties"].update(locale={"type": "string"})),
    "new optional nested field": (ENRICHED, lambda s: s["$defs"]["source"]["properties"].update(
        lag_ms={"type": "integer"})),
    "new definition": (DEAD, lambda s: s.setdefault("$defs", {}).update(extra={"type": "string"})),
    "reworded description": (PRODUCT, lambda s: s.update(description="Reworded.")),
    "new example": (PRODUCT, lambda s: s["examples"].append({"event_id": "e"})),
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_additive_optional_edit_passes(case: str) -> None:
    name, change = ALLOWED[case]
    assert incompatibilities(load_published(name), _edit(load_schema(name), change)) == []


def test_check_all_on_a_modified_copy_of_the_schema_directory(tmp_path: Path) -> None:
    """The whole check, on a copy of the published directory where one file was edited incompatibly."""
    published = tmp_path / "published"
    shutil.copytree(PUBLISHED_DIR, published)
    edited = json.loads((SCHEMA_DIR / f"{ENRICHED}.json").read_text())
    edited["properties"]["modalities"]["items"]["enum"] = ["image"]
    (published / f"{ENRICHED}.json").write_text(json.dumps(edited))
    report = check_all(published)
    assert report[DEAD] == [] and report[PRODUCT] == []
    assert report[ENRICHED] == ["$.properties.modalities.items.enum: changed from ['image'] to ['image', 'text']"]
    (published / "retired.v1.json").write_text("{}")
    assert check_all(published)["retired.v1"] == ["$: the published schema is no longer shipped"]
