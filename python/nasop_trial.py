"""The trial contract of nasop for your own trainer, in one file of standard-library Python.

A trial (a pod on the cluster, a process under ``nasop run``) gets its task in the
environment and reports to the search after every epoch; this module does that part, so
that your training loop stays yours::

    import nasop_trial

    with nasop_trial.Trial.from_env() as trial:      # fails the trial on an exception
        lr = trial.hyperparameters["learning_rate"]
        model, opt = build(trial.candidate, seed=trial.seed)
        restored = trial.restore()                    # a retried pod or an ASHA promotion
        if restored:
            load(model, opt, restored.path / "state.pt")
        for epoch in trial.epochs(start=restored.step if restored else 0):
            train_one_epoch(model, opt)
            with trial.checkpoint(epoch) as path:     # written whole or not at all
                save(model, opt, path / "state.pt")
            trial.report(epoch, {"val_accuracy": evaluate(model)})
        # leaving the block writes the last report as the final one

``epochs()`` ends early when the search answers "stop" (early stopping, the experiment's
deadline) or the pod is asked to terminate (SIGTERM: an eviction, a drain, a preemption, a
deleted pod); both leave the last completed epoch's checkpoint standing. A stopped trial's
last report is its result. An interrupted one's is not: its final report says so, leaving
the block exits with code 143, and nasop runs the trial again from its checkpoint.

The contract itself (README.md, "The trainer"; core/src/contract.rs): NASOP_TRIAL holds the
task as JSON; each report is ``{"step": n, "metrics": {...}}`` posted to NASOP_REPORT_URL with
``Authorization: Bearer <token>`` and answered ``{"action": "continue" | "stop"}``. In a pod
the token is in the file NASOP_REPORT_TOKEN_FILE names (a projected service-account token the
kubelet rotates, so it is read for every report); without that variable it is
NASOP_REPORT_TOKEN (``nasop run``). A 409 answer (``{"action": "stop", "error": ...}``) means
this attempt was superseded or the trial has already ended: the report was not recorded, the
trial stops, and its final report says ``interrupted`` (this run is not the trial's result). When a token from the file is refused (401, 403), the file is read again
and the report sent once more. Every refusal is logged as an ERROR on stderr, never dropped
in silence; apart from a 409, training goes on.

The final report carries how the run ended, ``"end": "completed" | "stopped" |
"interrupted"`` (the budget trained; the search said stop; SIGTERM or a 409 came first), goes to the
termination-message file (NASOP_TERMINATION_PATH, else /dev/termination-log) and is posted
like the others. The process then exits 0, or 143 when interrupted. NASOP_CHECKPOINT_DIR is
the trial's own directory to checkpoint into, NASOP_RESUME_FROM another trial's to continue,
and NASOP_ARTIFACT_DIR where a trial that completes its epochs leaves its final model
(``trial.save_model``).

Several ranks (a JobSet or TrainJob trial, torchrun, DDP): run the same loop on every rank.
The rank comes from ``RANK`` and ``WORLD_SIZE`` (torchrun's), else ``PET_NODE_RANK`` and
``PET_NNODES`` (a TrainJob's). Rank 0 alone prints and posts reports, writes checkpoints and
the model, and writes the final report; on the other ranks ``checkpoint()`` and
``save_model()`` give a scratch directory that is thrown away, and ``report()`` sends
nothing. When ``torch.distributed`` is initialised, ``report()`` is a collective: every rank
must call it for the same steps, and every rank gets rank 0's answer, so a stop (or a 409)
ends the loop on every rank at the same epoch, as does a SIGTERM that reached any rank. ``restore()`` reads the trial's checkpoint
directory, which every pod of the trial mounts (spec.storage).
"""

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["Trial", "Checkpoint", "ContractError"]
__version__ = "0.1.0"

ENV_TRIAL = "NASOP_TRIAL"
ENV_REPORT_URL = "NASOP_REPORT_URL"
ENV_REPORT_TOKEN = "NASOP_REPORT_TOKEN"
ENV_REPORT_TOKEN_FILE = "NASOP_REPORT_TOKEN_FILE"
ENV_TERMINATION_PATH = "NASOP_TERMINATION_PATH"
ENV_CHECKPOINT_DIR = "NASOP_CHECKPOINT_DIR"
ENV_RESUME_FROM = "NASOP_RESUME_FROM"
ENV_ARTIFACT_DIR = "NASOP_ARTIFACT_DIR"
ENV_THREADS = "NASOP_THREADS"
ENV_RETRY_SECONDS = "NASOP_REPORT_RETRY_SECONDS"
# A process's rank and the number of ranks: torchrun's names, else a TrainJob's (one process
# per node).
ENV_RANKS = (("RANK", "WORLD_SIZE"), ("PET_NODE_RANK", "PET_NNODES"))
DEFAULT_TERMINATION_PATH = "/dev/termination-log"

