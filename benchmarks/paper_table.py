"""Issue 18's paper table from the runs of benchmarks/paper_table_mnist.sh.

    python benchmarks/paper_table.py runs/paper_table_mnist [--out benchmarks/results/paper_table_mnist]

Reads ROOT/seed<s>/<algorithm>_alpha<alpha>/metrics.jsonl (only runs with every round of their
config) and prints a markdown table: per algorithm and alpha, the global and the clients' mean
accuracy after the last round (mean ± std over the seeds run, the seed count beside), the best
round of the mean curve, and the paper's number (PAPER-NOTES §5.1 and §5.2; the paper's "FedAvg"
is fedavg_small). --out also writes results.md, results.json and curves_alpha<alpha>.png (mean
global accuracy per round, the seeds' range shaded).
"""

import argparse
import json
import math
import re
import statistics
from pathlib import Path

ALGORITHMS = ("fedconv", "heterofl", "fedrolex", "fedavg_small", "fedavg_full")
# Paper, MNIST after 100 rounds: global (§5.1, exact) and client (§5.2, read off the plot).
PAPER_GLOBAL = {
    "fedconv": {0.05: 97.15, 0.1: 97.69, 1: 98.52, 10000: 99.45},
    "fedavg_small": {0.05: 80.45, 0.1: 95.39, 1: 97.63, 10000: 98.89},
    "heterofl": {0.05: 1.43, 0.1: 19.30, 1: 98.17, 10000: 98.65},
    "fedrolex": {0.05: 16.89, 0.1: 47.45, 1: 90.75, 10000: 95.81},
}
PAPER_CLIENT = {
    "fedconv": {0.05: 99.9, 0.1: 99.4, 1: 99.0, 10000: 99.3},
    "fedavg_small": {0.05: 83.5, 0.1: 96.8, 1: 97.8, 10000: 98.0},
    "heterofl": {0.05: 79.0, 0.1: 88.7, 1: 98.5, 10000: 98.5},
}
CELL = re.compile(r"(?P<algorithm>.+)_alpha(?P<alpha>[0-9.e+-]+)$")


def finished_rows(cell: Path) -> list[dict] | None:
    try:
        rounds = json.loads((cell / "config.json").read_text())["rounds"]
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError):
        return None
    return rows if [r["round"] for r in rows] == list(range(1, rounds + 1)) else None


def collect(root: Path) -> dict[tuple[str, float], dict[int, list[dict]]]:
    """{(algorithm, alpha): {seed: rows}}."""
    runs: dict[tuple[str, float], dict[int, list[dict]]] = {}
    for seed_dir in sorted(root.glob("seed*")):
        for cell in sorted(p for p in seed_dir.iterdir() if p.is_dir()):
            match = CELL.match(cell.name)
            rows = finished_rows(cell) if match else None
            if rows:
                key = (match["algorithm"], float(match["alpha"]))
                runs.setdefault(key, {})[int(seed_dir.name[4:])] = rows
    return runs


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(by_seed: dict[int, list[dict]]) -> dict:
    def pct(field, rows):
        x = rows[-1].get(field)
        return None if x is None or math.isnan(x) else 100 * x

    curves = [[100 * r["global_accuracy"] for r in rows] for rows in by_seed.values()]
    mean_curve = [statistics.fmean(c) for c in zip(*curves, strict=True)]
    best = max(range(len(mean_curve)), key=mean_curve.__getitem__)
    finals = {k: [v for v in (pct(k, rows) for rows in by_seed.values()) if v is not None]
              for k in ("global_accuracy", "client_accuracy")}
    return {
        "seeds": sorted(by_seed),
        "rounds": len(mean_curve),
        "global_curve_mean": mean_curve,
        "global_curves": {str(s): c for s, c in zip(by_seed, curves, strict=True)},
        "global_final": _mean_std(finals["global_accuracy"]) if finals["global_accuracy"] else None,
        "client_final": _mean_std(finals["client_accuracy"]) if finals["client_accuracy"] else None,
        "best_round": best + 1,
        "best": mean_curve[best],
        "seconds_per_round": statistics.median(r["seconds"] for rows in by_seed.values() for r in rows[1:]),
    }


def _fmt(ms) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def table(summaries: dict[tuple[str, float], dict]) -> str:
    lines = [
        "| α | method | seeds | global, last (%) | best of mean curve (round) | paper global | clients, last (%) | paper clients | s / round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {a: i for i, a in enumerate(ALGORITHMS)}
    for algorithm, alpha in sorted(summaries, key=lambda k: (k[1], order.get(k[0], len(order)), k[0])):
        s = summaries[algorithm, alpha]
        paper_g = PAPER_GLOBAL.get(algorithm, {}).get(alpha)
        paper_c = PAPER_CLIENT.get(algorithm, {}).get(alpha)
        lines.append(
            f"| {alpha:g} | {algorithm} | {len(s['seeds'])} | {_fmt(s['global_final'])} "
            f"| {s['best']:.2f} ({s['best_round']}) | {paper_g if paper_g is not None else '-'} "
            f"| {_fmt(s['client_final'])} | {f'≈{paper_c}' if paper_c is not None else '-'} "
            f"| {s['seconds_per_round']:.1f} |"
        )
    return "\n".join(lines)


def plot(summaries, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    color = {a: plt.cm.tab10(i) for i, a in enumerate(ALGORITHMS)}
    for alpha in sorted({alpha for _, alpha in summaries}):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for algorithm in [a for a in ALGORITHMS if (a, alpha) in summaries]:
            s = summaries[algorithm, alpha]
            x = range(1, s["rounds"] + 1)
            ax.plot(x, s["global_curve_mean"], marker=".", color=color[algorithm],
                    label=f"{algorithm} ({len(s['seeds'])} seed{'s' * (len(s['seeds']) > 1)})")
            if len(s["seeds"]) > 1:
                curves = list(s["global_curves"].values())
                ax.fill_between(x, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)],
                                color=color[algorithm], alpha=0.2)
        ax.set(title=f"MNIST, α = {alpha:g}, paper's 20 clients", xlabel="round", ylabel="global accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = out / f"curves_alpha{alpha:g}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, help="directory for results.md, results.json and the curves")
    args = parser.parse_args()
    runs = collect(args.root)
    if not runs:
        raise SystemExit(f"no finished runs under {args.root}: run benchmarks/paper_table_mnist.sh first")
    summaries = {key: summarize(by_seed) for key, by_seed in runs.items()}
    text = table(summaries)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(
            json.dumps({f"{a}_alpha{alpha:g}": s for (a, alpha), s in summaries.items()}, indent=1))
        for path in plot(summaries, args.out):
            print("wrote", path)


if __name__ == "__main__":
    main()
