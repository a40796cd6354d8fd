"""The ``fitconnect`` command line (typer + rich)."""
