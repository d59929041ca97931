"""Offline validation of the deployment files: docker-compose, Kubernetes (kustomize), Prometheus and Grafana.

Nothing here needs a Docker engine, a cluster or a GPU:
- the compose file validates with `docker-compose config -q` (Debian's `docker-compose`, `make install`) for every
  profile, and against the Compose specification (`compose-spec`);
- every Kubernetes manifest, and both overlays once built with `kubectl kustomize`, validate against the Kubernetes
  OpenAPI schemas bundled in `kubernetes-validate` (strict: unknown fields fail);
- every Grafana query names a metric that the gateway, the worker or Triton really exports (the gateway's and
  Triton's live /metrics, the worker's registry).
A test is skipped only when its tool is absent, with the reason.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tritonstack.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
K8S_VERSION = "1.31"  # a currently supported Kubernetes minor; the manifests use nothing newer

# Exported only by the official (GPU) Triton image with --allow-gpu-metrics; the CPU Triton of the tests has no GPU,
# so these names cannot appear on its /metrics. They are Triton's documented GPU metric names.
GPU_ONLY_METRICS = frozenset({
    "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_power_usage",
})
METRIC_NAME = re.compile(r"(?<![\w:])((?:gateway|tritonstack|nv)_[a-zA-Z0-9_]+)")  # not recorded names


# ---------------------------------------------------------------------------------------------- docker-compose


def _compose_profiles() -> list[str]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return sorted({p for svc in services.values() for p in svc.get("profiles", [])})


def _compose_env() -> dict[str, str]:
    # the file requires the hashed keys (`${…:?}`); any value satisfies the interpolation
    return {**os.environ, "TRITONSTACK_GATEWAY_API_KEYS": "[]"}


def test_compose_profiles_are_the_documented_ones() -> None:
    assert _compose_profiles() == ["cpu", "gpu", "loadtest", "observability"]


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (Debian package `docker-compose`, `make install`)")
@pytest.mark.parametrize("profiles", [(), ("gpu",), ("cpu",), ("gpu", "loadtest"), ("cpu", "loadtest"),
                                      ("gpu", "observability"), ("cpu", "observability")],
                         ids=lambda p: "+".join(p) or "default")
def test_compose_config_validates(profiles: tuple[str, ...]) -> None:
    argv = ["docker-compose", "-f", str(COMPOSE)]
    for profile in profiles:
        argv += ["--profile", profile]
    done = subprocess.run([*argv, "config", "-q"], cwd=ROOT, env=_compose_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_matches_the_compose_spec() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec not installed (`make install`)")
    compose_spec.ComposeSpecification.model_validate(yaml.safe_load(COMPOSE.read_text()))


def test_compose_services_are_production_shaped() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    triton = services["triton"]
    assert triton["profiles"] == ["gpu"]
    from export.config import TRT_ENGINE_CACHE  # ONNX Runtime's TensorRT engines: on a volume, kept over restarts

    assert any(v.split(":")[1] == TRT_ENGINE_CACHE and not v.startswith(".") for v in triton["volumes"])
    assert triton["environment"]["CUPY_CACHE_DIR"].startswith("/tmp/")
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert "--model-control-mode=explicit" in triton["command"]
    assert any(v.endswith(":/models:ro") for v in triton["volumes"])
    assert triton["shm_size"]
    # the GPU image adds tokenizers for the ensemble's python tokenizer step
    gpu_dockerfile = (ROOT / "deploy" / "docker" / triton["build"]["dockerfile"]).read_text()
    assert "nvcr.io/nvidia/tritonserver" in gpu_dockerfile and "tokenizers" in gpu_dockerfile
    cpu = services["triton-cpu"]
    assert cpu["profiles"] == ["cpu"] and "triton" in cpu["networks"]["default"]["aliases"]
    assert services["locust"]["profiles"] == ["loadtest"]
    assert services["gateway"]["deploy"]["replicas"] >= 2
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "volatile-lru"  # never evicts the job queue
    for name in ("gateway", "worker", "triton-cpu"):
        dockerfile = (ROOT / services[name]["build"]["dockerfile"]).read_text()
        assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile, name
    assert "gateway.app:app_from_env" in (ROOT / "deploy" / "docker" / "gateway.Dockerfile").read_text()


def test_gateway_factory_named_by_the_image_exists() -> None:
    from gateway.app import app_from_env

    assert callable(app_from_env)


# ---------------------------------------------------------------------------------------------- images

RUNTIME_REQUIREMENTS = ROOT / "deploy" / "docker" / "requirements-runtime.txt"
_IMPORT_CHECK = """
import importlib, importlib.abc, importlib.metadata as md, json, sys
HEAVY = {"torch", "transformers", "sentence_transformers", "onnx", "onnxruntime", "matplotlib", "locust", "gguf",
         "accelerate", "pytriton"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("the gateway/worker image has no " + name)
sys.meta_path.insert(0, Blocker())
for module in ("tritonstack.cli", "gateway.app", "jobs.worker", "jobs.runtime", "jobs.chunking", "jobs.embeddings",
               "jobs.chat"):
    importlib.import_module(module)
from gateway.app import app_from_env
import tokenizers  # jobs/chunking.py imports it inside the function that chunks by tokens
dists = md.packages_distributions()
print(json.dumps(sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})))
"""


# imported in the test venv but optional where it is imported (try/except ImportError), so the image may lack it
OPTIONAL_IMPORTS = {"sniffio": "anyio and httpcore fall back to asyncio without it",
                    "psutil": "OpenTelemetry's resource detector reads the process's details with it when present"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name → (pinned version, extras) from a pip-compile output (`name[extras]==version \\ --hash=…` entries)."""
    pins = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # continuation lines
    for line in text.splitlines():
        line = re.sub(r"--hash=\S+", "", line.split("#")[0]).strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[([a-z0-9,_-]+)\])?==([^\s;]+)", line)
            assert match, f"{path.name}: not an exact pin: {line}"
            pins[_norm(match[1])] = (match[3], set(filter(None, (match[2] or "").split(","))))
    return pins


