"""`medagentseg label --ray ADDRESS`: the same cases, pre-labelled by Ray actors (one engine each) instead of local
worker processes.

Each actor runs `batch.label_case` on one case at a time and keeps its engine between cases (create_engine's cache
lives as long as the actor's process). The parent hands a case to an idle actor, gets the record back and passes it
to the batch's `record`, which writes the manifest: the parent stays its only writer, and a case is handed out only
when an actor is free, so a Ctrl+C or kill -9 leaves at most one case per actor in flight (its folder is moved in
whole or not at all, as with local workers). The input and --out must be on a file system that every node sees at
the same path: the actors write the case folders.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .case import LabelError, label_case
from .case import cores as _cores
from .case import init_worker as _init_worker
from .manifest import new_record

__all__ = ["check_address", "run_on_ray", "local_head"]

CONNECT_TIMEOUT = 3.0  # seconds: a dead address is said at once instead of Ray retrying for a minute
DEATHS_IN_A_ROW = 3  # actors dying this many times without a case done: the cluster cannot run them; stop


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time: no usage report
    try:
        import ray
    except ImportError:
        raise LabelError("--ray needs Ray, which is not installed: pip install -e '.[ray]' (or use --workers N on "
                         "this machine)") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LabelError(f"--ray {address!r} is not an address: give HOST:PORT of the Ray head (as `ray start --head` "
                         "printed it) or auto")
    return host.strip("[]"), int(port)


def _answers(address: str) -> bool:
    try:
        with socket.create_connection(_host_port(address), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def _running_cluster() -> str | None:
    """The address of the cluster `ray start` left on this machine, per Ray's conventions (RAY_ADDRESS, then the
    address file of the latest `ray start`); None when there is none."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
    except Exception:  # no cluster (ConnectionError) or another Ray's internals: start a local one
        return None
    return found or None


def _send_token() -> None:
    """`ray start` turns token authentication on when a token exists here (~/.ray/auth_token, RAY_AUTH_TOKEN); a
    driver connecting by address must then send it, which ray.init(address=...) does not do by itself in Ray 2.60."""
    if "RAY_AUTH_MODE" in os.environ:  # said explicitly: Ray follows it
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: its own defaults
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def check_address(address: str) -> str | None:
    """Before anything is written: Ray is importable and the address answers. Returns the address to connect to, or
    None for `auto` with no running cluster (a local one is started). LabelError (one line) otherwise."""
    _import_ray()
    if address == "auto":
        found = _running_cluster()
        return found if found and _answers(found) else None
    if not _answers(address):
        raise LabelError(f"no Ray cluster answers at {address} (nothing accepted a connection within "
                         f"{CONNECT_TIMEOUT:.0f} s); start one there with `ray start --head --port PORT`, fix the "
                         "address, or use --ray auto (a local instance) or --workers N. Nothing was written")
    return address


class Labeler:
    """A Ray actor (made remote in `run_on_ray`: Ray is optional): one engine per actor, as create_engine's cache
    lives in this process between cases."""

    def __init__(self, threads: int) -> None:
        _init_worker(threads)

    def label(self, task: dict[str, Any], label: Callable[[dict], dict]) -> dict[str, Any]:
        if not Path(task["out"]).is_dir():  # a node without the shared folder: say so instead of writing there
            raise LabelError(f"{task['out']} is not on Ray node {socket.gethostname()}; put the input and --out on "
                             "a file system every node mounts at the same path")
        return label(task)


