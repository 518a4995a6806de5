"""validate stage: ONNX Runtime vs the PyTorch checkpoint, and test metrics through ONNX Runtime.

Writes metrics/<exp>/validate.json (flat, deterministic) and plots/<exp>/validate/, then raises
GateError if parity or a configured threshold fails, so the stage exits non-zero after reporting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import plots
from pipeline.checkpoint import trained_for
from pipeline.config import PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.errors import DataError, GateError, SystemFault
from pipeline.evaluation import lost_to_baseline, validate_failures
from pipeline.export.onnx_export import example_length, model_lock
from pipeline.export.parity import parity, streaming_report
from pipeline.export.quantize import int8_report
from pipeline.inference import onnx_meta, run_onnx, session
from pipeline.io import Outputs, dumps_json, file_digest
from pipeline.meta import same_data
from pipeline.paths import metrics_file, model_dir, plots_dir, prepared_dir
from pipeline.tasks import task_of
from pipeline.tracking import ensure_reachable, log_to_training_run


def deployable_files(folder: Path) -> list[tuple[Path, str | None]]:
    """The ONNX files validate passed, as MLflow artifacts: the model, its step model and its
    kept int8 version (in an `int8/` artifact folder, beside the float model.onnx)."""
    files = [
        (folder / "model.onnx", None),
        (folder / "streaming/model_step.onnx", None),
        (folder / "int8/model.onnx", "int8"),
    ]
    return [(path, where) for path, where in files if path.exists()]


def same_family(sess, path: Path, family: str) -> None:
    """Refuse an ONNX model of another family (e.g. copied from another experiment): its
    outputs are not the checkpoint's model's."""
    made = sess.get_modelmeta().custom_metadata_map.get("family", "null")
    if made != json.dumps(family):
        raise DataError(
            f"{path}: a {made} model, but the experiment's model.name is {family!r}; "
            "run the export stage"
        )


def validate(cfg: PipelineConfig, exp_name: str) -> dict:
    with model_lock(exp_name):
        return _validate(cfg, exp_name)


def _validate(cfg: PipelineConfig, exp_name: str) -> dict:
    ensure_reachable()  # before anything is written: the report goes to the training run too
    exp, folder = cfg.experiment(exp_name), model_dir(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    onnx_path = folder / "model.onnx"
    sess = session(onnx_path, cfg.trainer.threads)  # as the train stage's torch
    meta, rules = onnx_meta(sess, onnx_path), exp.validation  # the contract predict will use
    same_data(meta, prepared.meta, onnx_path, "export")
    same_family(sess, onnx_path, exp.model.name)
    task = task_of(meta)
    model = trained_for(folder / "model.ckpt", exp.model.name, prepared.meta).model
    x, y = prepared.arrays("test")
    x, extra = np.ascontiguousarray(x, dtype=np.float32), prepared.extra_inputs("test")
    covariates = {k: v for k, v in extra.items() if k != "lengths"}

    batches = rules.parity_batch_sizes
    try:
        max_diff, scaled_diff, shapes = parity(
            sess, model, x, batches, extra.get("lengths"), covariates
        )
    except MemoryError:  # not the training's advice (model size, fit.batch_size)
        raise SystemFault(
            f"out of memory checking parity at up to {max(batches)} x {2 * x.shape[1]} steps "
            "(twice the test series' length); lower validate.parity_batch_sizes"
        ) from None
    report = {
        "parity_max_abs_diff": max_diff,
        "parity_max_scaled_diff": scaled_diff,  # the gated one (validate.parity_tol)
        "parity_shapes": shapes,
        "export_seq_len": example_length(model),  # parity: the data's length, its half, double
        "test_size": len(x),
    }
    out, *outputs = run_onnx(sess, x, extra)
    scores, plot_data = task.evaluate(out, x, y, meta)
    report.update(scores)
    if rules.classical:
        report.update(task.classical_report(prepared, y, meta))
    report_path = metrics_file(exp_name, "validate")
    # the plots, the int8 model and the report are put in place together: a failure, even one
    # placing them (a folder another process holds), leaves the earlier three as they were
    with Outputs() as place, place.file(report_path) as report_file:
        with place.folder(plots_dir(exp_name, "validate")) as plot_dir:
            if outputs:  # attention weights
                plots.attention(x[:, :, 0], outputs[0], plot_dir)
            task.plot(plot_data, plot_dir)
        report.update(streaming_report(folder / "streaming", model, x))
        failed = validate_failures(report, rules, task)
        with place.folder(folder / "int8") as int8_dir:
            int8, timings = int8_report(exp, folder, int8_dir, report, x, y, meta, sess, extra)
        report.update(int8)
        report.update(passed=not failed, failed_gates=failed)
        report_file.write_text(dumps_json(report))
    onnx_metrics = {f"onnx/{k}": v for k, v in report.items() if isinstance(v, float)}
    log_to_training_run(
        cfg.tracking.experiment_name,
        folder / "model.ckpt",
        {**onnx_metrics, **timings},
        [report_path, *deployable_files(folder)],
        {
            "validate": "failed: " + "; ".join(failed) if failed else "passed",
            # what release checks the files it registers against (see release.verified_files)
            "validate_json_sha256": file_digest(report_path),
            "onnx_sha256": file_digest(folder / "model.onnx"),
        },
    )
    if not rules.beat_baseline:  # a user's data, where the recipe may lose: said, not failed
        for line in lost_to_baseline(report, task):
            print(f"{exp_name}: {line}: no better than the naive prediction "
                  "(validate.beat_baseline: true fails the stage on it)")  # fmt: skip
    if failed and cfg.trainer.gates == "enforce":
        raise GateError(f"{exp_name}: validation failed: " + "; ".join(failed))
    return report
