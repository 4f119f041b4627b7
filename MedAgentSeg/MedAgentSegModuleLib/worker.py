"""One persistent worker thread for all model work; results are handed back to the main thread.

The same thread runs every job for the whole life of the logic (engine creation, image encoding,
predictions), like SlicerNNInteractive's ``_SessionExecutor``: torch's per-thread caches stay warm and no
two jobs ever run the engine at once. The worker never touches MRML. The main thread calls `poll()`
(from a QTimer in Slicer, or in a loop from the console/tests) and runs each finished job's callback
there, where MRML writes are safe.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SessionExecutor", "JobResult"]


@dataclass
class JobResult:
    """What a job returned or raised. error: the exception (None on success); trace: its formatted traceback."""

    name: str
    value: Any = None
    error: BaseException | None = None
    trace: str = ""
    seconds: float = 0.0
    callback: Callable[[JobResult], None] | None = field(default=None, repr=False)


class SessionExecutor:
    """A single long-lived daemon thread executing submitted callables in order."""

    def __init__(self, name: str = "MedAgentSeg-worker"):
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self.thread_ident: int | None = None  # set by the worker thread itself (before start: it may run first)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.thread_ident = threading.get_ident()
        while True:
            item = self._jobs.get()
            if item is None:
                return
            name, fn, args, kwargs, callback = item
            t0 = time.perf_counter()
            try:
                result = JobResult(name, value=fn(*args, **kwargs), callback=callback)
            except BaseException as exc:  # every failure must come back as a message, never kill the thread
                result = JobResult(name, error=exc, trace=traceback.format_exc(), callback=callback)
            result.seconds = time.perf_counter() - t0
            self._done.put(result)

    @property
    def busy(self) -> bool:
        """True while a job is queued, running, or finished but not yet handed over by `poll`."""
        with self._lock:
            return self._pending > 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, name: str, fn: Callable[..., Any], *args: Any,
               callback: Callable[[JobResult], None] | None = None, **kwargs: Any) -> None:
        """Queue `fn(*args, **kwargs)` on the worker; `callback(result)` runs later on the thread calling poll."""
        if not self._thread.is_alive():
            raise RuntimeError("the MedAgentSeg worker thread has stopped; reload the module (or restart Slicer)")
        with self._lock:
            self._pending += 1
        self._jobs.put((name, fn, args, kwargs, callback))

    def poll(self) -> list[JobResult]:
        """Hand over finished jobs, running their callbacks on the calling (main) thread, in order."""
        out = []
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._pending -= 1
            if result.callback is not None:
                result.callback(result)
            out.append(result)
        return out

    def wait(self, timeout: float = 600.0, interval: float = 0.02) -> None:
        """Block the calling thread, polling, until no job is left (console and test use only)."""
        deadline = time.monotonic() + timeout
        while self.busy:
            self.poll()
            if not self.busy:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker was still busy after {timeout:.0f} s")
            time.sleep(interval)
        self.poll()

    def shutdown(self) -> None:
        self._jobs.put(None)
