"""One typed config per run: pydantic models (unknown keys are errors), YAML files, key=value overrides.

    config = load_config("tiny-cpu", ["objective.name=rpo", "fpa.lam=2"])

Values in overrides are parsed as YAML scalars, so `fpa.enabled=true` is a bool and `fpa.lam=2` a number.
Sections grow as the stages land; every section forbids unknown keys.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, create_model, model_validator

from fpa_ray.data.schemas import SOURCE_NAMES
from fpa_ray.data.templates import TEMPLATES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "tiny-cpu"


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names every bad key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FPAConfig(StrictModel):
    """Future Policy Approximation (docs/method.md sections 3-4)."""

    enabled: bool = False
    lam: float = Field(1.0, ge=0, allow_inf_nan=False, description="extrapolation strength lambda")
    mode: Literal["exact", "sequence"] = "exact"
    apply_to: Literal["both", "rejected", "chosen"] = "both"
    chunk_size: PositiveInt | None = Field(None, description="positions per log-prob chunk; None: about 2M logits per chunk")


def get_objective(name: str):
    """The registered objective `name`. The registry is imported on first use, not with this module: it
    imports torch, which the verifier pool's actors (they unpickle a VerifierConfig) never need."""
    from fpa_ray.objectives import get_objective as registered

    return registered(name)


def objective_names() -> list[str]:
    from fpa_ray.objectives import objective_names as registered

    return registered()


def objective_params_model(name: str) -> type[BaseModel]:
    """A strict pydantic model of an objective's hyperparameters, built from its function signature."""
    objective = get_objective(name)
    hints = typing.get_type_hints(objective.unit_loss)
    fields = {p.name: (hints.get(p.name, Any), p.default) for p in objective.params.values()}
    return create_model(f"{name}_params", __config__=ConfigDict(extra="forbid"), **fields)


class ObjectiveConfig(StrictModel):
    name: str = "dpo"
    params: dict[str, Any] = Field(default_factory=dict, description="the objective's hyperparameters")

    @model_validator(mode="after")
    def _check_params(self) -> ObjectiveConfig:
        if self.name not in objective_names():
            raise ValueError(f"unknown objective {self.name!r}; registered: {', '.join(objective_names())}")
        model = objective_params_model(self.name)
        unknown = sorted(set(self.params) - set(model.model_fields))
        if unknown:
            raise ValueError(
                f"params.{unknown[0]}: not a parameter of objective {self.name!r} (it accepts {sorted(model.model_fields)};"
                " objective.params={} resets them when switching objective)"
            )
        try:
            validated = model(**self.params).model_dump()
        except ValidationError as error:
            first = error.errors()[0]
            raise ValueError(f"params.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if validated != self.params:  # fill defaults so the saved config shows every value used
            object.__setattr__(self, "params", validated)
        return self


class SyntheticTaskConfig(StrictModel):
    """Difficulty knobs of the arithmetic task (defaults measured to suit the tiny model)."""

    min_steps: int = Field(2, ge=1)
    max_steps: int = Field(3, ge=1)
    operand_max: int = Field(99, ge=2, description="largest start value and +/- operand")
    multiplier_max: int = Field(19, ge=2, description="largest * operand")
    value_max: int = Field(9999, ge=10, description="problems whose running value exceeds this are rejected")
    fractions: bool = Field(False, description="allow 'divide by k' steps whose results may be fractions")
    divisor_max: int = Field(9, ge=2)
    test_percent: float = Field(1.0, gt=0, lt=50, description="share of the problem space held out from train: dev and test")
    dev_percent: float = Field(0.5, ge=0, description="of test_percent, the share that is the dev split (choices are made on it)")

    @model_validator(mode="after")
    def _steps_ordered(self) -> SyntheticTaskConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) exceeds max_steps ({self.max_steps})")
        if self.dev_percent >= self.test_percent:
            raise ValueError(f"dev_percent ({self.dev_percent}) must be below test_percent ({self.test_percent}): it is carved out of it")
        return self


class TinyModelConfig(StrictModel):
    """The embedded default's policy: 0.8M parameters, trained from scratch on CPU in minutes."""

    hidden_size: int = 128
    num_layers: int = 4
    head_dim: int = Field(32, ge=32)
    num_kv_heads: int = 2
    intermediate_size: int = 352
    tokenizer_vocab: int = Field(384, ge=260, description="BPE vocabulary target (256 bytes + specials + merges)")
    max_position_embeddings: int = 512


