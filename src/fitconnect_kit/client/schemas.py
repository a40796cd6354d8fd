"""Fachdaten schemas on the subscriber side: a registry ``schemaUri → schema`` and validation.

A submission names the schema of its Fachdaten in the metadata
(``contentStructure.data.submissionSchema``: ``schemaUri`` + ``mimeType``). The receiving system
validates the data against it (reference §11 step 14): JSON data with JSON Schema — whatever
draft the schema declares in ``$schema`` (2020-12 when it declares none), **formats asserted** —
and XML data with an XSD (XML Schema 1.0 via lxml).

Where schemas come from is the registry's job (:class:`SchemaRegistry`):

* ``add(uri, "schemas/antrag.schema.json")`` — a local file;
* ``add("https://schema.example/fim/", "schemas/fim/")`` — a URI prefix mapped to a directory
  (``https://schema.example/fim/a/b.json`` → ``schemas/fim/a/b.json``; no ``..`` escapes);
* ``add(uri, "https://host/antrag.xsd")`` — a URL, fetched **once** and cached on disk
  (``cache_dir``); later runs read the cached file and never fetch again;
* ``add(uri, b"...")`` / ``add(uri, {...})`` — the schema itself;
* ``scan(directory)`` — every ``*.json`` JSON Schema in it under its ``$id``;
* ``fetch_unknown=True`` — schema URIs that are https URLs and not registered are fetched
  (and cached) on first use. Off by default: what a subscriber validates against should be
  configured, not whatever the network serves.

``$ref``\\ s between registered JSON schemas are resolved through the registry; XSD
``import``/``include`` of a registered URL is resolved to the registered file, relative
includes next to a file work, and nothing else is loaded from the network.

A schema that is **not** in the registry (or cannot be loaded) is a *local configuration*
problem, never the sender's fault: :meth:`SchemaRegistry.validate` raises
:class:`SchemaNotAvailableError` and the subscriber does not reject because of it (see
``docs/sdk-subscriber.md``).

Violations name the JSON path / element path and the rule, never a value: they end up in the
``detail`` of a ``reject-submission`` problem the Zustelldienst and the sender can read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import httpx
from lxml import etree

from fitconnect_kit.client.errors import ConfigurationError
from fitconnect_kit.protocol.errors import FormatError, Violation
from fitconnect_kit.protocol.jsonutil import loads_strict

log = logging.getLogger("fitconnect_kit.client.schemas")

JSON_MIME: Final = "application/json"
XML_MIME: Final = "application/xml"
MAX_SCHEMA_BYTES: Final = 16 * 1024 * 1024
MAX_REPORTED_VIOLATIONS: Final = 20
DEFAULT_CACHE_DIR: Final = Path("~/.cache/fitconnect-kit/schemas")


class SchemaNotAvailableError(ConfigurationError):
    """The data schema a submission names is not in the registry, or cannot be loaded.

    A local configuration problem (add the schema to the registry) — not a reason to reject.
    """

    def __init__(self, message: str, *, schema_uri: str, mime_type: str | None = None) -> None:
        super().__init__(message)
        self.schema_uri = schema_uri
        self.mime_type = mime_type


SchemaSource = str | os.PathLike[str] | bytes | Mapping[str, Any]


@dataclass(frozen=True)
class _Entry:
    """Where one schema (or, with ``prefix``, a tree of schemas) comes from."""

    kind: str  # "file", "directory", "url", "content"
    path: Path | None = None
    url: str | None = None
    content: bytes | None = None


def _is_url(text: str) -> bool:
    return text.startswith(("https://", "http://"))


def _cache_name(url: str) -> str:
    suffix = PurePosixPath(httpx.URL(url).path).suffix
    if suffix not in (".json", ".xsd", ".xml"):
        suffix = ".schema"
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:40] + suffix


# --- messages without values ---------------------------------------------------------------------

_BOUND_KEYWORDS: Final = frozenset(
    {
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "multipleOf",
        "minContains",
        "maxContains",
    }
)


def _describe_json_error(error: Any) -> str:
    """What a JSON Schema error means, from the schema side only (never the instance value)."""
    keyword = str(error.validator)
    expected = error.validator_value
    if keyword == "required":
        instance = error.instance
        names = [n for n in expected if isinstance(instance, dict) and n not in instance]
        return "required member(s) missing: " + ", ".join(str(n) for n in names)
    if keyword == "type":
        types = expected if isinstance(expected, list) else [expected]
        return "must be of type " + " or ".join(str(t) for t in types)
    if keyword in _BOUND_KEYWORDS:
        return f"violates {keyword} {expected}"
    if keyword == "pattern":
        return f"does not match the pattern {expected}"
    if keyword == "format":
        return f"is not a valid {expected}"
    if keyword == "enum":
        return "is not one of the allowed values"
    if keyword == "const":
        return "is not the required constant value"
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        return "has members the schema does not allow"
    if keyword in ("additionalItems", "unevaluatedItems", "items", "prefixItems"):
        return "has items the schema does not allow"
    if keyword in ("anyOf", "oneOf"):
        return f"matches {'none' if keyword == 'anyOf' else 'not exactly one'} of the alternatives"
    if keyword == "uniqueItems":
        return "has duplicate items"
    if keyword == "false":
        return "is not allowed here"
    return f"violates '{keyword}'"


def _json_path(error: Any) -> str:
    path = getattr(error, "json_path", None)
    if isinstance(path, str):
        return path
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


# --- safe XML parsing -----------------------------------------------------------------------------


def safe_xml_parser(resolver: Any = None) -> etree.XMLParser:
    """An lxml parser that never loads anything: no DTDs, no entity expansion, no network."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )
    if resolver is not None:
        parser.resolvers.add(resolver)
    return parser


