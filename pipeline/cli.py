"""`lstm-pipeline <stage> <experiment>`: load config, run one stage, map errors to exit codes."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import importlib
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from pipeline import io, warm
from pipeline.config import PARAMS_FILE, compose, load_config, project_above
from pipeline.errors import (
    STOPS,
    ConfigError,
    Interrupted,
    PipelineError,
    SystemFault,
    TrackingError,
    TrainingError,
    first_line,
    handle,
    ignore_repeats,
    launched_rank,
)
from pipeline.io import atomic_file, not_utf8_line, usable_cores
from pipeline.quiet import quiet

# as the command was started: what `lstm-pipeline repro` gives its dvc and stages (main() sets
# variables for this process; inherited, they gave its stages a warm server of their own, not
# the one a plain `dvc repro`'s stages share)
STARTED_ENV = dict(os.environ)


def _entry(target: str):
    """`module:function`, imported when called: `compose` should not pay for torch."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _checked_config(args: argparse.Namespace):
    """The config, with the experiment key checked before a stage module (torch) is imported:
    a config error returns in well under a second."""
    cfg = load_config(args.params)
    cfg.experiment(args.experiment)
    return cfg


def _stage(target: str):
    def run(args: argparse.Namespace) -> None:
        cfg = _checked_config(args)
        _entry(target)(cfg, args.experiment)

    return run


def _train(args: argparse.Namespace) -> None:
    cfg = _checked_config(args)
    where = "ray_train:train_on_ray" if cfg.trainer.ray_workers else "train:train"
    _entry(f"pipeline.training.{where}")(cfg, args.experiment)


def _compose(args: argparse.Namespace) -> None:
    if not args.conf and not Path("conf").is_dir() and (above := project_above()):
        raise ConfigError(f"conf/: not found here; run it in the project's folder, {above}")
    text = compose(args.overrides, args.conf and Path(args.conf))
    params = Path(args.params)
    if params.is_dir():  # not "cannot write there", naming the temp file beside it
        raise ConfigError(f"{params}: Is a directory")
    if args.check:
        if not params.exists():
            raise PipelineError(f"{args.params}: not found; `lstm-pipeline compose` writes it")
        try:
            current = params.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(not_utf8_line(err, args.params)) from None
        if current != text:
            raise PipelineError(
                f"{args.params} differs from the composition of {args.conf or 'conf/'} "
                f"({_first_difference(current, text)}); `lstm-pipeline compose` rewrites it"
            )
        return
    with atomic_file(args.params) as tmp:
        tmp.write_text(text, encoding="utf-8")  # not the locale's (ISO-8859-1: exit 0)


def _first_difference(current: str, composed: str) -> str:
    """'line 38: seed: 1, composed: seed: 0'."""
    lines = zip(current.splitlines(), composed.splitlines(), strict=False)
    for number, (have, want) in enumerate(lines, start=1):
        if have != want:
            return f"line {number}: {have.strip()!r}, composed: {want.strip()!r}"
    shorter = min(current.count("\n"), composed.count("\n")) + 1
    return f"line {shorter}: {'more' if len(current) > len(composed) else 'fewer'} lines"


def _repro(args: argparse.Namespace) -> None:
    cfg = load_config(PARAMS_FILE)  # dvc reads no other file
    for name in args.experiments:
        cfg.experiment(name)  # an unknown one is a config error naming it
    named = [exp for exp in cfg.experiments if exp in args.experiments]  # params.yaml's order
    _entry("pipeline.repro:repro")(
        named or list(cfg.experiments), args.jobs, args.force, bool(named), STARTED_ENV
    )


def _tune(args: argparse.Namespace) -> None:
    _entry("pipeline.tuning.sweep:tune")(
        load_config(args.params), args.experiment, resume=args.resume
    )


