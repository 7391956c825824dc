"""The full accuracy run: re-run the recorded accuracy tables and print what moved beyond its noise band
since the recorded results. Run it before (and after) any change to models, scoring or training:

    make bench-accuracy                                   # every table, about 3.5 h on 2 cores
    .venv/bin/python benchmarks/tables/accuracy_check.py --tables rd --fewshot-rows rd_meta,memkd_full   # a part

The fresh results go to `--out` (default runs/accuracy/results), never over the recorded ones; `--record`
copies them over `benchmarks/results/` once you have read the comparison. Noise bands: a k-shot cell
moves when it differs by more than max(0.02, 2 x its recorded spread over support sets); an RD cell when
it differs by more than 0.05 (the largest seed-to-seed spread of RD's image AUROC on a training category,
benchmarks/results/rd_student_validation.json, rounded up; packd_bench/accuracy_compare.py). Exit status 1
when something fell.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from packd_bench.accuracy_compare import compare, fewshot_cells, rd_cells

RESULTS = Path("benchmarks/results")
TABLES = ("rd", "fewshot")


def main(out: Path = Path("runs/accuracy"), tables: str = ",".join(TABLES), fewshot_rows: str = "",
         epochs_rd: int = 20, record: bool = False, compare_only: bool = False) -> None:
    """Re-run the tables (unless --compare-only), compare with the recorded results, optionally record."""
    chosen = [t for t in tables.split(",") if t]
    if set(chosen) - set(TABLES):
        raise typer.BadParameter(f"--tables takes {', '.join(TABLES)}")
    fresh_dir = out / "results"
    fresh_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in fewshot_rows.split(",") if r] or None
    if not compare_only:
        if "rd" in chosen:
            import rd_per_category

            rd_per_category.main(out=out / "rd", epochs=epochs_rd, results=fresh_dir / "rd_per_category")
        if "fewshot" in chosen:
            import fewshot_table

            if rows:  # only these rows are re-run: start from the recorded file so the others stay as recorded
                shutil.copy(RESULTS / "fewshot_table.json", fresh_dir / "fewshot_table.json")
            fewshot_table.main(out=out / "fewshot", rows=",".join(rows or fewshot_table.ROWS),
                               results=fresh_dir / "fewshot_table")
    recorded, fresh = {}, {}
    if "rd" in chosen:
        recorded |= {k: (v, 0.0) for k, v in rd_cells(_read(RESULTS / "rd_per_category.json")).items()}
        fresh |= {k: (v, 0.0) for k, v in rd_cells(_read(fresh_dir / "rd_per_category.json")).items()}
    if "fewshot" in chosen:
        recorded |= fewshot_cells(_read(RESULTS / "fewshot_table.json"), rows)
        fresh |= fewshot_cells(_read(fresh_dir / "fewshot_table.json"), rows)
    moved = compare(recorded, fresh)
    print(f"{len(set(recorded) & set(fresh))} cells compared, {len(moved)} moved beyond their noise band")
    for cell, old, new, band in moved:
        print(f"{'FELL' if new < old else 'ROSE'} {cell}: {old:.3f} -> {new:.3f} (band ±{band:.3f})")
    if record:
        for name in ("rd_per_category" if "rd" in chosen else None, "fewshot_table" if "fewshot" in chosen else None):
            for suffix in (".json", ".md") if name else ():
                shutil.copy(fresh_dir / f"{name}{suffix}", RESULTS / f"{name}{suffix}")
        print(f"recorded into {RESULTS}")
    if any(new < old for _, old, new, _ in moved):
        raise typer.Exit(1)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise typer.BadParameter(f"{path} not found: run the table first (without --compare-only)")
    return json.loads(path.read_text())


if __name__ == "__main__":
    typer.run(main)
