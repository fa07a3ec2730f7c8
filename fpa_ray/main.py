"""Command line: python -m fpa_ray.main [stage] [--config NAME|PATH] [key=value ...]

Stages run on the local Ray cluster by default, or on the cluster a `ray job submit` targets.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fpa_ray.config import DEFAULT_CONFIG, ConfigError, load_config, objective_params_model
from fpa_ray.objectives import get_objective, objective_names

ROUND_STAGES = ("generate", "verify", "build", "train", "evaluate")
GRPO_CONFIG = "tiny-cpu-grpo"

# stage -> what it does
STAGES: dict[str, str] = {
    "run": "the whole offline FPA pipeline: rounds of generate -> verify -> build -> train -> evaluate",
    "generate": "sample N responses per prompt from a policy checkpoint with the vLLM sampler pool",
    "verify": "grade a round's samples with the rule-based verifier pool",
    "build": "build a round's preference pairs or labelled rows (Parquet + manifest) from verified samples",
    "train": "train the policy on a round's dataset with Ray Train",
    "evaluate": "score a policy: per benchmark (--benchmarks) pass@1 over k samples, pass@k, maj@k, length, failures, "
    "cross-grader disagreements and Total Gain/Loss against a --baseline; without --benchmarks, the run's eval_<round>",
    "grpo": "the online RLVR/GRPO baseline on the same cluster (default config: tiny-cpu-grpo)",
    "compare": "accuracy against resource-hours for finished runs: compare runs/A runs/B ... (table and plot)",
    "warmstart": "build the tiny policy and warm-start it with SFT, or reuse the cached one; print its accuracy",
    "demo": "every objective with and without FPA, a few steps on a small random Qwen2 (no Ray)",
    "plan": "print where each pool goes and the learner's estimated memory per GPU (weights, gradients, optimizer state, "
    "reference, activations with and without checkpointing), warning where it does not fit; starts nothing",
    "config": "print the resolved config (YAML) and exit",
    "objectives": "list the registered objectives and their hyperparameters",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fpa_ray.main",
        description="fpa_ray: Future Policy Approximation offline RL for math reasoning on Ray.",
        epilog="With no stage, `run` runs the embedded default (configs/tiny-cpu.yaml).",
    )
    subparsers = parser.add_subparsers(dest="stage", metavar="stage")
    for name, text in STAGES.items():
        sub = subparsers.add_parser(name, help=text, description=text)
        if name == "compare":
            sub.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished run directories (the first is the baseline)")
            sub.add_argument("--target", type=float, help="pass@1 to reach, 0-1 (default: the first run's best)")
            sub.add_argument("--out", type=Path, default=Path("runs/compare"), help="where compare.md and compare.png go (default: %(default)s)")
            continue
        default = GRPO_CONFIG if name == "grpo" else DEFAULT_CONFIG
        sub.add_argument("--config", default=default, help="config name in configs/ or a YAML path (default: %(default)s)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. fpa.lam=2 objective.name=rpo")
        if name == "plan":
            sub.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU, GiB (default: %(default)s)")
        if name in ROUND_STAGES:
            sub.add_argument("--round", type=int, default=1, help="the round whose directory the stage reads and writes (default 1)")
            sub.add_argument("--checkpoint", type=Path, help="policy to use instead of the round's own (generate, train, evaluate)")
        if name == "evaluate":
            sub.add_argument("--benchmarks", help="comma-separated data.eval labels or schema names (math500,gsm8k,...), or 'all' "
                             "for every data.eval entry; results go to <output_dir>/evaluations/ and are reused when repeated")
            sub.add_argument("--baseline", type=Path, help="summary.json of an earlier `evaluate --benchmarks`: Total Gain/Loss against it")
            sub.add_argument("--out", type=Path, help="where summary.json/summary.md go (default: the checkpoint's evaluations directory)")
    return parser


def _run_objectives() -> None:
    for name in objective_names():
        objective = get_objective(name)
        params = objective_params_model(name)().model_dump()
        flags = ["reference" if objective.needs_reference else "reference-free", "FPA" if objective.supports_fpa else "no FPA"]
        print(f"{name:<11} {objective.batch_type.__name__:<13} {', '.join(flags):<26} {params}")


def _run_warmstart(config) -> None:
    from fpa_ray.warmstart import warm_start

    result = warm_start(config.policy.tiny, config.policy.sft, config.data.synthetic, seed=config.seed)
    origin = "cached" if result.cached else f"trained in {result.seconds:.0f}s"
    print(
        f"tiny policy ({origin}): {result.path}\n"
        f"  held-out pass@1 at T={config.policy.sft.eval_temperature}: {result.pass_at_1:.1%}"
        f" ({config.policy.sft.eval_samples} samples x {config.policy.sft.eval_problems} problems), greedy {result.greedy_accuracy:.1%}"
    )


def _log(message: str) -> None:
    print(message, flush=True)


def _run_benchmarks(config, args) -> int:
    from fpa_ray.evaluation.harness import BenchmarkError, BenchmarkEvaluation

    checkpoint = args.checkpoint
    if checkpoint is None:
        from fpa_ray.pipelines.offline import OfflinePipeline

        pipeline = OfflinePipeline(config, log=_log)
        pipeline.prepare()
        checkpoint = pipeline.initial_policy() if args.round == 0 else pipeline.run_dir / f"round_{args.round}" / "train" / "policy"
    elif not checkpoint.exists() and str(checkpoint).count("/") == 1:  # a Hub id, e.g. Qwen/Qwen2.5-Math-7B
        from huggingface_hub import snapshot_download

        checkpoint = Path(snapshot_download(str(checkpoint), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    names = None if args.benchmarks == "all" else [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    try:
        summary = BenchmarkEvaluation(config, log=_log).run(checkpoint, names, args.baseline, args.out)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"\nsummary: {summary} and {summary.with_suffix('.md')}")
    return 0


def _run_round_stage(config, args) -> int:
    if args.stage == "evaluate" and args.benchmarks:
        return _run_benchmarks(config, args)
    from fpa_ray.pipelines.offline import OfflinePipeline

    pipeline = OfflinePipeline(config, log=_log)
    pipeline.prepare()
    round_dir = pipeline.run_dir / f"round_{args.round}"
    if args.stage == "generate":
        pipeline.generate(args.round, args.checkpoint or pipeline.policy_before(args.round))
    elif args.stage == "verify":
        pipeline.verify(args.round, round_dir / "samples")
    elif args.stage == "build":
        pipeline.build(args.round, round_dir / "verified")
    elif args.stage == "train":
        pipeline.train(args.round, round_dir / "dataset", args.checkpoint or pipeline.policy_before(args.round))
    else:
        policy = args.checkpoint or (pipeline.initial_policy() if args.round == 0 else round_dir / "train" / "policy")
        pipeline.evaluate(args.round, policy)
    return 0


def _run_demo() -> None:
    from fpa_ray.demo import format_table, run_demo

    print("Training every objective 25 steps on synthetic pairs, plain and with exact FPA (lam=1) ...", flush=True)
    print(format_table(run_demo()))


def _run_compare(args) -> int:
    from fpa_ray.compare import CompareError, compare

    try:
        report = compare(args.runs, args.out, args.target)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.read_text())
    print(f"written: {report} and {report.with_suffix('.png')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from fpa_ray.placement import ClusterTooSmall

    try:
        return _main(argv)
    except ClusterTooSmall as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(["run", *(argv if argv is not None else sys.argv[1:])] if _no_stage(argv) else argv)
    if args.stage == "compare":
        return _run_compare(args)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.stage == "config":
        print(config.to_yaml(), end="")
    elif args.stage == "plan":
        from fpa_ray.memory_plan import describe_plan

        print(describe_plan(config, args.gpu_memory_gb)[0])
    elif args.stage == "objectives":
        _run_objectives()
    elif args.stage == "warmstart":
        _run_warmstart(config)
    elif args.stage == "demo":
        _run_demo()
    elif args.stage in ("run", "grpo"):
        online = config.objective.name == "grpo"
        if online != (args.stage == "grpo"):
            fix = "use the grpo stage" if online else "set objective.name=grpo (or --config tiny-cpu-grpo)"
            print(f"error: stage {args.stage!r} with objective {config.objective.name!r}: {fix}", file=sys.stderr)
            return 2
        from fpa_ray.pipelines.offline import OfflinePipeline
        from fpa_ray.pipelines.online_grpo import OnlineGRPOPipeline

        report = (OnlineGRPOPipeline if online else OfflinePipeline)(config, log=_log).run()
        print(f"\nreport: {report}")
    else:
        return _run_round_stage(config, args)
    return 0


def _no_stage(argv: Sequence[str] | None) -> bool:
    """True when the first argument is not a stage or a help flag, so `run` is implied."""
    args = list(argv if argv is not None else sys.argv[1:])
    return not args or (args[0] not in STAGES and args[0] not in ("-h", "--help"))


if __name__ == "__main__":
    sys.exit(main())
