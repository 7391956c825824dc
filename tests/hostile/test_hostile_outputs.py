"""Hostile input, output surface: folders that only look like packd's, names that are glob patterns, and several
processes writing one output. Nothing that packd did not provably write is ever replaced or deleted."""

import json
import subprocess
import sys
import time

import pytest
from conftest import train_small

from packd.data.synth import SYNTHETIC_CATEGORY
from packd.errors import PackdError
from packd.models.checkpoint import CHECKPOINT
from packd_export.triton import REPOSITORY
from packd_runtime.atomic import atomic_dir, check_replaceable
from packd_runtime.bundle_format import BUNDLE


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_hugging_face_model_folder_is_not_a_checkpoint(synth_root, tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    (hf / "pytorch_model.bin").write_bytes(b"weights" * 100)
    before = _tree(hf)
    with pytest.raises(PackdError, match="not a checkpoint written by packd .its config.json is not packd's"):
        train_small("rd", synth_root, "grid", hf, epochs=1, batch_size=4)
    assert _tree(hf) == before


def test_a_web_folder_is_not_a_bundle(checkpoints, tmp_path):
    from packd_export.bundle import export_bundle

    web = tmp_path / "site"
    web.mkdir()
    (web / "manifest.json").write_text(json.dumps({"name": "app", "icons": [], "start_url": "/"}))
    (web / "index.html").write_text("<html></html>")
    before = _tree(web)
    with pytest.raises(PackdError, match="not a bundle written by packd .its manifest.json is not packd's"):
        export_bundle(checkpoints["rd"], web, max_batch=2)
    assert _tree(web) == before


@pytest.mark.parametrize(("marker", "content"), [
    (CHECKPOINT, json.dumps({"format": "4", "kind": "rd", "model_sha256": "x"})),  # a string where packd has a number
    (CHECKPOINT, json.dumps({"format": True, "kind": "rd", "model_sha256": "x"})),  # a bool is not a format
    (BUNDLE, json.dumps({"format": 2, "kind": "rd", "graphs": [], "files": {}})),
    (BUNDLE, "{not json"),
    (SYNTHETIC_CATEGORY, "my notes\n"),
    (REPOSITORY, "name: model\n"),
])
def test_a_marker_file_packd_did_not_write_protects_the_folder(tmp_path, marker, content):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / marker.name).write_text(content)
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(PackdError, match=f"not a {marker.what} written by packd"):
        check_replaceable(folder, marker)
    with pytest.raises(PackdError, match=f"not a {marker.what} written by packd"), atomic_dir(folder, marker):
        pass
    assert (folder / "keep.txt").read_text() == "mine"


def test_a_marker_that_is_a_symbolic_link_protects_the_folder(tmp_path):
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"format": 4, "kind": "rd", "model_sha256": "x"}))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").symlink_to(real)
    with pytest.raises(PackdError, match="not a checkpoint written by packd"):
        check_replaceable(folder, CHECKPOINT)


@pytest.mark.parametrize("name", ["line[1]", "*", "a?c", "x.tmp"])
def test_output_names_are_never_patterns(tmp_path, name):
    """Recovery removes only the temporaries atomic_dir made for this very name."""
    strangers = [tmp_path / ".line1.tmpabcd1234", tmp_path / ".my.tmp_backup", tmp_path / ".abc.tmpabcd1234",
                 tmp_path / f".{name}.tmp_backup", tmp_path / f".{name}.tmpabcd12345"]
    for s in strangers:
        s.mkdir()
        (s / "data").write_text("mine")
    own = tmp_path / f".{name}.tmpabcd1234"  # what a killed write of this name leaves
    own.mkdir()
    with atomic_dir(tmp_path / name, CHECKPOINT) as tmp:
        (tmp / "config.json").write_text(json.dumps({"format": 4, "kind": "rd", "model_sha256": "x"}))
    assert all((s / "data").read_text() == "mine" for s in strangers)
    assert not own.exists() and (tmp_path / name / "config.json").is_file()


HOLDER = """
import sys, time
from packd_runtime.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""

STRESS = """
import sys, time
from packd_runtime.errors import PackdError
from packd_runtime.locks import output_lock
target, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end, holds = time.monotonic() + seconds, []
while time.monotonic() < end:
    try:
        with output_lock(target):
            start = time.monotonic_ns()
            time.sleep(0.0005)
            holds.append((start, time.monotonic_ns()))
    except PackdError:
        pass
with open(log, "w") as f:
    f.write("\\n".join(f"{a} {b}" for a, b in holds))
"""


def test_a_held_lock_refuses_other_writers_and_dies_with_its_process(tmp_path, synth_root):
    out = tmp_path / "ck"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PackdError, match=f"being written by process {holder.pid}"):
            train_small("rd", synth_root, "grid", out, epochs=1, batch_size=4)
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / ".ck.lock").write_text("")  # a lock file left behind, empty or not, holds nothing by itself
    train_small("rd", synth_root, "grid", out, epochs=1, batch_size=4)
    assert (out / "config.json").is_file() and not (tmp_path / ".ck.lock").exists()


def test_several_processes_never_hold_one_lock_at_once(tmp_path):
    target = tmp_path / "out"
    logs = [tmp_path / f"holds{i}.txt" for i in range(3)]
    start = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", STRESS, str(target), str(log), "4"]) for log in logs]
    assert all(w.wait(timeout=120) == 0 for w in workers)
    holds = sorted(tuple(map(int, line.split())) for log in logs for line in log.read_text().splitlines())
    assert len(holds) > 100, f"only {len(holds)} holds in {time.monotonic() - start:.0f} s"
    overlaps = sum(b[0] < a[1] for a, b in zip(holds, holds[1:]))
    assert overlaps == 0
    assert sum(1 for log in logs if log.read_text()) >= 2  # more than one process got the lock
