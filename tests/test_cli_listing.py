"""The listing commands: ``--version``, ``plugins``, ``models``, ``verifiers``, ``strategies``.

Third-party plugins are switched off (``NOISESEARCH_LOAD_PLUGINS=""``) so that the output is the
built-ins' whatever else is installed; tests/test_plugins.py covers third-party plugins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from noisesearch import __version__
from noisesearch.cli import build_app
from noisesearch.plugins import DEFAULT_PLUGINS, LOAD_PLUGINS_ENV, build_registries, get_plugin_manager

KINDS = {"models": "model", "verifiers": "verifier", "strategies": "strategy"}


def builtin_names(command: str) -> list[str]:
    """The built-ins of a listing command, in registration order (the list grows over time)."""
    return build_registries(get_plugin_manager(load_entrypoints=False)).of(KINDS[command]).names()


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(build_app(), list(args))


def test_version_prints_the_package_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"noisesearch {__version__}"


def test_plugins_hides_the_builtins_by_default() -> None:
    result = invoke("plugins")
    assert result.exit_code == 0
    assert result.stdout.startswith("No third-party plugins")  # installed, or loaded: some are left out
    assert "--all" in result.stdout


def test_plugins_all_lists_each_builtin_with_its_hooks() -> None:
    result = invoke("plugins", "--all")
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(DEFAULT_PLUGINS)
    assert "noisesearch_builtin.models.digits [built-in]: register_models" in lines
    assert "noisesearch_builtin.search.random_search [built-in]: register_search_strategies" in lines


def test_plugins_json_is_an_empty_list_without_third_party_plugins() -> None:
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_plugins_all_json_marks_the_builtins() -> None:
    result = invoke("plugins", "--all", "--json")
    assert result.exit_code == 0
    infos = json.loads(result.stdout)
    assert {info["name"] for info in infos} == set(DEFAULT_PLUGINS)
    assert all(info["builtin"] is True and info["hooks"] for info in infos)
    assert all("distribution" not in info for info in infos)


@pytest.mark.parametrize(
    ("command", "example"),
    [("models", "digits"), ("verifiers", "digits-classifier"), ("strategies", "random")],
)
def test_kind_listing_shows_names_descriptions_and_plugins(command: str, example: str) -> None:
    result = invoke(command)
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == builtin_names(command) and example in names
    for line in lines:
        assert line.rstrip().endswith("]") and "[noisesearch_builtin." in line
        assert len(line.split("  ")) >= 3, f"no description in {line!r}"


@pytest.mark.parametrize("command", list(KINDS))
def test_kind_listing_json_has_name_plugin_and_description(command: str) -> None:
    result = invoke(command, "--json")
    assert result.exit_code == 0
    entries = json.loads(result.stdout)
    assert [entry["name"] for entry in entries] == builtin_names(command)
    for entry in entries:
        assert set(entry) == {"name", "plugin", "description"}
        assert entry["plugin"].startswith("noisesearch_builtin.") and entry["description"]


def test_verifier_detail_shows_description_and_options_with_defaults() -> None:
    result = invoke("verifiers", "digits-classifier")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "digits-classifier (plugin noisesearch_builtin.verifiers.digits_classifiers)"
    assert lines[1].strip().startswith("Log-probability of the requested digit")
    assert any(
        line.strip().startswith("--verifier-opt digits-classifier.device=...  (default 'cpu')")
        and line.endswith("torch device to run on.")
        for line in lines
    ), result.stdout
    assert "--verifier-opt digits-classifier.weights=...  (default None)" in result.stdout


def test_model_detail_json_lists_parameters_with_defaults_and_help() -> None:
    result = invoke("models", "digits", "--json")
    assert result.exit_code == 0
    detail = json.loads(result.stdout)
    parameters = {p["name"]: p for p in detail["parameters"]}
    assert parameters["guidance_scale"]["default"] == 1.0
    assert parameters["guidance_scale"]["required"] is False
    assert parameters["guidance_scale"]["help"].startswith("classifier-free guidance scale")
    assert parameters["device"]["default"] == "cpu"


def test_strategy_detail_of_an_option_free_strategy_shows_just_its_description() -> None:
    result = invoke("strategies", "random")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "random (plugin noisesearch_builtin.search.random_search)",
        "  Best-of-N: sample independent noises until the budget is spent, keep the best.",
    ]


def test_unknown_verifier_exits_2_listing_the_available_names_without_traceback() -> None:
    result = invoke("verifiers", "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr
    assert message.startswith("Error: unknown verifier 'nope'.")
    assert f"Available verifiers: {', '.join(sorted(builtin_names('verifiers')))}." in message
    assert "noisesearch plugins" in message
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_unknown_name_suggests_a_close_match() -> None:
    result = invoke("verifiers", "digits-clasifier")
    assert result.exit_code == 2
    assert "Did you mean: digits-classifier" in result.stderr


def test_plugins_command_as_a_subprocess_is_quick() -> None:
    script = Path(sys.executable).with_name("noisesearch")
    env = {**os.environ, LOAD_PLUGINS_ENV: ""}
    start = time.perf_counter()
    completed = subprocess.run([str(script), "plugins"], capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - start
    print(f"`noisesearch plugins` took {seconds:.2f} s")
    assert completed.returncode == 0, completed.stderr
    assert seconds < 5.0, f"`noisesearch plugins` took {seconds:.2f} s: something heavy is imported"


def test_a_subclass_forwarding_options_lists_its_parents_options_too() -> None:
    """``def __init__(self, extra=1, **options)`` + ``super().__init__(**options)``: the registry
    shows (and checks) the parent's options with the subclass's, documented where they were."""
    import pytest

    from noisesearch.errors import ConfigError
    from noisesearch.registry import Registry

    class Base:
        """A base.

        :param size: how big.
        """

        def __init__(self, size: int = 3, device: str = "cpu") -> None:
            self.size, self.device = size, device

    class Child(Base):
        """A child.

        :param extra: one more.
        """

        def __init__(self, extra: int = 1, **options: object) -> None:
            self.extra = extra
            super().__init__(**options)

    registry = Registry("model")
    entry = registry.add("child", Child, "test")
    params = {p.name: p for p in entry.parameters()}
    assert list(params) == ["extra", "size", "device"]
    assert (params["extra"].help, params["size"].help, params["device"].help) == ("one more.", "how big.", "")
    assert entry.create(extra=2, size=5).size == 5
    with pytest.raises(ConfigError, match="Valid options: device, extra, size"):
        entry.create(colour="red")
