"""Training metrics as JSON lines and CSV, and the loss-curve figure."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from patronus.utils.json_files import finite_json

JSONL_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (standard JSON: a loss that is not finite, as an fp16
    step skipped by the gradient scaler logs, is null) and ``metrics.csv`` in a run folder.

    ``truncate_after(step)`` drops rows past a step, so a resumed run does not repeat rows written
    after its checkpoint by the interrupted run.
    """

    def __init__(self, folder: Path) -> None:
        self.jsonl = folder / JSONL_FILE
        self.csv = folder / CSV_FILE

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        kept = [row for row in self.rows() if row["step"] <= step]
        self.jsonl.unlink(missing_ok=True)
        self.csv.unlink(missing_ok=True)
        for row in kept:
            self.append(row)

    def append(self, row: dict[str, Any]) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl.open("a") as handle:
            handle.write(finite_json(row, indent=None) + "\n")
        new_file = not self.csv.is_file()
        with self.csv.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)


def plot_loss_curve(rows: list[dict[str, Any]], path: Path, smoothing: int = 20) -> Path | None:
    """Loss against step (raw and a running mean) as a PNG; None when there is nothing to plot.
    Rows without a finite loss (null) are left out."""
    rows = [row for row in rows if row.get("loss") is not None and math.isfinite(row["loss"])]
    if not rows:
        return None
    from patronus.utils.plotting import pyplot

    plt = pyplot()
    steps = [row["step"] for row in rows]
    losses = [row["loss"] for row in rows]
    window = max(1, min(smoothing, len(losses) // 5))
    weight = 2 / (window + 1)  # an exponential moving average, bias-corrected at the start
    smoothed, average, total = [], 0.0, 0.0
    for loss in losses:
        average = (1 - weight) * average + weight * loss
        total = (1 - weight) * total + weight
        smoothed.append(average / total)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    axis.plot(steps, losses, alpha=0.35, label="loss (logged steps)")
    axis.plot(steps, smoothed, label=f"moving average (span {window})")
    axis.set_xlabel("step")
    axis.set_ylabel("noise-prediction MSE")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
