"""Faulty third-party plugins are attributed and contained: a hook that raises or is misspelt
gets a warning naming the plugin, that plugin is skipped, and every command keeps working; a
plugin command cannot replace a built-in one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hand_plugins import install_plugin
from typer.testing import CliRunner

from noisesearch.cli import build_app
from noisesearch.plugins import LOAD_PLUGINS_ENV, PluginLoadWarning, build_registries, get_plugin_manager

Install = Callable[[str, str], str]  # name, source -> distribution


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Install:
    """A one-module plugin laid out as pip would (module + dist-info with its entry point)."""
    return lambda name, source: install_plugin(
        tmp_path, monkeypatch, name, source, prefix="noisesearch_fault_", dashed=False
    )


RAISING_REGISTER = """
    from noisesearch import hookimpl

    class Fine:
        '''Registered before the hook fails.'''

    @hookimpl
    def register_verifiers(register):
        register("half-registered", Fine)
        raise RuntimeError("boom in register")
"""


def test_register_hook_that_raises_skips_the_plugin_with_a_warning(install: Install) -> None:
    install("raiser", RAISING_REGISTER)
    with pytest.warns(PluginLoadWarning) as caught:
        registries = build_registries(get_plugin_manager())
    message = str(caught[0].message)
    assert "'raiser'" in message and "noisesearch_fault_raiser" in message  # plugin, distribution
    assert "RuntimeError: boom in register" in message and LOAD_PLUGINS_ENV in message
    assert "half-registered" not in registries.verifiers  # skipped whole, not half
    assert "digits-classifier" in registries.verifiers


@pytest.mark.parametrize("command", [["models"], ["verifiers"], ["plugins"], ["strategies", "random"]])
def test_every_command_works_beside_a_raising_register_hook(install: Install, command: list[str]) -> None:
    install("raiser-cli", RAISING_REGISTER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # `plugins` builds no registry
        result = CliRunner().invoke(build_app(), command)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def test_run_plans_beside_a_raising_register_hook(install: Install, tmp_path: Path) -> None:
    install("raiser-run", RAISING_REGISTER)
    with pytest.warns(PluginLoadWarning):
        result = CliRunner().invoke(build_app(), [
            "run", "--model", "digits", "--candidates", "0", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2  # our own clear error about --candidates, not the plugin
    assert "candidates: must be a positive integer" in result.output
    assert not (tmp_path / "r").exists()


def test_register_commands_that_raises_skips_the_plugin(install: Install) -> None:
    install("bad-commands", """
        from noisesearch import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command()
            def extra() -> None:
                '''Added before the hook fails.'''
            raise ValueError("no commands today")
    """)
    with pytest.warns(PluginLoadWarning, match="ValueError: no commands today"):
        app = build_app()
    assert CliRunner().invoke(app, ["models"]).exit_code == 0
    assert CliRunner().invoke(app, ["extra"]).exit_code == 2  # its half-added command is gone


def test_plugin_command_cannot_shadow_a_builtin_command(install: Install) -> None:
    install("shadow", """
        import typer
        from noisesearch import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command()
            def run() -> None:
                '''Not ours.'''
                typer.echo("HIJACKED")

            @app.command("show")
            def something_else() -> None:
                typer.echo("HIJACKED")

            @app.command()
            def hello() -> None:
                typer.echo("hello from the plugin")
    """)
    with pytest.warns(PluginLoadWarning, match="'run', which is a built-in command") as caught:
        app = build_app()
    assert any("'show'" in str(w.message) for w in caught)
    result = CliRunner().invoke(app, ["run", "--help"])
    assert "HIJACKED" not in result.output and "Search for better samples" in result.output
    assert CliRunner().invoke(app, ["hello"]).output.strip() == "hello from the plugin"


def test_console_script_prints_one_warning_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "noisesearch_fault_console.py").write_text(textwrap.dedent("""
        from noisesearch import hookimpl

        @hookimpl
        def register_modelz(register):
            pass
    """))
    info = tmp_path / "noisesearch_fault_console-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noisesearch_fault_console\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[noisesearch]\nconsole = noisesearch_fault_console\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-c", "from noisesearch.console import main; main()", "models"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    assert "Warning: plugin 'console'" in completed.stderr and "register_models" in completed.stderr
    assert "digits" in completed.stdout


DUPLICATE_OF_A_BUILTIN = """
    from noisesearch import hookimpl

    class Impostor:
        '''Not the digits classifier.'''

    @hookimpl
    def register_verifiers(register):
        register("impostor-own", Impostor)
        register("digits-classifier", Impostor)
"""


@pytest.mark.parametrize("command", [["models"], ["verifiers"], ["verifiers", "digits-classifier"],
                                     ["strategies", "random"]])
def test_every_command_works_beside_a_plugin_that_reregisters_a_builtin_name(
    install: Install, command: list[str]
) -> None:
    """A duplicate name is one more broken plugin: skipped with a warning, not exit 2 for all."""
    install("impostor", DUPLICATE_OF_A_BUILTIN)
    with pytest.warns(PluginLoadWarning, match="verifier 'digits-classifier'") as caught:
        result = CliRunner().invoke(build_app(), command)
    assert result.exit_code == 0, result.output
    message = str(caught[0].message)
    assert "plugin 'impostor' (distribution 'noisesearch_fault_impostor') was skipped" in message
    assert "'noisesearch_builtin.verifiers.digits_classifiers'" in message
    assert "Impostor" not in result.output and "impostor-own" not in result.output


def test_run_plans_beside_a_plugin_that_reregisters_a_builtin_name(install: Install, tmp_path: Path) -> None:
    install("impostor-run", DUPLICATE_OF_A_BUILTIN)
    with pytest.warns(PluginLoadWarning, match="digits-classifier"):
        result = CliRunner().invoke(build_app(), [
            "run", "--model", "digits", "--candidates", "0", "-o", str(tmp_path / "r")])
    assert result.exit_code == 2  # our own clear error about --candidates, not the plugin
    assert "candidates: must be a positive integer" in result.output
    assert "registered twice" not in result.output
