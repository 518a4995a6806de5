"""Typed config schema, validated once at the edge.

`conf/` (Hydra groups) composes into `params.yaml`; every stage loads params.yaml through
`load_config`, which turns any schema violation into one `ConfigError` naming the key.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from pipeline.config.base import Seed, Strict
from pipeline.config.data import (
    AirlineData,
    DataConfig,
    MovingDigitsData,
    TableData,
    UcrData,
)
from pipeline.config.models import ModelConfig
from pipeline.config.recipes import RECIPES
from pipeline.config.run import Fit, Release, Resources, Tracking, Trainer, Tune, Validate
from pipeline.errors import ConfigError
from pipeline.io import not_utf8_line, read_yaml, yaml_error_line

__all__ = [
    "AirlineData", "Experiment", "Fit", "MovingDigitsData", "PipelineConfig", "Release",
    "Resources", "TableData", "Tracking", "Trainer", "Tune", "UcrData", "Validate",
]  # fmt: skip

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PARAMS_FILE = "params.yaml"


def conf_dir() -> Path:
    """The conf/ beside params.yaml in the working directory (a copy of the repo, DVC's temp
    experiment), else the installed package's."""
    if Path("conf").is_dir() and not Path("conf/config.yaml").is_file():  # not the package's
        raise ConfigError("conf/config.yaml: not found (conf/ holds the groups, config.yaml "
                          "lists them)")  # fmt: skip
    return Path("conf") if Path("conf/config.yaml").exists() else CONF_DIR


def project_above() -> Path | None:
    """The project's folder (the one with dvc.yaml) above the working one, where a command was
    run in a subfolder of it."""
    if Path("dvc.yaml").is_file():
        return None
    return next((d for d in Path.cwd().parents if (d / "dvc.yaml").is_file()), None)


class Experiment(Strict):
    """One experiment; without `model` (or without `model.name`), its task's default recipe
    (recipes.py) gives the model and the fit defaults; keys under `model` and `fit` still
    override them (a sweep's best params)."""

    data: DataConfig
    model: ModelConfig
    fit: Fit = Fit()
    validation: Validate = Field(Validate(), alias="validate")

    @property
    def task(self) -> str:
        return self.data.task

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        given, fit = raw.get("model"), raw.get("fit", {})
        if isinstance(given, dict) and "name" in given or ("model" in raw and given is None):
            return raw  # `model:` with nothing under it is refused, as `fit:` is
        if not isinstance(given or {}, dict) or not isinstance(fit, dict):
            return raw  # the field validation names the key
        try:
            data = TypeAdapter(DataConfig).validate_python(raw.get("data"))
        except ValidationError:
            return raw  # the field validation reports what is wrong with `data`
        recipe = RECIPES[data.task]
        model, fit = {**recipe["model"], **(given or {})}, {**recipe["fit"], **fit}
        if data.task == "frames":  # patches of 4x4 pixels, or the largest size that divides
            model.setdefault("patch_size", next(p for p in (4, 2, 1) if data.frame_size % p == 0))
        return {**raw, "model": model, "fit": fit}

    @model_validator(mode="after")
    def _model_fits_task(self) -> Experiment:
        tasks = type(self.model).tasks
        if self.task not in tasks:
            raise ValueError(
                f"model.name {self.model.name!r} does not support the {self.task!r} task of "
                f"data.source {self.data.source!r}; it supports: {', '.join(tasks)}"
            )
        for key in ("level_norm", "scale_norm", "season_norm"):
            if getattr(self.model, key, False) and self.task != "forecast":
                raise ValueError(f"model.{key} applies to forecasting only")
        for key in ("max_steps", "pool_extrema", "series_norm"):
            if getattr(self.model, key, None) and self.task != "classification":
                raise ValueError(f"model.{key} applies to classification only")
        period = getattr(self.model, "season_norm", 0)
        if period != "auto" and period and self.data.window and self.data.window < 2 * period:
            raise ValueError(
                f"model.season_norm: {period} needs windows of 2 periods or more "
                f"(data.window is {self.data.window})"
            )
        patch, frame = getattr(self.model, "patch_size", 1), getattr(self.data, "frame_size", 0)
        if frame % patch:
            raise ValueError(f"model.patch_size: {patch} must divide data.frame_size ({frame})")
        if self.fit.teacher_forcing and self.task != "frames":
            raise ValueError("fit.teacher_forcing applies to the frames task (conv_lstm) only")
        for key in ("label_smoothing", "scaling"):
            if getattr(self.fit, key) and self.task != "classification":
                raise ValueError(f"fit.{key} applies to classification only")
        if self.fit.jitter and self.task == "frames":
            raise ValueError("fit.jitter applies to classification and forecasting only")
        if self.validation.beat_classical and not (
            self.task == "forecast" and self.validation.classical
        ):
            raise ValueError("validate.beat_classical needs a forecast task and validate.classical")
        return self


class PipelineConfig(Strict):
    seed: Seed = 0
    trainer: Trainer = Trainer()
    tracking: Tracking = Tracking()
    release: Release = Release()
    tune: Tune = Tune()
    # a name is a folder's (.resume/<exp>/<hash>/...) and a registered model's: 260 letters
    # passed, and prepare failed with "File name too long" (exit 8)
    experiments: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=64)], Experiment]

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ConfigError(
                f"experiments.{name}: no such experiment; defined: {', '.join(self.experiments)}"
            )
        return self.experiments[name]


