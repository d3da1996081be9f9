"""What every benchmark stands on: a local stack of its own, processes, statistics.

Each benchmark starts from a fresh stack (moto server and simulators restarted, Redis
database flushed, tables and queues provisioned), so one benchmark's leftovers (moto
slows down with the size of a table and the depth of a queue) never bias the next.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil


def prepare_environment(redis_db: int) -> Path:
    """Point every dmd setting at the bench's own stack. Call before importing any dmd module."""
    from dmd_tasks.ops.stack import free_port

    run_dir = Path(tempfile.mkdtemp(prefix="dmd-bench-"))
    moto_port, sim_port = free_port(), free_port()
    env = {
        "DMD_PROFILE": "local",
        "DMD_MOTO_PORT": str(moto_port),
        "DMD_SIMULATOR_PORT": str(sim_port),
        "DMD_AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "DMD_REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "DMD_RUN_DIR": str(run_dir),
        "DMD_FLOWER_PORT": str(free_port()),
        "DMD_API_PORT": str(free_port()),
        "DMD_METRICS_PORT": str(free_port()),
        "DMD_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }
    for provider in ("BITLY", "SMS", "DISCOVERY", "ACCOUNTS"):
        env[f"DMD_{provider}_BASE_URL"] = f"http://127.0.0.1:{sim_port}"
    os.environ.update(env)
    return run_dir


# ---- statistics -------------------------------------------------------------------------------------


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median and spread (min, max, and max-min relative to the median) of several runs."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "runs": 0, "values": []}
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return {
        "median": round(median, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "spread": round(spread, 3),
        "runs": len(values),
        "values": [round(v, digits) for v in values],
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation beyond the samples taken)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def wait_until(check: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(interval)


class SendsSettled:
    """Whether a sale's sends have settled, asked of the SMS simulator (cheap): most of the
    ``messaged`` accepted, or none accepted for ``quiet_seconds``. A benchmark reads the sale's
    notifications from the table only then: counting a sale of thousands every 2 s is a query
    that returns every notification, load of its own on the store the sale runs on."""

    def __init__(self, sim: Any, sale_id: str, messaged: int, quiet_seconds: float = 5.0) -> None:
        self._sim, self._sale_id, self._messaged, self._quiet = sim, sale_id, messaged, quiet_seconds
        self._accepted, self._since = -1, time.monotonic()

    def __call__(self) -> bool:
        accepted = int(self._sim.sms_sale(self._sale_id).get("accepted", 0))
        if accepted != self._accepted:
            self._accepted, self._since = accepted, time.monotonic()
        return accepted >= 0.9 * self._messaged or time.monotonic() - self._since >= self._quiet


# ---- processes ----------------------------------------------------------------------------------------


@dataclass
class ProcessUsage:
    """CPU seconds and peak resident memory of process trees, read from the OS while they run."""

    cpu_seconds: float = 0.0
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    cpu_seconds_by_process: dict[str, float] = field(default_factory=dict)


def tree_usage(pids: dict[str, int]) -> ProcessUsage:
    """CPU (own + reaped children) and the largest VmHWM of each named process tree."""
    usage = ProcessUsage()
    for name, pid in pids.items():
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        peak = 0
        for proc in members:
            try:
                times = proc.cpu_times()
                used = times.user + times.system + times.children_user + times.children_system
                usage.cpu_seconds += used
                usage.cpu_seconds_by_process[name] = usage.cpu_seconds_by_process.get(name, 0.0) + used
                peak = max(peak, _vm_hwm(proc.pid))
            except psutil.NoSuchProcess:
                continue
        usage.peak_rss_bytes[name] = peak
    return usage


def _vm_hwm(pid: int) -> int:
    """Peak resident set size of one process (Linux VmHWM), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss


class Harness:
    """The bench's stack and processes. ``fresh()`` before each benchmark."""

    def __init__(self, say: Callable[[str], None]) -> None:
        from dmd_tasks.infra.settings import get_settings
        from simulators.control import SimulatorControl

        self.settings = get_settings()
        self.say = say
        self.sim = SimulatorControl(f"http://{self.settings.simulator_host}:{self.settings.simulator_port}")
        self._stack: Any = None

    def fresh(self, simulator_nice: int = 0) -> None:
        """Restart moto and the simulators, flush the bench's Redis database, provision everything.

        ``simulator_nice`` below 0 runs the simulators at a higher CPU priority than the pipeline."""
        import redis

        from dmd_tasks.ops.provision import provision
        from dmd_tasks.ops.stack import Stack

        if self._stack is not None:
            self._stack.down()
        metrics = self.settings.metrics_dir.resolve()
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir(parents=True, exist_ok=True)
        self._stack = Stack(self.settings.model_copy(update={"simulator_nice": simulator_nice}))
        self._stack.up()
        provision(self.settings)
        redis.Redis.from_url(self.settings.redis_url).flushdb()
        self.sim.reset()

    def close(self) -> None:
        if self._stack is not None:
            self._stack.down()
            self._stack = None

    @contextmanager
    def processes(
        self,
        specs: Iterable[str | tuple[str, str, Sequence[str]]],
        env: dict[str, str] | None = None,
        label: str = "bench",
    ) -> Iterator[Any]:
        """Run Procfile processes (``name`` or ``(name, instance, extra args)``) for the block."""
        from dmd_tasks.ops.stack import ProcessGroup

        group = ProcessGroup(self.settings.run_dir.resolve() / "logs" / label, env=env)
        try:
            for spec in specs:
                if isinstance(spec, str):
                    group.start_one(spec)
                else:
                    name, instance, extra = spec
                    group.start_one(name, instance, extra)
            yield group
        finally:
            group.stop()

    def wait_workers(self, group: Any, nodes: Sequence[str], timeout: float = 60.0) -> None:
        """Until every named Celery worker (``send@host``...) answers a ping (over Redis)."""
        from dmd_tasks.celery_app import app

        def all_ready() -> bool:
            crashed = group.dead()
            if crashed:
                raise RuntimeError(f"processes exited: {crashed}; logs in {group.log_dir}")
            replies = app.control.ping(timeout=0.5) or []
            seen = {name.split("@", 1)[0] for reply in replies for name in reply}
            return all(node in seen for node in nodes)

        wait_until(all_ready, timeout, interval=0.2, what=f"workers {list(nodes)} ready")

    def usage(self, group: Any) -> ProcessUsage:
        return tree_usage({name: p.pid for name, p in group.processes.items()})


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    import platform

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
