"""Where `make test`'s time goes: the test suite run as `make test` runs it (one worker per core,
loadscope), every Python process it starts recording its own CPU time when it exits (a
sitecustomize.py put on PYTHONPATH), summed by command: `lstm-pipeline train`, `dvc`, Ray's
workers, the pytest workers themselves, warm stage servers, ...

On 2 cores the suite is CPU-bound: its wall time cannot fall below the CPU it spends divided by
the cores. `cgroup_cpu_s` is that CPU, every process counted, where a cgroup v1 `cpuacct` group
can be made (root on Linux); else null, and two totals each miss something: `cpu_s`, the CPU of
the processes this run reaped (user + sys), misses the warm stage servers, which run detached,
and the stages they fork; `recorded_cpu_s`, the sum of the records, misses processes that are
not Python (git, Ray's raylet and GCS server), killed by a signal (the kill -9 tests) or unable
to write their record (the disk-full test). `unrecorded_cpu_s` is `cpu_s` less the records
(negative when the warm servers' share is larger); `cpu_floor_s` divides the largest total by
the cores.

Usage: python benchmarks/suite_cpu.py [pytest arguments, e.g. tests/test_repro.py]
(prints one JSON object; the pytest report goes to stderr)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import suppress
from pathlib import Path

from common import REPO, machine

from pipeline.io import usable_cores

HOOK = """\
import atexit, json, os, sys

def _record():
    t = os.times()
    try:  # never a new error in the process measured (a test limits its file sizes)
        with open(os.environ["SUITE_CPU_LOG"], "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
            record = {"argv": sys.argv[:2], "cpu": t.user + t.system, "test": test}
            f.write(json.dumps(record) + "\\n")
    except OSError:
        pass

atexit.register(_record)
"""


def command(argv: list[str]) -> str:
    """A process's command, e.g. `lstm-pipeline train`, `dvc`, `ray worker`, `python -c`."""
    first = Path(argv[0]) if argv and argv[0] else Path("python")
    name = first.parent.name if first.name == "__main__.py" else first.name
    if name in ("lstm-pipeline", "pipeline") and len(argv) > 1:
        return f"lstm-pipeline {argv[1]}"
    if name == "default_worker.py":
        return "ray worker"
    if name == "-c" and len(argv) > 1 and len(argv[1]) == 32:  # pipeline/warm.py's server
        return "warm server"
    return "python -c" if name == "-c" else name


def cpu_group() -> Path | None:
    """A new cgroup v1 `cpuacct` group: it counts the CPU of every process the suite starts,
    those no record holds too (git, Ray's C++ servers, processes killed by a signal, detached
    ones). None where this user cannot make one (then only the records and rusage count)."""
    group = Path("/sys/fs/cgroup/cpuacct") / f"suite-cpu-{os.getpid()}"
    try:
        group.mkdir()
    except OSError:
        return None
    return group


def group_cpu_s(group: Path | None) -> float | None:
    """The group's CPU seconds once its last process has ended (the warm servers end 20 s after
    their last stage); the group is then removed."""
    if group is None:
        return None
    for _ in range(60):
        if not (group / "cgroup.procs").read_text().strip():
            break
        time.sleep(1)
    cpu = int((group / "cpuacct.usage").read_text()) / 1e9
    with suppress(OSError):  # a process still in it: the group stays, empty groups cost nothing
        group.rmdir()
    return round(cpu, 1)


def main() -> None:
    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="suite-cpu-") as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(HOOK)
        log = Path(tmp) / "processes.jsonl"
        path = os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "SUITE_CPU_LOG": str(log)}
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(cores),
               "--dist", "loadscope", "--no-loadscope-reorder", "-q", *sys.argv[1:]]  # fmt: skip
        group = cpu_group()
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
            preexec_fn=group and (lambda: (group / "cgroup.procs").write_text("0")),
        )  # fmt: skip
        wall = time.perf_counter() - start
        group_cpu = group_cpu_s(group)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        records = (
            [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        )
    sys.stderr.write(proc.stdout)
    by_command = defaultdict(lambda: {"processes": 0, "cpu_s": 0.0})
    for r in records:
        row = by_command[command(r["argv"])]
        row["processes"] += 1
        row["cpu_s"] += r["cpu"]
    by_test = defaultdict(float)  # the CPU of the processes each test started
    for r in records:
        if r["test"]:
            by_test[r["test"]] += r["cpu"]
    total = usage.ru_utime + usage.ru_stime
    recorded = sum(r["cpu"] for r in records)
    rows = sorted(by_command.items(), key=lambda kv: -kv[1]["cpu_s"])
    print(json.dumps({
        "benchmark": "suite_cpu",
        "machine": machine(),
        "command": " ".join(["python benchmarks/suite_cpu.py", *sys.argv[1:]]),
        "pytest_exit_code": proc.returncode,
        "pytest_summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "workers": cores,
        "wall_s": round(wall, 1),
        "cpu_s": round(total, 1),
        "recorded_cpu_s": round(recorded, 1),
        "cgroup_cpu_s": group_cpu,
        "cpu_floor_s": round(max(total, recorded, group_cpu or 0) / cores, 1),
        "unrecorded_cpu_s": round(total - recorded, 1),
        "by_command": [{"command": k, "processes": v["processes"], "cpu_s": round(v["cpu_s"], 1)}
                       for k, v in rows],
        "tests_by_process_cpu_s": dict(sorted(
            ((k, round(v, 1)) for k, v in by_test.items()), key=lambda kv: -kv[1])[:40]),
    }, indent=2))  # fmt: skip
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
