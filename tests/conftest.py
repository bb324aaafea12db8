"""Fixtures shared by the test modules that build tiny diffusers pipelines.

- ``plain_kernels``: the module runs without oneDNN kernels (``diffusers_tiny.plain_cpu_kernels``;
  tiny convolutions are far slower with them here); a module opts in with
  ``pytestmark = pytest.mark.usefixtures("plain_kernels")``;
- ``tiny(family)``: the folder of that family's tiny pipeline, built once per module;
- every test gets its own noisesearch cache folder (``NOISESEARCH_CACHE_DIR``), so that
  no test reads or writes the user's batch-size memory (``noisesearch.batch_memory``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from diffusers_tiny import TinyFolders, plain_cpu_kernels


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of each test's own: a batch size one test's out-of-memory made remembered
    must reach neither the user's runs nor the next test, nor the user's memory the tests."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NOISESEARCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def plain_kernels() -> Iterator[None]:
    with plain_cpu_kernels():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny(family)``: the folder of that family's tiny pipeline, built once per module."""
    return TinyFolders(tmp_path_factory.mktemp("diffusers"))
