"""`packd-station detect`: plain folders of the user's own images, one command, verdicts out."""

import csv
import json
import subprocess

import cv2
from servers import station_command
from test_web import SUPPORT, png
from toy_bundle import frames


def run(*args, cwd):
    return subprocess.run([*station_command(), "detect", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def folder(path, images, prefix="img"):
    path.mkdir()
    for i, f in enumerate(images):
        (path / f"{prefix}{i}.png").write_bytes(png(f))
    return path


def test_detect_a_folder_with_supports_and_calibration(tmp_path, bundle):
    supports = folder(tmp_path / "supports", SUPPORT)
    normal = folder(tmp_path / "normal", frames(8, seed=2))
    images = folder(tmp_path / "images", [SUPPORT[0], frames(1, seed=4, low=0, high=256)[0],
                                          frames(1, seed=7, hw=(64, 64))[0]])
    out = run(bundle, images, "--supports", supports, "--calibrate", normal, "--json", tmp_path / "v.json",
              "--overlays", tmp_path / "overlays", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    judged = json.loads((tmp_path / "v.json").read_text())
    assert [j["verdict"] for j in judged] == ["ok", "defect", "ok"]
    assert judged[0]["score"] == 0.0 and judged[1]["score"] > judged[1]["threshold"] > 0
    assert judged[1]["margin"] == (judged[1]["score"] - judged[1]["threshold"]) / judged[1]["threshold"]
    assert "img1.png: DEFECT" in out.stdout and '"defect": 1' in out.stdout
    overlay = cv2.imread(str(tmp_path / "overlays" / "img1.png"))
    assert overlay is not None and overlay.shape == (28 + 256, 2 * 256, 3)  # header, frame | map at 8x

    out = run(bundle, images, "--supports", supports, "--calibrate", normal, "--csv", tmp_path / "v.csv",
              cwd=tmp_path)
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert [r["verdict"] for r in rows] == ["ok", "defect", "ok"] and rows[0]["file"].endswith("img0.png")


def test_detect_says_what_is_missing_before_scoring(tmp_path, bundle, per_category_bundle):
    images = folder(tmp_path / "images", frames(2))
    out = run(bundle, images, cwd=tmp_path)
    assert out.returncode == 2 and "give --supports DIR" in out.stderr
    few = folder(tmp_path / "few", frames(3, seed=2))
    out = run(bundle, images, "--supports", images, "--calibrate", few, cwd=tmp_path)
    assert out.returncode == 2 and "at least 5 normal images, got 3" in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run(bundle, empty, "--supports", images, cwd=tmp_path)
    assert out.returncode == 2 and "holds no image files" in out.stderr
    out = run(per_category_bundle, images, "--supports", images, cwd=tmp_path)
    assert out.returncode == 2 and "takes no --supports" in out.stderr
    out = run(per_category_bundle, images, "--json", tmp_path / "p.json", cwd=tmp_path)
    assert out.returncode == 0 and all(j["threshold"] == 500.0 for j in json.loads((tmp_path / "p.json").read_text()))
    out = run(bundle, images, "--supports", images, cwd=tmp_path)  # no --calibrate: scores, no verdicts
    assert out.returncode == 0 and "UNCALIBRATED" in out.stdout and '"uncalibrated": 2' in out.stdout
