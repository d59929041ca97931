"""`tritonstack` — one console script; each package contributes its commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from export import cli as export_cli

if TYPE_CHECKING:
    from stack.up import Stack

app = typer.Typer(
    name="tritonstack",
    help="Export PyTorch models to a Triton repository and serve them behind an OpenAI-compatible gateway.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


app.add_typer(export_cli.app, name="export")


@app.callback()
def main() -> None:
    """tritonstack: export, serve, load-test."""


@app.command("triton")
def triton(
    repository: Path = typer.Option(Path("model_repository"), help="Triton model repository."),
    host: str = typer.Option("127.0.0.1", help="Address to bind HTTP, gRPC and metrics to."),
    http_port: int = typer.Option(8000),
    grpc_port: int = typer.Option(8001),
    metrics_port: int = typer.Option(8002),
    model: list[str] = typer.Option(["*"], help="Models to load (repeatable); '*' loads all."),
    response_cache_mb: int = typer.Option(0, help="Size of Triton's local response cache; 0 disables it."),
    state_dir: Path = typer.Option(Path(".tritonstack"), help="Backend directory and logs live here."),
) -> None:
    """Run the Triton server bundled in the nvidia-pytriton wheel (CPU, python backend) until Ctrl-C."""
    from stack.process import ProcessError
    from stack.run import console, supervise
    from stack.triton import TritonOptions, TritonTracing, start_triton

    opts = TritonOptions(
        repository=repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        models=model,
        response_cache_bytes=response_cache_mb << 20,
        tracing=TritonTracing.from_env(),  # on when OTEL_EXPORTER_OTLP_ENDPOINT is set
    )
    try:
        with console.status(f"starting Triton on {repository} …"):
            server = start_triton(opts, state_dir.resolve(), log_path=state_dir.resolve() / "triton.log")
    except ProcessError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(
        f"[green]Triton ready[/green] http://{server.http_url} grpc://{server.grpc_url} "
        f"metrics http://{host}:{metrics_port}/metrics (log: {state_dir / 'triton.log'}); Ctrl-C stops it"
    )
    raise typer.Exit(supervise([server]))


@app.command("up")
def up(
    repository: Path = typer.Option(Path("model_repository"), help="Triton model repository."),
    redis_url: str = typer.Option("redis://127.0.0.1:6379/0", help="Used if reachable; else a local one starts."),
    gateway_port: int = typer.Option(8080),
    state_dir: Path = typer.Option(Path(".tritonstack"), help="Logs, backend directory and the dev API key."),
) -> None:
    """Redis (if none is reachable) + Triton + jobs worker + gateway, in the foreground; Ctrl-C stops all."""
    from stack.process import ProcessError
    from stack.run import console, supervise
    from stack.up import StackOptions, start_stack
    from tritonstack.rollout import RolloutError

    opts = StackOptions(
        repository=repository, state_dir=state_dir.resolve(), redis_url=redis_url, gateway_port=gateway_port,
        after_triton=_restore_versions,
    )
    try:
        with console.status("starting Redis, Triton, the jobs worker and the gateway …"):
            stack = start_stack(opts)
    except (ProcessError, RolloutError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    base = opts.gateway_url
    console.print(
        f"[green]tritonstack is up[/green]: gateway {base} (OpenAI: {base}/v1, KServe v2: {base}/v2, "
        f"metrics: {base}/metrics; jobs: {base}/v1/jobs, worker metrics: "
        f"http://127.0.0.1:{opts.worker_metrics_port}/metrics)\n"
        f"development API key: [bold]{stack.api_key}[/bold]  (logs in {state_dir}/); Ctrl-C stops all"
    )
    raise typer.Exit(supervise(stack.processes))


def _restore_versions(stack: Stack) -> None:
    """Serve the versions the stack's rollouts file names (a restarted Triton loads only the newest ones)."""
    from stack.run import console
    from stack.up import rollouts_path
    from tritonstack.model_load import restore
    from tritonstack.rollout import RolloutPlan, TritonControl

    control = TritonControl(f"127.0.0.1:{stack.options.triton_grpc_port}")
    try:
        restore(RolloutPlan([control], rollouts_path(stack.options), check_gateway=False, say=console.print))
    finally:
        control.close()


