"""docs/architecture.md maps the code: every module of the six packages is named in its module map, and every
module the map names exists. A module added without a line there fails here."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["runtime/packd_runtime", "station/packd_station", "packd", "export/packd_export", "benchmarks/packd_bench",
            "demo/packd_demo"]


def _module_map() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Module map", 1)[1]
    return section.split("```text", 1)[1].split("```", 1)[0]


def test_every_module_is_in_the_architecture_map():
    mapped = _module_map()
    names = set(re.findall(r"[\w/]*?(\w+\.py)", mapped))
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT / package)
            folders_named = all(f"{part}/" in mapped for part in rel.parts[:-1])
            if path.name not in names or not folders_named:
                missing.append(f"{package}/{rel}")
    assert not missing, f"docs/architecture.md's module map does not name: {', '.join(missing)}"


def test_every_module_the_map_names_exists():
    existing = {p.name for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    named = set(re.findall(r"\b(\w+\.py)\b", _module_map()))
    assert named <= existing, f"the map names modules that do not exist: {sorted(named - existing)}"
