"""The configuration of one search, validated before anything is loaded or computed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from noisesearch.errors import ConfigError
from noisesearch.sampling import SOLVERS

#: Device names checked before torch is imported (torch would fail later, less clearly).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|meta|(cuda|xpu|hpu|npu)(:\d+)?")

#: Candidates searched when neither budget is given.
DEFAULT_CANDIDATES = 16

#: Upper bounds that catch a typo (an extra zero, a pasted number) before it becomes a run
#: that never ends or an overflow deep in torch. Papers search up to ~10^4 candidates and use
#: up to ~10^3 steps; these leave two orders of magnitude above that.
LIMITS: dict[str, int] = {
    "candidates": 1_000_000,
    "budget_nfe": 1_000_000_000,
    "steps": 10_000,
    "batch_size": 65_536,
    "top_k": 10_000,
    "threads": 4_096,
}
#: Seeds are hashed into 63-bit torch seeds; larger ones are almost surely a mistake.
MAX_SEED = 2**63 - 1


@dataclass
class RunConfig:
    """Everything that defines one search: one configuration + one condition -> one run.

    Budgets: ``candidates`` caps final samples, ``budget_nfe`` caps denoiser evaluations
    summed over candidates; with neither, ``DEFAULT_CANDIDATES`` candidates are searched.
    ``None`` for ``verifiers``, ``evaluator``, ``steps`` and ``label`` means "the model's
    default" (a label is then drawn from ``seed``); ``evaluator="none"`` disables it.
    """

    model: str = "shapes"
    strategy: str = "random"
    verifiers: list[str] | None = None
    evaluator: str | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    label: int | str | None = None  # an index, or a class name for models that have them
    candidates: int | None = None
    budget_nfe: int | None = None
    steps: int | None = None
    solver: str = "ddim"
    seed: int = 0
    batch_size: int | None = None
    top_k: int = 8
    device: str | None = None
    output: str | os.PathLike[str] | None = None  # planning expands a leading ~
    model_options: dict[str, Any] = field(default_factory=dict)
    verifier_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    strategy_options: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # replace a run already in ``output`` (else refused)
    evaluate_all: bool = False  # the evaluator on every candidate, not only the reported ones
    overlap: bool = False  # compute the next batch on a thread while this one is scored (same result)
    #: torch's intra-op threads for the run (``torch.set_num_threads``, process-wide); None: torch's
    #: default. On a CPU that other jobs share, 1 can be many times faster (docs/performance.md);
    #: results are bit-exact for a given count, so run.json records it and replay uses it.
    threads: int | None = None

    def validate(self) -> None:
        """Check every value that can be checked without plugins; errors name the field.

        The kind of every field is checked here, not only in files and ``--set``, so that
        ``search(**fields)`` and a RunConfig built by hand are held to the same rules: a string
        ``overwrite="no"`` is truthy and would replace a finished run.
        """
        for name, (accepts, _) in _FIELD_CHECKS.items():  # per search: one call per field
            value = getattr(self, name)
            if not accepts(value) and name != "model":  # a model object: plan() resolves or refuses it
                check_kind(name, value)  # raises, naming the field
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
            if value is not None and value > limit:
                raise ConfigError(name, f"{value} is more than this tool allows ({limit:,})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.seed > MAX_SEED:
            raise ConfigError("seed", f"must be at most 2**63 - 1, got {self.seed}")
        if self.solver not in SOLVERS:
            raise ConfigError("solver", f"must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.prompt is not None and self.label is not None:
            raise ConfigError("prompt", "give a prompt or a label, not both")
        if isinstance(self.label, int) and self.label < 0:
            raise ConfigError("label", f"must be a non-negative integer, got {self.label!r}")
        if self.device is not None and not DEVICE_PATTERN.fullmatch(str(self.device)):
            raise ConfigError(
                "device", f"must be auto, cpu, mps or cuda[:N] (or xpu[:N]), got {self.device!r}"
            )
        if self.verifiers is not None and not self.verifiers:
            raise ConfigError("verifiers", "name at least one verifier")
        if self.output is not None and not str(self.output).strip():
            raise ConfigError("output", "is empty; give a folder, or leave it out for the default")
        check_finite([self.model_options, self.verifier_options, self.strategy_options])

    def effective_candidates(self) -> int | None:
        if self.candidates is None and self.budget_nfe is None:
            return DEFAULT_CANDIDATES
        return self.candidates

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_finite(value: Any, where: str = "") -> None:
    """Refuse NaN and infinities anywhere in a configuration (JSON and TOML both spell them):
    a NaN guidance scale or step size would run and silently produce noise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where or "configuration", f"must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite(item, where)