def _tune_apply(args: argparse.Namespace) -> None:
    from pipeline.tuning.apply import apply_best, dvc_exp_run_command

    if args.print:
        if args.params != PARAMS_FILE:  # dvc exp run composes the project's params.yaml
            raise ConfigError("--params: dvc exp run writes the project's params.yaml; drop it")
        print(dvc_exp_run_command(args.experiment, args.overrides, args.force))
        return
    overrides = apply_best(args.experiment, args.params, args.overrides, args.force)
    print(f"{args.params} composed with: {' '.join(overrides)}\nnow run: dvc repro")


def _predict(args: argparse.Namespace) -> None:
    predict = _entry("pipeline.predict:predict")
    from pipeline.io import is_stream

    output = "/dev/stdout" if args.output == "-" else args.output
    try:
        out = predict(args.model, args.input, output, args.id_column, args.time_column)
    except BrokenPipeError:
        if not is_stream(Path(output)):
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # for the exit's flush
        raise ReaderGone() from None
    print(f"wrote {out}", file=sys.stderr if is_stream(out) else sys.stdout)


class ReaderGone(PipelineError):
    """`-o - | head`: the reader stopped reading; no line, the exit code of a tool that SIGPIPE
    ended, as `cat` or `git log` have there."""

    exit_code = 141


def _release(args: argparse.Namespace) -> None:
    if args.history:
        print(_entry("pipeline.release:release_history")(load_config(args.params), args.history))
        return
    release = functools.partial(_entry("pipeline.release:release"), load_config(args.params))
    if args.card == "-":  # the card on stdout, as predict's `-o -`: the release's lines beside it
        with contextlib.redirect_stdout(sys.stderr):
            release(args.exp, args.promote, Path("/dev/stdout"))
        return
    card = None if args.card is None else Path(args.card)  # '' is the folder it names
    release(args.exp, args.promote, card)


def _user_path(text: str) -> str:
    """`--output=~/x`: no shell expands a `~` after `=`; it would make a folder named `~`."""
    return os.path.expanduser(text)


