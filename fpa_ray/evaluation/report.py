"""The markdown view of an evaluation summary (fpa_ray.evaluation.harness writes the JSON)."""

from __future__ import annotations


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def summary_markdown(summary: dict) -> str:
    settings = summary["settings"]
    k = settings["k"]
    lines = [
        f"# Evaluation of {summary['checkpoint']}", "",
        f"k={k} samples per problem at T={settings['temperature']}, top_p {settings['top_p']}, seed {settings['seed']}. "
        f"pass@1: the mean over problems of the share of the k samples that are correct; pass@{k}: any is; maj@{k}: the most "
        "frequent extracted answer is. Failures: unparseable/timeout/error verdicts. Cross pass@1: the same samples under the "
        "second grader; disagreements: samples the two graders judge differently (listed in each benchmark's disagreements.jsonl).",
        "",
        f"| benchmark | problems | pass@1 (%) | pass@{k} (%) | maj@{k} (%) | mean response tokens | failures (%) | cross pass@1 (%) "
        "| disagreements | problems/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in summary["benchmarks"].items():
        lines.append(
            f"| {label} | {row['problems']} | {_percent(row['pass_at_1'])} | {_percent(row['pass_at_k'])} | {_percent(row.get('maj_at_k'))} "
            f"| {row.get('mean_response_tokens', 0):.1f} | {_percent(row.get('failure_share'))} | {_percent(row.get('cross_pass_at_1'))} "
            f"| {row.get('disagreements', '-')} | {row['throughput']['problems_per_s']:.2f} |"
        )
    total = summary["overall"]
    lines.append(
        f"| **mean of {total['benchmarks']} benchmarks** | {total['problems']} | {_percent(total.get('pass_at_1'))} | {_percent(total.get('pass_at_k'))} "
        f"| {_percent(total.get('maj_at_k'))} | {total.get('mean_response_tokens', 0):.1f} | {_percent(total.get('failure_share'))} "
        f"| {_percent(total.get('cross_pass_at_1'))} | {total.get('disagreements', '-')} | |"
    )
    if "versus_baseline" in summary:
        lines += ["", f"## Against {summary['baseline']['path']}", "",
                  f"Total Gain / Total Loss: problems whose pass@1 crosses {settings['solved_threshold']} upwards / downwards "
                  "(lists in summary.json). Change: mean per-problem change of pass@1 on the problems both scored, with its standard "
                  "error over problems.", "",
                  "| benchmark | problems compared | baseline pass@1 (%) | pass@1 (%) | change (SE), points | Total Gain | Total Loss |",
                  "|---|---|---|---|---|---|---|"]
        for label, change in summary["versus_baseline"].items():
            lines.append(f"| {label} | {change['compared']} | {_percent(change['baseline_pass_at_1'])} "
                         f"| {_percent(summary['benchmarks'][label]['pass_at_1'])} | {change['difference'] * 100:+.1f} ({change['se'] * 100:.1f}) "
                         f"| {change['total_gain']} | {change['total_loss']} |")
    return "\n".join(lines) + "\n"
