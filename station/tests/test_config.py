"""The station file: what a line needs, paths relative to the file, and every mistake refused in one line."""

import pytest

from packd_runtime.errors import PackdError
from packd_station.config import LineConfig, StationConfig, load


def test_a_station_file_with_two_lines(tmp_path):
    (tmp_path / "line.toml").write_text('''
db = "sqlite:///records.db"
data = "state"
mqtt = "mqtt://127.0.0.1:1883/plant"
drift_limit = 5.0
[[line]]
name = "bottles"
bundle = "bundles/packd"
source = "folder:camera1"
trusted_keys = ["keys/a.pub"]
[[line]]
name = "caps"
bundle = "bundles/knn"
source = "video:rtsp://127.0.0.1:8554/caps"
batch = 4
''')
    cfg = load(tmp_path / "line.toml")
    bottles, caps = cfg.lines
    assert bottles.bundle == tmp_path / "bundles/packd" and bottles.source == f"folder:{tmp_path / 'camera1'}"
    assert bottles.trusted_keys == (tmp_path / "keys/a.pub",) and caps.batch == 4 and caps.queue == 64
    assert caps.source == "video:rtsp://127.0.0.1:8554/caps" and cfg.data == tmp_path / "state"
    assert cfg.drift_limit == 5.0 and cfg.mqtt == "mqtt://127.0.0.1:1883/plant" and cfg.host_port == ("127.0.0.1", 8321)


@pytest.mark.parametrize(("text", "message"), [
    ('dbb = "x"\n[[line]]\nname = "a"\nbundle = "b"', "unknown keys ['dbb']"),
    ('[[line]]\nname = "a"\nbundle = "b"\nsorce = "api"', "unknown keys ['sorce']"),
    ('[[line]]\nname = "a"', "needs name and bundle"),
    ('[[line]]\nname = "a/../b"\nbundle = "b"', "line name"),
    ('[[line]]\nname = "a"\nbundle = "b"\n[[line]]\nname = "a"\nbundle = "c"', "line names must differ"),
    ('[[line]]\nname = "a"\nbundle = "b"\nsource = "camera"', "folder:DIR, video:URI or api"),
    ('db = "mysql://x"\n[[line]]\nname = "a"\nbundle = "b"', "sqlite:///PATH or postgresql://"),
    ('http = "0.0.0.0:80"\n[[line]]\nname = "a"\nbundle = "b"', "requires --token"),
    ('http = "0.0.0.0:80"\ntoken = "short"\n[[line]]\nname = "a"\nbundle = "b"', "at least 16 characters"),
    ("", "at least one line"),
    ("db = [", "cannot read station file"),
])
def test_mistakes_are_one_line(tmp_path, text, message):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(PackdError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path / "s.toml")


def test_beyond_loopback_with_a_token_is_allowed(tmp_path):
    cfg = StationConfig(lines=(LineConfig("a", tmp_path),), http="[::]:8321", token="x" * 16)
    assert cfg.host_port == ("::", 8321)
    with pytest.raises(PackdError, match="HOST:PORT"):
        _ = StationConfig(lines=(LineConfig("a", tmp_path),), http="8321").host_port
