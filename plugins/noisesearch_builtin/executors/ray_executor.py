"""The Ray executor of ``noisesearch bench`` (``pip install 'noisesearch[ray]'``).

Placement: one model-holding actor per GPU (or per CPU slot without GPUs), each running many
cells with a :class:`noisesearch.bench.cells.CellRunner`, so a model loads once per actor.
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
from collections.abc import Sequence
from typing import Any

from noisesearch import ConfigError, hookimpl

INSTALL_HINT = "the Ray executor needs Ray: pip install 'noisesearch[ray]'"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Cells in flight per actor: one running, one queued, to hide the driver's round trip.
IN_FLIGHT = 2


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
    """

    def __init__(self, address: str | None = None, workers: int | None = None,
                 threads: int | None = None, num_cpus: int = 2,
                 gpus_per_worker: float | None = None) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise ConfigError("executor", INSTALL_HINT) from None
        if workers is not None and workers < 1:
            raise ConfigError("workers", f"must be at least 1, got {workers}")
        self.ray = ray
        self.address = address
        self.workers = workers
        self.threads = threads
        self.num_cpus = num_cpus
        self.gpus_per_worker = gpus_per_worker
        self.actors: list[Any] = []
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

    def _spawn(self, resources: dict[str, float], worker: type = _Worker,
               args: tuple[Any, ...] = ()) -> None:
        """Actors for one model: its declared resources (a cell's ``resources``), else one GPU
        each where the cluster has GPUs, else one CPU slot each."""
        ray = self.ray
        self._kill_actors()
        cluster = ray.cluster_resources()
        gpus, cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 1))
        default_gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        options = {"num_cpus": 1, "num_gpus": default_gpus, **resources}
        if self.workers:
            count = self.workers
        elif options["num_gpus"]:
            count = max(1, int(gpus / options["num_gpus"]))
        else:
            count = max(1, int(cpus / max(options["num_cpus"], 1e-9)))
        actor_class = ray.remote(max_restarts=-1, max_task_retries=-1)(worker)
        args = args or (self.threads,)
        self.actors = [actor_class.options(**options).remote(*args) for _ in range(count)]

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
            self._spawn(dict(resources or {}), _ModelWorker, (model, options, self.threads))
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
        groups: list[list[Any]] = []
        for cell in cells:
            if groups and _same_model(groups[-1][0], cell):
                groups[-1].append(cell)
            else:
                groups.append([cell])
        for group in groups:
            self._spawn(dict(group[0].resources))
            self._dispatch(group, on_row)

    def _dispatch(self, cells: Sequence[Any], on_row: Any) -> None:
        from noisesearch.bench.cells import base_row

        ray = self.ray
        queue = list(cells)
        in_flight: dict[Any, tuple[Any, Any]] = {}
        written: set[str] = set()

        def submit(actor: Any) -> None:
            cell = queue.pop(0)
            in_flight[actor.run.remote(cell)] = (actor, cell)

        for _ in range(IN_FLIGHT):
            for actor in self.actors:
                if queue:
                    submit(actor)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                actor, cell = in_flight.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as error:  # retries exhausted: record it, go on
                    row = base_row(cell)
                    row.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
                if row["key"] not in written:
                    written.add(row["key"])
                    on_row(row)
                if queue:
                    submit(actor)

    def _kill_actors(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor)
        self.actors = []
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


def _same_model(a: Any, b: Any) -> bool:
    keys = ("model", "model_options", "device")
    return [a.config.get(k) for k in keys] == [b.config.get(k) for k in keys] and a.resources == b.resources


@hookimpl
def register_executors(register: Any) -> None:
    register("ray", RayExecutor)
