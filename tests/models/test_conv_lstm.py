import pytest
import torch

from pipeline.models.conv_lstm import ConvLSTM
from pipeline.training.module import SequenceModule
from tests.models.checker import FRAMES, check_all, check_loop_and_scan_agree, check_onnx_parity

C, H, W = 2, 8, 8
K = 3
T = 6
FAMILY = {"hidden_channels": 4, "num_layers": 2, "kernel_size": 3, "peephole": True,
          "motion_filter": 0, "frame_differences": False, "filter_temperature": 1.0,
          "patch_size": 1}  # fmt: skip


def make(peephole: bool = True, seed: int = 0, **kw) -> ConvLSTM:
    torch.manual_seed(seed)
    model = ConvLSTM(C, (K, C, H, W), **{**FAMILY, "peephole": peephole, **kw})
    with torch.no_grad():  # peephole weights start at zero; make them matter in the checks
        for name, p in model.named_parameters():
            if ".weight_c" in name:
                p.normal_(std=0.3)
    return model


def frames(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, seq, C, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("differences", [False, True], ids=["frames", "differences"])
@pytest.mark.parametrize("seq", [1, 2, T, 11])
def test_output_shape_and_range_at_several_lengths(seq, differences):
    model = make(frame_differences=differences, motion_filter=3 * differences).eval()
    with torch.no_grad():
        y = model(frames(3, seq))
    assert y.shape == (3, K, C, H, W)
    assert ((y >= 0) & (y <= 1)).all()


@pytest.mark.parametrize(
    "peephole, differences, patch",
    [(False, False, 1), (True, False, 1), (False, True, 1), (True, True, 2)],
    ids=["plain", "peephole", "differences", "patches"],
)
def test_loop_and_scan_paths_agree(peephole, differences, patch):
    model = make(peephole, frame_differences=differences, patch_size=patch)
    check_loop_and_scan_agree(model, frames, (1, T))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"peephole": True},
        {"motion_filter": 3},
        {"motion_filter": 3, "frame_differences": True},
        {"motion_filter": 3, "frame_differences": True, "patch_size": 2},
        {"peephole": True, "patch_size": 4},
    ],
    ids=["plain", "peephole", "motion", "motion-differences", "patches", "pixel-patches"],
)
def test_conv_lstm_passes_the_model_checks(tmp_path, options):
    cfg = {"name": "conv_lstm", "hidden_channels": 4, "num_layers": 2, **options}
    check_all(cfg, FRAMES, tmp_path, loss_ratio=0.8)


def test_frame_differences_feed_each_frame_beside_its_change_from_the_one_before():
    model = make(frame_differences=True, motion_filter=3).eval()
    seen = {}

    def keep_first_input(name):
        def hook(_module, args):
            seen.setdefault(name, args[0])

        return hook

    for name in ("encoder", "forecaster"):
        getattr(model, name)[0].conv_x.register_forward_pre_hook(keep_first_input(name))
    x = frames(2, T)
    with torch.no_grad():
        model(x)
    before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # black before the first
    expected = torch.cat([x, x - before], dim=2).reshape(-1, 2 * C, H, W)
    torch.testing.assert_close(seen["encoder"], expected)
    last = torch.cat([x[:, -1], x[:, -1] - x[:, -2]], dim=1)  # the forecaster's first input
    torch.testing.assert_close(seen["forecaster"], last)


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_the_motion_filter_moves_pixels_instead_of_painting_them(patch):
    """A head that always picks the offset 'one pixel left' of a 5x5 filter: each predicted
    frame is the previous one moved one pixel right, as sharp as the input (zeros come in).
    On p x p patches the head gives each of a patch's p² pixels its own filter, so the frame
    still moves by single pixels."""
    model = make(peephole=False, motion_filter=5, patch_size=patch).eval()
    left = 2 * 5 + 1  # (dy, dx) = (0, -1) around the centre (2, 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-30.0)
        model.head.bias[left * patch**2 : (left + 1) * patch**2] = 30.0  # depth-to-space order
        x = frames(2, T)
        y = model(x)
    last = x[:, -1]
    for step in range(K):
        moved = torch.zeros_like(last)
        moved[..., step + 1 :] = last[..., : W - step - 1]
        torch.testing.assert_close(y[:, step], moved)


def test_filter_temperature_sharpens_the_motion_filter_after_the_fit_outside_training(tmp_path):
    """Dividing the head's logits by T = 0.5 is doubling its weights and bias. It starts at
    finish_fit, never applies in training, and travels in the state dict and the ONNX graph."""
    x = frames(2, T)
    sharpened, plain, doubled = (make(motion_filter=3, filter_temperature=0.5) for _ in range(3))
    with torch.no_grad():
        doubled.head.weight.mul_(2)
        doubled.head.bias.mul_(2)
        torch.testing.assert_close(sharpened.eval()(x), plain.eval()(x))  # the fit's validation
        sharpened.finish_fit()
        torch.testing.assert_close(sharpened.train()(x), plain.train()(x))
        torch.testing.assert_close(sharpened.eval()(x), doubled.eval()(x))
        plain.load_state_dict(sharpened.state_dict())
        torch.testing.assert_close(plain.eval()(x), doubled.eval()(x))
    module = SequenceModule({**FAMILY, "name": "conv_lstm", "motion_filter": 3}, FRAMES)
    module.model.temperature.fill_(0.5)
    check_onnx_parity(module, tmp_path)


