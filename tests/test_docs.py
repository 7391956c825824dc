"""The documentation cannot drift from the code: every ```bash and ```python block of the README and of docs/ runs
here, as written, from a folder laid out like the one `make demo` leaves (runs/demo/ with its data, checkpoints and
bundles, all small), with .venv/ pointing at this interpreter's environment and activated first, as the docs ask
("with the commands on PATH"). A block preceded by a `<!-- not run: why -->` line is skipped (it needs a Triton
server or a GPU, and says so)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import train_small

from packd.data.synth import Counts, synthesize

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(bash|python)\s*$")


def code_blocks() -> list[tuple[str, str, str]]:
    """(id, language, code) of every runnable block."""
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if not match:
                i += 1
                continue
            end = lines.index("```", i + 1)
            before = next((line for line in reversed(lines[:i]) if line.strip()), "")
            if not before.startswith("<!-- not run"):
                blocks.append((f"{path.relative_to(ROOT)}:{i + 1}", match[1], "\n".join(lines[i + 1:end]) + "\n"))
            i = end + 1
    return blocks


BLOCKS = code_blocks()


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    """A folder like the one `make demo` leaves, small: runs/demo/{data, checkpoint_*, bundle_*} and .venv."""
    from packd_export.bundle import export_bundle

    root = tmp_path_factory.mktemp("demo_tree")
    (root / ".venv").symlink_to(Path(sys.prefix))
    cwd = Path.cwd()
    os.chdir(root)  # the checkpoints record their data as the demo's do: runs/demo/data, relative
    try:
        data = Path("runs/demo/data")
        synthesize(data, seed=0, size=64, categories=["grid", "carpet", "tiles"],
                   counts=Counts(train=10, test_good=3, test_defect=2))
        checkpoints = {
            "packd": train_small("packd", data, ["grid", "carpet"], Path("runs/demo/checkpoint_packd"), epochs=1,
                                 batch_size=4, shots=2, prototypes=4, rotations=2, categories_per_batch=2),
            "knn": train_small("knn", data, ["grid", "carpet"], Path("runs/demo/checkpoint_knn"), rotations=2),
        }
        for kind, ckpt in checkpoints.items():
            export_bundle(ckpt, Path(f"runs/demo/bundle_{kind}"), max_batch=16, max_shots=8)
    finally:
        os.chdir(cwd)
    return root


def test_the_readme_has_the_blocks_the_tests_run():
    ids = [block_id for block_id, _, _ in BLOCKS]
    assert sum(i.startswith("README.md:") for i in ids) == 2  # the runtime example and the cheat-sheet
    assert len(ROOT.joinpath("README.md").read_text().splitlines()) <= 250


def test_runtime_examples_import_only_what_their_page_says_to_install():
    """A runtime-only install (`pip install ./runtime`) has numpy and onnxruntime: an example that needs more (Pillow,
    to read PNG files) is run only after the page says to install it (issue 31: every example imported Pillow)."""
    import ast

    runtime = {"numpy", "onnxruntime", "packd_runtime"} | set(sys.stdlib_module_names)
    for path in DOCS:
        text = path.read_text()
        for block_id, language, code in BLOCKS:
            if not block_id.startswith(f"{path.relative_to(ROOT)}:") or language != "python":
                continue
            tree = ast.parse(code)
            modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            if "packd_runtime" not in modules or modules & {"packd", "packd_export", "torch"}:
                continue  # not a camera-software example
            extra = modules - runtime
            assert extra <= {"PIL"}, (block_id, extra)
            if extra:
                assert "pip install ./runtime pillow" in text, block_id


@pytest.mark.slow
@pytest.mark.parametrize(("language", "code"), [(lang, code) for _, lang, code in BLOCKS],
                         ids=[block_id for block_id, _, _ in BLOCKS])
def test_documented_block_runs_as_written(demo_tree, language, code):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")}
    env.pop("VIRTUAL_ENV", None)
    if language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", f"source .venv/bin/activate\n{code}"]
    else:
        command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=demo_tree, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
