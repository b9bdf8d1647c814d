"""Metrics to `metrics.jsonl` and TensorBoard, written by process 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np


class MetricsWriter:
    """Appends one JSON object per logged step and mirrors scalars/images to TensorBoard."""

    def __init__(self, workdir: str | Path, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = Path(workdir)
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.workdir / "metrics.jsonl", "a")  # noqa: SIM115
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)
            self._tb.add_scalar(name, value, int(step))
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """uint8 HWC images (e.g. sample grids) to TensorBoard."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(name, np.asarray(image), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """All rows of `metrics.jsonl` (later rows of a step after a resume win)."""
    path = Path(workdir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {}
    for row in rows:
        by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]
