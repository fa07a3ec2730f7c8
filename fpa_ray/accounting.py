"""The run ledger: every stage is charged the resources it held times its wall time.

One JSON line per stage run in `<run>/ledger.jsonl`: stage, round, start and end (UNIX seconds),
wall seconds, CPUs and GPUs held, cpu_seconds = CPUs x wall, gpu_seconds = GPUs x wall, and the
node. Offline and online pipelines charge through this one class, so their GPU-hours (CPU-hours
on a CPU machine) compare like for like.
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fpa_ray import metrics


# Stages that are not training: the shared starting point and the measurement of each policy.
NOT_TRAINING = frozenset({"warmstart", "download", "eval_generate", "eval_verify"})


class Ledger:
    def __init__(self, path: Path, run: str | None = None):
        self.path, self.run = path, run or path.parent.name

    @contextmanager
    def stage(self, stage: str, round_index: int | None, cpus: float, gpus: float = 0.0) -> Iterator[None]:
        """Charge the enclosed block; a block that raises is charged too (the resources were held)."""
        start = time.time()
        ok = False
        metrics.stage_active(self.run, stage, True)
        try:
            yield
            ok = True
        finally:
            metrics.stage_active(self.run, stage, False)
            self.charge(stage, round_index, start, time.time(), cpus, gpus, completed=ok)

    def charge(self, stage: str, round_index, start: float, end: float, cpus: float, gpus: float = 0.0, completed: bool = True,
               samples: int | None = None) -> None:
        """One entry: `cpus` and `gpus` held from `start` to `end` (UNIX seconds); `samples`: how many a
        generate phase made (the online loop's, so that samples its dynamic sampling discards are on record)."""
        entry = {
            "stage": stage, "round": round_index, "start": start, "end": end, "wall_s": end - start,
            "cpus": cpus, "gpus": gpus, "cpu_seconds": cpus * (end - start), "gpu_seconds": gpus * (end - start),
            "node": platform.node(), "completed": completed, **({} if samples is None else {"samples": samples}),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)  # on the first entry: a run refused before its stages leaves no directory
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        metrics.resource_seconds(self.run, stage, entry["cpu_seconds"], entry["gpu_seconds"])

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def cost_until(self, moment: float, excluded: frozenset[str] = frozenset()) -> dict[str, float]:
        """CPU- and GPU-seconds charged before `moment` (entries cut at it), stages in `excluded` left out."""
        cost = {"cpu_seconds": 0.0, "gpu_seconds": 0.0}
        for entry in self.entries():
            if entry["stage"] in excluded or entry["start"] >= moment:
                continue
            held = min(entry["end"], moment) - entry["start"]
            cost["cpu_seconds"] += entry["cpus"] * held
            cost["gpu_seconds"] += entry["gpus"] * held
        return cost

    def totals(self) -> dict[str, dict[str, float]]:
        """wall/cpu/gpu seconds per stage name."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: {"wall_s": 0.0, "cpu_seconds": 0.0, "gpu_seconds": 0.0})
        for entry in self.entries():
            for key in ("wall_s", "cpu_seconds", "gpu_seconds"):
                totals[entry["stage"]][key] += entry[key]
        return dict(totals)
