"""The SFT warm start at a toy size: it trains, evaluates, saves and is reused from the cache."""

import json
import math
import os

import torch
from transformers import AutoModelForCausalLM

from fpa_ray.data.synthetic import SyntheticTaskConfig
from fpa_ray.tiny import TinyModelConfig
from fpa_ray.warmstart import SFTConfig, cache_key, warm_start

SFT = SFTConfig(
    steps=60, batch_size=16, warmup_steps=10, train_problems=400, tokenizer_problems=400,
    eval_problems=8, eval_samples=2, max_new_tokens=40,
)


def test_warm_start_trains_once_then_reuses_the_cache(tmp_path):
    logs: list[str] = []
    threads: set[int] = set()

    def log(line):  # called from inside the SFT loop
        logs.append(line)
        threads.add(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as a `ray job submit` driver starts (OMP_NUM_THREADS=1 from Ray's job supervisor)
    try:
        first = warm_start(TinyModelConfig(), SFT, SyntheticTaskConfig(), seed=0, cache_dir=tmp_path, log=log)
        assert threads == {os.cpu_count()} and torch.get_num_threads() == 1  # the machine it is charged for, then restored
    finally:
        torch.set_num_threads(before)
    assert not first.cached and first.path.is_dir() and first.path.parent == tmp_path / "tiny-policy"
    assert first.final_loss < math.log(TinyModelConfig().tokenizer_vocab) - 1  # learned beyond uniform guessing
    assert 0.0 <= first.pass_at_1 <= 1.0 and 0.0 <= first.greedy_accuracy <= 1.0
    assert any("sft step 60/60" in line for line in logs)
    saved = json.loads((first.path / "warmstart_settings.json").read_text())
    assert saved["sft"]["steps"] == 60
    AutoModelForCausalLM.from_pretrained(first.path)
    assert not list((tmp_path / "tiny-policy").glob("*.partial"))

    logs.clear()
    again = warm_start(TinyModelConfig(), SFT, SyntheticTaskConfig(), seed=0, cache_dir=tmp_path, log=logs.append)
    assert again.cached and again.path == first.path and again.pass_at_1 == first.pass_at_1
    assert logs == []  # nothing retrained


def test_cache_key_follows_every_setting():
    base = cache_key(TinyModelConfig(), SFT, SyntheticTaskConfig(), 0)
    assert base == cache_key(TinyModelConfig(), SFT, SyntheticTaskConfig(), 0)
    assert base != cache_key(TinyModelConfig(), SFT, SyntheticTaskConfig(), 1)
    assert base != cache_key(TinyModelConfig(hidden_size=64), SFT, SyntheticTaskConfig(), 0)
    assert base != cache_key(TinyModelConfig(), SFT.model_copy(update={"lr": 1e-3}), SyntheticTaskConfig(), 0)
    assert base != cache_key(TinyModelConfig(), SFT, SyntheticTaskConfig(fractions=True), 0)
