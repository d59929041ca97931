"""`make gpu-check`: the checks of the GPU path, in one script for a machine with a GPU (minutes, no network).

    python -m tests.gpu_check              # prepares .tritonstack/gpu-check/ where the export stack is installed,
                                           # then runs every check this machine allows; "no GPU" and exit 0 without
    python -m tests.gpu_check --prepare    # only the preparation (the development machine, with the network)

The GPU machine needs torch with CUDA and this tree; the bundle `.tritonstack/gpu-check/` (about 45 MiB) travels
with it, because that machine has no network and may lack transformers, tokenizers and the MiniLM package: MiniLM's
weights in fp32 (only the embedding rows the parity sentences use), their token ids, sentence-transformers'
embeddings of them (the export's reference), and a tiny random decoder exported as the GPU target's graph.

Reports, each OK, FAIL or SKIP with the reason:
1. the GPU: driver (the CUDA version it supports) and compute capability, against what NVIDIA's Triton 24.12 image
   (CUDA 12.6, onnxruntime-gpu 1.24 CUDA 12 build) and CUDA 13 builds need;
2. MiniLM on CUDA with torch, fp32 and fp16, against sentence-transformers and the export's parity gates
   (`export.parity.DEFAULT_MIN_COSINE`);
3. the stream pattern the generation engine relies on (`llm_engine.Place.synchronize`): a write queued on one
   stream and read on a non-blocking one (ONNX Runtime's), with and without synchronising first;
4. with onnxruntime-gpu: the CUDA provider really loads (the session's own providers); with CuPy too, the real
   generation engine (`llm_engine.Decoder` on `Place("cuda")`) on the tiny GPU graph — prefix reuse, unpadded
   prefill, decode — against the same graph on ONNX Runtime's CPU provider;
5. with tritonserver: its backends and TensorRT version against the export's pin (loading models in NVIDIA's
   image is the compose file's job: `docker compose --profile gpu up`).
Exit status 1 when a check FAILs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".tritonstack" / "gpu-check"
GATES = {"fp32": 0.9999, "fp16": 0.999}  # export.parity.DEFAULT_MIN_COSINE (tests/test_gpu_check.py)
TRITON_CUDA = (12, 6)  # nvcr.io/nvidia/tritonserver:24.12-py3
TENSORRT_RELEASE = "10.7"  # export.encoder.tensorrt.TENSORRT_RELEASE (tests/test_gpu_check.py)
Result = tuple[str, str]  # (OK | FAIL | SKIP, detail)


# ------------------------------------------------------------------------------------------- preparation (here)

def prepare(bundle: Path = BUNDLE) -> None:
    """Write the bundle: needs the export stack (torch, transformers, sentence-transformers, the MiniLM package)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from export.encoder import minilm
    from export.encoder.sentences import PARITY_SENTENCES
    from tests.llm_fakes import tiny_graph

    bundle.mkdir(parents=True, exist_ok=True)
    source = minilm.model_dir()
    ids = minilm.tokenize(source / "tokenizer.json", PARITY_SENTENCES, minilm.max_seq_length(source))
    used = sorted({i for row in ids for i in row})
    remap = {old: new for new, old in enumerate(used)}
    state = {k: v.float() for k, v in load_file(str(source / "model.safetensors")).items()
             if not k.startswith("pooler") and k != "embeddings.position_ids"}
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][used].clone()
    reference, _ = minilm.reference_embeddings(source, PARITY_SENTENCES)
    token_ids = [[remap[i] for i in row] for row in ids]
    torch.save({"state": state, "token_ids": token_ids, "reference": torch.from_numpy(np.asarray(reference))},
               bundle / "minilm.pt")
    embeddings = minilm_embed(state, token_ids, torch.device("cpu"), torch.float32)  # this module's BERT, checked
    cosine = float((embeddings * torch.from_numpy(reference)).sum(-1).min())
    if cosine < GATES["fp32"]:
        raise RuntimeError(f"the bundle's MiniLM forward disagrees with sentence-transformers on the CPU: {cosine}")
    path, info = tiny_graph(bundle, "fp16")
    (bundle / "tiny.json").write_text(json.dumps({"onnx": path.name, "layers": info.layers, "kv_heads": info.kv_heads,
                                                  "head_dim": info.head_dim, "vocab": info.vocab}))
    size = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20
    print(f"prepared {bundle} ({size:.0f} MiB; CPU fp32 min cosine {cosine:.6f})")