def _tags(union, field: str) -> set[str]:
    """The Literal values that pick each member of a discriminated union (pydantic puts them in
    error paths, where users never wrote them)."""
    members = get_args(get_args(union)[0])
    return {tag for m in members for tag in get_args(m.model_fields[field].annotation)}


UNION_TAGS = _tags(DataConfig, "source") | _tags(ModelConfig, "name")


def _format(err: ValidationError) -> str:
    errors = err.errors()
    lines = []
    for e in errors:
        exp = e["loc"][:-1]
        if (
            e["type"] == "missing"
            and e["loc"][-1] == "model"
            and any(o is not e and o["loc"][: len(exp)] == exp for o in errors)
        ):
            continue  # the experiment's other error kept its default recipe from filling it in
        # Drop the union tags pydantic puts in the path after data/model ("ucr", "lstm"...):
        # users never write them (an experiment may be named as one).
        path = e["loc"]
        loc = [
            str(p)
            for i, p in enumerate(path)
            if not (i and p in UNION_TAGS and path[i - 1] in ("data", "model"))
        ]
        msg, got = e["msg"].removeprefix("Value error, "), e.get("input")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        key, _, rest = msg.partition(": ")
        if isinstance(got, dict) and key in got:  # a check of the whole block that names a key
            loc, msg, got = [*loc, key], rest, got[key]
        got = "" if isinstance(got, dict) else repr(got)  # a block's: its message names values
        shown = f" (got {got})" if got and len(got) <= 80 and f"(got {got})" not in msg else ""
        lines.append(f"{'.'.join(loc) or '<root>'}: {msg}{shown}")
    return "invalid config: " + "; ".join(lines)


def parse_config(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def parse_model(raw: dict[str, Any]) -> ModelConfig:
    """One model config (a checkpoint's, a test's) with the schema's defaults filled in."""
    try:
        return TypeAdapter(ModelConfig).validate_python(raw)
    except ValidationError as err:
        raise ConfigError(_format(err).replace("config", "model config", 1)) from None


def load_config(path: str | Path = PARAMS_FILE) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        above = project_above()
        if not path.is_absolute() and above and (above / path).is_file():
            raise ConfigError(f"{path}: not found here; run it in the project's folder, {above}")
        raise ConfigError(f"{path}: not found (run `lstm-pipeline compose` to write it from conf/)")
    raw = read_yaml(path, ConfigError)
    if raw is None:
        raise ConfigError(f"{path}: empty (run `lstm-pipeline compose` to write it from conf/)")
    if not isinstance(raw, dict):  # `[]` too: it was `experiments: Field required`
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return parse_config(raw)


def compose(overrides: list[str] = (), conf: Path | None = None) -> str:
    """Compose conf/ (default: conf_dir()) exactly as DVC's Hydra integration does
    (dvc.utils.hydra.compose_and_dump)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(Path(conf or conf_dir()).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{conf or 'conf'}/: {_one_line(str(err))}") from None
    except yaml.YAMLError as err:  # Hydra's loader names the file in the error's mark
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(yaml_error_line(err, _relative(mark.name if mark else "conf/"))) from None
    except UnicodeDecodeError:
        raise ConfigError(_not_utf8(Path(conf or conf_dir()))) from None
    except RecursionError:
        raise ConfigError(
            f"{conf or 'conf'}/: the defaults lists include each other (a cycle)"
        ) from None
    if failing := _unresolved(cfg):  # OmegaConf's error names no key
        key, err = failing
        raise ConfigError(f"{conf or 'conf'}/: {key}: {str(err).splitlines()[0]}")
    text = OmegaConf.to_yaml(cfg, resolve=True)
    parse_config(yaml.safe_load(text))
    return text


def _unresolved(node, prefix: str = "") -> tuple[str, Exception] | None:
    """The first key whose `${...}` does not resolve, and the error."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    keys = range(len(node)) if isinstance(node, ListConfig) else node.keys()
    for key in keys:
        path = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}".lstrip(".")
        if OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except OmegaConfBaseException as err:
                return path, err
        elif isinstance(child := node._get_node(key), DictConfig | ListConfig):
            if found := _unresolved(child, path):
                return found
    return None


def _relative(path: str) -> str:
    with suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _not_utf8(conf: Path) -> str:
    """The first conf/ file with bytes that are not UTF-8 (Hydra's error names none)."""
    for path in sorted(conf.rglob("*.yaml")):
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            return not_utf8_line(err, _relative(str(path)))
    return f"{conf}/: a file is not UTF-8"


def _one_line(message: str) -> str:
    """Hydra's message in one line: its hint and its list of a group's options kept, its
    config search path dropped."""
    lines = [line.strip() for line in message.split("Config search path:")[0].splitlines()]
    head, *rest = [line.rstrip(".") for line in lines if line]
    if rest and rest[0].endswith(":"):  # "Available options in 'trainer':", then one per line
        rest = [f"{rest[0]} {', '.join(rest[1:])}"]
    return "; ".join([head, *(line[0].lower() + line[1:] for line in rest)])
