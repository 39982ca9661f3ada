"""Process-wide threads, started on first use: the helpers a read hands part of its pieces to, and
the tile iterator's prefetch pool."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class LazyPool:
    """A process-wide thread pool, started on first use, and again in a forked child (whose copy
    of the pool would count threads that do not exist there and never run a task)."""

    def __init__(self, workers: int, name: str):
        self._workers, self._name = workers, name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
            return self._pool


class _Helper:
    """One parked thread: ``start`` hands it a job, ``wait`` returns the job's error or None. A
    pair of plain locks is the whole hand-off (a Future, its Condition and a queue cost ~50 µs of
    wall time per read here, a quarter of a 256² read)."""

    def __init__(self, name: str):
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job: tuple[Callable[[Any], None], Any] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            assert self._job is not None
            fn, arg = self._job
            self._job = None
            try:
                fn(arg)
                self._error = None
            except BaseException as e:  # handed to the caller by wait()
                self._error = e
            self._done.release()

    def start(self, fn: Callable[[Any], None], arg: Any) -> None:
        self._job = (fn, arg)
        self._go.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        return self._error


class Helpers:
    """Up to ``limit`` parked threads that reads lend work to. A read takes only idle helpers, and
    decodes its own share on the calling thread, so concurrent reads (prefetching iterators, a
    server's requests) never queue behind each other or deadlock: a busy process simply gets fewer
    helpers per read. Reset in a forked child, whose copies of the threads do not exist."""

    def __init__(self, limit: int, name: str):
        self._limit, self._name = limit, name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._started = 0

    def run(self, fn: Callable[[Any], None], arg: Any, threads: int) -> None:
        """``fn(arg)`` on the calling thread and at once on up to ``threads - 1`` helpers (``arg``
        is what they share, such as one iterator of tasks); the first error is raised after all
        have finished."""
        got: list[_Helper] = []
        with self._lock:
            while len(got) < threads - 1 and self._idle:
                got.append(self._idle.pop())
            while len(got) < threads - 1 and self._started < self._limit:
                self._started += 1
                got.append(_Helper(f"{self._name}-{self._started}"))
        for h in got:
            h.start(fn, arg)
        try:
            fn(arg)
        finally:
            errors = [h.wait() for h in got]
            with self._lock:
                self._idle += got
        for e in errors:
            if e is not None:
                raise e
