"""The sync facade: same logic through a private event loop, also inside a running loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_client_fakes import (
    JSON_SCHEMA,
    SERVICE,
    SERVICE_NAME,
    FakeZustelldienst,
    RecordingSleep,
    credentials,
    environment,
)

from fitconnect_kit.client import Sender, SubmissionBuilder
from fitconnect_kit.client._sync import Portal, PortalClosedError, run_coroutine_sync
from fitconnect_kit.client.errors import NotFoundError, ServiceNotOfferedError
from fitconnect_kit.protocol.api import SubmissionStatus


def sync_sender(zd: FakeZustelldienst, **options: Any) -> Sender:
    return Sender(
        environment(),
        credentials(),
        transport=zd.transport(),
        clock=zd.clock,
        sleep=RecordingSleep(zd.clock),
        **options,
    )


def test_sync_send_status_and_wait() -> None:
    zd = FakeZustelldienst()
    progress_threads: set[str] = set()
    with sync_sender(zd) as sender:
        assert sender.environment.name == "unit"
        checked = sender.check_destination(zd.destination_id, service=SERVICE)
        assert checked.metadata_version == "1.2.0"
        sent = sender.send(
            SubmissionBuilder(zd.destination_id)
            .service(SERVICE, SERVICE_NAME)
            .json_data({"a": 1}, schema_uri=JSON_SCHEMA)
            .attachment(b"x" * 10, filename="x.txt")
            .build(),
            progress=lambda *_: progress_threads.add(threading.current_thread().name),
        )
        assert sender.status(sent).status is SubmissionStatus.SUBMITTED
        zd.accept(sent.submission_id)
        assert sender.wait(sent, timeout=5).accepted
        assert [e.name for e in sender.event_log(sent.case_id)][-1] == "accept-submission"
        report = sender.inspect_destination(zd.destination_id, service=SERVICE)
        assert report.ok
        assert sender.get_destination(zd.destination_id).destination_id == zd.destination_id
    assert progress_threads == {"fitconnect-kit-sender"}


def test_sync_errors_are_the_same_typed_errors() -> None:
    zd = FakeZustelldienst()
    with sync_sender(zd) as sender:
        with pytest.raises(ServiceNotOfferedError):
            sender.check_destination(zd.destination_id, service="99123456760610")
        with pytest.raises(NotFoundError):
            sender.get_destination("6f3c1f2e-3b7a-4c39-9b1e-0a1b2c3d4e5f")


async def test_sync_facade_works_inside_a_running_event_loop() -> None:
    zd = FakeZustelldienst()
    # Like a Jupyter cell: sync code called while this test's event loop is running.
    asyncio.get_running_loop()
    sender = sync_sender(zd)
    try:
        destination = sender.get_destination(zd.destination_id)
        assert destination.status.value == "active"
    finally:
        sender.close()


def test_closed_sender_refuses_calls_and_close_is_idempotent() -> None:
    zd = FakeZustelldienst()
    sender = sync_sender(zd)
    sender.close()
    sender.close()
    with pytest.raises(PortalClosedError, match="closed"):
        sender.get_destination(zd.destination_id)


def test_portal_iterates_async_iterators_and_runs_one_shots() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    portal = Portal()
    try:
        assert list(portal.iterate(numbers())) == [0, 1, 2]
        assert portal.call(asyncio.sleep(0, result="done")) == "done"
    finally:
        portal.close()
    assert portal.closed

    async def answer() -> int:
        return 42

    assert run_coroutine_sync(answer) == 42


def test_from_config_uses_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = tmp_path / ".fitconnect-dev" / "profile.json"
    profile.parent.mkdir()
    profile.write_text(
        '{"environment": "local", "submissionApiUrl": "http://127.0.0.1:1/v1",'
        ' "sender": {"clientId": "c", "clientSecret": "s"}}'
    )
    monkeypatch.chdir(tmp_path)
    for name in ("FITCONNECT_ENV", "FITCONNECT_PROFILE", "FITCONNECT_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    with Sender.from_config() as sender:
        assert sender.environment.submission_api_url == "http://127.0.0.1:1/v1"
        assert sender.profile is not None
        assert sender.profile.path == profile.resolve()