def minilm_embed(state: dict, token_ids: list[list[int]], device, dtype, batch: int = 16):
    """all-MiniLM-L6-v2 as sentence-transformers computes it (BERT, masked mean pooling, L2 norm), in plain torch
    (no transformers on the GPU machine): embeddings [N, 384] in fp32."""
    import torch

    w = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    heads, eps, out = 12, 1e-12, []
    layers = 1 + max(int(k.split(".")[2]) for k in w if k.startswith("encoder.layer."))

    def norm(x, prefix):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w[prefix + ".weight"], w[prefix + ".bias"], eps)

    def linear(x, prefix):
        return torch.nn.functional.linear(x, w[prefix + ".weight"], w[prefix + ".bias"])

    for start in range(0, len(token_ids), batch):
        rows = token_ids[start : start + batch]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=dtype, device=device)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, device=device)
            mask[r, : len(row)] = 1
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:width]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = norm(x, "embeddings.LayerNorm")
        bias = (1 - mask)[:, None, None, :] * torch.finfo(dtype).min
        for i in range(layers):
            p = f"encoder.layer.{i}."
            q, k, v = (linear(x, p + f"attention.self.{n}").view(*x.shape[:2], heads, -1).transpose(1, 2)
                       for n in ("query", "key", "value"))
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
            x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = torch.nn.functional.gelu(linear(x, p + "intermediate.dense"))
            x = norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(out).cpu()


# ------------------------------------------------------------------------------------------------ the checks

def driver_cuda() -> tuple[int, int] | None:
    """The newest CUDA version the installed driver runs (cuDriverGetVersion), or None without a driver."""
    import ctypes

    try:
        version = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except OSError:
        return None
    return version.value // 1000, version.value % 1000 // 10


def check_device(torch) -> Result:
    major, minor = torch.cuda.get_device_capability(0)
    name = torch.cuda.get_device_name(0)
    supports = driver_cuda()
    smi = shutil.which("nvidia-smi")
    version = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip() if smi else "unknown (no nvidia-smi)"
    notes = [f"{name}, compute capability {major}.{minor}, driver {version}",
             f"driver supports CUDA {'.'.join(map(str, supports)) if supports else 'unknown'}",
             f"torch {torch.__version__} built for CUDA {torch.version.cuda}"]
    status = "OK"
    if supports is not None and supports < TRITON_CUDA:
        notes.append("below CUDA 12.6: Triton 24.12 runs only with NVIDIA's forward-compatibility package "
                     "(data-center GPUs; Triton's release notes)")
        status = "FAIL"
    notes.append("CUDA 13 builds (onnxruntime-gpu >= 1.27): " + (
        "driver too old (needs CUDA 13.0 support)" if supports is not None and supports < (13, 0) else
        "driver new enough") + ("; compute capability below 7.5, which CUDA 13 no longer supports"
                                if (major, minor) < (7, 5) else ""))
    return status, "; ".join(notes)


def check_minilm(torch, bundle: Path) -> Result:
    if not (bundle / "minilm.pt").exists():
        return "SKIP", f"no {bundle / 'minilm.pt'}: run `make gpu-check` where the export stack is, carry the bundle"
    data = torch.load(bundle / "minilm.pt", weights_only=True)
    reference = data["reference"]
    lines, status = [], "OK"
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        start = time.perf_counter()
        embeddings = minilm_embed(data["state"], data["token_ids"], torch.device("cuda"), dtype)
        cosine = (embeddings * reference).sum(-1)
        passed = float(cosine.min()) >= GATES[precision]
        status = status if passed else "FAIL"
        lines.append(f"{precision}: min cosine {float(cosine.min()):.6f}, mean {float(cosine.mean()):.6f} vs gate "
                     f"{GATES[precision]} ({'pass' if passed else 'FAIL'}; {len(reference)} sentences, "
                     f"{time.perf_counter() - start:.2f} s)")
    return status, "; ".join(lines)


def check_streams(torch) -> Result:
    """A write queued on the current stream, read on a non-blocking stream (as ONNX Runtime's CUDA provider
    computes), with and without synchronising the writer's stream first (what `Place.synchronize` does)."""
    n, trials, stale = 1 << 22, 20, 0
    side = torch.cuda.Stream()
    slow = torch.randn(2048, 2048, device="cuda")

    def busy() -> None:  # keep the writer's stream busy for a while before the write
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(50_000_000)
        else:
            for _ in range(8):
                torch.mm(slow, slow)
    for synchronise in (False, True):
        wrong = 0
        for t in range(trials):
            buffer = torch.zeros(n, device="cuda")
            torch.cuda.synchronize()
            busy()
            buffer.fill_(t + 1.0)
            if synchronise:
                torch.cuda.current_stream().synchronize()
            with torch.cuda.stream(side):
                seen = buffer.sum()
            side.synchronize()
            wrong += int(float(seen) != n * (t + 1.0))
        if not synchronise:
            stale = wrong
        elif wrong:
            return "FAIL", f"{wrong}/{trials} reads wrong even after synchronising the writer's stream"
    pattern = f"unsynchronised: {stale}/{trials} reads saw the buffer before the write (a race need not show)"
    return "OK", f"synchronised: {trials}/{trials} reads correct; {pattern}"


