"""Real servers for the station's tests, started on free 127.0.0.1 ports in temporary folders and stopped after:
Debian's mosquitto and PostgreSQL (`.ci/run` installs them), and the station itself as `packd-station serve`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_for(check, timeout: float = 10.0, every: float = 0.05):
    """Poll `check()` until it returns something truthy; its last value, or a TimeoutError."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > end:
            if not value:
                raise TimeoutError(f"condition not met after {timeout} s (last: {value!r})")
            return value
        time.sleep(every)


class Mosquitto:
    """mosquitto on 127.0.0.1:port; stop() and start() again on the same port (a broker that goes down)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Postgres:
    """A throwaway PostgreSQL 15 cluster (initdb + pg_ctl) owned by the postgres user when run as root."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.folder = folder
        self.data = folder / "pgdata"
        self.as_root = os.geteuid() == 0

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> Postgres:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "packd", "--auth=trust", "-E", "UTF8")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "start", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off")
        return self

    @property
    def url(self) -> str:
        return f"postgresql://packd@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")


def station_command() -> list[str]:
    return [sys.executable, "-m", "packd_station.cli"]


class StationProcess:
    """`packd-station serve ARGS` as a child process, ready once its page answers."""

    def __init__(self, args: list[str], folder: Path):
        self.port = free_port()
        self.args, self.folder = [*args, "--http", f"127.0.0.1:{self.port}"], folder
        self.proc: subprocess.Popen | None = None
        self.log = folder / f"station-{self.port}.log"

    def start(self) -> StationProcess:
        self.proc = subprocess.Popen([*station_command(), "serve", *self.args], stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, cwd=self.folder)
        end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.url + "/api/lines", timeout=1).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"station did not start:\n{self.log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: each file under the field `images`; its bytes and content type."""
    boundary = "packd-test-boundary-7f3a"
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
    """An HTTP request to the station; (status, parsed JSON or raw bytes), 4xx and 5xx included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, data, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, data, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, (json.loads(data) if "json" in kind else data)
