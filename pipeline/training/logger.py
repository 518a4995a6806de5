"""An MLflow logger that a tracking outage neither stalls nor kills: metrics the server does not
take are kept and sent with the next ones once it answers again (one attempt per RETRY_S while it
is down), and saved beside the resume point if the training ends first: the next run of the
stage, which resumes, sends them.

Metrics go out in one batch at most every SEND_S, not one request per epoch: a request costs
~5.5 ms on a SQLite store, 600 of them in a 300-epoch training. Until sent they are
also kept beside the resume point, one JSON line appended per entry (so a day-long outage costs
each epoch one line, not a rewrite of everything kept), and a killed training loses none.

A resumed fit logs again the epochs it redoes since its resume point, with the same values: a
continued run sends none of a metric's steps up to the last one the run holds or keeps."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lightning_fabric.utilities.logger import _convert_params, _flatten_dict
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from requests.exceptions import RequestException

from pipeline.errors import Interrupted, SystemFault, TrackingError, first_line
from pipeline.io import append_text, atomic_file
from pipeline.tracking import (
    DISK_FAULTS,
    disk_fault,
    experiment_id,
    one_bounded_try,
    redacted,
    tracking_uri,
)
from pipeline.training.resume import saved_run_id

RETRY_S = 30.0
SEND_S = 2.0
DELIVER_S = 120.0
BATCH = 1000  # MLflow's limit of metrics per log_batch
PENDING_FILE = "pending_metrics.jsonl"


class PatientMLFlowLogger(MLFlowLogger):
    def __init__(self, *args, pending_dir: Path | None = None, **kwargs):
        one_bounded_try()  # this logger keeps what the server does not take and tries later
        super().__init__(*args, **kwargs)
        self.pending_file = pending_dir / PENDING_FILE if pending_dir else None
        self.pending: list = self._read_kept()
        self.kept = len(self.pending)  # how many of them the file holds
        self.send_at, self.down = 0.0, False
        self.refusal: str | None = None  # why the server refuses this run's metrics (deleted...)
        self.continued = kwargs.get("run_id") is not None
        self.logged: dict[str, int] | None = None  # for a continued run: see _logged_steps

    @property
    def experiment(self):
        # Lightning's get-then-create of the experiment fails in the process that comes second
        if rank_zero_only.rank == 0 and not (
            self._initialized or self._run_id or self._experiment_id
        ):
            self._experiment_id = experiment_id(self._mlflow_client, self._experiment_name)
        return super().experiment

    def _read_kept(self) -> list:
        """The entries a killed training kept; a line cut short by the kill is dropped (and
        the file rewritten whole, so the next appended line starts on a line of its own)."""
        if not (self.pending_file and self.pending_file.exists()):
            return []
        lines = self.pending_file.read_text().splitlines(keepends=True)
        whole = [json.loads(line) for line in lines if line.endswith("\n")]
        if len(whole) < len(lines):
            self._rewrite(whole)
        return whole

    def _rewrite(self, entries: list) -> None:
        with atomic_file(self.pending_file) as tmp:
            tmp.write_text(_lines(entries))
        self.kept = len(entries)

    def _keep(self) -> None:
        """Append the entries the file does not hold yet."""
        if self.pending_file and self.kept < len(self.pending):
            append_text(self.pending_file, _lines(self.pending[self.kept :]))
            self.kept = len(self.pending)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        if self.logged is None:
            self.logged = self._logged_steps() if self.continued else {}
        step = step or 0
        values = {
            k: float(v)
            for k, v in metrics.items()
            if not isinstance(v, str) and step > self.logged.get(k, -1)
        }
        if not values:
            return
        self.pending.append([values, step, int(time.time() * 1000)])
        if time.monotonic() < self.send_at or not self.flush():
            self._keep()

    def _logged_steps(self) -> dict[str, int]:
        """Each metric's last step in the continued run or in what the killed training kept.
        With the server down, only the kept ones: its redone epochs may then reach it twice."""
        steps: dict[str, int] = {}
        for values, step, *_ in self.pending:
            if step != "params":
                steps.update({k: max(step, steps.get(k, -1)) for k in values})
        try:
            client = self.experiment
            for key in client.get_run(self.run_id).data.metrics:
                history = client.get_metric_history(self.run_id, key)
                steps[key] = max([steps.get(key, -1), *(m.step for m in history)])
        except (MlflowException, RequestException, OSError):
            pass
        return steps

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        # as MLFlowLogger sends them (flat, strings): Lightning logs them again at test()
        flat = _flatten_dict(_convert_params(params))
        self.pending.append([{k: str(v) for k, v in flat.items()}, "params"])
        if self.down or not self.flush():
            self._keep()

    def _send_first(self) -> int:
        """Send the oldest kept params, or the oldest metrics (up to BATCH) in one request;
        returns how many entries went. Params the server refuses (a resumed run's param logged
        before with another value) go without those the run has: sending them again cannot
        succeed, and kept first they would hold back every metric after them."""
        if self.pending[0][1] == "params":
            params = self.pending[0][0]
            try:
                super().log_hyperparams(params)
            except MlflowException as err:
                if not refused(err):
                    raise
                print(
                    f"warning: MLflow at {redacted(tracking_uri())} refused params of run "
                    f"{self.run_id} ({first_line(err)[:300]}); the run keeps those it has",
                    file=sys.stderr,
                )
                with suppress(MlflowException):  # a deleted run takes none
                    have = self.experiment.get_run(self.run_id).data.params
                    if new := {k: v for k, v in params.items() if k not in have}:
                        super().log_hyperparams(new)
            return 1
        metrics, count = [], 0
        for values, step, *stamp in self.pending:
            if step == "params" or (metrics and len(metrics) + len(values) > BATCH):
                break
            when = stamp[0] if stamp else int(time.time() * 1000)
            metrics += [
                Metric(key=k, value=v, timestamp=when, step=step) for k, v in values.items()
            ]
            count += 1
        self.experiment.log_batch(run_id=self.run_id, metrics=metrics, **self._log_batch_kwargs)
        return count

    def flush(self) -> bool:
        """Send what is kept, oldest first; False while the server does not answer."""
        sent_now = 0
        while self.pending:
            try:
                sent = self._send_first()
            except Interrupted:  # SIGTERM while it sent: not the server's fault
                raise
            except Exception as err:  # MlflowException, requests' ConnectionError, timeouts
                if sent_now and self.pending_file and self.kept:
                    self._rewrite(self.pending)  # the file must not hold what was sent
                self.send_at = time.monotonic() + RETRY_S
                reason = _reason(err)
                if not self.down:
                    state = f"refuses run {self.run_id}" if refused(err) else "unreachable"
                    print(
                        f"warning: MLflow tracking server {state} ({reason}); training goes "
                        "on, its metrics are kept and sent when the server takes them",
                        file=sys.stderr,
                    )
                self.down, self.refusal = True, reason if refused(err) else None
                return False
            del self.pending[:sent]
            sent_now += sent
        if self.down:
            print(
                "MLflow tracking server answers again: the kept metrics were sent", file=sys.stderr
            )
        self.down, self.send_at = False, time.monotonic() + SEND_S
        if self.pending_file:
            self.pending_file.unlink(missing_ok=True)
        self.kept = 0
        return True

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if status == "failed" and _stopped_by_scheduler():
            status = "KILLED"
        if self.flush():
            try:
                super().finalize(status)
                return
            except Interrupted:
                raise
            except Exception:  # the run's status is set by a later, successful finalize
                pass
        self._keep()


def refused(err: BaseException) -> bool:
    """The server answered, and no: a 4xx (a deleted run, a param logged before with another
    value), which waiting for does not change, unlike an outage, a timeout or a 5xx; nor a
    full or failing disk under a SQLite store (it was retried for DELIVER_S as an outage)."""
    if disk_fault(err):
        return True
    status = err.get_http_status_code() if isinstance(err, MlflowException) else 0
    return 400 <= status < 500 and status not in (408, 429)


def _reason(err: BaseException) -> str:
    return disk_fault(err) or first_line(err)[:200]


def _stopped_by_scheduler() -> bool:
    """Ray Tune stops a trial (ASHA, PBT, the sweep's end) by sys.exit(0) in the trial's report,
    and the actor is killed later: its thread would end the run FAILED after the sweep had
    marked it KILLED."""
    error = sys.exc_info()[1]
    return isinstance(error, SystemExit) and not error.code


def _lines(entries: list) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


@contextmanager
def failed_on_error(logger: PatientMLFlowLogger) -> Iterator[PatientMLFlowLogger]:
    """Ends the run FAILED on any error: Lightning does so only for errors inside trainer.fit,
    and one in building the Trainer, testing or writing the outputs left it RUNNING. Not on a
    TrackingError: the outputs are written, and the rerun sends the rest and ends the run."""
    try:
        yield logger
    except TrackingError:
        raise
    except BaseException:
        with suppress(Exception):  # the error to report is the one that stopped the fit
            logger.finalize("failed")
        raise


def deliver(logger: PatientMLFlowLogger, log_rest, folder: Path) -> None:
    """After the outputs are written: every kept metric (the ensemble members' too), then
    `log_rest()` (artifacts, tags) and the run's end, retried for DELIVER_S. If the server stays
    away: TrackingError (exit 6), with the kept metrics saved in the resume point; the next run
    of the stage resumes at the end, writes the same outputs and sends them."""
    deadline, error, warned = time.monotonic() + DELIVER_S, None, False
    while time.monotonic() < deadline:
        try:
            members = [_member_logger(logger, f.parent) for f in folder.rglob(PENDING_FILE)]
            if logger.flush() and all(m.flush() for m in members):
                log_rest()
                logger.finalize("success")
                return
            refusal = next((lg.refusal for lg in (logger, *members) if lg.refusal), None)
        except (MlflowException, RequestException, OSError) as err:  # the server went away again
            error, refusal = err, _reason(err) if refused(err) else None
        if refusal:
            logger.finalize("success")  # saves what is kept
            disk = refusal in DISK_FAULTS
            raise (SystemFault if disk else TrackingError)(
                f"the outputs are written, but MLflow at {redacted(tracking_uri())} refuses run "
                f"{logger.run_id}'s results ({refusal}); the metrics are kept in the resume "
                "point: "
                + ("free space under the store, then " if disk else "")
                + "run the train stage again (a deleted run is then replaced by a new one)"
            )
        if not warned:  # once, not a silent wait
            uri = redacted(tracking_uri())
            print(
                f"warning: the outputs are written; MLflow at {uri} does not take the run's "
                f"results yet, retrying for up to {DELIVER_S:.0f} s",
                file=sys.stderr,
            )
            warned = True
        time.sleep(5)
    logger.finalize("success")  # saves what is kept
    raise TrackingError(
        f"the outputs are written, but MLflow run {logger.run_id} at {redacted(tracking_uri())} "
        f"is incomplete: the server did not take its results for {DELIVER_S:.0f} s"
        + (f" ({_why(error)})" if error else "")
        + "; run the train stage again once it answers: it resumes at the end and sends the rest"
    )


def _why(error: BaseException) -> str:
    """An answer of HTTP 5xx said as such (urllib3's retries end in `too many 500 error
    responses`, past the 200 letters shown of its line); else the error's first line."""
    if code := re.search(r"too many (5\d\d) error responses", str(error)):
        return f"it answered HTTP {code[1]}, a failure on the server: its log says why"
    return first_line(error)[:200]


def _member_logger(parent: PatientMLFlowLogger, folder: Path) -> PatientMLFlowLogger:
    return PatientMLFlowLogger(
        experiment_name=parent._experiment_name,
        tracking_uri=parent._tracking_uri,
        run_id=saved_run_id(folder),
        pending_dir=folder,
    )
