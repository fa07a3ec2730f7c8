"""The online GRPO learner: the same Ray Train worker group, fed rollouts step by step.

Rank 0 asks the rollout controller (a Ray actor that owns the sampler and verifier pools) for
rollout step s, broadcasts it to the other ranks, every rank trains on its slice, then the new
weights go to the samplers (fpa_ray/weights/transports.py: a broadcast over a collective group with
the sampler workers, the Ray object store, a weights directory, or each worker's own engine on its
device), with the learner's log-probs of the probe for the check. The layout (grpo_layouts.py) sets how far ahead rank 0 asks: `split` asks for step
s + 1 after its weights were sent (on-policy); `split-async` asks for steps s + 1 .. s + k before
step s trains, so they are sampled meanwhile by weights at most k updates old, and the loss
corrects for that with the sampler's log-probs. Each rollout says which update sampled it; a
rollout older than the layout allows stops the run.
A rollout of P prompts x G samples is split into P*G / global_batch_size optimizer steps
(mini-batches, seeded order); with more than one, the log-probs of the policy that sampled are recomputed by the learner before the first update, so the clipped ratio is
measured in one engine (vLLM and the learner differ by ~1e-5 nats, measured in issue 5).
Token-level normalisation: each mini-batch's loss is divided by its response-token count over
all workers (fpa_ray.objectives' contract). Forward passes are cut and laid out as the offline
learner's (`learner.micro_batch_size`, `micro_batch_tokens`, `padding_free`): packed rows take each
token's advantage from its own sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fpa_ray import metrics as app_metrics
from fpa_ray.config import GRPOConfig, LearnerConfig, ObjectiveConfig
from fpa_ray.grpo_layouts import grpo_layout
from fpa_ray.learner.backends import build_backend, worker_device
from fpa_ray.learner.data import Example, MicroBatching, collate, global_order
from fpa_ray.learner.forward import TokenizedBatch, shifted_targets
from fpa_ray.learner.optimizer_step import StepMetrics, plan_micro_batches
from fpa_ray.learner.worker_records import SNAPSHOTS_DIR, MetricsWriter, SentWeights, report, restored_checkpoint, save_hf
from fpa_ray.objectives import ObjectiveOutput, TokenBatch, get_objective, token_logprobs
from fpa_ray.tracking import TrackingRun
from fpa_ray.weights.probe import probe_ids
from fpa_ray.weights.transports import make_transport



@dataclass(frozen=True)
class OnlineSetup:
    learner: LearnerConfig
    objective: ObjectiveConfig
    grpo: GRPOConfig
    group_size: int
    seed: int
    policy_path: str
    reference_path: str
    output_dir: str
    # The samplers' temperature: the learner's log-probs (the ratio's, the reference's) are of the same tempered
    # policy, softmax(logits / T), as TRL's GRPOTrainer and verl compute them.
    temperature: float = 1.0
    run: str = "grpo"  # the run's name: the tag of its metrics on the dashboard
    tracking: TrackingRun | None = None  # the run's trackers (None: TensorBoard in output_dir alone), metrics as grpo/<name>

    @property
    def minibatches(self) -> int:
        return self.grpo.prompts_per_step * self.group_size // self.learner.global_batch_size


def rollout_examples(rollout: dict, max_length: int) -> tuple[list[Example], list[float], list[torch.Tensor], int]:
    """Training rows of a rollout (responses cut to fit max_length) with their advantages and the
    sampler's log-probs of their response tokens (cut alike); rows cut."""
    examples, advantages, sampled, cut = [], [], [], 0
    rows = zip(rollout["prompt_token_ids"], rollout["response_token_ids"], rollout["advantages"], rollout["sampling_logprobs"])
    for prompt, response, advantage, logprobs in rows:
        room = max_length - len(prompt)
        if room < 1:
            raise ValueError(f"a rollout prompt has {len(prompt)} tokens, not less than learner.max_length={max_length}")
        cut += len(response) > room
        examples.append(Example(tuple(prompt), (tuple(response[:room]),), label=False))
        advantages.append(float(advantage))
        sampled.append(torch.tensor(logprobs[:room], dtype=torch.float32))
    return examples, advantages, sampled, cut


class RolloutFeed:
    """Rank 0's requests for rollouts: the step's own, and the layout's `ahead` next ones, asked for
    before the step trains (the controller serves them in order, and the weights sent after the step
    queue behind them)."""

    def __init__(self, controller, ahead: int, steps: int):
        self.controller, self.ahead, self.steps = controller, ahead, steps
        self.pending: dict[int, object] = {}

    def take(self, step: int) -> dict:
        import ray

        rollout = ray.get(self.pending.pop(step, None) or self.controller.rollout.remote(step))
        if rollout.get("resync"):
            self.pending.clear()  # asked of pools that restarted on their start weights: asked again after the resync
            return rollout
        for ahead in range(step + 1, min(step + 1 + self.ahead, self.steps)):
            if ahead not in self.pending:
                self.pending[ahead] = self.controller.rollout.remote(ahead)
        return rollout


