"""Fuzzing the config loader and the command line: every rejected input is a one-paragraph
message and exit status 2, never a traceback."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae.cli import main
from pyro_vae.config import ConfigError, ExperimentConfig, apply_overrides

SECTIONS = {name: [g.name for g in dataclasses.fields(section)] for name, section in vars(ExperimentConfig()).items()}
keys = st.one_of(
    st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]),
    st.text(min_size=0, max_size=20),
)
values = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["true", "false", "[1,2]", "400,400", "", "nan", "-1", "0", "cuda:x", "mean_field"]),
)
overrides = st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=15), max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(overrides)
def test_overrides_are_accepted_or_rejected_with_a_config_error(items):
    try:
        cfg = apply_overrides(ExperimentConfig(), items)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
    else:
        assert isinstance(cfg, ExperimentConfig)


@settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(overrides)
def test_config_command_never_shows_a_traceback(capsys, items):
    capsys.readouterr()  # the fixture lives across hypothesis' examples: start empty
    argv = ["config"] + [a for item in items for a in ("--set", item)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own rejection (e.g. a value that looks like an option)
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert "pyro-vae config: error: " in err and "Traceback" not in err
