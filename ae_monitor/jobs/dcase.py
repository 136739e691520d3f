"""The DCASE Task 2 result table: AUC and pAUC per machine type and machine id, in the baseline's CSV layout.

The 2020 baseline (y-kawagu/dcase2020_task2_baseline, `01_test.py`) writes `result.csv` as, per machine type:
a line with the type, a header `id,AUC,pAUC`, one line per machine id, then `Average,<AUC>,<pAUC>` and a blank
line. pAUC is `roc_auc_score(y, s, max_fpr=0.1)`. A DCASE folder (`<machine>/train`, `<machine>/test`) given to
`evaluate` is scored on its `<machine>/test` clips only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ae_monitor.config import FeaturesConfig
from ae_monitor.sources.replay import list_inputs

MAX_FPR = 0.1
_ID = re.compile(r"id_(\d+)")


def test_folders(paths: Sequence[str | Path]) -> list[str | Path]:
    """Each DCASE root in `paths` (a folder whose subfolders hold `test/`) becomes its `<machine>/test` folders."""
    out: list[str | Path] = []
    for p in paths:
        tests = sorted(d for d in Path(p).glob("*/test") if d.is_dir()) if Path(p).is_dir() else []
        out.extend(tests or [p])
    return out


def clip_keys(paths: Sequence[str | Path], features: FeaturesConfig) -> list[tuple[str, str]]:
    """(machine type, machine id) of every clip, in the order `load_signals` returns them."""
    keys = []
    for path, root in list_inputs(paths, features):
        machine = root.parent.name if root.name == "test" else path.parent.parent.name or root.name
        found = _ID.search(path.name)
        keys.append((machine, f"id_{found.group(1)}" if found else "-"))
    return keys


def result_rows(keys: Sequence[tuple[str, str]], labels: np.ndarray, scores: np.ndarray) -> list[list[str]]:
    """The baseline's result.csv rows; ids whose clips are all of one label are skipped (no AUC exists)."""
    rows: list[list[str]] = []
    for machine in sorted({m for m, _ in keys}):
        per_id = []
        for machine_id in sorted({i for m, i in keys if m == machine}):
            mask = np.asarray([k == (machine, machine_id) for k in keys])
            if len(set(labels[mask].tolist())) == 2:
                y, s = labels[mask], scores[mask]
                per_id.append((machine_id, roc_auc_score(y, s), roc_auc_score(y, s, max_fpr=MAX_FPR)))
        if per_id:
            rows += [[machine], ["id", "AUC", "pAUC"]]
            rows += [[i, f"{auc:.6f}", f"{pauc:.6f}"] for i, auc, pauc in per_id]
            rows += [["Average", f"{np.mean([r[1] for r in per_id]):.6f}", f"{np.mean([r[2] for r in per_id]):.6f}"]]
            rows.append([])
    return rows


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """The rows as an aligned text table for the terminal."""
    return "\n".join("  ".join(f"{cell:<12}" for cell in row).rstrip() for row in rows)
