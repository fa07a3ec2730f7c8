"""The learner's optimizer step on real gloo groups (no Ray), for every strategy the recipes use.

1. Accumulation and worker invariance: DDP and DeepSpeed ZeRO-1/2/3 take the first step of DDP on
   1 worker x 1 micro-batch, whatever the split into 1 or 2 workers x 1, 2 or 4 accumulation steps
   (down to micro-batches of one row), for FPA-RPO; every other objective, with and without FPA, on
   DDP and ZeRO-3 (every recipe's) at 2 workers x 4 (ZeRO-1/2 shard only the optimizer's state and
   gradients, whatever the objective computed). Adam's first update is about lr * sign(g), so the
   gradient's size is checked through the pre-clip norm.
   Padding-free rows with a token budget, on 2 workers whose rows need different numbers of
   micro-batches (cut to the same count), take that same step too.
2. Gradient checkpointing (DDP, ZeRO-3; padded and padding-free) takes the step taken without it.
3. Under ZeRO-3 the frozen reference is sharded across the workers as the policy is.
4. bf16 keeps fp32 master weights: in 5 steps at lr 5e-7 every entry that received a gradient (RMS
   above AdamW's eps) moved. bf16 weights without a master copy moved 1.2% of them.
5. LoRA: FPA-RPO with adapters, the reference the policy with them off, takes DDP's 1 x 1 step on 2
   workers x 4 under DDP and ZeRO-1/2/3 (and ZeRO-3 with gradient checkpointing); every other objective,
   with and without FPA (and FPA's sequence mode), takes it under ZeRO-3 on 2 x 2 padding-free rows;
   only the adapters move; a run resumed from a checkpoint under ZeRO-2/3 takes the uninterrupted steps.
"""

import pytest
import torch

from tests.helpers.distributed_learner import Case, run_cases, save_random_policy

pytestmark = pytest.mark.slow

LR = 1e-4
SPLITS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]  # (workers, accumulation steps); micro-batch = 8 / both
STRATEGIES = {"ddp": {"strategy": "ddp"}, **{f"zero{z}": {"strategy": "deepspeed", "zero_stage": z} for z in (1, 2, 3)}}
FULL_MATRIX = [("rpo", True)]  # every strategy x every split
EXTREMES = [("kto", True), ("dpo", False), ("dpo", True), ("simper", True), ("kto", False), ("offline_rl", True)]  # 1x1 vs 2x4
EXTREME_STRATEGIES = ("ddp", "zero3")


def _key(objective, fpa, strategy, world, accumulation, precision="fp32"):
    return f"{objective}{'-fpa' if fpa else ''}-{strategy}-w{world}a{accumulation}-{precision}"


def _splits(objective, fpa):
    """(strategy, workers, accumulation steps) of every run an objective's invariance compares."""
    full = (objective, fpa) in FULL_MATRIX
    return [(strategy, world, accumulation) for strategy in (STRATEGIES if full else EXTREME_STRATEGIES)
            for world, accumulation in (SPLITS if full else [(1, 1), (2, 4)])]


def _invariance_cases():
    return [Case(_key(objective, fpa, strategy, world, accumulation), objective, fpa, world, accumulation,
                 {**STRATEGIES[strategy], "lr": LR, "precision": "fp32"})
            for objective, fpa in FULL_MATRIX + EXTREMES for strategy, world, accumulation in _splits(objective, fpa)]


# tokens per micro-batch: with these rows one worker's plan has more micro-batches than the other's (2 and 1, 3 and 2)
PACKED_BUDGET = {"rpo": 84, "kto": 25}
PACKED = [("rpo", True), ("kto", True)]


def _packed_key(objective, fpa, strategy):
    return _key(objective, fpa, strategy, 2, 1, "packed")


def _packed_cases():
    return [Case(_packed_key(objective, fpa, strategy), objective, fpa, 2, 1,
                 {**settings, "lr": LR, "precision": "fp32", "padding_free": True, "micro_batch_tokens": PACKED_BUDGET[objective]})
            for objective, fpa in PACKED for strategy, settings in STRATEGIES.items()]


CHECKPOINTED = ("ddp", "zero3")


