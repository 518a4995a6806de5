import copy
import os
import shutil
import subprocess

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import compose, parse_config
from pipeline.errors import ConfigError
from tests.conftest import BIN, REPO, write_params


def test_params_yaml_is_the_composition_of_conf():
    assert (REPO / "params.yaml").read_text() == compose()


def test_compose_applies_overrides():
    text = compose(["trainer.max_epochs=3", "experiments.lstm_airline.model.cell=gru"])
    cfg = parse_config(__import__("yaml").safe_load(text))
    assert cfg.trainer.max_epochs == 3
    assert cfg.experiments["lstm_airline"].model.cell == "gru"


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "trainer=nope",
            "conf/: In 'config': Could not find 'trainer/nope'; available options in 'trainer': "
            "cpu, ddp,",
        ),
        ("nonexist=1", "conf/: Could not override 'nonexist'; to append to your config use +"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override, expected):
    """Hydra's message loses its line breaks and config search path, not its hint."""
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def _error(raw) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    return str(err.value)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (
            ("experiments", "lstm_airline", "model", "hidden_sise"),
            3,
            "experiments.lstm_airline.model.hidden_sise: unknown key",
        ),
        (
            ("experiments", "lstm_airline", "model", "hidden_size"),
            "big",
            "experiments.lstm_airline.model.hidden_size: Input should be a valid integer",
        ),
        (
            ("experiments", "lstm_airline", "validate", "int8_max_drop"),
            -0.1,
            "experiments.lstm_airline.validate.int8_max_drop: Input should be greater than or "
            "equal to 0",
        ),
        (
            ("experiments", "lstm_airline", "model", "cell"),
            "rnn",
            "experiments.lstm_airline.model.cell: Input should be 'lstm', 'gru' or 'peephole'",
        ),
        (
            ("experiments", "lstm_airline", "model", "name"),
            "transformer",
            "experiments.lstm_airline.model: Input tag 'transformer' found using 'name' does not "
            "match any of the expected tags: 'lstm'",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "data", "name"),
            "NoSuchSet",
            "experiments.lstm_italypowerdemand.data.name: unknown UCR data set 'NoSuchSet'; "
            "allowed: ",
        ),
        (
            ("experiments", "lstm_airline", "data", "source"),
            "s3",
            "experiments.lstm_airline.data: Input tag 's3' found using 'source' does not match",
        ),
        (("trainer", "precision"), "fp8", "trainer.precision: Input should be '32-true'"),
        (("trainer", "strategy"), "ddp_spawn", "trainer.strategy: ddp_spawn fits in child"),
        (("trainer", "strategy"), "ddp_fork", "trainer.strategy: ddp_fork fits in child"),
        (
            ("experiments", "lstm_airline", "fit", "lr"),
            float("inf"),
            "experiments.lstm_airline.fit.lr: Input should be a finite number",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "model", "level_norm"),
            True,
            "experiments.lstm_italypowerdemand: model.level_norm applies to forecasting only",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "model", "scale_norm"),
            True,
            "experiments.lstm_italypowerdemand: model.scale_norm applies to forecasting only",
        ),
        (
            ("experiments", "lstm_airline", "model", "series_norm"),
            True,
            "experiments.lstm_airline: model.series_norm applies to classification only",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "model", "filter_temperature"),
            0,
            "experiments.conv_lstm_moving_digits.model.filter_temperature: Input should be "
            "greater than 0",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "model", "motion_filter"),
            0,
            "experiments.conv_lstm_moving_digits.model: filter_temperature applies with a "
            "motion_filter only",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "model", "patch_size"),
            3,
            "experiments.conv_lstm_moving_digits: model.patch_size: 3 must divide data.frame_size "
            "(16)",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "model", "series_norm"),
            "ture",
            "experiments.lstm_italypowerdemand.model.series_norm: must be true, false or auto "
            "(got 'ture')",
        ),
        (
            ("experiments", "lstm_airline", "model", "scale_norm"),
            "yes",
            "experiments.lstm_airline.model.scale_norm: must be true, false or auto (got 'yes')",
        ),
        (
            ("experiments", "lstm_airline", "model", "season_norm"),
            24,
            "experiments.lstm_airline: model.season_norm: 24 needs windows of 2 periods or more "
            "(data.window is 36)",
        ),
        (
            ("experiments", "lstm_airline", "model", "season_norm"),
            1,
            "experiments.lstm_airline.model.season_norm: must be 0 (off) or a period of 2 steps "
            "or more (got 1)",
        ),
        (
            ("experiments", "lstm_airline", "data"),
            {
                "source": "csv",
                "path": "x.csv",
                "task": "forecast",
                "features": ["load", "temp"],
                "future": ["temp"],
            },  # fmt: skip
            "column 'temp' has two roles: features and future",
        ),
        (
            ("experiments", "lstm_airline", "data"),
            {
                "source": "csv",
                "path": "x.csv",
                "task": "forecast",
                "features": ["load"],
                "static": ["series_id"],
            },  # fmt: skip
            "column 'series_id' has two roles: id_column and static",  # prepare trained on it
        ),
        (
            ("experiments", "lstm_italypowerdemand", "data"),
            {
                "source": "csv",
                "path": "x.csv",
                "task": "classification",
                "features": ["x", "y"],
                "label": "y",
            },  # fmt: skip
            "column 'y' has two roles: features and label",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "data"),
            {
                "source": "csv",
                "path": "x.csv",
                "task": "classification",
                "features": ["x"],
                "label": "y",
                "static": ["size"],
            },  # fmt: skip
            "future, static and calendar apply to forecasting only",
        ),
        (
            ("experiments", "lstm_airline", "data"),
            {
                "source": "csv",
                "path": "x.csv",
                "task": "forecast",
                "features": ["load"],
                "calendar": ["fortnight"],
            },  # fmt: skip
            "calendar.0: Input should be 'hour', 'day_of_week', 'day_of_month', 'month' or "
            "'day_of_year'",
        ),
        (
            ("experiments", "lstm_airline", "fit", "teacher_forcing"),
            0.5,
            "experiments.lstm_airline: fit.teacher_forcing applies to the frames task",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "fit", "teacher_forcing"),
            1.5,
            "experiments.conv_lstm_moving_digits.fit.teacher_forcing: Input should be less than "
            "or equal to 1",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "fit", "precision"),
            "bf16",
            "experiments.conv_lstm_moving_digits.fit.precision: Input should be 'auto', '32-true', "
            "'16-mixed' or 'bf16-mixed'",
        ),
        (
            ("experiments", "attention_lstm_airline", "model", "max_steps"),
            64,
            "experiments.attention_lstm_airline: model.max_steps applies to classification only",
        ),
        (
            ("experiments", "conv_lstm_moving_digits", "fit", "jitter"),
            0.03,
            "experiments.conv_lstm_moving_digits: fit.jitter applies to classification and "
            "forecasting only",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "fit", "label_smoothing"),
            1.0,
            "experiments.lstm_italypowerdemand.fit.label_smoothing: Input should be less than 1",
        ),
        (
            ("experiments", "lstm_italypowerdemand", "validate"),
            {"beat_classical": True},
            "experiments.lstm_italypowerdemand: validate.beat_classical needs a forecast task",
        ),
        (  # lax pydantic read it as 1 and trained one model
            ("experiments", "lstm_italypowerdemand", "fit", "ensemble"),
            True,
            "experiments.lstm_italypowerdemand.fit.ensemble: a number, not true (got True)",
        ),
        (
            ("experiments", "lstm_airline", "fit", "lr"),
            False,
            "experiments.lstm_airline.fit.lr: a number, not false (got False)",
        ),
        (  # MLflow refused it at release (exit 6); a {field} other than {exp} was a KeyError
            ("release", "model_name"),
            "team/{exp}",
            "release.model_name: / cannot be in a registered model's name",
        ),
        (  # the default recipe was trained instead, silently
            ("experiments", "lstm_italypowerdemand", "model"),
            None,
            "experiments.lstm_italypowerdemand.model: Input should be",
        ),
        (  # the packaged data was read, silently
            ("experiments", "lstm_airline", "data", "path"),
            "data/raw/mine.csv",
            "experiments.lstm_airline.data.path: applies to csv and parquet sources",
        ),
        (  # these failed in the stage, exit 1 "unexpected"
            ("seed",),
            -1,
            "seed: Input should be greater than or equal to 0",
        ),
        (
            ("experiments", "lstm_airline", "model", "hidden_size"),
            10**23,
            "experiments.lstm_airline.model.hidden_size: Input should be less than or equal to",
        ),
        (
            ("tracking", "experiment_name"),
            "",
            "tracking.experiment_name: String should have at least 1 character",
        ),
        (
            ("release", "model_name"),
            "{exp}-{version}",
            "release.model_name: must hold {exp}, the experiment's name, and no other {field}",
        ),
    ],
)
def test_invalid_config_names_the_key(params, path, value, expected):
    raw = copy.deepcopy(params)
    if path[-2:] == ("model", "hidden_size"):  # an experiment named as a model or source
        raw["experiments"]["lstm"] = raw["experiments"].pop("lstm_airline")
        path, expected = (
            ("experiments", "lstm", *path[2:]),
            expected.replace("lstm_airline", "lstm"),
        )
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    error = _error(raw)
    assert expected in error and error.count("(got") <= 1, error


