"""A run's directory: its resolved config, its ledger, its trackers and each stage's manifest.

Every stage writes `manifest.json` into its own directory, with the inputs it was made from and
`complete: true` once it has finished. A rerun with the same name reads them back: a stage whose
manifest is complete and whose inputs are this run's is skipped, one that was cut short runs
again (generation keeps its finished shards), and one whose recorded inputs differ is refused.
Both pipelines keep their runs through one of these, and `evaluate --benchmarks` its evaluations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fpa_ray.accounting import Ledger
from fpa_ray.config import RunConfig
from fpa_ray.run_files import write_json
from fpa_ray.tracking import TrackingRun, check_installed


class StageInputsChanged(RuntimeError):
    """A finished stage in the run directory was made from other inputs than this run's."""


class RunDirectory:
    def __init__(self, path: Path, config: RunConfig, log: Callable[[str], None] = print):
        self.path, self.config, self.log = path.resolve(), config, log
        self.ledger = Ledger(self.path / "ledger.jsonl", run=config.name)
        self._tracking: TrackingRun | None = None

    @classmethod
    def of(cls, config: RunConfig, log: Callable[[str], None] = print) -> RunDirectory:
        """The run's own directory, `<output_dir>/<name>/`."""
        return cls(config.output_dir / config.name, config, log)

    def prepare(self) -> None:
        """Connect to Ray, check that the pools fit the cluster and the trackers are installed, then create
        the directory or check that it was made with the same config: all before any stage starts."""
        from fpa_ray.cluster import init_ray, link_logs
        from fpa_ray.placement import check_fit, cluster_nodes

        init_ray()
        for problem in check_fit(self.config, cluster_nodes()):  # raises unless fit_check=warn, before anything is written
            self.log(f"[ray] warning: {problem} (fit_check=warn: going on, waiting for nodes)")
        check_installed(self.config.tracking)
        self.path.mkdir(parents=True, exist_ok=True)
        saved = self.path / "config.yaml"
        text = self.config.to_yaml()
        if saved.exists() and saved.read_text() != text:
            raise StageInputsChanged(f"{self.path} was made with another config (see {saved}); use another name= or remove the directory")
        saved.write_text(text)
        logs = link_logs(self.path)
        if logs is not None:
            self.log(f"[ray] the actors' and libraries' output: {logs}")

    @property
    def tracking(self) -> TrackingRun:
        """The run's trackers, started on first use (a resumed run finds its tracker runs' ids in tracking.json)."""
        if self._tracking is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._tracking = TrackingRun.start(self.config.tracking, self.config.name, self.path, self.config.model_dump(mode="json"))
        return self._tracking

    def name(self, stage_dir: Path) -> str:
        """How logs name a stage directory: relative to the run's, where it lies inside it."""
        return str(stage_dir.relative_to(self.path)) if stage_dir.is_relative_to(self.path) else str(stage_dir)

    def done(self, stage_dir: Path, inputs: dict) -> dict | None:
        """The manifest of a finished stage made from `inputs`; None if it still has to run."""
        path = stage_dir / "manifest.json"
        if not path.exists():
            return None
        manifest = json.loads(path.read_text())
        if not manifest.get("complete"):
            return None
        if manifest.get("inputs") != json.loads(json.dumps(inputs, default=str)):
            raise StageInputsChanged(f"{stage_dir} holds a finished stage made from other inputs; use a new run name")
        self.log(f"[{self.name(stage_dir)}] done earlier: reusing it")
        return manifest

    def finish(self, stage_dir: Path, kind: str, inputs: dict, **record) -> None:
        """The stage's manifest, written whole once it has finished: `done` finds it on a rerun."""
        write_json(stage_dir / "manifest.json", {"kind": kind, "inputs": inputs, "complete": True, **record})
