"""`make bench`: run every benchmark script, write benchmarks/results.json and results.md.

results.md is the table for the README's Performance section: every figure with the command
that made it and the machine it ran on.

It also replaces the table in README.md (between the `benchmarks/results.md` markers).

Results that a script printed on a GPU machine (`python benchmarks/X.py > X.json` there) join the
table with `--add X.json`, stored as `X@cuda` beside this machine's.

Usage: python benchmarks/run_all.py [--only train_overhead inference export_length data repro]
                                    [--add results-from-a-gpu.json ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("train_overhead", "inference", "export_length", "data", "repro")
README = HERE.parent / "README.md"
BEGIN, END = "<!-- benchmarks/results.md -->\n", "<!-- end of benchmarks/results.md -->"


def run(name: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"benchmarks/{name}.py failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return result


def key(result: dict) -> str:
    """Where a script's result is kept: its name, plus `@cuda` when it ran on a GPU."""
    cuda = "cuda" in (result.get("device"), result.get("torch_device"))
    return result["benchmark"] + ("@cuda" if cuda else "")


def runs_of(results: dict, script: str) -> list[tuple[str, dict]]:
    return [(k, results[k]) for k in (script, f"{script}@cuda") if k in results]


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(what, figure, target, results key) per line of the table."""
    out = []
    for at, t in runs_of(results, "train_overhead"):
        for case in ("lstm", "conv_lstm", "lstm_wide"):
            if not (r := t.get(case)):
                continue
            peak = (
                f"; {r['lightning_tflops']} TFLOP/s = {r['fraction_of_gpu_peak']:.2%} of the "
                f"GPU's bf16 matmul peak ({t['gpu_bf16_matmul_tflops']} TFLOP/s measured)"
                if "fraction_of_gpu_peak" in r
                else ""
            )
            out.append(
                (
                    f"training on {t['device']}, {case}, batch {r['batch_size']}, "
                    f"{r['precision']}: Lightning module / hand-written loop",
                    f"{r['lightning_samples_per_s']} vs {r['plain_loop_samples_per_s']} "
                    f"samples/s = **{r['ratio']}** ({r['clock']} time; wall {r['wall_ratio']})"
                    + peak,
                    ">= 0.97",
                    at,
                )
            )
    for at, inf in runs_of(results, "inference"):
        for family in ("lstm", "gru", "attention_lstm", "conv_lstm"):
            for r in inf[family]["latency"]:
                int8 = f", int8 {r['onnxruntime_int8_ms']} ms" if "onnxruntime_int8_ms" in r else ""
                out.append(
                    (
                        f"inference, {family}, batch {r['batch']}, seq {r['seq']}: "
                        f"ONNX Runtime (CPU) / torch eager ({inf['torch_device']})",
                        f"{r['onnxruntime_ms']} vs {r['torch_ms']} ms = **{r['ort_to_torch']}**"
                        + int8,
                        "<= 0.5 at batch 1" if r["batch"] == 1 and at == "inference" else "",
                        at,
                    )
                )
            if s := inf[family].get("streaming"):
                out.append(
                    (
                        f"streaming, {family}, one step, batch 1: ONNX Runtime / torch",
                        f"{s['onnxruntime_step_ms']} vs {s['torch_step_ms']} ms per step",
                        "",
                        at,
                    )
                )
    if e := results.get("export_length"):
        for r in e["rows"]:
            step = f" + step model {r['step_export_s']} s" if r["step_export_s"] is not None else ""
            out.append(
                (
                    f"export stage work, {r['family']}, {r['length']}-step inputs",
                    f"**{r['stage_s']} s** in a fresh process (export {r['export_s']} s{step}); "
                    f"ORT vs torch at {r['length']} steps {r['parity_max_abs_diff_at_length']:.1e}",
                    "<= 20 s at 1,000 steps",
                    "export_length",
                )
            )
    if d := results.get("data"):
        mb = d["raw_bytes"] / 1e6
        out += [
            (
                f"prepare, {d['series_steps']:,}-step series (raw float32 {mb:.0f} MB), "
                f"window {d['window']}",
                f"{d['prepare_s']} s, peak RSS **{d['prepare_peak_rss_to_raw']}x** raw",
                "< 1.5x",
                "data",
            ),
            (
                f"one epoch of loading ({d['loaded_samples']:,} windows, batch {d['batch_size']})",
                f"{d['load_epoch_s']} s, peak RSS **{d['load_peak_rss_to_raw']}x** raw; "
                f"{d['loader_samples_per_s']:,} samples/s vs the LSTM's "
                f"{d['model_samples_per_s']} = {d['loader_to_model_rate']}x",
                "< 1.5x; loader faster than the model",
                "data",
            ),
        ]
    if r := results.get("repro"):
        out += [
            (
                f"`dvc repro` from scratch ({r['timed']})",
                f"{r['repro_from_scratch_s']} s; per stage: " + stage_sums(r["stages_s"]),
                "<= 180 s",
                "repro",
            ),
            (
                "the same `dvc repro -f` with warm stage starts off (`LSTM_PIPELINE_WARM=0`)",
                f"{r['cold_from_scratch_s']} s; per stage: " + stage_sums(r["cold_stages_s"]),
                "",
                "repro",
            ),
            ("no-op `dvc repro`", f"{r['repro_noop_s']} s", "", "repro"),
            (
                f"`lstm-pipeline repro -f` from scratch ({r['lanes']} lanes, as `make repro`)",
                f"**{r['lanes_from_scratch_s']} s**",
                "<= 180 s",
                "repro",
            ),
        ]
    return out


def stage_sums(stages: dict[str, float]) -> str:
    """'prepare 14 s (...), train ...': each kind of stage's total, then each experiment's."""
    kinds: dict[str, list[str]] = {}
    totals: dict[str, float] = {}
    for name, seconds in stages.items():
        kind, _, exp = name.partition("@")
        kinds.setdefault(kind, []).append(f"{exp} {seconds:.0f}")
        totals[kind] = totals.get(kind, 0.0) + seconds
    order = [k for k in ("prepare", "train", "export", "validate") if k in kinds]
    order += [k for k in kinds if k not in order]
    return "; ".join(f"{k} {totals[k]:.0f} s ({', '.join(kinds[k])})" for k in order)


def markdown(results: dict) -> str:
    machines = sorted({r["machine"] for r in results.values()})
    lines = [
        "| what | figure | target | command | machine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for what, figure, target, at in rows(results):
        script = at.partition("@")[0]
        cmd = f"`make bench` (`python benchmarks/{script}.py`)"
        if at.endswith("@cuda"):
            cmd = f"`python benchmarks/{script}.py` on the GPU, then `run_all.py --add`"
        lines.append(f"| {what} | {figure} | {target} | {cmd} | {results[at]['machine']} |")
    note = (
        f"\nMachines: {'; '.join(machines)}. Figures are medians of repeated runs "
        "(see each script's docstring).\n"
    )
    return "\n".join(lines) + "\n" + note


def added_result(path: Path) -> dict:
    """The JSON object a benchmark printed last in `path`; exits with one line if it is not."""
    try:
        result = json.loads(path.read_text().strip().splitlines()[-1])
    except (OSError, IndexError, ValueError) as err:
        sys.exit(f"run_all.py: --add {path}: not a benchmark's JSON output ({err})")
    if not isinstance(result, dict) or not {"benchmark", "machine"} <= result.keys():
        sys.exit(f"run_all.py: --add {path}: its last line names no benchmark and machine")
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=list(SCRIPTS), choices=SCRIPTS)
    p.add_argument("--add", nargs="*", default=[], type=Path, metavar="JSON")
    args = p.parse_args()
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    new = [run(name) for name in args.only]
    new += [added_result(path) for path in args.add]
    for result in new:
        results[key(result)] = result
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = markdown(results)
    (HERE / "results.md").write_text(table)
    readme = README.read_text()
    head, rest = readme.split(BEGIN, 1)
    README.write_text(head + BEGIN + table + rest[rest.index(END) :])
    print(table)


if __name__ == "__main__":
    main()
