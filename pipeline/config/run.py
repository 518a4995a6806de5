"""How an experiment is fit and checked, and the pipeline-wide groups: trainer, tune, tracking,
release."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator

from pipeline.config.base import PositiveInt, Seed, Strict


class Fit(Strict):
    max_epochs: PositiveInt = 100
    # Optimizer updates (training batches) at most: the fit then ends with the epoch in which it
    # reaches them, if that comes before max_epochs. None: epochs alone.
    max_updates: PositiveInt | None = None
    batch_size: PositiveInt = 32
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    patience: PositiveInt = 20
    gradient_clip_val: Annotated[float, Field(ge=0)] = 1.0
    # After early stopping has picked the epoch count on val: train again from the same seed on
    # train + val for that many epochs; that model is tested, saved and exported.
    refit: bool = False
    # The learning rate over the fit: constant, cosine-annealed to 0 at max_epochs, or halved
    # when val/loss has not improved for patience/4 epochs (ReduceLROnPlateau).
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    # The checkpoint kept: the lowest val/loss, or the last epoch (e.g. at the end of a cosine
    # schedule, when a handful of validation series make the lowest loss a noisy pick).
    select: Literal["best", "last"] = "best"
    # Members trained with seeds seed, seed+1, ...; one ONNX file averages their probabilities.
    ensemble: PositiveInt = 1
    # Frames (conv_lstm): the probability that a training forecast step is fed the true previous
    # frame instead of the model's own prediction (1: always). Validation and inference never are.
    teacher_forcing: Annotated[float, Field(ge=0, le=1)] = 0.0
    # Training precision of this experiment; None: trainer.precision. auto: bf16-mixed where the
    # device computes bf16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU that supports
    # it), else 32-true: elsewhere bf16 is emulated, slower than float32.
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] | None = None
    # Classification, training steps only: cross-entropy against labels smoothed by this much
    # (Szegedy et al. 2016); each series' channels scaled by 1 + N(0, scaling²).
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scaling: Annotated[float, Field(ge=0)] = 0.0
    # Classification and forecasting, training steps only: Gaussian noise of sd `jitter` on every
    # standardised input value (Um et al. 2017), in each window's std where model.scale_norm is
    # on; a forecast's future covariates get none.
    jitter: Annotated[float, Field(ge=0)] = 0.0


class Validate(Strict):
    # on |ORT - torch| / max(1, |torch|) (validate.json: parity_max_scaled_diff)
    parity_tol: Annotated[float, Field(gt=0)] = 1e-5
    parity_batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 4, 16]
    min: dict[str, float] = {}  # metric -> lowest passing value, e.g. accuracy: 0.95
    max: dict[str, float] = {}  # metric -> highest passing value, e.g. mape: 10
    # forecast: mae < (seasonal-)naive mae; frames: mse below and ssim above copy-last-frame's
    beat_baseline: bool = False
    classical: bool = True  # forecast: report ETS fitted on the train part (ets_mae, ...)
    beat_classical: bool = False  # forecast: mae < ets_mae
    quantize: bool = True  # try a dynamic int8 model (models/<exp>/int8/model.onnx)
    # keep it only if accuracy falls (mape, mse rises) by at most this much, absolute
    int8_max_drop: Annotated[float, Field(ge=0)] = 0.01


class Trainer(Strict):
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: PositiveInt | Literal["auto"] = 1
    strategy: str = "auto"
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    deterministic: bool = True
    progress_bar: bool = True
    num_workers: Annotated[int, Field(ge=0)] = 0
    # torch's intra-op threads in train, ONNX Runtime's in validate; None: all cores
    threads: PositiveInt | None = 1
    max_epochs: PositiveInt | None = None  # when set, caps every experiment's fit.max_epochs
    # enforce: a failed validate gate fails the stage (exit 4); report: it is only reported
    # (validate.json's `passed`), for smoke runs (conf/trainer/smoke.yaml)
    gates: Literal["enforce", "report"] = "enforce"
    # When set, train runs on a Ray cluster through Ray Train's TorchTrainer with this many
    # workers (RayDDPStrategy); RAY_ADDRESS picks the cluster, else a local Ray starts.
    ray_workers: PositiveInt | None = None

    @field_validator("strategy")
    @classmethod
    def _ranks_launched_as_scripts(cls, strategy: str) -> str:
        """ddp_spawn pickled the module (exit 1, `Can't pickle local object`); ddp_fork fit in
        forks whose results the stage never saw (exit 1, `min() arg is an empty sequence`)."""
        if any(kind in strategy for kind in ("spawn", "fork", "notebook")):
            raise ValueError(f"{strategy} fits in child processes the stage cannot read; use ddp")
        return strategy


SAMPLERS = ("choice", "grid", "uniform", "loguniform", "randint")


class Resources(Strict):
    cpu: Annotated[float, Field(gt=0)] = 1
    gpu: Annotated[float, Field(ge=0)] = 0


class Tune(Strict):
    """A Ray Tune sweep over one experiment (`lstm-pipeline tune <exp>`); see pipeline/tuning."""

    num_samples: PositiveInt = 40
    # Epochs per trial (ASHA's max_t); None: the experiment's own fit.max_epochs, so that the
    # best trial is a model as trained as the one it would replace
    max_epochs: PositiveInt | None = None
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    grace_period: PositiveInt | None = None  # ASHA: epochs before a stop; None: 1/16 of them
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    perturbation_interval: PositiveInt = 2  # PBT: epochs between exploit/explore
    resources_per_trial: Resources = Resources()
    max_concurrent_trials: PositiveInt = 2
    max_failures: Annotated[int, Field(ge=0)] = 1
    address: str | None = None  # an existing cluster (host:port); else RAY_ADDRESS, else local
    storage_path: str | None = None  # Ray's experiment storage (shared for multi-node)
    seed: Seed = 0  # the search algorithm's seed
    # Overrides the family's default space, key by key (null removes one):
    #   model: {hidden_size: {choice: [16, 32, 64]}}, fit: {lr: {loguniform: [1e-4, 1e-2]}}
    space: dict[Literal["model", "fit"], dict[str, dict[str, list] | None]] = {}

    def trial_epochs(self, fit: Fit) -> int:
        return self.max_epochs or fit.max_epochs

    def grace_epochs(self, fit: Fit) -> int:
        return self.grace_period or max(1, self.trial_epochs(fit) // 16)

    @field_validator("space")
    @classmethod
    def _samplers(cls, space: dict) -> dict:
        for group, keys in space.items():
            for key, spec in keys.items():
                if spec is None:
                    continue
                if len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
                    raise ValueError(
                        f"{group}.{key}: give one sampler of {', '.join(SAMPLERS)} (got {spec})"
                    )
                kind, values = next(iter(spec.items()))
                if kind not in ("choice", "grid"):
                    low, high = values if len(values) == 2 else (None, None)
                    if not (isinstance(low, int | float) and isinstance(high, int | float)
                            and math.isfinite(low) and math.isfinite(high)
                            and low < high and (low > 0 or kind != "loguniform")):  # fmt: skip
                        raise ValueError(
                            f"{group}.{key}: {kind} takes [low, high], finite numbers, low < high"
                            f"{', low > 0' if kind == 'loguniform' else ''} (got {values})"
                        )
                if not values:
                    raise ValueError(f"{group}.{key}: {kind} needs at least one value")
        return space


class Tracking(Strict):
    experiment_name: Annotated[str, Field(min_length=1)] = "lstm-pipeline"


class Release(Strict):
    """Gates of `lstm-pipeline release`, checked on validate.json before anything is registered.

    Thresholds on a metric the report lacks are skipped (a forecaster has no accuracy).
    """

    model_name: str = "lstm-pipeline-{exp}"
    require_passed: bool = True
    min: dict[str, float] = {}
    max: dict[str, float] = {}
    beat_baseline: bool = True  # better than the naive baseline validate reports
    # metric -> how much worse than the current @champion a candidate may be (absolute)
    champion_margin: dict[str, Annotated[float, Field(ge=0)]] = {}

    @field_validator("model_name")
    @classmethod
    def _registry_name(cls, name: str) -> str:
        try:
            named = name.format(exp="\0") != name.format(exp="")
        except (KeyError, IndexError, ValueError):  # {other}, a lone brace
            named = False
        if not named:
            raise ValueError("must hold {exp}, the experiment's name, and no other {field}")
        if bad := sorted(set(name) & set("/:@")):
            raise ValueError(
                f"{' '.join(bad)} cannot be in a registered model's name (MLflow refuses / and :, "
                "and models:/<name>@<alias> reads @ as the alias)"
            )
        return name