class SFTConfig(StrictModel):
    """Supervised warm start (defaults measured on the 2-core CPU: see the README)."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    train_problems: int = Field(50_000, ge=1)
    tokenizer_problems: int = Field(5_000, ge=1, description="problems the BPE tokenizer is trained on")
    eval_problems: int = Field(300, ge=1)
    eval_samples: int = Field(4, ge=1, description="samples per problem for pass@1 at eval_temperature")
    eval_temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(64, ge=1)


class PromptSourceConfig(StrictModel):
    """Where prompts come from: `name` is a schema (or `synthetic`), `path` a local file or Hub id.

    As an evaluation benchmark it may also set its own label, prompt template and token budget.
    """

    name: str = "synthetic"
    path: str | None = Field(None, description="local .jsonl/.parquet, or a Hub dataset id replacing the default")
    split: str | None = None
    limit: int | None = Field(None, ge=1, description="first N rows")
    skip_invalid: bool = Field(False, description="skip and count malformed rows instead of failing")
    label: str | None = Field(None, description="benchmark name in reports and --benchmarks (default: name), e.g. math_perturb_hard")
    template: str | None = Field(None, description="prompt template for this benchmark (default: data.template)")
    max_new_tokens: int | None = Field(None, ge=1, description="evaluation token budget for this benchmark (default: evaluation.max_new_tokens)")

    @property
    def benchmark(self) -> str:
        return self.label or self.name


def _placement(what: str, example: str):
    return Field(default_factory=dict, description=f"custom Ray resources each {what} asks for besides CPUs/GPUs, e.g. {{{example}: 1}}: "
                 "it then runs only on nodes started with them (`ray start --resources`, a KubeRay worker group's rayStartParams), "
                 "which keeps each pool on nodes of its own")


class SamplerConfig(StrictModel):
    """The sampler pool: N sampled responses per prompt from a policy checkpoint."""

    engine: Literal["vllm", "hf", "auto"] = Field("auto", description="auto: vLLM when it imports, else transformers")
    n: int = Field(8, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    logprobs_mode: Literal["processed", "raw"] = Field(
        "processed", description="log-probs of the sampling distribution (after temperature/top-p) or of the raw model"
    )
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1, gt=0)
    gpus_per_actor: float = Field(0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    resources: dict[str, float] = _placement("sampler actor", "sampler_node")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(512, ge=16)
    max_num_seqs: int = Field(256, ge=1)
    kv_cache_gb: float = Field(1.0, gt=0, description="vLLM-CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    shard_size: int = Field(64, ge=1, description="prompts per output shard (the unit of restart)")
    max_failures: int = Field(2, ge=0, description="reruns of a generate stage, each from its written shards, after a node is lost "
                              "mid-stage (Ray Data replaces the pool's own actors, not every task of its pipeline)")

    @model_validator(mode="after")
    def _engine_holds_its_tensor_parallel_gpus(self) -> SamplerConfig:
        # vLLM places one tensor-parallel rank per visible GPU and refuses to start otherwise; fail here, not in every actor.
        tp = self.tensor_parallel_size
        if tp > 1 and self.gpus_per_actor != tp:
            raise ValueError(f"tensor_parallel_size={tp} shards each engine over {tp} GPUs of its actor: set gpus_per_actor={tp} "
                             f"(got {self.gpus_per_actor:g})")
        return self


class LoRAConfig(StrictModel):
    """Low-rank adapters (PEFT LoRA) on the policy: only they train; a reference that is the starting policy is the
    policy with its adapters off (no second model). Limited to what vLLM's LoRA loader reads too: linear
    target modules, no bias, nothing else trained."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0, description="the adapters' scale is alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names (e.g. [q_proj, k_proj, v_proj, o_proj]), or every linear layer but the LM head"
    )


