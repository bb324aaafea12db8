"""The Ray executor of ``noisesearch bench`` (``pip install 'noisesearch[ray]'``).

Placement: one model-holding actor per GPU (or per CPU slot without GPUs), each running many
cells with a :class:`noisesearch.bench.cells.CellRunner`, so a model loads once per actor.
A request that no node of the cluster can ever hold (``--workers`` beyond what fits, or
``resources`` no node has) is refused before anything runs. Each actor's resources are
reserved first (a placement group of one bundle per actor), and an actor gets cells only once
it is ready; actors still waiting for resources after ``ready_timeout_s`` are reported (the
bench goes on with the others, or, with none, stops naming what is missing): never a silent
wait for an actor that cannot be placed.
``address`` joins an existing cluster; without it a local one starts on this machine
(127.0.0.1) and is shut down at the end. Actors restart when their process dies and their
cells are retried (at-least-once); the driver keeps one row per cell key, so a retry never
duplicates a row, and a retried cell rewrites its run folder from scratch.

Cells write their run folders where their configuration says: on a multi-node cluster the
bench folder must be on a filesystem that every node mounts at the same path.

One search across actors (``search(..., executor="ray")``, ``noisesearch run --executor ray``):
:meth:`RayExecutor.dispatch` makes actors that each hold the model and compute the engine's
units of work (``noisesearch.units``); :class:`RayDispatch` sends one engine call's units to
them round-robin and gathers the outputs in order, so the search ends as a local one.
Ray is imported only when this executor is built: the core never imports it.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from noisesearch import ConfigError, hookimpl

INSTALL_HINT = "the Ray executor needs Ray: pip install 'noisesearch[ray]'"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Cells in flight per actor: one running, one queued, to hide the driver's round trip.
IN_FLIGHT = 2
#: How long actors may wait for their resources before the bench says so (``ready_timeout_s``).
READY_TIMEOUT_S = 60.0
#: An actor option and the Ray resource it takes.
RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


class _Worker:
    """The actor: a CellRunner that keeps its models between cells."""

    def __init__(self, threads: int | None) -> None:
        from noisesearch.bench.cells import CellRunner

        self.runner = CellRunner(threads)

    def run(self, cell: Any) -> dict[str, Any]:
        return self.runner.run(cell)

    def pid(self) -> int:
        import os

        return os.getpid()


class _ModelWorker:
    """The actor of one search across actors: holds one model and computes units of work
    (``noisesearch.units.compute``) with the job (prepared condition, solver, owner) that the
    driver put in the object store once per search."""

    def __init__(self, model: str, options: dict[str, Any], threads: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        from noisesearch.plugins import build_registries

        self.model = build_registries().models.get(model).create(**options)
        self.token: str | None = None
        self.job: tuple[Any, Any, Any] | None = None
        self.computed = 0

    def compute(self, token: str, job: list[Any], unit: Any) -> Any:
        """``job``: ``[ref]``, a reference in a list so that Ray does not fetch it for every
        unit; an actor restarted after a crash fetches it again."""
        import ray

        from noisesearch.units import compute

        device = getattr(self.model, "device", "cpu")
        if token != self.token:
            prepared, solver, owner = ray.get(job[0])
            self.job, self.token = (_moved(prepared, device), solver, owner), token
        prepared, solver, owner = self.job
        self.computed += 1
        return _moved(compute(self.model, prepared, solver, _moved(unit, device), owner), "cpu")

    def count(self) -> int:
        return self.computed

    def pid(self) -> int:
        import os

        return os.getpid()


class RayDispatch:
    """One search's units on model-holding actors (``noisesearch.units.Dispatch``): all units
    of an engine call sent at once, round-robin, one unit per model batch (never regrouped:
    results depend on batch composition), outputs gathered in order."""

    def __init__(self, ray: Any, actors: Sequence[Any]) -> None:
        self.ray = ray
        self.actors = list(actors)
        self._job: tuple[str, list[Any]] | None = None
        self._next = 0

    def open(self, model: Any, prepared: Any, solver: Any, owner: Any) -> None:
        import uuid

        self._job = (uuid.uuid4().hex, [self.ray.put((_moved(prepared, "cpu"), solver, owner))])

    def map(self, units: Sequence[Any]) -> Any:
        if self._job is None:
            raise RuntimeError("RayDispatch.map before open")
        ray = self.ray
        token, job = self._job
        first, self._next = self._next, self._next + len(units)  # round-robin across calls too
        refs = [self.actors[(first + i) % len(self.actors)].compute.remote(token, job, _moved(unit, "cpu"))
                for i, unit in enumerate(units)]
        done = 0
        try:
            for ref in refs:
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as error:  # the unit's own error, as if local
                    cause = getattr(error, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise
                done += 1
        finally:  # dropped early (an error, out of memory): units not yet run are not needed
            for ref in refs[done:]:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)


class RayExecutor:
    """Runs cells on Ray actors; see the module docstring.

    :param address: a cluster to join (``ray://...`` or ``auto``); default: start a local one.
    :param workers: model-holding actors per model (default: as many as the cluster fits with
        each model's declared ``resources``; else one per GPU, else one per CPU).
    :param threads: torch threads per actor.
    :param num_cpus: CPUs of a local cluster started here.
    :param gpus_per_worker: GPUs each actor takes (default: 1 where the cluster has GPUs, else
        0); a fraction shares a GPU between small models, 1 gives a large one a whole GPU.
    :param ready_timeout_s: how long actors may wait for their resources (other actors or jobs
        of the cluster holding them) before the bench says so: it then goes on with the actors
        that started, or stops, naming the missing resources, when none could.
    """

    def __init__(self, address: str | None = None, workers: int | None = None,
                 threads: int | None = None, num_cpus: int = 2,
                 gpus_per_worker: float | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError("executor", INSTALL_HINT) from None
        for name, value in (("workers", workers), ("num_cpus", num_cpus)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        for name, value in (("gpus_per_worker", gpus_per_worker), ("ready_timeout_s", ready_timeout_s)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value >= 0):
                raise ConfigError(name, f"must be a non-negative number, got {value!r}")
        self.ray = ray
        self.address = address
        self.workers = workers
        self.threads = threads
        self.num_cpus = num_cpus
        self.gpus_per_worker = gpus_per_worker
        self.ready_timeout_s = float(ready_timeout_s)
        self.actors: list[Any] = []
        self._groups: list[Any] = []  # each actor's placement group (None: it takes nothing)
        self._placed: dict[Any, Any] = {}  # a placement group's ready ref -> its actor
        self._demand: dict[str, float] = {}  # what each actor of the pool takes
        self._what = ""  # the pool's model, for messages
        self._serving: tuple[str, str] | None = None  # the model the actors hold: (kind, key)
        self._started_cluster = False
        self._saved_env: str | None = None
        self._saved_flag = True

    def start(self) -> None:
        """Join or start the cluster (actors are made per model, in :meth:`run`)."""
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError("address", f"cannot join the Ray cluster at {self.address!r}: "
                                  f"{exc}") from None
        else:
            self._loopback(True)
            ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            self._started_cluster = True

    def _placement(self, resources: Mapping[str, float], model: str) -> tuple[dict[str, Any], int]:
        """The actor options and the number of actors for one model: its declared resources
        (a cell's ``resources``), else one GPU each where the cluster has GPUs, else one CPU slot
        each; as many actors as the cluster's nodes hold, or ``workers``. Refused (naming
        ``resources`` or ``workers`` and what the cluster has) where the cluster can never
        hold them: such actors would wait for ever."""
        nodes = [dict(node.get("Resources") or {}) for node in self.ray.nodes() if node.get("Alive")]
        gpus = sum(float(node.get("GPU", 0)) for node in nodes)
        default_gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        options = {"num_cpus": 1, "num_gpus": default_gpus, **resources}
        demand = _demand(options)
        if not demand:  # takes nothing: one actor per CPU, as without resources
            fits = max(1, int(sum(float(node.get("CPU", 0)) for node in nodes)))
        else:
            fits = sum(_fits(node, demand) for node in nodes)
        has = f"the Ray cluster has {_amounts(_total(nodes), demand)} ({_count(len(nodes), 'node')})"
        if fits == 0:
            field, where = "resources", f"declare what a worker takes in [resources.{model}]"
            if resources:
                where = f"declare less in [resources.{model}]"
            elif self.gpus_per_worker:
                field, where = "gpus_per_worker", "ask for fewer GPUs per worker"
            raise ConfigError(field, f"a worker for {model!r} takes {_amounts(demand, demand)}, which "
                              f"no node has: {has}; {where}, or use a cluster that has them")
        count = self.workers or fits
        if count > fits and demand:  # an actor that takes nothing always fits
            raise ConfigError("workers", f"{count} workers for {model!r}, each taking "
                              f"{_amounts(demand, demand)}, do not fit: {has}, room for {fits}; "
                              f"ask for at most {fits} (or leave --workers out)")
        return options, count

    def check(self, cells: Sequence[Any]) -> None:
        """Refuse, before anything is written or run, cells whose actors the cluster can never
        hold (:meth:`_placement`)."""
        self.start()
        for group in _by_model(cells):
            self._placement(dict(group[0].resources), str(group[0].config.get("model")))

    def _spawn(self, resources: dict[str, float], worker: type = _Worker,
               args: tuple[Any, ...] = (), model: str = "") -> None:
        """Actors for one model (see :meth:`_placement`), each in a placement group of its own
        that reserves its resources: one that cannot be placed is told from one that starts."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray = self.ray
        self._kill_actors()
        options, count = self._placement(resources, model)
        demand = _demand(options)
        actor_class = ray.remote(max_restarts=-1, max_task_retries=-1)(worker)
        args = args or (self.threads,)
        self._demand, self._what = demand, model
        for _ in range(count):
            group, extra = None, {}
            if demand:  # a bundle of nothing is not a placement group: such an actor is placed
                group = placement_group([demand])
                extra["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=0)
            actor = actor_class.options(**options, **extra).remote(*args)
            self.actors.append(actor)
            self._groups.append(group)
            if group is not None:
                self._placed[group.ready()] = actor

    def _unplaced(self, actors: Sequence[Any]) -> list[Any]:
        """Those of ``actors`` whose resources are not reserved yet."""
        refs = [ref for ref, actor in self._placed.items() if actor in actors]
        placed = self.ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
        reserved = {self._placed[ref] for ref in placed}
        return [actor for actor in actors if actor in self._placed.values() and actor not in reserved]

    def _missing(self, waiting: int) -> str:
        """What ``waiting`` actors wait for, in words."""
        free = self.ray.available_resources()
        total = self.ray.cluster_resources()
        has = ", ".join(f"{_amount(key, free.get(key, 0))} free of {_amount(key, total.get(key, 0))}"
                        for key in self._demand)
        return (f"{_count(waiting, 'worker')} for {self._what!r} each taking "
                f"{_amounts(self._demand, self._demand)} could not be placed in "
                f"{self.ready_timeout_s:g} s: the cluster has {has} (other actors or jobs hold the rest)")

    def _waited(self, waiting: Sequence[Any], started: int) -> list[Any]:
        """``ready_timeout_s`` passed with ``waiting`` actors not ready and ``started`` ready:
        those without resources yet are returned, to be dropped, after a warning; if no actor
        has any, the bench stops naming what is missing. Actors with their resources are
        starting (loading a model can take minutes): they are waited for."""
        unplaced = self._unplaced(waiting)
        if not unplaced:
            return []
        why = self._missing(len(unplaced))
        if started == 0 and len(unplaced) == len(waiting):
            self._kill_actors()  # their pending placement groups would take resources once freed
            raise ConfigError("resources", f"no Ray worker could start: {why}; free them, declare "
                              f"less in [resources.{self._what}], or wait longer (ready_timeout_s)")
        others = _count(len(self.actors) - len(unplaced), "worker")
        warnings.warn(f"{why}; going on with the other {others}", RuntimeWarning, stacklevel=3)
        return unplaced

    def _await_ready(self) -> None:
        """Wait until every actor of the pool is ready; those still without resources after
        ``ready_timeout_s`` are dropped (see :meth:`_waited`). An actor that fails to start
        (its constructor raised) raises here."""
        ray = self.ray
        starting = {actor.pid.remote(): actor for actor in self.actors}
        started = 0
        deadline = time.monotonic() + self.ready_timeout_s
        while starting:
            done, _ = ray.wait(list(starting), num_returns=1,
                               timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                for actor in self._waited(list(starting.values()), started):
                    self._drop(actor)
                    starting = {ref: a for ref, a in starting.items() if a is not actor}
                deadline = time.monotonic() + self.ready_timeout_s
                continue
            actor = starting.pop(done[0])
            ray.get(done[0])
            started += 1

    def dispatch(self, model: str, options: dict[str, Any],
                 resources: dict[str, float] | None = None) -> RayDispatch:
        """A dispatch for one search of ``model`` (a registered name, built on each actor with
        ``options``): the actors are made once and serve every search of the same model. They
        run ``threads`` torch threads, else what Ray gives an actor (one per CPU it takes): on
        CPUs the thread count can change results by ~1e-7, like batch composition, so give the
        driver the same count for bit-identical results (more threads than the actor's CPUs
        slow it down many times over on a busy machine)."""
        import json

        self.start()
        key = json.dumps([model, options, resources or {}], sort_keys=True, default=str)
        if self._serving != ("search", key):
            self._spawn(dict(resources or {}), _ModelWorker, (model, options, self.threads), model)
            self._await_ready()  # units go round-robin to every actor: each must be able to run
            self._serving = ("search", key)
        return RayDispatch(self.ray, self.actors)

    def computed(self) -> list[int]:
        """Units each actor of a search has computed (tests check that work was spread)."""
        return [self.ray.get(actor.count.remote()) for actor in self.actors]

    def pids(self) -> list[int]:
        """The actors' process ids (tests kill one to check recovery)."""
        return [self.ray.get(actor.pid.remote()) for actor in self.actors]

    def run(self, cells: Sequence[Any], on_row: Any) -> None:
        """Cells in order of their models: one pool of actors per model (so a model's workers
        take what it declares, and GPU memory is freed before the next model), each actor
        serving many cells."""
        self.start()
        for group in _by_model(cells):
            self._spawn(dict(group[0].resources), model=str(group[0].config.get("model")))
            self._dispatch(group, on_row)

    def _dispatch(self, cells: Sequence[Any], on_row: Any) -> None:
        """The cells on the pool's actors, each actor given cells only once it is ready (so no
        cell waits on an actor that cannot be placed), ``IN_FLIGHT`` at a time."""
        from noisesearch.bench.cells import base_row

        ray = self.ray
        queue = list(cells)
        in_flight: dict[Any, tuple[Any, Any]] = {}
        written: set[str] = set()
        starting = {actor.pid.remote(): actor for actor in self.actors}  # readiness
        started, lost = 0, None
        deadline = time.monotonic() + self.ready_timeout_s

        def submit(actor: Any) -> None:
            cell = queue.pop(0)
            in_flight[actor.run.remote(cell)] = (actor, cell)

        def write(row: dict[str, Any]) -> None:
            if row["key"] not in written:
                written.add(row["key"])
                on_row(row)

        def failed(cell: Any, error: BaseException) -> dict[str, Any]:
            row = base_row(cell)
            row.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
            return row

        while queue or in_flight:
            if not in_flight and not starting:  # no actor could start: say why in each row
                for cell in queue:
                    write(failed(cell, lost or RuntimeError("no Ray worker started")))
                return
            timeout = max(0.0, deadline - time.monotonic()) if starting else None
            done, _ = ray.wait([*in_flight, *starting], num_returns=1, timeout=timeout)
            if not done:  # actors still not ready: placed ones are starting; the others?
                for actor in self._waited(list(starting.values()), started):
                    starting = {ref: a for ref, a in starting.items() if a is not actor}
                    self._drop(actor)
                deadline = time.monotonic() + self.ready_timeout_s
                continue
            ref = done[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as error:  # its constructor failed: its resources go back
                    lost = error
                    self._drop(actor)
                    continue
                started += 1
                for _ in range(IN_FLIGHT):
                    if queue:
                        submit(actor)
                continue
            actor, cell = in_flight.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.RayError as error:  # retries exhausted: record it, go on
                row = failed(cell, error)
            write(row)
            if queue:
                submit(actor)

    def _drop(self, actor: Any) -> None:
        """An actor that could not be placed, with its placement group: its resources, once
        free, are not taken by a worker given no cells."""
        from ray.util.placement_group import remove_placement_group

        index = self.actors.index(actor)
        group = self._groups[index]
        with contextlib.suppress(Exception):
            self.ray.kill(actor)
        if group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(group)
        del self.actors[index], self._groups[index]
        self._placed = {ref: a for ref, a in self._placed.items() if a is not actor}

    def _kill_actors(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor)
        if any(group is not None for group in self._groups):
            from ray.util.placement_group import remove_placement_group

            for group in self._groups:
                if group is not None:
                    with contextlib.suppress(Exception):
                        remove_placement_group(group)
        self.actors, self._groups, self._placed = [], [], {}
        self._serving = None

    def close(self) -> None:
        self._kill_actors()
        if self._started_cluster:
            self.ray.shutdown()
            self._started_cluster = False
            self._loopback(False)

    def _loopback(self, on: bool) -> None:
        """Keep a cluster started here on 127.0.0.1. Ray registers a node under this machine's
        network address even when told 127.0.0.1, except in the loopback mode it uses on macOS
        and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): set it for this process and the
        processes Ray starts, and restore it afterwards."""
        import os

        from ray._private import ray_constants

        if on:
            self._saved_env = os.environ.get(LOOPBACK_ENV)
            self._saved_flag = ray_constants.ENABLE_RAY_CLUSTER
            os.environ[LOOPBACK_ENV] = "0"
            ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time; ray is imported already
        else:
            if self._saved_env is None:
                os.environ.pop(LOOPBACK_ENV, None)
            else:
                os.environ[LOOPBACK_ENV] = self._saved_env
            ray_constants.ENABLE_RAY_CLUSTER = self._saved_flag


def _moved(thing: Any, device: Any) -> Any:
    """``thing`` with its tensors on ``device`` (in dicts, lists, tuples and dataclasses, such as
    a unit, its output or a prepared condition): tensors travel between processes and nodes on
    the CPU, and each side puts them where its model is (exact copies: results do not change)."""
    import dataclasses

    import torch

    if isinstance(thing, torch.Tensor):
        return thing.to(device)
    if isinstance(thing, dict):
        return {key: _moved(value, device) for key, value in thing.items()}
    if isinstance(thing, (list, tuple)) and not hasattr(thing, "_fields"):
        return type(thing)(_moved(value, device) for value in thing)
    if dataclasses.is_dataclass(thing) and not isinstance(thing, type):
        return dataclasses.replace(thing, **{f.name: _moved(getattr(thing, f.name), device)
                                             for f in dataclasses.fields(thing) if f.init})
    return thing


def _demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources that actor ``options`` take (``{"CPU": 1.0, "GPU": 0.5}``), zeros left out."""
    return {RESOURCE_NAMES[key]: float(value) for key, value in options.items()
            if key in RESOURCE_NAMES and value}


def _fits(resources: Mapping[str, Any], demand: Mapping[str, float]) -> int:
    """How many actors taking ``demand`` one node with ``resources`` holds (a fraction of a
    GPU shares it: 0.25 fits four times in one)."""
    return min(int(float(resources.get(key, 0)) / need + 1e-9) for key, need in demand.items())


def _total(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            total[key] = total.get(key, 0.0) + float(value)
    return total


def _amount(key: str, value: Any) -> str:
    value = float(value)
    if key == "memory":
        return f"{value / 2**30:.3g} GiB of memory"
    return f"{value:g} {key}" + ("" if value == 1 else "s")


def _amounts(resources: Mapping[str, Any], demand: Mapping[str, float]) -> str:
    """CPUs and GPUs (and memory where asked for) of ``resources``: "2 CPUs, 0 GPUs"."""
    keys = ["CPU", "GPU", *(["memory"] if "memory" in demand else [])]
    return ", ".join(_amount(key, resources.get(key, 0)) for key in keys)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _by_model(cells: Sequence[Any]) -> list[list[Any]]:
    """Consecutive cells of one model (and resources): one pool of actors each."""
    groups: list[list[Any]] = []
    for cell in cells:
        if groups and _same_model(groups[-1][0], cell):
            groups[-1].append(cell)
        else:
            groups.append([cell])
    return groups


def _same_model(a: Any, b: Any) -> bool:
    keys = ("model", "model_options", "device")
    return [a.config.get(k) for k in keys] == [b.config.get(k) for k in keys] and a.resources == b.resources


@hookimpl
def register_executors(register: Any) -> None:
    register("ray", RayExecutor)
