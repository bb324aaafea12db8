"""Fuzzing ``noisesearch run`` through its configuration layer (TOML file, ``--set``, options),
planning only (``--dry-run``: nothing loads, nothing samples): every outcome is a success or a
clear error (exit 2, one ``Error:`` line or a usage message), never a traceback, and nothing is
written anywhere (least of all outside ``--output``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from noisesearch.cli import build_app
from noisesearch.config import RunConfig

FIELDS = list(RunConfig.__dataclass_fields__)
APP = build_app()

names = st.sampled_from(["digits", "random", "zero-order", "paths", "smc", "pruning", "ddim", "heun",
                         "digits-classifier", "digits-evaluator", "none", "cpu", "auto", "meta",
                         "cuda", "cuda:99", "³", "", " ", "../x", "/proc/x"])
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True), names, st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(names, st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=8,
)
configs = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), values, max_size=6
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    pairs = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
    return "{" + ", ".join(pairs) + "}"


def toml(config: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in config.items() if v is not None)


set_pairs = st.lists(
    st.one_of(
        st.builds(lambda f, sub, v: f"{f}{sub}={v}",
                  st.sampled_from(FIELDS),
                  st.sampled_from(["", ".guidance_scale", ".digits-classifier.device", ".a.b.c", "."]),
                  st.one_of(st.text(max_size=8), st.sampled_from(
                      ["NaN", "Infinity", "-1", "0", "3", "1e400", "[]", "{}", "null", "true", "\"x\"",
                       "99999999999999999999"]))),
        st.text(max_size=15),
    ),
    max_size=3,
)
cli_options = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["--label", "--prompt", "--strategy", "--verifier", "--evaluator",
                                   "--solver", "--device", "--model-opt", "--strategy-opt",
                                   "--verifier-opt"]), st.one_of(names, st.text(max_size=10))),
        st.tuples(st.sampled_from(["--candidates", "--budget-nfe", "--steps", "--seed", "--batch-size",
                                   "--top-k"]),
                  st.one_of(st.integers(-5, 10**21).map(str), st.text(max_size=5))),
    ),
    max_size=4,
)


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.one_of(configs.map(toml), st.text(max_size=80)), pairs=set_pairs, options=cli_options)
def test_run_config_layer_gives_a_plan_or_a_clear_error(
    workdir: Path, config: str, pairs: list[str], options: list[tuple[str, str]]
) -> None:
    config_file = workdir / "fuzz.toml"
    config_file.write_text(config, encoding="utf-8", errors="surrogatepass")
    before = listing(workdir)
    args = ["run", "--dry-run", "--model", "digits", "-c", str(config_file), "-o", str(workdir / "out")]
    for pair in pairs:
        args += ["--set", pair]
    for option, value in options:
        args += [option, value]
    result = CliRunner().invoke(APP, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{args}\n{config!r}"
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output, args, config)
    if result.exit_code == 0:
        plan = json.loads(result.stdout)
        assert plan["model"] == "digits" and plan["output"] == str(workdir / "out")
    else:
        assert "Error" in result.output or "Usage" in result.output, result.output
    assert listing(workdir) == before  # nothing written: not --output, not a default folder
    assert not (Path(os.getcwd()) / "noisesearch-runs").exists()
