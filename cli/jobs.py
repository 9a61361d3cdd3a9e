"""Run many file transfers on a thread pool with only a few in flight at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import Any, TypeVar

T = TypeVar("T")


def run_bounded(
    pool: Executor, tasks: Iterable[tuple[Callable[..., T], Any]], limit: int, *args: Any
) -> Iterator[T]:
    """Run ``fn(item, *args)`` for each ``(fn, item)`` with at most ``limit`` submitted at once.

    Results are yielded as tasks finish. Tasks are submitted lazily, so ten thousand files do not
    become ten thousand futures; when the caller stops early (or a task fails), the tasks not yet
    started are cancelled.
    """
    pending = iter(tasks)
    running: set[Future] = set()
    try:
        while True:
            while len(running) < limit and (task := next(pending, None)) is not None:
                running.add(pool.submit(task[0], task[1], *args))
            if not running:
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in running:
            future.cancel()
