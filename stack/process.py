"""A child process in its own process group, with readiness polling and a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path


class ProcessError(RuntimeError):
    """A managed process failed to start or become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when a GET of `url` answers 200 (a readiness check)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def console_script(name: str = "tritonstack") -> str:
    """The path of a console script of this interpreter's environment (how the parts are started)."""
    return str(Path(sys.executable).parent / name)


def settings_env(prefix: str, settings: Mapping[str, object]) -> dict[str, str]:
    """Settings (pydantic-settings field names, any case) as `prefix` + NAME environment variables: lists, tuples,
    sets and dicts as JSON (as pydantic-settings parses them), booleans as true/false, the rest as text."""
    env = {}
    for name, value in settings.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            text = json.dumps(sorted(value) if isinstance(value, (set, frozenset)) else list(value))
        elif isinstance(value, dict):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        env[f"{prefix}{name.upper()}"] = text
    return env


def stop_all(processes: Iterable[ManagedProcess]) -> None:
    """Stop `processes` in reverse order (the last started first)."""
    for process in reversed(list(processes)):
        process.stop()


class ManagedProcess:
    """Start a command in a new session (its own process group) and stop the whole group.

    Stopping the group matters for Triton: each python-backend model runs in a stub child process
    that must not outlive the server.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self) -> ManagedProcess:
        """Spawn the command (its output to `log_path` when given); returns at once."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log if self._log else None,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        """The leader's process id (also its process group's)."""
        if self.proc is None:
            raise ProcessError(f"{self.name} was never started")
        return self.proc.pid

    def alive(self) -> bool:
        """True while the leader runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log (empty without one)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
        """Poll `check` until it is true; fail early if the process exits, with its log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ProcessError(f"{self.name} exited with code {code} before it was ready\n{self.log_tail()}")
            if check():
                return
            time.sleep(interval)
        self.stop()
        raise ProcessError(f"{self.name} was not ready after {timeout:.0f}s\n{self.log_tail()}")

    def start_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> ManagedProcess:
        """Start, then wait until `check` holds; on any failure (or Ctrl-C) stop the process group and re-raise."""
        self.start()
        try:
            self.wait_ready(check, timeout=timeout, interval=interval)
        except BaseException:
            self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        """Send `sig` to the whole process group."""
        if self.alive():
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the leader, then SIGKILL the group (leftover children) after it exits or `timeout` passes.

        Only the leader gets SIGTERM: a server shuts its own children down in order (Triton unloads
        models, which stops their stub processes); signalling them at the same time races that.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # the group may still hold children (e.g. python-backend stubs) after the leader exited
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
