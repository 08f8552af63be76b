"""schemas/asyncapi.yaml is a valid AsyncAPI 3.0 document and says what the code does.

Validated offline against the official AsyncAPI 3.0.0 JSON Schema (tests/data/asyncapi/, from the
``@asyncapi/specs`` package); then every reference is resolved, payloads must be the shipped schema files,
and topic names and headers must match the defaults and the header names the producer and readers use.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from schemas import SCHEMA_DIR, SCHEMA_NAMES, load_schema, validator
from schemas.models import (
    HEADER_EVENT_ID,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_UPDATED_AT,
)

DOCUMENT = SCHEMA_DIR / "asyncapi.yaml"
META = Path(__file__).parent / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load(DOCUMENT.read_text())


@pytest.fixture(scope="module")
def meta() -> Draft7Validator:
    schema = json.loads(META.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def test_document_validates_against_asyncapi_3(document: dict[str, Any], meta: Draft7Validator) -> None:
    errors = [f"{e.json_path}: {e.message[:200]}" for e in meta.iter_errors(document)]
    assert errors == []
    assert document["asyncapi"] == "3.0.0"


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["operations"]["publishEnriched"].pop("action"),
        lambda d: d["operations"]["publishEnriched"].update(action="publish"),  # AsyncAPI 2 wording
        lambda d: d["info"].pop("version"),
        lambda d: d["channels"]["products"].update(address=7),
    ],
)
def test_the_validator_rejects_broken_documents(document: dict[str, Any], meta: Draft7Validator, breakage: Any) -> None:
    broken = copy.deepcopy(document)
    breakage(broken)
    assert list(meta.iter_errors(broken))


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_payloads_are_the_shipped_schemas(document: dict[str, Any]) -> None:
    files = set()
    for ref in _refs(document):
        if ref.startswith("#/"):
            _resolve(document, ref)
        else:
            path = (DOCUMENT.parent / ref).resolve()
            assert path.is_file(), ref
            files.add(path.name.removesuffix(".json"))
    assert files == set(SCHEMA_NAMES)
    messages = document["components"]["messages"]
    for message in messages.values():
        payload = message["payload"]
        if "schema" in payload:
            name = Path(payload["schema"]["$ref"]).name.removesuffix(".json")
            assert payload["schemaFormat"] == "application/schema+json;version=draft-2020-12"
            assert message["name"] == name
            assert load_schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_operation_messages_belong_to_their_channel(document: dict[str, Any]) -> None:
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def test_channels_are_the_default_topics_and_the_enriched_one_is_compacted(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert {c["address"] for c in channels.values()} == {"products", "products.enriched", "products.dead-letter"}
    for channel in channels.values():
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
    enriched = channels["productsEnriched"]
    assert enriched["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == ["compact"]
    assert set(enriched["messages"]) == {"attributesEnriched", "productDeleted"}


def test_header_schemas_name_the_headers_readers_use(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    coordinates = {HEADER_SOURCE_TOPIC, HEADER_SOURCE_PARTITION, HEADER_SOURCE_OFFSET}
    assert set(schemas["enrichedHeaders"]["required"]) == coordinates
    assert coordinates | {HEADER_UPDATED_AT, HEADER_EVENT_ID} <= set(schemas["tombstoneHeaders"]["properties"])
    assert set(schemas["deadLetterHeaders"]["required"]) == coordinates | {"enrich.reason"}
    reasons = load_schema("dead-letter.v1")["properties"]["reason"]["enum"]
    assert schemas["deadLetterHeaders"]["properties"]["enrich.reason"]["enum"] == reasons
    # The header schemas are JSON Schema themselves: a real header set validates.
    headers = {HEADER_SOURCE_TOPIC: "products", HEADER_SOURCE_PARTITION: "3", HEADER_SOURCE_OFFSET: "1842"}
    Draft7Validator(schemas["enrichedHeaders"]).validate(headers)
    assert list(Draft7Validator(schemas["enrichedHeaders"]).iter_errors({**headers, HEADER_SOURCE_OFFSET: "x"}))
    validator("attributes-enriched.v1")  # the referenced file loads as a schema
