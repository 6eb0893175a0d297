"""A pool of worker processes that host envs, so that evaluation rollouts use every core.

Rollouts step a fixed set of envs in lock-step (``lit_imit.evaluation``): the policy sees one row per
env. ``ProcessEnvPool`` keeps that contract, row ``r`` is always the same env, but the envs live in worker
processes (several per worker when there are more envs than workers) and a ``step`` of many rows runs on all
workers at once. It implements the rollout's ``EnvBatch`` protocol (``reset``/``step``/``render`` by row), so
``evaluate`` gives the same episodes in-process or in workers.

Why our own pool rather than gymnasium's ``AsyncVectorEnv``: a rollout wave steps only the rows still running
(finished episodes are frozen, as in the serial path, and a short last wave uses fewer rows), records video by
rendering *one* env, and packs several envs into a process; ``AsyncVectorEnv`` steps and renders every env,
one per process.

It lives with the envs because it is env hosting (building envs by task name, MuJoCo/EGL's process rules),
not a rollout algorithm: ``lit_imit.interactive`` only sees the protocol and stays free of multiprocessing.

Process rules: workers are started with ``spawn`` (or ``forkserver``), never ``fork``: a forked copy of a
process holding an EGL context or torch's thread pools deadlocks or crashes. Each worker builds its envs
itself, from picklable factories, so nothing GL-bound crosses a process boundary. A worker that raises
sends its traceback back and the pool raises ``EnvWorkerError``; one that dies (segfault, OOM kill) is noticed
at the next reply (end of pipe, or a dead process at the next poll) and raises ``EnvWorkerError`` too, never a
hang. Workers exit on their own when their parent dies.

Start-up cost: spawn re-runs the parent's main *script* in every worker (multiprocessing's rule, so that
objects defined there unpickle): under the ``lit-imit`` console script or ``scripts/benchmark.py`` each worker
imports torch (and Lightning), some seconds and ~260 MiB more per worker. ``python -m lit_imit`` (a package's
``__main__``) is not re-run: workers then import only the envs (~85 MiB each).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from lit_imit.envs.registry import make_env

StepResult = tuple[Any, float, bool, bool, dict[str, Any]]


class EnvWorkerError(RuntimeError):
    """A worker process of a ``ProcessEnvPool`` failed (exception, crash or timeout)."""


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(num_workers: int | str, jobs: int, local_world_size: int = 1) -> int:
    """Worker processes for ``jobs`` parallel envs of one rank: 0 = in-process; ``"auto"`` (or -1) splits this
    node's CPUs among its ranks; never more workers than jobs."""
    if num_workers in ("auto", -1):
        return min(jobs, max(1, available_cpus() // max(1, local_world_size)))
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 0 (in-process), N > 0, -1 or 'auto', got {num_workers!r}")
    return min(jobs, num_workers)


# ---- worker side ----------------------------------------------------------------------------------------
def _worker(conn: Connection, env_fns: Sequence[Callable[[], Any]], parent_pid: int) -> None:
    """Build the envs, then serve commands until ``close`` (or until the parent is gone)."""
    envs: list[Any] = []
    try:
        envs = [fn() for fn in env_fns]  # this module's import ran lit_imit.envs' set-up (MUJOCO_GL, triton)
        conn.send(("ok", None))
        while True:
            while not conn.poll(1.0):
                if os.getppid() != parent_pid:  # orphaned: nobody will ever send "close"
                    return
            command, payload = conn.recv()
            if command == "close":
                conn.send(("ok", None))
                return
            conn.send(("ok", _serve(envs, command, payload)))
    except (KeyboardInterrupt, BrokenPipeError, EOFError):  # Ctrl-C reaches every process; parent gone
        pass
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        for env in envs:
            try:
                env.close()
            except Exception:
                pass
        conn.close()


def _serve(envs: Sequence[Any], command: str, payload: Any) -> Any:
    if command == "reset":
        return [envs[i].reset(seed=seed) for i, seed in payload]
    if command == "step":
        return [envs[i].step(action) for i, action in payload]
    if command == "render":
        return envs[payload].render()
    if command == "apply":  # a picklable function of one env and a payload, run where the env lives
        return [fn(envs[i], payload) for i, (fn, payload) in payload]
    if command == "call":  # a method or attribute of one env (or of its wrappers), for tests and tooling
        index, name, args, kwargs = payload
        attr = envs[index].get_wrapper_attr(name)
        return attr(*args, **kwargs) if callable(attr) else attr
    raise ValueError(f"unknown env worker command {command!r}")


# ---- parent side ----------------------------------------------------------------------------------------
class ProcessEnvPool:
    """``len(env_fns)`` envs hosted by ``num_workers`` processes, addressed by row (see the module doc).

    Args:
        env_fns: one picklable zero-argument env factory per row (e.g. ``functools.partial(make_env, task)``);
            each is called inside its worker.
        num_workers: processes (at most one per env). Row ``r`` lives on worker ``r % num_workers``, so a
            short wave (fewer rows than envs) is still spread over the workers.
        start_method: ``spawn`` or ``forkserver``; ``fork`` is refused (see the module doc).
        timeout: seconds to wait for any one reply before declaring the worker hung (None: wait for ever).
            It includes building the envs.
    """

    def __init__(self, env_fns: Sequence[Callable[[], Any]], num_workers: int, start_method: str = "spawn",
                 timeout: float | None = 300.0) -> None:
        if not env_fns:
            raise ValueError("ProcessEnvPool needs at least one env")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork breaks EGL and torch), "
                             f"got {start_method!r}")
        self.num_envs = len(env_fns)
        self.num_workers = min(num_workers, self.num_envs)
        self.timeout = timeout
        self._owner = os.getpid()  # a forked copy of this object (a DataLoader worker) must not stop the pool
        self._closed = False
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        ctx = mp.get_context(start_method)
        # row -> (worker, index among that worker's envs)
        self._where = [(row % self.num_workers, row // self.num_workers) for row in range(self.num_envs)]
        try:
            for worker in range(self.num_workers):
                parent_conn, child_conn = ctx.Pipe()
                fns = [fn for row, fn in enumerate(env_fns) if row % self.num_workers == worker]
                process = ctx.Process(target=_worker, args=(child_conn, fns, os.getpid()),
                                      name=f"env-worker-{worker}", daemon=True)
                process.start()
                child_conn.close()  # only the worker holds its end: its death reads as EOF here
                self._conns.append(parent_conn)
                self._processes.append(process)
            for worker in range(self.num_workers):
                self._receive(worker)  # envs built (or the worker's error raised)
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_task(cls, task: str, num_envs: int, num_workers: int, env_kwargs: dict[str, Any] | None = None,
                 **pool_kwargs: Any) -> "ProcessEnvPool":
        """``num_envs`` envs of a task (``lit_imit.envs.make_env(task, **env_kwargs)``) over ``num_workers``."""
        factory = partial(make_env, task, **dict(env_kwargs or {}))
        return cls([factory] * num_envs, num_workers, **pool_kwargs)

    # ---- the rollout's EnvBatch protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_envs

    def reset(self, rows: Sequence[int], seeds: Sequence[int | None]) -> list[tuple[Any, dict[str, Any]]]:
        """Reset ``rows`` with ``seeds``; (obs, info) per row, in the order of ``rows``."""
        return self._scatter("reset", rows, [None if s is None else int(s) for s in seeds])

    def step(self, rows: Sequence[int], actions: Sequence[Any]) -> list[StepResult]:
        """Step ``rows`` (all workers at once); (obs, reward, terminated, truncated, info) per row."""
        return self._scatter("step", rows, list(actions))

    def render(self, row: int) -> np.ndarray | None:
        """``env.render()`` of one row: only that env renders (the video of a state-only rollout)."""
        worker, index = self._where[row]
        self._send(worker, ("render", index))
        return self._receive(worker)

    def apply(self, rows: Sequence[int], fn: Callable[[Any, Any], Any], payloads: Sequence[Any]) -> list[Any]:
        """``fn(env, payload)`` for each row's env, in the workers, all workers at once; results in row order.

        ``fn`` must be importable by name (a module-level function) and payloads and results picklable. A
        worker runs its rows one after the other, so jobs longer than ``timeout`` need a pool built with a
        larger one. Work that needs more than the env (a policy, a teacher) builds it in the worker.
        """
        return self._scatter("apply", rows, [(fn, payload) for payload in payloads])

    def call(self, row: int, name: str, *args: Any, **kwargs: Any) -> Any:
        """A method (called) or attribute (read) of one row's env, looked up through its wrappers; the
        result must be picklable."""
        worker, index = self._where[row]
        self._send(worker, ("call", (index, name, args, kwargs)))
        return self._receive(worker)

    # ---- lifetime -----------------------------------------------------------------------------------------
    def close(self, grace_s: float = 5.0) -> None:
        """Close the envs and stop the workers (idempotent); a worker that does not stop is terminated."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._owner:
            return
        for conn, process in zip(self._conns, self._processes):
            if process.is_alive():
                try:
                    conn.send(("close", None))
                except OSError:
                    pass
        deadline = time.monotonic() + grace_s
        for conn, process in zip(self._conns, self._processes):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            conn.close()

    def __enter__(self) -> "ProcessEnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close(grace_s=1.0)
        except Exception:
            pass

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _scatter(self, command: str, rows: Sequence[int], payloads: Sequence[Any]) -> list[Any]:
        """Send each worker its rows' part of a command, then gather the replies back into row order."""
        if len(rows) != len(payloads):
            raise ValueError(f"{len(rows)} rows but {len(payloads)} {command} arguments")
        per_worker: dict[int, list[tuple[int, Any]]] = {}
        order: dict[int, list[int]] = {}
        for position, (row, payload) in enumerate(zip(rows, payloads)):
            worker, index = self._where[row]
            per_worker.setdefault(worker, []).append((index, payload))
            order.setdefault(worker, []).append(position)
        for worker, items in per_worker.items():
            self._send(worker, (command, items))
        results: list[Any] = [None] * len(rows)
        for worker in per_worker:  # a failed worker closes the whole pool: no half-read replies linger
            for position, result in zip(order[worker], self._receive(worker)):
                results[position] = result
        return results

    def _send(self, worker: int, message: tuple[str, Any]) -> None:
        if self._closed:
            raise EnvWorkerError("the env worker pool is closed")
        try:
            self._conns[worker].send(message)
        except OSError as error:
            self._fail(worker, f"could not be reached ({error})")

    def _receive(self, worker: int) -> Any:
        conn, process = self._conns[worker], self._processes[worker]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not conn.poll(0.5):
            if not process.is_alive():
                break  # dead without a word (its pipe end may be held open by a forked grandchild)
            if deadline is not None and time.monotonic() > deadline:
                self._fail(worker, f"did not answer within {self.timeout:.0f} s (hung?)")
        try:
            status, payload = conn.recv()
        except (EOFError, OSError):
            process.join(1.0)
            self._fail(worker, f"died (exit code {process.exitcode}; a negative code is the signal that killed it)")
        if status == "error":
            self._fail(worker, f"raised:\n{payload}")
        return payload

    def _fail(self, worker: int, what: str) -> NoReturn:
        pid = self._processes[worker].pid
        self.close(grace_s=1.0)
        raise EnvWorkerError(f"env worker {worker} (pid {pid}) {what}")


# ---- a task's envs, in this process or in a pool -------------------------------------------------------------
def open_envs(task: str, num_envs: int, num_workers: int, env_kwargs: dict[str, Any] | None = None) -> Any:
    """``num_envs`` envs of ``task``: a list stepped in this process (``num_workers`` 0) or a ``ProcessEnvPool``.

    Either is an ``EnvBatch`` for ``lit_imit.evaluation`` and ``lit_imit.rl.rollout``; :func:`close_envs`
    closes both."""
    if num_workers == 0:
        return [make_env(task, **dict(env_kwargs or {})) for _ in range(num_envs)]
    return ProcessEnvPool.for_task(task, num_envs, num_workers, env_kwargs=dict(env_kwargs or {}))


def close_envs(envs: Any) -> None:
    """Close what :func:`open_envs` opened (None: nothing)."""
    if isinstance(envs, list):
        for env in envs:
            env.close()
    elif envs is not None:
        envs.close()