def _element_path(tree: Any, raw_path: str | None) -> str:
    """Turn lxml's ``/*/*[2]/*[3]`` into ``/antrag/anschrift/postleitzahl`` (names only)."""
    if not raw_path:
        return "/"
    try:
        found = tree.xpath(raw_path)
    except Exception:  # a path we cannot evaluate is shown as is
        return raw_path
    if not found or not hasattr(found[0], "tag"):
        return raw_path
    names: list[str] = []
    element = found[0]
    while element is not None:
        tag = element.tag
        if isinstance(tag, str):
            names.append(tag.rsplit("}", 1)[-1])
        element = element.getparent()
    return "/" + "/".join(reversed(names))


def _humanize(type_name: str) -> str:
    return type_name.lower().removeprefix("schemav_").replace("_", "-")


# --- the registry ---------------------------------------------------------------------------------


class SchemaRegistry:
    """``schemaUri → schema`` for Fachdaten validation (JSON Schema and XSD).

    Thread-safe; compiled validators are cached. ``cache_dir`` holds schemas fetched from URLs
    (default ``~/.cache/fitconnect-kit/schemas``); ``http_transport`` replaces the network
    (tests); ``fetch_timeout`` bounds one fetch.
    """

    def __init__(
        self,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        fetch_unknown: bool = False,
        http_transport: httpx.BaseTransport | None = None,
        fetch_timeout: float = 30.0,
    ) -> None:
        self._exact: dict[str, _Entry] = {}
        self._prefixes: dict[str, _Entry] = {}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE_DIR
        self.fetch_unknown = fetch_unknown
        self._http_transport = http_transport
        self._fetch_timeout = fetch_timeout
        self._lock = threading.RLock()
        self._json_validators: dict[str, Any] = {}
        self._xsd: dict[str, tuple[Any, threading.Lock]] = {}
        self._raw: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"SchemaRegistry({len(self._exact)} schema(s), {len(self._prefixes)} prefix(es))"

    # --- configuration ---------------------------------------------------------------------------

    def add(self, schema_uri: str, source: SchemaSource) -> SchemaRegistry:
        """Register a schema: a file, a directory (``schema_uri`` is then a prefix), a URL,
        the schema's bytes or a JSON Schema as a mapping. Returns the registry (chainable)."""
        if not isinstance(schema_uri, str) or not schema_uri:
            raise ConfigurationError("a schema URI must be a non-empty string")
        entry: _Entry
        if isinstance(source, Mapping):
            entry = _Entry("content", content=_dump_json(source))
        elif isinstance(source, bytes | bytearray):
            entry = _Entry("content", content=bytes(source))
        elif isinstance(source, str) and _is_url(source):
            entry = _Entry("url", url=source)
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                with self._lock:
                    self._prefixes[schema_uri] = _Entry("directory", path=path.resolve())
                    self._forget(schema_uri, prefix=True)
                return self
            if not path.is_file():
                raise ConfigurationError(f"schema file not found: {path}")
            entry = _Entry("file", path=path.resolve())
        with self._lock:
            self._exact[schema_uri] = entry
            self._forget(schema_uri)
        return self

    def add_many(self, mapping: Mapping[str, SchemaSource]) -> SchemaRegistry:
        for uri, source in mapping.items():
            self.add(uri, source)
        return self

    def scan(self, directory: str | os.PathLike[str]) -> list[str]:
        """Register every ``*.json`` JSON Schema below ``directory`` under its ``$id``.

        Returns the URIs registered. Files without ``$id`` or that are not JSON are skipped.
        """
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise ConfigurationError(f"schema directory not found: {root}")
        found: list[str] = []
        for path in sorted(root.rglob("*.json")):
            try:
                doc = loads_strict(path.read_bytes(), what=str(path))
            except (OSError, FormatError):
                continue
            schema_id = doc.get("$id") if isinstance(doc, dict) else None
            if isinstance(schema_id, str) and schema_id:
                self.add(schema_id, path)
                found.append(schema_id)
        return found

    def add_demo_schemas(self) -> SchemaRegistry:
        """Register the demo Leistung's schemas of ``fitconnect dev`` (JSON Schema and XSD)."""
        from fitconnect_kit import demo

        self.add(demo.DEMO_JSON_SCHEMA_URI, demo.demo_json_schema_bytes())
        self.add(demo.DEMO_XML_SCHEMA_URI, demo.demo_xsd_bytes())
        return self

    def _forget(self, uri: str, *, prefix: bool = False) -> None:
        for cache in (self._json_validators, self._xsd, self._raw):
            for key in [k for k in cache if k == uri or (prefix and k.startswith(uri))]:
                del cache[key]

    # --- lookup ----------------------------------------------------------------------------------

    def _entry(self, uri: str) -> _Entry | None:
        with self._lock:
            entry = self._exact.get(uri)
            if entry is not None:
                return entry
            best = max((p for p in self._prefixes if uri.startswith(p)), key=len, default=None)
            if best is not None:
                rest = uri[len(best) :].lstrip("/")
                parts = PurePosixPath(rest).parts
                if not rest or any(p in ("..", ".") for p in parts) or "\\" in rest:
                    return None
                directory = self._prefixes[best].path
                assert directory is not None
                candidate = directory.joinpath(*parts)
                if candidate.is_file():
                    return _Entry("file", path=candidate)
                return None
        if self.fetch_unknown and uri.startswith("https://"):
            return _Entry("url", url=uri)
        return None

    def has(self, schema_uri: str) -> bool:
        """Whether ``schema_uri`` is registered (or fetchable with ``fetch_unknown``)."""
        return self._entry(schema_uri) is not None

    def __contains__(self, schema_uri: object) -> bool:
        return isinstance(schema_uri, str) and self.has(schema_uri)

    def load_bytes(self, schema_uri: str) -> bytes:
        """The schema document's bytes (fetching and caching a URL source once)."""
        with self._lock:
            cached = self._raw.get(schema_uri)
        if cached is not None:
            return cached
        entry = self._entry(schema_uri)
        if entry is None:
            raise SchemaNotAvailableError(
                f"no schema for {schema_uri!r} in the schema registry; add it (e.g. "
                f"`--schema {schema_uri}=PATH`)",
                schema_uri=schema_uri,
            )
        if entry.kind == "content":
            assert entry.content is not None
            data = entry.content
        elif entry.kind == "file":
            assert entry.path is not None
            data = self._read_file(entry.path, schema_uri)
        else:
            assert entry.url is not None
            data = self._fetch_cached(entry.url, schema_uri)
        with self._lock:
            self._raw[schema_uri] = data
        return data

    def _read_file(self, path: Path, uri: str) -> bytes:
        try:
            size = path.stat().st_size
            if size > MAX_SCHEMA_BYTES:
                raise SchemaNotAvailableError(
                    f"schema file {path} for {uri!r} is larger than {MAX_SCHEMA_BYTES} bytes",
                    schema_uri=uri,
                )
            return path.read_bytes()
        except OSError as exc:
            raise SchemaNotAvailableError(
                f"cannot read schema file {path} for {uri!r}: {exc.strerror}", schema_uri=uri
            ) from None

    def cached_path(self, url: str) -> Path:
        """Where the schema fetched from ``url`` is (or will be) cached."""
        return self.cache_dir / _cache_name(url)

    def _fetch_cached(self, url: str, uri: str) -> bytes:
        target = self.cached_path(url)
        if target.is_file():
            return self._read_file(target, uri)
        log.info("fetching schema %s (cached in %s)", url, target.parent)
        try:
            with httpx.Client(
                transport=self._http_transport, timeout=self._fetch_timeout, follow_redirects=True
            ) as client:
                response = client.get(url)
        except httpx.HTTPError as exc:
            raise SchemaNotAvailableError(
                f"cannot fetch schema {url} for {uri!r}: {type(exc).__name__}", schema_uri=uri
            ) from None
        if response.status_code != 200:
            raise SchemaNotAvailableError(
                f"cannot fetch schema {url} for {uri!r}: HTTP {response.status_code}",
                schema_uri=uri,
            )
        data = response.content
        if len(data) > MAX_SCHEMA_BYTES:
            raise SchemaNotAvailableError(f"schema {url} is too large", schema_uri=uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return data

    # --- JSON Schema -----------------------------------------------------------------------------

    def _json_schema(self, uri: str) -> Any:
        data = self.load_bytes(uri)
        try:
            schema = loads_strict(data, what=f"schema {uri}")
        except FormatError:
            raise SchemaNotAvailableError(
                f"the schema registered for {uri!r} is not valid JSON", schema_uri=uri
            ) from None
        if not isinstance(schema, dict | bool):
            raise SchemaNotAvailableError(
                f"the schema registered for {uri!r} is not a JSON Schema", schema_uri=uri
            )
        return schema

    def _retrieve(self, uri: str) -> Any:
        """``referencing`` retrieval: registered schemas only (never the network)."""
        from referencing import Resource
        from referencing.exceptions import NoSuchResource
        from referencing.jsonschema import DRAFT202012

        base = uri.split("#", 1)[0]
        try:
            contents = self._json_schema(base)
        except SchemaNotAvailableError:
            raise NoSuchResource(ref=uri) from None  # type: ignore[call-arg]
        return Resource.from_contents(contents, default_specification=DRAFT202012)

    def json_validator(self, schema_uri: str) -> Any:
        """The compiled ``jsonschema`` validator for ``schema_uri`` (cached)."""
        with self._lock:
            cached = self._json_validators.get(schema_uri)
        if cached is not None:
            return cached
        from jsonschema import FormatChecker
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        from fitconnect_kit.protocol.metadata import _FORMATS

        schema = self._json_schema(schema_uri)
        cls = validator_for(schema, default=validator_for({}))
        try:
            cls.check_schema(schema)
        except SchemaError as exc:
            raise SchemaNotAvailableError(
                f"the schema registered for {schema_uri!r} is not a valid JSON Schema: "
                f"{exc.message}",
                schema_uri=schema_uri,
            ) from None
        checker = FormatChecker()
        checker.checkers = dict(cls.FORMAT_CHECKER.checkers)
        # Formats that jsonschema checks only with optional packages installed are checked with
        # the kit's own strict RFC implementations, so the result never depends on extras.
        for name, (check, _description) in _FORMATS.items():
            checker.checkers[name] = (_string_format(check), ())
        resource = Resource.from_contents(schema, default_specification=DRAFT202012)
        registry: Any = Registry(retrieve=self._retrieve)  # type: ignore[call-arg]
        registry = registry.with_resource(schema_uri, resource)
        validator = cls(schema, registry=registry, format_checker=checker)
        with self._lock:
            self._json_validators[schema_uri] = validator
        return validator

    def validate_json(self, schema_uri: str, document: Any) -> list[Violation]:
        """Violations of a parsed JSON ``document`` against the schema (empty: valid)."""
        from referencing.exceptions import Unresolvable

        validator = self.json_validator(schema_uri)
        try:
            errors = sorted(
                validator.iter_errors(document), key=lambda e: (_json_path(e), str(e.validator))
            )
        except Unresolvable as exc:
            raise SchemaNotAvailableError(
                f"the schema for {schema_uri!r} references {exc.ref!r}, which is not in the "
                "schema registry",
                schema_uri=schema_uri,
            ) from None
        return [Violation(_json_path(e), _describe_json_error(e)) for e in errors]

    # --- XSD -------------------------------------------------------------------------------------

    def _xsd_schema(self, schema_uri: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            cached = self._xsd.get(schema_uri)
        if cached is not None:
            return cached
        entry = self._entry(schema_uri)
        data = self.load_bytes(schema_uri)
        parser = safe_xml_parser(_RegistryResolver(self))
        try:
            if entry is not None and entry.path is not None:
                root = etree.fromstring(data, parser, base_url=str(entry.path))
            else:
                root = etree.fromstring(data, parser)
            schema = etree.XMLSchema(root)
        except (etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
            raise SchemaNotAvailableError(
                f"the XSD registered for {schema_uri!r} cannot be loaded: {exc}",
                schema_uri=schema_uri,
                mime_type=XML_MIME,
            ) from None
        result = (schema, threading.Lock())
        with self._lock:
            self._xsd[schema_uri] = result
        return result

    def validate_xml(self, schema_uri: str, tree: Any) -> list[Violation]:
        """Violations of a parsed XML document (lxml tree/element) against the XSD."""
        schema, lock = self._xsd_schema(schema_uri)
        root_tree = tree.getroottree() if hasattr(tree, "getroottree") else tree
        with lock:  # an XMLSchema object keeps its error log: one validation at a time
            valid = schema.validate(root_tree)
            entries = [] if valid else list(schema.error_log)
        return [
            Violation(_element_path(root_tree, e.path), _humanize(e.type_name)) for e in entries
        ]

    # --- one entry point -------------------------------------------------------------------------

    def validate(self, schema_uri: str, mime_type: str, document: Any) -> list[Violation]:
        """Validate a parsed document: JSON (``application/json``) or an lxml tree (XML)."""
        try:
            if mime_type == JSON_MIME:
                return self.validate_json(schema_uri, document)
            if mime_type == XML_MIME:
                return self.validate_xml(schema_uri, document)
        except SchemaNotAvailableError as exc:
            if exc.mime_type is None:
                exc.mime_type = mime_type
            raise
        raise SchemaNotAvailableError(
            f"cannot validate data of MIME type {mime_type!r}", schema_uri=schema_uri
        )


def _string_format(check: Callable[[str], bool]) -> Callable[[object], bool]:
    def run(value: object) -> bool:
        return not isinstance(value, str) or check(value)

    return run


def _dump_json(value: Mapping[str, Any]) -> bytes:
    from fitconnect_kit.protocol.jsonutil import dumps_compact

    return dumps_compact(dict(value))


class _RegistryResolver(etree.Resolver):
    """Resolves XSD imports/includes of registered URIs to the registered schemas."""

    def __init__(self, registry: SchemaRegistry) -> None:
        super().__init__()
        self.registry = registry

    def resolve(self, system_url: str, public_id: str, context: Any) -> Any:  # type: ignore[override]
        if system_url and self.registry.has(system_url):
            entry = self.registry._entry(system_url)
            this: Any = self  # lxml-stubs lack resolve_filename and the context argument
            if entry is not None and entry.path is not None:
                return this.resolve_filename(str(entry.path), context)
            return this.resolve_string(self.registry.load_bytes(system_url), context)
        return None


def registry_from_specs(
    specs: Iterable[str], *, base: SchemaRegistry | None = None
) -> SchemaRegistry:
    """A registry from ``URI=PATH`` / ``URI=URL`` strings (the CLI's ``--schema``)."""
    registry = base or SchemaRegistry()
    for spec in specs:
        uri, sep, target = spec.partition("=")
        if not sep or not uri or not target:
            raise ConfigurationError(f"--schema expects URI=PATH or URI=URL, got {spec!r}")
        registry.add(uri, target)
    return registry


__all__ = [
    "DEFAULT_CACHE_DIR",
    "MAX_REPORTED_VIOLATIONS",
    "SchemaNotAvailableError",
    "SchemaRegistry",
    "SchemaSource",
    "registry_from_specs",
    "safe_xml_parser",
]
