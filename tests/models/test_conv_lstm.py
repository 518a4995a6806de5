import copy
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.models.conv_lstm import ConvLSTM

C, H, W = 2, 8, 8
K = 3
T = 6


def make(peephole: bool = True, seed: int = 0, **kw) -> ConvLSTM:
    torch.manual_seed(seed)
    model = ConvLSTM(C, (K, C, H, W), hidden_channels=4, num_layers=2, peephole=peephole, **kw)
    with torch.no_grad():  # peephole weights start at zero; make them matter in the checks
        for name, p in model.named_parameters():
            if ".weight_c" in name:
                p.normal_(std=0.3)
    return model


def frames(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, seq, C, H, W, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path) -> onnx.ModelProto:
    """The project's export recipe: symbolic batch and seq, scan path on."""
    dims = {"x": {0: torch.export.Dim("batch", min=2), 1: torch.export.Dim("seq", min=2)}}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    model.eval()
    model.scan_for_export = True
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=dims,
                verbose=False,
            )
    finally:
        model.scan_for_export = False
    proto = program.model_proto
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return proto


@pytest.mark.parametrize("seq", [1, 2, T, 11])
def test_output_shape_and_range_at_several_lengths(seq):
    model = make().eval()
    with torch.no_grad():
        y = model(frames(3, seq))
    assert y.shape == (3, K, C, H, W)
    assert ((y >= 0) & (y <= 1)).all()


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
def test_loop_and_scan_paths_agree(peephole):
    model = make(peephole).eval()
    for seq in (1, T):
        x = frames(4, seq)
        with torch.no_grad():
            model.scan_for_export = False
            loop = model(x)
            model.scan_for_export = True
            scanned = model(x)
        torch.testing.assert_close(scanned, loop, rtol=0, atol=1e-6)


def test_gradient_reaches_every_parameter():
    model = make()
    x = frames(2, T)
    model(x).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead
    assert any(".weight_c" in n for n, _ in model.named_parameters())


def test_a_few_adam_steps_lower_the_loss():
    model = make()
    x = (frames(4, T + K, seed=1) > 0.8).float()  # sparse binary frames, like moving objects
    inputs, target = x[:, :T], x[:, T:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses  # 0.25 -> ~0.15 here


def test_state_dict_round_trip():
    model = make().eval()
    clone = copy.deepcopy(model)
    for p in clone.parameters():
        torch.nn.init.normal_(p)
    clone.load_state_dict(model.state_dict())
    x = frames(2, T)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


def test_onnx_export_keeps_batch_and_seq_dynamic_and_matches_torch(tmp_path):
    model = make()
    path = tmp_path / "conv_lstm.onnx"
    proto = export_onnx(model, torch.zeros(7, T, C, H, W), path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"]
    assert [d.dim_value for d in dims[2:]] == [C, H, W]
    assert any(n.op_type == "Scan" for n in proto.graph.node)
    assert model.scan_for_export is False  # eager reference below is the training (loop) path

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 5):
        for seq in (T // 2, T, 2 * T):
            x = frames(batch, seq, seed=batch * 100 + seq)
            (got,) = sess.run(None, {"x": x.numpy()})
            with torch.no_grad():
                expected = model(x).numpy()
            assert got.shape == (batch, K, C, H, W)
            worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= 1e-5, worst


def test_even_kernel_size_is_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvLSTM(C, (K, C, H, W), kernel_size=4)


def test_input_that_is_not_5d_is_refused():
    model = make()
    with pytest.raises(ValueError, match=r"ConvLSTM expects frames \[batch, seq, channels"):
        model(torch.rand(2, T, H, W))


def test_frame_shape_other_than_built_for_is_refused():
    with pytest.raises(ValueError, match="output_shape channels"):
        ConvLSTM(3, (K, C, H, W))
    with pytest.raises(ValueError, match="built for frames of shape"):
        make()(torch.rand(2, T, C, H + 1, W))