# The contract's bounds (core/src/contract.rs): the search refuses reports beyond them.
TERMINATION_MESSAGE_MAX_BYTES = 4096
MAX_METRICS = 64
MAX_INFO = 8
MAX_INFO_VALUE = 1024
MAX_NAME = 63
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")

# A report is retried this long (longer than an operator takes to hand over to its
# replacement) before training goes on without it; NASOP_REPORT_RETRY_SECONDS sets another.
RETRY_SECONDS = 60.0
MAX_DELAY = 5.0
REQUEST_TIMEOUT = 5.0
# After SIGTERM a report is retried at most this long: the kubelet kills the process when
# the pod's grace period (30 s by default) runs out, and the final report must be written
# before that.
INTERRUPTED_RETRY_SECONDS = 10.0

# How a run ended, as its final report says (core/src/contract.rs, RunEnd).
END_COMPLETED = "completed"
END_STOPPED = "stopped"
END_INTERRUPTED = "interrupted"
# The exit code of a process ended by SIGTERM (128 + 15), as the shell and the kubelet know it.
EXIT_INTERRUPTED = 143

# The file in a checkpoint directory naming its newest complete checkpoint.
_LATEST = "nasop-checkpoint.json"


class ContractError(ValueError):
    """Input that the trial contract does not allow: a missing NASOP_TRIAL, a bad report."""


class Checkpoint:
    """A complete checkpoint: ``path`` is the directory your files are in, ``step`` the epoch."""

    def __init__(self, path, step):
        self.path = Path(path)
        self.step = int(step)

    def __repr__(self):
        return f"Checkpoint(path={str(self.path)!r}, step={self.step})"


def _log(message):
    print(f"nasop_trial: {message}", file=sys.stderr, flush=True)


def check_report(report):
    """Raises ContractError when the report breaks the contract's bounds, naming what and the bound."""
    metrics, info = report["metrics"], report.get("info") or {}
    if not isinstance(report["step"], int) or isinstance(report["step"], bool) or report["step"] < 0:
        raise ContractError(f"step {report['step']!r} is not a whole number of 0 or more")
    if len(metrics) > MAX_METRICS:
        raise ContractError(f"{len(metrics)} metrics in one report; report at most {MAX_METRICS}")
    if len(info) > MAX_INFO:
        raise ContractError(f"{len(info)} info entries in one report; report at most {MAX_INFO}")
    for name in list(metrics) + list(info):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ContractError(
                f"name {name!r} is not 1 to {MAX_NAME} characters of [A-Za-z0-9_.-]"
            )
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContractError(
                f"metric {name} is {value!r} ({type(value).__name__}); report numbers "
                "(float(x) turns a tensor's .item() or numpy scalar into one)"
            )
        if not math.isfinite(value):
            raise ContractError(f"metric {name} is {value}; report finite numbers only")
    for name, value in info.items():
        if not isinstance(value, str):
            raise ContractError(f"info {name} is {type(value).__name__}; info values are strings")
        if len(value.encode()) > MAX_INFO_VALUE:
            raise ContractError(f"info {name} is longer than {MAX_INFO_VALUE} bytes")


def _checked(step, metrics, info):
    """A report of these values, checked against the contract, its metrics as floats."""
    report = {"step": step, "metrics": dict(metrics)}
    if info:
        report["info"] = dict(info)
    check_report(report)
    report["metrics"] = {k: float(v) for k, v in report["metrics"].items()}
    return report


def _compact(report):
    out = {"step": report["step"], "metrics": dict(sorted(report["metrics"].items()))}
    if report.get("info"):
        out["info"] = dict(sorted(report["info"].items()))
    if report.get("end"):
        out["end"] = report["end"]
    return json.dumps(out, separators=(",", ":"), allow_nan=False)


def _refusal(error):
    """What the endpoint said with an HTTP error: its JSON ``error``, else the body's start."""
    try:
        text = error.read()[:1000].decode(errors="replace")
    except (OSError, ValueError, http.client.HTTPException):
        return ""
    try:
        said = json.loads(text)
        if isinstance(said, dict) and isinstance(said.get("error"), str):
            return said["error"][:300]
    except ValueError:
        pass
    return text[:300]