class LearnerConfig(StrictModel):
    """The learner group: Ray Train workers running the objective with DDP or DeepSpeed ZeRO."""

    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[1, 2, 3] = 2
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0)
    resources: dict[str, float] = _placement("learner worker", "learner_node")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPUs that support it, else fp32")
    global_batch_size: int = Field(16, ge=1, description="pairs (or labelled samples) per optimizer step, all workers")
    micro_batch_size: int = Field(8, ge=1, description="pairs (or samples) per forward pass on one worker, at most")
    padding_free: bool = Field(False, description="pack each forward pass's sequences several to a row, no wider than the "
                               "longest, positions restarting per sequence (as TRL's padding_free, verl's remove_padding); "
                               "attention stays within each sequence (SDPA with a block-diagonal mask)")
    micro_batch_tokens: int | None = Field(None, ge=1, description="padding_free only: at most this many prompt + response "
                                           "tokens per forward pass (a pair longer than that alone); every worker then runs "
                                           "the same number of forward passes, the most any of them needs")
    gradient_checkpointing: bool = Field(False, description="recompute each decoder layer's activations in the backward pass "
                                         "instead of keeping them (one layer's input per token kept): activation memory from "
                                         "~layers x to ~1 x a layer's, for about a third more compute per step")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0)
    max_length: int = Field(512, ge=8, description="prompt + response tokens; longer responses are truncated (counted)")
    reference: Literal["auto", "online", "precomputed"] = Field(
        "auto", description="reference log-probs: precomputed columns when present and usable, else a frozen model in each worker"
    )
    checkpoint_every: int = Field(50, ge=1)
    snapshot_every: int | None = Field(None, ge=1, description="also keep the policy every this many steps (evaluated by the pipeline)")
    diagnostics_every: int | None = Field(10, ge=1, description="log cos(g_w, g_l) and |g_w|, |g_l| every this many steps (first step "
                                          "included), on the same rows every time (learner/entanglement.py); null: never")
    diagnostics_rows: int = Field(4, ge=1, description="the diagnostic's pairs (or correct and incorrect samples), from the first rows "
                                  "of the first epoch's order")
    diagnostics_scope: Literal["head", "all"] = Field("head", description="the diagnostic's parameters: the LM head, or also every "
                                                      "parameter of the model (DDP only)")
    lora: LoRAConfig | None = Field(None, description="train low-rank adapters instead of every weight; null: full fine-tuning")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint (and, apart, start attempts that timed out)")
    start_timeout_s: float = Field(300.0, gt=0, description="how long one start of the worker group may wait for its resources (a lost "
                                   "node's replacement, an autoscaler's new node) before it counts as failed; once max_failures + 1 "
                                   "starts have timed out the run fails, naming what the nodes lack")

    @model_validator(mode="after")
    def _batches_divide(self) -> LearnerConfig:
        if self.micro_batch_tokens is not None and not self.padding_free:
            raise ValueError("micro_batch_tokens bounds a padding-free row: set padding_free=true with it")
        if self.diagnostics_scope == "all" and self.strategy != "ddp":
            raise ValueError("diagnostics_scope=all copies the whole model onto every worker: with strategy=deepspeed no rank holds it; use "
                             "diagnostics_scope=head")
        per_step = self.num_workers * self.micro_batch_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of num_workers x micro_batch_size ({per_step})"
            )
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.global_batch_size // (self.num_workers * self.micro_batch_size)


class VerifierConfig(StrictModel):
    """The verifier pool: rule-based grading with a hard time limit per check."""

    grader: Literal["math_verify", "normalized"] = "math_verify"
    cross_grader: Literal["math_verify", "normalized"] | None = Field(None, description="second grader, for evaluation")
    num_actors: int = Field(2, ge=1)
    workers_per_actor: int = Field(1, ge=1, description="grading processes (and CPUs) per actor; each pool keeps one spare process besides")
    resources: dict[str, float] = _placement("verifier actor", "verifier_node")
    timeout_s: float = Field(5.0, gt=0, description="hard limit per check; the process running it is killed")
    memory_limit_mb: int | None = Field(2048, ge=256, description="address-space limit of a grading process")
    batch_size: int = Field(256, ge=1)
    max_failure_share: float = Field(0.5, ge=0, le=1, description="fail the run above this unparseable+timeout+error share")
    max_failures: int = Field(2, ge=0, description="reruns of a verify stage after a node is lost mid-stage (nothing is written "
                              "before a stage has graded everything)")


