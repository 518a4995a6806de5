"""MLflow: where runs go and what tags tie them to the code and data."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from contextlib import closing, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ConfigError, SystemFault, TrackingError, first_line
from pipeline.io import file_digest

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
GIT_TIMEOUT_S = 10.0  # a `git status` of a huge tree on a slow disk is not waited for longer
# SQLite's words for ENOSPC, and for EFBIG (a file size limit) or EIO
DISK_FAULTS = ("database or disk is full", "disk I/O error")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_tracking_uri() -> str:
    """For processes in other working dirs (Tune trials, Ray Train workers): a relative SQLite
    path made absolute."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def disk_fault(err: BaseException) -> str | None:
    """What failed under a SQLite store, if its disk did: it may come after SQLAlchemy's
    autoflush note, the error's first line."""
    return next((fault for fault in DISK_FAULTS if fault in str(err)), None)


def redacted(uri: str) -> str:
    """The URI for messages: a password inside it replaced by ***, up to the last `@` (a `#`
    or `?` in a password ends the netloc for urlsplit, which then found none to hide)."""
    login = re.match(r"([a-zA-Z][\w+.-]*://[^:/?#@]*:)(.*)@(.*)$", uri)
    return f"{login[1]}***@{login[3]}" if login else uri


def one_bounded_try() -> None:
    """MLflow's client waits 120 s for each answer and tries 8 times: a server that is up but
    stalls (a stuck database) held a stage for a quarter of an hour. One try of at most 10 s
    unless the user sets MLflow's variables (the training's logger keeps what the server did
    not take and sends it later)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def ensure_reachable(uri: str | None = None, timeout: float = 10.0, create: bool = True) -> None:
    """Fail fast (TrackingError, exit 6) with the URI, password redacted, in the message: MLflow's
    own client retries for minutes, and a locked SQLite store fails mid-training. `create`: a
    SQLite store that does not exist is made (a lookup passes False: it must not leave one)."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        one_bounded_try()
        _check_http(uri, timeout)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(uri, timeout, create)
    elif uri.startswith("sqlite:"):  # `sqlite://` alone: an in-memory store, lost at the exit
        raise TrackingError(
            f"MLflow store {uri}: not a SQLite file's URI; write sqlite:///<relative path> or "
            "sqlite:////<absolute path>"
        )
    elif urlsplit(uri).scheme in ("", "file") and uri != "databricks":  # a workspace, not a path
        _check_folder_store(uri)


def _check_http(uri: str, timeout: float) -> None:
    import base64
    import http.client
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 (it raises for a port that is no number)
    except ValueError:  # `http://u:pa#ss@host`: "nonnumeric port: 'pa'", the password's start
        raise ConfigError(
            f"MLFLOW_TRACKING_URI: {redacted(uri)} has no valid host:port; a '#', '?' or '/' "
            "in a password must be percent-encoded (%23, %3F, %2F)"
        ) from None
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD") or ""
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    request = urllib.request.Request(f"{bare.rstrip('/')}/health")
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):  # up, but these credentials are refused
            raise TrackingError(
                f"MLflow tracking server {redacted(uri)} refused the credentials ({err.code}); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        raise TrackingError(
            f"MLflow tracking server {redacted(uri)} answered {err.code} on /health"
        ) from None
    except http.client.HTTPException as err:  # another service's port (Redis, SSH...)
        raise TrackingError(
            f"MLflow tracking server {redacted(uri)} does not answer in HTTP: {str(err)[:60]!r}"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"MLflow tracking server {redacted(uri)} is unreachable: {reason}"
        ) from None


def _check_folder_store(uri: str) -> None:
    """MLflow 3 refuses a folder store (`file://...`, `./mlruns`) unless told to allow it; it
    raised that deep in the train stage, at the first run it created."""
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    if not MLFLOW_ALLOW_FILE_STORE.get():
        raise TrackingError(
            f"MLflow store {redacted(uri)}: MLflow no longer writes folder stores; use "
            "sqlite:///<folder>/mlflow.db (`mlflow migrate-filestore` moves the runs) or set "
            "MLFLOW_ALLOW_FILE_STORE=true"
        )


SQLITE_PATH_MAX = 504  # bytes: its unix files' 512, less the "-journal" it adds


def _check_sqlite(uri: str, timeout: float, create: bool) -> None:
    """A store that another process holds locked, or a file that is not a database, is refused
    before training rather than failing it at its first logged metric."""
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists() and not create:
        raise TrackingError(f"MLflow store {redacted(uri)}: no such store ({path} does not exist)")
    opened = path if path.exists() else _new_store(path)  # created there, then linked
    size = len(os.fsencode(opened.absolute()))
    if size > SQLITE_PATH_MAX:  # sqlite3 said only "unable to open database file"
        temp = "" if opened is path else " (with the temp name it is created under)"
        raise TrackingError(
            f"MLflow store {redacted(uri)}: its path{temp} has {size} bytes, SQLite opens "
            f"{SQLITE_PATH_MAX} at most; set MLFLOW_TRACKING_URI to a store in a shorter folder"
        )
    if not path.exists():
        _create_sqlite(uri, path)
        return
    try:
        with closing(sqlite3.connect(path, timeout=timeout)) as db:
            db.execute("BEGIN IMMEDIATE")  # waits up to `timeout` for a writer's lock
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if create:  # a writer: a read-only store failed after the stage's work
                db.execute("CREATE TABLE lstm_pipeline_write_check (x)")
            db.rollback()
    except sqlite3.Error as err:
        if "readonly" in str(err):
            raise SystemFault(f"MLflow store {uri}: read-only ({err})") from None
        if fault := disk_fault(err):
            raise SystemFault(f"MLflow store {uri}: {fault}") from None
        if "unable to open" in str(err) and not _writable(path.parent):  # its journal goes there
            raise SystemFault(
                f"MLflow store {uri}: its folder {path.parent} is read-only"
            ) from None
        raise TrackingError(f"MLflow store {uri}: {err}") from None


