"""Running the CLI in-process, and asserting a clean refusal: the tests of user errors share them."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from noisesearch.cli import build_app


def invoke(*args: str) -> Result:
    return CliRunner().invoke(build_app(), list(args))


def refused(result: Result, code: int = 2, *phrases: str) -> None:
    """A clean exit with ``code``: typer's Exit, not an exception escaping the command."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
