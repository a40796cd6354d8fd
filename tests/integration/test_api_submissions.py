"""Submission API v1, submissions: announce, upload (streamed), submit, list, fetch, download.

One live server per backend for the whole module (``shared_live_server``); every test creates its
own submissions (and, where it needs them, its own clients and destinations) and fresh tokens.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from fitconnect_kit.protocol import events
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.server.domain.content import delete_submission_content
from fitconnect_kit.server.storage.blobs import FileBlobStore
from fitconnect_kit.server.storage.models import (
    Attachment,
    Blob,
    CallbackDelivery,
    Submission,
)
from fitconnect_kit.server.storage.models import Event as EventRow
from tests.integration.conftest import StartServer
from tests.support.live import LiveServer
from tests.support.seed import (
    ClientCredentials,
    SeededDestination,
    announce_body,
    assert_problem,
    encrypt_for,
    jose_headers,
    last_segment,
    receiver_set,
    send_submission,
    service,
    shared_live_server,
)

MAX_ATTACHMENT = 4_000_000
MAX_SUBMISSION = 6_000_000


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = {
        "limits": {"max_attachment_size": MAX_ATTACHMENT, "max_submission_size": MAX_SUBMISSION}
    }
    with shared_live_server(request.param, tmp_path_factory.mktemp("zd"), **settings) as server:
        yield server


@dataclass(frozen=True)
class World:
    dest: SeededDestination
    other_dest: SeededDestination
    sender: ClientCredentials
    other_sender: ClientCredentials
    subscriber: ClientCredentials
    other_subscriber: ClientCredentials


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    seed = live.seed
    dest = seed.destination(
        services=[
            service(),
            service("99123456760611", regions=["DE0937"]),
            service("99123456760612", regions=[]),
        ]
    )
    other = seed.destination()
    return World(
        dest=dest,
        other_dest=other,
        sender=seed.sender(),
        other_sender=seed.sender(),
        subscriber=seed.subscriber(dest.destination_id),
        other_subscriber=seed.subscriber(other.destination_id),
    )


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture
def sender(live: LiveServer, world: World) -> dict[str, str]:
    return live.seed.auth(world.sender)


@pytest.fixture
def subscriber(live: LiveServer, world: World) -> dict[str, str]:
    return live.seed.auth(world.subscriber)


def _events_of(http: httpx.Client, auth: dict[str, str], submission_id: str) -> list[str]:
    response = http.get(f"/v1/submissions/{submission_id}/events", headers=auth)
    assert response.status_code == 200, response.text
    return [events.parse_set(t).event.short_name for t in response.json()["eventLog"]]


def _row(live: LiveServer, submission_id: str) -> Submission:
    async def load() -> Submission:
        async with live.zd.sessions() as session:
            row = await session.get(Submission, submission_id)
            assert row is not None
            return row

    return live.run(load())


def _count(live: LiveServer, statement: Any) -> int:
    async def run() -> int:
        async with live.zd.sessions() as session:
            return int(await session.scalar(statement) or 0)

    return live.run(run())


def _stored_blobs(live: LiveServer, submission_id: str) -> int:
    """Blobs of a submission (PostgreSQL store) or all blob files (file store)."""
    store = live.zd.blobs
    if isinstance(store, FileBlobStore):
        root = Path(store.root)
        return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    return _count(
        live,
        select(func.count())
        .select_from(Blob)
        .where(Blob.blob_key.like(f"submissions/{submission_id}/%")),
    )


def _announce(
    http: httpx.Client, auth: dict[str, str], dest: SeededDestination, *ids: str, **extra: Any
) -> dict[str, Any]:
    response = http.post(
        "/v1/submissions", json=announce_body(dest.destination_id, ids, **extra), headers=auth
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- announce --------------------------------------------------------------------------------


def test_announce_creates_an_incomplete_submission_in_a_new_case(
    live: LiveServer, world: World, http: httpx.Client, sender: dict[str, str]
) -> None:
    attachment_ids = [new_id(), new_id()]
    response = http.post(
        "/v1/submissions",
        json=announce_body(world.dest.destination_id, attachment_ids),
        headers=sender,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"destinationId", "submissionId", "caseId"}
    assert body["destinationId"] == world.dest.destination_id
    assert response.headers["location"] == f"{live.base_url}/v1/submissions/{body['submissionId']}"
    row = _row(live, body["submissionId"])
    assert row.status == "incomplete"
    assert row.announced_attachments == attachment_ids
    assert row.sender_client_id == world.sender.client_id
    assert _events_of(http, sender, body["submissionId"]) == ["create-submission"]

    # A second submission in the same case; the case log holds both.
    again = _announce(http, sender, world.dest, caseId=body["caseId"])
    assert again["caseId"] == body["caseId"]
    assert again["submissionId"] != body["submissionId"]
    log = http.get(f"/v1/cases/{body['caseId']}/events", headers=sender).json()
    assert log["totalCount"] == 2
    subjects = {events.parse_set(t).submission_id for t in log["eventLog"]}
    assert subjects == {body["submissionId"], again["submissionId"]}


def test_announce_accepts_callbacks_and_narrowed_region_scopes(
    live: LiveServer, world: World, http: httpx.Client
) -> None:
    narrowed = live.seed.auth(world.sender, scope="send:region:DE0937")
    body = _announce(
        http,
        narrowed,
        world.dest,
        callback={"url": "http://127.0.0.1:9/callbacks", "secret": "s3cr3t-callback-value"},
    )
    row = _row(live, body["submissionId"])
    assert row.sender_callback_url == "http://127.0.0.1:9/callbacks"
    # The service of region DE0937 is covered too; a service without regions needs send:region:DE.
    _announce(http, narrowed, world.dest, service_identifier="99123456760611")
    response = http.post(
        "/v1/submissions",
        json=announce_body(world.dest.destination_id, service_identifier="99123456760612"),
        headers=narrowed,
    )
    assert_problem(response, 403, "forbidden")
    _announce(http, live.seed.auth(world.sender), world.dest, service_identifier="99123456760612")


def test_announce_refusals(
    live: LiveServer, world: World, http: httpx.Client, sender: dict[str, str]
) -> None:
    dest_id = world.dest.destination_id

    def post(body: Any, headers: dict[str, str] = sender) -> httpx.Response:
        return http.post("/v1/submissions", json=body, headers=headers)

    problem = assert_problem(post(announce_body(new_id())), 404, "destination-not-found")
    assert "not found" in problem["detail"]
    problem = assert_problem(
        post(announce_body(dest_id, service_identifier="99000000000000")),
        422,
        "service-type-mismatch",
    )
    assert "urn:de:fim:leika:leistung:99000000000000" in problem["detail"]
    duplicate = new_id()
    problem = assert_problem(
        post(announce_body(dest_id, [duplicate, new_id(), duplicate])),
        422,
        "duplicate-attachment-ids",
    )
    assert duplicate in problem["detail"]
    assert problem["violations"][0]["path"] == "$.announcedAttachments"
    problem = assert_problem(
        post(announce_body(dest_id, [new_id() for _ in range(101)])), 422, "too-many-attachments"
    )
    assert "101" in problem["detail"]
    assert "100" in problem["detail"]
    not_v4 = "ce75a6b8-d72f-1b94-b09e-af6be35bc2ae"
    problem = assert_problem(post(announce_body(dest_id, [not_v4])), 422, "invalid-request-body")
    assert problem["violations"][0]["path"] == "$.announcedAttachments[0]"
    assert_problem(post({"destinationId": dest_id}), 422, "invalid-request-body")
    assert_problem(post(announce_body("not-a-uuid")), 422, "invalid-request-body")
    assert_problem(
        http.post(
            "/v1/submissions",
            content=b'{"destinationId": ',
            headers={**sender, "Content-Type": "application/json"},
        ),
        400,
        "malformed-request",
    )
    assert_problem(
        http.post(
            "/v1/submissions",
            content=b"destinationId=x",
            headers={**sender, "Content-Type": "text/plain"},
        ),
        415,
        "unsupported-media-type",
    )
    # Callbacks: HTTPS only (plain HTTP to loopback under the test policy), absolute URLs.
    for url in ("http://callbacks.example.org/cb", "ftp://127.0.0.1/cb"):
        assert_problem(
            post(announce_body(dest_id, callback={"url": url, "secret": "s3cr3t-value"})),
            422,
            "invalid-callback",
        )
    # Cases: unknown, of another sender, of another destination.
    assert_problem(post(announce_body(dest_id, caseId=new_id())), 404, "case-not-found")
    foreign = _announce(http, live.seed.auth(world.other_sender), world.dest)
    assert_problem(post(announce_body(dest_id, caseId=foreign["caseId"])), 404, "case-not-found")
    elsewhere = _announce(http, sender, world.other_dest)
    assert_problem(post(announce_body(dest_id, caseId=elsewhere["caseId"])), 404, "case-not-found")
    # Regions: a token for another Land.
    other_region = live.seed.sender(scopes=["send:region:DE01"])
    problem = assert_problem(
        post(announce_body(dest_id), live.seed.auth(other_region)), 403, "forbidden"
    )
    assert "DE09372126" in problem["detail"]


@pytest.mark.parametrize("status", ["inactive", "created"])
def test_announce_needs_an_active_destination(
    live: LiveServer, http: httpx.Client, sender: dict[str, str], status: str
) -> None:
    dest = live.seed.destination(status=status)
    problem = assert_problem(
        http.post("/v1/submissions", json=announce_body(dest.destination_id), headers=sender),
        422,
        "destination-state-invalid",
    )
    assert status in problem["detail"]


# --- upload ----------------------------------------------------------------------------------


def test_upload_streams_a_few_megabytes_in_odd_chunks(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    attachment_id = new_id()
    ids = _announce(http, sender, world.dest, attachment_id)
    jwe = encrypt_for(world.dest, os.urandom(2_500_000), "application/pdf").encode()
    assert 3_000_000 < len(jwe) < MAX_ATTACHMENT
    sizes = [1, 7, 8191, 65_537, 3, 250_001, 1_000_003]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        position, index = 0, 0
        while position < len(jwe):
            size = sizes[index % len(sizes)]
            yield jwe[position : position + size]
            position += size
            index += 1

    response = http.put(
        f"/v1/submissions/{ids['submissionId']}/attachments/{attachment_id}",
        content=chunks(),
        headers=jose_headers(sender),
    )
    assert response.status_code == 204, response.text
    assert response.content == b""

    async def stored() -> Attachment | None:
        async with live.zd.sessions() as session:
            return await session.get(Attachment, (ids["submissionId"], attachment_id))

    row = live.run(stored())
    assert row is not None
    assert row.size == len(jwe)
    assert row.authentication_tag == last_segment(jwe.decode())

    metadata = encrypt_for(world.dest, b"{}", "application/json")
    submitted = http.put(
        f"/v1/submissions/{ids['submissionId']}",
        json={"encryptedMetadata": metadata},
        headers=sender,
    )
    assert submitted.status_code == 202, submitted.text
    with http.stream(
        "GET",
        f"/v1/submissions/{ids['submissionId']}/attachments/{attachment_id}",
        headers=subscriber,
    ) as download:
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/jose"
        assert int(download.headers["content-length"]) == len(jwe)
        assert b"".join(download.iter_bytes()) == jwe


def test_upload_refusals(
    live: LiveServer, world: World, http: httpx.Client, sender: dict[str, str]
) -> None:
    announced = new_id()
    ids = _announce(http, sender, world.dest, announced)
    sid = ids["submissionId"]
    url = f"/v1/submissions/{sid}/attachments/{announced}"
    jwe = encrypt_for(world.dest, b"attachment")
    blobs_before = _stored_blobs(live, sid)

    # Not a JWE: nothing is stored, whether sent at once or in chunks.
    broken = [
        b"",
        b"a.b.c.d",
        jwe.rsplit(".", 1)[0].encode(),  # 4 segments
        jwe.encode() + b".x",  # 6 segments
        jwe.replace(jwe.split(".")[2], "!!!!", 1).encode(),  # bad IV
    ]
    for body in broken:
        problem = assert_problem(
            http.put(url, content=body, headers=jose_headers(sender)), 422, "invalid-jwe"
        )
        assert "JWE" in problem["detail"]
    chunked = iter([jwe[:500].encode(), b"%%%", jwe[500:].encode()])
    assert_problem(http.put(url, content=chunked, headers=jose_headers(sender)), 422, "invalid-jwe")
    weak = encrypt_for(world.dest, b"x")
    header = '{"alg":"RSA1_5","enc":"A256GCM","kid":"k"}'
    from fitconnect_kit.protocol.b64 import b64url_encode

    bad_alg = b64url_encode(header.encode()) + weak[weak.index(".") :]
    problem = assert_problem(
        http.put(url, content=bad_alg.encode(), headers=jose_headers(sender)), 422, "invalid-jwe"
    )
    assert "RSA-OAEP-256" in problem["detail"]
    assert _stored_blobs(live, sid) == blobs_before

    assert_problem(
        http.put(url, content=jwe.encode(), headers={**sender, "Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    assert_problem(
        http.put(
            f"/v1/submissions/{sid}/attachments/{new_id()}",
            content=jwe.encode(),
            headers=jose_headers(sender),
        ),
        404,
        "attachment-not-found",
    )
    assert_problem(
        http.put(
            f"/v1/submissions/{new_id()}/attachments/{announced}",
            content=jwe.encode(),
            headers=jose_headers(sender),
        ),
        404,
        "submission-not-found",
    )
    # Another sender's submission looks exactly like an unknown one.
    problem = assert_problem(
        http.put(
            url, content=jwe.encode(), headers=jose_headers(live.seed.auth(world.other_sender))
        ),
        404,
        "submission-not-found",
    )
    assert sid in problem["detail"]
    assert_problem(
        http.put(
            f"/v1/submissions/{sid}/attachments/not-a-uuid",
            content=jwe.encode(),
            headers=jose_headers(sender),
        ),
        400,
        "malformed-request",
    )

    assert http.put(url, content=jwe.encode(), headers=jose_headers(sender)).status_code == 204
    assert_problem(
        http.put(url, content=jwe.encode(), headers=jose_headers(sender)),
        409,
        "attachment-already-uploaded",
    )
    metadata = encrypt_for(world.dest, b"{}")
    assert (
        http.put(
            f"/v1/submissions/{sid}", json={"encryptedMetadata": metadata}, headers=sender
        ).status_code
        == 202
    )
    problem = assert_problem(
        http.put(url, content=jwe.encode(), headers=jose_headers(sender)),
        409,
        "submission-state-invalid",
    )
    assert "submitted" in problem["detail"]


def _raw_put(
    live: LiveServer,
    path: str,
    auth: dict[str, str],
    *,
    declared: int | None = None,
    chunks: Sequence[bytes] = (),
) -> httpx.Response:
    """A PUT on a raw socket: the headers, then only ``chunks`` of the body (chunked transfer
    unless a Content-Length is ``declared``), then the answer is read.

    Refusals of over-long bodies are tested this way without racing the server: it answers
    and closes before the whole body is sent, and unread data would reset the connection.
    """
    lines = [
        f"PUT {path} HTTP/1.1",
        f"Host: 127.0.0.1:{live.port}",
        "Content-Type: application/jose",
        *(f"{name}: {value}" for name, value in auth.items()),
        f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked",
    ]
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in chunks:
            sock.sendall(chunk if declared is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
        data = b""
        while b"\r\n\r\n" not in data:
            received = sock.recv(65536)
            assert received, data
            data += received
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines)
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            received = sock.recv(65536)
            assert received, body
            body += received
    return httpx.Response(
        int(status_line.split(" ")[1]),
        headers=headers,
        content=body[:length],
        request=httpx.Request("PUT", live.url(path)),
    )


def test_upload_size_limits(start_server: StartServer) -> None:
    live = start_server(limits={"max_attachment_size": 40_000, "max_submission_size": 60_000})
    dest = live.seed.destination()
    auth = live.seed.auth(live.seed.sender())
    first, second = new_id(), new_id()
    with live.client() as http:
        ids = _announce(http, auth, dest, first, second)
    sid = ids["submissionId"]
    first_url = f"/v1/submissions/{sid}/attachments/{first}"
    second_url = f"/v1/submissions/{sid}/attachments/{second}"

    def jwe_of(size: int) -> bytes:
        return encrypt_for(dest, os.urandom(size)).encode()

    big = jwe_of(35_000)  # ~47 KB as JWE
    # Declared too large: refused up front, before any byte of the body.
    problem = assert_problem(
        _raw_put(live, first_url, auth, declared=len(big)), 413, "attachment-too-large"
    )
    assert "40000" in problem["detail"]
    # Streamed (chunked): refused as soon as the limit is passed.
    streamed = _raw_put(live, first_url, auth, chunks=[big[:39_990], big[39_990:40_010]])
    assert_problem(streamed, 413, "attachment-too-large")

    fits = jwe_of(25_000)  # ~34 KB; two of them exceed the 60 KB of the submission
    with live.client() as http:
        ok = http.put(first_url, content=fits, headers=jose_headers(auth))
    assert ok.status_code == 204, ok.text
    problem = assert_problem(
        _raw_put(live, second_url, auth, declared=len(fits)), 413, "submission-too-large"
    )
    assert "60000" in problem["detail"]
    room = 60_000 - len(fits)
    streamed = _raw_put(
        live, second_url, auth, chunks=[fits[: room - 10], fits[room - 10 : room + 10]]
    )
    assert_problem(streamed, 413, "submission-too-large")
    assert _count(live, select(func.count()).select_from(Attachment)) == 1
    assert _stored_blobs(live, sid) == 1  # nothing of the refused uploads remains
    # A small one still fits.
    with live.client() as http:
        small = http.put(second_url, content=jwe_of(100), headers=jose_headers(auth))
    assert small.status_code == 204, small.text


def _concurrently(calls: list[Any]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(calls))

    def run(call: Any) -> httpx.Response:
        barrier.wait()
        response: httpx.Response = call()
        return response

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_concurrent_uploads_and_submits_do_not_both_succeed(
    live: LiveServer, world: World, sender: dict[str, str]
) -> None:
    attachment_id = new_id()
    with live.client() as http:
        ids = _announce(http, sender, world.dest, attachment_id)
    sid = ids["submissionId"]
    # Small bodies: a loser refused before its body is read must not leave unread data behind.
    bodies = [encrypt_for(world.dest, os.urandom(1_500)).encode() for _ in range(4)]
    blobs_before = _stored_blobs(live, sid)

    def upload(body: bytes) -> Any:
        def call() -> httpx.Response:
            with live.client() as client:
                return client.put(
                    f"/v1/submissions/{sid}/attachments/{attachment_id}",
                    content=body,
                    headers=jose_headers(sender),
                )

        return call

    statuses = sorted(r.status_code for r in _concurrently([upload(b) for b in bodies]))
    assert statuses == [204, 409, 409, 409]

    async def stored() -> tuple[str, int]:
        async with live.zd.sessions() as session:
            rows = list(
                await session.scalars(select(Attachment).where(Attachment.submission_id == sid))
            )
        assert len(rows) == 1
        data = b"".join([chunk async for chunk in live.zd.blobs.read(rows[0].blob_key)])
        return rows[0].authentication_tag, bodies.index(data)

    tag, winner = live.run(stored())
    assert tag == last_segment(bodies[winner].decode())  # the recorded tag is the stored blob's
    assert _stored_blobs(live, sid) == blobs_before + 1  # the losers' blobs are gone

    metadata = encrypt_for(world.dest, b"{}")

    def submit() -> httpx.Response:
        with live.client() as client:
            return client.put(
                f"/v1/submissions/{sid}", json={"encryptedMetadata": metadata}, headers=sender
            )

    statuses = sorted(r.status_code for r in _concurrently([submit, submit, submit]))
    assert statuses == [202, 409, 409]
    with live.client() as http:
        assert _events_of(http, sender, sid) == ["create-submission", "submit-submission"]


# --- submit ----------------------------------------------------------------------------------


def test_submit_refusals(
    live: LiveServer, world: World, http: httpx.Client, sender: dict[str, str]
) -> None:
    first, second = new_id(), new_id()
    ids = _announce(http, sender, world.dest, first, second)
    sid = ids["submissionId"]
    metadata = encrypt_for(world.dest, b"{}")

    def put(body: Any, auth: dict[str, str] = sender, target: str = sid) -> httpx.Response:
        return http.put(f"/v1/submissions/{target}", json=body, headers=auth)

    problem = assert_problem(put({"encryptedMetadata": metadata}), 409, "missing-attachments")
    assert first in problem["detail"]
    assert second in problem["detail"]
    assert problem["missingAttachments"] == [first, second]
    for attachment_id in (first, second):
        uploaded = http.put(
            f"/v1/submissions/{sid}/attachments/{attachment_id}",
            content=encrypt_for(world.dest, b"a").encode(),
            headers=jose_headers(sender),
        )
        assert uploaded.status_code == 204
    problem = assert_problem(put({"encryptedMetadata": "a.b.c.d.e"}), 422, "invalid-jwe")
    assert problem["detail"].startswith("encryptedMetadata")
    problem = assert_problem(
        put({"encryptedMetadata": metadata, "encryptedData": metadata[:-3]}), 422, "invalid-jwe"
    )
    assert problem["detail"].startswith("encryptedData")
    assert_problem(put({"encryptedData": metadata}), 422, "invalid-request-body")
    assert_problem(put({"encryptedMetadata": ""}), 422, "invalid-request-body")
    assert_problem(
        put({"encryptedMetadata": metadata}, live.seed.auth(world.other_sender)),
        404,
        "submission-not-found",
    )
    assert_problem(
        put({"encryptedMetadata": metadata}, target=new_id()), 404, "submission-not-found"
    )
    assert_problem(put({"encryptedMetadata": metadata}, target="nope"), 400, "malformed-request")

    # Without encryptedData (optional): the tags have no "data".
    submitted = put({"encryptedMetadata": metadata, "encryptedData": None})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json() == ids
    problem = assert_problem(put({"encryptedMetadata": metadata}), 409, "submission-state-invalid")
    assert "submitted" in problem["detail"]
    log = http.get(f"/v1/submissions/{sid}/events", headers=sender).json()["eventLog"]
    tags = events.parse_set(log[-1]).payload["authenticationTags"]
    assert set(tags) == {"metadata", "attachments"}
    assert set(tags["attachments"]) == {first, second}


def test_submit_enqueues_new_submissions_for_the_destination_callback(
    live: LiveServer, http: httpx.Client, sender: dict[str, str]
) -> None:
    dest = live.seed.destination(
        callback_url="https://fachverfahren.example/callbacks", callback_secret="cb-secret-123456"
    )
    sent = send_submission(http, sender, dest, attachments=0)

    async def deliveries() -> list[tuple[str, str]]:
        async with live.zd.sessions() as session:
            rows = await session.execute(
                select(CallbackDelivery.kind, CallbackDelivery.target_url).where(
                    CallbackDelivery.submission_id == sent.submission_id
                )
            )
            return [(r.kind, r.target_url) for r in rows]

    assert live.run(deliveries()) == [
        ("new-submissions", "https://fachverfahren.example/callbacks")
    ]


# --- subscriber: list, fetch, download ----------------------------------------------------------


def test_list_waiting_submissions_in_arrival_order_with_paging(
    live: LiveServer, http: httpx.Client, sender: dict[str, str]
) -> None:
    dest_a, dest_b = live.seed.destination(), live.seed.destination()
    subscriber = live.seed.subscriber(dest_a.destination_id, dest_b.destination_id)
    auth = live.seed.auth(subscriber)
    sent = []
    for dest in (dest_a, dest_b, dest_a):
        sent.append(send_submission(http, sender, dest, attachments=0))
        live.manual_clock.advance(1)
    send_submission(http, sender, dest_a, attachments=0, submit=False)  # incomplete: not listed

    everything = http.get("/v1/submissions", headers=auth)
    assert everything.status_code == 200
    body = everything.json()
    assert body["totalCount"] == 3
    assert body["count"] == 3
    assert body["offset"] == 0
    assert [s["submissionId"] for s in body["submissions"]] == [s.submission_id for s in sent]
    assert body["submissions"][0] == {
        "destinationId": sent[0].destination_id,
        "submissionId": sent[0].submission_id,
        "caseId": sent[0].case_id,
    }
    only_a = http.get(
        "/v1/submissions", params={"destinationId": dest_a.destination_id}, headers=auth
    ).json()
    assert [s["submissionId"] for s in only_a["submissions"]] == [
        sent[0].submission_id,
        sent[2].submission_id,
    ]
    page = http.get("/v1/submissions", params={"offset": 1, "limit": 1}, headers=auth).json()
    assert page == {
        "count": 1,
        "offset": 1,
        "totalCount": 3,
        "submissions": [
            {
                "destinationId": sent[1].destination_id,
                "submissionId": sent[1].submission_id,
                "caseId": sent[1].case_id,
            }
        ],
    }
    assert_problem(
        http.get("/v1/submissions", params={"limit": 501}, headers=auth), 400, "malformed-request"
    )
    assert_problem(
        http.get("/v1/submissions", params={"offset": -1}, headers=auth), 400, "malformed-request"
    )
    problem = assert_problem(
        http.get("/v1/submissions", params={"destinationId": new_id()}, headers=auth),
        403,
        "forbidden",
    )
    assert "not linked" in problem["detail"]

    # Listing counted as notification: one notify-submission (polling) per submission, once.
    for item in sent:
        names = _events_of(http, sender, item.submission_id)
        assert names == ["create-submission", "submit-submission", "notify-submission"]
        token = http.get(f"/v1/submissions/{item.submission_id}/events", headers=sender).json()[
            "eventLog"
        ][-1]
        assert events.parse_set(token).payload == {"notifyType": "polling"}

    # Accepted submissions no longer wait.
    accept = receiver_set(
        dest_a,
        events.Event.ACCEPT_SUBMISSION.value,
        submission_id=sent[0].submission_id,
        case_id=sent[0].case_id,
        payload={"authenticationTags": sent[0].tags},
        clock=live.clock,
    )
    posted = http.post(
        f"/v1/cases/{sent[0].case_id}/events", content=accept, headers=jose_headers(auth)
    )
    assert posted.status_code == 204, posted.text
    remaining = http.get("/v1/submissions", headers=auth).json()
    assert [s["submissionId"] for s in remaining["submissions"]] == [
        sent[1].submission_id,
        sent[2].submission_id,
    ]


def test_fetch_submission_marks_pickup_and_notifies_once(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest, attachments=2)
    assert _row(live, sent.submission_id).first_fetched_at is None
    response = http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "destinationId": world.dest.destination_id,
        "submissionId": sent.submission_id,
        "caseId": sent.case_id,
        "serviceType": {
            "name": "Testleistung",
            "identifier": "urn:de:fim:leika:leistung:99123456760610",
        },
        "attachments": list(sent.attachments),
        "encryptedMetadata": sent.encrypted_metadata,
        "encryptedData": sent.encrypted_data,
    }
    fetched_at = _row(live, sent.submission_id).first_fetched_at
    assert fetched_at == live.clock.now()
    live.manual_clock.advance(60)
    assert http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber).status_code == 200
    assert _row(live, sent.submission_id).first_fetched_at == fetched_at
    assert _events_of(http, sender, sent.submission_id).count("notify-submission") == 1
    for attachment_id, jwe in sent.attachments.items():
        download = http.get(
            f"/v1/submissions/{sent.submission_id}/attachments/{attachment_id}",
            headers=subscriber,
        )
        assert download.status_code == 200
        assert download.text == jwe

    assert_problem(
        http.get(
            f"/v1/submissions/{sent.submission_id}/attachments/{new_id()}", headers=subscriber
        ),
        404,
        "attachment-not-found",
    )
    other = live.seed.auth(world.other_subscriber)
    for path in (
        f"/v1/submissions/{sent.submission_id}",
        f"/v1/submissions/{sent.submission_id}/attachments/{next(iter(sent.attachments))}",
        f"/v1/submissions/{new_id()}",
    ):
        assert_problem(http.get(path, headers=other), 404, "submission-not-found")
    incomplete = send_submission(http, sender, world.dest, attachments=0, submit=False)
    assert_problem(
        http.get(f"/v1/submissions/{incomplete.submission_id}", headers=subscriber),
        404,
        "submission-not-found",
    )


def test_deleted_content_can_no_longer_be_fetched(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest, attachments=1)

    async def delete_content() -> None:
        async with live.zd.sessions() as session:
            row = await session.get(Submission, sent.submission_id)
            assert row is not None
            await delete_submission_content(session, live.zd, row)
            await session.commit()

    live.run(delete_content())
    problem = assert_problem(
        http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber),
        409,
        "submission-state-invalid",
    )
    assert "can no longer be fetched" in problem["detail"]
    assert_problem(
        http.get(
            f"/v1/submissions/{sent.submission_id}/attachments/{next(iter(sent.attachments))}",
            headers=subscriber,
        ),
        409,
        "submission-state-invalid",
    )
    listed = http.get("/v1/submissions", headers=subscriber).json()["submissions"]
    assert sent.submission_id not in {s["submissionId"] for s in listed}


def test_rejected_by_the_zustelldienst_after_14_days(
    live: LiveServer, world: World, http: httpx.Client
) -> None:
    # Runs the deadlines worker: earlier submissions of this module may be rejected too, which
    # no other test relies on (every test sends its own).
    sender = live.seed.auth(world.sender)
    sent = send_submission(http, sender, world.dest, attachments=0)
    live.manual_clock.advance(timedelta(days=14, minutes=1))
    live.run_worker("deadlines")
    subscriber = live.seed.auth(world.subscriber)
    problem = assert_problem(
        http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber),
        409,
        "submission-state-invalid",
    )
    assert "rejected by the Zustelldienst" in problem["detail"]
    sender = live.seed.auth(world.sender)
    assert _events_of(http, sender, sent.submission_id)[-1] == "reject-submission"


# --- the whole flow ----------------------------------------------------------------------------


def test_full_flow_event_log_verifies(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest, attachments=2)
    listed = http.get("/v1/submissions", headers=subscriber).json()["submissions"]
    assert sent.submission_id in {s["submissionId"] for s in listed}
    fetched = http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber).json()
    received_tags = {
        "metadata": last_segment(fetched["encryptedMetadata"]),
        "data": last_segment(fetched["encryptedData"]),
        "attachments": {
            aid: last_segment(
                http.get(
                    f"/v1/submissions/{sent.submission_id}/attachments/{aid}", headers=subscriber
                ).text
            )
            for aid in fetched["attachments"]
        },
    }
    assert received_tags == sent.tags
    accept = receiver_set(
        world.dest,
        events.Event.ACCEPT_SUBMISSION.value,
        submission_id=sent.submission_id,
        case_id=sent.case_id,
        payload={"authenticationTags": received_tags},
        clock=live.clock,
    )
    posted = http.post(
        f"/v1/cases/{sent.case_id}/events", content=accept, headers=jose_headers(subscriber)
    )
    assert posted.status_code == 204, posted.text

    log = http.get(f"/v1/cases/{sent.case_id}/events", headers=sender).json()
    assert log["count"] == log["totalCount"] == 4
    assert log["offset"] == 0
    jwks = http.get("/.well-known/jwks.json").json()
    subject = events.submission_subject(sent.submission_id)
    verified = []
    for token in log["eventLog"]:
        st = events.parse_set(token)
        if st.issued_by_zustelldienst:
            verified.append(
                events.verify_set_with_jwks(
                    token,
                    jwks,
                    expected_subject=subject,
                    expected_case_id=sent.case_id,
                    expected_issuer=live.base_url,
                )
            )
        else:
            key = http.get(f"/v1/destinations/{st.issuer}/keys/{st.kid}").json()
            verified.append(
                events.verify_set(
                    token,
                    key,
                    expected_subject=subject,
                    expected_case_id=sent.case_id,
                    expected_issuer=world.dest.destination_id,
                )
            )
    assert [st.event for st in verified] == [
        events.Event.CREATE_SUBMISSION,
        events.Event.SUBMIT_SUBMISSION,
        events.Event.NOTIFY_SUBMISSION,
        events.Event.ACCEPT_SUBMISSION,
    ]
    assert verified[0].payload == {}
    assert verified[1].payload == {"authenticationTags": sent.tags}
    assert verified[2].payload == {"notifyType": "polling"}
    assert log["eventLog"][3] == accept  # stored exactly as posted
    state = events.derive_state(verified)
    assert state.status.value == "accepted"
    assert state.tag_mismatches() == []
    # The same log through the submission resource, and paged.
    by_submission = http.get(
        f"/v1/submissions/{sent.submission_id}/events", headers=subscriber
    ).json()
    assert by_submission["eventLog"] == log["eventLog"]
    page = http.get(
        f"/v1/cases/{sent.case_id}/events", params={"offset": 1, "limit": 2}, headers=sender
    ).json()
    assert page == {
        "eventLog": log["eventLog"][1:3],
        "count": 2,
        "offset": 1,
        "totalCount": 4,
    }
    row = _row(live, sent.submission_id)
    assert row.status == "accepted"
    assert row.decided_at == live.clock.now()
    assert (
        _count(
            live,
            select(func.count())
            .select_from(EventRow)
            .where(EventRow.submission_id == sent.submission_id),
        )
        == 4
    )
