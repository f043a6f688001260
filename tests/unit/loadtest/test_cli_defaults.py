"""The load tools' options are derived from their configs: every default is the dataclass's own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from parm.cli import build_parser
from parm.errors import ConfigError
from parm.loadtest.cli import BENCH_OPTIONS, SOAK_OPTIONS, from_options
from parm.loadtest.configs import BenchConfig, BenchModelSpec, LoadtestConfig, SoakConfig


@pytest.mark.parametrize(("command", "spec"), [("bench", BenchConfig), ("soak", SoakConfig)])
def test_no_option_given_builds_the_configs_own_defaults(command, spec):
    args = build_parser().parse_args([command])
    assert from_options(BenchModelSpec, args) == BenchModelSpec()
    assert from_options(spec, args, model_spec=BenchModelSpec()) == spec()


def test_options_reach_the_config_with_the_fields_types():
    args = build_parser().parse_args(
        ["bench", "--rate", "12.5", "--schemes", "equal,parm", "--sweep-rates", "5,80", "--ks", "2,3", "--rebuild"]
    )
    config = from_options(BenchConfig, args, model_spec=from_options(BenchModelSpec, args))
    assert (config.rate, config.schemes, config.sweep_rates, config.rebuild) == (
        12.5,
        ("equal", "parm"),
        (5.0, 80.0),
        True,
    )
    assert config.model_spec.ks == (2, 3)
    assert isinstance(config.out_dir, Path)


@pytest.mark.parametrize(("options", "spec"), [(BENCH_OPTIONS, BenchConfig), (SOAK_OPTIONS, SoakConfig)])
def test_every_option_names_a_field(options, spec):
    names = {f.name for f in dataclasses.fields(spec)}
    assert {name for _, name, _ in options} <= names


def test_a_bad_value_is_refused_by_the_config():
    args = build_parser().parse_args(["bench", "--starve", "sometimes"])
    with pytest.raises(ConfigError, match="starve must be"):
        from_options(BenchConfig, args, model_spec=from_options(BenchModelSpec, args))


def test_the_loadtest_options_are_the_configs_too():
    args = build_parser().parse_args(["loadtest", "-u", "3", "-t", "5", "--model", "digits"])
    config = from_options(LoadtestConfig, args)
    assert (config.users, config.duration_s, config.model) == (3, 5.0, "digits")
    assert dataclasses.replace(config, users=8, duration_s=30.0, model="digits_coded") == LoadtestConfig()
