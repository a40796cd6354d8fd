"""`fitconnect receive`: download, decrypt and verify a submission, then accept or reject it.

Writes ``metadata.json``, the data (``data.json`` / ``data.xml``) and the attachments (under
their sanitized, unique metadata filenames) into ``--out``, prints the verdict and acts:

* no action option — only verify: exit 0 when valid, 3 when invalid;
* ``--accept`` — accept a valid submission; an invalid one is **refused** (nothing posted,
  exit 3): reject it instead;
* ``--reject PROBLEM`` (repeatable, names from the catalog such as ``schema-violation:data``,
  ``hash-mismatch:attachment:<id>``, ``technical-error``) — reject as asked (exit 0);
* ``--auto`` — accept when valid, reject with the problems found otherwise (exit 0 either way).

A check that cannot run because of local configuration (a data schema missing from the
registry: pass ``--schema URI=PATH``) decides nothing and exits with 2. Not found: 4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fitconnect_kit.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    CliError,
    JsonOption,
    fail,
    stdout,
)
from fitconnect_kit.cli.inbox import open_subscriber
from fitconnect_kit.cli.profile import EnvOption, ProfileOption, print_json
from fitconnect_kit.client.schemas import SchemaRegistry, registry_from_specs
from fitconnect_kit.client.subscriber import (
    PostedEvent,
    ReceivedSubmission,
    SubmissionInvalidError,
    parse_problem,
)
from fitconnect_kit.client.verification import Verdict
from fitconnect_kit.protocol.errors import FormatError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("receive")(receive)


def _schemas(specs: list[str] | None, dirs: list[Path] | None, fetch: bool) -> SchemaRegistry:
    registry = SchemaRegistry(fetch_unknown=fetch).add_demo_schemas()
    for directory in dirs or []:
        registry.scan(directory)
    return registry_from_specs(specs or [], base=registry)


def receive(
    submission: Annotated[
        str, typer.Option("--submission", "-s", help="The submissionId.", show_default=False)
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory for metadata, data and attachments."),
    ],
    keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--key",
            "-k",
            help="Private encryption JWK (file, JWK Set or directory); repeat for rotated keys "
            "(default: keys.encryptionPrivate of the profile).",
        ),
    ] = None,
    accept: Annotated[
        bool, typer.Option("--accept", help="Accept the submission (only if it is valid).")
    ] = False,
    reject: Annotated[
        list[str] | None,
        typer.Option(
            "--reject",
            help="Reject with this problem, e.g. schema-violation:data (repeatable).",
        ),
    ] = None,
    auto: Annotated[
        bool,
        typer.Option("--auto", help="Accept when valid, reject with the problems found otherwise."),
    ] = False,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            help="Private PS512 signing JWK (default: keys.signingPrivate of the profile).",
        ),
    ] = None,
    schema: Annotated[
        list[str] | None,
        typer.Option(
            "--schema",
            help="Data schema: URI=PATH (file or directory for a URI prefix) or URI=URL "
            "(fetched once, cached). Repeatable.",
        ),
    ] = None,
    schema_dir: Annotated[
        list[Path] | None,
        typer.Option("--schema-dir", help="Directory of JSON Schemas, registered by $id."),
    ] = None,
    fetch_schemas: Annotated[
        bool,
        typer.Option("--fetch-schemas", help="Fetch (and cache) https schema URIs not given."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files of an earlier receive in --out.")
    ] = False,
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download, decrypt and verify a submission; optionally accept or reject it."""
    actions = sum([accept, bool(reject), auto])
    if actions > 1:
        fail("choose one of --accept, --reject and --auto", EXIT_USAGE)
    try:
        problems = [parse_problem(p) for p in reject or []]
    except FormatError as exc:
        fail(str(exc), EXIT_USAGE)
    options: dict[str, Any] = {"schemas": _schemas(schema, schema_dir, fetch_schemas)}
    if keys:
        options["decryption_keys"] = [str(k) for k in keys]
    if signing_key is not None:
        options["signing_key"] = str(signing_key)
    posted: PostedEvent | None = None
    with open_subscriber(env, profile, **options) as subscriber:
        if actions and subscriber.async_subscriber.signing_key is None:
            fail(
                "accepting or rejecting needs the destination's signing key: pass "
                "--signing-key or set keys.signingPrivate in the profile",
                EXIT_USAGE,
            )
        received = subscriber.receive(submission, out, overwrite=force)
        try:
            if accept:
                if received.verdict is Verdict.CONFIGURATION_ERROR:
                    _report(received, None, as_json)
                    raise CliError(_local(received), EXIT_USAGE)
                posted = subscriber.accept(received)
            elif problems:
                posted = subscriber.reject(received, problems)
            elif auto:
                if received.verdict is Verdict.CONFIGURATION_ERROR:
                    _report(received, None, as_json)
                    raise CliError(_local(received), EXIT_USAGE)
                posted = subscriber.decide(received).decision
        except SubmissionInvalidError:
            _report(received, None, as_json)
            raise CliError(
                f"submission {received.submission_id} is invalid and was not accepted; reject "
                "it (--auto or --reject)",
                EXIT_CHECK_FAILED,
            ) from None
    _report(received, posted, as_json)
    if posted is None:
        if received.verdict is Verdict.INVALID:
            raise typer.Exit(EXIT_CHECK_FAILED)
        if received.verdict is Verdict.CONFIGURATION_ERROR:
            raise CliError(_local(received), EXIT_USAGE)


