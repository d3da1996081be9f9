"""The local stack on loopback: moto server, Redis, the provider simulators; and Procfile processes.

``dmd stack up`` starts what is not already answering (and reuses what is: a Redis on
6379 is the machine's own), writing pid files and logs under ``run_dir``; ``dmd stack
down`` stops only what it started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dmd_tasks.infra.extras import MissingExtra, require
from dmd_tasks.infra.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def _procfile() -> Path:
    """The Procfile: the checkout's, or (an installed package) the copy in ``<prefix>/share/dmd``."""
    checkout = REPO_ROOT / "Procfile"
    return checkout if checkout.exists() else Path(sysconfig.get_path("data")) / "share" / "dmd" / "Procfile"


PROCFILE = _procfile()


def spawn(
    argv: Sequence[str | Path], log: Path, env: Mapping[str, str], cwd: Path = REPO_ROOT
) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own (a group to signal as one), stdin closed, its
    output appended to ``log``: how the local stack, the process groups and the tests start one."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(a) for a in argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 30.0,
    what: str = "service",
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode} before listening on {host}:{port}\n{tail}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """Starts and stops the local services; ``run_dir`` holds their pid files and logs."""

    settings: Settings

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir.resolve()

    def _paths(self, name: str) -> tuple[Path, Path]:
        (self.run_dir / "pids").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        return self.run_dir / "pids" / f"{name}.pid", self.run_dir / "logs" / f"{name}.log"

    def _spawn(
        self,
        name: str,
        argv: list[str],
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> str:
        if port_open(host, port):
            return f"{name}: already listening on {host}:{port}"
        pid_path, log_path = self._paths(name)
        process = spawn(argv, log_path, {**os.environ, **(env or {})})
        pid_path.write_text(str(process.pid))
        wait_for_port(host, port, timeout=timeout, what=name, process=process, log_path=log_path)
        return f"{name}: started on {host}:{port} (pid {process.pid}, log {log_path.relative_to(self.run_dir.parent)})"

    def up(self) -> list[str]:
        require("the local stack (moto server, provider simulators)", "moto", "flask", "waitress")
        if not (REPO_ROOT / "simulators").is_dir():
            raise MissingExtra(
                "the local stack's provider simulators run from a checkout of the repository (or the image): "
                "run `dmd stack up` there"
            )
        s = self.settings
        lines = [self.ensure_redis()]
        lines.append(
            self._spawn(
                "moto",
                # moto's server with DynamoDB transactions it can afford (dmd_tasks.ops.emulator)
                [sys.executable, "-m", "dmd_tasks.ops.emulator", "-H", s.moto_host, "-p", str(s.moto_port)],
                s.moto_host,
                s.moto_port,
            )
        )
        lines.append(
            self._spawn(
                "simulators",
                [
                    *(sys.executable, "-m", "simulators", "--host", s.simulator_host),
                    *("--port", str(s.simulator_port), "--nice", str(s.simulator_nice)),
                ],
                s.simulator_host,
                s.simulator_port,
            )
        )
        return lines

    def ensure_redis(self) -> str:
        parts = urlsplit(self.settings.redis_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        if port_open(host, port):
            return f"redis: using the one listening on {host}:{port}"
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"redis at {host}:{port} is not reachable (and is not local, so not started here)")
        server = shutil.which("redis-server") or install_redis()
        return self._spawn(
            "redis", [server, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no"], host, port
        )

    def down(self) -> list[str]:
        lines = []
        pid_dir = self.run_dir / "pids"
        for pid_path in sorted(pid_dir.glob("*.pid")) if pid_dir.exists() else []:
            name = pid_path.stem
            pid = int(pid_path.read_text().strip() or 0)
            lines.append(f"{name}: {'stopped' if stop_pid(pid) else 'was not running'}")
            pid_path.unlink(missing_ok=True)
        return lines or ["nothing to stop"]


def install_redis() -> str:
    """Install Debian's redis-server (the machine has no Redis running and none installed)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("no Redis is running, redis-server is not installed, and apt-get is not available")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server was installed but is not on PATH")
    return found


def stop_pid(pid: int, grace_seconds: float = 5.0) -> bool:
    """SIGTERM the process group, then SIGKILL after the grace period. False if it was gone."""
    if pid <= 0:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; reaps it if it is our own exited child (a zombie still answers kill 0)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: kill 0 tells
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """``name: command`` lines of the Procfile (comments and blank lines skipped)."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        entries[name.strip()] = command.strip()
    return entries


class ProcessGroup:
    """Runs Procfile processes by name, each in its own session with its log in ``log_dir``."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = {**os.environ, **(env or {})}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands = read_procfile()

    def start(self, names: Iterable[str]) -> None:
        for name in names:
            self.start_one(name)

    def start_one(
        self, name: str, instance: str | None = None, extra_args: Iterable[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start the Procfile process ``name``, tracked (and logged) as ``instance`` (default: the name).

        ``extra_args`` go after the Procfile's own (for Celery, a repeated option overrides it).
        """
        command = self._commands[name]
        argv = [*shlex.split(command), *extra_args]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        elif argv and argv[0] == "celery":
            argv = [sys.executable, "-m", "celery", *argv[1:]]
        instance = instance or name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process = spawn(argv, self.log_dir / f"{instance}.log", self.env)
        self.processes[instance] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to the process and its children without waiting (SIGSTOP / SIGCONT: a
        process frozen and thawed, as a paused VM or a stopped container would be)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[name].pid, sig)

    def dead(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
