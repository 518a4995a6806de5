"""Next-frame prediction: [batch, K, C, H, W] in [0, 1], scored per frame beside the
copy-last-frame baseline."""

from __future__ import annotations

import numpy as np

from pipeline import plots
from pipeline.errors import DataError, first_line
from pipeline.io import atomic_file, is_stream, system_fault
from pipeline.meta import DataMeta
from pipeline.tasks.base import Task


def frame_scores(pred: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict:
    # torchmetrics' SSIM, the same numbers train reports (imported here only: predict never
    # scores frames)
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    per_step = ((pred - truth) ** 2).mean(axis=(0, 2, 3, 4))
    ssim_per_step = [
        float(ssim(torch.from_numpy(p), torch.from_numpy(t), data_range=1.0))
        for p, t in zip(pred.swapaxes(0, 1), truth.swapaxes(0, 1), strict=True)
    ]
    pixels = int(np.prod(pred.shape[2:]))
    return {
        f"{prefix}mse": float(per_step.mean()),
        # OpenSTL's "MSE": squared error summed over a frame's pixels, averaged over frames
        f"{prefix}sse_per_frame": float(per_step.mean() * pixels),
        f"{prefix}ssim": float(np.mean(ssim_per_step)),  # every step holds as many frames
        f"{prefix}mse_per_step": [float(v) for v in per_step],
        f"{prefix}ssim_per_step": ssim_per_step,
    }


class Frames(Task):
    name = "frames"
    directions = {
        "mse": False,
        "ssim": True,
        "sse_per_frame": False,
        "baseline_mse": False,
        "baseline_ssim": True,
        "baseline_sse_per_frame": False,
        "mse_ratio_to_baseline": False,
    }
    headline = "mse"
    output_formats = (".npy",)
    # SSIM of teacher-forced training frames says little of the model's own, and cost 13 % of
    # the fit once the cells ran on patches
    not_in_training = ("ssim",)

    def output_shape(self, meta: DataMeta) -> tuple[int, ...]:
        return (meta.horizon, *meta.input_shape[1:])

    def torchmetrics(self, meta: DataMeta) -> dict:  # on [0, 1] intensities, frame by frame
        from torchmetrics import MeanSquaredError
        from torchmetrics.image import StructuralSimilarityIndexMeasure

        return {"mse": MeanSquaredError(), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)}

    def metric_inputs(self, module, out, y) -> tuple:
        return out.flatten(0, 1), y.flatten(0, 1)

    def evaluate(self, out, x, y, meta: DataMeta):
        copy_last = np.repeat(x[:, -1:], y.shape[1], axis=1)
        report = {**frame_scores(out, y), **frame_scores(copy_last, y, "baseline_")}
        report["mse_ratio_to_baseline"] = report["mse"] / report["baseline_mse"]
        # the baseline's metrics share these units
        report.update(
            mse_unit="squared intensity, pixels scaled to [0, 1]",
            sse_per_frame_unit="squared intensity summed over a frame's pixels (OpenSTL's MSE)",
            ssim_unit="index, -1 to 1",
        )
        per_step = {k: report[k] for k in ("mse_per_step", "baseline_mse_per_step")}
        shown = slice(0, 3)  # the first three test sequences, not a chosen one
        return report, {"inputs": x[shown], "pred": out[shown], "truth": y[shown], **per_step}

    def plot(self, data: dict, out) -> None:
        plots.frames(
            data["inputs"],
            data["pred"],
            data["truth"],
            data["mse_per_step"],
            data["baseline_mse_per_step"],
            out,
        )

    def baseline_gates(self, report: dict) -> list[tuple[str, str]]:
        # MSE alone rewards the blurred mean image; SSIM must beat copy-last-frame as well
        return [("mse", "baseline_mse"), ("ssim", "baseline_ssim")]

    def read_inputs(self, path, output, meta: DataMeta, id_column, time_column):
        for file, role in ((path, "reads"), (output, "writes")):
            if file.suffix.lower() != ".npy" and not (file is output and is_stream(output)):
                raise DataError(f"{file}: a frames model {role} .npy arrays [n, frames, C, H, W]")
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            fault = system_fault(err, path)  # permission denied
            why = "pickled objects, or not .npy" if "pickled" in str(err) else first_line(err)
            raise fault or DataError(f"{path}: not a .npy array ({why})") from None
        if not isinstance(x, np.ndarray):  # np.load reads an .npz archive whatever its name
            raise DataError(f"{path}: not a .npy array (an .npz archive)")
        expected = tuple(meta.input_shape[1:])
        if x.ndim != 5 or x.shape[2:] != expected or 0 in x.shape[:2]:
            raise DataError(
                f"{path}: shape {list(x.shape)}; the model needs [n, frames, "
                f"{', '.join(map(str, expected))}], n and frames at least 1"
            )
        if x.dtype.kind not in "uif":
            raise DataError(f"{path}: {x.dtype} values; pixels are numbers 0..255")
        outside = ~((x >= 0) & (x <= 255))  # NaN too
        if outside.any():
            at = np.argwhere(outside)[0]
            raise DataError(f"{path}: pixel {x[tuple(at)]:g} at {at.tolist()}; pixels are 0..255")
        if x.dtype.kind == "f" and 0 < x.max() <= 1:
            raise DataError(f"{path}: pixels 0..{x.max():g}; the model reads 0..255 (times 255?)")
        return x, None, {}

    def scale_inputs(self, x, meta: DataMeta):
        # uint8 pixels, divided in float32 as the training data was
        return x.astype(np.float32) / np.float32(meta.scaler.std[0])

    def predictions(self, out, x, meta: DataMeta, keys, id_column: str) -> np.ndarray:
        return (out * np.float32(meta.scaler.std[0])).astype(np.float32)  # back to 0..255

    def write(self, result: np.ndarray, output) -> None:
        with atomic_file(output, stream=True) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, result)