def _checkpointed_cases():
    """FPA-RPO with gradient checkpointing, padded (2 workers x 2 micro-batches) and padding-free with a budget."""
    cases = []
    for strategy in CHECKPOINTED:
        settings = {**STRATEGIES[strategy], "lr": LR, "precision": "fp32", "gradient_checkpointing": True}
        cases.append(Case(_key("rpo", True, strategy, 2, 2, "checkpointed"), "rpo", True, 2, 2, settings))
        packed = {**settings, "padding_free": True, "micro_batch_tokens": PACKED_BUDGET["rpo"]}
        cases.append(Case(_packed_key("rpo", True, strategy) + "-checkpointed", "rpo", True, 2, 1, packed))
    return cases


def _bf16_cases():
    return [Case(_key("rpo", True, strategy, 2, 2, "bf16"), "rpo", True, 2, 2, {**settings, "lr": 5e-7, "precision": "bf16"}, steps=5)
            for strategy, settings in STRATEGIES.items()]


LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
LORA_SPLITS = {"ddp-w1a1": ("ddp", 1, 1, False), "ddp-w2a4": ("ddp", 2, 4, False), "zero1-w2a4": ("zero1", 2, 4, False),
               "zero2-w2a4": ("zero2", 2, 4, False),
               "zero3-w2a4": ("zero3", 2, 4, False), "zero3-w2a2-checkpointed": ("zero3", 2, 2, True)}


def _lora_cases():
    return [Case(f"lora-{key}", "rpo", True, world, accumulation,
                 {**STRATEGIES[strategy], "lr": LR, "precision": "fp32", "lora": LORA, "gradient_checkpointing": checkpointed},
                 reference_is_policy=True)
            for key, (strategy, world, accumulation, checkpointed) in LORA_SPLITS.items()]


# Every other objective with and without FPA (and FPA's sequence mode) under LoRA: DDP 1 x 1 against ZeRO-3
# on 2 workers x 2 with padding-free rows, the reference the policy with its adapters off.
LORA_OBJECTIVES = [("dpo", False, "exact"), ("dpo", True, "exact"), ("kto", False, "exact"), ("kto", True, "exact"),
                   ("simper", True, "exact"), ("offline_rl", True, "exact"), ("rpo", False, "exact"), ("rpo", True, "sequence")]


def _lora_objective_key(objective, fpa, mode, split):
    return f"lora-{objective}{'-fpa-' + mode if fpa else ''}-{split}"


def _lora_objective_cases():
    splits = {"ddp-w1a1": ({"strategy": "ddp"}, 1, 1), "zero3-w2a2-packed": ({**STRATEGIES["zero3"], "padding_free": True}, 2, 2)}
    return [Case(_lora_objective_key(objective, fpa, mode, split), objective, fpa, world, accumulation,
                 {**settings, "lr": LR, "precision": "fp32", "lora": LORA}, reference_is_policy=True, fpa_mode=mode)
            for objective, fpa, mode in LORA_OBJECTIVES for split, (settings, world, accumulation) in splits.items()]


