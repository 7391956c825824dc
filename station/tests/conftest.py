"""The station's tests: torch-free (they run in the station's own environment, `make test`'s .venv-station on
Python 3.10), on the runtime's toy bundles, against real servers (mosquitto, PostgreSQL, the station itself, an
asyncua client) and a real browser (Debian's chromium through Playwright)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtime" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import Mosquitto, Postgres  # noqa: E402
from toy_bundle import write_toy_bundle  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def never_torch():
    yield
    assert "torch" not in sys.modules, "the torch-free station's tests imported torch"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A few-shot toy bundle: 32 px frames, batch 4, up to 3 shots."""
    folder = tmp_path_factory.mktemp("bundle") / "toy"
    write_toy_bundle(folder)
    return folder


@pytest.fixture(scope="session")
def per_category_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "toy-category"
    write_toy_bundle(folder, few_shot=False, threshold=500.0)
    return folder


@pytest.fixture(scope="session")
def postgres():
    folder = Path(tempfile.mkdtemp(prefix="packd-pg-"))  # not under pytest's 0700 folder: postgres must reach it
    server = Postgres(folder).start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def broker(tmp_path):
    server = Mosquitto(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Each records test runs on both databases: one code path."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/records.db"
    pg = request.getfixturevalue("postgres")
    import sqlalchemy as sa
    name = f"t{abs(hash(request.node.nodeid)) % 10**9}"
    engine = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return pg.url.rsplit("/", 1)[0] + "/" + name
