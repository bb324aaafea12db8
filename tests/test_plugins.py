"""Third-party plugins, installed for real: discovery through entry points, selection with
NOISESEARCH_LOAD_PLUGINS, loud failures for broken or misspelt plugins, and no torch while listing.

pip builds and installs ``contrib/noisesearch-example`` and ``tests/fixtures/broken-plugin`` once
per session, each into its own folder rather than the shared virtualenv, so that other test runs
never see a broken plugin. A test "installs" one by putting its folder on ``sys.path`` (in
process) or ``PYTHONPATH`` (subprocesses), where ``importlib.metadata`` finds its entry points.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hand_plugins import install_plugin
from typer.testing import CliRunner

from noisesearch import DuplicateNameError, UnknownNameError
from noisesearch.cli import build_app
from noisesearch.plugins import (
    DEFAULT_PLUGINS,
    LOAD_PLUGINS_ENV,
    PluginLoadWarning,
    build_registries,
    get_plugin_manager,
)
from noisesearch.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SOURCE = ROOT / "contrib" / "noisesearch-example"
BROKEN_SOURCE = ROOT / "tests" / "fixtures" / "broken-plugin"
HOOKSPECS = ROOT / "core" / "noisesearch" / "hookspecs.py"
HOOKS_DOC = ROOT / "docs" / "hooks.md"
CONSOLE_SCRIPT = Path(sys.executable).with_name("noisesearch")
BROKEN_WARNING = r"plugin 'broken' \(distribution 'noisesearch-broken-fixture'\) failed to load"


# -- installing plugins -----------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    example: Path
    broken: Path


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """pip-install both plugin packages, in parallel, each into a folder of its own."""
    root = tmp_path_factory.mktemp("plugins")
    folders = Installed(example=root / "example", broken=root / "broken")
    if importlib.util.find_spec("hatchling") is not None:
        # hatchling is in this environment (the `test` extra): no download, no network.
        build = ["--no-build-isolation", "--no-index"]
    else:  # pip fetches hatchling into an isolated build environment
        build = []
    processes = [
        (source, subprocess.Popen(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
             "--quiet", *build, "--target", str(target), str(source)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        for source, target in ((EXAMPLE_SOURCE, folders.example), (BROKEN_SOURCE, folders.broken))
    ]
    for source, process in processes:
        output, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            pytest.fail(f"pip could not install {source}:\n{output}")
    return folders


@pytest.fixture
def example(installed: Installed, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(installed.example))
    return installed.example


@pytest.fixture
def broken(installed: Installed, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(installed.broken))
    return installed.broken


HandInstall = Callable[[str, str], str]  # name, source -> distribution


@pytest.fixture
def hand_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HandInstall:
    """Install a one-module plugin the way pip would lay it out: the module and a dist-info
    folder holding its entry point; cheaper than a pip run for plugins that exist to fail."""
    return lambda name, source: install_plugin(tmp_path, monkeypatch, name, source)


def plugin_env(*folders: Path, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that sees the plugins installed in ``folders``."""
    env = {key: value for key, value in os.environ.items() if key != LOAD_PLUGINS_ENV}
    paths = [str(folder) for folder in folders]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def plugin_names() -> set[str]:
    return {name for name, _ in get_plugin_manager().list_name_plugin()}


# -- discovery --------------------------------------------------------------------------------


def test_example_plugin_is_discovered_through_its_entry_point(example: Path) -> None:
    plugin = get_plugin_manager().get_plugin("example")
    assert plugin is not None and plugin.__name__ == "noisesearch_example"
    # Found through its entry point, whichever pip install provides it (this test's own, or
    # the editable one that the README's test command makes).
    assert Path(plugin.__file__).name == "__init__.py"
    registries = build_registries()
    contrast = registries.verifiers.get("example-contrast")
    antithetic = registries.strategies.get("example-antithetic")
    assert (contrast.plugin, antithetic.plugin) == ("example", "example")
    assert contrast.factory.__name__ == "ContrastVerifier"
    assert antithetic.factory.__name__ == "AntitheticSearch"
    assert "digits-classifier" in registries.verifiers and "random" in registries.strategies