def _local(received: ReceivedSubmission) -> str:
    issue = received.local_issues[0].message if received.local_issues else "unknown"
    return f"submission {received.submission_id} could not be verified completely: {issue}"


def _verdict_line(received: ReceivedSubmission, posted: PostedEvent | None) -> str:
    if posted is not None:
        if posted.name == "accept-submission":
            return "accepted"
        return f"rejected with {len(posted.problems)} problem(s)"
    if received.verdict is Verdict.VALID:
        return "valid (no action)"
    if received.verdict is Verdict.INVALID:
        return f"invalid: {len(received.problems)} problem(s) (no action)"
    return "not verified: local configuration problem (no action)"


def _report(received: ReceivedSubmission, posted: PostedEvent | None, as_json: bool) -> None:
    if as_json:
        data = received.to_json()
        data["result"] = _verdict_line(received, posted)
        if posted is not None:
            data["decision"] = posted.to_json()
        print_json(data)
        return
    stdout.print(
        f"submission {received.submission_id} (case {received.case_id}, destination "
        f"{received.destination_id})",
        markup=False,
    )
    stdout.print(f"  service: {received.service_type.identifier}", markup=False)
    if received.metadata_path is not None:
        version = f" (metadata {received.metadata_version})" if received.metadata_version else ""
        stdout.print(f"  {received.metadata_path}{version}", markup=False)
    if received.data_path is not None:
        schema = f" [{received.data_schema_uri}]" if received.data_schema_uri else ""
        stdout.print(f"  {received.data_path}{schema}", markup=False)
    for attachment in received.attachments:
        where = str(attachment.path) if attachment.path else "(not decrypted)"
        extra = ", ".join(
            x
            for x in (
                f"{attachment.size} bytes" if attachment.size is not None else None,
                attachment.purpose,
                attachment.mime_type,
            )
            if x
        )
        stdout.print(f"  {where}  {extra}", markup=False)
    for problem in posted.problems if posted is not None else received.problems:
        where = f" [{problem.instance}]" if problem.instance else ""
        name = problem.type.rsplit("/", 1)[-1]
        stdout.print(f"  - {name}{where}: {problem.detail or problem.title}", markup=False)
    for issue in received.local_issues:
        stdout.print(f"  ! local configuration (check {issue.step}): {issue.message}", markup=False)
    style = {"accepted": "green", "valid (no action)": "green"}.get(
        _verdict_line(received, posted), "red"
    )
    stdout.print(f"result: [{style}]{_verdict_line(received, posted)}[/{style}]")
