"""llama.cpp's `llama-server`, the peer `tritonstack bench llm` measures our stack against: built once from the
`llama-cpp-python` source distribution's vendored llama.cpp (pinned version and sha256) with cmake and g++ from
apt, cached outside the repository (`~/.cache/tritonstack/llama.cpp/<version>/`), and started on a GGUF.

The CPU features are passed explicitly instead of `-DGGML_NATIVE=ON`: on VMs that report AMX without letting a
process use it, a native build dies with an illegal instruction. Run `python -m loadtest.bench.llama_cpp` to build
(or find) the binary and print its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from stack.process import ManagedProcess, free_port, http_ok

VERSION = "0.3.36"  # llama-cpp-python's sdist on PyPI
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VENDORED = "vendor/llama.cpp"
TARGET = "llama-server"
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=ON",
    "-DGGML_AVX512_VNNI=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DLLAMA_CURL=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
)
BUILD_JOBS = 2
STAMP = "built.json"  # written once the build succeeded: a half-linked binary is never taken for a built one


class PeerUnavailableError(RuntimeError):
    """llama-server cannot be built or started here; the message is one line saying what to install or read."""


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/tritonstack/llama.cpp/<version>` (default `~/.cache/…`): outside the repository."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tritonstack" / "llama.cpp" / VERSION


def server_binary(root: Path | None = None) -> Path:
    """Where the build puts `llama-server` (its shared libraries beside it)."""
    return (root or cache_root()) / "build" / "bin" / TARGET


def configure_command(source: Path, build: Path) -> list[str]:
    """cmake's configure step for the vendored llama.cpp with the explicit CPU features."""
    return ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS]


def build_command(build: Path) -> list[str]:
    """cmake's build step: the server target only."""
    return ["cmake", "--build", str(build), "--target", TARGET, f"-j{BUILD_JOBS}"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_tools() -> list[str]:
    """The build tools not on PATH."""
    return [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]


def _run(argv: list[str], log: Path, what: str) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise PeerUnavailableError(f"{what} failed (exit {code}); its output: {log}")


def download_sdist(directory: Path, log: Path) -> Path:
    """`pip download` the pinned source distribution into `directory`; check its sha256."""
    _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
          f"llama-cpp-python=={VERSION}", "-d", str(directory)], log, f"pip download llama-cpp-python=={VERSION}")
    found = sorted(directory.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise PeerUnavailableError(f"pip download left no llama_cpp_python sdist in {directory}; its output: {log}")
    digest = sha256_of(found[0])
    if digest != SDIST_SHA256:
        raise PeerUnavailableError(f"{found[0].name}: sha256 {digest}, expected {SDIST_SHA256} (not built)")
    return found[0]


def unpack_vendored(sdist: Path, destination: Path) -> Path:
    """Extract only the vendored llama.cpp tree of the sdist into `destination`; returns its root."""
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        prefix = f"{top}/{VENDORED}/"
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise PeerUnavailableError(f"{sdist.name} has no {VENDORED}")
        archive.extractall(destination, members=members, filter="data")
    return destination / top / VENDORED


def ensure_llama_server(progress: Callable[[str], None] = print, root: Path | None = None) -> Path:
    """The cached `llama-server`, built first when missing (download, sha256 check, cmake + g++; minutes on 2
    cores). Raises `PeerUnavailableError` with a one-line reason when that is impossible."""
    root = root or cache_root()
    binary = server_binary(root)
    if binary.exists() and (root / STAMP).exists():
        return binary
    missing = missing_tools()
    if missing:
        raise PeerUnavailableError(f"building llama-server needs {' and '.join(missing)}: "
                              f"`sudo apt-get install {' '.join(missing)}`")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    log.write_text("")
    progress(f"building llama.cpp's llama-server (llama-cpp-python {VERSION}) into {root}; log: {log}")
    with tempfile.TemporaryDirectory(prefix="tritonstack-llama-sdist-") as tmp:
        sdist = download_sdist(Path(tmp), log)
        source = root / "src"
        shutil.rmtree(source, ignore_errors=True)
        source = unpack_vendored(sdist, source)
    build = root / "build"
    _run(configure_command(source, build), log, "cmake configure of llama.cpp")
    _run(build_command(build), log, "cmake build of llama-server")
    if not binary.exists():
        raise PeerUnavailableError(f"the llama.cpp build produced no {binary}; its output: {log}")
    (root / STAMP).write_text(json.dumps({"llama_cpp_python": VERSION, "sdist_sha256": SDIST_SHA256,
                                          "cmake_flags": list(CMAKE_FLAGS)}, indent=1) + "\n")
    return binary


def server_command(binary: Path, gguf: Path, port: int, *, threads: int, parallel: int,
                   slot_context: int) -> list[str]:
    """`llama-server` on 127.0.0.1:port: `threads` threads, `parallel` slots of `slot_context` tokens each
    (`-c` is the total, split among slots), continuous batching on."""
    return [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-tb", str(threads), "-c", str(parallel * slot_context), "-np", str(parallel), "-cb", "--no-webui"]


def start_llama_server(binary: Path, gguf: Path, *, threads: int = 2, parallel: int = 8, slot_context: int = 1024,
                       log_path: Path | None = None, timeout: float = 120.0) -> tuple[ManagedProcess, str]:
    """Start `llama-server` on a free port; ready once `/health` answers 200 (the model loaded). Returns the
    process and its base URL."""
    port = free_port()
    argv = server_command(binary, gguf, port, threads=threads, parallel=parallel, slot_context=slot_context)
    process = ManagedProcess("llama-server", argv, log_path=log_path)
    try:
        process.start_ready(lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout=timeout)
    except Exception as exc:
        raise PeerUnavailableError(f"llama-server did not start: {str(exc).splitlines()[0]}") from exc
    return process, f"http://127.0.0.1:{port}"


def main() -> None:
    try:
        print(ensure_llama_server())
    except PeerUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
