"""Where a run's accuracy goes, phase by phase: `fedconv-jax report RUN_DIR`.

FedConv's rows carry, per round, the held-out accuracy (on D's held-out slice) of what each
learned step starts from and of what it selects:
- compression, per tier: this round's compressed sub-model with the carried-over filters
  (`holdout_before`) and after tuning them;
- dilation, per tier (mean over the tier's clients): each upload dilated with the client's
  carried-over filters and after tuning them;
- aggregation: the aggregate with the carried-over weights and after tuning them;
and the epoch each loop selected (0: tuning changed nothing). A drift that one phase causes
shows as that phase's "after" falling below its "before", or as the global curve following it.
"""

import json
import math
from pathlib import Path

PHASES = ("compress", "dilate", "aggregate")


class ReportError(ValueError):
    pass


def read_rows(run_dir: Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl (a torn last line is skipped); ReportError if none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: RUN_DIR must be the --workdir of a `fedconv-jax run`")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        raise ReportError(f"{path} holds no rows yet")
    return rows


def _mean(value) -> float:
    values = [v for v in (value if isinstance(value, list) else [value]) if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def phase_series(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """{"compress/0.5": {"before": [...], "after": [...], "best_epoch": [...]}, ...}, one value
    per round (dilation: the mean over the tier's clients in the round's row)."""
    series: dict[str, dict[str, list[float]]] = {}
    for i, row in enumerate(rows):
        details = row.get("details") or {}
        for key, value in details.items():
            phase, _, rest = key.partition("/")
            if phase not in PHASES:
                continue
            name, _, metric = rest.rpartition("/")
            label = f"{phase}/{name}" if name else phase
            field = {"holdout_before": "before", "holdout_accuracy": "after", "best_epoch": "best_epoch"}.get(metric)
            if field is None:
                continue
            column = series.setdefault(label, {}).setdefault(field, [math.nan] * len(rows))
            column[i] = _mean(value)
    return dict(sorted(series.items()))


def summary_table(rows: list[dict], series: dict) -> str:
    """Markdown: per round, global accuracy and each phase's after - before (points)."""
    labels = [k for k, v in series.items() if "before" in v and "after" in v]
    head = "| round | global | " + " | ".join(f"{k} gain" for k in labels) + " |"
    lines = [head, "|" + "---|" * (2 + len(labels))]
    for i, row in enumerate(rows):
        gains = [100 * (series[k]["after"][i] - series[k]["before"][i]) for k in labels]
        cells = [str(row["round"]), f"{100 * row['global_accuracy']:.2f}"] + [f"{g:+.2f}" for g in gains]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_phases(rows: list[dict], series: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    panels = ["global", *[p for p in PHASES if any(k.split("/")[0] == p for k in series)], "epochs"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "global":
            ax.plot(rounds, [100 * r["global_accuracy"] for r in rows], "k-o", ms=3, label="global (test)")
            client = [r.get("client_accuracy") for r in rows]
            if any(c is not None for c in client):
                ax.plot(rounds, [100 * c if c is not None else math.nan for c in client], "-s", ms=3, label="client (own test)")
            ax.set_title("accuracy")
        elif panel == "epochs":
            for label, cols in series.items():
                if "best_epoch" in cols:
                    ax.plot(rounds, cols["best_epoch"], "-o", ms=3, label=label)
            ax.set_title("selected tuning epoch (0 = unchanged)")
        else:
            for j, (label, cols) in enumerate(k for k in series.items() if k[0].split("/")[0] == panel):
                color = f"C{j}"
                ax.plot(rounds, [100 * v for v in cols.get("after", [])], "-o", ms=3, color=color, label=f"{label} after")
                ax.plot(rounds, [100 * v for v in cols.get("before", [])], "--", color=color, alpha=0.6, label=f"{label} before")
            ax.set_title(f"{panel}: held-out accuracy")
        ax.set_xlabel("round")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dir: Path, out: Path | None = None) -> tuple[Path, str]:
    """Draws RUN_DIR's phase curves to `out` (default RUN_DIR/phases.png); returns (png, table)."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    series = phase_series(rows)
    algorithm = rows[0].get("algorithm", "?")
    if not series:
        table = f"{algorithm}: no phase metrics in {run_dir / 'metrics.jsonl'} (only FedConv's learned steps have them)"
    else:
        table = summary_table(rows, series)
    path = Path(out) if out else run_dir / "phases.png"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"--out {path}: cannot create its folder ({err.strerror})") from None
    plot_phases(rows, series, path, f"{run_dir.name}: {algorithm}, {len(rows)} rounds")
    return path, table


__all__ = ["ReportError", "phase_series", "read_rows", "summary_table", "write_report"]
