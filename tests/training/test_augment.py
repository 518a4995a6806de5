"""Classification's regularisers (fit.label_smoothing, fit.scaling, fit.jitter) act in training
steps only: validation, test and the exported model see the inputs and the loss as they are."""

import torch
import torch.nn.functional as F

from pipeline.training.module import SequenceModule

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
