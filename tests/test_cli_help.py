"""Every command's --help answers without importing torch (or timm, onnx, onnxruntime): a newcomer's first call is
instant, and a machine with the runtime only can still read the export tools' help."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "scipy", "sklearn")
ENTRY_POINTS = {"packd": "packd.cli:main", "packd-export": "packd_export.cli:main",
                "packd-bench": "packd_bench.cli:run", "packd-demo": "packd_demo.demo:main",
                "packd-station": "packd_station.cli:main"}
HELP_CALLS = [
    ("packd", []), ("packd", ["train"]), ("packd", ["eval"]), ("packd", ["data"]), ("packd", ["data", "synth"]),
    ("packd", ["data", "convert-visa"]), ("packd-export", []), ("packd-export", ["export"]),
    ("packd-export", ["check"]), ("packd-export", ["build"]), ("packd-export", ["triton"]), ("packd-bench", []),
    ("packd-demo", []), ("packd-station", []), ("packd-station", ["serve"]), ("packd-station", ["detect"]),
]
BLOCKED_RUN = """
import importlib, sys
for name in {heavy!r}:
    sys.modules[name] = None  # any `import torch` (or the others) now raises ImportError
module, func = {entry!r}.split(":")
sys.argv = [{prog!r}, *{args!r}, "--help"]
getattr(importlib.import_module(module), func)()
"""


@pytest.mark.parametrize(("prog", "args"), HELP_CALLS, ids=[" ".join([p, *a]) for p, a in HELP_CALLS])
def test_help_imports_no_torch(prog, args):
    code = BLOCKED_RUN.format(heavy=HEAVY, entry=ENTRY_POINTS[prog], prog=prog, args=args)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage:" in done.stdout and "--help" in done.stdout


def test_export_help_lists_its_subcommands():
    code = BLOCKED_RUN.format(heavy=HEAVY, entry=ENTRY_POINTS["packd-export"], prog="packd-export", args=[])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    commands = out.split("Commands:")[1]
    listed = [line.split()[0] for line in commands.strip().splitlines() if not line.startswith("    ")]
    assert listed == ["export", "check", "keygen", "sign", "build", "triton"]


def test_train_help_lists_every_kinds_options():
    code = BLOCKED_RUN.format(heavy=HEAVY, entry=ENTRY_POINTS["packd"], prog="packd", args=["train"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    for option in ("--stage-outputs", "--max-bank", "--slots", "--prototypes", "--epochs", "--norm"):
        assert option in out
