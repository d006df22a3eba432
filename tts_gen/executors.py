"""Where ``tts-gen`` work runs: any :class:`concurrent.futures.Executor` (local pool, Dask, Ray).

Why an executor and nothing more: generation is a bag of independent, seeded per-utterance tasks
whose results the *parent* collects into the ledger and manifests (see :mod:`tts_gen.generate`).
The parent never depends on which process, machine or retry produced a FLAC, so swapping the local
process pool for a Dask or Ray cluster changes throughput and nothing in the output.

* ``local``: :class:`concurrent.futures.ProcessPoolExecutor` (the default; see ``generate``).
* ``dask``: a :class:`distributed.Client` on ``scheduler`` (``tcp://host:port``), or on a
  :class:`distributed.LocalCluster` of ``num_jobs`` single-threaded worker processes when no address
  is given. Dask reruns the task of a worker that dies on another worker.
* ``ray``: ``ray.init(address=scheduler)`` (or a local Ray of ``num_jobs`` CPUs); each submission is a
  Ray task (retried by Ray when its worker dies) exposed as a ``concurrent.futures.Future``.

Remote workers start with no engine options: every chunk carries them (:func:`run_chunk`), and a
worker (re)builds its engines only when they change. The output directory must be on a file system
every worker can write (the FLACs are written by the workers, the manifests by the parent).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

EXECUTORS = ("local", "dask", "ray")
DEFAULT_CONNECT_TIMEOUT = 30.0


class ExecutorError(RuntimeError):
    """The executor cannot be started: optional package missing, scheduler unreachable, bad kind."""


def run_chunk(engine_opts: Mapping[str, Mapping[str, Any]], tasks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Synthesize ``tasks`` on whatever worker runs this (a fresh Dask/Ray process has no initializer).

    Engine options travel with every chunk; a worker keeps its engines (piper loads a model once)
    while the options stay the same.
    """
    from tts_gen import generate as gen

    opts = {k: dict(v) for k, v in engine_opts.items()}
    if gen._WORKER_OPTS != opts:
        gen._init_worker(opts)
    return gen._synthesize_chunk(tasks)


@contextlib.contextmanager
def make_executor(kind: str, num_jobs: int = 1, scheduler: Optional[str] = None,
                  connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Iterator[Optional[cf.Executor]]:
    """Yield the executor ``kind`` names (``None`` for ``local``: ``generate`` builds its own pool).

    ``num_jobs`` sizes a cluster this function starts (LocalCluster workers, local Ray CPUs); with a
    ``scheduler`` address the cluster's own size applies. Closes what it started on exit.
    """
    if kind == "local":
        if scheduler:
            raise ExecutorError(f"--scheduler {scheduler} needs --executor dask or ray (local uses a process pool)")
        yield None
    elif kind == "dask":
        with _dask_executor(num_jobs, scheduler, connect_timeout) as ex:
            yield ex
    elif kind == "ray":
        with _ray_executor(num_jobs, scheduler) as ex:
            yield ex
    else:
        raise ExecutorError(f"unknown executor {kind!r}: expected one of {', '.join(EXECUTORS)}")


def executor_workers(executor: Optional[cf.Executor], default: int) -> int:
    """How many tasks the executor runs at once (sizes chunks and the in-flight window)."""
    count = getattr(executor, "synthasr_workers", None)
    return max(1, int(count)) if count else max(1, default)


def _missing(package: str, extra: str) -> ExecutorError:
    return ExecutorError(f"executor needs the optional package {package!r}: pip install 'synthasr[{extra}]'")


@contextlib.contextmanager
def _dask_executor(num_jobs: int, scheduler: Optional[str], connect_timeout: float) -> Iterator[cf.Executor]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise _missing("distributed", "scale") from None
    cluster = None
    if scheduler:
        client = _connect_dask(Client, scheduler, connect_timeout)
    else:
        # One thread per worker process: an engine instance is per process, and espeak/piper are
        # CPU-bound (threads would only contend for the GIL or the cores).
        cluster = LocalCluster(n_workers=max(1, num_jobs), threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        executor = client.get_executor(pure=False)
        executor.synthasr_workers = _dask_threads(client) or num_jobs
        yield executor
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect_dask(client_cls: Callable[..., Any], scheduler: str, timeout: float):
    """A client on ``scheduler``; an unreachable address is one line naming it (not a traceback)."""
    try:
        return client_cls(scheduler, timeout=f"{timeout}s")
    except (OSError, TimeoutError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s: {reason}") from None


def _dask_threads(client) -> int:
    try:
        return int(sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - only a sizing hint
        return 0


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class RayExecutor(cf.Executor):
    """``concurrent.futures`` face of Ray tasks: ``submit`` -> a Ray task's ``ObjectRef.future()``.

    Every callable (builtins included, which ``ray.remote`` refuses) goes through one remote shim.
    Ray's task retries (``max_retries``, default 3) rerun a task whose worker died.
    """

    def __init__(self, max_retries: int = 3) -> None:
        import ray

        self._remote = ray.remote(max_retries=max_retries)(_call)
        self.synthasr_workers = int(ray.cluster_resources().get("CPU", 1))

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self._remote.remote(fn, *args, **kwargs).future()


@contextlib.contextmanager
def _ray_executor(num_jobs: int, scheduler: Optional[str]) -> Iterator[cf.Executor]:
    try:
        import ray
    except ImportError:
        raise _missing("ray", "ray") from None
    started = not ray.is_initialized()
    if started:
        kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if scheduler:
            kwargs["address"] = scheduler
        else:
            kwargs["num_cpus"] = max(1, num_jobs)
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ExecutorError(f"cannot start Ray{' at ' + scheduler if scheduler else ''}: {reason}") from None
    try:
        yield RayExecutor()
    finally:
        if started:
            ray.shutdown()