@app.command("loadtest")
def loadtest(
    scenario: str = typer.Argument(..., help="A scenario in loadtest/scenarios/ (e.g. embeddings_cold) or a .py."),
    host: str = typer.Option("http://127.0.0.1:8080", help="Gateway base URL."),
    users: int = typer.Option(10, min=1, help="Concurrent users (the peak, with --shape)."),
    spawn_rate: float = typer.Option(5.0, help="Users started per second."),
    duration: str = typer.Option("30s", help="Run time: 30s, 5m, 1h."),
    slo: str = typer.Option("", help="Gate, e.g. p95_ms=200,p99_ms=500,fail_ratio=0.01,min_rps=50 "
                            "(fail_ratio is 0 unless given: any failed request fails the run)."),
    api_key: str = typer.Option("", envvar="TRITONSTACK_API_KEY", help="Bearer token for the gateway."),
    shape: str | None = typer.Option(None, help="Load shape: step, spike or soak (loadtest/shapes.py)."),
    abort_fail_ratio: float = typer.Option(0.5, help="Watchdog: abort when failures exceed this ratio (0: off)."),
    out: Path = typer.Option(Path("runs"), help="Run folders (CSV, HTML report, log, summary) go under here."),
) -> None:
    """Run a Locust scenario headless, write its reports, print a summary and judge the run.

    Exit codes:
    0 passed: every --slo term met, and no request failed beyond fail_ratio;
    1 an SLO missed: a failed request is one unless --slo sets fail_ratio (the default gate is fail_ratio=0);
    2 bad arguments, or no result (Locust did not start or hung);
    3 aborted by the watchdog (failure ratio above --abort-fail-ratio).
    """
    from loadtest.run import LoadTestOptions, duration_seconds, execute, scenario_path
    from loadtest.slo import SloError, parse_slo

    try:
        gate = parse_slo(slo)
        scenario_path(scenario)
        duration_seconds(duration)
    except (SloError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if shape not in (None, "step", "spike", "soak"):
        raise typer.BadParameter("--shape must be step, spike or soak")
    opts = LoadTestOptions(scenario, host, users, spawn_rate, duration, out, api_key, shape, abort_fail_ratio)
    raise typer.Exit(execute(opts, gate))


bench_app = typer.Typer(help="Benchmarks (not tests): ratios measured in one run, written to docs/BENCHMARKS.md. "
                        "Without a step, runs every step (the standard comparisons).", invoke_without_command=True)
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench_all(
    ctx: typer.Context,
    host: str | None = typer.Option(None, help="Measure this running gateway (URL) instead of starting a stack."),
    api_key: str = typer.Option("", envvar="TRITONSTACK_API_KEY", help="The --host gateway's API key."),
    concurrency: list[int] = typer.Option([1, 8, 32, 64], help="Closed-loop connections (repeatable)."),
    duration: int = typer.Option(5, min=1, help="Seconds per measurement."),
    rounds: int = typer.Option(2, min=1, help="Interleaved rounds; medians are reported."),
    only: list[str] = typer.Option(list(("triton", "baseline", "gateway", "rerank", "jobs", "llm")),
                                   help="Steps to run (repeatable): triton, baseline, gateway, rerank, jobs, llm."),
    repository: Path = typer.Option(Path("model_repository"), help="Repository with the exported models."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update."),
) -> None:
    """Every standard comparison (`loadtest/bench/suite.py`): Triton, naive baseline vs gateway, gateway
    overhead and cache hits, rerank, jobs, local LLM; writes docs/BENCHMARKS.md and the plots under docs/img/."""
    if ctx.invoked_subcommand is not None:
        return
    import shlex
    import shutil

    from loadtest.bench import suite
    from loadtest.wrk import WrkMissingError

    unknown = set(only) - set(suite.STEPS)
    if unknown:
        raise typer.BadParameter(f"unknown step(s) {sorted(unknown)}; choose from {', '.join(suite.STEPS)}")
    args = [f"--duration={duration}", f"--rounds={rounds}", *[f"--concurrency={c}" for c in concurrency],
            *([f"--host={host}"] if host else []),
            *([f"--only={s}" for s in only] if set(only) != set(suite.STEPS) else [])]
    opts = suite.SuiteOptions(command="tritonstack bench " + shlex.join(args), output=output, repository=repository,
                              host=host, api_key=api_key or None, concurrency=tuple(concurrency),
                              duration_s=duration, rounds=rounds, only=tuple(only))
    if shutil.which("wrk") is None:
        typer.echo(f"error: {WrkMissingError.__doc__} `sudo apt-get install wrk` (make bench does this)", err=True)
        raise typer.Exit(1)
    report = suite.run(opts, progress=typer.echo)
    failed = [s.name for s in report.steps if s.status.startswith("failed")]
    if failed:
        typer.echo(f"failed steps: {', '.join(failed)} (see above)", err=True)
        raise typer.Exit(1)


@bench_app.command("triton")
def bench_triton(
    duration: int = typer.Option(5, help="Seconds per measurement."),
    concurrency: list[int] = typer.Option([1, 8, 32], help="Closed-loop connections (repeatable)."),
    tuning: bool = typer.Option(False, help="Also measure tuning variants (instances, queue delay, queue size)."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds; medians are reported."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update."),
) -> None:
    """Triton batched vs unbatched vs int8 vs raw in-process ONNX Runtime (MiniLM on CPU)."""
    import shlex

    from loadtest.bench import triton as bench
    from loadtest.wrk import WrkMissingError

    command = "tritonstack bench triton " + shlex.join(
        [
            f"--duration={duration}",
            f"--rounds={rounds}",
            *[f"--concurrency={c}" for c in concurrency],
            *(["--tuning"] if tuning else []),
        ]
    )
    try:
        typer.echo(bench.run(duration, concurrency, tuning, rounds, output, command))
    except WrkMissingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@bench_app.command("gateway")
def bench_gateway(
    duration: int = typer.Option(8, help="Seconds per measurement."),
    rounds: int = typer.Option(3, min=1, help="Rounds of the direct-vs-gateway runs (order reversed each round)."),
    profile: bool = typer.Option(True, help="Sample the gateway with py-spy to say where its CPU time goes."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update ('-': print only)."),
) -> None:
    """Gateway vs direct Triton (added latency, throughput ratio), cache-hit throughput, rate-limit cost."""
    import shlex

    from loadtest.bench import gateway as bench
    from loadtest.wrk import WrkMissingError

    command = "tritonstack bench gateway " + shlex.join(
        [f"--duration={duration}", f"--rounds={rounds}", *([] if profile else ["--no-profile"])]
    )
    try:
        typer.echo(bench.run(duration, rounds, profile, None if str(output) == "-" else output, command))
    except WrkMissingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@bench_app.command("rerank")
def bench_rerank(
    duration: int = typer.Option(10, min=1, help="Seconds per measurement (a request started is waited for)."),
    rounds: int = typer.Option(3, min=1, help="Rounds; both paths run back to back per setting, order reversed."),
    docs: list[int] = typer.Option([16, 64], min=1, max=64,
                                   help="Documents per request (repeatable; direct Triton takes them as one batch, "
                                   "at most the model's max_batch_size, 64)."),
    concurrency: list[int] = typer.Option([1, 8], min=1, help="Closed-loop clients (repeatable)."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update ('-': print only)."),
) -> None:
    """Pairs/s of reranking: the gateway's /v1/rerank vs direct Triton, on a MiniLM-sized cross-encoder."""
    import shlex

    from loadtest.bench import rerank as bench

    command = "tritonstack bench rerank " + shlex.join(
        [f"--duration={duration}", f"--rounds={rounds}", *[f"--docs={n}" for n in docs],
         *[f"--concurrency={c}" for c in concurrency]]
    )
    out = None if str(output) == "-" else output
    typer.echo(bench.run(duration, rounds, out, command, tuple(docs), tuple(concurrency)))


@bench_app.command("jobs")
def bench_jobs(
    items: int = typer.Option(10_000, min=64, help="Sentences per job (and per Triton-alone run)."),
    rounds: int = typer.Option(2, min=1, help="Rounds; Triton alone and the job alternate in order."),
    repository: Path = typer.Option(Path("model_repository"), help="Repository with the exported minilm."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update ('-': print only)."),
) -> None:
    """A bulk embeddings job's items/s vs Triton's batched throughput (same run), and job pickup latency."""
    import shlex

    from loadtest.bench import jobs as bench

    command = "tritonstack bench jobs " + shlex.join([f"--items={items}", f"--rounds={rounds}"])
    typer.echo(bench.run(repository, items, rounds, None if str(output) == "-" else output, command))


@bench_app.command("llm")
def bench_llm(
    repository: Path = typer.Option(Path("model_repository"), help="Repository with smollm2 (exported if missing)."),
    max_tokens: int = typer.Option(128, help="New tokens per request."),
    streams: int = typer.Option(8, help="Concurrent streams for the aggregate measurement."),
    rounds: int = typer.Option(3, help="Repeats of each Triton measurement (medians are reported)."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update."),
    peer: bool = typer.Option(True, help="Also measure llama.cpp's llama-server on the same GGUF against our "
                                         "gateway (built once into ~/.cache/tritonstack/llama.cpp; needs cmake, g++)."),
) -> None:
    """transformers generate vs the Triton SmolLM2 model: tokens/s single stream, TTFT, N concurrent streams; our
    gateway vs llama.cpp's llama-server."""
    import shlex

    from loadtest.bench import llm as bench

    command = "tritonstack bench llm " + shlex.join(
        [f"--max-tokens={max_tokens}", f"--streams={streams}", f"--rounds={rounds}", *([] if peer else ["--no-peer"])]
    )
    typer.echo(bench.run(repository, max_tokens, streams, rounds, output, command, peer))


@bench_app.command("baseline")
def bench_baseline(
    duration: int = typer.Option(5, help="Seconds per measurement."),
    concurrency: list[int] = typer.Option([1, 8, 32], help="Closed-loop connections (repeatable)."),
    rounds: int = typer.Option(1, min=1, help="Runs per concurrency (medians are reported)."),
    output: Path = typer.Option(Path("docs/BENCHMARKS.md"), help="Markdown file to update ('-': print only)."),
    gateway: str | None = typer.Option(None, help="Also measure this running gateway (URL), interleaved."),
    api_key: str = typer.Option("", envvar="TRITONSTACK_API_KEY", help="The gateway's API key."),
) -> None:
    """The naive FastAPI + sentence-transformers service (loadtest/baselines/naive_st.py); JSON and plots too."""
    import shlex

    from loadtest.bench import baseline as bench
    from loadtest.wrk import WrkMissingError

    command = "tritonstack bench baseline " + shlex.join(
        [f"--duration={duration}", f"--rounds={rounds}", *[f"--concurrency={c}" for c in concurrency],
         *([f"--gateway={gateway}"] if gateway else [])]
    )
    try:
        out = None if str(output) == "-" else output
        targets = bench.gateway_targets(gateway, api_key or None) if gateway else []
        typer.echo(bench.run(duration, concurrency, rounds, out, command, targets))
    except WrkMissingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


# the gateway contributes its own command (gateway/cli.py imports nothing heavy at module level)
from gateway.cli import gateway as _gateway_command  # noqa: E402

app.command("gateway")(_gateway_command)

# model version rollouts (tritonstack/model_cli.py imports nothing heavy at module level)
from tritonstack import model_cli as _model_cli  # noqa: E402

app.add_typer(_model_cli.app, name="model")

# background jobs: the arq worker (jobs/cli.py imports nothing heavy at module level)
from jobs.cli import worker as _worker_command  # noqa: E402

app.command("worker")(_worker_command)
