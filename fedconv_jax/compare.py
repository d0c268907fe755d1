"""Run several algorithms over several Dirichlet alphas and tabulate them (paper Fig. 10).

Every combination runs through `experiment.run_experiment` into DIR/<algorithm>_alpha<alpha>/;
a combination whose metrics.jsonl already holds every round under the same config is not
rerun. The summary goes to DIR/results.csv, DIR/results.md and DIR/curves.png.
"""

import copy
import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from tqdm.auto import tqdm

from fedconv_jax.checkpointing import checkpoint_dir, jsonable_config
from fedconv_jax.config import ALGORITHMS, ConfigError, validate

CSV_FIELDS = (
    "algorithm", "alpha", "rounds", "final_global_accuracy", "best_global_accuracy", "best_global_round",
    "final_client_accuracy", "best_client_accuracy", "best_client_round", "tier_accuracy",
    "seconds_per_round", "compile_seconds", "bytes_down", "bytes_up", "train_flops", "peak_memory_bytes",
)


def parse_algorithms(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ALGORITHMS]
    if not names or bad:
        raise ConfigError("algorithms", bad[0] if bad else text, "a comma-separated list of " + ", ".join(ALGORITHMS))
    return names


def parse_alphas(text: str) -> tuple[float, ...]:
    try:
        alphas = tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        alphas = ()
    if not alphas or any(not (math.isfinite(a) and a > 0) for a in alphas):
        raise ConfigError("alphas", text, "a comma-separated list of finite numbers > 0")
    return alphas


def run_dir(workdir: Path, algorithm: str, alpha: float) -> Path:
    return Path(workdir) / f"{algorithm}_alpha{alpha:g}"


def read_rows(directory: Path) -> list[dict]:
    path = directory / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_finished(directory: Path, config: ml_collections.ConfigDict) -> bool:
    """All rounds written, by a run of this exact config."""
    config_path = directory / "config.json"
    if not config_path.exists() or json.loads(config_path.read_text()) != jsonable_config(config):
        return False
    return [r["round"] for r in read_rows(directory)] == list(range(1, config.rounds + 1))


def combination_config(base: ml_collections.ConfigDict, algorithm: str, alpha: float) -> ml_collections.ConfigDict:
    config = copy.deepcopy(base)  # keeps aliases tied to their fields
    config.algorithm = algorithm
    config.alpha = float(alpha)
    validate(config)
    return config


def run_comparison(
    base: ml_collections.ConfigDict,
    algorithms: Sequence[str],
    alphas: Sequence[float],
    workdir: Path,
    progress: bool = True,
) -> list[dict]:
    """Runs (or reuses) every combination, writes the summary files; returns the summaries."""
    # Heavy (JAX): imported here so that argument parsing stays instant.
    from fedconv_jax.experiment import run_experiment

    workdir = Path(workdir)
    combos = [(a, alpha, combination_config(base, a, alpha)) for alpha in alphas for a in algorithms]
    bar = tqdm(total=len(combos) * base.rounds, desc="compare", unit="round", disable=not progress)
    summaries = []
    try:
        for algorithm, alpha, config in combos:
            directory = run_dir(workdir, algorithm, alpha)
            bar.set_description(f"{algorithm} alpha={alpha:g}")
            if is_finished(directory, config):
                bar.update(config.rounds)
            else:
                # An interrupted combination continues from its checkpoint (the resume guards
                # refuse a changed config); one without checkpoints starts clean.
                resume = checkpoint_dir(directory).is_dir()
                if not resume:
                    (directory / "metrics.jsonl").unlink(missing_ok=True)
                run_experiment(config, directory, progress=False, on_row=lambda _row: bar.update(1), resume=resume)
            summaries.append(summarize(algorithm, alpha, read_rows(directory)))
    finally:
        bar.close()
    write_csv(summaries, workdir / "results.csv")
    (workdir / "results.md").write_text(markdown_report(summaries, base))
    plot_curves(workdir, algorithms, alphas, workdir / "curves.png")
    return summaries