@pytest.mark.parametrize(
    "motion_filter, differences",
    [(0, False), (3, False), (3, True)],
    ids=["pixels", "motion", "motion-differences"],
)
def test_teacher_forcing_feeds_the_true_frame_where_the_mask_says(motion_filter, differences):
    model = make(motion_filter=motion_filter, frame_differences=differences).eval()
    x, truth = frames(2, T), frames(2, K, seed=1)
    with torch.no_grad():
        free = model(x)
        never = model(x, teacher=truth, teacher_mask=torch.zeros(2, K, dtype=torch.bool))
        forced = model(x, teacher=truth, teacher_mask=torch.ones(2, K, dtype=torch.bool))
        other = truth.clone()
        other[:, 1] = 0.5
        forced_other = model(x, teacher=other, teacher_mask=torch.ones(2, K, dtype=torch.bool))
        # sample 0 forced at step 0 only: its step 1 sees truth[0, 0], step 2 its own step 1
        mixed_mask = torch.tensor([[True, False, False], [False, False, False]])
        mixed = model(x, teacher=truth, teacher_mask=mixed_mask)
    torch.testing.assert_close(never, free)
    torch.testing.assert_close(forced[:, :2], forced_other[:, :2])  # steps 0 and 1 precede it
    assert not torch.allclose(forced[:, 2], forced_other[:, 2])  # step 2 is fed truth[:, 1]
    torch.testing.assert_close(mixed[1], free[1])
    torch.testing.assert_close(mixed[0, :2], forced[0, :2])
    assert not torch.allclose(mixed[0, 2], forced[0, 2])


def test_the_module_forces_true_frames_in_training_steps_only():
    cfg = {"name": "conv_lstm", "hidden_channels": 4, "num_layers": 1, "motion_filter": 3}
    module = SequenceModule(cfg, FRAMES, teacher_forcing=1.0)
    x, y = torch.rand(2, 6, 1, 8, 8), torch.rand(2, 3, 1, 8, 8)
    with torch.no_grad():
        train, val = module._step((x, y), "train"), module._step((x, y), "val")
        forced = module.model(x, teacher=y, teacher_mask=torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(train, torch.nn.functional.mse_loss(forced, y))
    torch.testing.assert_close(val, torch.nn.functional.mse_loss(module.model(x), y))
    assert not torch.isclose(train, val)


def test_training_batches_track_mse_and_validation_and_test_ssim_too():
    """SSIM of teacher-forced training frames is not the model's own: only MSE is kept there."""
    module = SequenceModule({"name": "conv_lstm", "hidden_channels": 4}, FRAMES)
    keys = {k: set(m.keys(keep_base=False)) for k, m in module.stage_metrics.items()}
    assert keys == {
        "fit": {"train/mse"},
        "val": {"val/mse", "val/ssim"},
        "test": {"test/mse", "test/ssim"},
    }


def test_an_even_motion_filter_is_refused():
    with pytest.raises(ValueError, match="motion_filter must be 0 or odd and >= 3; got 4"):
        make(motion_filter=4)


def test_patches_feed_the_cells_a_grid_of_patch_pixel_channels():
    """Each cell sees the frame (and its difference) as a (H/p, W/p) grid whose channels are
    a patch's pixels: space-to-depth, so the frame is recovered exactly by depth-to-space."""
    model = make(frame_differences=True, motion_filter=3, patch_size=2).eval()
    seen = []
    model.encoder[0].conv_x.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = frames(2, T)
    with torch.no_grad():
        model(x)
    before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    both = torch.cat([x, x - before], dim=2).reshape(-1, 2 * C, H, W)
    assert seen[0].shape == (2 * T, 2 * C * 4, H // 2, W // 2)
    torch.testing.assert_close(torch.nn.functional.pixel_shuffle(seen[0], 2), both)
    assert model.encoder[0].zero_state(x)[0].shape == (2, 4, H // 2, W // 2)


def test_a_patch_size_that_does_not_divide_the_frame_is_refused():
    with pytest.raises(ValueError, match="patch_size must be >= 1 and divide the frame size"):
        make(patch_size=3)


def test_a_filter_temperature_of_zero_is_refused():
    with pytest.raises(ValueError, match="filter_temperature must be > 0; got 0"):
        make(motion_filter=3, filter_temperature=0)


def test_even_kernel_size_is_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvLSTM(C, (K, C, H, W), **{**FAMILY, "kernel_size": 4})


def test_input_that_is_not_5d_is_refused():
    model = make()
    with pytest.raises(ValueError, match=r"ConvLSTM expects frames \[batch, seq, channels"):
        model(torch.rand(2, T, H, W))


def test_frame_shape_other_than_built_for_is_refused():
    with pytest.raises(ValueError, match="output_shape channels"):
        ConvLSTM(3, (K, C, H, W), **FAMILY)
    with pytest.raises(ValueError, match="built for frames of shape"):
        make()(torch.rand(2, T, C, H + 1, W))
