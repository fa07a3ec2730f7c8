"""benchmarks/checks/gpu_check.py, the script a lent GPU machine runs, smoke-tested on CPU with a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "checks" / "gpu_check.py"


def test_gpu_check_runs_every_case_and_reports_figures_on_cpu(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--steps", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert run.returncode == 0, [r for r in summary["results"] if not r["ok"]] or run.stderr[-3000:]
    checks = [r["check"] for r in summary["results"]]
    assert len(checks) == 25 and summary["failed"] == []
    assert sum("zero3" in c for c in checks) == 3 and sum("kto" in c for c in checks) == 4 and sum("padding-free" in c for c in checks) == 2
    assert summary["padding_free_over_padded"] > 0
    by_name = {r["check"]: r for r in summary["results"]}
    assert by_name["weight group over NCCL (one rank): blocking wait with a timeout, abort"]["backend"] == "gloo"  # no GPU here
    assert by_name["hf engine on the GPU it holds"]["model_on"] == "cpu"
    assert by_name["hf engine sleeps off its GPU and wakes"]["tokens"][0] > 0  # sleeps and samples again (memory: GPUs only)
    assert "skipped" in by_name["colocated weights over CUDA IPC into an engine in another process"]  # GPU-only
    assert "skipped" in by_name["vllm sleep level 1, wake weights, load, wake kv cache"]
    assert "gradient checkpointing: same loss, less memory" in by_name  # the loss part (memory is measured on GPUs only)
    lora = next(r for r in summary["results"] if "LoRA" in r["check"])
    assert lora["sync_mib"] < lora["full_mib"] and lora["merge_rel_diff"] <= 1e-2
    for result in (r for r in summary["results"] if "moved" in r):  # the training checks
        moved, received = map(int, result["moved"].split("/"))
        assert moved == received > 0 and result["grad_norm"] > 0 and result["s_per_step"] > 0
    assert set(summary["fpa_over_plain"]) == {"dpo", "rpo", "kto", "simper", "offline_rl"}