def _writable(folder: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _new_store(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.new")


def _create_sqlite(uri: str, path: Path) -> None:
    """Create and migrate a new store beside `path`, then link it into place unless another
    process got there first: two processes migrating the same new file both fail in alembic
    ("expected to match one row"), as two trainings started at once on a fresh clone would."""
    from mlflow import MlflowClient

    new = _new_store(path)
    try:  # a folder it cannot write: one line now, not MLflow's 10 retries (105 s) and exit 6
        new.parent.mkdir(parents=True, exist_ok=True)
        new.touch()
    except OSError as err:
        raise SystemFault(
            f"MLflow store {redacted(uri)}: cannot create it ({err.strerror}: {new.parent})"
        ) from None
    try:
        MlflowClient(f"sqlite:///{new}").search_experiments()  # creates the tables
        try:
            os.link(new, path)  # atomic, and fails where the store now exists
        except FileExistsError:  # another process's complete store: use that
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(new, path)
    except Exception as err:  # sqlite/SQLAlchemy/MLflow errors, a folder that cannot be made
        reason = first_line(err)[:200]
        raise TrackingError(f"MLflow store {uri}: cannot create it ({reason})") from None
    finally:
        with suppress(OSError):
            new.unlink()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_tags(exp: str, stage: str, **extra: str) -> dict[str, str]:
    """The tags every run carries: experiment, stage, the git commit and whether the tree had
    changes (when in a git repo; "unknown" where `git status` failed or outlasted GIT_TIMEOUT_S),
    and `extra` (e.g. data_sha256)."""
    tags = {"exp": exp, "stage": stage, **extra}
    if dvc_exp := os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`
        tags["dvc_experiment"] = dvc_exp
    if commit := _git("rev-parse", "HEAD"):
        tags["git_commit"] = commit
        # modified tracked files or untracked files git does not ignore; only the flag is kept.
        # --no-optional-locks: a status here must not take the index lock from a concurrent git.
        status = _git("--no-optional-locks", "status", "--porcelain", "--untracked-files=normal")
        tags["git_dirty"] = "unknown" if status is None else "true" if status else "false"
    return tags


def experiment_id(client, name: str) -> str:
    """The id of MLflow experiment `name`, created where there is none. Another process creating
    it meanwhile is no error: two `make repro` lanes starting their trainings on a fresh store
    both found none, and the second's create failed (UNIQUE constraint, train exit 6)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            found = client.get_experiment_by_name(name)  # made by the other process, or raise
            if found is None:
                raise
    return found.experiment_id


def training_run(experiment_name: str, ckpt, validated: bool = False) -> str | None:
    """The id of the newest MLflow run train logged this exact checkpoint to (tag
    `ckpt_sha256`), or None (no checkpoint, or MLFLOW_TRACKING_URI points elsewhere than the
    training did). `validated`: the newest of them that validate logged to, where one is: a
    training run again to the same bytes opens a run validate never saw."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or not Path(ckpt).exists():
        return None
    # all of them: with max_results=1, MLflow's SQL store returned an older one
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.ckpt_sha256 = '{file_digest(ckpt)}'"
    )
    if validated:
        runs = [run for run in runs if "validate_json_sha256" in run.data.tags] or runs
    return max(runs, key=lambda run: run.info.start_time).info.run_id if runs else None


def log_to_training_run(
    experiment_name: str, ckpt, metrics: dict, artifacts: list, tags: dict | None = None
) -> str | None:
    """Attach later stages' results to the MLflow run that produced this exact checkpoint.

    The run is found by the checkpoint's hash (tag `ckpt_sha256`, set by train), so a report can
    never land on another training's run. Returns the run id, or None if no such run exists
    (e.g. MLFLOW_TRACKING_URI now points elsewhere).
    """
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    run_id = training_run(experiment_name, ckpt)
    if run_id is None:
        return None
    client = MlflowClient(tracking_uri())
    now = int(time.time() * 1000)
    client.log_batch(  # one request, not one per metric and tag
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
    )
    for item in artifacts:  # a path, or (path, artifact folder)
        path, folder = item if isinstance(item, tuple) else (item, None)
        client.log_artifact(run_id, str(path), folder)
    return run_id


def end_tagged(experiment_name: str, tag: str, value: str, status: str) -> None:
    """Each run of the experiment tagged `tag` = `value` still RUNNING (its process killed before
    it could end it: a Ray Train worker) ends `status`."""
    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return
    running = client.search_runs(
        [experiment.experiment_id], f"tags.{tag} = '{value}' and attributes.status = 'RUNNING'"
    )
    for run in running:
        client.set_terminated(run.info.run_id, status)


def end_with_children(parent: str, status: str, child_status=lambda child: "KILLED") -> None:
    """The run `parent` ends `status`, and each of its nested runs still RUNNING (its process
    killed before it could end it: a trial stopped by its scheduler, a Ray worker gone with its
    cluster) `child_status(child)`."""
    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    running = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'",
    )
    for child in running:
        client.set_terminated(child.info.run_id, child_status(child))
    client.set_terminated(parent, status)