class BuildConfig(StrictModel):
    """From verified samples to training rows (docs/method.md section 6)."""

    pairs_per_prompt: int = Field(4, ge=1, description="cap on correct-over-incorrect pairs per prompt (seeded choice)")
    rejected_cut: Literal["none", "divergence"] = Field(
        "none", description="divergence: cut the rejected response a few tokens after it departs from the chosen one (first wrong step)"
    )
    divergence_tokens: int = Field(4, ge=1, description="rejected tokens kept from the first one that differs from the chosen response")


class EvalConfig(StrictModel):
    """pass@1 averaged over k samples per problem, and Total Gain / Total Loss against round 0."""

    samples: int = Field(8, ge=1, description="k samples per problem")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1, description="per benchmark: data.eval[i].max_new_tokens")
    engine: Literal["vllm", "hf", "auto"] = Field(
        "auto", description="its own setting, not the sampler's: runs that sample differently are still scored by the same engine and seeds"
    )
    solved_threshold: float = Field(0.5, gt=0, le=1, description="a problem counts as solved at this pass@1 or above")


class GRPOConfig(StrictModel):
    """The online baseline (objective `grpo`); the group size G is sampler.n."""

    steps: int = Field(50, ge=1, description="rollout steps: sample, verify, update, refresh the samplers")
    layout: Literal["split", "split-async", "colocated"] = Field(
        "split",
        description="how sampling and training share the cluster: `split`, samplers and learners on devices of their own, each "
        "waiting for the other (synchronous, on-policy); `split-async`, the same pools, the rollouts of the next max_staleness steps "
        "sampled while this step trains (one step off with max_staleness 1), corrected by truncated importance sampling; "
        "`colocated`, one engine per learner worker on the worker's own device (its placement-group bundle), taking turns: the "
        "engine sleeps while the learner trains and takes the new weights on the device (weight_sync=same_device)",
    )
    max_staleness: int = Field(1, ge=1, description="split-async: a rollout is sampled by weights at most this many updates old")
    tis_cap: float = Field(
        2.0, gt=0, description="split-async: truncated importance sampling, each token's loss weighted by min(pi_old / pi_sampler, "
        "tis_cap): pi_old the learner's policy before the step's first update, pi_sampler the stale policy that sampled it",
    )
    prompts_per_step: int = Field(32, ge=1, description="prompts per rollout (each sampled sampler.n times)")
    eval_every: int = Field(10, ge=1, description="keep the policy every this many steps; each is evaluated after training")
    weight_sync: Literal["collective", "object_store", "disk", "same_device"] = Field(
        "collective",
        description="how new weights reach the live samplers, loaded in place: broadcast by the learner's rank 0 over a collective "
        "group with every sampler worker (NCCL on GPUs, gloo on CPU), the full tensors through the Ray object store, a weights "
        "directory that each sampler reads (the fallback), or (layout colocated, and only there) each learner worker's tensors to "
        "the engine on its own device: CUDA IPC handles on GPUs, the node's shared-memory object store on CPU",
    )
    sync_join_timeout_s: float = Field(120.0, gt=0, description="collective sync: how long the learner's rank 0 and the samplers "
                                       "wait for each other to open a weight group; a sampler lost meanwhile (its node gone) ends "
                                       "the wait, the pools restart and the learner opens a new group")
    sync_timeout_s: float = Field(600.0, gt=0, description="collective sync: how long every rank waits for each tensor, and the "
                                  "rollout controller for every sampler to finish receiving; a peer that died or stopped answering then "
                                  "fails the sync instead of blocking it: the group is aborted, the pools restart and the learner sends again")
    refresh_probe: bool = Field(True, description="after each sync, check one sampler's log-probs against the learner's")
    probe_tolerance: float = Field(1e-3, gt=0, description="largest allowed log-prob gap of the sync probe")
    # DAPO (Yu et al. 2025); its clip-higher is objective.params.clip_eps_high, its token-level loss is GRPO's here.
    dynamic_sampling: bool = Field(
        False,
        description="DAPO's dynamic sampling: drop groups whose samples are all correct or all wrong (zero advantage) and sample "
        "further batches of prompts_per_step prompts until prompts_per_step informative groups are left; the extra samples are "
        "generated, verified and charged like the rest",
    )
    max_sampling_batches: int = Field(
        4, ge=1, description="with dynamic_sampling: at most this many batches per step; still short of prompts_per_step informative groups, the run stops"
    )
    overlong_buffer: int | None = Field(
        None, ge=1,
        description="DAPO's soft overlong punishment: a response longer than sampler.max_new_tokens - overlong_buffer tokens loses "
        "reward linearly, down to -1 at sampler.max_new_tokens (None: off)",
    )


