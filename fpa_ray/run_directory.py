"""A run's directory: its resolved config, its ledger, its trackers and each stage's manifest.

Every stage writes `manifest.json` into its own directory, with the inputs it was made from and
`complete: true` once it has finished. A rerun with the same name reads them back: a stage whose
manifest is complete and whose inputs are this run's is skipped, one that was cut short runs
again (generation keeps its finished shards), and one whose recorded inputs differ is refused.
A directory made by an older fpa_ray resumes under a newer one that only added settings: a setting
its config.yaml lacks reads as its default, and an input its manifests lack is not compared. In a
training run the config check has already refused a config that sets such a setting away from its
default; a directory of `evaluate --benchmarks` has no config of its own, so there an evaluation
made before a setting existed is reused whatever that setting now says.
Both pipelines keep their runs through one of these, and `evaluate --benchmarks` its evaluations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

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
        if saved.exists():
            self._check_saved_config(saved)
        saved.write_text(self.config.to_yaml())
        logs = link_logs(self.path)
        if logs is not None:
            self.log(f"[ray] the actors' and libraries' output: {logs}")

    def _check_saved_config(self, saved: Path) -> None:
        """Refuse a directory made with another config. The saved one is read back as a config, not compared
        as text, so a setting added since it was written takes its default rather than failing the match."""
        try:
            previous = RunConfig.model_validate(yaml.safe_load(saved.read_text()))
        except (ValidationError, yaml.YAMLError) as error:
            raise StageInputsChanged(f"{saved} is not a config this fpa_ray reads ({error}); use another name= or remove the directory") from None
        before, now = previous.model_dump(mode="json"), self.config.model_dump(mode="json")
        if before != now:
            changed = ", ".join(_differences(before, now))
            raise StageInputsChanged(f"{self.path} was made with another config ({changed}; see {saved}); use another name= or remove the directory")

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
        current = json.loads(json.dumps(inputs, default=str))
        if not _covers(current, manifest.get("inputs")):
            changed = ", ".join(_differences(manifest.get("inputs"), current))
            raise StageInputsChanged(f"{stage_dir} holds a finished stage made from other inputs ({changed}); use a new run name")
        self.log(f"[{self.name(stage_dir)}] done earlier: reusing it")
        return manifest

    def finish(self, stage_dir: Path, kind: str, inputs: dict, **record) -> None:
        """The stage's manifest, written whole once it has finished: `done` finds it on a rerun."""
        write_json(stage_dir / "manifest.json", {"kind": kind, "inputs": inputs, "complete": True, **record})


def _covers(current, recorded) -> bool:
    """Whether a stage's recorded inputs match this run's: every recorded value equal, keys the record lacks
    (inputs or settings added by a later fpa_ray) left out of the comparison."""
    if isinstance(current, dict) and isinstance(recorded, dict):
        return all(key in current and _covers(current[key], value) for key, value in recorded.items())
    if isinstance(current, list) and isinstance(recorded, list):
        return len(current) == len(recorded) and all(map(_covers, current, recorded))
    return current == recorded


def _differences(recorded, current, prefix: str = "") -> list[str]:
    """The dotted keys of `recorded` whose value `current` does not match."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [d for key, value in recorded.items() for d in _differences(value, current.get(key, "<absent>"), f"{prefix}{key}.")]
    return [] if _covers(current, recorded) else [prefix.rstrip(".") or "inputs"]
