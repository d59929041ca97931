"""Gateway overhead for chat: the gateway in front of the fake OpenAI upstream (zero added latency) vs the
fake upstream called directly, with `wrk` (closed loop, unique prompts: never cached).

Added p50 latency at c=1 = p50(gateway) − p50(direct); throughput at c=32 both ways. Each server is its own
process (the gateway as `tritonstack gateway` runs it, `stack.gateway`); a throwaway redis-server
(`stack.redis`) serves the gateway's Redis. Run:

    .venv/bin/python -m loadtest.bench.chat [--duration 10] [--output docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

from loadtest.bench.report import machine_description, markdown_table, write_section
from loadtest.wrk import WrkResult, run_wrk
from stack.gateway import GatewayProcess, api_key_entry, start_gateway
from stack.process import ManagedProcess, free_port, port_open, stop_all
from stack.redis import start_redis

BODY = '{"model":"%s","messages":[{"role":"user","content":"{TEXT}"}],"max_tokens":32}'


def start_fake(tmp: Path) -> tuple[ManagedProcess, int]:
    """The fake OpenAI upstream (`tests.fake_llm`) on a free port, accepting connections."""
    port = free_port()
    fake = ManagedProcess("fake-llm", [sys.executable, "-m", "tests.fake_llm", "--port", str(port)],
                          log_path=tmp / "fake.log")
    fake.start_ready(lambda: port_open("127.0.0.1", port), timeout=30)
    return fake, port


def start_chat_gateway(tmp: Path, fake_port: int, redis_url: str, key: str) -> GatewayProcess:
    """`tritonstack gateway` with one route, `chat`, to the fake; ready on /healthz."""
    routes = {"deployments": {"fake": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1",
                                       "model": "fake-model", "timeout_s": 10}},
              "routes": {"chat": {"deployments": ["fake"]}}}
    path = tmp / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    settings = {"routes_file": str(path), "redis_url": redis_url, "api_keys": [api_key_entry("bench", key)],
                "requests_per_minute": 100_000_000, "tokens_per_minute": 1_000_000_000, "log_level": "warning"}
    return start_gateway(settings, port=free_port(), log_path=tmp / "gateway.log", log_level="warning", timeout=30)


def measure(url: str, model: str, key: str | None, duration_s: int) -> tuple[WrkResult, WrkResult]:
    body = BODY % model
    check = httpx.post(url, content=body.replace("{TEXT}", "warm up"), timeout=10,
                       headers={"content-type": "application/json", **({"authorization": f"Bearer {key}"}
                                                                        if key else {})})
    check.raise_for_status()
    run_wrk(url, body, connections=8, duration_s=2, auth=key)  # warm-up, discarded
    return (run_wrk(url, body, connections=1, duration_s=duration_s, auth=key),
            run_wrk(url, body, connections=32, duration_s=duration_s, auth=key))


def render(direct: tuple[WrkResult, WrkResult], gateway: tuple[WrkResult, WrkResult], command: str) -> str:
    rows = [[label, str(r.connections), f"{r.rps:.0f}", f"{r.p50_ms:.2f}", f"{r.p95_ms:.2f}", f"{r.p99_ms:.2f}",
             str(r.errors + r.non2xx)]
            for label, runs in (("fake upstream direct", direct), ("gateway → fake upstream", gateway))
            for r in runs]
    added = gateway[0].p50_ms - direct[0].p50_ms
    ratio = gateway[1].rps / direct[1].rps if direct[1].rps else 0.0
    return "\n\n".join([
        "## Chat completions: gateway overhead (fake OpenAI upstream, zero added latency)",
        f"Command: `{command}`  \nMachine: {machine_description()}  \n"
        "Load: `wrk` (1 thread, closed loop), unique one-sentence non-stream requests (never cached), "
        "`max_tokens` 32; key without a budget; the gateway with its Redis, rate limits, PII redaction (cloud "
        "deployment: on), audit log at WARNING (off). Upstream, gateway and wrk share the machine's CPUs.",
        markdown_table(["path", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"], rows),
        markdown_table(["measure", "value", "target"], [
            ["added p50 latency at c=1", f"{added:.2f} ms", "≤ 1.5 ms"],
            ["gateway / direct throughput at c=32", f"{ratio:.2f}× ({gateway[1].rps:.0f} req/s)", "—"],
        ]),
    ])


def run(duration_s: int, output: Path | None, command: str) -> str:
    """Start redis, the fake and the gateway; time both paths; write the section (unless `output` is None)."""
    key = f"sk-bench-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="tritonstack-chat-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = start_redis(log_path=tmp / "redis.log")
        procs: list[ManagedProcess] = [redis]
        try:
            fake, fake_port = start_fake(tmp)
            procs.append(fake)
            gateway = start_chat_gateway(tmp, fake_port, redis.url, key)
            procs.append(gateway.process)
            direct = measure(f"http://127.0.0.1:{fake_port}/v1/chat/completions", "fake-model", None, duration_s)
            via = measure(f"{gateway.url}/v1/chat/completions", "chat", key, duration_s)
        finally:
            stop_all(procs)
    markdown = render(direct, via, command)
    if output is not None:
        write_section(output, "chat", markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description="Chat gateway overhead vs the fake upstream.")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--output", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="markdown file to update ('-' prints only)")
    args = parser.parse_args()
    output = None if str(args.output) == "-" else args.output
    command = "python -m loadtest.bench.chat" + (f" --duration {args.duration}" if args.duration != 10 else "")
    print(run(args.duration, output, command))


if __name__ == "__main__":
    main()