class PolicyConfig(StrictModel):
    """The policy to train. The embedded default builds the tiny model locally and warm-starts it."""

    name_or_path: str = Field("tiny", description="'tiny' (built here), a local model directory or a Hugging Face Hub id")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)


class DataConfig(StrictModel):
    """Training prompts, evaluation benchmarks and how a problem becomes a prompt."""

    synthetic: SyntheticTaskConfig = Field(default_factory=SyntheticTaskConfig)
    train: PromptSourceConfig = Field(default_factory=lambda: PromptSourceConfig(name="synthetic", split="train", limit=500))
    eval: list[PromptSourceConfig] = Field(default_factory=lambda: [PromptSourceConfig(name="synthetic", split="test", limit=500)])
    template: str = "tiny-chat"

    @model_validator(mode="after")
    def _known_names(self) -> DataConfig:
        for index, source in enumerate([self.train, *self.eval]):
            where = "train" if index == 0 else f"eval.{index - 1}"
            if source.name not in SOURCE_NAMES:
                raise ValueError(f"{where}.name: unknown prompt source {source.name!r}; known: {', '.join(SOURCE_NAMES)}")
            if source.template is not None and source.template not in TEMPLATES:
                raise ValueError(f"{where}.template: unknown prompt template {source.template!r}; known: {', '.join(sorted(TEMPLATES))}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template: unknown prompt template {self.template!r}; known: {', '.join(sorted(TEMPLATES))}")
        labels = [source.benchmark for source in self.eval]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"eval: benchmark {repeated[0]!r} is listed twice; give each entry its own label")
        return self