def test_plugins_json_lists_the_example_with_its_distribution_and_version(example: Path) -> None:
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {info["name"]: info for info in json.loads(result.stdout)}  # others may be installed
    assert listed["example"] == {
        "name": "example",
        "hooks": ["register_search_strategies", "register_verifiers"],
        "distribution": "noisesearch-example",
        "version": "0.1.0",
    }
    assert not any(info.get("builtin") for info in listed.values()), "built-ins need --all"


def test_installed_console_script_lists_the_example(installed: Installed) -> None:
    assert CONSOLE_SCRIPT.exists(), f"no console script next to {sys.executable}"
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), "plugins", "--all", "--json"],
        capture_output=True, text=True, env=plugin_env(installed.example), timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    listed = {info["name"]: info for info in json.loads(completed.stdout)}
    assert listed["example"]["distribution"] == "noisesearch-example"
    assert listed["example"]["version"] == "0.1.0"
    assert {name for name, info in listed.items() if info.get("builtin")} == set(DEFAULT_PLUGINS)


def test_example_package_passes_its_own_contract_tests(installed: Installed) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE_SOURCE, capture_output=True, text=True,
        env=plugin_env(installed.example), timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert " passed" in completed.stdout


# -- a broken plugin --------------------------------------------------------------------------


def test_broken_plugin_warns_naming_it_and_its_distribution(example: Path, broken: Path) -> None:
    with pytest.warns(PluginLoadWarning, match=BROKEN_WARNING) as caught:
        names = plugin_names()
    assert "broken on purpose" in str(caught[0].message)
    assert "broken" not in names
    assert {"example", *DEFAULT_PLUGINS} <= names
    with pytest.warns(PluginLoadWarning):
        registries = build_registries()
    assert {"digits-classifier", "example-contrast"} <= set(registries.verifiers.names())


def test_cli_keeps_working_beside_a_broken_plugin(installed: Installed) -> None:
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), "verifiers", "--json"],
        capture_output=True, text=True, timeout=60,
        env=plugin_env(installed.example, installed.broken),
    )
    assert completed.returncode == 0, completed.stderr
    assert re.search(BROKEN_WARNING, completed.stderr), completed.stderr
    assert "Traceback" not in completed.stderr
    names = {entry["name"] for entry in json.loads(completed.stdout)}
    assert {"digits-classifier", "digits-evaluator", "example-contrast"} <= names


# -- NOISESEARCH_LOAD_PLUGINS -----------------------------------------------------------------


