"""`fedconv-jax compare`: every combination runs once, summaries are written, finished runs are reused."""

import csv
import json

import pytest

from fedconv_jax.cli import main
from fedconv_jax.compare import combination_config, is_finished
from fedconv_jax.config import load_config

TINY = """
from fedconv_jax.config import default_config

def get_config():
    c = default_config()
    c.num_clients = 4
    c.shrink_ratios = (1.0, 1.0, 0.5, 0.5)
    c.rounds = 1
    c.local_epochs = 1
    c.pretrain_epochs = c.compress_epochs = c.dilate_epochs = c.aggregate_epochs = 1
    c.phase_timing = False
    return c
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return str(path)


def test_compare_writes_tables_and_skips_finished_runs(tmp_path, tiny, capsys):
    workdir = tmp_path / "cmp"
    args = ["compare", "--config", tiny, "--algorithms", "heterofl,standalone", "--alphas", "1,0.1",
            "--workdir", str(workdir), "--quiet"]
    assert main(args) == 0
    runs = sorted(p.name for p in workdir.iterdir() if p.is_dir())
    assert runs == ["heterofl_alpha0.1", "heterofl_alpha1", "standalone_alpha0.1", "standalone_alpha1"]
    with (workdir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["algorithm"], r["alpha"]) for r in rows] == [
        ("heterofl", "1.0"), ("standalone", "1.0"), ("heterofl", "0.1"), ("standalone", "0.1")
    ]
    for r in rows:
        metrics = [json.loads(line) for line in (workdir / f"{r['algorithm']}_alpha{float(r['alpha']):g}" / "metrics.jsonl").open()]
        assert len(metrics) == 1
        assert float(r["final_client_accuracy"]) == pytest.approx(metrics[-1]["client_accuracy"])
        assert set(json.loads(r["tier_accuracy"])) == {"1", "0.5"}
    assert rows[1]["final_global_accuracy"] == ""  # standalone has no global model
    report = (workdir / "results.md").read_text()
    assert "| heterofl |" in report and "α=0.1" in report and "SR 0.5" in report
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("*/metrics.jsonl")}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished runs were not rerun
    capsys.readouterr()

    # What counts as finished: every round, written by a run of the same config.
    config = combination_config(load_config(tiny), "standalone", 1.0)
    directory = workdir / "standalone_alpha1"
    assert is_finished(directory, config)
    config.rounds = 2
    assert not is_finished(directory, config)  # a longer run is wanted
    config.rounds, config.local_lr = 1, 0.5
    assert not is_finished(directory, config)  # another config
    (directory / "metrics.jsonl").write_text("")
    assert not is_finished(directory, combination_config(load_config(tiny), "standalone", 1.0))


@pytest.mark.parametrize(
    "flag, value, message",
    [("--algorithms", "heterofl,lottery", "--algorithms='lottery'"), ("--alphas", "1,-2", "--alphas='1,-2'"),
     ("--alphas", "one", "--alphas='one'")],
)
def test_bad_lists_exit_2_with_one_line(tmp_path, tiny, capsys, flag, value, message):
    args = {"--algorithms": "heterofl", "--alphas": "1"}
    args[flag] = value
    argv = ["compare", "--config", tiny, "--workdir", str(tmp_path / "o")]
    for k, v in args.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "allowed" in err
    assert not (tmp_path / "o").exists()