def _closure(roots: dict[str, set[str]]) -> set[str]:
    """Distributions that pip installs for these requirements (from the installed metadata, markers honoured)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots.items())
    while todo:
        name, extras = todo.pop()
        if name in seen and not extras:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((_norm(req.name), set(req.extras)))
    return seen


def test_runtime_image_needs_no_export_stack_and_its_requirements_cover_every_import() -> None:
    """The gateway and worker import nothing heavy, and every distribution they import is installed by the image."""
    from importlib import metadata

    done = subprocess.run([".venv/bin/python" if (ROOT / ".venv").exists() else "python", "-c", _IMPORT_CHECK],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {_norm(d) for d in json.loads(done.stdout)} - {"tritonstack", "setuptools"} - OPTIONAL_IMPORTS.keys()
    pins = _requirements(RUNTIME_REQUIREMENTS)
    installed = _closure({name: extras for name, (_, extras) in pins.items()})
    assert not imported - installed, f"imported but not installed by the image: {sorted(imported - installed)}"
    # the pins are what the test suite runs with: a bump of pyproject.toml must bump the images too
    stale = {n: (v, metadata.version(n)) for n, (v, _) in pins.items() if metadata.version(n) != v}
    assert not stale, f"requirements-runtime.txt pins differ from the tested versions (pin, tested): {stale}"


def _model_imports() -> set[str]:
    """Third-party distributions the packaged python-backend models import (triton_models/*.py)."""
    folder = ROOT / "triton_models"
    local = {path.stem for path in folder.glob("*.py")} | {"triton_python_backend_utils"}  # the latter: Triton's
    names = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {_norm(n) for n in names - local - set(sys.stdlib_module_names)}


GPU_ONLY_IMPORTS = {"cupy"}  # imported by the generation model for `--target gpu` only (KV cache on the GPU)


def test_both_triton_images_install_what_the_python_models_import() -> None:
    """Every model `tritonstack export` writes must load in the image it targets: the CPU one (our requirements),
    NVIDIA's with its default LLM_RUNTIME=cpu (onnxruntime >= 1.32 for the CPU generation graph), and NVIDIA's with
    LLM_RUNTIME=gpu (onnxruntime-gpu and CuPy for the GPU one)."""
    imported = _model_imports()
    assert {"numpy", "onnxruntime", "tokenizers", "jinja2", "cupy"} <= imported  # the walk sees the models' imports
    triton_cpu = RUNTIME_REQUIREMENTS.with_name("requirements-triton-cpu.txt")
    cpu = _requirements(RUNTIME_REQUIREMENTS) | _requirements(triton_cpu)
    needed = imported - GPU_ONLY_IMPORTS
    assert not needed - cpu.keys(), f"the CPU Triton image misses {sorted(needed - cpu.keys())}"
    gpu_file = (ROOT / "deploy" / "docker" / "triton-gpu.Dockerfile").read_text()
    # the Dockerfile installs one of NVIDIA's sets per LLM_RUNTIME (tests/test_lock.py checks the sets themselves)
    assert "requirements-triton-$set.txt" in gpu_file and "gpu) set=gpu" in gpu_file and "cpu) set=gpu-cpu" in gpu_file
    gpu_variant, cpu_variant = ({n: v for n, (v, _) in _requirements(RUNTIME_REQUIREMENTS.with_name(f)).items()}
                                for f in ("requirements-triton-gpu.txt", "requirements-triton-gpu-cpu.txt"))
    missing = needed - cpu_variant.keys()
    assert not missing, f"NVIDIA's image (LLM_RUNTIME=cpu) misses {sorted(missing)}"
    assert {"onnxruntime-gpu", "cupy-cuda12x"} <= gpu_variant.keys()
    assert not (needed - {"onnxruntime"}) - gpu_variant.keys(), "NVIDIA's image (LLM_RUNTIME=gpu) misses some"
    from triton_models.llm_engine import MIN_ORT, MIN_ORT_GPU

    for name, version in (("CPU image", cpu["onnxruntime"][0]), ("NVIDIA's image", cpu_variant["onnxruntime"])):
        assert tuple(map(int, version.split(".")[:2])) >= MIN_ORT, f"{name}: onnxruntime {version}"
    gpu_ort = tuple(map(int, gpu_variant["onnxruntime-gpu"].split(".")[:2]))
    assert gpu_ort >= MIN_ORT_GPU, f"the GPU graph is checked on onnxruntime-gpu >= {MIN_ORT_GPU}"
    # onnxruntime >= 1.32 has wheels for Python >= 3.11 only: NVIDIA's image from 24.12 on (Ubuntu 24.04, Python 3.12)
    tag = re.search(r"tritonserver:(\d+)\.(\d+)-py3", gpu_file)
    assert tag and (int(tag[1]), int(tag[2])) >= (24, 12), "NVIDIA's image before 24.12 has Python 3.10"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_final_stage_runs_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    context = ROOT / "deploy" / "docker" if dockerfile.name == "triton-gpu.Dockerfile" else ROOT
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (context / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    final = text[text.rindex("\nFROM "):]
    user = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0")), f"{dockerfile.name}: final stage runs as root"
    if dockerfile.name != "triton-gpu.Dockerfile":  # NVIDIA's image: compose and Kubernetes probe it instead
        assert "HEALTHCHECK" in final
        # no compilers or package managers in the runtime stage: wheels only, pip removed in the build stage
        assert "build-essential" not in final and "gcc" not in final and "pip install" not in final


# ---------------------------------------------------------------------------------------------- Kubernetes


def _k8s_validate(docs: list[dict[str, Any]], source: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (`make install`)")
    assert docs, f"{source}: no documents"
    for doc in docs:
        name = f"{source}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{name} is invalid: {exc.message} at {'/'.join(map(str, exc.path))}")


def _manifest_files() -> list[Path]:
    """Every manifest under deploy/k8s: not kustomizations, the files they generate from, or overlay patches."""
    skip: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        skip.add(kustomization)
        spec = yaml.safe_load(kustomization.read_text())
        for generator in spec.get("configMapGenerator", []):
            skip.update(kustomization.parent / f.split("=", 1)[-1] for f in generator.get("files", []))  # [key=]path
        skip.update(kustomization.parent / p["path"] for p in spec.get("patches", []) if "path" in p)
    return sorted(p for p in K8S.rglob("*.yaml") if p not in skip)


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_k8s_manifest_validates(path: Path) -> None:
    _k8s_validate([d for d in yaml.safe_load_all(path.read_text()) if d], str(path.relative_to(ROOT)))


def _kustomize_available() -> str | None:
    if shutil.which("kubectl") is None:
        return "kubectl not installed (it carries kustomize; Debian's kubernetes-client or the upstream binary)"
    return None


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    if reason := _kustomize_available():
        pytest.skip(reason)
    built = {}
    for overlay in OVERLAYS:
        done = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        built[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return built


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_overlay_builds_and_validates(overlays: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    _k8s_validate(overlays[overlay], f"overlays/{overlay}")
    # one namespace for everything (the cpu overlay's Redis included: `redis:6379` resolves in the gateway's)
    outside = [f"{d['kind']}/{d['metadata']['name']}" for d in overlays[overlay]
               if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "tritonstack"]
    assert not outside, f"not in namespace tritonstack: {outside}"


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _assert_workloads_hardened(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every Deployment: non-root, no privilege escalation, resource requests, a PDB (but the dev Redis)."""
    deployments = _by_kind(docs, "Deployment")
    pdb_selectors = [d["spec"]["selector"]["matchLabels"] for d in _by_kind(docs, "PodDisruptionBudget").values()]
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["resources"]["requests"], f"{name}/{container['name']} has no resource requests"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if name != "redis":  # the cpu overlay's dev Redis is a single writer by design
            labels = deployment["spec"]["selector"]["matchLabels"]
            assert any(sel.items() <= labels.items() for sel in pdb_selectors), f"{name} has no PDB"
    return deployments


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_workloads_are_hardened_and_budgeted(overlays: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = overlays[overlay]
    deployments = _assert_workloads_hardened(docs)
    assert {"triton", "gateway", "worker"} <= deployments.keys()
    triton = deployments["triton"]["spec"]["template"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert _by_kind(docs, "HorizontalPodAutoscaler")["gateway"]["spec"]["scaleTargetRef"]["name"] == "gateway"
    gpu = triton["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpu == 1) if overlay == "gpu" else gpu is None
    if overlay == "gpu":
        assert "--model-control-mode=explicit" in triton["args"]
        assert triton["image"].startswith("tritonstack/triton-gpu")
        from export.config import TRT_ENGINE_CACHE

        # a read-only root filesystem: CuPy's kernel cache under /tmp (a volume), TensorRT's engines on a volume
        assert triton["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e["value"] for e in triton["env"]}
        mounts = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
        assert env["CUPY_CACHE_DIR"].startswith("/tmp/") and "/tmp" in mounts
        assert TRT_ENGINE_CACHE in mounts
        volumes = {v["name"] for v in deployments["triton"]["spec"]["template"]["spec"]["volumes"]}
        assert {mounts["/tmp"], mounts[TRT_ENGINE_CACHE]} <= volumes


def test_k8s_routes_configmap_is_a_valid_routes_file(overlays: dict[str, list[dict[str, Any]]]) -> None:
    from gateway.routing.config import parse_routes

    configmaps = _by_kind(overlays["gpu"], "ConfigMap")
    routes = next(cm for name, cm in configmaps.items() if name.startswith("tritonstack-routes"))
    parse_routes(yaml.safe_load(routes["data"]["routes.yaml"]), source="k8s routes ConfigMap", secrets=lambda _: "x")
    limits = next(cm for name, cm in configmaps.items() if name.startswith("tritonstack-limits"))
    from gateway.config import GatewaySettings
    from jobs.config import WorkerConfig

    fields = {f"TRITONSTACK_GATEWAY_{n.upper()}" for n in GatewaySettings.model_fields}
    fields |= {f"TRITONSTACK_WORKER_{n.upper()}" for n in WorkerConfig.model_fields}
    assert set(limits["data"]) <= fields, set(limits["data"]) - fields


# ---------------------------------------------------------------------------------------------- Prometheus, Grafana


def test_prometheus_scrapes_gateway_worker_and_triton() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["gateway"]["dns_sd_configs"][0] == {**jobs["gateway"]["dns_sd_configs"][0], "names": ["gateway"],
                                                     "port": 8080}
    assert jobs["worker"]["dns_sd_configs"][0]["port"] == 9500
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton:8002"]


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_covers_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tritonstack"
    text = " ".join(expr for _, expr in _dashboard_queries())
    for needed in ("gateway_requests_total", "gateway_request_duration_seconds_bucket", 'status=~"5.."',
                   "gateway_cache_items_total", "gateway_chat_fallbacks_total", "gateway_rate_limited_total",
                   "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                   "nv_inference_exec_count", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
                   "tritonstack_jobs_queue_depth", "gateway_embedding_drift_cosine",
                   "gateway_embedding_input_tokens_bucket", "gateway_budget_used_ratio",
                   "tritonstack_llm_completion_tokens_total", "tritonstack_llm_decode_steps_total",
                   "tritonstack_llm_requests_in_flight"):
        assert needed in text, needed
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(gateway_request_duration_seconds_bucket" in text
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert all(t["datasource"]["uid"] == datasource["uid"] for p in dashboard["panels"] for t in p.get("targets", []))


def _exported_names(text: str) -> set[str]:
    """Sample names a Prometheus scrape of this exposition can hold, including labelled metrics without samples."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def live_gateway(triton_server: Any, redis_server: Any, gateway_keys: Any) -> Iterator[Any]:
    """A gateway with the local chat routes (so the chat metrics exist) on the session's Triton and Redis."""
    from tests.fixtures.gateway import settings_for, start_gateway

    gateway = start_gateway(settings_for(triton_server, redis_server, gateway_keys,
                                         routes_file=ROOT / "deploy" / "routes.local.yaml"))
    try:
        response = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": "minilm", "input": "deploy check"},
                              headers={"Authorization": f"Bearer {gateway_keys.user}"}, timeout=30)
        assert response.status_code == 200, response.text
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def live_metric_names(live_gateway: Any, triton_server: Any, smollm2_triton: Any) -> set[str]:
    """What the gateway, a Triton serving the embedders, one serving the generation model and the worker export."""
    from jobs.metrics import WorkerMetrics

    texts = [httpx.get(url, timeout=10).text for url in (
        f"{live_gateway.url}/metrics", f"http://127.0.0.1:{triton_server.opts.metrics_port}/metrics",
        f"http://127.0.0.1:{smollm2_triton.opts.metrics_port}/metrics")]
    texts.append(generate_latest(WorkerMetrics().registry).decode())
    return set().union(*(_exported_names(text) for text in texts))


def test_every_dashboard_query_names_an_exported_metric(live_metric_names: set[str]) -> None:
    assert not GPU_ONLY_METRICS & live_metric_names, "a CPU Triton exporting GPU metrics: revisit the allow-list"
    missing = []
    for title, expr in _dashboard_queries():
        names = set(METRIC_NAME.findall(expr))
        assert names, f"{title}: query names no metric: {expr}"
        missing += [f"{title}: {n}" for n in sorted(names - live_metric_names - GPU_ONLY_METRICS)]
    assert not missing, "dashboard queries name metrics nobody exports:\n" + "\n".join(missing)


def test_every_alert_names_an_exported_metric(live_metric_names: set[str]) -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    missing = []
    for rule in rules:
        names = set(METRIC_NAME.findall(rule["expr"]))
        tokens = set(re.findall(r"[\w:]+", rule["expr"]))
        assert names or recorded & tokens or "up" in tokens, rule  # `up`: Prometheus' own per-target series
        missing += [f"{rule.get('alert') or rule['record']}: {n}" for n in sorted(names - live_metric_names)]
    assert not missing, "alert rules name metrics nobody exports:\n" + "\n".join(missing)


PROMTOOL = shutil.which("promtool")
PROMETHEUS_BIN = shutil.which("prometheus")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`, `make install`)")
def test_promtool_checks_config_and_rules(tmp_path: Path) -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    # the config names the rules file by its path inside the container
    config = PROMETHEUS.read_text().replace("/etc/prometheus/alerts.yml", str(ALERTS))
    (tmp_path / "prometheus.yml").write_text(config)
    done = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`, `make install`)")
def test_promtool_unit_tests_of_the_alerts() -> None:
    """deploy/prometheus/alerts_test.yml: budget 80 % and the drift alerts fire (and stay quiet) as documented."""
    tested = {t["alertname"] for group in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for t in group.get("alert_rule_test", [])}
    assert {"BudgetAlmostSpent", "EmbeddingDriftFromReference", "EmbeddingDriftShift"} <= tested
    done = subprocess.run([PROMTOOL, "test", "rules", str(ALERTS_TEST)], cwd=ALERTS_TEST.parent, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMETHEUS_BIN is None, reason="prometheus not installed (Debian package `prometheus`)")
def test_real_prometheus_scrapes_gateway_and_triton(live_gateway: Any, triton_server: Any, tmp_path: Path) -> None:
    from stack.process import free_port

    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [live_gateway.address]}]},
            {"job_name": "triton", "static_configs": [{"targets": [f"127.0.0.1:{triton_server.opts.metrics_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [PROMETHEUS_BIN, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
    queries = {
        "gateway": 'sum(gateway_requests_total{route="/v1/embeddings"})',
        "triton": "sum(nv_inference_request_success)",
        "batch size": "sum(nv_inference_count) / sum(nv_inference_exec_count)",
    }
    results: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while len(results) < len(queries) and time.monotonic() < deadline:
            for name, query in queries.items():
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2)
                except httpx.HTTPError:
                    break  # not listening yet
                if response.status_code != 200:
                    break  # starting: 503 until the TSDB is open
                body = response.json()
                if body["data"]["result"]:
                    results[name] = float(body["data"]["result"][0]["value"][1])
            time.sleep(0.5)
        assert results.keys() == queries.keys(), (results, (tmp_path / "prometheus.log").read_text()[-2000:])
        assert results["gateway"] >= 1 and results["triton"] >= 1 and results["batch size"] >= 1
        rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
        unhealthy = [r["name"] for g in rules for r in g["rules"] if r.get("health") == "err"]
        assert not unhealthy, unhealthy
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------- traces

COLLECTOR_CONFIG = ROOT / "deploy" / "otel" / "collector.yaml"
TRACES_ENV = ROOT / "deploy" / "otel" / "traces.env"
K8S_OBSERVABILITY = K8S / "components" / "observability"
JAEGER_DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "jaeger.yml"
# what the Python side reads (the OpenTelemetry SDK's standard variables) and the service names spans carry
OTEL_SDK_ENV = {
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
}
SERVICE_NAMES = {"gateway": "tritonstack-gateway", "worker": "tritonstack-worker", "triton": "triton"}
COLLECTOR_OTLP_HTTP = "http://otel-collector:4318"  # the collector's OTLP/HTTP receiver, by service name


def _trace_config(argv: list[str]) -> dict[str, str]:
    """Triton's `--trace-config[=]<[mode,]setting>=<value>` flags of a command line: {"[mode,]setting": value}."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--trace-config=")]
    values += [argv[i + 1] for i, a in enumerate(argv) if a == "--trace-config"]
    config = dict(v.split("=", 1) for v in values)
    assert len(config) == len(values), f"a trace setting is given twice: {values}"
    return config


def _assert_triton_traces(config: dict[str, str], where: str) -> None:
    """OpenTelemetry mode, timestamps, only requests that carry a context (rate 0), service `triton`."""
    assert config["mode"] == "opentelemetry" and config["level"] == "TIMESTAMPS", where
    assert config["rate"] == "0" and config["count"] == "-1", where
    assert config["opentelemetry,resource"] == f"service.name={SERVICE_NAMES['triton']}", where
    assert config["opentelemetry,url"].endswith("/v1/traces"), where


def _cli_trace_config(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str] | None:
    """The trace flags the CPU image's `tritonstack triton` gives its tritonserver in the environment `env`
    (stack/triton.py TritonTracing.from_env); None: tracing off."""
    from stack.triton import TritonTracing

    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("OTEL_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, "" if value is None else str(value))
        tracing = TritonTracing.from_env()
    return None if tracing is None else _trace_config(tracing.argv())


def test_collector_pipeline_takes_otlp_and_exports_to_jaeger() -> None:
    text = COLLECTOR_CONFIG.read_text()
    assert (K8S_OBSERVABILITY / "collector-config.yaml").read_text() == text, "the k8s copy differs: copy it again"
    config = yaml.safe_load(text)
    pipelines = config["service"]["pipelines"]
    assert pipelines.keys() == {"traces"}
    traces = pipelines["traces"]
    for kind in ("receivers", "processors", "exporters"):  # every component a pipeline names is configured
        assert set(traces[kind]) <= config[kind].keys(), kind
    assert set(config["service"].get("extensions", [])) <= config.get("extensions", {}).keys()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert traces["receivers"] == ["otlp"]
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318" and protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    # memory_limiter first (it refuses before anything is buffered), then batching
    assert traces["processors"] == ["memory_limiter", "batch"]
    limiter = config["processors"]["memory_limiter"]
    assert limiter["check_interval"] and 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] < 100
    (exporter,) = traces["exporters"]
    # OTLP over gRPC: `otlp_grpc` since collector 0.145 (`otlp` before, still accepted as a deprecated alias)
    assert exporter.split("/")[0] in {"otlp_grpc", "otlp"}
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"  # Jaeger's OTLP gRPC port, by service name


def test_compose_observability_profile_runs_collector_and_jaeger() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    collector, jaeger = services["otel-collector"], services["jaeger"]
    for name, service, image in (
        ("otel-collector", collector, "otel/opentelemetry-collector-contrib"),
        ("jaeger", jaeger, "jaegertracing/jaeger"),
    ):
        assert service["profiles"] == ["observability"], name
        repository, _, tag = service["image"].partition(":")
        assert repository == image and re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: not pinned: {service['image']}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"]}
    assert (ROOT / mounts["/etc/otelcol-contrib/config.yaml"]).resolve() == COLLECTOR_CONFIG  # the image's default
    assert collector["deploy"]["resources"]["limits"]["memory"]  # memory_limiter's percentages are of it
    assert {"127.0.0.1:4318:4318", "127.0.0.1:4317:4317"} <= set(collector["ports"])
    assert "127.0.0.1:16686:16686" in jaeger["ports"]  # the UI
    # without the profile nothing waits for them (compose refuses a dependency on a service it does not start)
    for name, service in services.items():
        if "observability" not in service.get("profiles", []):
            assert not {"otel-collector", "jaeger"} & set(service.get("depends_on", [])), name


def test_compose_sets_the_otel_variables_and_triton_trace_flags() -> None:
    """Gateway, worker and the CPU Triton read the SDK variables; the GPU Triton carries the trace flags."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in (("gateway", "gateway"), ("worker", "worker"), ("triton", "triton-cpu")):
        env = services[service]["environment"]
        assert env.keys() >= OTEL_SDK_ENV, f"{service}: missing {OTEL_SDK_ENV - env.keys()}"
        assert env["OTEL_SERVICE_NAME"] == SERVICE_NAMES[name]
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"  # empty: off
    _assert_triton_traces(_trace_config(services["triton"]["command"]), "docker-compose triton")
    assert services["triton"]["environment"]["OTEL_SERVICE_NAME"] == SERVICE_NAMES["triton"]
    assert "command" not in services["triton-cpu"]  # the image's `tritonstack triton` adds the flags itself


def _compose_config(*argv: str) -> dict[str, Any]:
    """`docker-compose config` of every profile, in an environment without tracing variables of its own."""
    env = {k: v for k, v in _compose_env().items() if not k.startswith("OTEL_")}
    profiles = [arg for p in _compose_profiles() for arg in ("--profile", p)]
    done = subprocess.run(["docker-compose", *argv, "-f", str(COMPOSE), *profiles, "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (Debian package `docker-compose`, `make install`)")
def test_compose_tracing_is_off_by_default_and_traces_env_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    off = _compose_config()
    for name in ("gateway", "worker", "triton-cpu"):
        assert off[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] in ("", None), name
    assert _cli_trace_config(off["triton-cpu"]["environment"], monkeypatch) is None  # the CPU Triton: no tracing
    on = _compose_config("--env-file", str(TRACES_ENV))
    for name in ("gateway", "worker"):
        env = on[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR_OTLP_HTTP, name
        assert 0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1
        assert env["OTEL_SERVICE_NAME"] == SERVICE_NAMES[name]
    gpu = _trace_config(on["triton"]["command"])
    assert gpu["opentelemetry,url"] == f"{COLLECTOR_OTLP_HTTP}/v1/traces"
    # both Triton images trace alike: the GPU command's flags are what `tritonstack triton` derives
    assert _cli_trace_config(on["triton-cpu"]["environment"], monkeypatch) == gpu


def _k8s_container(docs: list[dict[str, Any]], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload (Deployment or StatefulSet) `name` and its first container."""
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name]
    return workload, workload["spec"]["template"]["spec"]["containers"][0]


def _k8s_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom) overridden by its own `env` values."""
    configmaps = _by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _k8s_traces(docs: list[dict[str, Any]], where: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Gateway's and worker's OpenTelemetry environment, and Triton's trace flags: its args (NVIDIA's image) or
    what `tritonstack triton` derives from its environment (the CPU image; None: off)."""
    seen: dict[str, Any] = {}
    for name in ("gateway", "worker"):
        _, container = _k8s_container(docs, name)
        env = _k8s_env(docs, container)
        assert env.keys() >= OTEL_SDK_ENV - {"OTEL_EXPORTER_OTLP_ENDPOINT"}, f"{where}/{name}"
        assert env["OTEL_SERVICE_NAME"] == SERVICE_NAMES[name]
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        seen[name] = env
    _, triton = _k8s_container(docs, "triton")
    env = _k8s_env(docs, triton)
    assert env["OTEL_SERVICE_NAME"] == SERVICE_NAMES["triton"], where
    if triton.get("command") == ["tritonserver"]:
        seen["triton"] = _trace_config(triton["args"])
        _assert_triton_traces(seen["triton"], where)
    else:
        assert triton["image"].startswith("tritonstack/triton-cpu") and not _trace_config(triton.get("args", []))
        seen["triton"] = _cli_trace_config(env, monkeypatch)
    return seen


def _kustomize(kustomization: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(kustomization)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("overlay", [*OVERLAYS, "gpu-pool"])
def test_k8s_tracing_is_wired_and_off_without_the_component(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if reason := _kustomize_available():
        pytest.skip(reason)
    traces = _k8s_traces(_kustomize(K8S / "overlays" / overlay), overlay, monkeypatch)
    for name in ("gateway", "worker"):  # no exporter endpoint: the SDK stays off
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in traces[name], name
    # the CPU Triton traces nothing; NVIDIA's has its flags, idle while no request carries a `traceparent`
    assert (traces["triton"] is None) if overlay == "cpu" else traces["triton"]["rate"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_observability_component_runs_collector_and_jaeger(overlay: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An overlay plus components/observability, as docs/deploy.md "Traces" says to combine them."""
    if reason := _kustomize_available():
        pytest.skip(reason)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
        "components": [os.path.relpath(K8S_OBSERVABILITY, tmp_path)],
    }))
    docs = _kustomize(tmp_path)
    _k8s_validate(docs, f"overlays/{overlay} + components/observability")
    deployments = _assert_workloads_hardened(docs)
    assert {"otel-collector", "jaeger"} <= deployments.keys()
    assert all(d["metadata"].get("namespace") == "tritonstack" for d in docs if d["kind"] != "Namespace")
    traces = _k8s_traces(docs, overlay, monkeypatch)
    for name in ("gateway", "worker"):
        assert traces[name]["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR_OTLP_HTTP
    _assert_triton_traces(traces["triton"], overlay)  # the CPU image's too: on now
    assert traces["triton"]["opentelemetry,url"] == f"{COLLECTOR_OTLP_HTTP}/v1/traces"
    services = _by_kind(docs, "Service")
    assert {p["port"] for p in services["otel-collector"]["spec"]["ports"]} >= {4317, 4318}
    assert {p["port"] for p in services["jaeger"]["spec"]["ports"]} >= {4317, 16686}
    _, collector = _k8s_container(docs, "otel-collector")
    assert collector["image"] == yaml.safe_load(COMPOSE.read_text())["services"]["otel-collector"]["image"]
    (mount,) = collector["volumeMounts"]
    volume = next(v for v in deployments["otel-collector"]["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    config = _by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]
    assert mount["mountPath"] == "/etc/otelcol-contrib"  # the image's config folder
    assert config["data"]["config.yaml"] == COLLECTOR_CONFIG.read_text()


def test_grafana_has_jaeger_and_the_latency_panel_links_to_its_traces() -> None:
    from urllib.parse import parse_qs, urlsplit

    datasource = yaml.safe_load(JAEGER_DATASOURCE.read_text())["datasources"][0]
    assert datasource["type"] == "jaeger" and datasource["uid"] == "jaeger"
    assert datasource["url"] == "http://jaeger:16686"  # the compose service and its query port
    assert "16686:16686" in yaml.safe_load(COMPOSE.read_text())["services"]["jaeger"]["ports"][0]
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dashboard["panels"] if p["title"].startswith("Latency"))
    links = panel["fieldConfig"]["defaults"]["links"]
    assert links
    for link in links:
        url = urlsplit(link["url"])
        assert url.path == "/explore", link["url"]
        (pane,) = json.loads(parse_qs(url.query)["panes"][0]).values()
        (query,) = pane["queries"]
        assert pane["datasource"] == query["datasource"]["uid"] == datasource["uid"]
        assert query["queryType"] == "search" and query["service"] == SERVICE_NAMES["gateway"]
        assert pane["range"] == {"from": "${__from}", "to": "${__to}"}  # the dashboard's time range


@pytest.fixture
def echo_repository(tmp_path: Path) -> Path:
    """A one-model repository: `echo` (python backend) returns its FP32 input."""
    model = tmp_path / "repository" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(
        "import triton_python_backend_utils as pb_utils\n\n\n"
        "class TritonPythonModel:\n"
        "    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('y', pb_utils.get_input_tensor_by_name(r, 'x')"
        ".as_numpy())]) for r in requests]\n")
    (model / "config.pbtxt").write_text(
        'name: "echo"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [{name: "x", data_type: TYPE_FP32, dims: [1]}]\noutput [{name: "y", data_type: TYPE_FP32, dims: [1]}]\n'
        "instance_group [{kind: KIND_CPU, count: 1}]\n")
    return model.parent


def test_bundled_triton_exports_spans_into_the_callers_trace(echo_repository: Path, tmp_path: Path) -> None:
    """The GPU service's trace flags (docker-compose.yml) on the tritonserver of the CPU image: a request with a
    `traceparent` (HTTP header or gRPC metadata) yields Triton's spans in that trace, its request span a child of
    the caller's span, posted as OTLP/HTTP (JSON) to <endpoint>/v1/traces; a request without one, none (rate 0)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import numpy as np
    import tritonclient.grpc as grpcclient

    from stack.process import free_port
    from stack.triton import TritonOptions, start_triton

    received: list[tuple[str, str, dict[str, Any]]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append((self.path, self.headers.get("content-type", ""), json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_port}"
    flags = [f.replace("${OTEL_EXPORTER_OTLP_ENDPOINT:-http://otel-collector:4318}", endpoint)
              .replace("${OTEL_BSP_SCHEDULE_DELAY:-5000}", "100")  # export within the test's patience
             for f in yaml.safe_load(COMPOSE.read_text())["services"]["triton"]["command"]
             if f.startswith("--trace-config")]
    assert "$" not in " ".join(flags), flags
    opts = TritonOptions.on_free_ports(echo_repository, extra_args=flags)
    server = start_triton(opts, tmp_path / "state", log_path=tmp_path / "triton.log", timeout=120)
    http_trace, grpc_trace, parent = (
        "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736", "b7ad6b7169203331")
    spans: list[dict[str, Any]] = []
    try:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
        url = f"http://{server.http_url}/v2/models/echo/infer"
        assert httpx.post(url, json=body, timeout=30).status_code == 200  # no context: not traced
        response = httpx.post(url, json=body, timeout=30, headers={"traceparent": f"00-{http_trace}-{parent}-01"})
        assert response.status_code == 200, response.text
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = grpcclient.InferInput("x", [1], "FP32")
        x.set_data_from_numpy(np.array([2.0], dtype=np.float32))
        client.infer("echo", [x], headers={"traceparent": f"00-{grpc_trace}-{parent}-01"})
        client.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            spans = [span for _, _, body in received for rs in body["resourceSpans"] for ss in rs["scopeSpans"]
                     for span in ss["spans"]]
            if {s["traceId"] for s in spans} >= {http_trace, grpc_trace}:
                break
            time.sleep(0.2)
    finally:
        server.stop()
        receiver.shutdown()
    assert received, (tmp_path / "triton.log").read_text()[-2000:]
    assert all(path == "/v1/traces" and content_type.startswith("application/json")
               for path, content_type, _ in received)
    services = {a["value"]["stringValue"] for _, _, body in received for rs in body["resourceSpans"]
                for a in rs["resource"]["attributes"] if a["key"] == "service.name"}
    assert services == {SERVICE_NAMES["triton"]}
    assert {s["traceId"] for s in spans} == {http_trace, grpc_trace}  # the request without a context: no trace
    for trace in (http_trace, grpc_trace):
        mine = {s["spanId"]: s for s in spans if s["traceId"] == trace}
        roots = [s for s in mine.values() if s.get("parentSpanId") == parent]
        assert [r["name"] for r in roots] == ["InferRequest"], mine
        # request → model (queue, compute timestamps as events) → compute, each a child of the one before
        model = [s for s in mine.values() if s.get("parentSpanId") == roots[0]["spanId"]]
        assert [m["name"] for m in model] == ["echo"]
        assert {e["name"] for e in model[0]["events"]} >= {"QUEUE_START", "REQUEST_END"}
        assert any(s.get("parentSpanId") == model[0]["spanId"] and s["name"] == "compute" for s in mine.values())


# ---------------------------------------------------------------------------------------------- gateway start command

GATEWAY_DOCKERFILE = ROOT / "deploy" / "docker" / "gateway.Dockerfile"


def _gateway_options(argv: list[str], where: str) -> dict[str, Any]:
    """The options `tritonstack gateway` parses from `argv` (unknown options or bad values fail here)."""
    import typer.main

    from tritonstack.cli import app

    assert argv[:2] == ["tritonstack", "gateway"], f"{where} does not start the gateway with the CLI: {argv}"
    command = typer.main.get_command(app).commands["gateway"]  # type: ignore[attr-defined]
    return command.make_context("gateway", list(argv[2:])).params


def _dockerfile_cmd(path: Path) -> list[str]:
    """The exec-form CMD of a Dockerfile (a HEALTHCHECK's CMD stays inside its own instruction)."""
    instructions = re.sub(r"\\\n", " ", path.read_text()).splitlines()
    return json.loads([line[len("CMD "):] for line in instructions if line.startswith("CMD ")][-1])


def _k8s_gateway_containers() -> list[dict[str, Any]]:
    """The gateway containers of the base manifests and, with kubectl, of every built overlay."""
    docs = [d for path in sorted(K8S.rglob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    if shutil.which("kubectl") is not None:
        for overlay in sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir()):
            built = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True,
                                   timeout=60, check=True).stdout
            docs += [d for d in yaml.safe_load_all(built) if d]
    return [c for d in docs for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            if c.get("image", "").startswith("tritonstack/gateway")]


def test_image_compose_and_k8s_start_the_gateway_with_the_cli() -> None:
    """The shipped gateway runs as `tritonstack gateway` (the tested and measured server), nowhere overridden."""
    image_cmd = _dockerfile_cmd(GATEWAY_DOCKERFILE)
    options = _gateway_options(image_cmd, "the image's CMD")
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 8080, 1)
    assert options["timeout_graceful_shutdown"] >= 1
    service = yaml.safe_load(COMPOSE.read_text())["services"]["gateway"]
    assert (ROOT / service["build"]["dockerfile"]).resolve() == GATEWAY_DOCKERFILE
    # compose: `entrypoint` replaces the image's ENTRYPOINT and drops its CMD; `command` replaces the CMD
    compose_argv = service.get("entrypoint", []) + service.get("command", [] if "entrypoint" in service else image_cmd)
    assert _gateway_options(compose_argv, "docker-compose") == options
    containers = _k8s_gateway_containers()
    assert containers, "no gateway container in deploy/k8s"
    for c in containers:  # Kubernetes: `command` replaces the ENTRYPOINT and drops the CMD; `args` replaces the CMD
        argv = c.get("command", []) + c.get("args", [] if "command" in c else image_cmd)
        assert _gateway_options(argv, f"k8s container {c['name']}") == options
        assert c["ports"][0]["containerPort"] == options["port"]
    cli = Path(sys.executable).parent / "tritonstack"  # the console script the image calls
    listed = subprocess.run([str(cli), "gateway", "--help"], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}).stdout
    assert all(arg in listed for arg in image_cmd[2:] if arg.startswith("--")), listed