def _port(text: str) -> int:
    if not (text.isdigit() and 0 < int(text) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _lanes(text: str) -> int:
    if not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lanes (1 or more)")
    return int(text)


def _mlflow_server(args: argparse.Namespace) -> None:
    _entry("pipeline.tracking.server:serve")(args.port, args.root, args.artifacts_destination)


STAGES = {
    "prepare": _stage("pipeline.data.prepare:prepare"),
    "train": _train,
    "export": _stage("pipeline.export.onnx_export:export"),
    "validate": _stage("pipeline.export.validate:validate"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-pipeline", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"%(prog)s {version('lstm-pipeline')}")
    # also after the command; SUPPRESS: a subcommand's default must not undo `--debug COMMAND`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])
    c = sub.add_parser("compose", help="write params.yaml from conf/ (Hydra overrides allowed)")
    c.add_argument("overrides", nargs="*", help="e.g. trainer.max_epochs=3")
    c.add_argument(
        "--conf",
        type=_user_path,
        help="the Hydra config folder (default: ./conf, else the package's)",
    )
    c.add_argument("--check", action="store_true", help="fail if params.yaml is not up to date")
    c.add_argument("--params", type=_user_path, default=PARAMS_FILE)
    c.set_defaults(func=_compose)
    for stage, func in STAGES.items():
        s = sub.add_parser(stage, help=f"run the {stage} stage for one experiment")
        s.add_argument("experiment", help="a key of experiments in params.yaml")
        s.add_argument("--params", type=_user_path, default=PARAMS_FILE)
        s.set_defaults(func=func)
    rp = sub.add_parser("repro", help="dvc repro, with experiments side by side on --jobs lanes")
    rp.add_argument("experiments", nargs="*", help="only these (default: all of params.yaml's)")
    rp.add_argument("--jobs", type=_lanes, default=usable_cores(), help="default: the usable cores")
    rp.add_argument("-f", "--force", action="store_true", help="rerun every stage (dvc repro -f)")
    rp.set_defaults(func=_repro)
    r = sub.add_parser("release", help="register a validated model in the MLflow registry")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--exp", help="a key of experiments in params.yaml")
    which.add_argument("--history", metavar="EXP", help="print who moved its aliases, and when")
    r.add_argument("--promote", action="store_true", help="make the new version @champion")
    r.add_argument(
        "--card",
        type=_user_path,
        help="also write the version's model card (Markdown) here; - for stdout",
    )
    r.add_argument("--params", type=_user_path, default=PARAMS_FILE)
    r.set_defaults(func=_release)
    pr = sub.add_parser("predict", help="predict a long-format CSV/Parquet (or .npy frames)")
    pr.add_argument(
        "model", type=_user_path, help="an ONNX file from export, or models:/<name>@<alias>"
    )
    pr.add_argument("input", type=_user_path, help="CSV/Parquet in the long format, or .npy frames")
    pr.add_argument(
        "-o", "--output", type=_user_path, required=True,
        help="predictions .csv (.npy for frames); - for stdout",
    )  # fmt: skip
    for column, default in (("id", "series_id"), ("time", "time")):
        pr.add_argument(
            f"--{column}-column",
            help=f"default: the training CSV's {column}_column (in the model), else {default}",
        )
    pr.set_defaults(func=_predict)
    m = sub.add_parser("mlflow-server", help="start a local MLflow tracking server")
    m.add_argument("--port", type=_port, default=5000)
    m.add_argument(
        "--root", type=_user_path, default="mlflow-server",
        help="folder for its database and artifacts",
    )  # fmt: skip
    m.add_argument(
        "--artifacts-destination", help="store artifacts there instead, e.g. s3://bucket/mlflow"
    )
    m.set_defaults(func=_mlflow_server)
    t = sub.add_parser("tune", help="Ray Tune sweep over one experiment -> tune/<exp>/")
    t.add_argument("experiment")
    t.add_argument("--params", type=_user_path, default=PARAMS_FILE)
    t.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    t.set_defaults(func=_tune)
    a = sub.add_parser(
        "tune-apply", help="compose params.yaml with tune/<exp>/best_params.yaml (then dvc repro)"
    )
    a.add_argument("experiment")
    a.add_argument("overrides", nargs="*", help="other Hydra overrides to keep")
    a.add_argument("--params", type=_user_path, default=PARAMS_FILE)
    a.add_argument("--print", action="store_true", help="print the `dvc exp run -S ...` line")
    a.add_argument(
        "--force", action="store_true", help="apply a trial worse than the current model"
    )
    a.set_defaults(func=_tune_apply)
    return p


# What the serving install (numpy, pandas, onnxruntime) lacks, and the extra that brings it
EXTRA_OF = dict.fromkeys(
    ["torch", "pytorch_lightning", "lightning_fabric", "torchmetrics", "hydra", "omegaconf", "dvc",
     "ray", "optuna", "onnx", "onnxscript", "sklearn", "sktime", "statsmodels", "matplotlib",
     "rich"],
    "train",
) | {"mlflow": "registry"}  # fmt: skip


# torch's allocator; a shared library that cannot be mapped (ImportError: exit 1, "unexpected")
OUT_OF_MEMORY = ("can't allocate memory", "failed to map segment from shared object")


def _as_pipeline_error(err: BaseException) -> PipelineError:
    """One line for an error no stage turned into a PipelineError: a package the serving install
    lacks (exit 2); disk, permissions and memory name the path (exit 8); MLflow's own errors the
    tracking URI (exit 6); else a bug (exit 1)."""
    from pipeline.io import system_fault

    package = isinstance(err, ModuleNotFoundError) and (err.name or "").partition(".")[0]
    if package in EXTRA_OF:
        extra = EXTRA_OF[package]
        return ConfigError(f"{package} is not installed: pip install 'lstm-pipeline[{extra}]'")
    if package and "MLFLOW_TRACKING_URI" in os.environ:  # a store's driver (psycopg, MySQLdb)
        from pipeline.tracking import redacted, tracking_uri

        return TrackingError(
            f"MLflow store {redacted(tracking_uri())}: its driver, Python package {package!r}, "
            "is not installed"
        )
    if fault := system_fault(err):
        return fault
    if isinstance(err, FileNotFoundError) and (gone := _deleted_working_folder()):
        return SystemFault(f"{gone}: the working folder was deleted; cd to one that exists")
    if isinstance(err, OSError) and err.filename:  # e.g. a file where a folder must be
        return SystemFault(f"{err.filename}: {err.strerror}")
    mlflow = sys.modules.get("mlflow.exceptions")  # never imported for it: predict may lack it
    if mlflow and isinstance(err, mlflow.MlflowException):  # e.g. a workspace's credentials
        from pipeline.tracking import disk_fault, redacted, tracking_uri

        if fault := disk_fault(err):  # under a SQLite store
            return SystemFault(f"MLflow store {redacted(tracking_uri())}: {fault}")
        return TrackingError(f"MLflow at {redacted(tracking_uri())}: {first_line(err)[:300]}")
    if isinstance(err, RuntimeError) and any(b in str(err) for b in ("/gloo/", "NCCL")):
        if launched_rank():
            return PipelineError("")
        rank = os.environ.get("RANK", "0")
        return PipelineError(
            f"DDP rank {rank}: another rank of this training stopped ({_gloo_cause(err)}); "
            "run it again to resume from its last saved epoch"
        )
    if isinstance(err, MemoryError) or any(s in str(err) for s in OUT_OF_MEMORY):
        return SystemFault(
            "out of memory; lower the model's size (model.hidden_size, model.num_layers) or "
            "fit.batch_size"
        )
    first = first_line(err)[:300]
    return PipelineError(
        f"unexpected {type(err).__name__}: {first} (rerun with --debug for the traceback)"
    )


def _deleted_working_folder() -> str | None:
    """The working folder, where it was removed under the command: relative paths, and the
    config found from it (Path.cwd()), fail with a FileNotFoundError that names nothing."""
    try:
        os.getcwd()
        return None
    except FileNotFoundError:
        # Linux names it (PWD may be a parent's, not this process's)
        with contextlib.suppress(OSError):
            return os.readlink("/proc/self/cwd").removesuffix(" (deleted)")
        return "the working folder"


def _gloo_cause(err: RuntimeError) -> str:
    """'Connection reset by peer' from gloo's '[.../pair.cc:537] Read error [127.0.0.1]:29362:
    Connection reset by peer. This is typically caused by ...'."""
    text = first_line(err).split("] ", 1)[-1]
    return text.split(". ", 1)[0][:200]


def _cause(err: BaseException | None, kind: type) -> BaseException | None:
    """The `kind` (Ctrl+C's KeyboardInterrupt, SIGTERM's _Terminated) that a library turned
    into its own error, if any: Lightning ends the fit with exit(1), torch.onnx raises
    TorchExportError from it, a C extension's import an ImportError."""
    while err is not None and not isinstance(err, kind):
        err = err.__cause__ or err.__context__
    return err


# train handles SIGTERM itself while it fits (a resume point), and tune while it sweeps (its
# state); these (train, tune: before that) ended with exit 143 (SIGHUP: 129) and no line.
# Raised here, the temp files are removed and the earlier outputs kept.
KEPT = "its earlier outputs are kept"
NOTHING_DONE = "nothing was done"  # a command stopped before main() ran it
STOPPED_BY_SIGTERM = {"prepare": KEPT, "export": KEPT, "validate": KEPT, "predict": KEPT,
                      "release": "run it again (it aliases a version it registered)",
                      "tune": "run it again", "train": "run it again"}  # fmt: skip


class _Terminated(BaseException):
    """Not an Exception: libraries catch those (torch.onnx's op registry logged one and went
    on, exit 0)."""


_unseen: int | None = None  # a signal raised in a handler that main did not catch


def _stopped(signum: int, _) -> None:
    global _unseen
    ignore_repeats(signum)
    _unseen = signum
    raise _Terminated(signum)


def _swallowed(unraisable) -> None:
    """sys.unraisablehook. Raised in a signal handler (ours; train's and tune's Interrupted;
    Python's KeyboardInterrupt) that ran inside a weakref callback (importlib's module locks) or
    a __del__, the stop was printed as 'Exception ignored' and the command went on, exit 0: the
    signal is sent again to the main thread once that context has ended."""
    global _unseen
    stop = unraisable.exc_value
    if isinstance(stop, KeyboardInterrupt):  # Ctrl+C, swallowed the same way
        signum = _unseen = signal.SIGINT
    elif isinstance(stop, _Terminated | Interrupted):
        signum = _unseen = stop.args[0] if isinstance(stop, _Terminated) else signal.SIGTERM
    else:
        return sys.__unraisablehook__(unraisable)
    threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signum)).start()


def _no_passwords(text: str) -> str:
    """A library's message may hold a URL with its password (MLflow's failed API request)."""
    return re.sub(r"(\w+://[^/\s:@]+:)[^/\s@]+@", r"\1***@", text)


def _quiet_mlflow() -> None:
    """MLflow's "View run ... at: <URL>" went to stdout with the URL's password in it. Set
    before a warm server's key is made too (console): a stage that `lstm-pipeline repro`
    started inherited them, one of a plain `dvc repro` did not, and each started a server."""
    quiet = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
             "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
             # outside make too: onnxruntime's telemetry line where HOME is read-only, and
             # GitPython's 16-line warning, three times, where git is not installed
             "ORT_DISABLE_TELEMETRY": "1", "GIT_PYTHON_REFRESH": "quiet"}  # fmt: skip
    for var, value in quiet.items():
        os.environ.setdefault(var, value)


