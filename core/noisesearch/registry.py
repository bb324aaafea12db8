"""Registries: name -> factory, with the plugin that registered it.

A registry never calls a factory while listing: describing a factory reads its signature and
docstring only, so ``noisesearch verifiers NAME`` stays free of torch.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from noisesearch.errors import ConfigError, DuplicateNameError, NoiseSearchError, UnknownNameError
from noisesearch.types import REQUIREMENTS

KINDS = ("model", "verifier", "strategy")

_PARAM_DOC = re.compile(r"^\s*:param\s+(\w+):\s*(.*)$")


class Register(Protocol):
    """The callable that the ``register_*`` hooks receive."""

    def __call__(
        self, name: str, factory: Callable[..., Any], description: str | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Parameter:
    """One option of a factory, read from its signature and ``:param:`` docstring lines."""

    name: str
    default: Any
    annotation: str
    help: str

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def to_json(self) -> dict[str, Any]:
        default = None if self.required else self.default
        if not isinstance(default, (str, int, float, bool, type(None), list, tuple)):
            default = repr(default)
        return {
            "name": self.name,
            "default": default,
            "required": self.required,
            "type": self.annotation,
            "help": self.help,
        }


@dataclass(frozen=True)
class Entry:
    """A registered implementation."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str

    def parameters(self, options: dict[str, Any] | None = None) -> list[Parameter]:
        """The factory's options; for a factory that passes ``**options`` on to another
        (``options_of(**options)``: ``hf`` to the adapter of its pipeline's family), that one's too."""
        params = describe_parameters(self.factory)
        passes_to = getattr(self.factory, "options_of", None)
        if callable(passes_to):
            known = {p.name for p in params}
            params += [p for p in describe_parameters(passes_to(**(options or {}))) if p.name not in known]
        return params

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse options the factory does not take, naming the valid ones, and values that do
        not fit a simple annotation of the option (see :func:`value_checks`): ``neighbours=2.5``
        would fail mid-run, after the run folder exists, and ``pivot_competes="no"`` would run
        as true."""
        if not _takes_var_keyword(self.factory):
            known = option_names(self.factory)
            for key in options:
                if key not in known:
                    valid = ", ".join(sorted(known)) or "(none)"
                    raise ConfigError(
                        f"{self.kind} {self.name}: option {key!r}",
                        f"not an option of this {self.kind}. Valid options: {valid}.",
                    )
        checks = value_checks(self.factory)
        for key, value in options.items():
            check = checks.get(key)
            if check is not None and not check[0](value):
                raise ConfigError(f"{self.name}.{key}", f"expected {check[1]}, got {value!r}")

    def accepts(self, option: str) -> bool:
        return _takes_var_keyword(self.factory) or option in option_names(self.factory)

    def create(self, **options: Any) -> Any:
        """Build the implementation (this is when weights load).

        A ``ValueError`` or ``TypeError`` from the factory is a bad option value: it becomes a
        :class:`ConfigError` naming this implementation (the CLI prints it in one line).
        """
        self.check_options(options)
        try:
            return self.factory(**options)
        except NoiseSearchError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.kind} {self.name}", str(exc)) from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "description": self.description,
        }


class Registry:
    """Implementations of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        plugin: str,
        description: str | None = None,
    ) -> Entry:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind} name", f"must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TypeError(
                f"plugin {plugin!r} registered {self.kind} {name!r} with a non-callable "
                f"factory {factory!r}; register a class or a function"
            )
        if name in self._entries:
            raise DuplicateNameError(self.kind, name, self._entries[name].plugin, plugin)
        entry = Entry(
            kind=self.kind,
            name=name,
            factory=factory,
            plugin=plugin,
            description=description or first_docstring_line(factory),
        )
        self._entries[name] = entry
        return entry

    def bind(self, plugin: str) -> Register:
        """A ``register`` callable that records ``plugin`` as the owner."""

        def register(
            name: str, factory: Callable[..., Any], description: str | None = None
        ) -> None:
            self.add(name, factory, plugin, description)

        return register

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def create(self, name: str, **options: Any) -> Any:
        return self.get(name).create(**options)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def first_docstring_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _option_sources(factory: Callable[..., Any]) -> tuple[list[tuple[Any, Callable[..., Any]]], bool]:
    """Where a factory's options are declared, and whether it also takes any other keyword.

    A function declares its own. A class declares them in its ``__init__``; an ``__init__``
    that forwards ``**options`` to ``super().__init__`` declares the parent's too, so a
    subclass lists only what it adds. ``object.__init__`` takes nothing.
    """
    if not inspect.isclass(factory):
        return [(factory, factory)], _has_var_keyword(factory)
    sources: list[tuple[Any, Callable[..., Any]]] = []
    for owner in factory.__mro__:
        init = owner.__dict__.get("__init__")
        if init is None:
            continue
        if owner is object:
            return sources, False
        sources.append((owner, init))
        if not _has_var_keyword(init):
            return sources, False
    return sources, True


