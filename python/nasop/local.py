"""The client over a runs directory: what `nasop run` writes (`nasop-runs/<experiment>/`:
manifest.yaml, journal.jsonl, trials/). Results come from `nasop results DIR --json`, which
ranks and picks with the engine's own functions; a search is run by `nasop run` as a
subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .client import Client, Run
from .errors import NasopError
from .experiment import Experiment
from .model import Model, download_s3, open_directory
from .progress import Snapshot, follow
from .records import ENDED, Trial, Trials, finished_search_trials, from_results
from .schema import API_VERSION, KIND


def _find_nasop(nasop: Optional[str]) -> str:
    found = nasop or os.environ.get("NASOP") or shutil.which("nasop")
    if not found:
        raise NasopError(
            "the nasop binary is not on PATH: build it (cargo build --release) and put target/release on "
            "PATH, or pass LocalClient(nasop='/path/to/nasop') or set NASOP"
        )
    return found


class _Process:
    """A `nasop run` this client started: its process and its log."""

    def __init__(self, popen: subprocess.Popen, log: Path, manifest: Path):
        self.popen = popen
        self.log = log
        self.manifest = manifest

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalClient(Client):
    """Experiments in a runs directory (``nasop-runs`` by default), as `nasop run` keeps
    them. ``nasop`` is the binary (default: $NASOP, else `nasop` on PATH)."""

    def __init__(self, runs_dir: "os.PathLike[str] | str" = "nasop-runs", nasop: Optional[str] = None):
        self.runs_dir = Path(runs_dir)
        self._nasop = nasop
        self._processes: Dict[str, _Process] = {}

    @property
    def nasop(self) -> str:
        return _find_nasop(self._nasop)

    def directory(self, name: str) -> Path:
        """The experiment's run directory."""
        return self.runs_dir / name

    def run_of(self, name: str) -> Run:
        return Run(self, name)

    # --- running -------------------------------------------------------------------

    def create(self, experiment: Experiment, *, parallel: Optional[int] = None,
               resume: bool = False, env: Optional[Dict[str, str]] = None) -> Run:
        """Validates ``experiment`` and starts `nasop run` on it in the background; follow
        it with :meth:`wait`. An existing run directory of that name is refused unless
        ``resume`` (then `nasop run` continues it: finished trials are kept)."""
        experiment.validate()
        name = experiment.name
        if name in self._processes and self._processes[name].popen.poll() is None:
            raise NasopError(f"experiment {name} is already running here (pid {self._processes[name].popen.pid})")
        if self.directory(name).exists() and not resume:
            raise NasopError(
                f"{self.directory(name)} exists already: pass resume=True to continue that run, "
                f"delete('{name}') to start afresh, or rename the experiment"
            )
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"nasop-run-{name}-"))
        manifest = scratch / f"{name}.yaml"
        manifest.write_text(experiment.to_yaml())
        log = scratch / "nasop-run.log"
        command: List[str] = [self.nasop, "run", str(manifest), "--runs-dir", str(self.runs_dir), "--plain"]
        if parallel:
            command += ["--parallel", str(parallel)]
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        self._processes[name] = _Process(popen, log, manifest)
        return Run(self, name)

    def log(self, name: str) -> str:
        """What the `nasop run` this client started for ``name`` printed."""
        process = self._processes.get(name)
        return process.log.read_text(errors="replace") if process else ""

    def wait(self, name: str, *, timeout: Optional[float] = None, progress: bool = True,
             interval: float = 0.5) -> Dict[str, Any]:
        """Follows the search until it ends (for a run this client started: until `nasop
        run` exits), with a progress bar of finished trials out of maxTrials and the best
        value; returns :meth:`get`. Raises NasopError when `nasop run` fails."""
        process = self._processes.get(name)

        def look() -> Snapshot:
            exited = process is not None and process.popen.poll() is not None
            if exited and process.popen.returncode != 0:
                raise NasopError(
                    f"nasop run {name} failed (exit status {process.popen.returncode}):\n{process.tail()}"
                )
            if not (self.directory(name) / "manifest.yaml").exists():
                if process is None:
                    raise NasopError(f"no run directory {self.directory(name)}: create() the experiment first")
                if exited:
                    raise NasopError(f"nasop run {name} exited without making {self.directory(name)}:\n{process.tail()}")
                return Snapshot(0, 0, None, False, "Pending")
            obj = self.get(name)
            status = obj["status"]
            ended = exited if process is not None else status["phase"] in ("Succeeded", "Failed")
            return Snapshot(status["finishedSearchTrials"], obj["spec"]["budget"]["maxTrials"],
                            status.get("bestValue"), ended, status["phase"])

        follow(name, look, timeout=timeout, interval=interval, progress=progress)
        return self.get(name)

    # --- reading -------------------------------------------------------------------

    def results(self, name: str) -> Dict[str, Any]:
        """`nasop results DIR --json`: experiment, finished, best, pareto_front,
        final_training, trials."""
        directory = self.directory(name)
        if not (directory / "manifest.yaml").exists():
            raise NasopError(f"{directory} is not a run directory (no manifest.yaml); runs live in {self.runs_dir}/<experiment>")
        done = subprocess.run([self.nasop, "results", str(directory), "--json"], capture_output=True, text=True)
        if done.returncode != 0:
            raise NasopError(f"nasop results {directory} failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def get(self, name: str) -> Dict[str, Any]:
        """The experiment as a NasExperiment-like object: its manifest's apiVersion, kind,
        metadata and spec, and a status (phase, trial counts, bestValue, bestTrial,
        message; finishedSearchTrials) built from its results, plus runDirectory."""
        directory = self.directory(name)
        results = self.results(name)
        manifest = yaml.safe_load((directory / "manifest.yaml").read_text()) or {}
        trials = [from_results(name, t) for t in results["trials"]]
        counts = {phase.lower(): 0 for phase in ("Pending", "Running", *ENDED)}
        for t in trials:
            counts[t["phase"].lower()] = counts.get(t["phase"].lower(), 0) + 1
        counts["created"] = len(trials)
        finished = results.get("finished")
        process = self._processes.get(name)
        if finished:
            phase = "Succeeded" if finished.get("succeeded") else "Failed"
        elif process is not None and process.popen.poll() is not None:
            phase = "Failed"  # nasop run exited without recording the end
        elif any(t["stage"] == "final" for t in trials):
            phase = "Training"
        else:
            phase = "Running" if trials else "Pending"
        objective = manifest.get("spec", {}).get("objectives", [{}])[0].get("metric")
        best = results.get("best")
        status: Dict[str, Any] = {
            "phase": phase,
            "trials": counts,
            "finishedSearchTrials": finished_search_trials(trials),
            "bestValue": (best or {}).get("metrics", {}).get(objective) if best else None,
            "bestTrial": from_results(name, best) if best else None,
            "message": (finished or {}).get("message"),
            "reason": (finished or {}).get("reason"),
        }
        return {
            "apiVersion": manifest.get("apiVersion", API_VERSION),
            "kind": manifest.get("kind", KIND),
            "metadata": {**(manifest.get("metadata") or {}), "name": name},
            "spec": manifest.get("spec", {}),
            "status": status,
            "runDirectory": str(directory),
        }

    def list(self) -> List[Dict[str, Any]]:
        """Every run directory's experiment (see :meth:`get`), by name."""
        if not self.runs_dir.is_dir():
            return []
        names = sorted(p.name for p in self.runs_dir.iterdir() if (p / "manifest.yaml").exists())
        return [self.get(n) for n in names]

    def trials(self, name: str) -> Trials:
        return Trials(from_results(name, t) for t in self.results(name)["trials"])

    def best(self, name: str) -> Optional[Trial]:
        """The best trial as the engine picks it (`nasop results`): with final training,
        the winner's best final-training trial."""
        best = self.results(name).get("best")
        return from_results(name, best) if best else None

    def pareto(self, name: str) -> List[Trial]:
        """The non-dominated trials when there are several objectives (else empty)."""
        return [from_results(name, t) for t in self.results(name).get("pareto_front") or []]

    def final_training(self, name: str) -> Optional[Dict[str, Any]]:
        """With spec.finalTraining, once the search has ended: winner (a rank) and
        candidates (rank, candidate, search_trial (a trial's name), trials and succeeded
        (counts), metrics with mean, std, count), as ClusterClient gives them; else None."""
        results = self.results(name)
        final = results.get("final_training")
        if not final:
            return None
        phases = {t["index"]: t.get("phase") for t in results.get("trials") or []}
        return {
            "winner": final.get("winner"),
            "candidates": [
                {"rank": c.get("rank"), "candidate": c.get("candidate"),
                 "search_trial": f"{name}-{c.get('search_trial')}",
                 "trials": len(c.get("trials") or []),
                 "succeeded": sum(1 for i in c.get("trials") or [] if phases.get(i) == "Succeeded"),
                 "metrics": c.get("metrics") or {}}
                for c in final.get("candidates") or []
            ],
        }

    def _open_model(self, name: str, artifact: str, torchscript: bool) -> Model:
        if artifact.startswith("s3://"):
            return open_directory(download_s3(artifact), torchscript=torchscript)
        path = Path(artifact)
        if not path.is_absolute():
            path = self.directory(name) / path
        return open_directory(path, torchscript=torchscript)

    # --- removing ------------------------------------------------------------------

    def delete(self, name: str) -> None:
        """Stops the `nasop run` this client started for ``name`` (SIGTERM to its process
        group, then SIGKILL after 10 s) and removes its run directory."""
        process = self._processes.pop(name, None)
        if process is not None and process.popen.poll() is None:
            os.killpg(process.popen.pid, signal.SIGTERM)
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
        directory = self.directory(name)
        if not directory.exists():
            raise NasopError(f"no run directory {directory}")
        if not (directory / "manifest.yaml").exists() and not (directory / "journal.jsonl").exists():
            raise NasopError(f"{directory} is not a run directory (no manifest.yaml or journal.jsonl); not removing it")
        shutil.rmtree(directory)
