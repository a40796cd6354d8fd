"""`fitconnect events`: the verified event log of a case, as the receiving system sees it."""

from __future__ import annotations

from typing import Annotated

import typer

from fitconnect_kit.cli._common import JsonOption, print_event_table, print_problem, stdout
from fitconnect_kit.cli.inbox import open_subscriber
from fitconnect_kit.cli.profile import EnvOption, ProfileOption, print_json
from fitconnect_kit.client.eventlog import VerifiedEvent
from fitconnect_kit.client.subscriber import CaseEventLog
from fitconnect_kit.protocol.events import Event

STATUS_STYLES = {"accepted": "green", "rejected": "red", "deleted": "red"}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("events")(events)


def events(
    case: Annotated[str, typer.Option("--case", "-c", help="The caseId.", show_default=False)],
    destination: Annotated[
        str | None,
        typer.Option("--destination", help="Require receiver SETs to come from this destination."),
    ] = None,
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the verified event log of a case and the derived status of its submissions.

    Every Security Event Token is verified (Zustelldienst JWKS / the destination's signature
    key); one that does not verify ends the command with exit code 3.
    """
    with open_subscriber(env, profile, load_keys=False) as subscriber:
        log = subscriber.event_log(case, destination_id=destination)
    if as_json:
        print_json(log.to_json())
    else:
        print_log(log)


def details(event: VerifiedEvent) -> str:
    parts: list[str] = []
    if event.submission_id:
        parts.append(f"submission {event.submission_id}")
    notify = event.set.payload.get("notifyType")
    if notify:
        parts.append(str(notify))
    if event.event in (Event.REJECT_SUBMISSION, Event.REJECT_REPLY):
        names = ", ".join(
            p.type.rsplit("/", 1)[-1] + (f" [{p.instance}]" if p.instance else "")
            for p in event.problems
        )
        parts.append(f"problems: {names}" if names else "no problems given")
    tags = event.authentication_tags
    if tags is not None:
        count = (tags.metadata is not None) + (tags.data is not None) + len(tags.attachments)
        parts.append(f"{count} tag(s)")
    return "; ".join(parts)


def print_log(log: CaseEventLog) -> None:
    print_event_table(log.case_id, log.events, details)
    stdout.print("all SETs verified")
    for sid, state in log.states.items():
        style = STATUS_STYLES.get(state.status.value, "cyan")
        stdout.print(f"submission {sid}: [{style}]{state.status.value}[/{style}]")
        for problem in state.problems:
            print_problem(problem)