def _terminated(command: str, stop: _Terminated) -> int:
    signum = stop.args[0]
    said = STOPPED_BY_SIGTERM.get(command, NOTHING_DONE)
    if said == KEPT and io.outputs_replaced:  # stopped after its outputs were put in place
        said = "its new outputs are in place; run it again to finish"
    if not launched_rank():  # the launcher says it (or, if it cannot, its rank watcher)
        print(f"lstm-pipeline {command}: stopped by {signal.Signals(signum).name}; {said}",
              file=sys.stderr)  # fmt: skip
    return 128 + signum


def _interrupted(command: str) -> int:
    if not launched_rank():
        print(f"lstm-pipeline {command}: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_mlflow()
    if not args.debug:
        quiet()
    if args.command in STOPPED_BY_SIGTERM and threading.current_thread() is threading.main_thread():
        handle(STOPS, _stopped)
        sys.unraisablehook = _swallowed
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        return _interrupted(args.command)
    except (Exception, SystemExit, _Terminated) as err:
        if stop := _cause(err, _Terminated):  # maybe inside a library's error (ImportError)
            return _terminated(args.command, stop)
        if isinstance(err, SystemExit) and not _cause(err, KeyboardInterrupt):
            raise
        if args.debug:  # the traceback, then the same line and exit code as without
            traceback.print_exc()
        if _cause(err, KeyboardInterrupt):
            return _interrupted(args.command)
        notes = getattr(err, "__notes__", [])  # what a stage adds: what to do next
        if not isinstance(err, PipelineError):
            err = _as_pipeline_error(err)
        if str(err) and not (launched_rank() and isinstance(err, TrainingError)):
            one_line = _no_passwords("; ".join([str(err), *notes]))
            one_line = one_line.replace("\r", "\\r").replace("\n", "\\n")  # a name with a break
            print(f"lstm-pipeline {args.command}: error: {one_line}", file=sys.stderr)
        return err.exit_code
    if _unseen == signal.SIGINT:  # swallowed, and the work ended before it was sent again
        return _interrupted(args.command)
    if _unseen:
        return _terminated(args.command, _Terminated(_unseen))
    return 0


class _Stdout:
    """sys.stdout that a gone reader (`train | head`) or a failing disk does not stop: the work
    goes on, the rest of its output is discarded, and the command ends as SIGPIPE's tools do
    (exit 141, no line) or with exit 8 naming stdout. Rich's progress bar turned the first into
    a silent exit 1 that lost the finished fit; the second was exit 8 naming nothing."""

    def __init__(self, stream):
        self.stream, self.fault = stream, None

    def write(self, text: str) -> int:
        self._guarded(self.stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guarded(self.stream.flush)

    def _guarded(self, call, *args) -> None:
        if self.fault is None:
            try:
                call(*args)
            except OSError as err:
                self.fault = err
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # C's writes and the exit's flush

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def exit_code(self, command: str, code: int) -> int:
        if self.fault is None or code:
            return code
        if isinstance(self.fault, BrokenPipeError):
            return 141
        why = self.fault.strerror or first_line(self.fault)
        print(f"lstm-pipeline {command}: error: stdout: {why}; the work is done, "
              "its output from then on was discarded", file=sys.stderr)  # fmt: skip
        return SystemFault.exit_code


def console(held: Sequence[int] = ()) -> None:
    """The `lstm-pipeline` command: main() here or in a warm child (pipeline/warm.py), then an
    exit that skips the interpreter's teardown. `held`: the signals sent while this module
    imported (pipeline/__main__.py); they stop it now, as one sent while it waits for a starting
    warm server does (that was exit -15 with no line).
    Freeing torch's, Lightning's and MLflow's modules one by one takes 1.5-2 s per process (a
    `dvc repro` starts 20), after every output is written and closed. What a normal exit does
    first still runs, in its order: threading's shutdown (it stops idle thread pools, e.g.
    MLflow's downloads, then joins the non-daemon threads), the exit handlers, flushing stdio."""
    _hold_closed_std_fds()
    _quiet_mlflow()
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if sys.stdout is not None:  # None: started with it closed, and print() skips it
        sys.stdout = _Stdout(sys.stdout)
    handle((signal.SIGINT,), signal.default_int_handler)
    stops = handle(STOPS, _stopped)
    sys.unraisablehook = _swallowed
    try:
        for signum in held[:1]:
            signal.raise_signal(signum)
        code = warm.run()
    except KeyboardInterrupt:  # before the stage ran
        code = _interrupted(command)
    except _Terminated as stop:
        code = _terminated(command, stop)
    if code is None:
        if command not in STOPPED_BY_SIGTERM:  # as before: main() installs none for it
            for signum in stops:
                signal.signal(signum, signal.SIG_DFL)
        code = main()
    if isinstance(sys.stdout, _Stdout):
        code = sys.stdout.exit_code(command, code)
    # the work is done: Ctrl+C or SIGTERM now skips the rest (each printed a traceback from an
    # exit handler, or from joining the threads)
    handle((signal.SIGINT, *STOPS), lambda *_: _exit_now(code))
    if "--debug" not in sys.argv:  # a library's exit handler that fails (torch's, out of
        sys.unraisablehook = lambda _: None  # memory) printed its traceback after the line
    threading._shutdown()  # what the interpreter calls first; joining threads alone would hang
    atexit._run_exitfuncs()
    _exit_now(code)


def _hold_closed_std_fds() -> None:
    """Started with stdout or stderr closed (`>&-`): its number is given to /dev/null opened
    read-only, so no file the command opens takes it (`-o -` wrote into that file, or failed
    with `unexpected OSError`), and a write to it fails, named."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDONLY)
            if held != fd:
                os.dup2(held, fd)
                os.close(held)


def _exit_now(code: int) -> None:
    for stream in filter(None, (sys.stdout, sys.stderr)):  # None: started with it closed
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    console()
