"""Run managed processes in the foreground until Ctrl-C, then stop them all in reverse order."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from rich.console import Console

from stack.process import ManagedProcess

console = Console(stderr=True)


def supervise(processes: Sequence[ManagedProcess], poll_s: float = 0.5) -> int:
    """Block until Ctrl-C/SIGTERM or until one process exits; stop every process; return an exit code."""
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        while not stopping:
            dead = [p for p in processes if not p.alive()]
            if dead:
                for p in dead:
                    console.print(f"[red]{p.name} exited unexpectedly[/red]\n{p.log_tail(20)}")
                code = 1
                break
            time.sleep(poll_s)
    finally:
        console.print("stopping " + ", ".join(p.name for p in reversed(processes)))
        for p in reversed(processes):
            p.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
