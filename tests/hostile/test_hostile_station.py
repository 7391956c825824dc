"""The line station under hostile input: its outputs never replace what it did not write, a watched folder's links
and bombs are never followed or decoded, and a bad frame loses nothing else."""

import os
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from packd_runtime.errors import PackdError
from packd_station.config import LineConfig, StationConfig
from packd_station.station import Station

FRAME = np.full((64, 64, 3), 128, np.uint8)


def _detect(*args, cwd):
    return subprocess.run([sys.executable, "-m", "packd_station.cli", "detect", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


@pytest.fixture
def folders(tmp_path, bundles):
    _, bundle = bundles["knn"]
    for name, n in (("supports", 2), ("normal", 6), ("images", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(100, 156, (64, 64, 3), np.uint8)).save(
                tmp_path / name / f"{i}.png")
    return bundle, ["--supports", tmp_path / "supports", "--calibrate", tmp_path / "normal"]


@pytest.mark.parametrize("flag", ["--json", "--csv"])
def test_detect_never_overwrites_a_file_it_did_not_write(folders, tmp_path, flag):
    bundle, options = folders
    precious = tmp_path / "notes.txt"
    precious.write_text("a line operator's notes\n")
    out = _detect(bundle, tmp_path / "images", *options, flag, precious, cwd=tmp_path)
    assert out.returncode == 2 and "was not written by packd-station detect" in out.stderr
    assert precious.read_text() == "a line operator's notes\n"
    ours = tmp_path / "verdicts.out"
    assert _detect(bundle, tmp_path / "images", *options, flag, ours, cwd=tmp_path).returncode == 0
    assert _detect(bundle, tmp_path / "images", *options, flag, ours, cwd=tmp_path).returncode == 0  # its own again
    out = _detect(bundle, tmp_path / "images", *options, flag, tmp_path, cwd=tmp_path)
    assert out.returncode == 2 and "is a folder" in out.stderr


def test_detect_never_replaces_a_folder_it_did_not_write(folders, tmp_path):
    bundle, options = folders
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.png").write_bytes(b"not ours")
    out = _detect(bundle, tmp_path / "images", *options, "--overlays", photos, cwd=tmp_path)
    assert out.returncode == 2 and "refusing" in out.stderr and (photos / "holiday.png").read_bytes() == b"not ours"
    mine = tmp_path / "overlays"
    for _ in range(2):  # written, then replaced whole
        assert _detect(bundle, tmp_path / "images", *options, "--overlays", mine, cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in mine.iterdir()) == [".packd-overlays", "0.png", "1.png"]


def _bomb() -> bytes:
    """A 30000 x 30000 PNG (900 MP) of a few kilobytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 300010, 9))
            + chunk(b"IEND", b""))


def test_a_watched_folder_follows_no_link_and_decodes_no_bomb(bundles, tmp_path):
    _, bundle = bundles["knn"]
    camera, secret = tmp_path / "camera", tmp_path / "secret.png"
    camera.mkdir()
    Image.fromarray(FRAME).save(secret)
    os.symlink(secret, camera / "link.png")
    (camera / "bomb.png").write_bytes(_bomb())
    Image.fromarray(FRAME).save(camera / "good.png")
    cfg = StationConfig(lines=(LineConfig("l1", bundle, source=f"folder:{camera}"),),
                        db=f"sqlite:///{tmp_path}/r.db", data=tmp_path / "state")
    with Station(cfg) as st:
        end = time.monotonic() + 20
        while time.monotonic() < end and not (st.records.counters("l1")["recorded"]
                                              and st.records.counters("l1")["corrupt"]):
            time.sleep(0.05)
        time.sleep(0.5)
        assert [r["source"] for r in st.records.results("l1")] == ["good.png"]
        assert st.records.counters("l1")["corrupt"] == 1  # the bomb, counted; the link never read
        with pytest.raises(PackdError, match="uint8"):
            st.submit("l1", FRAME.astype(np.float64))
