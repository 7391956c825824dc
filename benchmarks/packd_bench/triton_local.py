"""A real Triton Inference Server on this machine, for a CPU trial and the serving tests.

The `nvidia-pytriton` wheel ships a `tritonserver` binary with the Python backend (no ONNX Runtime or
TensorRT backend: on a CPU trial only the `packd` line model loads, which runs packd_runtime itself).
It needs numpy < 2, so it lives in an environment of its own (`make triton-env` makes `.venv-triton`).
On a GPU server use NVIDIA's container instead (see docs/triton.md).

    .venv/bin/python -m packd_bench.triton_local REPO [--env .venv-triton] [--http-port 8000]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packd.errors import PackdError


@dataclass(frozen=True)
class LocalTriton:
    http: str
    grpc: str
    log: Path


def site_packages(env: Path) -> Path:
    """The site-packages folder of a virtual environment."""
    found = sorted(Path(env).glob("lib/python3*/site-packages"))
    if not found:
        raise PackdError(f"{env} is not a virtual environment (no lib/python3*/site-packages)")
    return found[0]


def why_no_local_triton(env: Path) -> str | None:
    """None when `env` holds nvidia-pytriton's tritonserver, else why not (for a skip reason)."""
    try:
        sp = site_packages(env)
    except PackdError as e:
        return f"{e}: run `make triton-env`"
    if not (sp / "pytriton" / "tritonserver" / "bin" / "tritonserver").exists():
        return f"no tritonserver in {env} (pip install nvidia-pytriton there, or run `make triton-env`)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_triton(repository: Path, env: Path, models: tuple[str, ...] = ("packd",), http_port: int = 0,
                 grpc_port: int = 0, timeout_s: float = 120.0) -> Iterator[LocalTriton]:
    """Start tritonserver on `repository` (loading only `models`), wait until it is ready, stop it after."""
    reason = why_no_local_triton(env)
    if reason:
        raise PackdError(reason)
    sp = site_packages(env)
    dist = sp / "pytriton" / "tritonserver"
    probe = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2], sysconfig.get_config_var('LIBDIR'))"
    version, libdir = subprocess.run([str(Path(env) / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                     check=True).stdout.split()
    http_port, grpc_port = http_port or _free_port(), grpc_port or _free_port()
    with tempfile.TemporaryDirectory(prefix="packd-triton-") as work:
        server = Path(work) / "tritonserver"
        shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                    server / "backends" / "python" / "triton_python_backend_stub")
        run_env = {**os.environ, "PATH": f"{Path(env).resolve() / 'bin'}:{os.environ.get('PATH', '')}",
                   "PYTHONPATH": str(sp), "LD_LIBRARY_PATH": f"{sp / 'nvidia_pytriton.libs'}:{libdir}"}
        log = Path(work) / "tritonserver.log"
        cmd = [str(server / "bin" / "tritonserver"), "--model-repository", str(Path(repository).resolve()),
               "--backend-directory", str(server / "backends"), "--model-control-mode", "explicit",
               *[f"--load-model={m}" for m in models], f"--http-port={http_port}", f"--grpc-port={grpc_port}",
               "--allow-metrics=false", "--exit-on-error=true"]
        with open(log, "w") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=run_env)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise PackdError(f"tritonserver exited ({process.returncode}): {log.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise PackdError(f"tritonserver not ready after {timeout_s:.0f} s: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            yield LocalTriton(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(repository: Path, env: Path = Path(".venv-triton"), http_port: int = 8000, grpc_port: int = 8001) -> None:
    """Serve REPOSITORY's `packd` model until Ctrl-C."""
    with local_triton(repository, env, http_port=http_port, grpc_port=grpc_port) as server:
        print(f"Triton ready: HTTP {server.http}, gRPC {server.grpc} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)


if __name__ == "__main__":
    import typer

    typer.run(main)