def _ranks(env):
    """(rank, world size) from the environment: (0, 1) for a run of one process."""
    for rank_name, world_name in ENV_RANKS:
        rank, world = env.get(rank_name), env.get(world_name)
        if rank is None and world is None:
            continue
        try:
            rank, world = int(rank or 0), int(world or 1)
        except ValueError:
            raise ContractError(
                f"{rank_name}={env.get(rank_name)!r}, {world_name}={env.get(world_name)!r}: "
                "both must be whole numbers"
            ) from None
        if world < 1 or not 0 <= rank < world:
            raise ContractError(f"{rank_name}={rank} must be from 0 to {world_name}-1={world - 1}")
        return rank, world
    return 0, 1


def _collective():
    """torch.distributed when this process is one of several initialised ranks, else None.
    Looked up, never imported: a trainer that uses it has imported it already."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist if dist.get_world_size() > 1 else None
    except (AttributeError, RuntimeError):
        pass
    return None


def termination_message(report):
    """The final report as compact JSON of at most 4 KiB, the most Kubernetes keeps: info
    entries go first, then metrics, from the end of the alphabet (as nasop's own trainer)."""
    kept = {
        "step": report["step"],
        "metrics": dict(sorted(report["metrics"].items())),
        "info": dict(sorted((report.get("info") or {}).items())),
        "end": report.get("end"),
    }
    while True:
        text = _compact(kept)
        if len(text.encode()) <= TERMINATION_MESSAGE_MAX_BYTES:
            return text
        if kept["info"]:
            kept["info"].pop(next(reversed(kept["info"])))
        else:
            kept["metrics"].pop(next(reversed(kept["metrics"])))


class Trial:
    """One trial's task and its side of the contract. ``Trial.from_env()`` in a trial; the
    constructor for tests and for running your script by hand."""

    def __init__(
        self,
        task,
        report_url=None,
        token="",
        termination_path=None,
        checkpoint_dir=None,
        resume_from=None,
        artifact_dir=None,
        retry_seconds=RETRY_SECONDS,
        token_file=None,
        rank=0,
        world_size=1,
    ):
        for key in ("seed", "budget"):
            if key not in task:
                raise ContractError(f"the trial's task has no {key!r}: {json.dumps(task)[:200]}")
        self.task = task
        self.report_url = report_url or None
        self.token = token or ""
        # When set, the token is read from this file for every report and wins over `token`.
        self.token_file = Path(token_file) if token_file else None
        self.termination_path = Path(termination_path) if termination_path else None
        for name, value in (
            (ENV_CHECKPOINT_DIR, checkpoint_dir),
            (ENV_RESUME_FROM, resume_from),
            (ENV_ARTIFACT_DIR, artifact_dir),
        ):
            if value and "://" in str(value):
                # spec.storage.s3: the locations are bucket URLs, which this helper (standard
                # library only) does not write; a directory named "s3:" would lose them.
                raise ContractError(
                    f"{name}={value} is a bucket URL: this helper keeps checkpoints and models "
                    "in directories; use spec.storage.persistentVolumeClaim with it, or write "
                    "to the bucket yourself (boto3) with the AWS_* variables nasop sets"
                )
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume_from = Path(resume_from) if resume_from else None
        self.artifact_dir = Path(artifact_dir) if artifact_dir else None
        self.retry_seconds = float(retry_seconds)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.last_report = None
        self._stop_reason = None
        self._finished = False
        # Whether epochs() ran out with the whole budget trained, and the end the final
        # report said (None until finish()).
        self._trained_budget = False
        self._end = None

    @classmethod
    def from_env(cls, environ=None, handle_sigterm=True):
        """The trial nasop started this process for. With ``handle_sigterm`` (the default, in
        the main thread), SIGTERM asks the loop to stop instead of killing it mid-epoch."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_TRIAL)
        if not text:
            raise ContractError(
                f"{ENV_TRIAL} is not set: this script runs as a nasop trial (a pod of a "
                "NasExperiment, or a process of `nasop run`); to try it by hand, set "
                f"{ENV_TRIAL}='{{\"seed\": 1, \"budget\": {{\"epochs\": 2}}, \"hyperparameters\": {{}}}}'"
            )
        try:
            task = json.loads(text)
        except ValueError as e:
            raise ContractError(f"{ENV_TRIAL} is not JSON ({e})") from None
        termination = env.get(ENV_TERMINATION_PATH)
        if not termination and os.path.exists(DEFAULT_TERMINATION_PATH):
            termination = DEFAULT_TERMINATION_PATH  # in a pod, the kubelet provides it
        rank, world = _ranks(env)
        retry = env.get(ENV_RETRY_SECONDS)
        try:
            retry_seconds = float(retry) if retry else RETRY_SECONDS
        except ValueError:
            raise ContractError(f"{ENV_RETRY_SECONDS}={retry!r} is not a number of seconds") from None
        trial = cls(
            task,
            report_url=env.get(ENV_REPORT_URL),
            token=env.get(ENV_REPORT_TOKEN, ""),
            token_file=env.get(ENV_REPORT_TOKEN_FILE),
            termination_path=termination,
            checkpoint_dir=env.get(ENV_CHECKPOINT_DIR),
            resume_from=env.get(ENV_RESUME_FROM),
            artifact_dir=env.get(ENV_ARTIFACT_DIR),
            retry_seconds=retry_seconds,
            rank=rank,
            world_size=world,
        )
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, trial._on_sigterm)
        return trial

    # The task.

    @property
    def seed(self):
        return int(self.task["seed"])

    @property
    def budget(self):
        """Epochs to train, in all (a promoted trial counts its parent's too)."""
        return int(self.task["budget"]["epochs"])

    @property
    def hyperparameters(self):
        return self.task.get("hyperparameters") or {}

    @property
    def candidate(self):
        """The candidate's string: the architecture, then ``;name=value`` hyperparameters."""
        return self.task.get("candidate", "")

    @property
    def architecture(self):
        """``{"string": ..., "structure": ...}`` when the search space has one, else None."""
        return self.task.get("architecture")

    @property
    def stage(self):
        """``"search"``, or ``"final"`` for the final training of a chosen candidate (its own
        seed, the full budget): a trainer may log it, and should still report the metrics."""
        return self.task.get("stage") or "search"

    @property
    def metrics(self):
        """The metrics the experiment optimises: report at least these."""
        return list(self.task.get("metrics") or [])

    @property
    def threads(self):
        """CPU threads this trial may use, when nasop says (``nasop run`` shares the cores)."""
        value = os.environ.get(ENV_THREADS)
        return int(value) if value and value.isdigit() else None

    @property
    def is_primary(self):
        """Whether this process is rank 0, the one whose reports, checkpoints and model count."""
        return self.rank == 0

    # Stopping.

    @property
    def should_stop(self):
        """True once the search answered "stop", this attempt was superseded (a 409) or
        SIGTERM arrived: checkpoint and end."""
        return self._stop_reason is not None

    @property
    def stop_reason(self):
        """None, ``"stop"`` (the search's answer), ``"superseded"`` (a 409 answer: the
        trial has ended or another attempt replaced this one) or ``"SIGTERM"``."""
        return self._stop_reason

    @property
    def end(self):
        """How the run ends, as the final report will say: ``"stopped"`` when the search
        said stop, ``"interrupted"`` when SIGTERM arrived before the budget was trained or
        a report was answered 409 (this attempt no longer counts: its result must not be
        taken for the trial's), else ``"completed"``."""
        if self._stop_reason == "superseded":
            return END_INTERRUPTED
        if self._stop_reason == "stop":
            return END_STOPPED
        if self._stop_reason == "SIGTERM" and not self._completed_budget():
            return END_INTERRUPTED
        return END_COMPLETED

    def _completed_budget(self):
        # A SIGTERM during the last epoch leaves the result standing only when the loop
        # still finished that epoch and reported it.
        return (
            self._trained_budget
            and self.last_report is not None
            and self.last_report["step"] >= self.budget
        )

    def _on_sigterm(self, signum, frame):
        if self._stop_reason is None:
            self._stop_reason = "SIGTERM"
        _log("terminating: the epoch in progress is abandoned, the last completed one's "
             "checkpoint stands")

    def epochs(self, start=0):
        """The epochs left to train, 1-based: ``start + 1`` to the budget, ending early when
        the trial should stop."""
        for epoch in range(int(start) + 1, self.budget + 1):
            if self.should_stop:
                return
            yield epoch
        self._trained_budget = True

    # Reports.

    def report(self, step, metrics, info=None):
        """Prints the report as a JSON line and posts it; returns "continue" or "stop" (and
        ``should_stop`` is then True). A report that cannot be delivered is logged and
        training goes on, as the contract asks; one that breaks the contract raises."""
        report = _checked(step, metrics, info)
        self.last_report = report
        action = "continue"
        if self.is_primary:
            body = _compact(report)
            print(body, flush=True)
            if self.report_url:
                action = self._post(body.encode(), f"the report of step {step}")
        dist = _collective()
        if dist is not None:
            # Every rank does as rank 0 was told, and stops for a SIGTERM that reached any
            # rank (a drain may evict one pod): all leave the loop at the same epoch.
            said = [None] * dist.get_world_size()
            dist.all_gather_object(said, (action, self._stop_reason == "SIGTERM"))
            action = said[0][0]
            if any(terminated for _, terminated in said) and self._stop_reason is None:
                self._stop_reason = "SIGTERM"
                _log("another rank received SIGTERM: stopping with it")
        if action == "superseded":
            if self._stop_reason is None:
                self._stop_reason = "superseded"
            return "stop"
        if action == "stop" and self._stop_reason is None:
            self._stop_reason = "stop"
        return action

    def _token(self, what):
        """The bearer token for one post: the token file's content, read now (the kubelet
        rotates it), else the plain token; None when the file cannot be read."""
        if self.token_file is None:
            return self.token
        try:
            token = self.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            problem = f"cannot be read ({e})"
        else:
            if token:
                return token
            problem = "is empty"
        _log(f"ERROR: the report token file {self.token_file} {problem}, so {what} is not "
             "sent; training goes on. A trial pod mounts it from the projected "
             f"serviceAccountToken volume that {ENV_REPORT_TOKEN_FILE} points into: check that "
             "the volume is mounted there")
        return None

    def _post(self, body, what):
        """Posts one report (``what`` names it in messages) and returns the answer:
        "continue", "stop", or "superseded" (a 409: not recorded, this attempt no longer
        counts). Never raises: what cannot be delivered is logged."""
        started, delay, attempt, reread = time.monotonic(), 0.2, 0, False
        while True:
            token = self._token(what)
            if token is None:
                return "continue"
            attempt += 1
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            request = urllib.request.Request(self.report_url, body, headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                    try:
                        action = json.load(response).get("action", "continue")
                    except (ValueError, AttributeError) as e:
                        _log(f"the report endpoint answered something unreadable ({e}); continuing")
                        return "continue"
                    return "stop" if action == "stop" else "continue"
            except urllib.error.HTTPError as e:
                if e.code in (401, 403) and self.token_file is not None and not reread:
                    # The kubelet may have rotated the token just now: read it again, once.
                    reread = True
                    _log(f"the token for {what} was refused (HTTP {e.code}); "
                         f"reading {self.token_file} again and retrying once")
                    continue
                if e.code == 409:
                    _log(f"ERROR: {what} was not recorded (HTTP 409: {_refusal(e)}); "
                         "stopping: this attempt was superseded or the trial has already "
                         "ended, so its results no longer count")
                    return "superseded"
                if 400 <= e.code < 500 and e.code != 429:
                    source = (self.token_file if self.token_file is not None
                              else f"${ENV_REPORT_TOKEN}")
                    hint = (f" (the token from {source} was not accepted)"
                            if e.code in (401, 403) else "")
                    _log(f"ERROR: {what} was refused and not recorded (HTTP {e.code}: "
                         f"{_refusal(e)}){hint}; training goes on, its result still goes to "
                         "the termination message")
                    return "continue"
                error = f"HTTP {e.code}"
            except (OSError, ValueError, http.client.HTTPException) as e:
                # refused, reset, timed out, DNS, a connection closed mid-answer
                error = str(e) or type(e).__name__
            elapsed = time.monotonic() - started
            retry_seconds = self.retry_seconds
            if self._stop_reason == "SIGTERM":
                retry_seconds = min(retry_seconds, INTERRUPTED_RETRY_SECONDS)
            if elapsed + delay >= retry_seconds:
                _log(f"{what} failed {attempt} times in {elapsed:.0f}s "
                     f"({error}); training goes on")
                return "continue"
            _log(f"{what} failed ({error}); retrying in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    def finish(self, metrics=None, step=None, info=None):
        """Writes the final report, with how the run ended (``end``), to the
        termination-message file and posts it: the last report, or the metrics given (at
        step ``step``, else the last report's). Call once, at the end; then exit 0, or 143
        when ``end`` is "interrupted" (leaving the ``with`` block does both)."""
        if metrics is None:
            if self.last_report is None:
                raise ContractError("finish() before any report: pass the final metrics")
            report = dict(self.last_report)
        else:
            if step is None:
                step = self.last_report["step"] if self.last_report else 0
            report = _checked(step, metrics, info)
        report["end"] = self._end = self.end
        self._finished = True
        if not self.is_primary:
            return  # rank 0 writes and posts the run's final report
        # The file first: a pod killed while the post is retried still leaves its result.
        self._write_termination(termination_message(report))
        body = _compact(report)
        print(body, flush=True)
        # A superseded attempt's reports are refused: its 409 was already logged.
        if self.report_url and self._stop_reason != "superseded":
            self._post(body.encode(), f"the final report (step {report['step']})")

    def fail(self, message):
        """Writes why the trial failed as its termination message: the experiment's status
        shows it as the trial's reason. Exit non-zero afterwards."""
        at = f"rank {self.rank}: " if not self.is_primary else ""
        text = f"nasop_trial: error: {at}{message}".encode()
        self._finished = True
        self._write_termination(text[-TERMINATION_MESSAGE_MAX_BYTES:].decode(errors="ignore"))

    def _write_termination(self, text):
        if self.termination_path is None:
            return
        try:
            self.termination_path.write_text(text)
        except OSError as e:
            _log(f"cannot write the termination message to {self.termination_path}: {e}")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None and not issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self.fail(f"{kind.__name__}: {value}")
        elif not self._finished and self.last_report is not None:
            self.finish()
        end = self._end if self._finished else self.end
        if kind is None and end == END_INTERRUPTED:
            # Not a success: exiting 0 would make the last epoch's value the trial's result.
            _log(f"exiting with {EXIT_INTERRUPTED} (SIGTERM): the trial runs again from its "
                 "last checkpoint")
            raise SystemExit(EXIT_INTERRUPTED)
        return False

    # The final model.

    @contextlib.contextmanager
    def save_model(self):
        """A directory for the final model of a trial that completed its epochs; when the
        block ends, the final report names it (info ``artifact``), as nasop's trainer does.
        Without NASOP_ARTIFACT_DIR, and on ranks other than 0, the block gets a scratch
        directory that is thrown away::

            with trial.save_model() as path:
                torch.jit.script(model).save(path / "model.pt")
        """
        if self.artifact_dir is None or not self.is_primary:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="nasop-model-") as scratch:
                yield Path(scratch)
            return
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        yield self.artifact_dir
        if self.last_report is not None:
            info = dict(self.last_report.get("info") or {})
            info["artifact"] = str(self.artifact_dir)
            self.last_report = dict(self.last_report, info=info)

    # Checkpoints.

    @contextlib.contextmanager
    def checkpoint(self, step):
        """A fresh directory to write epoch ``step``'s checkpoint into; it becomes the trial's
        latest checkpoint only when the block ends without an exception, so a crash or a kill
        mid-write leaves the previous one whole, and only while this attempt is the trial's
        (after a 409 it is dropped: report before you checkpoint). Older checkpoints are
        removed. Without NASOP_CHECKPOINT_DIR, and on ranks other than 0, the block gets a
        scratch directory that is thrown away."""
        if self.checkpoint_dir is None or not self.is_primary:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="nasop-checkpoint-") as scratch:
                yield Path(scratch)
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        name = f"step-{int(step):06d}"
        staging = self.checkpoint_dir / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self._stop_reason == "superseded":
            # Another attempt runs the trial now: its checkpoint is not this one's to replace.
            shutil.rmtree(staging, ignore_errors=True)
            _log(f"not keeping the checkpoint of step {step}: this attempt was superseded")
            return
        final = self.checkpoint_dir / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        latest = self.checkpoint_dir / _LATEST
        tmp = self.checkpoint_dir / f".{_LATEST}.partial"
        tmp.write_text(json.dumps({"step": int(step), "dir": name}))
        os.replace(tmp, latest)
        for old in self.checkpoint_dir.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self):
        """The checkpoint to continue from, or None: this trial's own newest (a retried pod,
        a restarted run), else the parent's it was promoted from (NASOP_RESUME_FROM)."""
        for directory in (self.checkpoint_dir, self.resume_from):
            found = _latest(directory)
            if found is not None:
                return found
        if self.resume_from is not None:
            _log(f"{ENV_RESUME_FROM}={self.resume_from} holds no checkpoint; starting afresh")
        return None


def _latest(directory):
    if directory is None:
        return None
    try:
        latest = json.loads((directory / _LATEST).read_text())
        path = directory / latest["dir"]
        if path.is_dir():
            return Checkpoint(path, latest["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
