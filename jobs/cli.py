"""`tritonstack worker`: run the arq worker for background jobs.

Settings come from `TRITONSTACK_WORKER_*` (see `jobs.config.WorkerConfig`); chat jobs also read the gateway's
`TRITONSTACK_GATEWAY_*` (routes file, key budgets). Run several for more throughput: they share the queue.
"""

from __future__ import annotations

import typer


def worker() -> None:
    """Run the background-jobs worker (bulk embeddings, batch chat) until Ctrl-C."""
    import logging

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from jobs.config import WorkerConfig

    try:
        config = WorkerConfig()
    except (ValidationError, SettingsError) as exc:
        typer.echo(f"error: invalid worker settings (TRITONSTACK_WORKER_*):\n{exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from jobs.worker import run

    run(config)