def check_output_writable(path: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any compute."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError("output", f"{existing} exists and is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("output", f"cannot write in {existing}")
    if existing != path:  # root passes os.access everywhere: try making (and removing) a folder
        import tempfile

        try:
            os.rmdir(tempfile.mkdtemp(prefix=".noisesearch-probe-", dir=existing))
        except OSError as exc:
            raise ConfigError("output", f"cannot create a folder in {existing}: "
                              f"{exc.strerror or exc}") from None


# -- configuration files and overrides ---------------------------------------------------------

#: The kind of value each RunConfig annotation stands for. Field kinds are derived from the
#: annotations, so a new field is checked in files, ``--set`` and ``validate()`` alike (and one
#: with an annotation missing here fails on import instead of going unchecked).
_ANNOTATION_KINDS: dict[str, str] = {
    "str": "str", "str | None": "str?", "int": "int", "int | None": "int?", "bool": "bool",
    "int | str | None": "label", "list[str] | None": "list", "dict[str, Any]": "table",
    "dict[str, dict[str, Any]]": "tables", "str | os.PathLike[str] | None": "path?",
}
#: What each RunConfig field accepts, from its annotation.
_FIELD_KINDS: dict[str, str] = {f.name: _ANNOTATION_KINDS[str(f.type)] for f in fields(RunConfig)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Per kind: whether a value is of it, and how a message says what was expected.
_KIND_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "str?": (lambda v: v is None or isinstance(v, str), "a string"),
    "path?": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "a folder path"),
    "int": (_is_int, "an integer"),
    "int?": (lambda v: v is None or _is_int(v), "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "label": (lambda v: v is None or isinstance(v, str) or _is_int(v), "a class index or name"),
    "list": (lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
             "a list of names"),
    "table": (lambda v: isinstance(v, dict), "a table of options"),
    "tables": (lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
               "a table of option tables, one per verifier"),
}


#: Each field's check, looked up once (``validate`` runs on every search).
_FIELD_CHECKS = {name: _KIND_CHECKS[kind] for name, kind in _FIELD_KINDS.items()}


def check_kind(key: str, value: Any, where: str | None = None) -> None:
    """Refuse a value of the wrong kind for the RunConfig field ``key``, naming the field."""
    accepts, expected = _KIND_CHECKS[_FIELD_KINDS[key]]
    if not accepts(value):
        if where:
            raise ConfigError(key, f"expected {expected} in {where}, got {value!r}")
        raise ConfigError(key, f"must be {expected}, got {value!r}")


def _valid_keys() -> str:
    return ", ".join(RunConfig.__dataclass_fields__)


def load_config_file(path: Path | str) -> dict[str, Any]:
    """The RunConfig fields in a TOML file, or in a JSON file (a ``run.json`` gives its
    ``"config"``, so that ``--config RUN/run.json`` repeats that run; its ``output`` is
    dropped so the repeat gets a folder of its own). A leading ``~`` is the home folder, as in
    a shell (``--config=~/run.toml`` reaches here unexpanded)."""
    import json

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("--config", f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("--config", f"{path}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and "schema_version" in data:  # a run.json
            if not isinstance(data.get("config"), dict):
                raise ConfigError("--config", f"{path}: its \"config\" is not a table of RunConfig "
                                  f"fields; is it a run.json written by noisesearch?")
            data = {k: v for k, v in data["config"].items() if k != "output"}
    else:
        data = _parse_toml(text, path)
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path}: expected a table of RunConfig fields")
    check_config_mapping(data, where=str(path))
    return data


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "--config", "TOML files need Python 3.11+ or `pip install tomli`; or use a JSON file"
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path}: invalid TOML: {exc}") from None


def check_config_mapping(data: dict[str, Any], where: str = "configuration") -> None:
    """Refuse unknown keys (naming the valid ones) and values of the wrong kind, so that a
    typo in a file fails before anything runs instead of being silently ignored."""
    for key, value in data.items():
        if key not in _FIELD_KINDS:
            raise ConfigError(key, f"unknown key in {where}. Valid keys: {_valid_keys()}")
        check_kind(key, value, where)
        check_finite(value, key)


def parse_set(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as a nested mapping; dotted keys reach into tables
    (``verifier_options.digits-classifier.device=cpu``). Values are JSON where they parse
    (``3``, ``true``, ``["a", "b"]``), else strings; a list field also takes one name."""
    import json

    data: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if not sep or not all(parts):
            raise ConfigError("--set", f"expected KEY=VALUE or TABLE.KEY=VALUE, got {pair!r}")
        if parts[0] not in _FIELD_KINDS:
            raise ConfigError(parts[0], f"unknown key in --set. Valid keys: {_valid_keys()}")
        kind = _FIELD_KINDS[parts[0]]
        depth = {"table": 2, "tables": 3}.get(kind, 1)
        if len(parts) != depth:
            shape = {1: parts[0], 2: f"{parts[0]}.OPTION", 3: f"{parts[0]}.VERIFIER.OPTION"}[depth]
            raise ConfigError(parts[0], f"--set expects {shape}=VALUE, got {key!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if kind in ("str", "str?", "path?") and not isinstance(value, str) and value is not None:
            value = raw  # --set device=0 means the string "0"
        if kind == "list" and isinstance(value, str):
            value = [value]
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    check_config_mapping(data, where="--set")
    return data


def merge_config(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; option tables merge key by key (a file's ``[model_options]`` and a
    ``--model-opt`` both apply)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge_config(merged[key], value)
            else:
                merged[key] = value
    return merged


def config_from_mapping(data: dict[str, Any]) -> RunConfig:
    """A RunConfig from checked file, ``--set`` and command-line layers."""
    check_config_mapping(data)
    return RunConfig(**data)


def read_prompts(path: Path | str) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped. A leading
    ``~`` is the home folder, as in a shell."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("--prompts-file", f"cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("--prompts-file", f"{str(path)!r} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError("--prompts-file", f"{str(path)!r} holds no prompt (one per line)")
    return prompts
