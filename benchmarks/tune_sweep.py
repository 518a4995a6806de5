"""The default sweep (conf/tune/default.yaml: 40 trials with the experiment's epoch budget, ASHA,
2 concurrent trials) on lstm_italypowerdemand in a temp clone: its CPU use, then the best trial
applied with `lstm-pipeline tune-apply --force` and reproduced by `dvc repro`.

CPU: the CPU seconds of the sweep's own processes (the CLI, the local Ray it starts and every
trial worker: its process tree, sampled every 0.2 s) over wall time x cores; the whole
machine's utilisation from /proc/stat is printed beside it (other work on the host counts there).

Usage: python benchmarks/tune_sweep.py [EXPERIMENT]   (prints one JSON object)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from common import clone_repo, machine

# Ray sets a worker's process title to the actor it runs: a Tune trial is an ImplicitFunc.
TRIAL_TITLES = ("ray::ImplicitFunc", "ray::run_trial")


def proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def monitored(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run `cmd`; sum CPU time over its process tree, sampled until it exits."""
    cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> last user+system seconds
    samples = []  # (time, CPU seconds so far, a trial is running)
    names = set()
    peak = 0
    busy0, total0 = proc_stat()
    start = time.perf_counter()
    # into a file, not a pipe: nobody reads a pipe until the sweep ends, and 40 trials' progress
    # tables fill its 64 KB, which blocks the Tune driver on a write (the sweep never ends)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        peak = max(peak, len(tree))
        trial_running = False
        for p in tree:
            try:
                t = p.cpu_times()
                cpu[(p.pid, p.create_time())] = t.user + t.system
                name = p.cmdline()[0] if p.cmdline() else p.name()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            names.add(name.split(" ")[0][:40])
            trial_running |= name.startswith(TRIAL_TITLES)
        samples.append((time.perf_counter(), sum(cpu.values()), trial_running))
        time.sleep(0.2)
    log.seek(0)
    out = log.read().decode(errors="replace")
    wall = time.perf_counter() - start
    busy1, total1 = proc_stat()
    if proc.returncode:
        sys.exit(f"{cmd} failed:\n{out[-4000:]}")
    cores = os.cpu_count()
    during = [(t, c) for t, c, running in samples if running]
    trials = {}
    if len(during) > 1:
        (t0, c0), (t1, c1) = during[0], during[-1]
        trials = {
            "trials_phase_s": round(t1 - t0, 1),
            "cpu_utilisation_own_processes_trials_phase": round((c1 - c0) / ((t1 - t0) * cores), 3),
        }
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(cpu.values()), 1),
        "cpu_utilisation_own_processes": round(sum(cpu.values()) / (wall * cores), 3),
        "cpu_utilisation_whole_machine": round((busy1 - busy0) / (total1 - total0), 3),
        **trials,
        "processes_seen": len(cpu),
        "process_titles": sorted(names),
        "peak_concurrent_processes": peak,
    }


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    exp = sys.argv[1] if len(sys.argv) > 1 else "lstm_italypowerdemand"
    with tempfile.TemporaryDirectory(prefix="bench-tune-", dir="/tmp") as tmp:
        work, env = clone_repo(tmp)
        env.pop("RAY_ADDRESS", None)
        run(["dvc", "repro", f"prepare@{exp}"], work, env)
        params = yaml.safe_load((work / "params.yaml").read_text())
        tune, fit = params["tune"], params["experiments"][exp].get("fit", {})
        current = json.loads((work / "metrics" / exp / "train.json").read_text())
        sweep = monitored(["lstm-pipeline", "tune", exp], work, env)
        best = yaml.safe_load((work / "tune" / exp / "best_params.yaml").read_text())
        apply_cmd = ["lstm-pipeline", "tune-apply", exp, "--force"]  # even a worse one
        run(apply_cmd, work, env)
        default_stages = run(["dvc", "stage", "list", "--name-only"], work, env).split()
        run(["dvc", "repro", f"train@{exp}"], work, env)
        train = json.loads((work / "metrics" / exp / "train.json").read_text())
    print(
        json.dumps(
            {
                "benchmark": "tune_sweep",
                "machine": machine(),
                "experiment": exp,
                "trials": tune["num_samples"],
                "epochs_per_trial": tune["max_epochs"] or fit.get("max_epochs"),
                "max_concurrent_trials": tune["max_concurrent_trials"],
                "scheduler": tune["scheduler"],
                "sweep": sweep,
                "best_trial": best["trial"],
                "best_overrides": best["overrides"],
                "best_trial_val_loss": best["val_loss"],
                "committed_model_val_loss": current["best_val_loss"],
                "improves": best["val_loss"] <= current["best_val_loss"],
                "apply_command": " ".join(apply_cmd) + f" && dvc repro train@{exp}",
                "dvc_repro_best_val_loss": train["best_val_loss"],
                "abs_diff": abs(train["best_val_loss"] - best["val_loss"]),
                "default_dvc_yaml_has_no_tune_stage": not any(
                    st.startswith("tune") for st in default_stages
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
