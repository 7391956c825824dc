"""Mutation scores per module from a finished `mutmut run` (its `mutants/**/*.py.meta` files): killed over the
mutants that are not equivalent. Equivalent survivors are listed in mutation/equivalent.toml, each with its reason;
one listed there that the tests now kill, or that no longer exists, is reported so the list never goes stale.

    python mutation/score.py runtime/mutants        # after `make mutation`; exit 1 below --floor (90 %)
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import tomllib

KILLED, SURVIVED = {1, 3, 36, 37, 24, -24, 152, 255, -9, -11}, {0}  # timeouts, segfaults and type errors kill too
NO_TESTS, SKIPPED = {5, 33}, {34}
EQUIVALENT = Path(__file__).with_name("equivalent.toml")


def module_of(mutant: str) -> str:
    """'packd_runtime.signing.x_generate_keys__mutmut_7' (a function) or
    'packd_runtime.detector.xǁDetectorǁopen__mutmut_2' (a method) -> the module's name."""
    return re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]


def main(mutants: Path, floor: float = 0.9) -> int:
    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    reasons = {name: reason for module in equivalent.values() for name, reason in module.items()}
    results: dict[str, int | None] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    modules = {module_of(m) for m in results}
    stale = [name for name in reasons if module_of(name) in modules and results.get(name) not in SURVIVED]
    rows, ok = [], True
    for module in sorted(modules):
        codes = {m: c for m, c in results.items() if module_of(m) == module}
        count = Counter("killed" if c in KILLED else "survived" if c in SURVIVED else "no tests" if c in NO_TESTS
                        else "skipped" if c in SKIPPED else "not run" if c is None else "suspicious"
                        for c in codes.values())
        eq = sum(1 for m, c in codes.items() if c in SURVIVED and m in reasons)
        judged = len(codes) - eq - count["skipped"]
        score = count["killed"] / judged if judged else 1.0
        ok &= score >= floor
        rows.append(f"| `{module}` | {len(codes)} | {count['killed']} | {eq} | {count['survived'] - eq} "
                    f"| {count['no tests']} | {count['not run'] + count['suspicious']} | {100 * score:.1f} % |")
    print("| module | mutants | killed | equivalent | other survivors | no test reaches | not run | score |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for name in sorted(m for m, c in results.items() if c in SURVIVED and m not in reasons):
        print(f"survivor: {name}")
    for name in stale:
        print(f"stale entry in {EQUIVALENT.name} (killed or gone now): {name}")
    return 0 if ok and not stale else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), *(float(a) for a in sys.argv[2:])))
