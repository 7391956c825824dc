"""A station line served by a real Triton server (nvidia-pytriton's tritonserver, the line model of `packd-export
triton`): the same verdicts as the line run by the station's own ONNX Runtime, and after a restart the line changes
over again on the server from the supports it kept."""

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FRAME

from packd_bench.triton_local import local_triton, why_no_local_triton
from packd_export.triton import write_repository
from packd_station.config import LineConfig, StationConfig
from packd_station.station import Station

TRITON_ENV = Path(os.environ.get("PACKD_TRITON_ENV", Path(__file__).parents[1] / ".venv-triton"))


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


def _verdicts(station: Station, frames: np.ndarray) -> list[dict]:
    before = station.records.counters("l1")["recorded"]
    for i, f in enumerate(frames):
        station.submit("l1", f, f"{i}.png")
    end = time.monotonic() + 30
    while station.records.counters("l1")["recorded"] < before + len(frames) and time.monotonic() < end:
        time.sleep(0.05)
    return sorted(station.records.results("l1", limit=len(frames)), key=lambda r: r["source"])


@pytest.mark.slow
def test_a_line_served_by_triton_judges_as_the_local_runtime(bundles, tmp_path):
    reason = why_no_local_triton(TRITON_ENV)
    if reason:
        pytest.skip(f"no local Triton: {reason}")
    _, bundle = bundles["packd"]
    repo = tmp_path / "repo"
    write_repository(bundle, repo, backend="onnxruntime")
    supports, normal, frames = _frames(2, 1), _frames(6, 2), _frames(6, 3)
    with local_triton(repo, TRITON_ENV) as server:
        results = {}
        for name, backend in (("local", "onnxruntime"), ("served", f"triton:http://{server.http}")):
            cfg = StationConfig(lines=(LineConfig("l1", bundle, backend=backend),),
                                db=f"sqlite:///{tmp_path}/{name}.db", data=tmp_path / name)
            with Station(cfg) as st:
                line = st.lines["l1"]
                line.changeover(list(supports), "p1", "tester")
                results[name] = (line.calibrate(list(normal), "tester")["threshold"], _verdicts(st, frames),
                                 st.status()[0]["backend"])
        (t_local, local, _), (t_served, served, backend) = results["local"], results["served"]
        assert backend == f"triton http://{server.http}"
        assert t_served == pytest.approx(t_local, rel=1e-5)
        assert [r["verdict"] for r in served] == [r["verdict"] for r in local]
        assert np.allclose([r["score"] for r in served], [r["score"] for r in local], rtol=1e-5)

        cfg = StationConfig(lines=(LineConfig("l1", bundle, backend=f"triton:http://{server.http}"),),
                            db=f"sqlite:///{tmp_path}/served.db", data=tmp_path / "served")
        with Station(cfg) as st:  # restarted: product and threshold from disk, prototypes made again on the server
            assert st.lines["l1"].product.name == "p1" and st.lines["l1"].threshold == t_served
            again = _verdicts(st, frames)
        assert np.allclose([r["score"] for r in again], [r["score"] for r in served], rtol=1e-5)
