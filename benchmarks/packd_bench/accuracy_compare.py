"""What moved between two runs of the recorded accuracy tables: each table's cells flattened to
'name -> (value, spread)', and the cells that differ by more than their noise band (`make bench-accuracy`)."""

from __future__ import annotations

RD_BAND = 0.05
FEWSHOT_MIN_BAND = 0.02


def rd_cells(report: dict) -> dict[str, float]:
    """'category metric' -> value of an RD-per-category results file (per category: a mean over another set of
    categories would not compare)."""
    return {f"rd {cat} {key}": float(row[key]) for cat, row in report["categories"].items()
            for key in ("image_auroc", "pixel_auroc")}


def fewshot_cells(report: dict, rows: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """'group row k metric' -> (mean, std over support sets) of a k-shot table results file."""
    return {f"fewshot {group} | {row} | k={k} | {key}": (float(v[0]), float(v[1]))
            for group, by_row in report["summary"].items() for row, by_k in by_row.items()
            if rows is None or row in rows for k, by_key in by_k.items() for key, v in by_key.items()
            if v[0] == v[0]}  # NaN: a row the run did not have


def compare(recorded: dict[str, tuple[float, float]], fresh: dict[str, tuple[float, float]]
            ) -> list[tuple[str, float, float, float]]:
    """(cell, recorded, now, band) for every cell present in both that moved beyond its band."""
    moved = []
    for cell in sorted(set(recorded) & set(fresh)):
        (old, spread), (new, _) = recorded[cell], fresh[cell]
        band = RD_BAND if cell.startswith("rd ") else max(FEWSHOT_MIN_BAND, 2 * spread)
        if abs(new - old) > band:
            moved.append((cell, old, new, band))
    return moved
