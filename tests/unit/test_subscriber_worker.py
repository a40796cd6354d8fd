"""The subscriber worker: once per submission, across restarts at every step; wake-ups."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.test_subscriber_fakes import (
    SubscriberZD,
    base_plan,
    make_subscriber,
    send_plan,
)

from fitconnect_kit.client.callbacks import CallbackApp
from fitconnect_kit.client.schemas import SchemaRegistry
from fitconnect_kit.client.subscriber import ReceivedSubmission
from fitconnect_kit.client.worker import Accept, Reject, Stage, SubscriberWorker
from fitconnect_kit.protocol.callbacks import new_submissions_body, sign_callback
from fitconnect_kit.protocol.events import parse_set
from fitconnect_kit.protocol.problems import ApiProblems


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


class Handler:
    def __init__(self, result: Any = None, fail_times: int = 0) -> None:
        self.seen: list[str] = []
        self.result = result
        self.fail_times = fail_times

    def __call__(self, received: ReceivedSubmission) -> Any:
        self.seen.append(received.submission_id)
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("the application's database is down")
        return self.result


def worker_for(
    zd: SubscriberZD, tmp_path: Path, handler: Any = None, **options: Any
) -> SubscriberWorker:
    subscriber_options = options.pop("subscriber", {})
    return SubscriberWorker(
        make_subscriber(zd, **subscriber_options),
        handler,
        state_path=tmp_path / "state.sqlite3",
        out_dir=tmp_path / "inbox",
        **options,
    )


async def close(worker: SubscriberWorker) -> None:
    worker.close()
    await worker.subscriber.aclose()


def decisions(zd: SubscriberZD) -> list[tuple[str | None, str]]:
    return [(parse_set(t).submission_id, parse_set(t).event.short_name) for t in zd.posted_events]


async def test_each_pending_submission_is_decided_once(tmp_path: Path) -> None:
    zd = SubscriberZD()
    good = await send_plan(zd, base_plan(zd))
    bad = await send_plan(zd, base_plan(zd, wrong_data_hash=True))
    handler = Handler()
    worker = worker_for(zd, tmp_path, handler)
    report = await worker.run_once()
    assert (report.accepted, report.rejected) == ([good.submission_id], [bad.submission_id])
    assert handler.seen == [good.submission_id, bad.submission_id]
    assert sorted(decisions(zd)) == sorted(
        [(good.submission_id, "accept-submission"), (bad.submission_id, "reject-submission")]
    )
    again = await worker.run_once()
    assert again.processed == 0
    assert len(zd.posted_events) == 2
    records = {r.submission_id: r for r in worker.store.all()}
    assert {r.stage for r in records.values()} == {Stage.POSTED}
    assert (tmp_path / "inbox" / str(good.submission_id) / "antrag.pdf").is_file()
    await close(worker)


@pytest.mark.parametrize("crash_after", [Stage.FETCHED, Stage.HANDLED, Stage.DECIDED, Stage.POSTED])
async def test_a_restart_at_any_step_processes_the_submission_once(
    crash_after: Stage, tmp_path: Path
) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    handler = Handler()

    def crash(stage: Stage, submission_id: str) -> None:
        if stage is crash_after:
            raise Crash(stage)

    first = worker_for(zd, tmp_path, handler, on_step=crash)
    with pytest.raises(Crash):
        await first.run_once()
    record = first.store.get(built.submission_id or "")
    assert record is not None
    assert record.stage is crash_after
    await close(first)

    second = worker_for(zd, tmp_path, handler)  # a new process, same state file
    await second.run_once()
    await second.run_once()
    assert handler.seen == [built.submission_id]  # the handler ran exactly once
    assert decisions(zd) == [(built.submission_id, "accept-submission")]
    record = second.store.get(built.submission_id or "")
    assert record is not None
    assert record.stage is Stage.POSTED
    if crash_after is Stage.DECIDED:
        assert record.jti == parse_set(zd.posted_events[0]).jti  # the recorded SET was posted
    await close(second)


async def test_a_post_whose_answer_was_lost_is_not_repeated(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))

    def stored_then_lost(request: httpx.Request) -> httpx.Response:
        zd.route(request, request.content)  # the ZD stores the SET ...
        raise Crash("... and the process dies before it sees the answer")

    zd.inject("POST", r"/v1/cases/.*/events", stored_then_lost)
    handler = Handler()
    first = worker_for(zd, tmp_path, handler)
    with pytest.raises(Crash):
        await first.run_once()
    await close(first)
    second = worker_for(zd, tmp_path, handler)
    await second.run_once()
    assert handler.seen == [built.submission_id]
    assert decisions(zd) == [(built.submission_id, "accept-submission")]
    assert second.store.get(built.submission_id or "").stage is Stage.POSTED  # type: ignore[union-attr]
    await close(second)


async def test_handler_decisions(tmp_path: Path) -> None:
    zd = SubscriberZD()
    valid = await send_plan(zd, base_plan(zd))
    invalid = await send_plan(zd, base_plan(zd, wrong_data_hash=True))

    def handler(received: ReceivedSubmission) -> Any:
        if received.valid:
            return Reject(["technical-error"])  # the application refuses a valid one
        return Accept()  # overruled: an invalid submission is always rejected

    worker = worker_for(zd, tmp_path, handler)
    report = await worker.run_once()
    assert sorted(report.rejected) == sorted([valid.submission_id, invalid.submission_id])
    problems = {
        parse_set(t).submission_id: [p.type.rsplit("/", 1)[-1] for p in parse_set(t).problems]
        for t in zd.posted_events
    }
    assert problems == {
        valid.submission_id: ["technical-error"],
        invalid.submission_id: ["hash-mismatch"],
    }
    await close(worker)


async def test_async_handler_and_a_failing_handler_is_retried(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    handler = Handler(fail_times=1)
    worker = worker_for(zd, tmp_path, handler)
    report = await worker.run_once()
    assert report.failed == [built.submission_id]
    assert zd.posted_events == []
    record = worker.store.get(built.submission_id or "")
    assert record is not None
    assert record.stage is Stage.FETCHED
    assert record.attempts == 1
    assert "database is down" in (record.error or "")
    report = await worker.run_once()
    assert report.accepted == [built.submission_id]
    assert handler.seen == [built.submission_id, built.submission_id]
    await close(worker)

    zd2 = SubscriberZD()
    other = await send_plan(zd2, base_plan(zd2))
    seen: list[str] = []

    async def async_handler(received: ReceivedSubmission) -> None:
        seen.append(received.submission_id)

    worker = worker_for(zd2, tmp_path / "second", async_handler)
    assert (await worker.run_once()).accepted == [other.submission_id]
    assert seen == [other.submission_id]
    await close(worker)


async def test_a_local_configuration_problem_waits_for_the_fix(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    handler = Handler()
    worker = worker_for(zd, tmp_path, handler, subscriber={"schemas": SchemaRegistry()})
    report = await worker.run_once()
    assert report.waiting == [built.submission_id]
    assert handler.seen == []
    assert zd.posted_events == []
    await close(worker)
    fixed = worker_for(zd, tmp_path, handler)  # with the schemas configured
    assert (await fixed.run_once()).accepted == [built.submission_id]
    assert handler.seen == [built.submission_id]
    await close(fixed)


async def test_a_submission_that_is_gone_is_given_up(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    zd.inject(
        "GET",
        rf"/v1/submissions/{built.submission_id}",
        zd.problem(ApiProblems.SUBMISSION_NOT_FOUND),
    )
    worker = worker_for(zd, tmp_path)
    report = await worker.run_once()
    assert report.given_up == [built.submission_id]
    assert worker.store.get(built.submission_id or "").stage is Stage.FAILED  # type: ignore[union-attr]
    assert (await worker.run_once()).processed == 0
    await close(worker)


async def test_run_wakes_on_a_callback_and_stops_gracefully(tmp_path: Path) -> None:
    zd = SubscriberZD()
    handler = Handler()
    worker = worker_for(zd, tmp_path, handler, poll_interval=3600)
    secret = "worker-callback-secret"
    app = CallbackApp(secret, on_new_submissions=worker.notify)
    runner = asyncio.create_task(worker.run())
    await asyncio.sleep(0.05)  # the first (empty) pass
    built = await send_plan(zd, base_plan(zd))
    body = new_submissions_body(
        [
            {
                "destinationId": zd.destination_id,
                "submissionId": built.submission_id,
                "caseId": built.case_id,
            }
        ]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fv.test"
    ) as client:
        response = await client.post("/", content=body, headers=sign_callback(body, secret))
    assert response.status_code == 202
    for _ in range(200):
        if zd.posted_events:
            break
        await asyncio.sleep(0.02)
    assert decisions(zd) == [(built.submission_id, "accept-submission")]
    worker.stop()
    await asyncio.wait_for(runner, timeout=10)
    await close(worker)


async def test_run_ends_when_the_stop_event_is_set(tmp_path: Path) -> None:
    zd = SubscriberZD()
    worker = worker_for(zd, tmp_path, poll_interval=3600)
    stop = asyncio.Event()
    runner = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, timeout=10)
    await close(worker)


async def test_concurrent_passes_decide_each_submission_once(tmp_path: Path) -> None:
    zd = SubscriberZD()
    sent = [await send_plan(zd, base_plan(zd)) for _ in range(4)]
    bad = await send_plan(zd, base_plan(zd, wrong_data_hash=True))
    in_flight = 0
    most = 0
    seen: list[str] = []

    async def handler(received: ReceivedSubmission) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)  # the handlers overlap
        seen.append(received.submission_id)
        in_flight -= 1

    worker = worker_for(zd, tmp_path, handler, concurrency=3)
    report = await worker.run_once()
    assert sorted(report.accepted) == sorted(s.submission_id for s in sent)
    assert report.rejected == [bad.submission_id]
    assert most == 3  # never more than `concurrency` at once
    assert sorted(seen) == sorted([*(s.submission_id for s in sent), bad.submission_id])
    assert sorted(decisions(zd)) == sorted(
        [(s.submission_id, "accept-submission") for s in sent]
        + [(bad.submission_id, "reject-submission")]
    )
    assert (await worker.run_once()).processed == 0
    await close(worker)


async def test_a_crash_in_a_concurrent_pass_stops_it_and_is_raised(tmp_path: Path) -> None:
    zd = SubscriberZD()
    first_sent = await send_plan(zd, base_plan(zd))
    others = [await send_plan(zd, base_plan(zd)) for _ in range(3)]

    def crash(stage: Stage, submission_id: str) -> None:
        if stage is Stage.HANDLED and submission_id == first_sent.submission_id:
            raise Crash(stage)

    handler = Handler()
    worker = worker_for(zd, tmp_path, handler, on_step=crash, concurrency=2)
    with pytest.raises(Crash):
        await worker.run_once()
    await close(worker)
    # A restart finishes everything, each submission decided once.
    again = worker_for(zd, tmp_path, handler, concurrency=2)
    await again.run_once()
    every = [first_sent.submission_id, *(s.submission_id for s in others)]
    assert sorted(handler.seen) == sorted(every)
    assert sorted(decisions(zd)) == sorted((sid, "accept-submission") for sid in every)
    await close(again)


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        worker_for(SubscriberZD(), tmp_path, concurrency=0)
