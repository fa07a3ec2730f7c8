"""The online GRPO baseline on the session's real local Ray cluster: rollouts, refresh, a whole run, compare."""

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch

from fpa_ray.config import load_config
from fpa_ray.data.sources import load_prompts
from fpa_ray.main import main
from fpa_ray.pipelines.offline import OfflinePipeline
from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline, RolloutController
from fpa_ray.sampler.refresh import learner_logprobs
from tests.integration.small_run import overrides

pytestmark = pytest.mark.slow

GRPO_SMALL = [  # an easier task and a longer warm start (46 s): ~7% pass@1, so some groups mix right and wrong
    "policy.sft.steps=400", "data.synthetic={min_steps: 1, max_steps: 2, operand_max: 30, multiplier_max: 5}", "data.train.limit=32", "sampler.n=8", "grpo.prompts_per_step=8", "grpo.steps=3", "grpo.eval_every=2",
    "learner.global_batch_size=32", "learner.micro_batch_size=8", "learner.checkpoint_every=2", "learner.lr=1e-4",
]


def _perturbed_copy(policy: Path, destination: Path) -> Path:
    """The policy with noise on every weight: a 'next policy' the samplers must pick up."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(destination)
    AutoTokenizer.from_pretrained(policy).save_pretrained(destination)
    return destination


def test_rollout_advantages_and_a_refresh_round_trip_on_the_real_pools(ray_cluster, tiny_policy, tmp_path):
    config = load_config("tiny-cpu-grpo", [f"output_dir={tmp_path}", "sampler.n=4", "grpo.prompts_per_step=6", "learner.global_batch_size=8", "learner.micro_batch_size=4",
                                           "sampler.max_new_tokens=48", "verifier.max_failure_share=1.0"])  # the noisy policy babbles
    prompts = load_prompts(config.data.train, config.data.synthetic, config.seed).rows[:24]
    controller = ray_cluster.remote(RolloutController).remote(config, str(tiny_policy), prompts, str(tmp_path))

    rollout = ray_cluster.get(controller.rollout.remote(0))
    table = pd.read_parquet(tmp_path / "online" / "rollouts" / "step-00000.parquet")
    assert len(table) == len(rollout["advantages"]) == 6 * 4
    assert set(table["status"]) <= {"correct", "incorrect", "unparseable"} and table["response"].str.len().gt(0).all()
    # Advantages: each prompt's 4 samples are consecutive; (r - group mean) / (group std + 1e-6), recomputed here.
    for (_, group), start in zip(table.groupby("prompt_id", sort=False), range(0, 24, 4)):
        assert list(group.index) == list(range(start, start + 4)) and sorted(group["sample_index"]) == [0, 1, 2, 3]
        rewards = group["reward"].to_numpy()
        expected = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
        assert rollout["advantages"][start : start + 4] == pytest.approx(expected.tolist(), abs=1e-5)
    assert rollout["stats"]["reward_mean"] == pytest.approx(table["reward"].mean())

    # Refresh to another policy: the probe passes, and the next rollout is sampled from the new weights,
    # even when the sampler actor is killed before it: the pool restarts on the latest weights.
    new_policy = _perturbed_copy(tiny_policy, tmp_path / "next")
    gap = ray_cluster.get(controller.refresh.remote(str(new_policy), 1))
    assert gap is not None and gap < 1e-3
    ray_cluster.kill(ray_cluster.get_actor(f"{config.name}-sampler-0"))
    ray_cluster.get(controller.rollout.remote(1))
    after = pd.read_parquet(tmp_path / "online" / "rollouts" / "step-00001.parquet").iloc[0]
    prompt, response = list(after["prompt_token_ids"]), list(after["response_token_ids"])
    sampled = after["response_logprobs"]  # T=1, top_p=1: the sampling distribution is the model's
    assert max(abs(a - b) for a, b in zip(sampled, learner_logprobs(new_policy, prompt, response))) < 1e-3
    assert max(abs(a - b) for a, b in zip(sampled, learner_logprobs(tiny_policy, prompt, response))) > 1e-2

    ray_cluster.get(controller.finish.remote())
    ledger = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    # Each phase is charged from the end of the one before (here the test's own pause counts as training).
    assert [e["stage"] for e in ledger] == ["grpo_startup", "grpo_generate", "grpo_verify", "grpo_sync",
                                            "grpo_train", "grpo_generate", "grpo_verify", "grpo_shutdown"]
    assert all(e["cpus"] == 4 for e in ledger)  # what the loop holds: 1 sampler + 1 verifier + 2 learner CPUs
    ray_cluster.kill(controller)


def test_a_grpo_run_then_compare_with_an_offline_run(ray_cluster, tmp_path, cache, capsys):
    config = load_config("tiny-cpu-grpo", overrides(tmp_path, name="grpo-small", extra=GRPO_SMALL))
    report = OnlineGRPOPipeline(config, log=print).run()
    run = report.parent
    assert "| step 2 |" in report.read_text() and "| step 3 |" in report.read_text()

    metrics = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and [m["rollout_step"] for m in metrics] == [1, 1, 2, 2, 3, 3]
    # 64 samples per rollout, 32 per optimizer step: the first update of each rollout starts on-policy
    # (the recomputed log-probs of the sampling policy equal the learner's), the second does not.
    assert any(m["grad_norm"] > 0 for m in metrics[0::2]), "no rollout had a group with both right and wrong answers"
    for first, second in zip(metrics[0::2], metrics[1::2]):
        assert first["ratio"] == pytest.approx(1.0, abs=1e-5) and first["clip_fraction"] == 0
        if first["grad_norm"] > 0:  # a rollout whose groups all tie has no gradient, and the policy stays put
            assert second["ratio"] != pytest.approx(1.0, abs=1e-7)

    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    loop = sorted((e for e in ledger if e["stage"].startswith("grpo_")), key=lambda e: e["start"])
    assert loop[0]["stage"] == "grpo_startup" and loop[-1]["stage"] == "grpo_shutdown"
    for before, after in zip(loop, loop[1:]):  # phases tile the loop: no second goes uncharged
        assert after["start"] == pytest.approx(before["end"], abs=1e-6)
    for step in range(3):
        assert {e["stage"] for e in loop if e["round"] == step} >= {"grpo_generate", "grpo_verify", "grpo_train"}
        assert any(e["stage"] == "grpo_sync" and e["round"] == step + 1 for e in loop)
    assert all(e["cpus"] == 4 and e["gpus"] == 0 for e in loop)  # 1 sampler + 1 verifier + 2 learner CPUs, held throughout

    curve = json.loads((run / "curve.json").read_text())
    assert [p["point"] for p in curve["points"]] == ["start", "step 2", "step 3"]
    hours = [p["cpu_hours"] for p in curve["points"]]
    assert hours[0] == 0 < hours[1] < hours[2] <= sum(e["cpu_seconds"] for e in loop) / 3600
    assert (run / "online" / "snapshots" / "step_2" / "config.json").exists()

    offline = OfflinePipeline(load_config("tiny-cpu", overrides(tmp_path, name="offline-small")), log=print).run().parent
    capsys.readouterr()
    out = tmp_path / "compare"
    assert main(["compare", str(run), str(offline), "--out", str(out), "--target", "0"]) == 0
    table = (out / "compare.md").read_text()
    for name, directory in (("grpo-small", run), ("offline-small", offline)):
        final = json.loads((directory / "curve.json").read_text())["points"][-1]
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"{final['pass_at_1']:.1%}" in row and f"{final['cpu_hours']:.4f}" in row
        assert row.endswith("| 0.0000 |")  # target 0% is reached at the start, before any training
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (840, 540)