def _has_var_keyword(function: Callable[..., Any]) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(function).parameters.values())


def option_names(factory: Callable[..., Any]) -> frozenset[str]:
    """The names of ``factory``'s keyword options. Cached: planning checks options on every
    search, and describing them parses docstrings (~1 ms a search of a few ms at N = 16)."""
    if not _hashable(factory):
        return frozenset(p.name for p in describe_parameters(factory))
    return _cached_option_names(factory)


def _hashable(factory: object) -> bool:
    """(``isinstance(factory, Hashable)`` costs more than the cache lookup it guards.)"""
    try:
        hash(factory)
    except TypeError:
        return False
    return True


@functools.lru_cache(maxsize=512)
def _cached_option_names(factory: Callable[..., Any]) -> frozenset[str]:
    return frozenset(p.name for p in describe_parameters(factory))


def describe_parameters(factory: Callable[..., Any]) -> list[Parameter]:
    """The keyword options of ``factory`` without calling or importing anything new."""
    sources, _ = _option_sources(factory)
    helps: dict[str, str] = {}
    documented = factory.__mro__ if inspect.isclass(factory) else (factory,)
    for owner in reversed(documented):  # the nearest class's ``:param:`` line wins
        init = owner.__dict__.get("__init__") if inspect.isclass(owner) else None
        if init is not None:
            helps.update(_param_docs(init))
        helps.update(_param_docs(owner))
    params: dict[str, Parameter] = {}
    for _, init in sources:
        for p in inspect.signature(init).parameters.values():  # annotations stay strings
            if p.name == "self" or p.name in params or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            annotation = "" if p.annotation is p.empty else _annotation_text(p.annotation)
            params[p.name] = Parameter(p.name, p.default, annotation, helps.get(p.name, ""))
    return list(params.values())


