"""Load shapes: step, spike and soak, in one Locust shape class driven by options (CLI or `LOCUST_*` env).

Add this file to the locustfiles (`-f loadtest/scenarios/X.py,loadtest/shapes.py`, or `tritonstack loadtest
--shape …`); the shape is picked by `--shape step|spike|soak` and sized by `--users`, `--spawn-rate`,
`--run-time`, `--shape-steps` (step) and `--shape-base` (spike). The pure `*_users` functions give the
target user count at time `t` of a run of `duration` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from locust import LoadTestShape

DEFAULT_DURATION_S = 300.0


@dataclass(frozen=True)
class ShapeParams:
    """Peak users, spawn rate, run length (s), steps for `step` and the base fraction for `spike`."""

    users: int
    spawn_rate: float
    duration: float
    steps: int = 4
    base: float = 0.2


def step_users(t: float, p: ShapeParams) -> int:
    """Equal steps up to `users`: step k (0-based) of `steps` runs k+1 × users/steps."""
    steps = max(p.steps, 1)
    k = min(int(t / (p.duration / steps)), steps - 1)
    return max(1, math.ceil(p.users * (k + 1) / steps))


def spike_users(t: float, p: ShapeParams) -> int:
    """Base load, a spike to `users` in the middle fifth of the run, then base load again."""
    base = max(1, round(p.users * p.base))
    return p.users if 0.4 * p.duration <= t < 0.6 * p.duration else base


def soak_users(t: float, p: ShapeParams) -> int:
    """Constant `users` for the whole run (a long, steady run to surface leaks and drift)."""
    return p.users


SHAPES = {"step": step_users, "spike": spike_users, "soak": soak_users}


def target(name: str, t: float, p: ShapeParams) -> tuple[int, float] | None:
    """(users, spawn rate) at time `t`, or None when the run is over."""
    if t >= p.duration:
        return None
    rate = p.spawn_rate if name != "spike" else max(p.spawn_rate, float(p.users))  # a spike arrives at once
    return SHAPES[name](t, p), rate


class ConfiguredShape(LoadTestShape):
    """The shape named by `--shape`, sized by the common options."""

    use_common_options = True

    def _params(self) -> tuple[str, ShapeParams]:
        o = self.runner.environment.parsed_options
        name = getattr(o, "shape", "soak")
        # no --run-time (e.g. the web UI): soak runs until stopped, step and spike take 5 minutes
        duration = float(getattr(o, "run_time", None) or (math.inf if name == "soak" else DEFAULT_DURATION_S))
        params = ShapeParams(
            users=int(getattr(o, "num_users", None) or 1),
            spawn_rate=float(getattr(o, "spawn_rate", None) or 1),
            duration=duration,
            steps=int(getattr(o, "shape_steps", 4)),
            base=float(getattr(o, "shape_base", 0.2)),
        )
        return name, params

    def tick(self) -> tuple[int, float] | None:
        name, params = self._params()
        return target(name, self.get_run_time(), params)
