"""`make gpu-check` (tests/gpu_check.py) where there is no GPU: it prepares the bundle the GPU machine needs, its
MiniLM forward (plain torch, for a machine without transformers) matches sentence-transformers on the CPU, its pins
are the export's, and it ends with "no GPU"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.encoder.tensorrt import TENSORRT_RELEASE
from export.parity import DEFAULT_MIN_COSINE
from tests import gpu_check

pytestmark = pytest.mark.slow


def test_the_gpu_checks_share_the_exports_gates_and_tensorrt_pin() -> None:
    assert {k: DEFAULT_MIN_COSINE[k] for k in ("fp32", "fp16")} == gpu_check.GATES
    assert gpu_check.TENSORRT_RELEASE == TENSORRT_RELEASE


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: `make gpu-check` runs the checks")
def test_gpu_check_prepares_its_bundle_and_says_no_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "gpu-check"
    assert gpu_check.main(["--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "no GPU" in out and "CPU fp32 min cosine" in out  # prepare checks its forward against the reference
    assert sum(p.stat().st_size for p in bundle.iterdir()) < 60 * 2**20  # travels within the device's 64 MiB
    data = torch.load(bundle / "minilm.pt", weights_only=True)
    fp16 = gpu_check.minilm_embed(data["state"], data["token_ids"][:8], torch.device("cpu"), torch.float16)
    assert float((fp16 * data["reference"][:8]).sum(-1).min()) > 0.99  # the fp16 path runs (CPU: no gate)
