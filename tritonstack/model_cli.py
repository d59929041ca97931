"""`tritonstack model load|unload|promote|rollback|status`: serving versions and rolling them out over Triton's model
repository API.

The steps and their order live in `tritonstack.rollout` and `tritonstack.model_load`; this module only parses
options and prints. The defaults are those of `tritonstack up` (`make up`): Triton gRPC 127.0.0.1:8001,
the rollouts file `.tritonstack/rollouts.yaml` its gateway reads, the gateway http://127.0.0.1:8080 and its admin key
(`.tritonstack/dev-api-key`, next to the rollouts file).
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
    from tritonstack.rollout import RolloutPlan

app = typer.Typer(
    name="model",
    help="Serve exported model versions and roll them out (canary weights) and back, with zero failed requests: "
    "Triton explicit load/unload + the gateway's rollouts file.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(highlight=False, soft_wrap=True)  # paths and commands in messages stay whole (copy-paste)

TritonOpt = Annotated[
    list[str],
    typer.Option("--triton", help="Triton gRPC address (repeatable: every server behind the gateways)."),
]
RolloutsOpt = Annotated[
    Path,
    typer.Option("--rollouts-file", envvar="TRITONSTACK_GATEWAY_ROLLOUTS_FILE",
                 help="The gateways' rollouts file (their TRITONSTACK_GATEWAY_ROLLOUTS_FILE; `tritonstack up`'s "
                 "by default)."),
]
GatewayOpt = Annotated[
    list[str] | None,
    typer.Option("--gateway", help="Gateway base URL (repeatable): each must read --rollouts-file, and reloads it "
                 "at once [default: http://127.0.0.1:8080]."),
]
AdminKeyOpt = Annotated[
    str | None,
    typer.Option("--admin-key", envvar="TRITONSTACK_ADMIN_KEY",
                 help="Admin API key for --gateway [default: dev-api-key next to the rollouts file, if any]."),
]
NoCheckOpt = Annotated[
    bool,
    typer.Option("--no-gateway-check", help="Write the rollouts file even though no running gateway is seen "
                 "reading it (one that starts later, or mounts it at another path); reload only --gateway."),
]
DrainOpt = Annotated[
    float, typer.Option("--drain-s", min=0, help="Pause between moving traffic off a version and unloading it.")
]
RepositoryOpt = Annotated[
    Path | None, typer.Option("--repository", "-r", help="Local model repository: check the version exists first.")
]

_DEFAULT_TRITON = ["127.0.0.1:8001"]
DEFAULT_ROLLOUTS_FILE = Path(".tritonstack/rollouts.yaml")  # stack.up.rollouts_path under `up`'s state dir
DEFAULT_GATEWAY = "http://127.0.0.1:8080"


def _admin_key(explicit: str | None, rollouts_file: Path) -> str | None:
    """The given key, else the development key `tritonstack up` keeps next to its rollouts file."""
    if explicit:
        return explicit
    dev = rollouts_file.parent / "dev-api-key"
    return dev.read_text().strip() if dev.is_file() else None


@contextmanager
def _plan(tritons: list[str], rollouts_file: Path, gateways: list[str] | None, admin_key: str | None,
          drain_s: float, repository: Path | None, *, check: bool = True) -> Iterator[RolloutPlan]:
    from tritonstack.rollout import RolloutError, RolloutPlan, TritonControl

    controls = [TritonControl(url) for url in tritons]
    targets = gateways or ([DEFAULT_GATEWAY] if check else [])
    plan = RolloutPlan(controls, rollouts_file, targets, _admin_key(admin_key, rollouts_file), drain_s, repository,
                       say=lambda line: console.print(escape(line)), check_gateway=check)
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
    rollouts_file: RolloutsOpt = DEFAULT_ROLLOUTS_FILE,
    gateway: GatewayOpt = None,
    admin_key: AdminKeyOpt = None,
    drain_s: DrainOpt = 2.0,
    repository: RepositoryOpt = None,
    no_gateway_check: NoCheckOpt = False,
) -> None:
    """Load VERSION next to the stable one, shift --weight percent to it; at 100 unload the old version. Refuses
    unless the gateways read the rollouts file (--no-gateway-check skips that)."""
    from tritonstack.rollout import promote as run

    with _plan(triton, rollouts_file, gateway, admin_key, drain_s, repository, check=not no_gateway_check) as plan:
        run(plan, model, version, weight)


@app.command("rollback")
def rollback(
    model: Annotated[str, typer.Argument(help="Public model name.")],
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = DEFAULT_ROLLOUTS_FILE,
    gateway: GatewayOpt = None,
    admin_key: AdminKeyOpt = None,
    drain_s: DrainOpt = 2.0,
    no_gateway_check: NoCheckOpt = False,
) -> None:
    """All traffic back to the stable version at once (gateways reload), then unload the canary."""
    from tritonstack.rollout import rollback as run

    with _plan(triton, rollouts_file, gateway, admin_key, drain_s, None, check=not no_gateway_check) as plan:
        run(plan, model)


@app.command("status")
def status(
    model: Annotated[str, typer.Argument(help="Public model name.")],
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = DEFAULT_ROLLOUTS_FILE,
) -> None:
    """The model's weights in the rollouts file and the versions each Triton serves."""
    with _plan(triton, rollouts_file, None, None, 0, None, check=False) as plan:
        rollout = plan.config().models.get(model)
        if rollout is None:
            console.print(f"{escape(model)}: no rollout in {rollouts_file} (gateways serve its oldest ready version)")
        else:
            shares = ", ".join(f"{v}: {p:g}%" for v, p in rollout.shares().items())
            console.print(f"{escape(model)}: stable {rollout.stable_version}; {shares}")
        for control, ready in zip(plan.tritons, plan.ready(model), strict=True):
            console.print(f"Triton {control.url}: ready {', '.join(ready) or 'none'}")


@app.command("load")
def load(
    model: Annotated[str, typer.Argument(help="Model name in Triton's repository.")],
    version: Annotated[int | None, typer.Option("--version", min=1, help="Version to load [default: the newest in "
                                                "--repository].")] = None,
    repository: Annotated[Path, typer.Option("--repository", "-r", help="Local model repository (the one Triton "
                                             "serves), for the default version.")] = Path("model_repository"),
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = DEFAULT_ROLLOUTS_FILE,
    gateway: GatewayOpt = None,
    admin_key: AdminKeyOpt = None,
    no_gateway_check: NoCheckOpt = False,
) -> None:
    """Serve an exported version on the running Triton(s) next to the serving one. Traffic does not move: the
    serving version is recorded as stable in the rollouts file, and only `promote` shifts weight."""
    from tritonstack.model_load import load as run
    from tritonstack.model_load import newest_in_repository

    with _plan(triton, rollouts_file, gateway, admin_key, 0, None, check=not no_gateway_check) as plan:
        run(plan, model, str(version) if version is not None else newest_in_repository(repository, model))


@app.command("unload")
def unload(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int | None, typer.Option("--version", min=1, help="Version to stop serving [default: the "
                                                "whole model].")] = None,
    triton: TritonOpt = _DEFAULT_TRITON,
    rollouts_file: RolloutsOpt = DEFAULT_ROLLOUTS_FILE,
) -> None:
    """Stop serving a version (refused while it takes traffic), or the whole model."""
    from tritonstack.model_load import unload as run

    with _plan(triton, rollouts_file, None, None, 0, None, check=False) as plan:
        run(plan, model, str(version) if version is not None else None)
