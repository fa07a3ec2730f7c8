"""The learner group on a real local Ray cluster: Ray Train workers, DDP and DeepSpeed on CPU.

That a trained checkpoint loads in vLLM is checked wherever a pipeline evaluates one (test_recipes.py:
a ZeRO-3 bf16 checkpoint) or loads it into its samplers (the disk weight sync, probed against the
learner's log-probs to 1e-3: test_online_grpo.py and the DAPO recipe's run)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from fpa_ray.config import FPAConfig, LearnerConfig, ObjectiveConfig
from fpa_ray.learner.data import MicroBatching, collate, global_order, prepare_examples
from fpa_ray.learner.forward import shifted_targets
from fpa_ray.learner.offline_loop import example_kind
from fpa_ray.learner.worker_group import LearnerUnschedulable, TrainStage
from fpa_ray.objectives import get_objective, masked_sum, token_logprobs

from tests.helpers.faults import WorkerKiller
from tests.helpers.offline_rows import labelled_rows, pair_rows

pytestmark = pytest.mark.slow


def _train(ray, rows, policy, out, objective="dpo", fpa=False, dataset=None, **learner):
    config = LearnerConfig(**{"num_workers": 2, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1e-4, "checkpoint_every": 3, **learner})
    stage = TrainStage(config, ObjectiveConfig(name=objective), FPAConfig(enabled=fpa, lam=1.0), seed=0)
    return stage.run(dataset if dataset is not None else ray.data.from_items(rows), policy, policy, out)


def _ray_free(rows, policy, objective, steps, fpa=False):
    """The learner's own optimizer step (train_step) in this process, on one worker with one micro-batch of
    _train's global batch of 8: the steps a Ray Train run takes, without Ray. The reference is the start
    policy, computed online. Returns (examples, the trained model, metrics per step)."""
    from transformers import AutoTokenizer

    from fpa_ray.learner.backends import DDPBackend, load_reference
    from fpa_ray.learner.optimizer_step import train_step

    learner = LearnerConfig(num_workers=1, global_batch_size=8, micro_batch_size=8, lr=1e-4)
    kind = example_kind(objective)
    examples = prepare_examples(rows, kind, learner.max_length).examples
    backend = DDPBackend(learner, str(policy), None, steps, torch.device("cpu"))
    reference = load_reference(str(policy), backend.precision, torch.device("cpu"))
    pad_id = AutoTokenizer.from_pretrained(policy).pad_token_id
    metrics = [train_step(backend, get_objective(objective), {}, reference, examples, global_order(len(examples), step, 8, 0), kind, pad_id,
                          FPAConfig(enabled=fpa, lam=1.0), MicroBatching(8), learner.max_length, False) for step in range(steps)]
    return examples, backend.unwrapped, metrics


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _assert_same_weights(a, b, lr=1e-4):
    """AdamW's first updates are lr * g / (|g| + eps): on entries whose gradient is ~0, a float-level
    difference in summation order can swing the update by up to lr. So: every entry within lr / 4,
    and at most 1 in 10,000 entries off by more than 1e-6."""
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.max() <= lr / 4, diffs.max()
    assert (diffs > 1e-6).float().mean() <= 1e-4


@pytest.fixture(scope="module")
def rows(tiny_policy):
    good = pair_rows(tiny_policy, 24)
    bad = [
        {**good[0], "rejected_token_ids": good[0]["chosen_token_ids"]},  # chosen == rejected
        {**good[1], "chosen_token_ids": []},  # empty response
        {**good[2], "chosen_token_ids": good[2]["chosen_token_ids"] * 40},  # longer than max_length: cut
    ]
    return good + bad


# DDP and ZeRO-3 (every shipped recipe's): ZeRO-1/2's steps are DDP's in test_distributed_step.py, and their
# checkpoints go through the same DeepSpeed save and load as ZeRO-3's.
STRATEGIES = {"ddp": {}, "zero3": {"strategy": "deepspeed", "zero_stage": 3}}


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, rows, tiny_policy, tmp_path_factory):
    """Each strategy's FPA-DPO run of 3 epochs with 2 accumulation steps, start to end (computed once, on first use)."""
    runs = {}

    def run(strategy):
        if strategy not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{strategy}")
            runs[strategy] = _train(ray_cluster, rows, tiny_policy, out, fpa=True, epochs=3, micro_batch_size=2, **STRATEGIES[strategy])
        return runs[strategy]

    return run