def _broadcast(value, rank: int):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gathered(value) -> list:
    """Every rank's `value`, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def _token_logps(net, examples: list[Example], batching: MicroBatching, pad_id: int, device, precision,
                 temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-row response-token log-probs (1-D each, in `examples` order), for the sampling policy or the
    reference, in the training precision, of softmax(logits / temperature)."""
    rows: list[torch.Tensor | None] = [None] * len(examples)
    everything = list(range(len(examples)))
    for ids in plan_micro_batches(batching, everything, {i: examples[i].num_tokens for i in everything}, device):
        batch, _ = collate([examples[i] for i in ids], "labelled", pad_id, device, packed=batching.packed)
        labels, mask = shifted_targets(batch)
        with precision.autocast(device):
            logits = net(**batch.model_inputs()).logits
        for i, values in zip(ids, batch.sequence_tokens(token_logprobs(_tempered(logits, temperature), labels, mask), mask)):
            rows[i] = values
    return rows


def grpo_loss(objective, params: dict, model, batch: TokenizedBatch, advantages: torch.Tensor, normalizer: float | None,
              old: list[torch.Tensor] | None = None, ref: list[torch.Tensor] | None = None,
              sampled: list[torch.Tensor] | None = None, tis_cap: float | None = None,
              temperature: float = 1.0) -> tuple[ObjectiveOutput, torch.Tensor]:
    """The objective on one micro-batch, padded or packed, and its response mask. `advantages`: one per
    sequence; `old`, `ref`, `sampled`: each sequence's response-token log-probs under the learner's policy
    before the step's first update (None: the policy's own, detached), the reference (None: no KL term) and
    the sampler that generated it (with `tis_cap`: the importance correction for a stale sampler); every
    log-prob of softmax(logits / temperature), the sampler's distribution."""
    labels, mask = shifted_targets(batch)
    logp = token_logprobs(_tempered(model(**batch.model_inputs()).logits, temperature), labels, mask)
    old_logp = batch.place(old, mask) if old else logp.detach()
    ref_logp = batch.place(ref, mask) if ref else None
    behaviour = batch.place(sampled, mask) if tis_cap is not None else None
    inputs = TokenBatch(logp, old_logp, mask, batch.per_token(advantages.to(logp.device)), ref_logp, behaviour, tis_cap)
    return objective(inputs, normalizer=normalizer, **params), mask


