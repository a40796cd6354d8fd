"""The Fachdaten schema registry: sources, JSON Schema drafts and formats, XSD, safe XML."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from fitconnect_kit.client.errors import ConfigurationError
from fitconnect_kit.client.keystore import DecryptionKeys, SigningKey
from fitconnect_kit.client.schemas import (
    SchemaNotAvailableError,
    SchemaRegistry,
    registry_from_specs,
)
from fitconnect_kit.client.verification import parse_json_document, parse_xml_document
from fitconnect_kit.demo import (
    DEMO_JSON_SCHEMA_URI,
    DEMO_XML_SCHEMA_URI,
    demo_json_data,
    demo_xml_data,
)

DRAFT7 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {"n": {"type": "integer", "exclusiveMinimum": 3}},
    "dependencies": {"a": ["b"]},
}


def violations(registry: SchemaRegistry, uri: str, doc: object) -> list[str]:
    return [str(v) for v in registry.validate_json(uri, doc)]


def test_file_and_inline_sources(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"type": "object", "required": ["x"]}))
    registry = SchemaRegistry().add("urn:file", path).add("urn:inline", {"type": "array"})
    registry.add("urn:bytes", b'{"type": "string"}')
    assert violations(registry, "urn:file", {}) == ["$: required member(s) missing: x"]
    assert violations(registry, "urn:inline", []) == []
    assert violations(registry, "urn:bytes", 1) == ["$: must be of type string"]
    assert "urn:file" in registry
    assert "urn:other" not in registry
    with pytest.raises(ConfigurationError, match="not found"):
        registry.add("urn:x", tmp_path / "missing.json")


def test_directory_prefix_mapping_without_escapes(tmp_path: Path) -> None:
    (tmp_path / "fim" / "sub").mkdir(parents=True)
    (tmp_path / "fim" / "sub" / "a.json").write_text('{"type": "boolean"}')
    (tmp_path / "secret.json").write_text('{"type": "null"}')
    registry = SchemaRegistry().add("https://schema.example/fim/", tmp_path / "fim")
    assert violations(registry, "https://schema.example/fim/sub/a.json", True) == []
    assert not registry.has("https://schema.example/fim/../secret.json")
    assert not registry.has("https://schema.example/fim/sub/../../secret.json")
    assert not registry.has("https://schema.example/fim/")
    with pytest.raises(SchemaNotAvailableError):
        registry.validate_json("https://schema.example/fim/missing.json", {})


def test_scan_registers_by_id(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"$id": "urn:scan:a", "type": "object"}))
    (tmp_path / "b.json").write_text("not json")
    (tmp_path / "c.json").write_text(json.dumps({"type": "object"}))
    assert SchemaRegistry().scan(tmp_path) == ["urn:scan:a"]


def test_url_source_is_fetched_once_and_cached(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200, json={"type": "object", "required": ["a"]})

    url = "https://schemas.example/antrag.schema.json"
    first = SchemaRegistry(cache_dir=tmp_path, http_transport=httpx.MockTransport(handler))
    first.add("urn:antrag", url)
    assert violations(first, "urn:antrag", {}) == ["$: required member(s) missing: a"]
    assert violations(first, "urn:antrag", {"a": 1}) == []
    assert first.cached_path(url).is_file()
    # A new registry (a restarted process) reads the cache and never fetches again.
    second = SchemaRegistry(cache_dir=tmp_path, http_transport=httpx.MockTransport(handler))
    second.add("urn:antrag", url)
    assert violations(second, "urn:antrag", {}) == ["$: required member(s) missing: a"]
    assert calls == [url]


def test_fetch_unknown_is_opt_in_and_failures_are_local(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    url = "https://schemas.example/unknown.json"
    assert not SchemaRegistry(cache_dir=tmp_path).has(url)
    registry = SchemaRegistry(
        cache_dir=tmp_path, fetch_unknown=True, http_transport=httpx.MockTransport(handler)
    )
    assert registry.has(url)
    with pytest.raises(SchemaNotAvailableError, match="HTTP 404"):
        registry.validate_json(url, {})


def test_drafts_are_taken_from_the_schema() -> None:
    registry = SchemaRegistry().add("urn:d7", DRAFT7)
    assert violations(registry, "urn:d7", {"n": 3}) == ["$.n: violates exclusiveMinimum 3"]
    assert violations(registry, "urn:d7", {"a": 1}) == ["$: violates 'dependencies'"]
    registry.add(
        "urn:d4",
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "maximum": 3,
            "exclusiveMaximum": True,
        },
    )
    assert violations(registry, "urn:d4", 3) == ["$: violates maximum 3"]


@pytest.mark.parametrize(
    ("fmt", "bad", "good"),
    [
        ("date", "2024-02-30", "2024-02-29"),
        ("date-time", "2024-01-01 10:00:00", "2024-01-01T10:00:00Z"),
        ("email", "not an address", "erika@example.org"),
        ("uri", "no scheme", "https://example.org/x"),
        ("uuid", "1234", "879ee109-a690-4db8-ab32-424284184d7d"),
        ("ipv4", "999.1.1.1", "10.0.0.1"),
    ],
)
def test_formats_are_asserted(fmt: str, bad: str, good: str) -> None:
    registry = SchemaRegistry().add("urn:f", {"type": "string", "format": fmt})
    assert violations(registry, "urn:f", bad) == [f"$: is not a valid {fmt}"]
    assert violations(registry, "urn:f", good) == []


def test_refs_between_registered_schemas_and_unresolvable_refs() -> None:
    registry = SchemaRegistry()
    registry.add("urn:main", {"type": "object", "properties": {"p": {"$ref": "urn:part"}}})
    registry.add("urn:part", {"$id": "urn:part", "type": "string", "minLength": 2})
    assert violations(registry, "urn:main", {"p": "x"}) == ["$.p: violates minLength 2"]
    registry.add("urn:broken", {"$ref": "https://elsewhere.example/s.json"})
    with pytest.raises(SchemaNotAvailableError, match="not in the schema registry"):
        registry.validate_json("urn:broken", {})


def test_invalid_schema_is_a_local_problem() -> None:
    registry = SchemaRegistry().add("urn:bad", {"type": 12})
    with pytest.raises(SchemaNotAvailableError, match="not a valid JSON Schema"):
        registry.validate_json("urn:bad", {})
    registry.add("urn:nojson", b"{")
    with pytest.raises(SchemaNotAvailableError, match="not valid JSON"):
        registry.validate_json("urn:nojson", {})


def test_messages_never_contain_values() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "a": {"enum": ["x", "y"]},
            "b": {"const": "k"},
            "c": {"type": "string", "maxLength": 3},
            "d": {"oneOf": [{"type": "string"}, {"type": "string", "minLength": 1}]},
        },
    }
    registry = SchemaRegistry().add("urn:v", schema)
    secret = "GEHEIM-4711"
    doc = {"a": secret, "b": secret, "c": secret, "d": secret, secret: 1}
    found = violations(registry, "urn:v", doc)
    assert len(found) == 5
    assert all(secret not in v for v in found)


def test_demo_schemas_validate_the_demo_data() -> None:
    registry = SchemaRegistry().add_demo_schemas()
    assert (
        registry.validate(
            "urn:fitconnect-kit:demo:antrag:1.0.0:json", "application/json", demo_json_data()
        )
        == []
    )
    tree, error = parse_xml_document(demo_xml_data())
    assert error is None
    assert registry.validate(DEMO_XML_SCHEMA_URI, "application/xml", tree) == []
    bad, _ = parse_xml_document(demo_xml_data().replace(b"51147", b"5114x"))
    found = registry.validate(DEMO_XML_SCHEMA_URI, "application/xml", bad)
    assert [str(v) for v in found] == ["/antrag/anschrift/postleitzahl: cvc-pattern-valid"]
    assert DEMO_JSON_SCHEMA_URI in registry


def test_xsd_imports_are_resolved_through_the_registry(tmp_path: Path) -> None:
    types = tmp_path / "types.xsd"
    types.write_text(
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">'
        '<xs:simpleType name="plz"><xs:restriction base="xs:string">'
        '<xs:pattern value="[0-9]{5}"/></xs:restriction></xs:simpleType></xs:schema>'
    )
    main = (
        b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:t="urn:t">'
        b'<xs:import namespace="urn:t" schemaLocation="https://xoev.example/types.xsd"/>'
        b'<xs:element name="plz" type="t:plz"/></xs:schema>'
    )
    registry = SchemaRegistry().add("urn:main", main)
    with pytest.raises(SchemaNotAvailableError):  # the import is not known: no network
        registry.validate_xml("urn:main", parse_xml_document(b"<plz>1</plz>")[0])
    registry = SchemaRegistry().add("urn:main", main).add("https://xoev.example/types.xsd", types)
    assert registry.validate_xml("urn:main", parse_xml_document(b"<plz>12345</plz>")[0]) == []
    assert len(registry.validate_xml("urn:main", parse_xml_document(b"<plz>1</plz>")[0])) == 1


def test_registry_from_cli_specs(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{}")
    registry = registry_from_specs([f"urn:a={path}", "urn:b=https://x.example/s.json"])
    assert registry.has("urn:a")
    assert registry.has("urn:b")
    with pytest.raises(ConfigurationError):
        registry_from_specs(["no-equals-sign"])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"{}", None),
        (b'{"a":1,"a":2}', "an object has a duplicate member"),
        (b'{"a":NaN}', "NaN/Infinity found"),
        (b'{"a":', "JSON syntax error at line 1, column 6"),
        (b"\xff", "not UTF-8 (invalid byte at offset 0)"),
        ("\ufeff{}".encode(), "starts with a byte order mark"),
    ],
)
def test_json_syntax(data: bytes, error: str | None) -> None:
    assert parse_json_document(data)[1] == error


def test_xml_syntax_errors_name_positions_only() -> None:
    _, error = parse_xml_document(b"<a><GEHEIM></a>")
    assert error is not None
    assert "GEHEIM" not in error
    assert "line 1" in error
    billion = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><l>&b;</l>'
    )
    assert parse_xml_document(billion)[1] == (
        "XML with a document type declaration (DTD) is not accepted"
    )


def test_key_store_loading(tmp_path: Path) -> None:
    from tests.unit.test_client_fakes import destination_keys, other_destination_keys

    keys, old = destination_keys(), other_destination_keys()
    (tmp_path / "enc.json").write_text(json.dumps(keys.encryption_private))
    (tmp_path / "sig.json").write_text(json.dumps(keys.signing_private))
    (tmp_path / "old.json").write_text(json.dumps({"keys": [old.encryption_private]}))
    (tmp_path / "pub.json").write_text(json.dumps(keys.encryption_public))
    store = DecryptionKeys.load(tmp_path)  # a directory: private encryption keys only
    assert set(store.kids) == {keys.encryption_kid, old.encryption_kid}
    assert keys.encryption_private["d"][:20] not in repr(store)
    signing = SigningKey.load(tmp_path / "sig.json")
    assert signing.kid == keys.signing_kid
    assert repr(signing) == f"SigningKey(kid={keys.signing_kid!r})"
    with pytest.raises(ConfigurationError, match="not found"):
        DecryptionKeys.load(tmp_path / "nope.json")
    (tmp_path / "broken.txt").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        DecryptionKeys.load(tmp_path / "broken.txt")
    with pytest.raises(ConfigurationError, match="PS512"):
        SigningKey.from_jwk(keys.encryption_private)
