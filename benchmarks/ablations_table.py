"""Issue 18's ablation table and curves from the runs of benchmarks/ablations_mnist.sh.

    python benchmarks/ablations_table.py runs/ablations_mnist [--out benchmarks/results/ablations_mnist]

Reads ROOT/a<alpha>/<variant>/metrics.jsonl; prints a markdown table (global accuracy at
rounds 1, 5 and the last, the best round, final minus best, the clients' mean accuracy, median
seconds per round) and writes results.md, results.json and curves.png (global accuracy per
round, one panel per alpha) to --out. Unfinished runs are shown with the rounds they have.
Variants already in --out's results.json and not under ROOT (runs of an earlier sitting) are
kept as they are there.
"""

import argparse
import json
import statistics
from pathlib import Path

from fedconv_jax.report import ReportError, read_rows

LABELS = {
    "fc_model": "FedConv, the paper's form (dilation_target=model, aggregation_scope=all; the old default)",
    "fc_update": "dilation_target=update, aggregation_scope=all",
    "fc_update_holders": "update + aggregation_scope=holders (the new default)",
    "fc_holders_nocompress": "holders, compression tuning off (slicing)",
    "fc_holders_nodilate": "holders, dilation tuning off",
    "fc_holders_meanagg": "holders, learned aggregation off (mean over holders)",
    "fc_holders_alloff": "holders, all three off (HeteroFL's rule + FedConv pre-training)",
    "fc_update_nocompress": "update, compression tuning off (slicing)",
    "fc_update_nodilate": "update, dilation tuning off (global fill)",
    "fc_update_meanagg": "update, learned aggregation off (weighted mean)",
    "fc_update_alloff": "update, all three off",
    "fc_model_alloff": "model, all three off (zero-padding, mean)",
    "heterofl_pre": "HeteroFL + pre-training on D",
    "fedrolex_pre": "FedRolex + pre-training on D",
    "fedavg_full_pre": "FedAvg-full + pre-training on D (all clients at SR 1)",
}


def collect(root: Path) -> dict[str, dict[str, list[dict]]]:
    """{alpha: {variant: rows}} for every run directory under ROOT."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for alpha_dir in sorted(root.glob("a*")):
        for run_dir in sorted(p for p in alpha_dir.iterdir() if p.is_dir()):
            try:
                runs.setdefault(alpha_dir.name[1:], {})[run_dir.name] = read_rows(run_dir)
            except ReportError:
                continue
    return runs


def summary(rows: list[dict]) -> dict:
    acc = [100 * r["global_accuracy"] for r in rows]
    best = max(range(len(acc)), key=acc.__getitem__)
    return {
        "rounds": len(acc),
        "global": acc,
        "best_round": best + 1,
        "best": acc[best],
        "final_minus_best": acc[-1] - acc[best],
        "clients_final": 100 * rows[-1]["client_accuracy"],
        # round 1 carries the compile and the pre-training
        "seconds_per_round": statistics.median(r["seconds"] for r in rows[1:]) if len(rows) > 1 else None,
    }


def table(summaries) -> str:
    lines = [
        "| α | variant | rounds | global r1 / r5 / last (%) | best (round) | last − best | clients, last (%) | s / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alpha in sorted(summaries, key=float, reverse=True):
        for name in [v for v in LABELS if v in summaries[alpha]] + sorted(set(summaries[alpha]) - set(LABELS)):
            s = summaries[alpha][name]
            g = s["global"]
            mid = f"{g[4]:.2f}" if len(g) >= 5 else "-"
            sec = f"{s['seconds_per_round']:.1f}" if s["seconds_per_round"] else "-"
            lines.append(
                f"| {alpha} | {LABELS.get(name, name)} | {s['rounds']} | {g[0]:.2f} / {mid} / {g[-1]:.2f} "
                f"| {s['best']:.2f} ({s['best_round']}) | {s['final_minus_best']:+.2f} | {s['clients_final']:.2f} | {sec} |"
            )
    return "\n".join(lines)


def plot(summaries, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted(summaries, key=float, reverse=True)
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4.5), squeeze=False)
    names = sorted({n for v in summaries.values() for n in v}, key=lambda n: (n not in LABELS, list(LABELS).index(n) if n in LABELS else n))
    color = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}  # one colour per variant in every panel
    for ax, alpha in zip(axes[0], alphas, strict=True):
        for name in [n for n in names if n in summaries[alpha]]:
            acc = summaries[alpha][name]["global"]
            style = "-" if name.startswith("fc_") else "--"
            ax.plot(range(1, len(acc) + 1), acc, style, marker=".", color=color[name], label=LABELS.get(name, name))
        ax.set(title=f"MNIST, α = {alpha}", xlabel="round", ylabel="global accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, help="directory for results.md, results.json and curves.png")
    args = parser.parse_args()
    runs = collect(args.root)
    summaries = {}
    if args.out and (args.out / "results.json").exists():
        summaries = json.loads((args.out / "results.json").read_text())
    for alpha, variants in runs.items():
        for name, rows in variants.items():
            summaries.setdefault(alpha, {})[name] = summary(rows)
    if not summaries:
        raise SystemExit(f"no runs under {args.root}: run benchmarks/ablations_mnist.sh first")
    text = table(summaries)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        (args.out / "results.json").write_text(json.dumps(summaries, indent=1))
        plot(summaries, args.out / "curves.png")


if __name__ == "__main__":
    main()
