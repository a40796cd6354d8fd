"""The ``fitconnect`` command line run in-process, as the CLI tests call it."""

from __future__ import annotations

import pytest

from fitconnect_kit.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``fitconnect ARGS…`` in this process → (exit code, stdout, stderr) as captured."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err
