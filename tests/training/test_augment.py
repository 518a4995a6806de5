"""The regularisers (fit.label_smoothing, fit.scaling, fit.jitter) act in training steps only:
validation, test and the exported model see the inputs and the loss as they are."""

import torch
import torch.nn.functional as F

from pipeline.training.module import SequenceModule
from tests.models.test_covariates import FAMILIES
from tests.models.test_covariates import META as COVARIATE_META

META = {"task": "classification", "input_shape": [20, 3], "labels": ["a", "b", "c"]}
MODEL = {"name": "lstm", "hidden_size": 8, "num_layers": 1}


def test_label_smoothing_scaling_and_jitter_act_in_training_steps_only():
    torch.manual_seed(0)
    x, y = torch.randn(4, 20, 3), torch.tensor([0, 1, 2, 0])
    plain = SequenceModule(MODEL, META).eval()
    module = SequenceModule(MODEL, META, label_smoothing=0.1, scaling=0.1, jitter=0.03).eval()
    module.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.manual_seed(1)
        train = module._step((x, y), "train")
        torch.manual_seed(1)
        scaled = x * (1 + 0.1 * torch.randn(4, 1, 3))  # one factor per series and channel
        augmented = scaled + 0.03 * torch.randn_like(x)
        expected = F.cross_entropy(module(augmented), y, label_smoothing=0.1)
        plain_loss = F.cross_entropy(module(x), y)
        torch.testing.assert_close(train, expected)
        torch.testing.assert_close(module._step((x, y), "val"), plain_loss)
        torch.testing.assert_close(plain._step((x, y), "train"), plain_loss)
    assert not torch.isclose(train, plain_loss)


def test_forecast_jitter_leaves_the_future_covariates_exact():
    """The forecasting recipe's jitter: noise on the target and feature columns, none on the
    future covariates' past values (x's last columns: a calendar or a plan, known exactly)."""
    module = SequenceModule(FAMILIES["lstm"], COVARIATE_META, jitter=0.03)
    x = torch.randn(5, 36, 4)  # x, y, then the future covariates' past: promo, day_of_week_sin
    torch.manual_seed(1)
    augmented = module._augmented(x)
    torch.manual_seed(1)
    torch.testing.assert_close(augmented[..., :2], x[..., :2] + 0.03 * torch.randn(5, 36, 2))
    assert torch.equal(augmented[..., 2:], x[..., 2:])


def test_forecast_jitter_is_in_each_windows_units_where_scale_norm_is_on():
    """Several series under one scaler: noise of 0.03 of the scaler's std would drown a series
    1,000 times smaller than the others. With scale_norm on, a window a*x + b becomes
    a*(x + noise) + b: the same noise in the units the network reads."""
    meta = {**COVARIATE_META, "future": [], "static": [], "covariate_scaler": {},
            "input_shape": [36, 2]}  # fmt: skip
    module = SequenceModule({**FAMILIES["lstm"], "scale_norm": True}, meta, jitter=0.03)
    x = torch.randn(5, 36, 2)
    torch.manual_seed(1)
    small = module._augmented(x)
    torch.manual_seed(1)
    large = module._augmented(1000 * x + 7)
    torch.testing.assert_close(large, 1000 * small + 7)
    assert not torch.allclose(small, x)