@pytest.fixture(scope="module")
def plain_dpo(ray_cluster, rows, tiny_policy, tmp_path_factory):
    """DPO without FPA on the 24 well-formed pairs, 3 epochs, its reference precomputed (learner.reference=precomputed
    on rows without the columns: the train stage adds them in a Ray Data pass of the reference, learner/reference.py,
    and the workers train without a reference model; the loop refuses to start if any row lacked its value);
    the entanglement diagnostic over every parameter on 12 pairs (more than the global batch of 8)."""
    return _train(ray_cluster, rows[:24], tiny_policy, tmp_path_factory.mktemp("plain-dpo"), epochs=3, reference="precomputed",
                  diagnostics_scope="all", diagnostics_rows=12)


@pytest.mark.parametrize("fpa", [False, True], ids=["dpo", "fpa-dpo"])
def test_dpo_and_fpa_dpo_reduce_their_loss(request, uninterrupted, fpa):
    # FPA-DPO: the DDP run the strategy and resume tests compare against (2 accumulation steps), on all rows.
    result = uninterrupted("ddp") if fpa else request.getfixturevalue("plain_dpo")
    run = result.checkpoint.parent
    losses = [m["loss"] for m in result.metrics]
    assert [m["step"] for m in result.metrics] == list(range(1, 10))  # 24 or 25 kept rows // 8 = 3 steps x 3 epochs
    assert losses[-1] < losses[0] - 0.02
    first = result.metrics[0]
    bad = tuple(first.get(f"rows_{rule}", 0) for rule in ("identical_pair", "empty_response", "truncated"))
    assert bad == ((1, 1, 1) if fpa else (0, 0, 0))  # the 3 malformed rows are dropped or cut, and counted
    for key in ("C_w", "C_l", "logp_chosen", "logp_rejected", "reward_margin", "grad_norm", "lr", "tokens_per_s"):
        assert key in first
    # The entanglement diagnostic every learner.diagnostics_every (10) steps, with and without FPA: steps 1 of 9 here.
    assert [m["step"] for m in result.metrics if "grad_cosine" in m] == [1]
    assert -1 <= first["grad_cosine"] <= 1 and first["grad_norm_w"] > 0 and first["grad_norm_l"] > 0
    assert ("grad_cosine_all" in first) == (not fpa) and (fpa or -1 <= first["grad_cosine_all"] <= 1 and first["grad_norm_w_all"] > first["grad_norm_w"])
    assert ("C_l_current" in first) == fpa
    assert (run / "metrics.jsonl").is_file() and any((run / "tensorboard").iterdir())
    assert (result.checkpoint / "model.safetensors").is_file() and (result.checkpoint / "tokenizer.json").is_file()


