"""Install a one-module plugin for real, the way pip lays it out: the module and a dist-info
folder whose entry point names it (as ``tests/test_plugins.py`` does), so that the ordinary
discovery path (``get_plugin_manager()``, the CLI) finds it. Cheaper than a pip run."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from noisesearch.plugins import LOAD_PLUGINS_ENV


def install_plugin(
    folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str,
    prefix: str = "noisesearch_test_", dashed: bool = True,
) -> str:
    """Install plugin ``name`` from ``source`` into ``folder`` (put on ``sys.path`` for this
    test) as module ``prefix + name``; returns its distribution name (the module's name, with
    dashes unless ``dashed`` is false)."""
    module = f"{prefix}{name.replace('-', '_')}"
    distribution = module.replace("_", "-") if dashed else module
    monkeypatch.delenv(LOAD_PLUGINS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[noisesearch]\n{name} = {module}\n")
    importlib.invalidate_caches()
    monkeypatch.setitem(sys.modules, module, None)  # restored (and so dropped) after the test
    del sys.modules[module]
    return distribution