def _failed(task: dict[str, Any], reason: str) -> dict[str, Any]:
    rec = new_record(task["case_id"], task["image"], task["target"])
    rec.update(status="failed", reason=" ".join(reason.split())[:500],
               labelled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return rec


def run_on_ray(address: str, todo: list[dict[str, Any]], record: Callable[[dict[str, Any]], None], actors: int,
               log: Callable[[str], None], label: Callable[[dict], dict] | None = None) -> None:
    """Pre-label `todo` on Ray (`actors`: 0 = one per CPU of the cluster), passing each record to `record` as it
    comes back. `label` runs in the actors (a test can give one that kills its actor)."""
    ray = _import_ray()
    label = label or label_case  # looked up now: a test may have replaced it
    found = check_address(address)
    if not todo:
        return
    try:
        os.environ.pop("RAY_ADDRESS", None)  # ray.init prefers it to the address it is given
        if found:
            _send_token()
        if found is None:
            log("medagentseg label: no running Ray cluster found; starting a local one on this machine")
            ray.init(num_cpus=_cores(), include_dashboard=False, log_to_driver=True,
                     object_store_memory=200 * 1024 ** 2)  # only small records travel; keep the shared memory small
        else:
            ray.init(address=found, log_to_driver=True)
    except Exception as exc:  # a version mismatch, a cluster that refused the driver: one line, not a traceback
        raise LabelError(f"cannot connect to the Ray cluster at {found or 'a new local instance'}: "
                         f"{' '.join(str(exc).split())[:300]}; check that it runs the same Ray and Python as here "
                         f"({ray.__version__}, {sys.version.split()[0]}) and, if it asks for a token, that this "
                         "machine has it (RAY_AUTH_TOKEN or ~/.ray/auth_token: `ray get-auth-token` on the head)"
                         ) from None
    pool: list[Any] = []
    try:
        cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
        n = actors or int(cpus)
        per = min(cpus / n, 1.0) if n > cpus else float(int(cpus // n))
        log(f"medagentseg label: Ray at {found or 'a local instance'}: {n} actor(s), one engine each, "
            f"{per:g} CPU each ({cpus:g} CPUs in the cluster)")
        actor_class = ray.remote(num_cpus=per, max_restarts=0)(Labeler)
        pool = [actor_class.remote(max(1, int(per))) for _ in range(n)]
        _dispatch(ray, pool, deque(todo), record, label, lambda: actor_class.remote(max(1, int(per))))
    finally:
        for actor in pool:
            try:
                ray.kill(actor)  # a case in flight is left half-done in its work folder: the next run redoes it
            except Exception:
                pass
        ray.shutdown()


def _dispatch(ray: Any, pool: list[Any], queue: deque, record: Callable[[dict[str, Any]], None],
              label: Callable[[dict], dict], new_actor: Callable[[], Any]) -> None:
    idle = list(pool)
    running: dict[Any, tuple[Any, dict[str, Any]]] = {}
    deaths = 0
    while queue or running:
        while queue and idle:  # one case per free actor: nothing queued in an actor that a kill would lose track of
            actor = idle.pop()
            task = queue.popleft()
            running[actor.label.remote(task, label)] = (actor, task)
        done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)  # a timeout: Ctrl+C is seen within a second
        for ref in done:
            actor, task = running.pop(ref)
            try:
                rec = ray.get(ref)
                deaths = 0
                idle.append(actor)
            except ray.exceptions.RayTaskError as exc:  # label raised (not the case's own problem: those are records)
                rec = _failed(task, f"on Ray: {_first_line(exc.cause if exc.cause is not None else exc)}")
                idle.append(actor)
            except ray.exceptions.RayError as exc:  # the actor's process died (killed, out of memory) or was lost
                deaths += 1
                rec = _failed(task, f"the Ray actor died while labelling this case: {_first_line(exc)}")
                pool.remove(actor)
                try:
                    ray.kill(actor)  # lost but perhaps alive: it must not finish the case behind the new actor's back
                except Exception:
                    pass
                if deaths >= DEATHS_IN_A_ROW:
                    record(rec)
                    raise LabelError(f"{deaths} Ray actors died in a row without finishing a case (the last: "
                                     f"{_first_line(exc)}); check that medagentseg is installed on every node and "
                                     "that they have memory to spare. The cases not done stay pending") from None
                replacement = new_actor()
                pool.append(replacement)
                idle.append(replacement)
            record(rec)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if len(lines) > 1 and "Traceback" in text else lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_head(cpus: int, timeout: float = 120.0) -> Iterator[str]:
    """Start a Ray head on this machine (`ray start --head --block`) and yield its address; stopped on exit. Its own
    temp folder and free ports, so it neither meets another Ray here nor is met by one, and stopping it stops only
    it (`ray stop` would stop every Ray on the machine)."""
    _import_ray()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    port = _free_port()
    argv = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
            f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={temp}", f"--dashboard-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", "--object-store-memory=100000000"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log_path = Path(temp) / "head.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0 = time.monotonic()
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise LabelError(f"the local Ray head did not start (see {log_path}): "
                                 + " ".join(log_path.read_text(errors="replace").split()[-40:]))
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()  # `ray start --block` stops its own processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