def check_onnxruntime(bundle: Path) -> Result:
    try:
        import onnxruntime as ort
    except ImportError:
        return "SKIP", "no onnxruntime"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "SKIP", f"onnxruntime {ort.__version__} has no CUDA provider (a CPU build): install onnxruntime-gpu"
    meta = json.loads((bundle / "tiny.json").read_text()) if (bundle / "tiny.json").exists() else None
    if meta is None:
        return "SKIP", "no tiny decoder graph in the bundle"
    sys.path.insert(0, str(ROOT))
    from triton_models import llm_engine

    graph = bundle / meta["onnx"]
    session = ort.InferenceSession(str(graph), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return "FAIL", f"onnxruntime {ort.__version__}: the CUDA provider did not load (got {session.get_providers()})"
    notes = [f"onnxruntime {ort.__version__}: CUDA provider loads"]
    if llm_engine.Place("cuda", 0).missing() is not None:
        return "OK", "; ".join([*notes, f"engine not run: {llm_engine.Place('cuda', 0).missing()}"])
    return _decoder_on_cuda(llm_engine, graph, meta, notes)


def _decoder_on_cuda(llm_engine, graph: Path, meta: dict, notes: list[str]) -> Result:
    import numpy as np

    from triton_models.llm_prefix import PrefixCache

    info = llm_engine.ModelInfo(meta["layers"], meta["kv_heads"], meta["head_dim"], meta["vocab"], (), {})
    system = list(range(1, 13))
    prompts = [[*system, 30, 31, 32], [*system, 33, 34, 35], [*system, 36], [40, 41, 42], [43, 44, 45]]
    runs = []
    for place in (llm_engine.Place("cuda", 0), llm_engine.HOST):
        decoder = llm_engine.Decoder(graph, info, place=place)
        prefixes = PrefixCache(1024)
        decoder.prefill([*system, 20], prefixes)
        logits, slots = decoder.prefill_many(prompts, prefixes)
        steps = [logits]
        for _ in range(8):
            logits, slots = decoder.decode(logits.argmax(-1).tolist(), slots)
            steps.append(logits)
        runs.append(np.stack(steps))
    gpu, cpu = runs
    diff = float(np.abs(gpu - cpu).max())
    same = bool((gpu.argmax(-1) == cpu.argmax(-1)).all())
    notes.append(f"llm_engine on CUDA with CuPy: prefix reuse + unpadded prefill + 8 decode steps, max |logit diff| "
                 f"vs the CPU provider {diff:.4f}, greedy tokens {'equal' if same else 'DIFFER'}")
    return ("OK" if same and diff < 0.25 else "FAIL"), "; ".join(notes)


def check_tritonserver() -> Result:
    server = shutil.which("tritonserver") or ("/opt/tritonserver/bin/tritonserver"
                                              if Path("/opt/tritonserver/bin/tritonserver").exists() else None)
    if server is None:
        return "SKIP", "no tritonserver (NVIDIA's image runs it: docker compose --profile gpu up)"
    backends = Path("/opt/tritonserver/backends")
    found = sorted(p.name for p in backends.iterdir()) if backends.is_dir() else []
    trt = os.environ.get("TRT_VERSION")
    status = "FAIL" if trt and ".".join(trt.split(".")[:2]) != TENSORRT_RELEASE else "OK"
    return status, (f"{server}; backends: {', '.join(found) or 'none found'}; TensorRT {trt or 'unknown'} "
                    f"(plans are built for {TENSORRT_RELEASE}); models not loaded here")


def run(bundle: Path) -> int:
    try:
        import torch
    except ImportError:
        print("no GPU: torch is not installed here; nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False; nothing to check (the GPU checks run on a GPU machine)")
        return 0
    checks: list[tuple[str, Callable[[], Result]]] = [
        ("GPU and driver", lambda: check_device(torch)),
        ("MiniLM fp32/fp16 parity (torch, CUDA)", lambda: check_minilm(torch, bundle)),
        ("stream synchronisation", lambda: check_streams(torch)),
        ("ONNX Runtime CUDA + generation engine", lambda: check_onnxruntime(bundle)),
        ("tritonserver", check_tritonserver),
    ]
    failed = False
    for title, check in checks:
        start = time.perf_counter()
        try:
            status, detail = check()
        except Exception as exc:  # a check that breaks is reported, the others still run
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        failed |= status == "FAIL"
        print(f"[{status}] {title} ({time.perf_counter() - start:.1f} s): {detail}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="only write the bundle (needs the export stack)")
    parser.add_argument("--bundle", type=Path, default=BUNDLE)
    args = parser.parse_args(argv)
    if args.prepare or not (args.bundle / "minilm.pt").exists():
        try:
            prepare(args.bundle)
        except ImportError as exc:  # the GPU machine: no export stack; the checks say what they lack
            if args.prepare:
                raise
            print(f"bundle not prepared here ({exc}); checks that need it are skipped")
    return 0 if args.prepare else run(args.bundle)


if __name__ == "__main__":
    sys.exit(main())