@pytest.mark.parametrize(
    "exp, model, expected",
    [
        (
            "lstm_airline",
            {"name": "conv_lstm"},
            "experiments.lstm_airline: model.name 'conv_lstm' does not support the 'forecast' task "
            "of data.source 'airline'; it supports: frames",
        ),
        (
            "conv_lstm_moving_digits",
            {"name": "lstm"},
            "experiments.conv_lstm_moving_digits: model.name 'lstm' does not support the 'frames' "
            "task of data.source 'moving_digits'; it supports: classification, forecast",
        ),
        (
            "conv_lstm_moving_digits",
            {"name": "conv_lstm", "kernel_size": 4},
            "experiments.conv_lstm_moving_digits.model.kernel_size: must be odd so that 'same' "
            "padding keeps the frame size (got 4)",
        ),
    ],
)
def test_model_must_fit_the_data(params, exp, model, expected):
    params["experiments"][exp]["model"] = model
    assert _error(params).endswith(expected)  # once, and no block appended: "(got {...})"


def test_frame_sizes_are_checked(params):
    params["experiments"]["conv_lstm_moving_digits"]["data"]["digit_size"] = 12
    assert "experiments.conv_lstm_moving_digits.data: digit_size (12) must be a multiple of 8" in (
        _error(params)
    )