def test_deepspeed_zero3_with_accumulation_matches_ddp(uninterrupted):
    """Ray Train workers, 2 workers x 2 accumulation steps: ZeRO-3 takes DDP's steps (the DeepSpeed engine never enters no_sync)."""
    ddp, zero = uninterrupted("ddp"), uninterrupted("zero3")
    assert [m["loss"] for m in zero.metrics] == pytest.approx([m["loss"] for m in ddp.metrics], rel=1e-5)
    assert [m["grad_norm"] for m in zero.metrics] == pytest.approx([m["grad_norm"] for m in ddp.metrics], rel=1e-4)
    _assert_same_weights(_weights(ddp.checkpoint), _weights(zero.checkpoint))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_killed_worker_resumes_from_its_checkpoint_to_the_same_weights(ray_cluster, rows, tiny_policy, tmp_path, uninterrupted, strategy):
    clean = uninterrupted(strategy)
    out = tmp_path / "killed"
    with WorkerKiller(out / "ray_train" / "train", "checkpoint_*") as killer:
        resumed = _train(ray_cluster, rows, tiny_policy, out, fpa=True, epochs=3, micro_batch_size=2, **STRATEGIES[strategy])
    assert killer.killed, "the run ended before a worker could be killed"
    assert [m["step"] for m in resumed.metrics] == list(range(1, 10))  # each step logged once
    a, b = _weights(clean.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [m["loss"] for m in resumed.metrics] == pytest.approx([m["loss"] for m in clean.metrics], rel=1e-6)


def test_precomputed_reference_trains_like_the_online_one(rows, tiny_policy, plain_dpo):
    """The precomputed run's 9 steps are those of the learner's step with the reference computed online, without Ray."""
    _, _, online = _ray_free(rows[:24], tiny_policy, "dpo", steps=9)
    assert [m["loss"] for m in plain_dpo.metrics] == pytest.approx([m["loss"] for m in online], rel=1e-5)
    assert [m["reward_margin"] for m in plain_dpo.metrics] == pytest.approx([m["reward_margin"] for m in online], rel=1e-4, abs=1e-6)


def _mean_logp(model, examples, label):
    batch, _ = collate([e for e in examples if e.label is label], "labelled", 0)
    labels, mask = shifted_targets(batch)
    with torch.no_grad():
        logits = model.eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float((masked_sum(token_logprobs(logits, labels, mask), mask) / mask.sum(-1)).mean())


def test_labelled_objectives_train_correct_samples_up_and_incorrect_ones_down(ray_cluster, tiny_policy, tmp_path):
    """KTO on Ray Train workers: its first step is the Ray-free train_step's on the same batch, and after 3 epochs
    the policy puts more log-probability on the correct completions and less on the incorrect ones. The other
    labelled objective, offline RL, moves them so in the same 6 steps without Ray (its Ray Train runs are the
    offline_rl recipe's, test_recipes.py)."""
    rows = labelled_rows(tiny_policy, 16)
    result = _train(ray_cluster, rows, tiny_policy, tmp_path / "kto", objective="kto", fpa=True, epochs=3)
    assert len(result.metrics) == 6 and {"C_w", "C_l", "C_l_current", "kl_reference"} <= result.metrics[0].keys()
    examples, _, (first,) = _ray_free(rows, tiny_policy, "kto", steps=1, fpa=True)
    for key in ("loss", "grad_norm", "C_w", "C_l", "logp_chosen", "logp_rejected", "kl_reference"):
        assert result.metrics[0][key] == pytest.approx(first[key], rel=1e-5), key
    start = AutoModelForCausalLM.from_pretrained(tiny_policy)
    trained = {"kto": AutoModelForCausalLM.from_pretrained(result.checkpoint), "offline_rl": _ray_free(rows, tiny_policy, "offline_rl", 6, fpa=True)[1]}
    for objective, model in trained.items():
        assert _mean_logp(model, examples, True) > _mean_logp(start, examples, True), objective
        assert _mean_logp(model, examples, False) < _mean_logp(start, examples, False), objective


def test_a_learner_whose_workers_fit_no_node_fails_saying_what_they_ask_and_what_the_nodes_offer(ray_cluster, rows, tiny_policy, tmp_path):
    """The group's start waits learner.start_timeout_s for its resources (a lost node's replacement); after
    max_failures + 1 starts the run stops with LearnerUnschedulable (the 4-node test loses a learner's node)."""
    with pytest.raises(LearnerUnschedulable) as raised:
        _train(ray_cluster, rows, tiny_policy, tmp_path / "unplaced", resources={"learner_node": 1}, start_timeout_s=2, max_failures=1)
    message = str(raised.value)
    assert "did not start within learner.start_timeout_s=2 s in 2 tries" in message and "room for 0 such workers" in message
    assert "'learner_node': 1" in message and "'CPU'" in message and "rerun the same command" in message
    assert not list((tmp_path / "unplaced").rglob("checkpoint_*"))
