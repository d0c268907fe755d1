"""Random invalid configs through the CLI: exit 2, one line naming the field, no traceback,
nothing written. Values are drawn per field type from pools that are invalid for EVERY field
of that type (so a draw can never start a real run)."""

import random
import subprocess
import sys
from pathlib import Path

import pytest

from fedconv_jax.cli import main
from fedconv_jax.config import (
    ALIASES,
    ConfigError,
    apply_overrides,
    default_config,
    get_field,
    leaf_fields,
    load_config,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.py")

INVALID = {
    bool: ["maybe", "2", "-1", "nan", "", "yes please", "[True]"],
    int: ["abc", "1.5", "nan", "inf", "", "-7", "-1", "4294967296", "1e3", "(1,)", "0x"],
    float: ["nan", "inf", "-inf", "-1e9", "abc", "", "1e400", "-0.5", "(0.1,)"],
    str: ["bogus", "", "CNN ", "None", "0", "nan"],
    tuple: ["(", "abc", "('a', 'b')", "(-1.0, 2.0)", "()", "(1e400,)", "((1,),)", "(nan,)", "[True, False]", "(" * 200],
}


def _kind(value):
    return tuple if isinstance(value, tuple | list) else type(value)


FREE_FORM = {"data_dir"}  # any string is a valid path; a missing data set is tested in test_data_sources
VALID_HERE = {"data_seed": {"-1"}}  # pool values that this field allows (-1: "use seed")


class _Defaults:
    """Every settable field's default by dotted path (sections and aliases included)."""

    def __init__(self):
        self.config = default_config()

    def __getitem__(self, field):
        return get_field(self.config, field)


def _fields():
    defaults = _Defaults()
    return sorted(set(leaf_fields(defaults.config)) - FREE_FORM), defaults


def _draws(seed: int, n: int):
    """n cases of 1-3 (field, invalid value) picks, plus stray and unknown arguments."""
    rng = random.Random(seed)
    fields, defaults = _fields()
    cases = []
    for _ in range(n):
        picks = {}
        for field in rng.sample(fields, rng.choice([1, 1, 2, 3])):
            pool = [v for v in INVALID[_kind(defaults[field])] if v not in VALID_HERE.get(field, ())]
            picks[field] = rng.choice(pool)
        cases.append([f"--config.{f}={v}" for f, v in picks.items()])
    cases += [["--config.no_such_field=1"], ["--config.rounds"], ["--config.=3"], ["--config.seed=1", "--config.poisoned_clients=11"]]
    return cases


def test_every_default_field_has_an_invalid_pool_and_defaults_validate():
    fields, defaults = _fields()
    validate(defaults.config)
    assert {_kind(defaults[f]) for f in fields} <= set(INVALID)
    assert "fedconv.filters.hidden" in fields and "fedconv.keep_best_global" in fields  # reachable


@pytest.mark.parametrize("chunk", range(4))
def test_fuzzed_invalid_configs_exit_2_in_process(tmp_path, capsys, chunk):
    cases = _draws(seed=chunk, n=30)
    for i, overrides in enumerate(cases):
        workdir = tmp_path / f"w{i}"
        try:
            code = main(["run", "--config", SMOKE, "--workdir", str(workdir), "--quiet", *overrides])
        except SystemExit as exit_:  # the override parser exits like argparse does
            code = exit_.code
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert code == 2, (overrides, err)
        assert len(err.splitlines()) == 1 and err.startswith("fedconv-jax: error: "), (overrides, err)
        assert "Traceback" not in err and captured.out == ""
        assert not workdir.exists(), overrides


def test_invalid_config_errors_name_the_field():
    """Single-field cases: the message names exactly the field that was broken."""
    rng = random.Random(7)
    fields, defaults = _fields()
    for field in fields:
        value = rng.choice(INVALID[_kind(defaults[field])])
        config = load_config(SMOKE)
        with pytest.raises(ConfigError) as info:
            apply_overrides(config, {field: value})
            validate(config)
        assert f"config.{info.value.field}=" in str(info.value)
        # Cross-field checks may blame the partner field (e.g. num_clients vs shrink_ratios).
        partners = {"num_clients": "shrink_ratios", "filter_lr": "filter_lr_min"}
        # An alias is reported under the field it stands for (filter_init: fedconv.filters.init).
        assert info.value.field in (ALIASES.get(field, field), partners.get(field)), (field, value, str(info.value))


@pytest.mark.parametrize(
    "overrides",
    [["--config.dropout_rate=nan", "--config.poison_mode=flip"], ["--config.keep_checkpoints=0"]],
)
def test_invalid_config_via_subprocess(tmp_path, overrides):
    workdir = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fedconv_jax.cli", "run", "--config", SMOKE, "--workdir", str(workdir), *overrides],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedconv-jax: error: config."), proc.stderr
    assert not workdir.exists()
