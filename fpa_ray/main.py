"""Command line: python -m fpa_ray.main [stage] [--config NAME|PATH] [key=value ...]

Stages run on the local Ray cluster by default, or on the cluster a `ray job submit` targets.
Stages that later issues build say so and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fpa_ray.config import DEFAULT_CONFIG, ConfigError, load_config, objective_params_model
from fpa_ray.objectives import get_objective, objective_names

# stage -> (what it does, the issue that builds it, or None when built)
STAGES: dict[str, tuple[str, int | None]] = {
    "run": ("the whole offline FPA pipeline: rounds of generate -> verify -> build -> train -> evaluate", 7),
    "generate": ("sample N responses per prompt from a policy checkpoint with the vLLM sampler pool", 5),
    "verify": ("grade sampled responses with the rule-based verifier pool", 4),
    "build": ("build preference pairs or labelled rows (Parquet + manifest) from verified samples", 7),
    "train": ("train the policy on a built dataset with Ray Train", 6),
    "evaluate": ("pass@1 over k samples, Total Gain/Total Loss, on the configured benchmarks", 10),
    "grpo": ("the online RLVR/GRPO baseline on the same cluster", 8),
    "compare": ("accuracy against resource-hours for finished runs (table and plot)", 8),
    "warmstart": ("build the tiny policy and warm-start it with SFT, or reuse the cached one; print its accuracy", None),
    "demo": ("every objective with and without FPA, a few steps on a small random Qwen2 (no Ray)", None),
    "config": ("print the resolved config (YAML) and exit", None),
    "objectives": ("list the registered objectives and their hyperparameters", None),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fpa_ray.main",
        description="fpa_ray: Future Policy Approximation offline RL for math reasoning on Ray.",
        epilog="With no stage, `run` runs the embedded default (configs/tiny-cpu.yaml).",
    )
    subparsers = parser.add_subparsers(dest="stage", metavar="stage")
    for name, (text, issue) in STAGES.items():
        text = text if issue is None else f"{text} [not yet built: issue {issue}]"
        sub = subparsers.add_parser(name, help=text, description=text)
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="config name in configs/ or a YAML path (default: %(default)s)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. fpa.lam=2 objective.name=rpo")
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


def _run_demo() -> None:
    from fpa_ray.demo import format_table, run_demo

    print("Training every objective 25 steps on synthetic pairs, plain and with exact FPA (lam=1) ...", flush=True)
    print(format_table(run_demo()))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(["run", *(argv if argv is not None else sys.argv[1:])] if _no_stage(argv) else argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text, issue = STAGES[args.stage]
    if args.stage == "config":
        print(config.to_yaml(), end="")
    elif args.stage == "objectives":
        _run_objectives()
    elif args.stage == "warmstart":
        _run_warmstart(config)
    elif args.stage == "demo":
        _run_demo()
    elif args.stage == "run":
        # Until the offline pipeline lands (issue 7) the default job is the objective demo.
        print("The offline pipeline (`run`) is not yet built (issue 7); running the objective demo instead.\n", flush=True)
        _run_demo()
    else:
        print(f"stage {args.stage!r} ({text}) is not yet built (issue {issue})", file=sys.stderr)
        return 2
    return 0


def _no_stage(argv: Sequence[str] | None) -> bool:
    """True when the first argument is not a stage or a help flag, so `run` is implied."""
    args = list(argv if argv is not None else sys.argv[1:])
    return not args or (args[0] not in STAGES and args[0] not in ("-h", "--help"))


if __name__ == "__main__":
    sys.exit(main())
