"""The schema files are a contract with downstream teams: every example must hold, every counter-example fail.

Invalid examples are checked for the *reason* they fail (the JSON Schema keyword), not just for failing,
so an invalid example cannot keep passing the test by accident after the schema changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

import schemas
from schemas import EXAMPLES_DIR, SCHEMA_DIR, SCHEMA_NAMES, is_rfc3339_datetime, load_schema, validator

#: invalid example (schema/file) -> the only JSON Schema keyword it may violate.
INVALID_EXPECTED: dict[str, str] = {
    "product-event.v1/upsert-without-title.json": "required",
    "product-event.v1/unknown-op.json": "enum",
    "product-event.v1/updated-at-without-offset.json": "format",
    "product-event.v1/too-many-images.json": "maxItems",
    "product-event.v1/nested-vendor-attribute.json": "type",
    "product-event.v1/empty-product-id.json": "minLength",
    "product-event.v1/delete-without-updated-at.json": "required",
    "product-event.v1/brand-not-string.json": "type",
    "attributes-enriched.v1/confidence-above-one.json": "maximum",
    "attributes-enriched.v1/unknown-image-status.json": "enum",
    "attributes-enriched.v1/short-event-id.json": "pattern",
    "attributes-enriched.v1/unknown-modality.json": "enum",
    "attributes-enriched.v1/evidence-missing-text.json": "required",
    "attributes-enriched.v1/wrong-schema-const.json": "const",
    "dead-letter.v1/unknown-reason.json": "enum",
    "dead-letter.v1/source-without-key.json": "required",
    "dead-letter.v1/negative-offset.json": "minimum",
}

VALID_EXAMPLES = sorted(p for name in SCHEMA_NAMES for p in (EXAMPLES_DIR / name).glob("*.json"))
INVALID_EXAMPLES = sorted((EXAMPLES_DIR / "invalid").glob("*/*.json"))


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_every_schema_file_is_known_and_well_formed() -> None:
    on_disk = {p.name.removesuffix(".json") for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        schema = load_schema(name)
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(name)


def test_example_directories_match_schemas() -> None:
    dirs = {p.name for p in EXAMPLES_DIR.iterdir() if p.is_dir()} - {"invalid"}
    assert dirs == set(SCHEMA_NAMES)
    assert {p.name for p in (EXAMPLES_DIR / "invalid").iterdir()} <= set(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        assert len(list((EXAMPLES_DIR / name).glob("*.json"))) >= 3, name


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=_rel)
def test_valid_example(path: Path) -> None:
    errors = [
        f"{e.json_path}: {e.message}" for e in validator(path.parent.name).iter_errors(json.loads(path.read_text()))
    ]
    assert errors == []


@pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=_rel)
def test_invalid_example_fails_for_its_reason(path: Path) -> None:
    errors = list(validator(path.parent.name).iter_errors(json.loads(path.read_text())))
    assert {e.validator for e in errors} == {INVALID_EXPECTED[_rel(path)]}, [e.message for e in errors]


def test_every_invalid_example_has_an_expectation() -> None:
    assert {_rel(p) for p in INVALID_EXAMPLES} == set(INVALID_EXPECTED)


def test_required_examples_exist() -> None:
    product_ops = {json.loads(p.read_text())["op"] for p in (EXAMPLES_DIR / "product-event.v1").glob("*.json")}
    assert product_ops == {"upsert", "delete"}
    enriched = [json.loads(p.read_text()) for p in (EXAMPLES_DIR / "attributes-enriched.v1").glob("*.json")]
    assert any(e["modalities"] == ["text"] and all(i["status"] != "ok" for i in e["images"]) for e in enriched)
    reasons = {json.loads(p.read_text())["reason"] for p in (EXAMPLES_DIR / "dead-letter.v1").glob("*.json")}
    assert reasons == set(load_schema("dead-letter.v1")["properties"]["reason"]["enum"])


def test_unknown_top_level_product_fields_are_allowed() -> None:
    example = json.loads((EXAMPLES_DIR / "product-event.v1" / "upsert-full.json").read_text())
    assert validator("product-event.v1").is_valid(example | {"vendor_only_field": {"anything": [1, 2]}})


def test_delete_needs_no_title_but_upsert_does() -> None:
    delete = {"event_id": "e", "op": "delete", "retailer": "r", "product_id": "p", "updated_at": "2024-01-01T00:00:00Z"}
    assert validator("product-event.v1").is_valid(delete)
    assert not validator("product-event.v1").is_valid(delete | {"op": "upsert"})
    assert validator("product-event.v1").is_valid(delete | {"op": "upsert", "title": ""})


def test_dead_letter_source_extends_enriched_source() -> None:
    """The two files duplicate the source shape (each stays self-contained); keep them in step."""
    enriched = load_schema("attributes-enriched.v1")["$defs"]["source"]
    dead = load_schema("dead-letter.v1")["properties"]["source"]
    assert set(dead["required"]) == {*enriched["required"], "key_b64"}
    for field in enriched["properties"]:
        assert {k: v for k, v in dead["properties"][field].items() if k != "description"} == {
            k: v for k, v in enriched["properties"][field].items() if k != "description"
        }


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2024-05-01T12:00:00Z", True),
        ("2024-05-01t12:00:00.123456z", True),
        ("2024-05-01T12:00:00+05:30", True),
        ("2016-12-31T23:59:60Z", True),
        ("2024-05-01T12:00:00", False),
        ("2024-05-01 12:00:00Z", False),
        ("2024-05-01", False),
        ("2024-02-30T12:00:00Z", False),
        ("2024-05-01T24:00:00Z", False),
        ("2024-05-01T12:00:00+24:00", False),
        ("２０２４-05-01T12:00:00Z", False),
        ("2024-05-01T12:00:00Z\n", False),
        ("", False),
    ],
)
def test_date_time_format_is_checked_without_optional_packages(value: str, ok: bool) -> None:
    assert is_rfc3339_datetime(value) is ok
    assert (
        validator("dead-letter.v1").is_valid(
            json.loads((EXAMPLES_DIR / "dead-letter.v1" / "not-json.json").read_text()) | {"failed_at": value}
        )
        is ok
    )


def test_loader_api() -> None:
    assert validator("product-event.v1") is validator("product-event.v1")
    first = load_schema("product-event.v1")
    first["required"].append("mutated")
    assert "mutated" not in load_schema("product-event.v1")["required"]
    with pytest.raises(KeyError, match="unknown schema"):
        load_schema("product-event.v9")
    assert schemas.SCHEMA_DIR.is_dir()


def test_schema_files_ship_in_the_wheel() -> None:
    """hatchling puts every non-ignored file of a listed package in the wheel (checked with `pip wheel`)."""
    import tomllib

    pyproject = tomllib.loads((SCHEMA_DIR.parent / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "schemas" in wheel["packages"]
    assert not wheel.get("exclude") and not wheel.get("only-include")
