"""The online RLVR baseline: GRPO on the same cluster, built from the parts the offline pipeline uses.

Parts: the sampler pool (RolloutWorker actors whose engines stay alive and take the new weights
in place after every update), the verifier pool (VerifierActor actors), the learner group (Ray
Train workers running `grpo_loop`), and a RolloutController actor between them that serves
rollouts to the learner's rank 0 and delivers the learner's weights to the samplers through the
transport of `grpo.weight_sync` (fpa_ray/weights/transports.py), restarting the pools when an actor
died. How the pools share the cluster is the layout's (grpo_layouts.py).

Accounting, the same Ledger as the offline pipeline: the three pools are held for the whole loop,
so every phase (startup, generate, verify, train, weight sync) is charged all of their resources
(the layout's, grpo_layouts.py) x its wall time. Phases tile the loop (each runs from the end of
the previous one, in the order the controller serves them), so the ledger's sum is the loop's wall
time x the resources held; where rollouts are sampled while the learner trains (split-async) a
phase is named for what the loop waited on. Each pool's busy seconds (sampling and receiving
weights; grading; training and sending weights) over the seconds held go to online/busy.json, so
the idle share of every layout is on record. Policies are snapshotted every
`grpo.eval_every` steps and evaluated after training, with the start, by the evaluator the offline
pipeline uses (all in one sampler pool, each policy's weights loaded in place): both pipelines are
scored by the same code, and evaluation is not charged to training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fpa_ray import metrics
from fpa_ray.accounting import Ledger
from fpa_ray.config import RunConfig
from fpa_ray.data.sources import PromptRow
from fpa_ray.evaluation.evaluator import Evaluator
from fpa_ray.evaluation.run_report import cost_point, write_run_report
from fpa_ray.grpo_layouts import grpo_layout
from fpa_ray.pool_stages import prompts, starting_policy
from fpa_ray.run_directory import RunDirectory
from fpa_ray.run_files import write_json
from fpa_ray.weights.adapters import AdapterMerge
from fpa_ray.weights.group import TransferFailed
from fpa_ray.weights.transports import TRANSPORTS

ONLINE_DIR = "online"
POOL_START_PAUSES_S = (1, 2, 4, 8, 16)  # between starts of pools whose actors died while starting
RECEIVE_GRACE_S = 30.0  # beyond grpo.sync_timeout_s: a sampler's own timeout, probe and reply


def rollout_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def step_prompts(num_prompts: int, step: int, batch: int, count: int, seed: int, exclude: set[int] = frozenset()) -> list[int]:
    """Prompt indices of sampling batch `batch` of `step`: batch 0 is the step's slice of the epoch's
    permutation (global_order), a further one (dynamic sampling) `count` prompts not in `exclude`
    (those drawn earlier in the step), from a permutation of its own."""
    import torch

    from fpa_ray.learner.data import global_order

    if batch == 0:
        return global_order(num_prompts, step, count, seed)
    permutation = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(rollout_seed(seed, step) * 31 + batch))
    return [i for i in permutation.tolist() if i not in exclude][:count]


class RolloutController:
    """Ray actor: rollouts for the learner's rank 0, weight refreshes, and the loop's ledger entries."""

    def __init__(self, config: RunConfig, policy: str, prompts: list[PromptRow], run_dir: str):
        self.config, self.prompts, self.run_dir = config, prompts, Path(run_dir)
        self.ledger = Ledger(self.run_dir / "ledger.jsonl", run=config.name)
        self.layout = grpo_layout(config.grpo)
        self.held = self.layout.held_resources(config)
        self.placements: list | None = None  # colocated: the learner workers' (grpo_layouts.WorkerPlacement), once they are up
        self.naps: list | None = None  # colocated: each engine's [asleep from, to, resident bytes] as of the last sync
        self.version = 0  # the update whose weights the samplers hold: 0 the start, k after the learner's k-th
        self.busy = {"sampler": 0.0, "verifier": 0.0, "learner": 0.0}  # seconds each pool worked
        self.policy = self.policy_id = str(policy)  # what the samplers start from; the weights they hold now
        self.latest = None  # (transport, payload, probe log-probs) of the last sync, where the controller can hand it again
        self.stale = False  # the pools restarted on the start's weights after a sync only the learner can repeat: it sends again
        self.samplers: list = []
        self.verifiers: list = []
        self.restarts = 0
        self.mark = self.opened = time.time()  # the pools are held from their start: charged as startup
        self._start_pools()
        self.started = False
        metrics.stage_active(config.name, "grpo_startup", True)

    def _start_pools(self) -> None:
        """(Re)start both pools, the samplers on the latest weights: after an actor died, the retried
        rollout is the same seeded rollout from the same policy, so nothing is lost or duplicated.
        Waits until every actor is up: one placed on a lost node that Ray has not yet declared dead
        (that takes its missed health checks, ~15 s by default) dies at once, and is started again."""
        import ray

        from fpa_ray.verifier.stage import VerifierActor

        verifier = self.config.verifier
        for attempt in range(len(POOL_START_PAUSES_S) + 1):
            for actor in self.samplers + self.verifiers:
                ray.kill(actor)
            prefix = self._next_prefix()
            self.samplers = self._start_samplers(prefix)
            self.verifiers = [
                ray.remote(VerifierActor).options(name=f"{prefix}-verifier-{i}", num_cpus=verifier.workers_per_actor,
                                                  resources=verifier.resources).remote(verifier)
                for i in range(verifier.num_actors)
            ]
            try:
                ray.get([actor.__ray_ready__.remote() for actor in self.samplers + self.verifiers])
                break
            except ray.exceptions.RayActorError as error:
                if attempt == len(POOL_START_PAUSES_S):
                    raise
                print(f"[grpo] a pool actor died while starting ({type(error).__name__}); starting the pools again", flush=True)
                time.sleep(POOL_START_PAUSES_S[attempt])
        if self.latest is not None:  # back to the latest weights, probed
            self._load_all(*self.latest)
        elif self.version > 0:  # only the learner holds the latest weights: it sends them again
            self.stale = True

    def _next_prefix(self) -> str:
        """The next pool start's actor name prefix: a killed actor's name may linger."""
        prefix = self.config.name if not self.restarts else f"{self.config.name}-r{self.restarts}"
        self.restarts += 1
        return prefix

    def _start_samplers(self, prefix: str) -> list:
        from fpa_ray.sampler.rollout import start_colocated_engines, start_rollout_workers

        config = self.config
        lora = config.learner.lora  # only the adapters arrive: each engine merges them into the start's weights
        merge = None if lora is None else AdapterMerge(self.policy, lora.alpha / lora.rank)
        if not self.layout.colocated:
            return start_rollout_workers(Path(self.policy), config.sampler, config.data.template, prefix, merge)
        if self.placements is None:
            return []  # started in the learner workers' bundles once they are placed (colocate)
        return start_colocated_engines(Path(self.policy), config.sampler, config.data.template, prefix, self.placements, merge)

    def colocate(self, placements: list) -> None:
        """Colocated layout: (re)start the engines, one in each learner worker's bundle, in rank order
        (a learner group that restarted has new bundles). Engines started after an update hold the start's
        weights: the learner sends its own first."""
        import ray

        for actor in self.samplers:
            ray.kill(actor)
        self.placements = placements
        self.samplers = self._start_samplers(self._next_prefix())
        ray.get([actor.__ray_ready__.remote() for actor in self.samplers])
        self.stale = self.version > 0

    def weights_version(self) -> int:
        """The update whose weights the samplers hold."""
        return self.version

    def engines(self) -> list:
        """The sampler actors, in the learner's rank order where colocated."""
        return self.samplers

    def _with_restart(self, work, *args):
        """Run `work(*args)`; if a pool actor died under it, restart the pools once and run it again."""
        import ray

        try:
            return work(*args)
        except ray.exceptions.RayActorError as error:
            print(f"[grpo] a pool actor died ({type(error).__name__}); restarting the pools", flush=True)
            self._start_pools()
            if self.stale:
                raise StalePool from error
            return work(*args)

    def _charge(self, stage: str, step: int | None, following: str | None, samples: int | None = None) -> float:
        """Charge `stage` up to now; `following` is the phase that starts now (the dashboard's stage gauge)."""
        now = time.time()
        self.ledger.charge(stage, step, self.mark, now, **self.held, samples=samples)
        metrics.stage_active(self.config.name, stage, False)
        if following is not None:
            metrics.stage_active(self.config.name, following, True)
        elapsed, self.mark = now - self.mark, now
        return elapsed

    def phase_done(self, stage: str, step: int, busy_s: float) -> None:
        """The learner finished `stage` of `step`, busy for `busy_s` of it."""
        self.busy["learner"] += busy_s
        self._charge(stage, step, following="grpo_sync")

    def delivered(self, step: int, started: float) -> None:
        """The same-device transport: every learner worker loaded its weights into its own engine (from `started`)."""
        import ray

        self.stale = False
        self._synced(step, started)
        # When each engine slept and what it kept resident meanwhile, read now: the engines go with the
        # learner group's placement group at its end.
        self.naps = ray.get([w.naps_taken.remote() for w in self.samplers])

    def _synced(self, step: int, started: float) -> None:
        """The samplers hold the weights of update `step` now: charge the sync; the call's own time counts
        as busy for both ends."""
        self.version = step
        self._charge("grpo_sync", step, following="grpo_train")
        for pool in ("sampler", "learner"):
            self.busy[pool] += time.time() - started

    def _generate(self, prompts: list[PromptRow], seed: int) -> pa.Table:
        """G samples of each prompt, the prompts split across the sampler pool (rows in prompt order)."""
        import ray

        parts = _split(prompts, len(self.samplers))
        return pa.concat_tables(ray.get([w.rollout.remote(part, seed, self.policy_id) for w, part in zip(self.samplers, parts) if part]))

    def _grade(self, table: pa.Table) -> pa.Table:
        """The rows with their verdicts, graded across the verifier pool (order kept)."""
        import ray

        chunks = [table.slice(start, length) for start, length in _spans(table.num_rows, len(self.verifiers))]
        return pa.concat_tables(ray.get([v.grade.remote(chunk) for v, chunk in zip(self.verifiers, chunks) if chunk.num_rows]))

    def rollout(self, step: int) -> dict:
        """Prompts of `step`, G samples each from the current policy, verdicts and group advantages.

        With grpo.dynamic_sampling, groups all right or all wrong are dropped and further batches of
        prompts (not yet drawn this step) are sampled until prompts_per_step informative groups are
        left; every sampled row is kept on disk with `kept` saying whether it was trained on.
        After a broadcast sync, a pool that restarts (an actor died) is on its start weights, which
        only the learner can replace: then the answer is {"resync": True} and nothing is sampled
        (the retried rollout is the same seeded rollout, so nothing is lost or duplicated).
        """
        try:
            return self._rollout(step)
        except StalePool:
            return {"resync": True}

    def _rollout(self, step: int) -> dict:
        import ray
        import torch

        from fpa_ray.objectives.grpo import group_advantages, informative_groups, overlong_penalty
        from fpa_ray.verifier.stage import VerificationReport

        config, grpo, n = self.config, self.config.grpo, self.config.sampler.n
        if self.stale:
            return {"resync": True}
        # Before the first rollout: workers starting and loading models; later: checkpointing.
        self._charge("grpo_train" if self.started else "grpo_startup", step, following="grpo_generate")
        self.started = True
        seed, drawn, tables, informative, version = rollout_seed(config.seed, step), [], [], 0, self.version
        generate_s = verify_s = 0.0
        for batch in range(grpo.max_sampling_batches if grpo.dynamic_sampling else 1):
            indices = step_prompts(len(self.prompts), step, batch, grpo.prompts_per_step, config.seed, exclude=set(drawn))
            drawn += indices
            table = self._with_restart(self._generate, [self.prompts[i] for i in indices], seed)
            generated = self._charge("grpo_generate", step, following="grpo_verify", samples=table.num_rows)
            generate_s += generated
            self.busy["sampler"] += generated
            metrics.samples_generated(config.name, "grpo_generate", table.num_rows)
            table = self._with_restart(self._grade, table)
            tables.append(table.append_column("sampling_batch", pa.array([batch] * table.num_rows, pa.int32())))
            informative += int(informative_groups(torch.tensor(table.column("reward").to_pylist()) == 1, n).sum())
            more = grpo.dynamic_sampling and informative < grpo.prompts_per_step and len(drawn) < len(self.prompts)
            verified = self._charge("grpo_verify", step, following="grpo_generate" if more else "grpo_train")
            verify_s += verified
            self.busy["verifier"] += verified
            if not more:
                break
        if self.layout.colocated:  # the learner trains next, on the engines' devices: they release them
            self._with_restart(lambda: ray.get([w.sleep.remote() for w in self.samplers]))
        table = pa.concat_tables(tables)
        rewards = torch.tensor(table.column("reward").to_pylist(), dtype=torch.float32)
        lengths = torch.tensor([len(t) for t in table.column("response_token_ids").to_pylist()])
        shaped = rewards
        if grpo.overlong_buffer is not None:
            penalty = overlong_penalty(lengths, config.sampler.max_new_tokens, grpo.overlong_buffer)
            table = table.append_column("overlong_penalty", pa.array(penalty.tolist(), pa.float32()))
            shaped = rewards + penalty
        advantages = group_advantages(shaped, n)
        mixed = informative_groups(rewards == 1, n)
        # Without dynamic sampling every group is trained; with it, the first prompts_per_step mixed ones.
        kept_groups = (mixed & (mixed.cumsum(0) <= grpo.prompts_per_step)) if grpo.dynamic_sampling else torch.ones_like(mixed)
        kept = kept_groups.repeat_interleave(n)
        table = table.append_column("advantage", pa.array(advantages.tolist(), pa.float32()))
        table = table.append_column("kept", pa.array(kept.tolist(), pa.bool_()))
        directory = self.run_dir / ONLINE_DIR / "rollouts"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / f"step-{step:05d}.parquet")  # every rollout kept, a failing one too
        report = VerificationReport.from_columns(
            table.column("status").to_numpy(zero_copy_only=False),
            table.column("verify_seconds").to_numpy(),
            table.column("verify_detail").to_numpy(zero_copy_only=False),
        )
        metrics.verdicts(config.name, report.by_status)
        report.raise_if_unhealthy(config.verifier.max_failure_share)
        if int(kept_groups.sum()) < grpo.prompts_per_step:
            raise RuntimeError(
                f"GRPO step {step}: dynamic sampling found {int(mixed.sum())} of the {grpo.prompts_per_step} groups it needs with both right "
                f"and wrong answers, in {len(tables)} batches of {grpo.prompts_per_step} prompts "
                f"({len(drawn)} of {len(self.prompts)} prompts drawn): raise grpo.max_sampling_batches, or the prompts are all too easy or "
                "too hard for this policy"
            )
        groups = rewards.view(-1, n)
        stats = {
            "reward_mean": float(rewards.mean()), "groups_all_correct": float((groups.min(1).values == 1).float().mean()),
            "groups_all_wrong": float((groups.max(1).values == 0).float().mean()), "response_tokens": float(lengths.float().mean()),
            "generate_s": generate_s, "verify_s": verify_s, "samples_generated": float(table.num_rows),
            "samples_discarded": float(table.num_rows - int(kept.sum())), "sampling_batches": float(len(tables)),
            **({"overlong_penalty_mean": float((shaped - rewards).mean())} if grpo.overlong_buffer is not None else {}),
        }
        trained = table.filter(pa.array(kept.tolist()))
        return {
            "prompt_token_ids": trained.column("prompt_token_ids").to_pylist(),
            "response_token_ids": trained.column("response_token_ids").to_pylist(),
            "advantages": trained.column("advantage").to_pylist(),
            "sampling_logprobs": trained.column("response_logprobs").to_pylist(),
            "version": version,
            "stats": stats,
        }

    def deliver(self, transport: str, payload, step: int, expected: list[float] | None) -> dict:
        """Every sampler loads the learner's weights of update `step` through `transport`
        (fpa_ray.weights.transports; the probe on the first); charged as weight sync. A replayable payload
        is kept, so that restarted pools come back on these weights. {"resync": True} when a sampler died,
        stopped answering or lost its group under one that is not: the pools restarted on the start's
        weights and the learner sends again."""
        import ray

        started = time.time()
        self.policy_id = f"{self.run_dir / ONLINE_DIR}@step{step}"
        if TRANSPORTS[transport].replayable:
            self.latest = (transport, payload, expected)
            gap = self._with_restart(self._load_all, transport, payload, expected)
        else:
            self.latest = None
            try:
                gap = self._load_all(transport, payload, expected, timeout=self.config.grpo.sync_timeout_s + RECEIVE_GRACE_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.RayTaskError) as error:
                if isinstance(error, ray.exceptions.RayTaskError) and not isinstance(error, TransferFailed):
                    raise  # a probe that failed, an engine that could not load the weights: not a lost peer
                print(f"[grpo] the weight transfer failed in a sampler ({type(error).__name__}); restarting the pools", flush=True)
                self._start_pools()
                return {"resync": True}
        self._synced(step, started)
        return {"resync": False, "gap": gap}

    def _load_all(self, transport: str, payload, expected: list[float] | None, timeout: float | None = None) -> float | None:
        """Every sampler loads `payload`; the first sampler's probe gap."""
        import ray

        grpo = self.config.grpo
        return ray.get([w.load.remote(transport, payload, expected if grpo.refresh_probe and i == 0 else None, grpo.probe_tolerance)
                        for i, w in enumerate(self.samplers)], timeout=timeout)[0]

    def weight_group_ranks(self) -> int:
        """Ranks the sampler engines take in the learner's weight group (one per tensor-parallel worker)."""
        return self.config.sampler.num_actors * self.config.sampler.tensor_parallel_size

    def open_weight_group(self, address) -> bool:
        """Every sampler joins the learner's weight group (the learner's rank 0 joins it meanwhile as rank 0).
        False when a sampler died first: the pools restart, and the learner opens a new group with them."""
        import ray

        first, joins = 1, []
        for worker in self.samplers:
            joins.append(worker.join_weight_group.remote(address, first))
            first += self.config.sampler.tensor_parallel_size
        try:
            ray.get(joins)
        except ray.exceptions.RayActorError as error:
            print(f"[grpo] a sampler died while joining the weight group ({type(error).__name__}); restarting the pools", flush=True)
            self._start_pools()
            return False
        self.stale = False
        return True

    def finish(self) -> dict:
        """Charge the tail (the last checkpoint, the worker group's shutdown), stop the pools, and write
        each pool's busy share (busy seconds / seconds held) to online/busy.json; returns it."""
        import ray

        self._charge("grpo_shutdown", None, following=None)
        held_s = time.time() - self.opened
        shares = {"layout": self.config.grpo.layout, "held_s": held_s,
                  **{pool: {"busy_s": busy, "busy_share": busy / held_s} for pool, busy in self.busy.items()}}
        if self.naps is not None:
            shares["engine_naps"] = self.naps
        for actor in self.samplers + self.verifiers:
            ray.kill(actor)
        write_json(self.run_dir / ONLINE_DIR / "busy.json", shares)
        return shares


