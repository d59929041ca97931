"""Run the Triton server binary that ships in the `nvidia-pytriton` wheel, on CPU, without Docker.

The wheel carries `tritonserver`, the python backend and one backend stub per Python version. The stub
must match the running interpreter, so we assemble a backend directory of our own and point the server
at it (the binary's defaults point at /opt/tritonserver, which does not exist outside NVIDIA's image).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from gateway.tracing import TracingEnv
from stack import shm
from stack.process import ManagedProcess, ProcessError, free_port, http_ok


class TritonNotInstalledError(ProcessError):
    """The bundled Triton binary, its backend or the stub for this Python is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    """Paths inside the installed `nvidia-pytriton` wheel."""

    root: Path

    @classmethod
    def locate(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotInstalledError(
                "the Triton server binary comes from the `nvidia-pytriton` wheel, which is not installed: "
                "run `make install` (or `pip install nvidia-pytriton==0.7.0`)"
            )
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        return cls(root).checked()

    def checked(self) -> TritonDistribution:
        """Self, after making sure the binary, the python backend and this Python's stub are present."""
        for path in (self.binary, self.python_backend / "libtriton_python.so", self.stub):
            if not path.exists():
                shipped = sorted(p.name for p in self.stubs_dir.iterdir()) if self.stubs_dir.is_dir() else []
                raise TritonNotInstalledError(
                    f"{path} is missing from the nvidia-pytriton wheel "
                    f"(Python {sys.version_info.major}.{sys.version_info.minor} needs its own backend stub; "
                    f"stubs shipped: {', '.join(shipped) or 'none'}); reinstall with `make install`"
                )
        return self

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    @property
    def stubs_dir(self) -> Path:
        return self.root / "python_backend_stubs"

    @property
    def stub(self) -> Path:
        return self.stubs_dir / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"


def prepare_backend_dir(dist: TritonDistribution, state_dir: Path) -> Path:
    """Assemble `<state_dir>/backends/python` with the python backend and the stub for this Python."""
    target = state_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = {
        "libtriton_python.so": dist.python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": dist.python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": dist.stub,
    }
    for name, source in sources.items():
        dest = target / name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            shutil.copy2(source, dest)
    (target / "triton_python_backend_stub").chmod(0o755)
    return target.parent


def server_environment(dist: TritonDistribution) -> dict[str, str]:
    """Environment for the server: our interpreter's bin first (the stub imports the venv's packages)."""
    env = dict(os.environ)
    libdirs = [str(sysconfig.get_config_var("LIBDIR")), str(dist.libs)]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libdirs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class TritonTracing:
    """Triton's OpenTelemetry trace mode, exporting OTLP/HTTP to `url`. Rate 0: Triton starts no trace of its own
    and traces exactly the requests that carry a W3C context, which the gateway sends only from sampled spans, so
    Triton's spans (request, model, compute: queue and compute timestamps) join the gateway's sampled traces."""

    url: str
    service_name: str = "triton"
    schedule_delay_ms: int = 5000

    @classmethod
    def from_env(cls) -> TritonTracing | None:
        """From `OTEL_EXPORTER_OTLP_ENDPOINT` and friends (`gateway.tracing`); None when tracing is off."""
        settings = TracingEnv()
        url = settings.traces_endpoint
        return None if url is None else cls(url, schedule_delay_ms=settings.otel_bsp_schedule_delay)

    def argv(self) -> list[str]:
        """`tritonserver`'s `--trace-config` flags."""
        return [f"--trace-config={setting}" for setting in (
            "mode=opentelemetry", "rate=0", "count=-1", "level=TIMESTAMPS", f"opentelemetry,url={self.url}",
            f"opentelemetry,resource=service.name={self.service_name}",
            f"opentelemetry,bsp_schedule_delay={self.schedule_delay_ms}")]


@dataclass
class TritonOptions:
    """Flags for one server; ports default to Triton's own defaults on loopback."""

    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    models: list[str] = field(default_factory=lambda: ["*"])
    response_cache_bytes: int = 0
    log_verbose: int = 0
    exit_timeout_s: int = 5
    tracing: TritonTracing | None = None
    extra_args: list[str] = field(default_factory=list)

    @classmethod
    def on_free_ports(cls, repository: Path, **options: object) -> TritonOptions:
        """Options with free loopback HTTP, gRPC and metrics ports (unless `options` name them)."""
        ports: dict[str, object] = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        return cls(repository, **{**ports, **options})  # type: ignore[arg-type]


def server_argv(dist: TritonDistribution, backend_dir: Path, opts: TritonOptions) -> list[str]:
    """`tritonserver`'s command line: explicit model control, CPU only, no pinned or CUDA memory pools."""
    argv = [
        str(dist.binary),
        f"--model-repository={opts.repository.resolve()}",
        f"--backend-directory={backend_dir}",
        f"--cache-directory={dist.caches}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in opts.models],
        f"--http-address={opts.host}",
        f"--http-port={opts.http_port}",
        f"--grpc-address={opts.host}",
        f"--grpc-port={opts.grpc_port}",
        f"--metrics-address={opts.host}",
        f"--metrics-port={opts.metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--cuda-memory-pool-byte-size=0:0",
        "--strict-readiness=true",
        f"--exit-timeout-secs={opts.exit_timeout_s}",
        f"--log-verbose={opts.log_verbose}",
    ]
    if opts.response_cache_bytes:
        argv.append(f"--cache-config=local,size={opts.response_cache_bytes}")
    if opts.tracing is not None:
        argv += opts.tracing.argv()
    return argv + opts.extra_args


class TritonServer(ManagedProcess):
    """The bundled `tritonserver` on a model repository, as a managed child process."""

    def __init__(self, opts: TritonOptions, *, state_dir: Path, log_path: Path | None = None) -> None:
        if not opts.repository.is_dir():
            raise ProcessError(
                f"model repository {opts.repository} does not exist: run `tritonstack export minilm` first"
            )
        dist = TritonDistribution.locate()
        backend_dir = prepare_backend_dir(dist, state_dir)
        super().__init__(
            "tritonserver",
            server_argv(dist, backend_dir, opts),
            env=server_environment(dist),
            log_path=log_path,
        )
        self.opts = opts
        self.shm_regions: set[str] = set()  # the python backend's regions this server created (stack/shm.py)

    def start(self) -> TritonServer:
        """Remove the regions no live process holds (left by servers that were killed), then spawn the server."""
        if removed := shm.remove_unused():
            print(shm.describe(removed, "left by stopped servers (no live process maps them)"), file=sys.stderr)
        super().start()
        return self

    def group_pids(self) -> list[int]:
        """The server and its children (the python-backend stubs); empty once it has exited."""
        try:
            server = psutil.Process(self.pid)
            return [server.pid, *(child.pid for child in server.children(recursive=True))]
        except psutil.Error:
            return []

    def note_shm_regions(self) -> None:
        """Remember the regions the server and its stubs hold now (they are this server's to remove at stop)."""
        self.shm_regions |= shm.mapped_by(self.group_pids())

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop the process group, then remove the regions it created that no live process holds any more."""
        if self.alive():
            self.note_shm_regions()  # models loaded since it became ready have regions too
        code = super().stop(timeout)
        if self.shm_regions:
            shm.remove_unused(self.shm_regions)
        return code

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint (KServe v2)."""
        return f"{self.opts.host}:{self.opts.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"{self.opts.host}:{self.opts.grpc_port}"

    def ready(self) -> bool:
        """True once /v2/health/ready answers 200 (every model loaded: strict readiness)."""
        return http_ok(f"http://{self.http_url}/v2/health/ready")

    def start_and_wait(self, timeout: float = 180.0) -> TritonServer:
        """Start and wait until every model is ready (stopped again if that fails)."""
        self.start_ready(self.ready, timeout=timeout, interval=0.25)
        self.note_shm_regions()
        return self


def start_triton(opts: TritonOptions, state_dir: Path, *, log_path: Path | None = None,
                 timeout: float = 180.0) -> TritonServer:
    """Triton with `opts` (its backend directory under `state_dir`), every model ready."""
    return TritonServer(opts, state_dir=state_dir, log_path=log_path).start_and_wait(timeout)
