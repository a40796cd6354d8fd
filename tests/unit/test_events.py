"""Security Event Tokens (protocol/events.py): build, sign, parse, verify, derive state."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.keycache import rsa_key

from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.b64 import b64url_decode, b64url_encode
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.errors import (
    FormatError,
    InvalidKeyError,
    JoseError,
    SetError,
    SignatureError,
    UnsupportedAlgorithmError,
)
from fitconnect_kit.protocol.events import (
    EVENT_RULES,
    EVENTS_BASE,
    RECEIVER_EVENTS,
    SET_PAYLOAD_SCHEMA_DEFAULT,
    AuthenticationTags,
    Event,
    NotifyType,
    SecurityEventToken,
    SetKeyNotFoundError,
    SetMismatchError,
    authentication_tag,
    build_set_claims,
    case_txn,
    check_postable,
    derive_state,
    is_accepted_set_schema,
    parse_set,
    parse_subject,
    reply_subject,
    sign_set,
    submission_subject,
    verify_set,
    verify_set_with_jwks,
)
from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key
from fitconnect_kit.protocol.jose.jws import sign_compact
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.protocol.problems import RejectProblems, reject_problem

ZD = "https://zd.example.test"
DEST = "879ee109-a690-4db8-ab32-424284184d7d"
SUB = "ce75a6b8-d72f-4b94-b09e-af6be35bc2ae"
SUB2 = "0b799252-deb9-42b0-98d3-c50d24bbafe0"
REPLY = "b9715dcb-700e-44d9-802f-12b45bf9f8a3"
CASE = "e89e107e-ed79-40e6-ad34-4e770f9df263"
ATT = "2046f9f1-dc89-4440-9c24-c76a8f40d668"
ZD_KID = "zd-signing-key"
DEST_KID = "dest-key-verify"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

TAGS = AuthenticationTags(
    metadata="XFBoMYUZodetZdvTiFvSkQ",
    data="UCGiqJxhBI3IFVdPalHHvA",
    attachments={ATT: "rT99rwrBTbTI7IJM8fU3El"},
)


def zd_key() -> rsa.RSAPrivateKey:
    return rsa_key(0)


def dest_key() -> rsa.RSAPrivateKey:
    return rsa_key(1)


def jwks_of(key: rsa.RSAPrivateKey, kid: str, alg: str = "PS512") -> dict[str, Any]:
    return {
        "keys": [
            jwk_from_public_key(key.public_key(), kid=kid, alg=alg, key_ops=["verify"], use="sig")
        ]
    }


def payload_for(event: Event) -> dict[str, Any]:
    problems = [reject_problem(RejectProblems.HASH_MISMATCH, "data", "sha512 differs")]
    return {
        Event.SUBMIT_SUBMISSION: {"authenticationTags": TAGS},
        Event.NOTIFY_SUBMISSION: {"notifyType": "polling"},
        Event.FORWARD_SUBMISSION: {"authenticationTags": TAGS},
        Event.ACCEPT_SUBMISSION: {"authenticationTags": TAGS},
        Event.REJECT_SUBMISSION: {"problems": problems, "authenticationTags": TAGS},
        Event.SUBMIT_REPLY: {"authenticationTags": TAGS},
        Event.NOTIFY_REPLY: {"notifyType": NotifyType.CALLBACK},
        Event.REJECT_REPLY: {"problems": problems},
    }.get(event, {})


def issuer_for(event: Event) -> tuple[str, rsa.RSAPrivateKey, str]:
    if event in RECEIVER_EVENTS:  # reject-submission: normally the receiver, the ZD only at day 14
        return DEST, dest_key(), DEST_KID
    return ZD, zd_key(), ZD_KID


def make_set(
    event: Event,
    *,
    submission_id: str = SUB,
    clock: ManualClock | None = None,
    issuer: str | None = None,
    payload: dict[str, Any] | None = None,
) -> str:
    iss, key, kid = issuer_for(event)
    if issuer is not None:
        iss, key, kid = (
            (issuer, zd_key(), ZD_KID)
            if issuer.startswith("http")
            else (issuer, dest_key(), DEST_KID)
        )
    subject = reply_subject(REPLY) if event.is_reply_event else submission_subject(submission_id)
    claims = build_set_claims(
        event,
        issuer=iss,
        subject=subject,
        case_id=CASE,
        payload=payload if payload is not None else payload_for(event),
        clock=clock or ManualClock(T0),
    )
    return sign_set(claims, key, kid)


def raw_token(header: dict[str, Any], claims: Any, key: rsa.RSAPrivateKey | None = None) -> str:
    """Sign arbitrary claims (bypassing sign_set's checks)."""
    return sign_compact(header, dumps_compact(claims), key or zd_key())


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "$schema": SET_PAYLOAD_SCHEMA_DEFAULT,
        "jti": "4ac47caa-bce1-435a-b04f-3322b224b32e",
        "iss": ZD,
        "iat": 1622796532,
        "sub": f"submission:{SUB}",
        "txn": f"case:{CASE}",
        "events": {Event.CREATE_SUBMISSION.value: {}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


HEADER = {"typ": "secevent+jwt", "alg": "PS512", "kid": ZD_KID}


# --- catalog and helpers ------------------------------------------------------------------------


def test_event_catalog() -> None:
    assert len(Event) == 13
    assert all(e.value.startswith(EVENTS_BASE) for e in Event)
    assert Event.ACCEPT_SUBMISSION.value == (
        "https://schema.fitko.de/fit-connect/events/accept-submission"
    )
    assert Event.REJECT_REPLY.short_name == "reject-reply"
    assert {
        Event.FORWARD_SUBMISSION,
        Event.ACCEPT_SUBMISSION,
        Event.REJECT_SUBMISSION,
    } == RECEIVER_EVENTS
    assert set(EVENT_RULES) == set(Event)
    assert Event.from_uri(EVENTS_BASE + "delete-reply") is Event.DELETE_REPLY
    with pytest.raises(SetError, match="unknown event"):
        Event.from_uri(EVENTS_BASE + "explode-submission")


def test_subject_helpers() -> None:
    assert submission_subject(SUB.upper()) == f"submission:{SUB}"
    assert reply_subject(REPLY) == f"reply:{REPLY}"
    assert case_txn(CASE) == f"case:{CASE}"
    assert parse_subject(f"reply:{REPLY.upper()}") == ("reply", REPLY)
    with pytest.raises(FormatError):
        submission_subject("nope")
    with pytest.raises(SetError):
        parse_subject("case:" + CASE)


def test_schema_versions() -> None:
    assert is_accepted_set_schema(SET_PAYLOAD_SCHEMA_DEFAULT)
    assert is_accepted_set_schema(
        "https://schema.fitko.de/fit-connect/set-payload/1.0.0/set-payload.schema.json"
    )
    assert not is_accepted_set_schema(
        "https://schema.fitko.de/fit-connect/set-payload/1.9.0/set-payload.schema.json"
    )
    assert not is_accepted_set_schema("https://example.com/x.json")


# --- authentication tags ------------------------------------------------------------------------


def test_authentication_tags_json_round_trip() -> None:
    wire = TAGS.to_json()
    assert wire == {
        "metadata": "XFBoMYUZodetZdvTiFvSkQ",
        "data": "UCGiqJxhBI3IFVdPalHHvA",
        "attachments": {ATT: "rT99rwrBTbTI7IJM8fU3El"},
    }
    assert AuthenticationTags.from_json(wire) == TAGS
    only_metadata = AuthenticationTags.from_json({"metadata": "XFBoMYUZodetZdvTiFvSkQ"})
    assert only_metadata.to_json() == {"metadata": "XFBoMYUZodetZdvTiFvSkQ", "attachments": {}}
    upper = AuthenticationTags.from_json({"attachments": {ATT.upper(): "rT99rwrBTbTI7IJM8fU3El"}})
    assert dict(upper.attachments) == {ATT: "rT99rwrBTbTI7IJM8fU3El"}


@pytest.mark.parametrize(
    "bad",
    [
        {"metadata": "short"},
        {"metadata": "XFBoMYUZodetZdvTiFvSkQ=="},
        {"metadata": "XFBoMYUZodetZdvTiFvSk+"},
        {"metadata": None},
        {"data": 5},
        {"attachments": {"not-a-uuid": "rT99rwrBTbTI7IJM8fU3El"}},
        {"attachments": {ATT: "rT99rwrBTbTI7IJM8fU3ElXX"}},
        {"attachments": []},
        {"metadata": "XFBoMYUZodetZdvTiFvSkQ", "signature": "x"},
        "XFBoMYUZodetZdvTiFvSkQ",
    ],
)
def test_authentication_tags_are_strict(bad: Any) -> None:
    with pytest.raises(SetError):
        AuthenticationTags.from_json(bad)


def test_tags_from_jwes_and_mismatches() -> None:
    jwe = "eyJhbGciOiJSU0EtT0FFUC0yNTYifQ.a.b.c.XFBoMYUZodetZdvTiFvSkQ"
    tags = AuthenticationTags.from_jwes(metadata=jwe, attachments={ATT: jwe})
    assert tags.metadata == "XFBoMYUZodetZdvTiFvSkQ"
    assert authentication_tag(jwe) == "XFBoMYUZodetZdvTiFvSkQ"
    with pytest.raises(FormatError):
        authentication_tag("a.b.c")
    assert TAGS.mismatches(TAGS) == []
    other = AuthenticationTags(
        metadata=TAGS.metadata, data="AAAAAAAAAAAAAAAAAAAAAA", attachments={}
    )
    assert TAGS.mismatches(other) == ["data", f"attachment:{ATT}"]


# --- build, sign, parse, verify -----------------------------------------------------------------


@pytest.mark.parametrize("event", list(Event))
def test_build_sign_parse_verify_every_event(event: Event) -> None:
    clock = ManualClock(T0)
    token = make_set(event, clock=clock)
    iss, key, kid = issuer_for(event)
    st = verify_set_with_jwks(
        token,
        jwks_of(key, kid),
        expected_subject=(
            reply_subject(REPLY) if event.is_reply_event else submission_subject(SUB)
        ),
        expected_case_id=CASE,
        expected_issuer=iss,
    )
    assert st.event is event
    assert st.kid == kid
    assert st.issuer == iss
    assert st.issued_at == int(T0.timestamp())
    assert st.case_id == CASE
    assert st.txn == f"case:{CASE}"
    assert st.schema == SET_PAYLOAD_SCHEMA_DEFAULT
    assert st.header == {"typ": "secevent+jwt", "alg": "PS512", "kid": kid}
    assert list(st.claims) == ["$schema", "jti", "iss", "iat", "sub", "txn", "events"]
    if event.is_reply_event:
        assert (st.reply_id, st.submission_id) == (REPLY, None)
    else:
        assert (st.submission_id, st.reply_id) == (SUB, None)
    expected_payload = payload_for(event)
    if "authenticationTags" in expected_payload:
        assert st.authentication_tags == TAGS
    else:
        assert st.authentication_tags is None
    if "problems" in expected_payload:
        assert [p.type for p in st.problems] == [RejectProblems.HASH_MISMATCH.type_uri]
        assert st.problems[0].instance == "data"
    if "notifyType" in expected_payload:
        assert st.notify_type is NotifyType(expected_payload["notifyType"])
    assert st.issued_by_destination is (iss == DEST)
    assert st.issued_by_zustelldienst is (iss == ZD)
    # Verification with the bare key gives the same result.
    assert verify_set(token, key.public_key()) == st


def test_set_payload_is_compact_json() -> None:
    token = make_set(Event.ACCEPT_SUBMISSION)
    payload = b64url_decode(token.split(".")[1])
    assert payload == dumps_compact(parse_set(token).claims)
    assert b": " not in payload
    assert b", " not in payload


def test_schema_kept_for_empty_payload_and_omittable() -> None:
    claims = build_set_claims(
        Event.CREATE_SUBMISSION, issuer=ZD, subject=submission_subject(SUB), case_id=CASE
    )
    assert claims["$schema"] == SET_PAYLOAD_SCHEMA_DEFAULT
    assert claims["events"] == {Event.CREATE_SUBMISSION.value: {}}
    claims = build_set_claims(
        Event.CREATE_SUBMISSION,
        issuer=ZD,
        subject=submission_subject(SUB),
        case_id=CASE,
        schema=None,
        jti="4AC47CAA-BCE1-435A-B04F-3322B224B32E",
    )
    assert "$schema" not in claims
    assert claims["jti"] == "4ac47caa-bce1-435a-b04f-3322b224b32e"
    assert parse_set(sign_set(claims, zd_key(), ZD_KID)).schema is None


@pytest.mark.parametrize(
    ("event", "kwargs", "message"),
    [
        (Event.ACCEPT_SUBMISSION, {"payload": {}}, "lacks"),
        (Event.SUBMIT_SUBMISSION, {"payload": {}}, "lacks"),
        (Event.NOTIFY_SUBMISSION, {"payload": {}}, "lacks"),
        (Event.NOTIFY_SUBMISSION, {"payload": {"notifyType": "email"}}, "notifyType"),
        (Event.REJECT_SUBMISSION, {"payload": {"problems": []}}, "at least one problem"),
        (Event.REJECT_SUBMISSION, {"payload": {"problems": [{"title": "x"}]}}, "problems"),
        (Event.CREATE_SUBMISSION, {"payload": {"x": 1}}, "unknown members"),
        (Event.ACCEPT_SUBMISSION, {"issuer": ZD}, "issued by a destination id"),
        (Event.CREATE_SUBMISSION, {"issuer": DEST}, "issued by a Zustelldienst URL"),
        (Event.CREATE_SUBMISSION, {"issuer": "zd.example"}, "'iss'"),
        (Event.CREATE_SUBMISSION, {"subject": f"reply:{REPLY}"}, "cannot have subject"),
        (Event.CREATE_REPLY, {}, "cannot have subject"),
        (Event.CREATE_SUBMISSION, {"subject": "submission:x"}, "'sub'"),
        (Event.CREATE_SUBMISSION, {"schema": "https://example.com/s.json"}, "schema"),
        (
            Event.CREATE_SUBMISSION,
            {
                "schema": "https://schema.fitko.de/fit-connect/set-payload/1.7.0/set-payload.schema.json"
            },
            "not an accepted version",
        ),
        (Event.CREATE_SUBMISSION, {"jti": "x"}, "'jti'"),
    ],
)
def test_build_refuses_invalid_sets(event: Event, kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "issuer": issuer_for(event)[0],
        "subject": submission_subject(SUB),
        "case_id": CASE,
        "payload": payload_for(event),
    }
    args.update(kwargs)
    with pytest.raises(SetError, match=message):
        build_set_claims(event, **args)


def test_build_refuses_bad_case_and_clock_sets_iat() -> None:
    with pytest.raises(FormatError):
        build_set_claims(
            Event.CREATE_SUBMISSION, issuer=ZD, subject=submission_subject(SUB), case_id="x"
        )
    clock = ManualClock(T0)
    clock.advance(timedelta(days=14))
    claims = build_set_claims(
        Event.CREATE_SUBMISSION,
        issuer=ZD,
        subject=submission_subject(SUB),
        case_id=CASE,
        clock=clock,
    )
    assert claims["iat"] == int((T0 + timedelta(days=14)).timestamp())


def test_sign_set_checks_claims_and_kid() -> None:
    with pytest.raises(SetError, match="kid"):
        sign_set(good_claims(), zd_key(), "")
    with pytest.raises(SetError, match="exactly one event"):
        sign_set(good_claims(events={}), zd_key(), ZD_KID)


# --- the real vector ----------------------------------------------------------------------------


def test_real_zustelldienst_set_verifies(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("zustelldienst-set.json")
    expected = vector["expected_payload"]
    st = verify_set_with_jwks(
        vector["set_valid"],
        vector["jwks"],
        expected_subject=expected["sub"],
        expected_case_id=expected["txn"].removeprefix("case:"),
        expected_issuer=expected["iss"] + "/",
    )
    assert st.claims == expected
    assert st.event is Event.CREATE_SUBMISSION
    assert st.issued_by_zustelldienst
    assert st.submission_id == "5e82c135-a3b7-4eb0-bd83-6df337331170"
    assert st.case_id == "c9f0db91-9355-451a-b2a5-7a9be10ce765"
    assert st.kid == "32858147-f090-43a9-b2fd-d26ae5b41c03"
    assert st.payload == {}
    assert derive_state([st]).status is SubmissionStatus.INCOMPLETE


def test_set_signed_by_other_key_is_refused(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("zustelldienst-set.json")
    token = vector["set_signed_by_other_key"]
    parse_set(token)  # syntactically fine: pretty-printed, uppercase ids
    with pytest.raises(SetKeyNotFoundError, match="no key with kid"):
        verify_set_with_jwks(token, vector["jwks"])
    # Forced onto the JWKS key anyway, the signature does not verify.
    jwk = vector["jwks"]["keys"][0]
    with pytest.raises(SetKeyNotFoundError):
        verify_set(token, jwk)  # the JWK's kid differs from the SET's
    from fitconnect_kit.protocol.jose.jwk import public_key_from_jwk

    with pytest.raises(SignatureError):
        verify_set(token, public_key_from_jwk(jwk))


def test_jwks_with_wrong_alg_is_refused(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("zustelldienst-set.json")
    with pytest.raises(InvalidKeyError, match="PS256"):
        verify_set_with_jwks(vector["set_valid"], vector["jwks_wrong_alg"])


def test_expectation_mismatches(load_vector: Callable[[str], Any]) -> None:
    vector = load_vector("zustelldienst-set.json")
    token, jwks = vector["set_valid"], vector["jwks"]
    with pytest.raises(SetMismatchError, match="expected submission"):
        verify_set_with_jwks(token, jwks, expected_subject=submission_subject(SUB))
    with pytest.raises(SetMismatchError, match="expected reply"):
        verify_set_with_jwks(
            token, jwks, expected_subject="reply:5e82c135-a3b7-4eb0-bd83-6df337331170"
        )
    with pytest.raises(SetMismatchError, match="expected case"):
        verify_set_with_jwks(token, jwks, expected_case_id=CASE)
    with pytest.raises(SetMismatchError, match="expected"):
        verify_set_with_jwks(token, jwks, expected_issuer="https://other.example")
    verify_set_with_jwks(token, jwks, expected_case_id="case:c9f0db91-9355-451a-b2a5-7a9be10ce765")


# --- refusals -----------------------------------------------------------------------------------


def test_tampered_payload_is_refused() -> None:
    token = make_set(Event.ACCEPT_SUBMISSION)
    header, _payload, sig = token.split(".")
    claims = parse_set(token).claims
    claims["iat"] += 1
    forged = f"{header}.{b64url_encode(dumps_compact(claims))}.{sig}"
    parse_set(forged)
    with pytest.raises(SignatureError):
        verify_set_with_jwks(forged, jwks_of(dest_key(), DEST_KID))
    with pytest.raises(SignatureError):
        verify_set(token, zd_key().public_key())  # right token, wrong key


@pytest.mark.parametrize(
    ("header", "error", "message"),
    [
        ({"typ": "JWT", "alg": "PS512", "kid": ZD_KID}, SetError, "typ"),
        ({"alg": "PS512", "kid": ZD_KID}, SetError, "typ"),
        ({"typ": "application/secevent+jwt", "alg": "PS512", "kid": ZD_KID}, SetError, "typ"),
        ({"typ": "secevent+jwt", "alg": "PS512"}, SetError, "kid"),
        ({"typ": "secevent+jwt", "alg": "PS512", "kid": ""}, SetError, "kid"),
        ({"typ": "secevent+jwt", "alg": "PS512", "kid": 7}, SetError, "kid"),
    ],
)
def test_bad_headers_are_refused(
    header: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_set(raw_token(header, good_claims()))


@pytest.mark.parametrize("alg", ["PS256", "RS512", "none", "HS512"])
def test_other_algorithms_are_refused(alg: str) -> None:
    token = raw_token(HEADER, good_claims())
    header = b64url_encode(dumps_compact({"typ": "secevent+jwt", "alg": alg, "kid": ZD_KID}))
    forged = header + token[token.index(".") :]
    with pytest.raises(UnsupportedAlgorithmError):
        parse_set(forged)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"events": {}}, "exactly one event"),
        (
            {
                "events": {
                    Event.CREATE_SUBMISSION.value: {},
                    Event.SUBMIT_SUBMISSION.value: {},
                }
            },
            "exactly one event",
        ),
        ({"events": [Event.CREATE_SUBMISSION.value]}, "exactly one event"),
        ({"events": {EVENTS_BASE + "explode-submission": {}}}, "unknown event"),
        ({"events": {"create-submission": {}}}, "unknown event"),
        ({"events": {Event.CREATE_SUBMISSION.value: []}}, "must be an object"),
        ({"sub": SUB}, "'sub'"),
        ({"sub": "submission:1234"}, "'sub'"),
        ({"sub": f"case:{SUB}"}, "'sub'"),
        ({"txn": CASE}, "'txn'"),
        ({"txn": f"submission:{CASE}"}, "'txn'"),
        ({"jti": "not-a-uuid"}, "'jti'"),
        ({"iat": 1577833199}, "'iat'"),
        ({"iat": 1622796532.5}, "'iat'"),
        ({"iat": "1622796532"}, "'iat'"),
        ({"iat": True}, "'iat'"),
        ({"iss": "ftp://zd.example"}, "'iss'"),
        ({"iss": 5}, "'iss'"),
        ({"$schema": "https://example.com/set.json"}, r"'\$schema'"),
        ({"$schema": 1}, r"'\$schema'"),
    ],
)
def test_bad_claims_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SetError, match=message):
        parse_set(raw_token(HEADER, good_claims(**overrides)))


@pytest.mark.parametrize("missing", ["jti", "iss", "iat", "sub", "txn", "events"])
def test_missing_claims_are_refused(missing: str) -> None:
    claims = good_claims()
    del claims[missing]
    with pytest.raises(SetError, match=f"'{missing}' is missing"):
        parse_set(raw_token(HEADER, claims))


@pytest.mark.parametrize(
    ("event", "payload", "message"),
    [
        (Event.REJECT_SUBMISSION, {}, "lacks"),
        (Event.REJECT_SUBMISSION, {"problems": "x"}, "array"),
        (Event.REJECT_SUBMISSION, {"problems": [{"type": "urn:x"}]}, "title"),
        (Event.ACCEPT_SUBMISSION, {"authenticationTags": {"metadata": "x"}}, "22 base64url"),
        (Event.NOTIFY_REPLY, {}, "lacks"),
        (Event.NOTIFY_SUBMISSION, {"notifyType": "push"}, "notifyType"),
        (Event.ACCEPT_SUBMISSION, {"authenticationTags": TAGS.to_json(), "extra": 1}, "unknown"),
    ],
)
def test_bad_payloads_are_refused(event: Event, payload: dict[str, Any], message: str) -> None:
    iss = DEST if EVENT_RULES[event].issuer == "destination" else ZD
    sub = f"reply:{REPLY}" if event.is_reply_event else f"submission:{SUB}"
    claims = good_claims(iss=iss, sub=sub, events={event.value: payload})
    with pytest.raises(SetError, match=message):
        parse_set(raw_token(HEADER, claims))


def test_parse_tolerates_old_and_open_payloads() -> None:
    # Old ZD (< 1.2.0) submit-submission without tags; receiver accept without tags.
    parse_set(raw_token(HEADER, good_claims(events={Event.SUBMIT_SUBMISSION.value: {}})))
    parse_set(raw_token(HEADER, good_claims(iss=DEST, events={Event.ACCEPT_SUBMISSION.value: {}})))
    # Unconfirmed payloads are open; a reject's problems may have extension members.
    st = parse_set(
        raw_token(HEADER, good_claims(events={Event.DELETE_SUBMISSION.value: {"reason": "x"}}))
    )
    assert st.payload == {"reason": "x"}
    problem = {"type": "urn:x", "title": "T", "instance": "metadata", "traceId": "1"}
    st = parse_set(
        raw_token(
            HEADER, good_claims(events={Event.REJECT_SUBMISSION.value: {"problems": [problem]}})
        )
    )
    assert st.problems[0].extensions == {"traceId": "1"}


def test_malformed_tokens() -> None:
    for bad in ("", "a.b", "a.b.c.d", "!!!.e30.sig", b"\xff.a.b"):
        with pytest.raises(JoseError):
            parse_set(bad)
    token = make_set(Event.CREATE_SUBMISSION)
    header, _, sig = token.split(".")
    with pytest.raises(SetError, match="SET payload"):
        parse_set(f"{header}.{b64url_encode(b'not json')}.{sig}")
    assert parse_set(token.encode("ascii")).jti == parse_set("  " + token + "\n").jti


def test_verification_key_rules() -> None:
    token = make_set(Event.CREATE_SUBMISSION)
    jwk = jwks_of(zd_key(), ZD_KID)["keys"][0]
    verify_set(token, jwk)
    for change, message in [
        ({"key_ops": ["encrypt"]}, "key_ops"),
        ({"key_ops": None}, "key_ops"),
        ({"alg": None}, "alg"),
        ({"use": "enc"}, "use"),
    ]:
        bad = {k: v for k, v in {**jwk, **change}.items() if v is not None}
        with pytest.raises(InvalidKeyError, match=message):
            verify_set(token, bad)
    with pytest.raises(SetKeyNotFoundError):
        verify_set(token, {**jwk, "kid": "another"})
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(InvalidKeyError, match="bits"):
        verify_set(token, small.public_key())


# --- derive_state -------------------------------------------------------------------------------


def _log(
    *events: tuple[Event, dict[str, Any] | None], submission_id: str = SUB
) -> list[SecurityEventToken]:
    clock = ManualClock(T0)
    result = []
    for event, payload in events:
        result.append(
            parse_set(make_set(event, clock=clock, payload=payload, submission_id=submission_id))
        )
        clock.advance(timedelta(hours=1))
    return result


def test_derive_state_happy_path() -> None:
    log = _log(
        (Event.CREATE_SUBMISSION, None),
        (Event.SUBMIT_SUBMISSION, None),
    )
    state = derive_state(log)
    assert state.status is SubmissionStatus.SUBMITTED
    assert state.authentication_tags_sent == TAGS
    assert state.last_event is Event.SUBMIT_SUBMISSION
    log += _log((Event.NOTIFY_SUBMISSION, None))
    assert derive_state(log).status is SubmissionStatus.NOTIFIED
    log += _log((Event.ACCEPT_SUBMISSION, None))
    state = derive_state(log)
    assert state.status is SubmissionStatus.ACCEPTED
    assert state.is_final
    assert state.receiver_tags == TAGS
    assert state.tag_mismatches() == []
    assert state.problems == ()
    assert not state.content_deleted
    # Content deleted 7 days after pickup: the decision stays.
    log += _log((Event.DELETE_SUBMISSION, None))
    state = derive_state(log)
    assert state.status is SubmissionStatus.ACCEPTED
    assert state.content_deleted
    assert state.last_event is Event.DELETE_SUBMISSION


def test_derive_state_zustelldienst_reject_after_14_days_then_deletion() -> None:
    clock = ManualClock(T0)
    tokens = [make_set(Event.CREATE_SUBMISSION, clock=clock)]
    clock.advance(timedelta(minutes=5))
    tokens.append(make_set(Event.SUBMIT_SUBMISSION, clock=clock))
    clock.advance(timedelta(days=14))
    problem = reject_problem(RejectProblems.TECHNICAL_ERROR, None, "nicht abgeholt")
    tokens.append(
        make_set(Event.REJECT_SUBMISSION, clock=clock, issuer=ZD, payload={"problems": [problem]})
    )
    clock.advance(timedelta(days=7))
    tokens.append(make_set(Event.DELETE_SUBMISSION, clock=clock))
    jwks = jwks_of(zd_key(), ZD_KID)
    log = [verify_set_with_jwks(t, jwks, expected_subject=submission_subject(SUB)) for t in tokens]
    assert log[2].issued_by_zustelldienst
    assert log[2].issued_at - log[1].issued_at == 14 * 86400
    state = derive_state(log)
    assert state.status is SubmissionStatus.REJECTED
    assert state.content_deleted
    assert [p.type for p in state.problems] == [RejectProblems.TECHNICAL_ERROR.type_uri]
    assert state.receiver_tags is None  # the ZD is no receiver
    assert state.tag_mismatches() == []


def test_derive_state_receiver_reject_with_tag_mismatch() -> None:
    received = AuthenticationTags(
        metadata=TAGS.metadata, data="AAAAAAAAAAAAAAAAAAAAAA", attachments=TAGS.attachments
    )
    problems = [reject_problem(RejectProblems.INCORRECT_AUTHENTICATION_TAG, "data")]
    log = _log(
        (Event.CREATE_SUBMISSION, None),
        (Event.SUBMIT_SUBMISSION, None),
        (Event.REJECT_SUBMISSION, {"problems": problems, "authenticationTags": received}),
        # A later accept does not overturn the decision.
        (Event.ACCEPT_SUBMISSION, None),
    )
    state = derive_state(log)
    assert state.status is SubmissionStatus.REJECTED
    assert state.tag_mismatches() == ["data"]
    assert state.problems[0].instance == "data"
    assert state.last_event is Event.ACCEPT_SUBMISSION


def test_derive_state_incomplete_deleted_and_forwarded() -> None:
    assert derive_state([]).status is SubmissionStatus.INCOMPLETE
    assert derive_state([]).last_event is None
    state = derive_state(_log((Event.CREATE_SUBMISSION, None), (Event.DELETE_SUBMISSION, None)))
    assert state.status is SubmissionStatus.DELETED
    assert state.content_deleted
    assert state.is_final
    log = _log(
        (Event.CREATE_SUBMISSION, None),
        (Event.SUBMIT_SUBMISSION, None),
        (Event.FORWARD_SUBMISSION, None),
        (Event.NOTIFY_SUBMISSION, {"notifyType": "callback"}),  # late notify keeps forwarded
    )
    state = derive_state(log)
    assert state.status is SubmissionStatus.FORWARDED
    assert state.receiver_tags == TAGS


def test_derive_state_picks_one_submission_of_a_case() -> None:
    log = _log((Event.CREATE_SUBMISSION, None), (Event.SUBMIT_SUBMISSION, None))
    other = _log((Event.CREATE_SUBMISSION, None), submission_id=SUB2)
    replies = _log((Event.CREATE_REPLY, None))
    with pytest.raises(SetError, match="several submissions"):
        derive_state(log + other)
    assert derive_state(log + other + replies, submission_id=SUB).status is (
        SubmissionStatus.SUBMITTED
    )
    assert derive_state(other + replies, submission_id=SUB2.upper()).status is (
        SubmissionStatus.INCOMPLETE
    )
    assert derive_state(log + replies).status is SubmissionStatus.SUBMITTED


def test_check_postable() -> None:
    for event in RECEIVER_EVENTS:
        check_postable(parse_set(make_set(event)))
    with pytest.raises(SetError, match="cannot be posted"):
        check_postable(parse_set(make_set(Event.SUBMIT_SUBMISSION)))
    with pytest.raises(SetError, match="destination id"):
        check_postable(parse_set(make_set(Event.REJECT_SUBMISSION, issuer=ZD)))
    no_tags = raw_token(HEADER, good_claims(iss=DEST, events={Event.ACCEPT_SUBMISSION.value: {}}))
    with pytest.raises(SetError, match="lacks"):
        check_postable(parse_set(no_tags))
    empty = raw_token(
        HEADER, good_claims(iss=DEST, events={Event.REJECT_SUBMISSION.value: {"problems": []}})
    )
    with pytest.raises(SetError, match="at least one problem"):
        check_postable(parse_set(empty))
    old_schema = raw_token(
        HEADER,
        good_claims(
            iss=DEST,
            events={Event.ACCEPT_SUBMISSION.value: {"authenticationTags": TAGS.to_json()}},
            **{
                "$schema": "https://schema.fitko.de/fit-connect/set-payload/1.5.0/set-payload.schema.json"
            },
        ),
    )
    with pytest.raises(SetError, match="not supported"):
        check_postable(parse_set(old_schema))