def test_unknown_ucr_set_lists_the_shipped_ones(params):
    params["experiments"]["lstm_italypowerdemand"]["data"]["name"] = "Nope"
    message = _error(params)
    assert "ItalyPowerDemand" in message and "GunPoint" in message


def test_cli_exits_nonzero_with_one_line_naming_the_key(workdir, params, capsys):
    params["experiments"]["lstm_airline"]["fit"]["lr"] = -1
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "experiments.lstm_airline.fit.lr: Input should be greater than 0" in err
    assert not (workdir / "data").exists()


def test_an_experiment_name_too_long_for_a_file_name_is_refused(params):
    params["experiments"]["x" * 65] = params["experiments"].pop("lstm_airline")
    assert "should have at most 64 characters" in _error(params)


def test_cli_unknown_experiment(workdir, params, capsys):
    write_params(params)
    assert main(["train", "lstm_nothing"]) == 2
    assert "experiments.lstm_nothing: no such experiment" in capsys.readouterr().err
    assert main(["train", "two\nlines"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "experiments.two\\nlines: no such experiment" in err


def test_a_stage_run_in_a_subfolder_of_the_project_names_the_project(
    workdir, params, capsys, monkeypatch
):
    """It said `params.yaml: not found (run lstm-pipeline compose ...)`, and following that
    wrote data/params.yaml and then data/data/prepared/."""
    write_params(params)
    (workdir / "dvc.yaml").write_text("stages: {}\n")
    (workdir / "data").mkdir()
    monkeypatch.chdir(workdir / "data")
    for command in (["train", "lstm_airline"], ["compose"]):
        assert main(command) == 2
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(f"not found here; run it in the project's folder, {workdir}")
        )
    assert list((workdir / "data").iterdir()) == []


@pytest.mark.parametrize(
    "damage, expected",
    [
        (("trainer/cpu.yaml", b"\tx: 1\n"), "conf/trainer/cpu.yaml: line 13, column 1: found "),
        (("trainer/cpu.yaml", b"# caf\xe9\n"), "conf/trainer/cpu.yaml: line 13: byte 0xe9 is"),
        (("config.yaml", b"  - config\n"), "conf/: the defaults lists include each other"),
        (None, "conf/config.yaml: not found"),  # the package's conf/ was composed, silently
        (
            ("trainer/cpu.yaml", b"steps: ${nope}\n"),  # it named no key
            "conf/: trainer.steps: Interpolation key 'nope' not found",
        ),
    ],
)
def test_a_broken_conf_is_one_line_naming_the_file(workdir, capsys, damage, expected):
    """Each was exit 1, 'unexpected ScannerError' (RecursionError, UnicodeDecodeError)."""
    import shutil

    shutil.copytree(REPO / "conf", workdir / "conf")
    if damage is None:
        (workdir / "conf" / "config.yaml").rename(workdir / "conf" / "config.yml")
    elif damage[0] == "config.yaml":  # a defaults list that includes itself
        path = workdir / "conf" / "config.yaml"
        path.write_text(path.read_text().replace("defaults:\n", "defaults:\n  - config\n", 1))
    else:
        with open(workdir / "conf" / damage[0], "ab") as f:
            f.write(damage[1])
    assert main(["compose", "--check"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_a_number_yaml_and_dvc_read_differently_is_refused(workdir, capsys):
    """PyYAML (YAML 1.1) read `max_epochs: 0300` as 192, DVC (YAML 1.2) as 300."""
    text = (REPO / "params.yaml").read_text()
    line = text[: text.index("seed: 0\n")].count("\n") + 1
    (workdir / "params.yaml").write_text(text.replace("seed: 0\n", "seed: 010\n", 1))
    assert main(["train", "lstm_airline"]) == 2
    err = capsys.readouterr().err
    assert f"params.yaml: line {line}, column 9: '010' is 8 in YAML 1.1 and not for DVC" in err


@pytest.mark.parametrize(
    "task, key, value, expected",
    [
        ("classification", "transform", "log", "transform applies to forecasting only"),
        ("forecast", "label", "label", "label applies to classification only"),
        ("forecast", "max_length", 5, "max_length applies to classification only"),
        ("forecast", "val_fraction", 0.5, "val_fraction applies to classification only"),
    ],
)
def test_a_data_key_of_the_other_task_is_refused(params, task, key, value, expected):
    """Each was ignored without a word (the scaler fitted on raw values, no series refused)."""
    data = {"source": "csv", "path": "in.csv", "task": task, "features": ["x"], key: value}
    if task == "classification":
        data.setdefault("label", "y")
    params["experiments"]["lstm_airline"]["data"] = data
    assert f"experiments.lstm_airline.data: {expected}" in _error(params)


def test_a_forecast_configs_dump_reads_again(params):
    """A Tune trial reads the config dumped with every default: a forecaster's then held
    label: null, val_fraction: 0.2..., refused as keys of classification."""
    data = {"source": "csv", "path": "in.csv", "task": "forecast", "features": ["x"]}
    params["experiments"]["lstm_airline"]["data"] = data
    cfg = parse_config(params)
    assert parse_config(cfg.model_dump(by_alias=True)) == cfg


@pytest.mark.parametrize(
    "features, targets, expected",
    [
        (["load", "step"], [], "data: target 'step' is named as a column predict writes"),
        (["load", "load_lo50"], [], "data: target 'load_lo50' is named as a column predict writes"),
        (["load"], ["load", "load"], "data.targets: 'load' is listed twice"),
    ],
)
def test_a_target_predict_could_not_write_is_refused(params, features, targets, expected):
    """Each passed prepare, train, export and validate; then predict refused every input."""
    data = {"source": "csv", "path": "in.csv", "task": "forecast", "features": features,
            "targets": targets}  # fmt: skip
    params["experiments"]["lstm_airline"]["data"] = data
    assert f"experiments.lstm_airline.{expected}" in _error(params)


def test_compose_check_detects_stale_params(workdir, capsys):
    (workdir / "params.yaml").write_text("seed: 1\n")
    assert main(["compose", "--check"]) == 1
    first = (REPO / "params.yaml").read_text().splitlines()[0]
    assert f"(line 1: 'seed: 1', composed: {first!r})" in capsys.readouterr().err
    assert main(["compose"]) == 0
    assert main(["compose", "--check"]) == 0


def test_params_yaml_is_utf_8_whatever_the_locale(workdir, capsys):
    """Written in the locale's encoding (ISO-8859-1: exit 0, then every stage refused the
    file; ASCII: a traceback); `--check` of a non-UTF-8 file: `unexpected UnicodeDecodeError`."""
    shutil.copytree(REPO / "conf", workdir / "conf")
    config = workdir / "conf/config.yaml"
    config.write_text(config.read_text().replace("experiment_name: lstm-pipeline",
                                                 "experiment_name: modèle"))  # fmt: skip
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    proc = subprocess.run([BIN / "lstm-pipeline", "compose"], cwd=workdir, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "experiment_name: modèle" in (workdir / "params.yaml").read_text(encoding="utf-8")
    with open(workdir / "params.yaml", "ab") as params:
        params.write(b"# caf\xe9\n")
    last = len((workdir / "params.yaml").read_bytes().splitlines())
    assert main(["compose", "--check"]) == 2
    assert capsys.readouterr().err.endswith(f"params.yaml: line {last}: byte 0xe9 is not UTF-8\n")


def test_model_task_pairs_come_from_the_model_class(params, monkeypatch):
    from pipeline.config.models import AttentionLstmModel

    monkeypatch.setattr(AttentionLstmModel, "tasks", ("forecast",))
    params["experiments"]["lstm_italypowerdemand"]["model"] = {"name": "attention_lstm"}
    assert (
        "experiments.lstm_italypowerdemand: model.name 'attention_lstm' does not support the "
        "'classification' task of data.source 'ucr'; it supports: forecast"
    ) in _error(params)


@pytest.mark.parametrize("name", ["lstm", "attention_lstm", "conv_lstm"])
def test_model_defaults_live_in_conf_and_the_schema_only(name):
    import inspect

    from pipeline.config import CONF_DIR, parse_model
    from pipeline.models import REGISTRY

    shipped = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())
    assert shipped == parse_model({"name": name}).model_dump()
    params = inspect.signature(REGISTRY[name]).parameters.values()
    data = {"target_index", "future_size", "static_size"}  # a forecast's Task.model_kwargs
    defaults = [p.name for p in params if p.default is not p.empty and p.name not in data]
    assert not defaults, f"{name}: the nn.Module repeats defaults of {defaults}"


def test_an_experiment_that_sets_only_its_data_gets_the_tasks_default_recipe():
    from pipeline.config.recipes import RECIPES

    monthly = {"source": "airline", "window": 36, "season": 12}
    raw = {
        "only_data": {"data": {"source": "ucr", "name": "GunPoint"}},
        "fit_override": {"data": {"source": "ucr", "name": "GunPoint"}, "fit": {"ensemble": 5}},
        "swept": {"data": monthly, "model": {"hidden_size": 8}},
        "season_off": {"data": monthly, "model": {"season_norm": 0}},
        **{
            f"frames_{n}": {"data": {"source": "moving_digits", "frame_size": n}}
            for n in (24, 18, 15)
        },
        "frames_pixels": {"data": {"source": "moving_digits"}, "model": {"patch_size": 1}},
    }
    exps = parse_config({"experiments": raw}).experiments
    recipe = RECIPES["classification"]
    assert exps["only_data"].model.model_dump(include=set(recipe["model"])) == recipe["model"]
    assert exps["only_data"].fit.model_dump(include=set(recipe["fit"])) == recipe["fit"]
    assert exps["fit_override"].fit.ensemble == 5
    assert exps["fit_override"].fit.schedule == recipe["fit"]["schedule"]
    swept = exps["swept"]  # a sweep's best key on top of the forecasting recipe
    assert swept.model.name == "lstm" and swept.model.hidden_size == 8 and swept.model.level_norm
    # the season taken out of each window (a single series) and each window in its own std's
    # units (several): train decides both from the prepared data (tests/test_tasks.py)
    assert swept.model.season_norm == swept.model.scale_norm == "auto"
    # and its fit, bounded in updates: a user's thousands of windows trained for hours
    forecast_fit = RECIPES["forecast"]["fit"]
    assert swept.fit.model_dump(include=set(forecast_fit)) == forecast_fit
    assert forecast_fit["max_updates"] == 5000
    assert exps["season_off"].model.season_norm == 0
    # frames: patches of 4x4 pixels, or the largest size that divides the frame
    assert [exps[f"frames_{n}"].model.patch_size for n in (24, 18, 15)] == [4, 2, 1]
    assert exps["frames_pixels"].model.patch_size == 1


def test_an_invalid_data_block_of_a_default_recipe_is_named_alone(params):
    """Without valid data no recipe fills the model in: pydantic's "model: Field required" was
    a second, false error, and each error repeated the whole block it was given."""
    raw = copy.deepcopy(params)
    data = {
        "source": "csv",
        "path": "x.csv",
        "task": "forecast",
        "features": ["a"],
        "future": ["a"],
    }
    raw["experiments"]["new"] = {"data": data}
    err = _error(raw)
    assert err.endswith("experiments.new.data: column 'a' has two roles: features and future"), err


def test_a_bad_fit_of_a_default_recipe_is_named_alone(params):
    """`fit: null` beside data alone gave a false "model: Field required" as well."""
    raw = copy.deepcopy(params)
    raw["experiments"]["new"] = {"data": {"source": "airline"}, "fit": None}
    assert _error(raw).endswith(
        "invalid config: experiments.new.fit: Input should be a valid dictionary or instance of "
        "Fit (got None)"
    )


@pytest.mark.parametrize(
    "freq, meant", [("M", "ME"), ("2H", "2h"), ("Q-DEC", "QE-DEC"), ("A", "YE"), ("T", "min")]
)
def test_a_frequency_pandas_retired_is_named_with_its_new_spelling(params, freq, meant):
    """Copying the hint must keep the frequency: '2H' is '2h', not 'h'."""
    data = {"source": "csv", "path": "x.csv", "task": "forecast", "features": ["a"], "freq": freq}
    params["experiments"]["new"] = {"data": data}
    assert _error(params).endswith(
        f"experiments.new.data: freq {freq!r} is not a pandas frequency; pandas now spells it "
        f"{meant!r}"
    )