def test_empty_load_plugins_loads_only_the_builtins(
    example: Path, broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken plugin is not even imported
        assert plugin_names() == set(DEFAULT_PLUGINS)
        registries = build_registries()
    assert "example-contrast" not in registries.verifiers
    assert "digits" in registries.models and "random" in registries.strategies


def test_load_plugins_with_one_name_loads_only_that_plugin(
    example: Path, broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "example")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugin_names() == {"example", *DEFAULT_PLUGINS}


def test_load_plugins_also_accepts_a_distribution_name(
    example: Path, broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "noisesearch-example")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "example-antithetic" in build_registries().strategies


def test_load_plugins_warns_of_a_name_that_is_no_installed_plugin(
    example: Path, broken: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo would otherwise surface later as an unknown verifier, pointing away from the cause."""
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "example,exampel")
    with pytest.warns(PluginLoadWarning, match="exampel") as caught:
        names = plugin_names()
    assert names == {"example", *DEFAULT_PLUGINS}  # the right name still loads
    message = str(caught[0].message)
    assert LOAD_PLUGINS_ENV in message and "did you mean 'example'?" in message
    assert "installed: " in message and "noisesearch-example" in message


# -- plugins that break the contract ----------------------------------------------------------


def test_misspelt_hook_name_skips_that_plugin_with_a_hint(hand_install: HandInstall) -> None:
    hand_install("misspelt", """
        from noisesearch import hookimpl

        @hookimpl
        def register_modelz(register):
            register("never", object)
    """)
    with pytest.warns(PluginLoadWarning, match="register_modelz") as caught:
        pm = get_plugin_manager()
    message = str(caught[0].message)
    assert "did you mean 'register_models'?" in message
    assert LOAD_PLUGINS_ENV in message and "was skipped" in message
    assert "misspelt" not in plugin_names_of(pm)
    assert "digits" in build_registries(pm).models  # the rest keeps working


def test_misspelt_hook_argument_skips_that_plugin(hand_install: HandInstall) -> None:
    hand_install("misnamed-argument", """
        from noisesearch import hookimpl

        @hookimpl
        def register_models(registry):
            registry("never", object)
    """)
    with pytest.warns(PluginLoadWarning, match="registry"):
        pm = get_plugin_manager()
    assert "misnamed-argument" not in plugin_names_of(pm)


def test_misspelt_hook_leaves_every_command_working(hand_install: HandInstall) -> None:
    hand_install("misspelt-cli", """
        from noisesearch import hookimpl

        @hookimpl
        def register_verifierz(register):
            pass
    """)
    with pytest.warns(PluginLoadWarning, match="register_verifierz"):
        app = build_app()
    for command in (["plugins"], ["models"], ["verifiers", "digits-classifier"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output


def plugin_names_of(pm: object) -> set[str]:
    return {name for name, _ in pm.list_name_plugin()}  # type: ignore[attr-defined]


TWIN_PLUGIN = """
    from noisesearch import hookimpl

    class Twin:
        '''Scores nothing.'''

    @hookimpl
    def register_verifiers(register):
        register("twin", Twin)
        register("{name}-own", Twin)
"""


def test_duplicate_name_across_two_plugins_skips_the_later_one_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of two third-party plugins with one name, the one whose entry-point name sorts later is
    skipped whole, whatever the order of sys.path (twin-b's folder comes first on it here)."""
    for name in ("twin-a", "twin-b"):  # each prepended to sys.path: twin-b's folder ends up first
        folder = tmp_path / name
        folder.mkdir()
        install_plugin(folder, monkeypatch, name, TWIN_PLUGIN.replace("{name}", name))
    pm = get_plugin_manager()
    with pytest.warns(PluginLoadWarning, match="verifier 'twin'") as caught:
        registries = build_registries(pm)
    [message] = [str(w.message) for w in caught if "twin" in str(w.message)]
    assert message.startswith("plugin 'twin-b' (distribution 'noisesearch-test-twin-b') was skipped")
    assert "already registered by plugin 'twin-a'" in message and LOAD_PLUGINS_ENV in message
    assert registries.verifiers.get("twin").plugin == "twin-a"
    assert "twin-a-own" in registries.verifiers
    assert "twin-b-own" not in registries.verifiers  # skipped whole, not only the clashing name
    assert "twin-b" not in plugin_names_of(pm)
    assert "digits-classifier" in registries.verifiers


def test_duplicate_of_a_builtin_name_skips_the_plugin_naming_the_builtin(hand_install: HandInstall) -> None:
    hand_install("copycat", """
        from noisesearch import hookimpl

        @hookimpl
        def register_models(register):
            register("copycat-model", lambda: None)

        @hookimpl
        def register_search_strategies(register):
            register("random", lambda: None)
    """)
    with pytest.warns(PluginLoadWarning, match="strategy 'random'") as caught:
        registries = build_registries()
    message = str(caught[0].message)
    assert "plugin 'copycat'" in message and "was skipped" in message
    assert "'noisesearch_builtin.search.random_search'" in message
    assert registries.strategies.get("random").plugin == "noisesearch_builtin.search.random_search"
    assert "copycat-model" not in registries.models  # its other hooks' names are dropped too


def test_registry_add_still_refuses_a_duplicate_name() -> None:
    """Only build_registries resolves clashes between plugins; a registry used directly raises."""
    registry = Registry("verifier")
    registry.add("twin", object, "first")
    with pytest.raises(DuplicateNameError, match="verifier 'twin' is registered twice") as caught:
        registry.add("twin", object, "second")
    assert "'first'" in str(caught.value) and "'second'" in str(caught.value)


def test_unknown_name_names_the_kind_close_matches_and_every_choice(example: Path) -> None:
    verifiers = build_registries().verifiers
    with pytest.raises(UnknownNameError) as caught:
        verifiers.get("exampel-contrast")
    message = str(caught.value)
    assert "unknown verifier 'exampel-contrast'" in message
    assert "Did you mean: example-contrast" in message
    assert f"Available verifiers: {', '.join(sorted(verifiers.names()))}." in message
    assert "digits-classifier" in message
    assert "noisesearch plugins" in message


# -- one test per hook ------------------------------------------------------------------------


HOOK_PLUGIN = """
    from noisesearch import hookimpl

    class Thing:
        '''A {kind} from a hand-installed plugin.

        :param size: how big.
        '''

        def __init__(self, size: int = 3):
            self.size = size

    @hookimpl
    def {hook}(register):
        register("hand-{kind}", Thing)
"""


@pytest.mark.parametrize(
    ("hook", "kind"),
    [("register_models", "model"), ("register_verifiers", "verifier"),
     ("register_search_strategies", "strategy")],
)
def test_hook_register_kind_adds_a_factory(hand_install: HandInstall, hook: str, kind: str) -> None:
    hand_install(f"hook-{kind}", HOOK_PLUGIN.format(hook=hook, kind=kind))
    entry = build_registries().of(kind).get(f"hand-{kind}")
    assert entry.plugin == f"hook-{kind}"
    assert entry.description == f"A {kind} from a hand-installed plugin."
    [size] = entry.parameters()
    assert (size.name, size.default, size.help) == ("size", 3, "how big.")
    assert entry.create(size=5).size == 5


def test_hook_register_commands_adds_a_cli_command(hand_install: HandInstall) -> None:
    hand_install("hello", """
        import typer
        from noisesearch import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command()
            def hello(name: str = "world") -> None:
                '''Say hello.'''
                typer.echo(f"hello {name}")
    """)
    result = CliRunner().invoke(build_app(), ["hello", "--name", "plugin"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "hello plugin"


# -- no torch while listing -------------------------------------------------------------------


def test_registering_factories_does_not_import_torch(installed: Installed) -> None:
    code = (
        "import sys, warnings; warnings.simplefilter('ignore')\n"
        "from noisesearch.plugins import build_registries\n"
        "registries = build_registries()\n"
        "assert 'example-contrast' in registries.verifiers, registries.verifiers.names()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env=plugin_env(installed.example, installed.broken),
    )
    assert completed.returncode == 0, completed.stderr


DESCRIBE_EVERY_NAME = """
import sys
from typer.testing import CliRunner
from noisesearch.cli import KIND_COMMANDS, build_app
from noisesearch.plugins import build_registries

app, registries, described = build_app(), build_registries(), []
for command, kind in KIND_COMMANDS.items():
    for name in registries.of(kind).names():
        result = CliRunner().invoke(app, [command, name])
        assert result.exit_code == 0 and name in result.stdout, (command, name, result.output)
        if "torch" in sys.modules:
            sys.exit(f"`noisesearch {command} {name}` imported torch")
        described.append(name)
print(" ".join(described))
"""


def test_describing_every_builtin_and_example_name_does_not_import_torch(installed: Installed) -> None:
    """One interpreter describes every name in turn and checks ``sys.modules`` after each, so
    the first command that imports torch is the one named."""
    completed = subprocess.run(
        [sys.executable, "-c", DESCRIBE_EVERY_NAME], capture_output=True, text=True, timeout=60,
        env=plugin_env(installed.example),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    described = set(completed.stdout.split())
    builtins = build_registries(get_plugin_manager(load_entrypoints=False))
    expected = {name for kind in ("model", "verifier", "strategy") for name in builtins.of(kind).names()}
    assert expected | {"example-contrast", "example-antithetic"} <= described


# -- docs/hooks.md ----------------------------------------------------------------------------


def hookspec_signatures() -> dict[str, str]:
    """``name -> "def name(args) -> return"`` for every ``@hookspec`` in hookspecs.py."""
    tree = ast.parse(HOOKSPECS.read_text())
    signatures = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            ast.unparse(decorator).split("(")[0] == "hookspec" for decorator in node.decorator_list
        ):
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            signatures[node.name] = f"def {node.name}({ast.unparse(node.args)}){returns}"
    return signatures


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_hookspecs_are_found_at_all() -> None:
    assert set(hookspec_signatures()) >= {"register_models", "register_commands"}


def test_hooks_doc_shows_every_hook_signature_exactly() -> None:
    lines = {line.strip() for block in python_blocks(HOOKS_DOC.read_text()) for line in block.splitlines()}
    missing = [signature for signature in hookspec_signatures().values() if signature not in lines]
    assert not missing, f"docs/hooks.md lacks these exact signature lines: {missing}"


def test_hooks_doc_documents_no_hook_that_does_not_exist() -> None:
    text = HOOKS_DOC.read_text()
    real = set(hookspec_signatures())
    headed = set(re.findall(r"^## `(\w+)`", text, flags=re.MULTILINE))
    defined = set(re.findall(r"\bdef (register_\w+)\(", text))
    assert headed == real, f"sections {sorted(headed)} vs hooks {sorted(real)}"
    assert defined <= real, f"documented but not hooks: {sorted(defined - real)}"


# -- speed ------------------------------------------------------------------------------------


def test_plugins_command_with_third_party_plugins_is_quick(installed: Installed) -> None:
    start = time.perf_counter()
    completed = subprocess.run(
        [str(CONSOLE_SCRIPT), "plugins"], capture_output=True, text=True, timeout=60,
        env=plugin_env(installed.example),
    )
    seconds = time.perf_counter() - start
    print(f"`noisesearch plugins` with the example plugin took {seconds:.2f} s")
    assert completed.returncode == 0, completed.stderr
    line = "example (noisesearch-example 0.1.0): register_search_strategies, register_verifiers"
    assert line in completed.stdout.splitlines(), completed.stdout
    assert seconds < 5.0


# -- undecorated hooks and fewer arguments (probe8 D8) ----------------------------------------


def test_plugin_with_undecorated_hooks_only_is_skipped_naming_them(hand_install: HandInstall) -> None:
    hand_install("undecorated", """
        def register_verifiers(register):
            register("never-registered", object)

        def register_modelz(register):
            pass

        def helper():
            pass
    """)
    match = "register_modelz, register_verifiers are not decorated"
    with pytest.warns(PluginLoadWarning, match=match) as caught:
        pm = get_plugin_manager()
    message = str(caught[0].message)
    assert "plugin 'undecorated'" in message and "was skipped" in message
    assert "decorate them with @noisesearch.hookimpl" in message and "helper" not in message
    assert "undecorated" not in plugin_names_of(pm)


def test_plugin_that_implements_no_hook_at_all_gets_a_warning(hand_install: HandInstall) -> None:
    hand_install("hookless", """
        VALUE = 1
    """)
    with pytest.warns(PluginLoadWarning, match="'hookless'.*implements no noisesearch hook"):
        assert "hookless" not in plugin_names_of(get_plugin_manager())


def test_undecorated_function_named_like_a_hook_beside_decorated_ones_warns(
    hand_install: HandInstall,
) -> None:
    hand_install("half-decorated", """
        from noisesearch import hookimpl

        @hookimpl
        def register_models(register):
            register("half-decorated-model", object)

        def register_verifiers(register):
            register("half-decorated-verifier", object)
    """)
    with pytest.warns(PluginLoadWarning, match="defines register_verifiers without @noisesearch.hookimpl"):
        pm = get_plugin_manager()
    assert "half-decorated" in plugin_names_of(pm)  # what it does implement still works
    assert "half-decorated-model" in build_registries(pm).models


def test_register_hook_may_take_fewer_arguments_than_its_specification(
    hand_install: HandInstall,
) -> None:
    """hooks.md: implementations may take fewer arguments; pluggy passes only those they name."""
    hand_install("no-argument", """
        from noisesearch import hookimpl

        calls = []

        @hookimpl
        def register_verifiers():
            calls.append("called")
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        pm = get_plugin_manager()
        build_registries(pm)
    assert pm.get_plugin("no-argument").calls == ["called"]


def markdown_bullet(path: Path, needle: str) -> str:
    """The top-level bullet (``- ...``, its indented lines and sub-bullets) of a markdown file
    that holds ``needle``."""
    bullets = re.split(r"\n(?=- )|\n\n(?=[^\s-])", path.read_text())
    [bullet] = [bullet for bullet in bullets if needle in bullet]
    return " ".join(bullet.split())


@pytest.mark.parametrize(("doc", "needle"), [
    (HOOKS_DOC, "(`register_modelz`"), (ROOT / "docs" / "writing-plugins.md", "(`register_verifierz`"),
])
def test_docs_say_a_misspelt_hook_skips_the_plugin_with_a_warning(doc: Path, needle: str) -> None:
    """What test_misspelt_hook_name_skips_that_plugin_with_a_hint checks, not a fatal PluginError."""
    bullet = markdown_bullet(doc, needle)
    assert "PluginLoadWarning" in bullet and "skipped" in bullet, bullet
    assert "fails loudly" not in bullet.split("built-in")[0], bullet


# -- NOISESEARCH_LOAD_PLUGINS in messages (probe8 D11) ------------------------------------------


def test_plugins_command_names_the_installed_plugins_the_variable_leaves_out(
    hand_install: HandInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_install("left-out", HOOK_PLUGIN.format(hook="register_models", kind="model"))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    result = CliRunner().invoke(build_app(), ["plugins"])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert re.fullmatch(
        r"No third-party plugins loaded: NOISESEARCH_LOAD_PLUGINS='' leaves out \d+ installed "
        r"\(.*\bleft-out\b.*\)\. Use --all to see the built-ins\.", line), line
    assert "installed" in line and "No third-party plugins installed" not in line


def test_plugins_command_names_what_a_subset_leaves_out(
    hand_install: HandInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_install("chosen", HOOK_PLUGIN.format(hook="register_models", kind="model"))
    hand_install("not-chosen", HOOK_PLUGIN.format(hook="register_verifiers", kind="verifier"))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "chosen")
    result = CliRunner().invoke(build_app(), ["plugins"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["chosen (noisesearch-test-chosen 0.1): register_models"]
    note = result.stderr.strip()  # stdout stays one line per plugin
    assert note.startswith("NOISESEARCH_LOAD_PLUGINS='chosen' leaves out "), note
    assert "not-chosen" in note


def test_plugins_command_without_installed_plugins_says_none_installed(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from noisesearch import plugins

    monkeypatch.setattr(plugins, "left_out_plugins", lambda pm, load_entrypoints=None: ([], []))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    result = CliRunner().invoke(build_app(), ["plugins"])
    assert result.stdout.strip() == "No third-party plugins installed (use --all to see the built-ins)."


@pytest.mark.parametrize("value", ["", "example"])
def test_unknown_name_mentions_the_load_plugins_variable_when_set(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(LOAD_PLUGINS_ENV, value)
    with pytest.raises(UnknownNameError) as caught:
        Registry("strategy").get("example-antithetic")
    assert str(caught.value).endswith(
        f"Run `noisesearch plugins` to see which plugins are loaded "
        f"(NOISESEARCH_LOAD_PLUGINS is set to '{value}')."
    )
    monkeypatch.delenv(LOAD_PLUGINS_ENV)
    with pytest.raises(UnknownNameError) as caught:
        Registry("strategy").get("example-antithetic")
    assert "NOISESEARCH_LOAD_PLUGINS" not in str(caught.value)


def test_describing_a_left_out_strategy_names_the_variable(
    hand_install: HandInstall, monkeypatch: pytest.MonkeyPatch
) -> None:
    hand_install("hidden", HOOK_PLUGIN.format(hook="register_search_strategies", kind="strategy"))
    monkeypatch.setenv(LOAD_PLUGINS_ENV, "")
    result = CliRunner().invoke(build_app(), ["strategies", "hand-strategy"])
    assert result.exit_code == 2
    assert "unknown strategy 'hand-strategy'" in result.stderr
    assert "(NOISESEARCH_LOAD_PLUGINS is set to '')" in result.stderr
