"""Fixtures shared by the test modules that build tiny diffusers pipelines.

- ``plain_kernels``: the module runs without oneDNN kernels (``diffusers_tiny.plain_cpu_kernels``;
  tiny convolutions are far slower with them here); a module opts in with
  ``pytestmark = pytest.mark.usefixtures("plain_kernels")``;
- ``tiny(family)``: the folder of that family's tiny pipeline, built once per module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from diffusers_tiny import TinyFolders, plain_cpu_kernels


@pytest.fixture(scope="module")
def plain_kernels() -> Iterator[None]:
    with plain_cpu_kernels():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny(family)``: the folder of that family's tiny pipeline, built once per module."""
    return TinyFolders(tmp_path_factory.mktemp("diffusers"))
