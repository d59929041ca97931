"""`tritonstack gateway`: run the gateway under uvicorn (uvloop + httptools, one write per response, factory mode).

Settings come from `TRITONSTACK_GATEWAY_*` (see `gateway.config.GatewaySettings`); each worker process builds
its own app from them. This command is also how the gateway image starts (deploy/docker/gateway.Dockerfile's CMD;
docker-compose and Kubernetes keep it), so the server that is deployed is the one the tests and benchmarks run.
"""

from __future__ import annotations

import typer


def gateway(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8080, help="Port to bind."),
    workers: int = typer.Option(1, min=1, help="Worker processes (each has its own in-process L1 cache)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    timeout_graceful_shutdown: int = typer.Option(
        10, min=0, help="Seconds that requests in flight get to finish on SIGTERM/Ctrl-C before connections close."),
) -> None:
    """Run the OpenAI-compatible + KServe v2 gateway in front of Triton until Ctrl-C."""
    import uvicorn
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from gateway.config import GatewaySettings
    from gateway.http.server import uvicorn_options

    try:
        GatewaySettings()  # fail here, readably, rather than in every worker
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"error: invalid gateway settings (TRITONSTACK_GATEWAY_*):\n{exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        **uvicorn_options(timeout_graceful_shutdown),
    )
