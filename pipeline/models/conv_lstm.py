"""ConvLSTM encoder-forecaster (Shi et al. 2015) for next-frame prediction.

x [batch, seq, C, H, W] in [0, 1] -> frames [batch, K, C, H, W] in [0, 1].

Cell (∗ = 2-D convolution with `kernel_size // 2` padding, ∘ = Hadamard product):

    i = σ(W_xi ∗ x + W_hi ∗ h + W_ci∘c + b_i)      f = σ(W_xf ∗ x + W_hf ∗ h + W_cf∘c + b_f)
    g = tanh(W_xg ∗ x + W_hg ∗ h + b_g)            c' = f∘c + i∘g
    o = σ(W_xo ∗ x + W_ho ∗ h + W_co∘c' + b_o)     h' = o∘tanh(c')

The peephole terms (optional) have one weight per channel and pixel, [hidden, H, W], so the
frame size is fixed at construction. The gate convolution over concat(x, h) is split into an
input part and a hidden part (the same linear map), so the encoder can convolve every input
frame of a layer in one batched call before stepping through time.

The encoder runs the stacked layers over the seq input frames; the forecaster (own weights)
starts from the encoder's final state of each layer and runs K steps, fed the previous frame
(the last observed one first, then its own predictions); each output frame is
σ(1x1 conv over the concat of all forecaster layers' hidden states), or with `motion_filter` k a
dynamic local filter (De Brabandere et al. 2016): the 1x1 conv gives each pixel a softmax over
its k x k neighbourhood, and the frame is the previous one's pixels mixed by those weights. The
model then moves pixels rather than painting them, which keeps digits from dissolving into the
mean image that an MSE-trained pixel head drifts to. `filter_temperature` T < 1 divides the
softmax's logits by T once the fit is over (`finish_fit`, kept in the state dict as `temperature`)
and outside training: each pixel follows its likeliest offsets more closely. Trained for MSE, the
filter hedges between offsets, and over K steps of its own predictions those hedges compound into
blur; sharpening them trades a little MSE for frames that keep their shapes (higher SSIM). The
fit's validation must not see it: the sharpened validation loss is lowest at early epochs, whose
sharpened frames are poor, so early stopping and selection would keep one of those.

`patch_size` p: the cells run on p x p patches of the frame (space-to-depth, the `patch_size` of
PredRNN and OpenSTL's Moving MNIST recipes): a 16x16 frame becomes a 4x4 grid of 16-pixel
patches, so a step's convolutions do p² times less work and a 3x3 kernel sees p times further.
The head's output is depth-to-space'd back, so the motion filter still moves single pixels.

`frame_differences`: the first layer of both stacks reads each frame beside its difference from
the frame before (a black frame before the first), the motion encoder's input of Villegas et al.
2017 (MCnet): motion is in the input instead of having to be inferred from two hidden states.

Teacher forcing (training only): given the true frames `teacher` [batch, K, C, H, W] and a mask
[batch, K], the forecaster's next input is the true frame where the mask is set and its own
prediction elsewhere (scheduled sampling, Bengio et al. 2015, when the mask is drawn with a
probability below 1). Without them the forecaster always runs on its own predictions.

The encoder's time loop has two paths with the same math, chosen by `scan_for_export`: a plain
Python loop (training; fast in eager) and `torch._higher_order_ops.scan` (export). torch.onnx
unrolls a Python loop over seq, which silently fixes seq (or claims it dynamic and computes
wrong numbers at other lengths); scan exports to an ONNX `Scan` node and keeps seq symbolic.
The K forecaster steps are static, so a Python loop is right on both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch._higher_order_ops.scan import scan

State = tuple[torch.Tensor, torch.Tensor]


class ConvLSTMCell(nn.Module):
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int,
        frame_size: tuple[int, int],
        peephole: bool,
    ):
        super().__init__()
        pad = kernel_size // 2
        self.hidden_channels = hidden_channels
        self.frame_size = tuple(frame_size)
        self.conv_x = nn.Conv2d(in_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.conv_h = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False
        )
        if peephole:
            shape = (hidden_channels, *self.frame_size)
            self.weight_ci = nn.Parameter(torch.zeros(shape))
            self.weight_cf = nn.Parameter(torch.zeros(shape))
            self.weight_co = nn.Parameter(torch.zeros(shape))
        self.peephole = peephole
        with torch.no_grad():  # forget-gate bias 1: remember by default early in training
            self.conv_x.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def zero_state(self, like: torch.Tensor) -> State:
        h = like.new_zeros(like.shape[0], self.hidden_channels, *self.frame_size)
        return h, torch.zeros_like(h)

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        """W_x ∗ x + b for x [..., C, H, W] (any leading dims) -> [..., 4*hidden, H, W]."""
        lead = x.shape[:-3]
        gx = self.conv_x(x.reshape(-1, *x.shape[-3:]))
        return gx.reshape(*lead, *gx.shape[-3:])

    def step(self, gx: torch.Tensor, state: State) -> State:
        """One step given the input part of the gates gx [batch, 4*hidden, H, W]."""
        h, c = state
        i, f, g, o = (gx + self.conv_h(h)).chunk(4, dim=1)
        if self.peephole:
            i = i + self.weight_ci * c
            f = f + self.weight_cf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.peephole:
            o = o + self.weight_co * c
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """x [batch, seq, C, H, W] -> next K frames [batch, K, C, H, W]; seq >= 1, any length."""

    def __init__(
        self,
        input_size: int,
        output_shape: tuple[int, ...],
        *,
        hidden_channels: int,
        num_layers: int,
        kernel_size: int,
        peephole: bool,
        motion_filter: int,
        frame_differences: bool,
        filter_temperature: float,
        patch_size: int,
    ):
        super().__init__()
        if filter_temperature <= 0:
            raise ValueError(f"filter_temperature must be > 0; got {filter_temperature}")
        if motion_filter and (motion_filter < 3 or motion_filter % 2 == 0):
            raise ValueError(f"motion_filter must be 0 or odd and >= 3; got {motion_filter}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd (so 'same' padding keeps the frame size); "
                f"got {kernel_size}"
            )
        if len(output_shape) != 4:
            raise ValueError(
                f"output_shape must be (horizon, channels, height, width); got {output_shape}"
            )
        horizon, channels, height, width = (int(v) for v in output_shape)
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"patch_size must be >= 1 and divide the frame size ({height}x{width}); "
                f"got {patch_size}"
            )
        if channels != input_size:
            raise ValueError(
                f"output_shape channels ({channels}) must equal input_size ({input_size})"
            )
        if horizon < 1 or num_layers < 1 or hidden_channels < 1:
            raise ValueError(
                "horizon, num_layers and hidden_channels must be >= 1; got "
                f"{horizon}, {num_layers}, {hidden_channels}"
            )
        self.output_shape = (horizon, channels, height, width)
        self.scan_for_export = False
        self.frame_differences = frame_differences
        self.patch_size = patch_size
        first_input = (2 if frame_differences else 1) * input_size * patch_size**2
        grid = (height // patch_size, width // patch_size)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                ConvLSTMCell(
                    first_input if k == 0 else hidden_channels,
                    hidden_channels,
                    kernel_size,
                    grid,
                    peephole,
                )
                for k in range(num_layers)
            )

        self.encoder = stack()
        self.forecaster = stack()
        self.motion_filter = motion_filter
        self.filter_temperature = filter_temperature
        if motion_filter:  # one-hot k x k kernels: a convolution with them lists the shifts
            shifts = torch.eye(motion_filter**2).view(-1, 1, motion_filter, motion_filter)
            self.register_buffer("shift_kernels", shifts, persistent=False)
            self.register_buffer("temperature", torch.ones(()))  # 1 until finish_fit
        outputs = motion_filter**2 if motion_filter else channels
        self.head = nn.Conv2d(num_layers * hidden_channels, outputs * patch_size**2, kernel_size=1)

    def forward(
        self,
        x: torch.Tensor,
        teacher: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(
                "ConvLSTM expects frames [batch, seq, channels, height, width]; "
                f"got shape {tuple(x.shape)}"
            )
        expected = self.output_shape[1:]
        if tuple(x.shape[2:]) != expected:
            raise ValueError(
                f"ConvLSTM was built for frames of shape {expected} (channels, height, width); "
                f"got shape {tuple(x.shape)}"
            )
        if not self.frame_differences:
            states = self._encode(self._cell_input(x, None, dim=2))
            return self._forecast(states, x[:, -1], None, teacher, teacher_mask)
        before = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        states = self._encode(self._cell_input(x, before, dim=2))
        return self._forecast(states, x[:, -1], before[:, -1], teacher, teacher_mask)

    def _cell_input(self, frame: torch.Tensor, previous: torch.Tensor | None, dim: int = 1):
        """What the first layer reads: the frame, beside its difference from `previous`, as
        patches."""
        if self.frame_differences:
            frame = torch.cat([frame, frame - previous], dim=dim)
        return F.pixel_unshuffle(frame, self.patch_size) if self.patch_size > 1 else frame

    def _forecast(
        self,
        states: list[State],
        frame: torch.Tensor,
        previous: torch.Tensor | None,
        teacher: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The K predicted frames from the encoder's states, fed the last observed frame first,
        then each prediction (or, under teacher forcing, the true frame where the mask says);
        `previous`: the frame before the first fed one (read with `frame_differences`)."""
        frames = []
        for t in range(self.output_shape[0]):
            inp = self._cell_input(frame, previous)
            for k, cell in enumerate(self.forecaster):
                states[k] = cell.step(cell.input_gates(inp), states[k])
                inp = states[k][0]
            predicted = self._next_frame(self.head(torch.cat([h for h, _ in states], 1)), frame)
            frames.append(predicted)
            previous, frame = frame, predicted
            if teacher is not None:
                forced = teacher_mask[:, t].view(-1, *[1] * (frame.dim() - 1))
                frame = torch.where(forced, teacher[:, t], frame)
        return torch.stack(frames, dim=1)

    def _next_frame(self, out: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The head's output as a frame: pixels, or the motion filter applied to `previous`."""
        if self.patch_size > 1:
            out = F.pixel_shuffle(out, self.patch_size)
        if not self.motion_filter:
            return torch.sigmoid(out)
        batch, channels, height, width = previous.shape
        shifted = F.conv2d(
            previous.reshape(batch * channels, 1, height, width),
            self.shift_kernels,
            padding=self.motion_filter // 2,
        )  # [batch * C, k*k, H, W]: the previous frame moved by each offset
        shifted = shifted.view(batch, channels, -1, height, width).transpose(1, 2)
        if not self.training:
            out = out / self.temperature
        return (torch.softmax(out, dim=1).unsqueeze(2) * shifted).sum(dim=1)

    def finish_fit(self) -> None:
        """From now on sharpen the motion filter by `filter_temperature` (outside training):
        called once the fit has chosen its weights."""
        if self.motion_filter:
            self.temperature.fill_(self.filter_temperature)

    def streaming_unsupported(self) -> str | None:
        # `step` is exact (and checked), but each step runs the K-frame forecaster: no ONNX step
        # model is exported for this family.
        return "ConvLSTM: streaming covers the lstm and attention_lstm families"

    def initial_state(self, batch: int) -> dict[str, torch.Tensor]:
        """Zero h{k}, c{k} [batch, hidden, H, W] of every encoder layer k (and, with
        `frame_differences`, the black frame before the first, [batch, C, H, W])."""
        like = torch.zeros(batch, *self.output_shape[1:])
        state = {
            f"{name}{k}": part
            for k, cell in enumerate(self.encoder)
            for name, part in zip("hc", cell.zero_state(like), strict=True)
        }
        return {**state, "previous": like} if self.frame_differences else state

    def step(self, x_t: torch.Tensor, state: dict[str, torch.Tensor]):
        """({"y": the K frames predicted as if the sequence ended with x_t}, new state)."""
        previous = state.get("previous")
        states, inp = [], self._cell_input(x_t, previous)
        for k, cell in enumerate(self.encoder):
            states.append(cell.step(cell.input_gates(inp), (state[f"h{k}"], state[f"c{k}"])))
            inp = states[-1][0]
        new = {
            f"{name}{k}": part
            for k, s in enumerate(states)
            for name, part in zip("hc", s, strict=True)
        }
        if self.frame_differences:
            new["previous"] = x_t
        return {"y": self._forecast(list(states), x_t, previous)}, new

    def _encode(self, x: torch.Tensor) -> list[State]:
        """Final (h, c) of every encoder layer after the seq input frames."""
        states = []
        seq = x  # [batch, seq, ...] input sequence of the current layer
        for k, cell in enumerate(self.encoder):
            gx = cell.input_gates(seq)  # one batched conv over every frame
            state = cell.zero_state(x)
            last = k == len(self.encoder) - 1  # the top layer's outputs are never read
            if self.scan_for_export:
                state, seq = self._scan_layer(cell, gx, state)
            else:
                state, seq = self._loop_layer(cell, gx, state, keep=not last)
            states.append(state)
        return states

    @staticmethod
    def _loop_layer(cell: ConvLSTMCell, gx: torch.Tensor, state: State, keep: bool):
        outs = []
        # unbind, not gx[:, t]: each indexing step's backward would zero-fill a gradient of all
        # of gx (T of them); unbind's backward stacks the T step gradients once.
        for gx_t in gx.unbind(1):
            state = cell.step(gx_t, state)
            if keep:
                outs.append(state[0])
        return state, torch.stack(outs, dim=1) if keep else None

    @staticmethod
    def _scan_layer(cell: ConvLSTMCell, gx: torch.Tensor, state: State):
        # Always emits the per-step outputs, even for the top layer: a Scan with no scan outputs
        # exports an empty attribute list that torch.onnx can only guess the type of.
        def combine(carry, gx_t):
            h, c = cell.step(gx_t, carry)
            return (h, c), h.clone()  # scan forbids an output aliasing the carry

        state, outs = scan(combine, state, gx.transpose(0, 1))  # time-major: outputs stack on 0
        return state, outs.transpose(0, 1)