def _best(rows: list[dict], field: str) -> tuple[float | None, int | None]:
    scored = [(r[field], r["round"]) for r in rows if r[field] is not None and not math.isnan(r[field])]
    if not scored:
        return None, None
    value, round_index = max(scored, key=lambda x: (x[0], -x[1]))
    return value, round_index


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def summarize(algorithm: str, alpha: float, rows: list[dict]) -> dict:
    """One results row: final and best accuracies, per-tier accuracy, time and costs."""
    last = rows[-1]
    best_global, best_global_round = _best(rows, "global_accuracy")
    best_client, best_client_round = _best(rows, "client_accuracy")
    costs = last.get("client_costs") or {}

    def per_tier(field, reduce=lambda v: v):
        return {tier: reduce(c[field]) for tier, c in costs.items()}

    return {
        "algorithm": algorithm,
        "alpha": alpha,
        "rounds": last["round"],
        "final_global_accuracy": _nan_to_none(last["global_accuracy"]),
        "best_global_accuracy": best_global,
        "best_global_round": best_global_round,
        "final_client_accuracy": last["client_accuracy"],
        "best_client_accuracy": best_client,
        "best_client_round": best_client_round,
        "tier_accuracy": last["tier_accuracy"],
        "seconds_per_round": statistics.median(r["seconds"] for r in rows),
        "compile_seconds": last.get("compile_seconds"),
        "bytes_down": per_tier("bytes_down"),
        "bytes_up": per_tier("bytes_up"),
        "train_flops": per_tier("train_flops", lambda v: statistics.mean(v) if v else 0.0),
        "peak_memory_bytes": per_tier("peak_memory_bytes"),
    }


def write_csv(summaries: list[dict], path: Path) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for s in summaries:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in s.items()})


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def markdown_report(summaries: list[dict], base: ml_collections.ConfigDict) -> str:
    """Fig. 10-style tables: rows are methods, columns are alphas."""
    algorithms = list(dict.fromkeys(s["algorithm"] for s in summaries))
    alphas = list(dict.fromkeys(s["alpha"] for s in summaries))
    by = {(s["algorithm"], s["alpha"]): s for s in summaries}
    header = "| method | " + " | ".join(f"α={a:g}" for a in alphas) + " |"
    rule = "|---|" + "---|" * len(alphas)

    def accuracy_table(kind):
        lines = [header, rule]
        for algorithm in algorithms:
            cells = []
            for alpha in alphas:
                s = by[(algorithm, alpha)]
                final, best, best_round = s[f"final_{kind}_accuracy"], s[f"best_{kind}_accuracy"], s[f"best_{kind}_round"]
                cells.append(_pct(final) if best is None else f"{_pct(final)} ({_pct(best)} @{best_round})")
            lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
        return lines

    tiers = list(dict.fromkeys(t for s in summaries for t in s["tier_accuracy"]))
    out = [
        "# Comparison",
        "",
        (
            f"{base.dataset}, {base.num_clients} clients (SR {', '.join(f'{r:g}' for r in base.shrink_ratios)}), "
            f"{summaries[0]['rounds']} rounds, {base.local_epochs} local epochs, seed {base.seed}."
        ),
        "Accuracy in %: final round (best round's value @ round). Global: the global model on the",
        "server test set; client: each client's trained model on its own test split, averaged.",
        "",
        "## Global accuracy",
        *accuracy_table("global"),
        "",
        "## Client accuracy",
        *accuracy_table("client"),
        "",
        "## Client accuracy per SR tier (final round) and time",
        "| method | α | " + " | ".join(f"SR {t}" for t in tiers) + " | s / round | compile s |",
        "|---|---|" + "---|" * (len(tiers) + 2),
    ]
    for s in summaries:
        tier_cells = " | ".join(_pct(s["tier_accuracy"].get(t)) for t in tiers)
        compile_s = "–" if s["compile_seconds"] is None else f"{s['compile_seconds']:.1f}"
        out.append(f"| {s['algorithm']} | {s['alpha']:g} | {tier_cells} | {s['seconds_per_round']:.3f} | {compile_s} |")
    out += [
        "",
        f"## Per-client cost per round (α={alphas[0]:g}; FLOPs: mean over the tier's clients)",
        "| method | SR | KB down | KB up | training MFLOPs | peak training memory KB |",
        "|---|---|---|---|---|---|",
    ]
    for algorithm in algorithms:
        s = by[(algorithm, alphas[0])]
        for tier in s["bytes_down"]:
            out.append(
                f"| {algorithm} | {tier} | {s['bytes_down'][tier] / 1e3:.1f} | {s['bytes_up'][tier] / 1e3:.1f} | "
                f"{s['train_flops'][tier] / 1e6:.1f} | {s['peak_memory_bytes'][tier] / 1e3:.1f} |"
            )
    return "\n".join(out) + "\n"


def plot_curves(workdir: Path, algorithms: Sequence[str], alphas: Sequence[float], path: Path) -> None:
    """Global accuracy per round, one line per method, one panel per alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(alphas), figsize=(4.5 * len(alphas), 3.6), squeeze=False, sharey=True)
    for ax, alpha in zip(axes[0], alphas):
        for algorithm in algorithms:
            rows = read_rows(run_dir(workdir, algorithm, alpha))
            points = [(r["round"], r["global_accuracy"]) for r in rows if not math.isnan(r["global_accuracy"])]
            if points:
                ax.plot(*zip(*points), label=algorithm, marker="." if len(points) < 30 else None)
        ax.set_title(f"α = {alpha:g}")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("global accuracy")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