def _annotation_text(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(
        annotation, "__name__", repr(annotation)
    )


#: A check of a value and what it expects, in words for a message.
ValueCheck = tuple[Callable[[Any], bool], str]


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


_SCALAR_CHECKS: dict[str, ValueCheck] = {
    "None": (lambda v: v is None, "null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (_finite_number, "a finite number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def value_checks(factory: Callable[..., Any]) -> dict[str, ValueCheck]:
    """The options of ``factory`` whose annotation is simple, with a check of their values.

    Simple: ``bool`` (True or False only: ``bool("no")`` is True), ``int`` (not a bool or a
    float), ``float`` (an int or float, finite: a NaN guidance scale turns guidance off), ``str``,
    ``None``, ``list[...]``/``tuple[...]`` of those, ``dict[...]``, and unions of these. Other
    annotations (``Sequence[str]``, ``Any``, a class) are left to the factory. Cached: planning
    checks options on every search.
    """
    if not _hashable(factory):
        return _value_checks(factory)
    return _cached_value_checks(factory)


@functools.lru_cache(maxsize=512)
def _cached_value_checks(factory: Callable[..., Any]) -> dict[str, ValueCheck]:
    return _value_checks(factory)


def _value_checks(factory: Callable[..., Any]) -> dict[str, ValueCheck]:
    checks = {p.name: _annotation_check(p.annotation) for p in describe_parameters(factory)}
    return {name: check for name, check in checks.items() if check is not None}


def _annotation_check(annotation: str) -> ValueCheck | None:
    """The check of a simple annotation (as text: ``int | None``), None for any other."""
    text = annotation.strip().replace("typing.", "").replace("NoneType", "None")
    if not text:
        return None
    if text.startswith("Optional[") and text.endswith("]"):
        text = f"{text[len('Optional['):-1]} | None"
    parts: list[ValueCheck] = []
    for part in split_top_level(text, "|"):
        head, bracket, inner = part.partition("[")
        if part in _SCALAR_CHECKS:
            parts.append(_SCALAR_CHECKS[part])
        elif head in ("list", "tuple", "List", "Tuple"):
            items = split_top_level(inner[:-1], ",") if bracket else []
            item = _annotation_check(items[0]) if len(items) == 1 or items[1:] == ["..."] else None
            parts.append(_sequence_check(item))
        elif head in ("dict", "Dict"):
            parts.append((lambda v: isinstance(v, dict), "a table"))
        else:
            return None  # not simple: the factory checks it
    return (lambda v: any(accepts(v) for accepts, _ in parts)), " or ".join(what for _, what in parts)


def _sequence_check(item: ValueCheck | None) -> ValueCheck:
    if item is None:
        return (lambda v: isinstance(v, (list, tuple))), "a list"
    accepts, what = item
    return (lambda v: isinstance(v, (list, tuple)) and all(accepts(x) for x in v)), f"a list (each {what})"


def split_top_level(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside brackets and braces, each part stripped (an
    annotation's ``dict[str, int] | None``, a list value's ``keep=[0.6,0.3]``)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
        if char == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _param_docs(obj: object) -> dict[str, str]:
    helps: dict[str, str] = {}
    current = None
    for line in (inspect.getdoc(obj) or "").splitlines():
        match = _PARAM_DOC.match(line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif current and line.startswith((" ", "\t")) and line.strip():
            helps[current] += " " + line.strip()
        else:
            current = None
    return helps


def _takes_var_keyword(factory: Callable[..., Any]) -> bool:
    if not _hashable(factory):
        return _option_sources(factory)[1]
    return _cached_takes_var_keyword(factory)  # cached as option_names is: checked on every search


@functools.lru_cache(maxsize=512)
def _cached_takes_var_keyword(factory: Callable[..., Any]) -> bool:
    return _option_sources(factory)[1]


def searched_names(entries: Iterable[Entry], options: Mapping[str, Mapping[str, Any]]) -> frozenset[str]:
    """The verifiers a search with ``entries`` scores by: their names and, for a verifier that runs
    others (an ensemble: its classmethod ``member_names(**options)``), theirs. An evaluator among
    them is not held out, whatever name it is searched under."""
    names: set[str] = set()
    for entry in entries:
        names.add(entry.name)
        member_names = getattr(entry.factory, "member_names", None)
        if callable(member_names):
            names.update(member_names(**dict(options.get(entry.name, {}))))
    return frozenset(names)


def verifier_requirements(entry: Entry, options: dict[str, Any]) -> frozenset[str]:
    """A verifier's needs without building it: ``requires``, or ``describe(**options)``
    where they depend on options (an ensemble needs what its members need)."""
    describe = getattr(entry.factory, "describe", None)
    needs = describe(**options).get("requires", ()) if callable(describe) else \
        getattr(entry.factory, "requires", frozenset())
    # a string would be read letter by letter, None is no set, an unknown need is never checked
    if not isinstance(needs, (set, frozenset, list, tuple)) or set(needs) - set(REQUIREMENTS):
        raise ConfigError(f"verifier {entry.name} (plugin {entry.plugin})",
                          f"declares requires = {needs!r}; it must be a set of needs among "
                          f"{', '.join(REQUIREMENTS)}")
    return frozenset(needs)
