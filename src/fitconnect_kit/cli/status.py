"""`fitconnect status`: the verified event log of a case and the submission's status."""

from __future__ import annotations

from typing import Annotated

import typer

from fitconnect_kit.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    JsonOption,
    fail,
    print_event_table,
    print_problem,
    stdout,
)
from fitconnect_kit.cli.profile import (
    EnvOption,
    ProfileOption,
    load_last_sent,
    open_sender,
    print_json,
)
from fitconnect_kit.client.eventlog import VerifiedEvent
from fitconnect_kit.client.sender import StatusReport
from fitconnect_kit.protocol.events import Event

STATUS_STYLES = {
    "accepted": "green",
    "rejected": "red",
    "deleted": "red",
    "incomplete": "yellow",
}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("status")(status)


def status(
    case: Annotated[
        str | None, typer.Option("--case", help="The caseId.", show_default=False)
    ] = None,
    submission: Annotated[
        str | None,
        typer.Option("--submission", help="The submissionId (needed if the case has several)."),
    ] = None,
    destination: Annotated[
        str | None,
        typer.Option(
            "--destination", help="Require receiver events to come from this destinationId."
        ),
    ] = None,
    last: Annotated[
        bool,
        typer.Option(
            "--last", help="The submission last sent with `fitconnect send` (this profile)."
        ),
    ] = False,
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the verified event log of a case and its submission's status.

    Every Security Event Token is verified; a SET that does not verify or authentication tags
    that differ end the command with exit code 3. A rejected submission also exits with 3.
    """
    if (case is None) == (not last):
        fail("give either --case or --last", EXIT_USAGE)
    with open_sender(env, profile) as sender:
        if case is None:
            noted = load_last_sent(sender)
            case = noted["caseId"]
            submission = submission or noted["submissionId"]
        report = sender.status(case, submission_id=submission, destination_id=destination)
    if as_json:
        print_json(report.to_json())
    else:
        print_report(report)
    if report.rejected:
        raise typer.Exit(EXIT_CHECK_FAILED)


def describe(event: VerifiedEvent) -> str:
    """One short line of details for an event (problems are listed below the table)."""
    parts: list[str] = []
    notify = event.set.payload.get("notifyType")
    if notify:
        parts.append(str(notify))
    if event.event in (Event.REJECT_SUBMISSION, Event.REJECT_REPLY):
        titles = ", ".join(p.title for p in event.problems)
        parts.append(f"problems: {titles}" if titles else "no problems given")
    tags = event.authentication_tags
    if tags is not None:
        count = (tags.metadata is not None) + (tags.data is not None) + len(tags.attachments)
        parts.append(f"{count} tags")
    return "; ".join(parts)


def print_report(report: StatusReport) -> None:
    print_event_table(report.case_id, report.events, describe)
    style = STATUS_STYLES.get(report.status.value, "cyan")
    stdout.print(f"submission: {report.submission_id}")
    if report.destination_id:
        stdout.print(f"destination: {report.destination_id}")
    stdout.print(
        f"status: [{style}]{report.status.value}[/{style}]"
        + ("  (all SETs verified" + (", tags match" if report.tags_checked else "") + ")")
    )
    for problem in report.problems:
        print_problem(problem)
        stdout.print(f"    {problem.type}", markup=False)
