"""Application metrics on Ray's metrics endpoint (Prometheus names `ray_fpa_ray_*`), for the
dashboard's Grafana panels: which stage is running, samples generated, verdicts by status,
training tokens, loss and C_w/C_l, and resource-seconds per stage (GPU-hours by phase).

Every function is a no-op outside a Ray process, so the pure parts (and their unit tests) never
need a cluster. Tags: `run` (the run name) on everything, plus `stage`, `status` or `resource`.
"""

from __future__ import annotations

from collections.abc import Mapping

_METRICS: dict[str, object] = {}

# name -> (kind, description, tag keys)
SPECS = {
    "fpa_ray_stage_active": ("gauge", "1 while the stage runs, else 0", ("run", "stage")),
    "fpa_ray_samples_generated": ("counter", "responses sampled by the sampler pool", ("run", "stage")),
    "fpa_ray_verdicts": ("counter", "verifier verdicts, by status", ("run", "status")),
    "fpa_ray_training_tokens": ("counter", "prompt + response tokens trained on", ("run",)),
    "fpa_ray_training_loss": ("gauge", "the objective's loss at the last step", ("run",)),
    "fpa_ray_c_w": ("gauge", "mean chosen-side gradient coefficient C_w at the last step", ("run",)),
    "fpa_ray_c_l": ("gauge", "mean rejected-side gradient coefficient C_l at the last step", ("run",)),
    "fpa_ray_resource_seconds": ("counter", "resources held x wall seconds, by stage and resource", ("run", "stage", "resource")),
}


def _metric(name: str):
    import ray

    if not ray.is_initialized():
        return None
    if name not in _METRICS:
        from ray.util import metrics

        kind, description, tags = SPECS[name]
        _METRICS[name] = (metrics.Gauge if kind == "gauge" else metrics.Counter)(name, description=description, tag_keys=tags)
    return _METRICS[name]


def stage_active(run: str, stage: str, active: bool) -> None:
    if (gauge := _metric("fpa_ray_stage_active")) is not None:
        gauge.set(1.0 if active else 0.0, tags={"run": run, "stage": stage})


def samples_generated(run: str, stage: str, count: int) -> None:
    if count and (counter := _metric("fpa_ray_samples_generated")) is not None:
        counter.inc(count, tags={"run": run, "stage": stage})


def verdicts(run: str, by_status: Mapping[str, int]) -> None:
    if (counter := _metric("fpa_ray_verdicts")) is not None:
        for status, count in by_status.items():
            if count:
                counter.inc(count, tags={"run": run, "status": status})


def training_step(run: str, step_metrics: Mapping[str, float], tokens: float) -> None:
    if (counter := _metric("fpa_ray_training_tokens")) is None:
        return
    if tokens:
        counter.inc(tokens, tags={"run": run})
    for key, name in (("loss", "fpa_ray_training_loss"), ("C_w", "fpa_ray_c_w"), ("C_l", "fpa_ray_c_l")):
        if key in step_metrics:
            _metric(name).set(float(step_metrics[key]), tags={"run": run})


def resource_seconds(run: str, stage: str, cpu_seconds: float, gpu_seconds: float) -> None:
    if (counter := _metric("fpa_ray_resource_seconds")) is not None:
        for resource, seconds in (("cpu", cpu_seconds), ("gpu", gpu_seconds)):
            if seconds > 0:
                counter.inc(seconds, tags={"run": run, "stage": stage, "resource": resource})
