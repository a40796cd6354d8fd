"""The problem catalog (protocol/problems.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import ValidationError

from fitconnect_kit.protocol.errors import FormatError
from fitconnect_kit.protocol.problems import (
    INSTANCE_DATA,
    INSTANCE_METADATA,
    INSTANCE_SUBMISSION,
    PROBLEM_JSON_MEDIA_TYPE,
    REJECT_PROBLEM_BASE,
    SUBMISSION_API_PROBLEM_BASE,
    ApiProblems,
    InstanceKind,
    Problem,
    ProblemType,
    RejectProblems,
    api_problem,
    instance_attachment,
    parse_instance,
    reject_problem,
)

ATTACHMENT_ID = "2046f9f1-dc89-4440-9c24-c76a8f40d668"


def test_api_catalog_names_and_uris_are_unique() -> None:
    problems = ApiProblems.all()
    assert len(problems) == 31
    assert len({p.name for p in problems}) == len(problems)
    assert len({p.type_uri for p in problems}) == len(problems)
    for p in problems:
        assert p.type_uri == SUBMISSION_API_PROBLEM_BASE + p.name
        assert p.name == p.name.lower()
        assert " " not in p.name
        assert 400 <= p.status <= 599
        assert p.confidence in ("C", "S", "U")
        assert p.title


@pytest.mark.parametrize(
    ("ptype", "status", "confidence"),
    [
        (ApiProblems.DESTINATION_NOT_FOUND, 404, "S"),
        (ApiProblems.DESTINATION_STATE_INVALID, 422, "S"),
        (ApiProblems.SUBMISSION_NOT_FOUND, 404, "C"),
        (ApiProblems.SUBMISSION_STATE_INVALID, 409, "U"),
        (ApiProblems.MALFORMED_REQUEST, 400, "U"),
        (ApiProblems.INVALID_REQUEST_BODY, 422, "U"),
        (ApiProblems.ATTACHMENT_TOO_LARGE, 413, "U"),
        (ApiProblems.TOO_MANY_REQUESTS, 429, "U"),
        (ApiProblems.SERVICE_UNAVAILABLE, 503, "U"),
    ],
)
def test_api_statuses(ptype: ProblemType, status: int, confidence: str) -> None:
    assert ptype.status == status
    assert ptype.confidence == confidence


def test_technical_problems_use_reason_phrases() -> None:
    assert ApiProblems.METHOD_NOT_ALLOWED.name == "method-not-allowed"
    assert ApiProblems.METHOD_NOT_ALLOWED.title == "Method Not Allowed"
    assert ApiProblems.INTERNAL_SERVER_ERROR.title == "Internal Server Error"


def test_api_lookups() -> None:
    assert ApiProblems.by_name("invalid-jwe") is ApiProblems.INVALID_JWE
    assert ApiProblems.by_type_uri(SUBMISSION_API_PROBLEM_BASE + "case-not-found") is (
        ApiProblems.CASE_NOT_FOUND
    )
    assert ApiProblems.by_name("nope") is None
    assert ApiProblems.by_type_uri(REJECT_PROBLEM_BASE + "invalid-jwe") is None


def test_reject_catalog() -> None:
    problems = RejectProblems.all()
    assert len(problems) == 13
    assert len({p.name for p in problems}) == len(problems)
    for p in problems:
        assert p.type_uri == REJECT_PROBLEM_BASE + p.name
        assert p.instance_kinds
    assert RejectProblems.by_name("hash-mismatch") is RejectProblems.HASH_MISMATCH
    assert RejectProblems.by_type_uri(REJECT_PROBLEM_BASE + "missing-data") is (
        RejectProblems.MISSING_DATA
    )
    assert RejectProblems.INVALID_EVENT_LOG.instance_kinds == {InstanceKind.SUBMISSION}


def test_instance_helpers() -> None:
    assert instance_attachment(ATTACHMENT_ID.upper()) == f"attachment:{ATTACHMENT_ID}"
    assert parse_instance("metadata") == (InstanceKind.METADATA, None)
    assert parse_instance(INSTANCE_DATA) == (InstanceKind.DATA, None)
    assert parse_instance(INSTANCE_SUBMISSION) == (InstanceKind.SUBMISSION, None)
    assert parse_instance(f"attachment:{ATTACHMENT_ID}") == (InstanceKind.ATTACHMENT, ATTACHMENT_ID)
    for bad in ("attachment:nope", "attachment:", "Metadata", "", None, 3, "data:x"):
        with pytest.raises(FormatError):
            parse_instance(bad)


@pytest.mark.parametrize(
    ("ptype", "instance", "ok"),
    [
        (RejectProblems.INVALID_EVENT_LOG, "submission", True),
        (RejectProblems.INVALID_EVENT_LOG, "metadata", False),
        (RejectProblems.INCORRECT_AUTHENTICATION_TAG, "metadata", True),
        (RejectProblems.INCORRECT_AUTHENTICATION_TAG, f"attachment:{ATTACHMENT_ID}", True),
        (RejectProblems.INCORRECT_AUTHENTICATION_TAG, "submission", False),
        (RejectProblems.ENCRYPTION_ISSUE, "data", True),
        (RejectProblems.SYNTAX_VIOLATION, "data", True),
        (RejectProblems.SYNTAX_VIOLATION, f"attachment:{ATTACHMENT_ID}", False),
        (RejectProblems.SERVICE_MISMATCH, "metadata", True),
        (RejectProblems.SERVICE_MISMATCH, "data", False),
        (RejectProblems.MISSING_DATA, "data", True),
        (RejectProblems.MISSING_DATA, "metadata", False),
        (RejectProblems.HASH_MISMATCH, f"attachment:{ATTACHMENT_ID}", True),
        (RejectProblems.HASH_MISMATCH, "metadata", False),
        (RejectProblems.TECHNICAL_ERROR, None, True),
        (RejectProblems.TECHNICAL_ERROR, "submission", True),
        (RejectProblems.SCHEMA_VIOLATION, None, False),
        (RejectProblems.SCHEMA_VIOLATION, "bogus", False),
    ],
)
def test_reject_problem_instance_validation(ptype, instance, ok) -> None:  # type: ignore[no-untyped-def]
    assert ptype.allows_instance(instance) is ok
    if ok:
        problem = reject_problem(ptype, instance, detail="x")
        assert problem.type == ptype.type_uri
        assert problem.title == ptype.title
        assert problem.instance == instance
        assert problem.status is None
    else:
        with pytest.raises(FormatError):
            reject_problem(ptype, instance)


def test_reject_problem_normalizes_attachment_instance() -> None:
    problem = reject_problem(RejectProblems.HASH_MISMATCH, f"attachment:{ATTACHMENT_ID.upper()}")
    assert problem.instance == f"attachment:{ATTACHMENT_ID}"
    assert problem.to_json() == {
        "type": REJECT_PROBLEM_BASE + "hash-mismatch",
        "title": RejectProblems.HASH_MISMATCH.title,
        "instance": f"attachment:{ATTACHMENT_ID}",
    }


def test_api_problem_json_with_extensions() -> None:
    problem = api_problem(
        ApiProblems.DUPLICATE_ATTACHMENT_IDS, "id announced twice", "/v1/submissions", ids=["a"]
    )
    body = json.loads(problem.to_bytes())
    assert body == {
        "type": SUBMISSION_API_PROBLEM_BASE + "duplicate-attachment-ids",
        "title": "Duplicate attachment ids",
        "status": 422,
        "detail": "id announced twice",
        "instance": "/v1/submissions",
        "ids": ["a"],
    }
    assert problem.extensions == {"ids": ["a"]}
    assert problem.is_type(ApiProblems.DUPLICATE_ATTACHMENT_IDS)
    assert PROBLEM_JSON_MEDIA_TYPE == "application/problem+json"
    with pytest.raises(ValueError, match="redefine"):
        api_problem(ApiProblems.NOT_FOUND, status=400)


def test_problem_model_preserves_unknown_members_and_is_strict() -> None:
    raw = {"type": "urn:x", "title": "T", "status": 409, "traceId": "abc", "nested": {"a": 1}}
    problem = Problem.model_validate(raw)
    assert problem.to_json() == raw
    assert Problem.model_validate({"type": "urn:x", "title": "T"}).to_json() == {
        "type": "urn:x",
        "title": "T",
    }
    for bad in (
        {"title": "no type"},
        {"type": "", "title": "T"},
        {"type": "urn:x", "title": 5},
        {"type": "urn:x", "title": "T", "status": "409"},
        {"type": "urn:x", "title": "T", "status": 99},
    ):
        with pytest.raises(ValidationError):
            Problem.model_validate(bad)


def test_every_reject_instance_kind_is_accepted_somewhere() -> None:
    used = set().union(*(p.instance_kinds for p in RejectProblems.all()))
    assert used == set(InstanceKind)
    assert INSTANCE_METADATA == "metadata"
    assert instance_attachment(str(uuid.uuid4())).startswith("attachment:")
