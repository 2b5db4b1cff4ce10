"""The docs/benchmarks.md section of bench/ppo_vs_grpo.py (rendered by bench/report.py)."""

from __future__ import annotations

TITLE = "## What the critic costs: PPO vs GRPO"


def render_ppo_vs_grpo(data: dict | None) -> str:
    if not data:
        return f"{TITLE}\n\nNot run yet.\n"
    s, runs = data["summary"], data["runs"]
    g, p, r = s["grpo"], s["ppo"], s["ppo_over_grpo"]
    m = data["machine"]
    loads = [runs[a]["load_average_before"][0] for a in ("grpo", "ppo")]

    def ratio(key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.2f}x"

    def reached(x: dict) -> str:
        if x["steps_to_target"] is None:
            return "not reached"
        return f"step {x['steps_to_target']}, {x['time_to_target_s']:.0f} s"

    rows = [
        (
            "CPU s/step (median, steps without evaluation)",
            f"{g['cpu_s_median']:.3f}",
            f"{p['cpu_s_median']:.3f}",
            ratio("cpu_s_median"),
        ),
        (
            "wall s/step (median)",
            f"{g['step_s_median']:.3f}",
            f"{p['step_s_median']:.3f}",
            ratio("step_s_median"),
        ),
        ("  wall: sampling", f"{g['generate_s_median']:.3f}", f"{p['generate_s_median']:.3f}", "-"),
        (
            "  wall: rewards + advantage stage",
            f"{g['advantage_s_median']:.3f}",
            f"{p['advantage_s_median']:.3f}",
            "-",
        ),
        (
            "  wall: update",
            f"{g['update_s_median']:.3f}",
            f"{p['update_s_median']:.3f}",
            ratio("update_s_median"),
        ),
        (
            "  wall: advantage stage + update (learning)",
            f"{g['learn_s_median']:.3f}",
            f"{p['learn_s_median']:.3f}",
            ratio("learn_s_median"),
        ),
        (
            "peak RSS (MiB)",
            f"{g['peak_rss_bytes'] / 2**20:.0f}",
            f"{p['peak_rss_bytes'] / 2**20:.0f}",
            ratio("peak_rss_bytes"),
        ),
        (
            "trained state: weights + AdamW (MiB)",
            f"{g['state_bytes'] / 2**20:.1f}",
            f"{p['state_bytes'] / 2**20:.1f}",
            ratio("state_bytes"),
        ),
        (
            f"held-out greedy accuracy to {data['target_accuracy']:.0%}",
            reached(g),
            reached(p),
            ratio("steps_to_target"),
        ),
        (
            f"best held-out accuracy in {data['steps']} steps",
            f"{g['best_accuracy']:.1%} (from {g['start_accuracy']:.1%})",
            f"{p['best_accuracy']:.1%} (from {p['start_accuracy']:.1%})",
            "-",
        ),
    ]
    table = ["| | GRPO | PPO | PPO / GRPO |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(
        [
            TITLE,
            "",
            "`python bench/ppo_vs_grpo.py`: both from the same SFT checkpoint of the `aha demo` task "
            f"({data['checkpoint'].get('description', '')}), the demo's RL settings, the same seed (the same "
            f"prompts in the same order, the same number of completions per step), {data['steps']} steps each, "
            f"held-out greedy accuracy on 200 problems every {data['eval_every']} steps (evaluation time left "
            "out), each in its own child process (OpenMP threads waiting passively). Sampling and rewards are "
            "the same work for both; 95% was not reached by either within the budget where the table says so.",
            "",
            f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; measured under load (1-minute load "
            f"average before each run: GRPO {loads[0]:.1f}, PPO {loads[1]:.1f}). Wall times then depend on "
            "what else ran meanwhile; CPU seconds per step (the process's, all threads) much less, so the "
            "compute verdict below uses them.",
            "",
            *table,
            "",
            _verdict(g, r),
            "",
            "Where PPO's extra cost comes from (per step, the same batch): the advantage stage runs three "
            "passes without gradients where GRPO at mu = 1 runs one (the reference's): the rollout policy's "
            "log-probs (needed for the KL in the reward even at mu = 1), the reference's, and the critic's "
            "values (GRPO's reference pass is timed inside its update); the update adds the critic's forward and backward to the policy's. The extra states are "
            "the critic's weights (the policy's backbone and a scalar head instead of the LM head) and its "
            "two AdamW moments, about as large again as the policy's weights and moments.",
            "",
        ]
    )


def _verdict(g: dict, r: dict) -> str:
    """Whether "the critic roughly doubles memory and compute" holds here, from the measured ratios."""

    def holds(x: float) -> str:
        return "holds" if x >= 1.7 else "does not hold"

    runtime = g["peak_rss_bytes"] / 2**20
    state = g["state_bytes"] / 2**20
    return (
        f'"The critic roughly doubles memory and compute": for the trained state it {holds(r["state_bytes"])} '
        f"({r['state_bytes']:.2f}x: a second backbone and its AdamW moments); for compute, CPU seconds per "
        f"step, it {holds(r['cpu_s_median'])} ({r['cpu_s_median']:.2f}x, sampling included, which is the "
        f"same work for both); for peak RSS it {holds(r['peak_rss_bytes'])} ({r['peak_rss_bytes']:.2f}x): "
        f"at this size the process's memory is the Python and torch runtime ({runtime:.0f} MiB peak for "
        f"GRPO, of which {state:.1f} MiB are trained state), so a second model barely shows; at a real "
        "model's size the weights, moments and activations dominate and the trained state's ratio is the "
        "one to expect."
    )