class StalePool(Exception):
    """The pools restarted on their start weights after a broadcast sync: the learner must send again."""


def _spans(rows: int, parts: int) -> list[tuple[int, int]]:
    size, extra = divmod(rows, parts)
    spans, start = [], 0
    for i in range(parts):
        length = size + (i < extra)
        spans.append((start, length))
        start += length
    return spans


def _split(items: list, parts: int) -> list[list]:
    return [items[start : start + length] for start, length in _spans(len(items), parts)]


class OnlineGRPOPipeline:
    """Train online for grpo.steps, then evaluate the start and the snapshots; report and curve. The run
    directory, starting policy, prompts, evaluator and report are the offline pipeline's parts."""

    def __init__(self, config: RunConfig, log=print):
        self.config, self.log = config, log
        self.run_directory = RunDirectory.of(config, log)
        self.run_dir, self.ledger = self.run_directory.path, self.run_directory.ledger
        self.evaluator = Evaluator(self.run_directory)

    def prepare(self) -> None:
        """Check the cluster and create the run directory, or check that it was made with the same config."""
        self.run_directory.prepare()

    def initial_policy(self) -> Path:
        return starting_policy(self.run_directory)

    def train_online(self, policy: Path) -> list[tuple[int, Path]]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from fpa_ray.learner.worker_records import SNAPSHOTS_DIR
        from fpa_ray.learner.grpo_loop import OnlineSetup, grpo_loop
        from fpa_ray.learner.worker_group import run_trainer

        config = self.config
        stage_dir = self.run_dir / ONLINE_DIR
        inputs = {"policy": str(policy), "config": json.loads(config.model_dump_json(exclude={"evaluation"}))}
        done = self.run_directory.done(stage_dir, inputs)
        if not done:
            rows = prompts(self.run_directory, [config.data.train])
            self.log(f"[grpo] {config.grpo.steps} steps x {config.grpo.prompts_per_step} prompts x {config.sampler.n} samples, "
                     f"{config.grpo.layout} layout, holding {grpo_layout(config.grpo).held_resources(config)}")
            # On the driver's node, as Ray Train places its own controller: a lost worker node takes pool
            # actors with it, which the controller restarts, never the controller and the loop's state.
            on_driver_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            controller = ray.remote(RolloutController).options(num_cpus=0, name=f"{config.name}-rollout-controller",
                                                               scheduling_strategy=on_driver_node).remote(
                config, str(policy), rows, str(self.run_dir)
            )
            setup = OnlineSetup(
                config.learner, config.objective, config.grpo, config.sampler.n, config.seed, str(policy), str(policy), str(stage_dir),
                temperature=config.sampler.temperature, run=config.name, tracking=self.run_directory.tracking,
            )
            try:
                run_trainer(grpo_loop, {"setup": setup, "controller": controller}, config.learner, stage_dir, name=f"{config.name}-grpo",
                            bundle=grpo_layout(config.grpo).worker_bundle(config))
            finally:
                busy = ray.get(controller.finish.remote())
                ray.kill(controller)
            metrics = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line]
            last = metrics[-1]
            self.log(f"[grpo] {last['rollout_step']} steps, last reward {last['reward_mean']:.3f}, loss {last['loss']:.4f}; busy share of "
                     f"the {busy['held_s']:.0f} s held: " + ", ".join(f"{pool} {busy[pool]['busy_share']:.0%}" for pool in ("sampler", "verifier", "learner")))
            self.run_directory.finish(stage_dir, "grpo", inputs, steps=last["rollout_step"])
        snapshots = sorted((stage_dir / SNAPSHOTS_DIR).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        return [(int(p.name.split("_")[1]), p) for p in snapshots]

    def describe(self) -> str:
        config = self.config
        return (f"online GRPO {config.objective.params}, {config.grpo.steps} steps x {config.grpo.prompts_per_step} prompts x "
                f"G={config.sampler.n}, lr {config.learner.lr}, seed {config.seed}")

    def run(self) -> Path:
        """Train, then evaluate the start and every snapshot together: one sampler and one verifier pool."""
        self.prepare()
        policy = self.initial_policy()
        snapshots = self.train_online(policy)
        results = self.evaluator.evaluate_many([(0, policy), *((f"step_{step}", snapshot) for step, snapshot in snapshots)])
        points = [cost_point(self.ledger, "start", results[0], time_s=0.0)]
        for (step, _), result in zip(snapshots, results[1:]):
            sync = [e for e in self.ledger.entries() if e["stage"] == "grpo_sync" and e["round"] == step]
            points.append(cost_point(self.ledger, f"step {step}", result, time_s=sync[-1]["end"]))
        return write_run_report(self.run_directory, self.describe(), points)
