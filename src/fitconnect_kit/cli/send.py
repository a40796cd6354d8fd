"""`fitconnect send`: check a destination, encrypt and send a submission, optionally wait."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from fitconnect_kit.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    JsonOption,
    fail,
    stderr,
    stdout,
)
from fitconnect_kit.cli.profile import (
    EnvOption,
    ProfileOption,
    open_sender,
    print_json,
    remember_last_sent,
)
from fitconnect_kit.cli.status import print_report
from fitconnect_kit.client.errors import WaitTimeoutError
from fitconnect_kit.client.sender import SentSubmission, StatusReport
from fitconnect_kit.client.submission import SubmissionBuilder
from fitconnect_kit.protocol.metadata import AttachmentPurpose

PURPOSES = {p.value for p in AttachmentPurpose}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("send")(send)


def parse_attachment(spec: str) -> tuple[Path, str]:
    """``FILE[:purpose]`` → (path, purpose); purpose defaults to ``attachment``."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail in PURPOSES and head:
        return Path(head), tail
    return Path(spec), AttachmentPurpose.ATTACHMENT.value


def send(
    destination: Annotated[
        str | None,
        typer.Option("--destination", "-d", help="destinationId (default: from the profile)."),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            "-s",
            help="Service: Leistungsschlüssel (99…) or URN (default: from the profile).",
        ),
    ] = None,
    service_name: Annotated[
        str | None,
        typer.Option("--service-name", help="Name of the service (default: from the profile)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="File with the Fachdaten (JSON or XML).")
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="Schema URI of the Fachdaten (default: from the profile)."),
    ] = None,
    data_type: Annotated[
        str | None,
        typer.Option("--data-type", help="json or xml (default: from the file name)."),
    ] = None,
    attachments: Annotated[
        list[str] | None,
        typer.Option(
            "--attachment",
            "-a",
            help="FILE[:purpose] — purpose form, attachment (default) or report. Repeatable.",
        ),
    ] = None,
    reply_email: Annotated[
        str | None, typer.Option("--reply-email", help="Reply channel: this e-mail address.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the submission is accepted or rejected.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait with --wait.", min=1)
    ] = 600.0,
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a submission (end-to-end encrypted) to a destination.

    Checks the destination first, then announces the submission, uploads the attachments
    encrypted and submits metadata and Fachdaten. Prints submissionId and caseId, and with
    --wait the final status (a rejection exits with 3).
    """
    with open_sender(env, profile) as sender:
        prof = sender.profile
        destination = destination or (prof.destination_id if prof else None)
        service = service or (prof.service_identifier if prof else None)
        service_name = service_name or (prof.service_name if prof else None)
        if not destination:
            fail(
                "no destination: pass --destination (or set destinationId in the profile)",
                EXIT_USAGE,
            )
        if not service:
            fail("no service: pass --service (or set serviceIdentifier in the profile)", EXIT_USAGE)
        if not service_name:
            fail(
                "no service name: pass --service-name (or set serviceName in the profile)",
                EXIT_USAGE,
            )
        builder = SubmissionBuilder(destination).service(service, service_name)

        if data is not None:
            schema = schema or (prof.data_schema_uri if prof else None)
            if not schema:
                fail("--data needs --schema (or dataSchemaUri in the profile)", EXIT_USAGE)
            kind = (data_type or ("xml" if data.suffix.lower() == ".xml" else "json")).lower()
            try:
                content = data.read_bytes()
            except FileNotFoundError:
                fail(f"data file not found: {data}", EXIT_NOT_FOUND)
            if kind in ("xml", "application/xml"):
                builder.xml_data(content, schema_uri=schema)
            elif kind in ("json", "application/json"):
                builder.json_data(content, schema_uri=schema)
            else:
                fail(f"--data-type must be json or xml, got {data_type!r}", EXIT_USAGE)
        for spec in attachments or []:
            path, purpose = parse_attachment(spec)
            if not path.is_file():
                fail(f"attachment file not found: {path}", EXIT_NOT_FOUND)
            builder.attachment(path, purpose=purpose)
        if reply_email:
            builder.reply_email(reply_email)
        submission = builder.build()

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=stderr,
            transient=True,
            disable=not stderr.is_terminal,
        ) as progress:
            tasks: dict[str, TaskID] = {}
            names = {a.attachment_id: a.filename or a.attachment_id for a in submission.attachments}

            def on_progress(attachment_id: str, done: int, total: int) -> None:
                task = tasks.get(attachment_id)
                if task is None:
                    task = progress.add_task(names.get(attachment_id, attachment_id), total=total)
                    tasks[attachment_id] = task
                progress.update(task, completed=done, total=total)

            sent = sender.send(submission, progress=on_progress)
        remember_last_sent(sender, sent)  # for `fitconnect status --last`
        report: StatusReport | None = None
        if wait:
            # The ids first (stderr: stdout stays one JSON document), so a timeout loses nothing.
            stderr.print(
                f"submitted: submissionId {sent.submission_id}, caseId {sent.case_id}",
                markup=False,
            )
            if not as_json:
                stderr.print(f"waiting up to {timeout:.0f} s for the receiving system …")
            try:
                report = sender.wait(sent, timeout=timeout)
            except WaitTimeoutError as exc:
                fail(
                    f"{exc}; caseId {sent.case_id} — look again later with `fitconnect status "
                    f"--case {sent.case_id}` (or --last)",
                    EXIT_ERROR,
                )

    _print_result(sent, report, as_json=as_json)
    if report is not None and report.rejected:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_result(sent: SentSubmission, report: StatusReport | None, *, as_json: bool) -> None:
    if as_json:
        data = sent.to_json()
        if report is not None:
            data["status"] = report.to_json()
        print_json(data)
        return
    stdout.print(f"submissionId: {sent.submission_id}")
    stdout.print(f"caseId: {sent.case_id}")
    stdout.print(f"destinationId: {sent.destination_id}")
    if report is not None:
        print_report(report)
