"""A model from its config and data contract, and a trained one from model.ckpt, without
Lightning: export and validate load checkpoints in a process that never imports it (stage start
is seconds faster)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import DataError
from pipeline.meta import DataMeta, first_error, same_data
from pipeline.models import build_model
from pipeline.models.ensemble import Ensemble
from pipeline.tasks import task_of

PREFIX = "model."  # the LightningModule keeps the model as `self.model`


def model_for(model_cfg: dict, meta: DataMeta, members: int = 1) -> nn.Module:
    """The family's module for this data: input size, the task's output shape and extras;
    with `members` > 1, an Ensemble of that many."""
    task = task_of(meta)
    if model_cfg.get("series_norm") == "auto":
        model_cfg = {**model_cfg, "series_norm": meta.auto_series_norm()}
    models = [
        build_model(
            model_cfg,
            meta.input_shape[1],
            task.output_shape(meta),
            meta.input_shape[0],
            **task.model_kwargs(meta),
        )
        for _ in range(members)
    ]
    if members == 1:
        return models[0]
    return Ensemble(models, probabilities=task.name == "classification")


@dataclass(frozen=True)
class Trained:
    model: nn.Module  # in eval mode
    meta: DataMeta
    family: str = ""  # model.name of its config


def trained_for(path: Path, family: str, prepared: DataMeta) -> Trained:
    """load_trained, refusing a checkpoint of another model family or data (e.g. copied from
    another experiment), which export and validate took as the experiment's."""
    trained = load_trained(path)
    if trained.family != family:
        raise DataError(
            f"{path}: a {trained.family} model, but the experiment's model.name is {family!r}; "
            "run the train stage"
        )
    same_data(trained.meta, prepared, path, "train")
    return trained


def load_trained(path: str | Path) -> Trained:
    """The model and data contract saved by the train stage (any Lightning checkpoint of
    SequenceModule, or the train stage's merge of an ensemble's members); a missing, truncated
    or foreign file is a DataError naming it."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
        meta = DataMeta.model_validate(hparams["meta"])
        model = model_for(hparams["model_cfg"], meta, hparams.get("members", 1))
        weights = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        model.load_state_dict(weights)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; run the train stage") from None
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        RuntimeError,
        KeyError,
        TypeError,
        ValueError,
    ) as err:
        reason = first_error(err)
        raise DataError(f"{path}: not a model checkpoint of this pipeline ({reason})") from None
    # exported, it passed validate with NaN metrics and was released (exit 0 throughout)
    nonfinite = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if nonfinite:
        raise DataError(
            f"{path}: weight {nonfinite[0]} holds NaN or inf; run the train stage again"
        )
    return Trained(model.eval(), meta, hparams["model_cfg"]["name"])
