"""The demo Fachverfahren of ``fitconnect dev``: receives, verifies, accepts or rejects.

Built only from the public subscriber SDK, as a real receiving system would be:

* :class:`~fitconnect_kit.client.subscriber.AsyncSubscriber` from the ``local`` profile (subscriber
  credentials, the destination's private keys from ``<data-dir>/keys/``, the destination id),
  with the demo Leistung's JSON Schema and XSD in its
  :class:`~fitconnect_kit.client.schemas.SchemaRegistry`;
* a :class:`~fitconnect_kit.client.worker.SubscriberWorker` that processes each submission once
  (state in ``<data-dir>/fachverfahren/state.sqlite3``, so a restart resumes where it stopped),
  stores it under ``<data-dir>/fachverfahren/<submissionId>/`` and decides automatically:
  **accept** when every check of the reference passed, **reject** with the problems found
  otherwise;
* a :class:`~fitconnect_kit.client.callbacks.CallbackApp` (served by the dev app at
  ``/demo-fachverfahren/callbacks``) whose NEW_SUBMISSIONS callbacks wake the worker at once;
  it also polls every :data:`POLL_INTERVAL` seconds, so nothing is missed while callbacks are
  off or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fitconnect_kit.client.callbacks import CallbackApp
from fitconnect_kit.client.schemas import SchemaRegistry
from fitconnect_kit.client.subscriber import AsyncSubscriber, ReceivedSubmission
from fitconnect_kit.client.worker import HandlerResult, Stage, SubscriberWorker

if TYPE_CHECKING:
    from fitconnect_kit.devstack import DevInfo

logger = logging.getLogger("fitconnect_kit.dev.fachverfahren")

#: Seconds between polls when no callback arrives.
POLL_INTERVAL = 60.0
#: Submissions received at once (overlaps their network round trips and decryption).
CONCURRENCY = 8
STATE_FILE = "state.sqlite3"
DECISION_FILE = "decision.json"


def demo_schema_registry(cache_dir: Path | None = None) -> SchemaRegistry:
    """A registry with the demo Leistung's Fachdaten schemas (JSON Schema and XSD)."""
    return SchemaRegistry(cache_dir=cache_dir).add_demo_schemas()


async def _not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Callback endpoint while the destination's callback is not ours: nothing to receive."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"no demo Fachverfahren callback here"})


class DemoFachverfahren:
    """See the module docstring. ``callback_app`` is the ASGI callback endpoint (any path)."""

    def __init__(
        self,
        *,
        profile_path: Path,
        out_dir: Path,
        callback_secret: str | None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.out_dir = out_dir
        self.subscriber = AsyncSubscriber.from_config(
            "local",
            profile=profile_path,
            schemas=demo_schema_registry(out_dir / ".schema-cache"),
        )
        self.worker = SubscriberWorker(
            self.subscriber,
            self._handle,
            state_path=out_dir / STATE_FILE,
            out_dir=out_dir,
            poll_interval=poll_interval,
            on_step=self._on_step,
            concurrency=CONCURRENCY,
        )
        self.callback_app: Any = (
            CallbackApp(callback_secret, on_new_submissions=self.worker.notify)
            if callback_secret
            else _not_found
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until ``stop`` is set; a failing pass is retried after the poll interval."""
        logger.info("demo Fachverfahren started (submissions go to %s)", self.out_dir)
        try:
            await self.worker.run(stop)
        finally:
            drain = getattr(self.callback_app, "drain", None)
            if drain is not None:
                with contextlib.suppress(Exception):
                    await drain()
            await self.subscriber.aclose()
            self.worker.close()

    @staticmethod
    def _handle(received: ReceivedSubmission) -> HandlerResult:
        """Automatic decision: accept valid submissions, reject invalid ones with their problems."""
        if received.valid:
            logger.info(
                "Fachverfahren: submission %s (case %s) is valid — accepting",
                received.submission_id,
                received.case_id,
            )
        else:
            found = ", ".join(
                f"{p.type.rsplit('/', 1)[-1]}[{p.instance}]" if p.instance else p.type
                for p in received.problems
            )
            logger.info(
                "Fachverfahren: submission %s (case %s) is invalid (%s) — rejecting",
                received.submission_id,
                received.case_id,
                found,
            )
        return None

    def _on_step(self, stage: Stage, submission_id: str) -> None:
        if stage is Stage.POSTED:
            record = self.worker.store.get(submission_id)
            decision = dict(record.decision or {}) if record is not None else {}
            logger.info(
                "Fachverfahren: %s posted for submission %s",
                decision.get("event", "decision"),
                submission_id,
            )
            if record is not None and record.directory:
                _write_decision(Path(record.directory), record.case_id, record.jti, decision)
        elif stage is Stage.FAILED:
            logger.warning("Fachverfahren: gave up on submission %s", submission_id)


def _write_decision(
    directory: Path, case_id: str, jti: str | None, decision: dict[str, Any]
) -> None:
    """``decision.json`` next to the received files: what the Fachverfahren answered."""
    document = {
        "caseId": case_id,
        "event": decision.get("event"),
        "problems": decision.get("problems", []),
        "jti": jti,
    }
    try:
        (directory / DECISION_FILE).write_text(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        logger.warning("cannot write %s: %s", directory / DECISION_FILE, exc.strerror)


def create_demo_fachverfahren(info: DevInfo) -> DemoFachverfahren:
    """The demo Fachverfahren for a prepared dev stack."""
    info.paths.fachverfahren_dir.mkdir(mode=0o700, exist_ok=True)
    return DemoFachverfahren(
        profile_path=info.profile_path,
        out_dir=info.paths.fachverfahren_dir,
        callback_secret=info.seed.callback_secret if info.callback_url else None,
    )


def received_submissions(out_dir: Path) -> list[dict[str, Any]]:
    """What the demo Fachverfahren received and decided, oldest first (from its state file).

    Each item: ``submissionId``, ``caseId``, ``stage`` (``posted`` = decision sent),
    ``verdict`` (``valid``/``invalid``/``configuration-error``), ``decision``
    (``accept-submission``/``reject-submission`` or ``None``), ``problems``, ``directory`` and
    the ``files`` received (relative to the directory). Never any content.
    """
    from fitconnect_kit.client.worker import StateStore

    state = out_dir / STATE_FILE
    if not state.is_file():
        return []
    store = StateStore(state)
    try:
        records = store.all()
    finally:
        store.close()
    result: list[dict[str, Any]] = []
    for record in records:
        decision = record.decision or {}
        directory = Path(record.directory) if record.directory else out_dir / record.submission_id
        files = (
            sorted(
                str(p.relative_to(directory))
                for p in directory.rglob("*")
                if p.is_file() and p.name != DECISION_FILE
            )
            if directory.is_dir()
            else []
        )
        result.append(
            {
                "submissionId": record.submission_id,
                "caseId": record.case_id,
                "stage": record.stage.value,
                "verdict": record.verdict,
                "decision": decision.get("event"),
                "problems": list(decision.get("problems", [])),
                "error": record.error,
                "directory": str(directory),
                "files": files,
            }
        )
    return result
