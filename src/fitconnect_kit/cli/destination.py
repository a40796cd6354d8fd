"""`fitconnect destination show`: what a sender needs to know about a destination, checked."""

from __future__ import annotations

from typing import Annotated

import typer

from fitconnect_kit.cli._common import EXIT_CHECK_FAILED, EXIT_USAGE, JsonOption, fail, stdout
from fitconnect_kit.cli.profile import EnvOption, ProfileOption, open_sender, print_json
from fitconnect_kit.client.sender import DestinationReport

destination_app = typer.Typer(
    name="destination",
    help="Destinations (Zustellpunkte): public information and sender checks.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(destination_app, name="destination")


@destination_app.command("show")
def show(
    destination_id: Annotated[
        str | None,
        typer.Argument(
            help="The destinationId (default: destinationId of the profile).", show_default=False
        ),
    ] = None,
    env: EnvOption = None,
    profile: ProfileOption = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="Also check this service (Leistungsschlüssel or URN); default from the profile.",
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="Also check this data schema URI (with --data-type)."),
    ] = None,
    data_type: Annotated[
        str, typer.Option("--data-type", help="MIME type of the data: json or xml.")
    ] = "json",
    as_json: JsonOption = False,
) -> None:
    """Show a destination with the checks a sender runs before sending.

    Status, services, data schemas, regions, reply channels, metadata versions and the
    encryption key (validated). Exits with 3 when a check fails, 4 when the destination does
    not exist.
    """
    with open_sender(env, profile) as sender:
        prof = sender.profile
        destination_id = destination_id or (prof.destination_id if prof else None)
        if not destination_id:
            fail("no destination: give the destinationId (or set it in the profile)", EXIT_USAGE)
        if prof is not None and prof.destination_id == destination_id:
            service = service or prof.service_identifier
            schema = schema or prof.data_schema_uri
        mime = (
            "application/xml"
            if data_type.lower() in ("xml", "application/xml")
            else ("application/json")
        )
        report = sender.inspect_destination(
            destination_id,
            service=service,
            data_schema=(schema, mime) if schema else None,
        )
        environment = sender.environment.name
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report, environment)
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_report(report: DestinationReport, environment: str) -> None:
    dest = report.destination
    stdout.print(f"[bold]destination[/bold] {dest.destination_id}  (environment {environment})")
    status_style = "green" if dest.status.value == "active" else "red"
    stdout.print(f"status: [{status_style}]{dest.status.value}[/{status_style}]")
    stdout.print(
        "metadata versions: "
        + (", ".join(dest.metadata_versions) or "none")
        + (f"  → sending with {report.metadata_version}" if report.metadata_version else "")
    )
    if dest.reply_channels is not None:
        # The top-level replyChannels is the old form (deprecated since Submission API 1.3.0);
        # a service's own replyChannels wins, the top-level list only applies to services
        # without one.
        stdout.print(
            "reply channels, top-level (old form, deprecated since API 1.3.0; a service's own "
            "list wins): " + (", ".join(dest.reply_channels.channel_names()) or "none")
        )
    for service in dest.services:
        stdout.print(f"[bold]service[/bold] {service.identifier}")
        schemas = [f"{s.schema_uri} ({s.mime_type})" for s in service.submission_schemas]
        stdout.print(
            "  data schemas: " + ("\n                ".join(schemas) or "none"), markup=False
        )
        stdout.print("  regions: " + (", ".join(service.regions) or "—"), markup=False)
        if service.reply_channels is not None:
            channels = ", ".join(service.reply_channels.channel_names()) or "none (answer by post)"
        elif dest.reply_channels is not None:
            channels = "no list of its own — the top-level list above applies"
        else:
            channels = "none (answer by post)"
        stdout.print(f"  reply channels: {channels}")
    key_state = "[green]valid[/green]" if report.key_valid else "[red]REJECTED[/red]"
    stdout.print(f"encryption key: {report.encryption_kid}  {key_state}")
    if report.problems:
        stdout.print("[red]checks failed:[/red]")
        for problem in report.problems:
            stdout.print(f"  - {problem}", markup=False)
    else:
        stdout.print("[green]all checks passed[/green]")