def grpo_loop(config: dict) -> None:
    """Entry point of each Ray Train worker of the online run."""
    import ray
    import ray.train
    from transformers import AutoTokenizer

    setup: OnlineSetup = config["setup"]
    controller = config["controller"]
    learner, grpo = setup.learner, setup.grpo
    layout = grpo_layout(grpo)
    rank = ray.train.get_context().get_world_rank()
    device = worker_device(learner)
    torch.manual_seed(setup.seed)
    objective, params = get_objective("grpo"), setup.objective.params
    tokenizer = AutoTokenizer.from_pretrained(setup.policy_path)
    pad_id = tokenizer.pad_token_id

    minibatches, G, batching = setup.minibatches, learner.global_batch_size, MicroBatching.of(learner)
    with restored_checkpoint() as restore_dir:
        backend = build_backend(learner, setup.policy_path, restore_dir, grpo.steps * minibatches, device)
    resumed = restore_dir is not None
    world, precision = backend.world, backend.precision
    start = backend.start_step // minibatches
    reference = None
    if params.get("kl_coef", 0.0) > 0:
        reference = backend.frozen_reference(setup.reference_path)
    output_dir = Path(setup.output_dir)
    writer = MetricsWriter(output_dir, backend.start_step, setup.tracking, "grpo/") if rank == 0 else None
    sender, sent = make_transport(grpo, controller, output_dir, setup.run, device), SentWeights(backend, setup.policy_path)
    if layout.colocated:  # each rank's engine starts in the rank's own bundle, on its device
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the whole model loaded before ZeRO-3 partitioned it: vLLM starts only into free memory
        placements = _gathered(layout.worker_placement())
        if rank == 0:
            ray.get(controller.colocate.remote(placements))
        _broadcast(None, rank)  # every rank waits for the engines

    def send_weights(step: int) -> float | None:
        """The weights of update `step` to the samplers; the sync probe's gap (rank 0)."""
        return sender.send(sent, step, _probe_logprobs(backend, tokenizer, device) if grpo.refresh_probe else None)

    gap = None  # of the last sync, logged with the next step
    # The samplers hold other weights than this group's after a restart: newer than its checkpoint, or an
    # update of the group before it when that one never checkpointed (the group starts from scratch).
    behind = _broadcast(ray.get(controller.weights_version.remote()) != start if rank == 0 else None, rank)
    if resumed or behind:
        gap = send_weights(start)

    local = G // world
    feed = RolloutFeed(controller, layout.ahead, grpo.steps) if rank == 0 else None
    for step in range(start, grpo.steps):
        rollout = _broadcast(feed.take(step) if rank == 0 else None, rank)
        while rollout.get("resync"):  # the sampler pool restarted on its start weights: send them again
            sender.reset()
            gap = send_weights(step)
            rollout = _broadcast(feed.take(step) if rank == 0 else None, rank)
        started = mark = time.perf_counter()
        staleness = step - rollout["version"]
        if not 0 <= staleness <= layout.max_staleness:
            raise RuntimeError(f"GRPO step {step}: the rollout was sampled by the weights of update {rollout['version']}, "
                               f"{staleness} updates old; grpo.layout={layout.name} allows {layout.max_staleness}")
        examples, advantages, sampled, cut = rollout_examples(rollout, learner.max_length)
        response_tokens = [len(e.responses[0]) for e in examples]
        order = global_order(len(examples), step, len(examples), setup.seed)
        mine = sorted({i for m in range(minibatches) for i in order[m * G + rank * local : m * G + (rank + 1) * local]})
        old = {}
        if minibatches > 1:
            values = _token_logps(backend.model, [examples[i] for i in mine], batching, pad_id, device, precision, setup.temperature)
            old = dict(zip(mine, values))
        ref = {}
        if reference is not None:
            ref = dict(zip(mine, _token_logps(reference, [examples[i] for i in mine], batching, pad_id, device, precision,
                                              setup.temperature)))
        for m in range(minibatches):
            ids = order[m * G : (m + 1) * G]
            normalizer = float(sum(response_tokens[i] for i in ids))  # every worker's tokens of this mini-batch
            local_ids = ids[rank * local : (rank + 1) * local]
            micro_batches = plan_micro_batches(batching, local_ids, {i: examples[i].num_tokens for i in local_ids}, device)
            step_metrics = StepMetrics()
            lr = backend.scheduler.get_last_lr()[0]
            for j, rows in enumerate(micro_batches):
                batch, _ = collate([examples[i] for i in rows], "labelled", pad_id, device, packed=batching.packed)
                with backend.micro_batch(last=j == len(micro_batches) - 1):
                    adv = torch.tensor([advantages[i] for i in rows], dtype=torch.float32)
                    out, mask = grpo_loss(objective, params, backend.model, batch, adv, normalizer,
                                          [old[i] for i in rows] if old else None, [ref[i] for i in rows] if ref else None,
                                          [sampled[i] for i in rows], layout.tis_cap, setup.temperature)
                    backend.backward(out.loss)
                step_metrics.add(out.metrics, float(mask.sum()), float(batch.attention_mask.sum()))
            grad_norm = backend.step()
            metrics = step_metrics.reduce()
            optimizer_steps = step * minibatches + m + 1
            now = time.perf_counter()
            step_tokens = metrics.pop("tokens")
            metrics.update(
                step=optimizer_steps, rollout_step=step + 1, lr=lr, grad_norm=float(grad_norm), time=time.time(),
                tokens_per_s=step_tokens / (now - mark), truncated=float(cut), staleness=float(staleness), **rollout["stats"],
                **({"sync_probe_gap": gap} if gap is not None else {}),
                **({"sync_bytes": float(sender.sent_bytes)} if sender.sent_bytes is not None else {}),  # of the last sync (rank 0)
            )
            mark = now
            if writer is not None:
                writer.write(metrics)
                app_metrics.training_step(setup.run, metrics, step_tokens)
        # Publish the new weights, then the samplers load them: the next rollout is on-policy.
        snapshot = (step + 1) % grpo.eval_every == 0 or step + 1 == grpo.steps
        if rank == 0:  # not waited for: with rollouts asked ahead the controller is busy generating them
            controller.phase_done.remote("grpo_train", step, time.perf_counter() - started)
            stats = rollout["stats"]
            print(f"[grpo] step {step + 1}/{grpo.steps}: reward {stats['reward_mean']:.3f}, groups all wrong "
                  f"{stats['groups_all_wrong']:.0%} / all right {stats['groups_all_correct']:.0%}, loss {metrics['loss']:.4f}, "
                  f"grad norm {metrics['grad_norm']:.3f}", flush=True)
        if snapshot:
            save_hf(output_dir / SNAPSHOTS_DIR / f"step_{step + 1}", backend, setup.policy_path)
        gap = send_weights(step + 1)
        report(backend, metrics, (step + 1) * minibatches, (step + 1) % learner.checkpoint_every == 0 or step + 1 == grpo.steps, setup)
    if writer is not None:
        writer.close()


def _probe_logprobs(backend, tokenizer, device) -> list[float]:
    """The learner's log-probs of the probe continuation, in its training precision (every rank runs
    the forward: ZeRO-3 gathers each layer's parameters inside it)."""
    prompt, continuation = probe_ids(tokenizer)
    example = Example(tuple(prompt), (tuple(continuation),), label=False)
    return _token_logps(backend.model, [example], MicroBatching(1), tokenizer.pad_token_id, device, backend.precision)[0].float().tolist()