class TrackingConfig(StrictModel):
    """Experiment trackers for the learner's metrics, the evaluation curve and the ledger (fpa_ray/tracking.py)."""

    trackers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"], description="tensorboard (in each stage's directory), mlflow, wandb (the tracking extra)")
    project: str = Field("fpa_ray", description="the MLflow experiment and the W&B project")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; null: a file store <output_dir>/mlruns")
    wandb_mode: Literal["online", "offline"] = Field("online", description="W&B: online needs WANDB_API_KEY; offline writes "
                                                     "<output_dir>/wandb, uploaded later with `wandb sync`")


class RunConfig(StrictModel):
    name: str = Field("tiny-cpu", description="run name; the run directory is <output_dir>/<name>")
    seed: int = 0
    output_dir: Path = Path("runs")
    fit_check: Literal["fail", "warn"] = Field(
        "fail", description="before any stage, check that every pool fits the cluster's nodes: fail naming the pool, or only warn "
        "(a cluster that autoscales adds its nodes on demand)")
    rounds: int = Field(1, ge=1, description="regenerate -> verify -> build -> train rounds")
    rounds_patience: int | None = Field(
        None, ge=1,
        description="stop before `rounds` once the first data.eval benchmark's pass@1 (put the dev split first) has not beaten its "
        "best, the start's included, for this many rounds; None: run every round",
    )
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    build: BuildConfig = Field(default_factory=BuildConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    fpa: FPAConfig = Field(default_factory=FPAConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _fpa_needs_a_sequence_objective(self) -> RunConfig:
        if self.fpa.enabled and not get_objective(self.objective.name).supports_fpa:
            raise ValueError(f"fpa.enabled: objective {self.objective.name!r} has no policy-dependent coefficients to move")
        return self

    @model_validator(mode="after")
    def _kto_needs_two_rows_per_step(self) -> RunConfig:
        if get_objective(self.objective.name).needs_kl_reference and self.learner.global_batch_size < 2:
            raise ValueError("learner.global_batch_size: KTO's z0 pairs each prompt with another row's response and needs at least 2 rows per step")
        return self

    @model_validator(mode="after")
    def _grpo_batches_divide(self) -> RunConfig:
        if self.objective.name != "grpo":
            return self
        if self.sampler.n < 2:
            raise ValueError(f"sampler.n: GRPO normalises rewards within a group of samples and needs at least 2, got {self.sampler.n}")
        if self.grpo.overlong_buffer is not None and self.grpo.overlong_buffer >= self.sampler.max_new_tokens:
            raise ValueError(f"grpo.overlong_buffer ({self.grpo.overlong_buffer}) must be less than sampler.max_new_tokens ({self.sampler.max_new_tokens})")
        if (self.grpo.layout == "colocated") != (self.grpo.weight_sync == "same_device"):
            raise ValueError(f"grpo.layout={self.grpo.layout} with grpo.weight_sync={self.grpo.weight_sync}: the colocated layout's "
                             "engines take their weights on their learner worker's device (same_device), and only they can")
        if self.grpo.layout == "colocated":
            sampler, learner = self.sampler, self.learner
            if sampler.num_actors != learner.num_workers:
                raise ValueError(f"grpo.layout=colocated puts one engine on each learner worker's device: sampler.num_actors "
                                 f"({sampler.num_actors}) must equal learner.num_workers ({learner.num_workers})")
            if sampler.gpus_per_actor != learner.gpus_per_worker or sampler.tensor_parallel_size != 1:
                raise ValueError(f"grpo.layout=colocated: each engine runs on its learner worker's device, so sampler.gpus_per_actor "
                                 f"({sampler.gpus_per_actor}) must equal learner.gpus_per_worker ({learner.gpus_per_worker}) and "
                                 f"sampler.tensor_parallel_size ({sampler.tensor_parallel_size}) be 1")
        if self.grpo.layout == "split-async" and (self.sampler.top_p != 1.0 or self.sampler.logprobs_mode != "processed"):
            raise ValueError(
                f"grpo.layout=split-async corrects for the stale sampler with the sampled tokens' log-probs, which are those of the "
                f"policy the learner trains, softmax(logits / sampler.temperature), only at sampler.top_p 1 with sampler.logprobs_mode "
                f"processed (got {self.sampler.top_p} and {self.sampler.logprobs_mode})"
            )
        rows = self.grpo.prompts_per_step * self.sampler.n
        if rows % self.learner.global_batch_size:
            raise ValueError(
                f"learner.global_batch_size ({self.learner.global_batch_size}) must divide a rollout's "
                f"grpo.prompts_per_step x sampler.n = {rows} samples (each divisor is one optimizer step)"
            )
        return self

    def to_yaml(self) -> str:
        """The resolved config, every default filled in, as saved with each run."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def resolve_config_path(config: str | Path) -> Path:
    """A path as given, or a bare name such as `tiny-cpu` looked up in configs/."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = CONFIG_DIR / f"{config}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config named {config!r}; configs/ holds: {', '.join(known)}")
    return candidate


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar or flow collection."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form key=value")
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({error.problem})") from None


def _known_keys(location: Sequence[str | int]) -> list[str]:
    model: Any = RunConfig
    for part in location:
        field = model.model_fields.get(part) if inspect.isclass(model) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if inspect.isclass(model) and issubclass(model, BaseModel) else []


def _describe(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        location = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), _known_keys(item["loc"][:-1]), n=1)
            message = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        lines.append(f"  {location}: {message}")
    return ConfigError(f"invalid config ({source}):\n" + "\n".join(lines))


def _keep_params_the_new_objective_takes(data: dict, file_objective: str | None, overrides: Sequence[str]) -> None:
    """`objective.name=kto` on a file written for rpo: drop the file's parameters kto does not take
    (alpha), so switching objective on the command line just works. Parameters set on the command
    line are kept, and still rejected when the objective does not take them."""
    objective = data.get("objective")
    if not isinstance(objective, dict) or objective.get("name") in (None, file_objective) or objective.get("name") not in objective_names():
        return
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if "objective.params" in keys:
        return
    from_command_line = {key.removeprefix("objective.params.") for key in keys if key.startswith("objective.params.")}
    params = objective.get("params")
    if isinstance(params, dict):
        accepted = objective_params_model(objective["name"]).model_fields
        objective["params"] = {key: value for key, value in params.items() if key in accepted or key in from_command_line}


def load_config(config: str | Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config by path or name, apply key=value overrides, validate strictly."""
    path = resolve_config_path(config)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    file_objective = (data.get("objective") or {}).get("name") if isinstance(data.get("objective"), dict) else None
    for override in overrides:
        apply_override(data, override)
    _keep_params_the_new_objective_takes(data, file_objective, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise _describe(error, f"{path}" + (f" with overrides {list(overrides)}" if overrides else "")) from None
