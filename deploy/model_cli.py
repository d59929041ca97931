"""`tritonstack model promote|rollback|status`: version rollouts over Triton's model repository API.

The steps and their order live in `deploy.rollout`; this module only parses options and prints.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from deploy.rollout import RolloutPlan

app = typer.Typer(
    name="model",
    help="Roll model versions out (canary weights) and back, with zero failed requests: Triton explicit "
    "load/unload + the gateway's rollouts file.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(highlight=False)

TritonOpt = Annotated[
    list[str],
    typer.Option("--triton", help="Triton gRPC address (repeatable: every server behind the gateways)."),
]
RolloutsOpt = Annotated[
    Path,
    typer.Option("--rollouts-file", envvar="TRITONSTACK_GATEWAY_ROLLOUTS_FILE",
                 help="The gateways' rollouts file (their TRITONSTACK_GATEWAY_ROLLOUTS_FILE)."),
]
GatewayOpt = Annotated[
    list[str] | None,
    typer.Option("--gateway", help="Gateway base URL to reload at once (repeatable); without it gateways pick the "
                 "file up within their check interval (1 s)."),
]
AdminKeyOpt = Annotated[
    str | None, typer.Option("--admin-key", envvar="TRITONSTACK_ADMIN_KEY", help="Admin API key for --gateway.")
]
DrainOpt = Annotated[
    float, typer.Option("--drain-s", min=0, help="Pause between moving traffic off a version and unloading it.")
]
RepositoryOpt = Annotated[
    Path | None, typer.Option("--repository", "-r", help="Local model repository: check the version exists first.")
]

_DEFAULT_TRITON = ["127.0.0.1:8001"]
_DEFAULT_FILE = Path("rollouts.yaml")


@contextmanager
def _plan(tritons: list[str], rollouts_file: Path, gateways: list[str] | None, admin_key: str | None,
          drain_s: float, repository: Path | None) -> Iterator[RolloutPlan]:
    from deploy.rollout import RolloutError, RolloutPlan, TritonControl

    controls = [TritonControl(url) for url in tritons]
    plan = RolloutPlan(controls, rollouts_file, gateways or [], admin_key, drain_s, repository,
                       say=lambda line: console.print(escape(line)))
    try:
        yield plan
    except RolloutError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    finally:
        for control in controls:
            control.close()


@app.command("promote")
def promote(
    model: Annotated[str, typer.Argument(help="Public model name (the Triton model).")],
    version: Annotated[int, typer.Argument(min=1, help="The version to roll out (exported into the repository).")],
    weight: Annotated[float, typer.Option("--weight", min=0, max=100,
                                          help="Percent of traffic for VERSION: 5, 50 … 100 makes it stable.")] = 100,
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = _DEFAULT_FILE,
    gateway: GatewayOpt = None,
    admin_key: AdminKeyOpt = None,
    drain_s: DrainOpt = 2.0,
    repository: RepositoryOpt = None,
) -> None:
    """Load VERSION next to the stable one, shift --weight percent to it; at 100 unload the old version."""
    from deploy.rollout import promote as run

    with _plan(triton, rollouts_file, gateway, admin_key, drain_s, repository) as plan:
        run(plan, model, version, weight)


@app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="Public model name.")],
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = _DEFAULT_FILE,
    gateway: GatewayOpt = None,
    admin_key: AdminKeyOpt = None,
    drain_s: DrainOpt = 2.0,
) -> None:
    """All traffic back to the stable version at once (gateways reload), then unload the canary."""
    from deploy.rollout import rollback as run

    with _plan(triton, rollouts_file, gateway, admin_key, drain_s, None) as plan:
        run(plan, model)


@app.command("status")
def status(
    model: Annotated[str, typer.Argument(help="Public model name.")],
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = _DEFAULT_FILE,
) -> None:
    """The model's weights in the rollouts file and the versions each Triton serves."""
    with _plan(triton, rollouts_file, None, None, 0, None) as plan:
        rollout = plan.config().models.get(model)
        if rollout is None:
            console.print(f"{escape(model)}: no rollout in {rollouts_file} (Triton's version policy decides)")
        else:
            shares = ", ".join(f"{v}: {p:g}%" for v, p in rollout.shares().items())
            console.print(f"{escape(model)}: stable {rollout.stable_version}; {shares}")
        for control, ready in zip(plan.tritons, plan.ready(model), strict=True):
            console.print(f"Triton {control.url}: ready {', '.join(ready) or 'none'}")