def _lora_resume_cases():
    """4 LoRA steps under ZeRO-2 and ZeRO-3 on 2 workers, uninterrupted and checkpointed after 2 then resumed."""
    return [Case(f"lora-resume-{strategy}{'' if at is None else '-at2'}", "rpo", True, 2, 2,
                 {**STRATEGIES[strategy], "lr": LR, "precision": "fp32", "lora": LORA}, steps=4, reference_is_policy=True, resume_at=at)
            for strategy in ("zero2", "zero3") for at in (None, 2)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    policy, reference = save_random_policy(root / "policy"), save_random_policy(root / "reference", sharpen=4.0)
    return run_cases(_invariance_cases() + _packed_cases() + _checkpointed_cases() + _bf16_cases() + _lora_cases() + _lora_objective_cases()
                     + _lora_resume_cases(),
                     policy, reference, root / "results")


def test_a_lora_step_is_the_same_for_every_strategy_and_moves_only_the_adapters(results):
    base = results["lora-ddp-w1a1"]
    assert base["update"] and all("lora_" in name for name in base["update"])  # the optimizer holds the adapters alone
    assert max(u.abs().max() for u in base["update"].values()) > LR / 2 and base["reference_held"] is None  # no reference weights
    for key in LORA_SPLITS:
        result = results[f"lora-{key}"]
        assert result["metrics"][0]["loss"] == pytest.approx(base["metrics"][0]["loss"], rel=1e-6, abs=5e-9), key
        assert result["metrics"][0]["grad_norm"] == pytest.approx(base["metrics"][0]["grad_norm"], rel=1e-5), key
        assert result["update"].keys() == base["update"].keys(), key
        diffs = torch.cat([(result["update"][n] - u).abs().flatten() for n, u in base["update"].items()])
        assert diffs.max() <= LR / 4 and (diffs > 1e-7).float().mean() <= 1e-3, (key, diffs.max())
    assert results["lora-zero3-w2a2-checkpointed"]["checkpointing"]
    # What GRPO's weight sync sends after the step: the adapters alone, whole under every strategy (ZeRO-3 gathers them).
    assert len(base["sent"]) == len(base["update"]) and all(name.endswith((".lora_A", ".lora_B")) for name in base["sent"])
    for key in LORA_SPLITS:
        sent = results[f"lora-{key}"]["sent"]
        assert sent.keys() == base["sent"].keys(), key
        for name, tensor in base["sent"].items():
            assert sent[name].shape == tensor.shape and (sent[name] - tensor).abs().max() <= LR / 4, (key, name)


@pytest.mark.parametrize("objective,fpa,mode", LORA_OBJECTIVES, ids=lambda v: str(v))
def test_every_objective_with_lora_takes_the_same_step_under_zero3_padding_free(results, objective, fpa, mode):
    base, zero = (results[_lora_objective_key(objective, fpa, mode, split)] for split in ("ddp-w1a1", "zero3-w2a2-packed"))
    assert base["update"] and all("lora_" in name for name in base["update"]) and base["reference_held"] is None
    assert max(u.abs().max() for u in base["update"].values()) > LR / 2  # the adapters trained
    assert zero["metrics"][0]["loss"] == pytest.approx(base["metrics"][0]["loss"], rel=1e-6, abs=5e-9)
    assert zero["metrics"][0]["grad_norm"] == pytest.approx(base["metrics"][0]["grad_norm"], rel=1e-5)
    diffs = torch.cat([(zero["update"][n] - u).abs().flatten() for n, u in base["update"].items()])
    assert diffs.max() <= LR / 4 and (diffs > 1e-7).float().mean() <= 1e-3, diffs.max()


@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_a_lora_run_resumed_under_deepspeed_takes_the_uninterrupted_runs_steps(results, strategy):
    clean, resumed = results[f"lora-resume-{strategy}"], results[f"lora-resume-{strategy}-at2"]
    losses = [m["loss"] for m in clean["metrics"]]
    assert len(losses) == 4 and [m["loss"] for m in resumed["metrics"]] == pytest.approx(losses, rel=1e-6)
    assert clean["update"].keys() == resumed["update"].keys() and all("lora_" in name for name in clean["update"])
    for name, update in clean["update"].items():  # the adapters the resumed run ends with: its start's plus its update
        torch.testing.assert_close(resumed["update"][name], update, rtol=0, atol=1e-7, msg=name)
    for name, tensor in clean["sent"].items():
        torch.testing.assert_close(resumed["sent"][name], tensor, rtol=0, atol=1e-7, msg=name)


@pytest.mark.parametrize("objective,fpa", FULL_MATRIX + EXTREMES, ids=lambda v: str(v))
def test_first_step_is_the_same_for_every_strategy_worker_count_and_accumulation(results, objective, fpa):
    base = results[_key(objective, fpa, "ddp", 1, 1)]
    base_metrics, base_update = base["metrics"][0], base["update"]
    assert base_metrics["grad_norm"] > 0 and max(u.abs().max() for u in base_update.values()) > LR / 2  # it trained
    compared = [_key(objective, fpa, strategy, w, a) for strategy, w, a in _splits(objective, fpa)]
    for key in compared:
        metrics, update = results[key]["metrics"][0], results[key]["update"]
        # A loss near 0 (FPA-SimPER, offline RL: ~3e-4) is a difference of terms ~1e3 times larger, whose
        # fp32 summation order moved it by 5e-10 on one CPU: relative 1e-6 alone is below that noise.
        assert metrics["loss"] == pytest.approx(base_metrics["loss"], rel=1e-6, abs=5e-9), key
        assert metrics["grad_norm"] == pytest.approx(base_metrics["grad_norm"], rel=1e-5), key
        assert metrics["num_units"] == 8, key
        if objective == "kto":  # z0 is one estimate over the global batch, not one per micro-batch
            assert base_metrics["kl_reference"] > 0
            assert metrics["kl_reference"] == pytest.approx(base_metrics["kl_reference"], rel=1e-6, abs=1e-9), key
        # AdamW's first update is lr * g / (|g| + eps): where g is ~0 a float-level difference in
        # summation order can swing it by up to lr, so allow a few such entries.
        diffs = torch.cat([(update[name] - base_update[name]).abs().flatten() for name in update])
        assert diffs.max() <= LR / 4 and (diffs > 1e-7).float().mean() <= 1e-3, (key, diffs.max())


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_bf16_training_moves_every_parameter_that_received_a_gradient(results, strategy):
    result = results[_key("rpo", True, strategy, 2, 2, "bf16")]
    received = torch.cat([r.flatten() for r in result["received"].values()])  # RMS gradient above AdamW's eps
    moved = torch.cat([m.flatten() for m in result["moved"].values()])  # at some step: a later step may move it back
    assert received.float().mean() > 0.99  # almost every entry gets a gradient
    assert bool(moved[received].all()), f"{int((~moved[received]).sum())} of {int(received.sum())} entries with a gradient did not move"
    assert all(m["grad_norm"] > 0 for m in result["metrics"])


@pytest.mark.parametrize("objective,fpa", PACKED, ids=lambda v: str(v))
def test_padding_free_rows_with_a_token_budget_take_the_same_step(results, objective, fpa):
    from fpa_ray.learner.data import MicroBatching
    from fpa_ray.learner.offline_loop import example_kind
    from fpa_ray.learner.data import global_order

    from tests.helpers.distributed_learner import GLOBAL_BATCH, examples

    rows, order = examples(example_kind(objective)), global_order(GLOBAL_BATCH, 0, GLOBAL_BATCH, 0)
    plan = MicroBatching(4, PACKED_BUDGET[objective], True).plan
    counts = [len(plan(part, [rows[i].num_tokens for i in part])) for part in (order[:4], order[4:])]
    assert counts[0] != counts[1]  # the workers' own plans differ: one is cut to the other's count
    base = results[_key(objective, fpa, "ddp", 1, 1)]["metrics"][0]
    for strategy in STRATEGIES:
        result = results[_packed_key(objective, fpa, strategy)]
        assert result["metrics"][0]["loss"] == pytest.approx(base["loss"], rel=1e-5), strategy
        assert result["metrics"][0]["grad_norm"] == pytest.approx(base["grad_norm"], rel=1e-4), strategy
        diffs = torch.cat([(result["update"][n] - u).abs().flatten() for n, u in results[_key(objective, fpa, "ddp", 1, 1)]["update"].items()])
        assert diffs.max() <= LR / 4 and (diffs > 1e-7).float().mean() <= 1e-3, (strategy, diffs.max())


@pytest.mark.parametrize("strategy", CHECKPOINTED)
def test_gradient_checkpointing_takes_the_same_step_padded_and_padding_free(results, strategy):
    for plain, checkpointed in ((_key("rpo", True, strategy, 2, 2), _key("rpo", True, strategy, 2, 2, "checkpointed")),
                                (_packed_key("rpo", True, strategy), _packed_key("rpo", True, strategy) + "-checkpointed")):
        base, result = results[plain], results[checkpointed]
        assert result["checkpointing"] and not base["checkpointing"], checkpointed  # the layers recomputed in backward
        assert result["metrics"][0]["loss"] == pytest.approx(base["metrics"][0]["loss"], rel=1e-6), checkpointed
        assert result["metrics"][0]["grad_norm"] == pytest.approx(base["metrics"][0]["grad_norm"], rel=1e-5), checkpointed
        diffs = torch.cat([(result["update"][n] - u).abs().flatten() for n, u in base["update"].items()])
        assert diffs.max() <= LR / 4 and (diffs > 1e-7).float().mean() <= 1e-3, (checkpointed, diffs.max())


def test_under_zero3_the_reference_is_sharded_across_the_workers_not_copied(results):
    for strategy, workers in (("ddp", 2), ("zero2", 2), ("zero3", 2)):
        result = results[_key("rpo", True, strategy, workers, 4)]
        held, total = result["reference_held"], result["reference_total"]
        assert total > 0
        if strategy == "zero3":  # half of it per worker (plus alignment padding), and the same step as DDP's (above)
            assert held <= total / workers * 1.01, (held, total)
        else:
            assert held == total
