"""The helper against a stand-in report endpoint (tests/install/examples.rs runs it against
nasop's own, through `nasop run`)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import nasop_trial  # noqa: E402
from nasop_trial import ContractError, Trial  # noqa: E402

TASK = {
    "experiment": "e",
    "trial": "e-3",
    "index": 3,
    "seed": 9,
    "candidate": "|nor_conv_3x3~0|;lr=0.1",
    "hyperparameters": {"lr": 0.1, "width": 16},
    "budget": {"epochs": 5},
    "metrics": ["val_accuracy"],
}


class Endpoint:
    """Answers each POST with the next of `replies` (status, body); the last one repeats.
    `on_post`, when set, is called with each request's Authorization before the answer."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen = []
        self.on_post = None
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.seen.append((self.headers["Authorization"], json.loads(body)))
                if endpoint.on_post:
                    endpoint.on_post(self.headers["Authorization"])
                status, reply = endpoint.replies[0]
                if len(endpoint.replies) > 1:
                    endpoint.replies.pop(0)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/report"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made = []

    def make(*replies):
        made.append(Endpoint(replies or [(200, {"action": "continue"})]))
        return made[-1]

    yield make
    for e in made:
        e.close()


def env_for(tmp_path, url=None, **extra):
    env = {
        "NASOP_TRIAL": json.dumps(TASK),
        "NASOP_REPORT_TOKEN": "secret",
        "NASOP_TERMINATION_PATH": str(tmp_path / "termination"),
        "NASOP_CHECKPOINT_DIR": str(tmp_path / "checkpoint"),
    }
    if url:
        env["NASOP_REPORT_URL"] = url
    env.update(extra)
    return env


def test_reads_the_task_from_the_environment(tmp_path):
    trial = Trial.from_env(env_for(tmp_path), handle_sigterm=False)
    assert trial.seed == 9 and trial.budget == 5
    assert trial.hyperparameters == {"lr": 0.1, "width": 16}
    assert trial.metrics == ["val_accuracy"]
    assert trial.candidate.startswith("|nor_conv_3x3~0|")
    assert trial.checkpoint_dir == tmp_path / "checkpoint"
    assert trial.resume_from is None and trial.architecture is None
    assert trial.stage == "search"
    final = Trial(dict(TASK, stage="final"))
    assert final.stage == "final"


def test_a_bucket_url_is_refused_rather_than_made_a_directory(tmp_path):
    env = env_for(tmp_path)
    env["NASOP_CHECKPOINT_DIR"] = "s3://models/e/trials/3/checkpoint"
    with pytest.raises(ContractError, match="NASOP_CHECKPOINT_DIR=s3://models.*bucket URL"):
        Trial.from_env(env, handle_sigterm=False)
    assert not (tmp_path / "s3:").exists()


def test_a_missing_or_broken_task_is_a_clear_error(tmp_path):
    with pytest.raises(ContractError, match="NASOP_TRIAL is not set"):
        Trial.from_env({}, handle_sigterm=False)
    with pytest.raises(ContractError, match="not JSON"):
        Trial.from_env({"NASOP_TRIAL": "{"}, handle_sigterm=False)
    with pytest.raises(ContractError, match="no 'budget'"):
        Trial.from_env({"NASOP_TRIAL": '{"seed": 1}'}, handle_sigterm=False)
    with pytest.raises(ContractError, match="NASOP_REPORT_RETRY_SECONDS"):
        Trial.from_env(env_for(tmp_path, NASOP_REPORT_RETRY_SECONDS="soon"), handle_sigterm=False)


def test_reports_are_posted_with_the_token_and_printed(tmp_path, endpoint, capsys):
    server = endpoint()
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5, "epoch": 1}) == "continue"
    assert server.seen == [
        ("Bearer secret", {"step": 1, "metrics": {"epoch": 1.0, "val_accuracy": 0.5}})
    ]
    assert json.loads(capsys.readouterr().out) == server.seen[0][1]
    assert not trial.should_stop


def test_a_stop_reply_ends_the_epochs(tmp_path, endpoint):
    server = endpoint((200, {"action": "continue"}), (200, {"action": "stop"}))
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    done = []
    for epoch in trial.epochs():
        done.append(epoch)
        trial.report(epoch, {"val_accuracy": epoch / 10})
    assert done == [1, 2]
    assert trial.should_stop and trial.stop_reason == "stop"
    trial.finish()
    final = {"step": 2, "metrics": {"val_accuracy": 0.2}, "end": "stopped"}
    assert json.loads((tmp_path / "termination").read_text()) == final
    assert server.seen[-1] == ("Bearer secret", final)


def test_epochs_resume_after_the_restored_step(tmp_path):
    trial = Trial(TASK)
    assert list(trial.epochs(start=3)) == [4, 5]
    assert list(trial.epochs(start=5)) == []


def test_an_unavailable_endpoint_is_retried(tmp_path, endpoint):
    server = endpoint((503, {"error": "restarting"}), (503, {}), (200, {"action": "stop"}))
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "stop"
    assert len(server.seen) == 3


def test_a_refused_report_is_not_retried_and_training_goes_on(tmp_path, endpoint, capsys):
    # A plain token (`nasop run`) does not change on a retry.
    server = endpoint((401, {"error": "unknown or missing trial token"}))
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert len(server.seen) == 1
    err = capsys.readouterr().err
    assert (
        "nasop_trial: ERROR: the report of step 1 was refused and not recorded "
        "(HTTP 401: unknown or missing trial token)"
    ) in err
    assert "the token from $NASOP_REPORT_TOKEN was not accepted" in err
    assert not trial.should_stop


def test_other_refusals_are_loud_and_training_goes_on(tmp_path, endpoint, capsys):
    server = endpoint((422, {"error": "metric loss is not finite"}))
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert len(server.seen) == 1
    err = capsys.readouterr().err
    assert (
        "nasop_trial: ERROR: the report of step 1 was refused and not recorded "
        "(HTTP 422: metric loss is not finite); training goes on"
    ) in err
    assert not trial.should_stop


def test_the_token_file_is_read_for_every_report(tmp_path, endpoint):
    server = endpoint()
    token = tmp_path / "token"
    token.write_text("first\n")
    env = env_for(tmp_path, server.url, NASOP_REPORT_TOKEN_FILE=str(token))
    trial = Trial.from_env(env, handle_sigterm=False)
    trial.report(1, {"val_accuracy": 0.5})
    token.write_text("rotated\n")  # the kubelet replaces the projected token
    trial.report(2, {"val_accuracy": 0.6})
    # The file wins over NASOP_REPORT_TOKEN, and is read afresh each time.
    assert [auth for auth, _ in server.seen] == ["Bearer first", "Bearer rotated"]


def test_an_unreadable_token_file_is_loud_and_training_goes_on(tmp_path, endpoint, capsys):
    server = endpoint()
    missing = tmp_path / "secrets" / "token"
    env = env_for(tmp_path, server.url, NASOP_REPORT_TOKEN_FILE=str(missing))
    trial = Trial.from_env(env, handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert server.seen == []
    err = capsys.readouterr().err
    assert f"nasop_trial: ERROR: the report token file {missing} cannot be read" in err
    assert "NASOP_REPORT_TOKEN_FILE" in err
    # Once the file is there, reports go through.
    missing.parent.mkdir()
    missing.write_text("late")
    assert trial.report(2, {"val_accuracy": 0.6}) == "continue"
    assert [auth for auth, _ in server.seen] == ["Bearer late"]


def test_a_refused_token_file_is_read_again_and_the_report_retried_once(
    tmp_path, endpoint, capsys
):
    server = endpoint((401, {"error": "token expired"}), (200, {"action": "continue"}))
    token = tmp_path / "token"
    token.write_text("expired")
    # The kubelet rotates the token while the first report is on its way.
    server.on_post = lambda auth: token.write_text("fresh")
    env = env_for(tmp_path, server.url, NASOP_REPORT_TOKEN_FILE=str(token))
    trial = Trial.from_env(env, handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert [auth for auth, _ in server.seen] == ["Bearer expired", "Bearer fresh"]
    assert all(body["step"] == 1 for _, body in server.seen)
    assert "ERROR" not in capsys.readouterr().err


def test_a_token_refused_twice_is_loud_and_training_goes_on(tmp_path, endpoint, capsys):
    server = endpoint((403, {"error": "token audience is not nasop.dev"}))
    token = tmp_path / "token"
    token.write_text("wrong-audience")
    env = env_for(tmp_path, server.url, NASOP_REPORT_TOKEN_FILE=str(token))
    trial = Trial.from_env(env, handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert len(server.seen) == 2  # one retry, not a retry loop
    err = capsys.readouterr().err
    assert (
        "nasop_trial: ERROR: the report of step 1 was refused and not recorded "
        f"(HTTP 403: token audience is not nasop.dev) (the token from {token} was not accepted)"
    ) in err
    assert not trial.should_stop


def test_a_superseded_attempt_stops_loudly(tmp_path, endpoint, capsys):
    server = endpoint(
        (200, {"action": "continue"}),
        (409, {"action": "stop", "error": "attempt 2 of trial e-3 replaced this one"}),
    )
    trial = Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False)
    done = []
    for epoch in trial.epochs():
        done.append(epoch)
        action = trial.report(epoch, {"val_accuracy": epoch / 10})
    assert done == [1, 2] and action == "stop"
    assert trial.should_stop and trial.stop_reason == "superseded"
    err = capsys.readouterr().err
    assert (
        "nasop_trial: ERROR: the report of step 2 was not recorded "
        "(HTTP 409: attempt 2 of trial e-3 replaced this one); stopping"
    ) in err
    # Its checkpoint is dropped: the trial's checkpoint belongs to the attempt that counts.
    trial.checkpoint_dir = tmp_path / "ckpt"
    with trial.checkpoint(2) as path:
        (path / "state.txt").write_text("stale")
    assert trial.restore() is None
    assert "not keeping the checkpoint of step 2" in capsys.readouterr().err
    trial.finish()
    # Not a result: the attempt that counts is another (or the trial has ended).
    assert json.loads((tmp_path / "termination").read_text())["end"] == "interrupted"
    assert len(server.seen) == 2  # the final report of a superseded attempt is not sent
    with pytest.raises(SystemExit) as exited:
        trial.__exit__(None, None, None)
    assert exited.value.code == 143


def test_retrying_gives_up_after_the_retry_time(tmp_path, endpoint):
    server = endpoint((503, {}))
    env = env_for(tmp_path, server.url, NASOP_REPORT_RETRY_SECONDS="1")
    trial = Trial.from_env(env, handle_sigterm=False)
    started = time.monotonic()
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"
    assert time.monotonic() - started < 3
    assert 2 <= len(server.seen) <= 5


def test_nobody_listening_is_retried_then_given_up(tmp_path):
    env = env_for(tmp_path, "http://127.0.0.1:9/v1/report", NASOP_REPORT_RETRY_SECONDS="0.5")
    trial = Trial.from_env(env, handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 0.5}) == "continue"


def test_the_final_report_is_posted_and_its_failure_only_logged(tmp_path, endpoint, capsys):
    env = env_for(tmp_path, "http://127.0.0.1:9/v1/report", NASOP_REPORT_RETRY_SECONDS="0.3")
    trial = Trial.from_env(env, handle_sigterm=False)
    trial.report(1, {"val_accuracy": 0.5})
    trial.finish()  # nobody listening: logged, not raised, and the file is written anyway
    assert json.loads((tmp_path / "termination").read_text())["end"] == "completed"
    assert "the final report (step 1) failed" in capsys.readouterr().err
    server = endpoint((500, {"error": "boom"}))
    trial = Trial.from_env(env_for(tmp_path, server.url, NASOP_REPORT_RETRY_SECONDS="0.3"),
                           handle_sigterm=False)
    trial.finish({"val_accuracy": 0.7}, step=4)
    assert server.seen[0] == (
        "Bearer secret", {"step": 4, "metrics": {"val_accuracy": 0.7}, "end": "completed"}
    )


@pytest.mark.parametrize(
    "metrics, info, message",
    [
        ({"val accuracy": 1.0}, None, "not 1 to 63 characters"),
        ({"x" * 64: 1.0}, None, "not 1 to 63 characters"),
        ({"loss": float("nan")}, None, "finite numbers only"),
        ({"loss": float("inf")}, None, "finite numbers only"),
        ({"loss": "0.5"}, None, "report numbers"),
        ({"loss": True}, None, "report numbers"),
        ({f"m{i}": 1.0 for i in range(65)}, None, "at most 64"),
        ({"loss": 1.0}, {f"i{i}": "x" for i in range(9)}, "at most 8"),
        ({"loss": 1.0}, {"arch": "x" * 1025}, "longer than 1024 bytes"),
    ],
)
def test_a_report_outside_the_contract_is_refused_here(metrics, info, message):
    trial = Trial(TASK)
    with pytest.raises(ContractError, match=message):
        trial.report(1, metrics, info)


def test_the_termination_message_fits_in_four_kibibytes(tmp_path):
    # As core/src/contract.rs's test: info goes first, then metrics from the end.
    trial = Trial(TASK, termination_path=tmp_path / "termination")
    metrics = {f"metric_{i:02}_" + "x" * 50: i / 3 for i in range(64)}
    trial.finish(metrics, step=3, info={"derived_architecture": "x" * 1000})
    text = (tmp_path / "termination").read_text()
    assert len(text.encode()) <= 4096
    back = json.loads(text)
    assert back["step"] == 3 and "info" not in back
    kept = sorted(back["metrics"])
    assert 0 < len(kept) < 64 and kept == sorted(metrics)[: len(kept)]


def test_leaving_the_block_writes_the_last_report(tmp_path):
    with Trial(TASK, termination_path=tmp_path / "termination") as trial:
        trial.report(1, {"val_accuracy": 0.25})
        trial.report(2, {"val_accuracy": 0.75}, info={"note": "ok"})
    assert json.loads((tmp_path / "termination").read_text()) == {
        "step": 2,
        "metrics": {"val_accuracy": 0.75},
        "info": {"note": "ok"},
        "end": "completed",
    }


def test_a_completed_run_says_so_in_its_final_report(tmp_path, endpoint):
    server = endpoint()
    with Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False) as trial:
        for epoch in trial.epochs():
            trial.report(epoch, {"val_accuracy": epoch / 10})
    final = {"step": 5, "metrics": {"val_accuracy": 0.5}, "end": "completed"}
    assert json.loads((tmp_path / "termination").read_text()) == final
    # Posted too, so the result survives a pod removed before the operator reads it.
    assert [body for _, body in server.seen][-2:] == [
        {"step": 5, "metrics": {"val_accuracy": 0.5}},
        final,
    ]
    assert all("end" not in body for _, body in server.seen[:-1])


def test_a_stopped_run_says_so_and_exits_cleanly(tmp_path, endpoint):
    server = endpoint((200, {"action": "continue"}), (200, {"action": "stop"}))
    with Trial.from_env(env_for(tmp_path, server.url), handle_sigterm=False) as trial:
        for epoch in trial.epochs():
            trial.report(epoch, {"val_accuracy": epoch / 10})
    assert json.loads((tmp_path / "termination").read_text()) == {
        "step": 2, "metrics": {"val_accuracy": 0.2}, "end": "stopped"
    }


def test_an_exception_fails_the_trial_with_its_message(tmp_path):
    with pytest.raises(RuntimeError):
        with Trial(TASK, termination_path=tmp_path / "termination") as trial:
            trial.report(1, {"val_accuracy": 0.25})
            raise RuntimeError("CUDA out of memory")
    assert (tmp_path / "termination").read_text() == (
        "nasop_trial: error: RuntimeError: CUDA out of memory"
    )


def test_a_long_failure_keeps_its_end(tmp_path):
    Trial(TASK).fail("x")  # no file to write: nothing happens
    trial = Trial(TASK, termination_path=tmp_path / "termination")
    trial.fail("start " + "y" * 10000 + " the end")
    text = (tmp_path / "termination").read_text()
    assert len(text.encode()) == 4096 and text.endswith("y the end")


def test_finish_without_any_report_needs_metrics(tmp_path):
    trial = Trial(TASK, termination_path=tmp_path / "termination")
    with pytest.raises(ContractError, match="before any report"):
        trial.finish()
    trial.finish({"val_accuracy": 0.1})
    assert json.loads((tmp_path / "termination").read_text())["step"] == 0


def test_checkpoints_replace_each_other_whole(tmp_path):
    trial = Trial(TASK, checkpoint_dir=tmp_path / "ckpt")
    assert trial.restore() is None
    for step in (1, 2):
        with trial.checkpoint(step) as path:
            (path / "state.txt").write_text(f"after epoch {step}")
    restored = trial.restore()
    assert restored.step == 2
    assert (restored.path / "state.txt").read_text() == "after epoch 2"
    # A write that fails half-way leaves the last complete checkpoint.
    with pytest.raises(KeyboardInterrupt):
        with trial.checkpoint(3) as path:
            (path / "state.txt").write_text("torn")
            raise KeyboardInterrupt
    restored = trial.restore()
    assert restored.step == 2
    assert (restored.path / "state.txt").read_text() == "after epoch 2"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "nasop-checkpoint.json",
        "step-000002",
    ]


def test_a_promotion_continues_the_parents_checkpoint(tmp_path):
    parent = Trial(TASK, checkpoint_dir=tmp_path / "trials" / "1")
    with parent.checkpoint(2) as path:
        (path / "state.txt").write_text("parent")
    child = Trial(TASK, checkpoint_dir=tmp_path / "trials" / "7", resume_from=tmp_path / "trials" / "1")
    restored = child.restore()
    assert restored.step == 2 and (restored.path / "state.txt").read_text() == "parent"
    assert list(child.epochs(start=restored.step)) == [3, 4, 5]
    # Once the child has checkpointed, a retry of it continues its own.
    with child.checkpoint(3) as path:
        (path / "state.txt").write_text("child")
    assert child.restore().step == 3


def test_a_parent_without_a_checkpoint_starts_afresh(tmp_path, capsys):
    child = Trial(TASK, checkpoint_dir=tmp_path / "7", resume_from=tmp_path / "missing")
    assert child.restore() is None
    assert "holds no checkpoint" in capsys.readouterr().err


def test_the_saved_model_is_named_in_the_final_report(tmp_path):
    env = env_for(tmp_path, NASOP_ARTIFACT_DIR=str(tmp_path / "model"))
    with Trial.from_env(env, handle_sigterm=False) as trial:
        trial.report(5, {"val_accuracy": 0.9})
        with trial.save_model() as path:
            (path / "model.pt").write_text("weights")
    assert (tmp_path / "model" / "model.pt").read_text() == "weights"
    final = json.loads((tmp_path / "termination").read_text())
    assert final["info"] == {"artifact": str(tmp_path / "model")}


def test_without_a_checkpoint_dir_the_block_gets_scratch_space():
    trial = Trial(TASK)
    with trial.checkpoint(1) as path:
        (path / "state.txt").write_text("x")
    assert not path.exists()
    assert trial.restore() is None


def test_sigterm_stops_after_the_current_epoch(tmp_path):
    trial = Trial.from_env(env_for(tmp_path))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        done = []
        for epoch in trial.epochs():
            done.append(epoch)
            trial.report(epoch, {"val_accuracy": epoch / 10})
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
        assert done == [1, 2]
        assert trial.should_stop and trial.stop_reason == "SIGTERM"
        # Without the with-block, finish() still says the result is not the trial's.
        trial.finish()
        assert json.loads((tmp_path / "termination").read_text()) == {
            "step": 2, "metrics": {"val_accuracy": 0.2}, "end": "interrupted"
        }
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_after_sigterm_reports_are_retried_only_briefly(tmp_path, endpoint, monkeypatch):
    # The kubelet kills the process when the grace period runs out: give up well before.
    monkeypatch.setattr(nasop_trial, "INTERRUPTED_RETRY_SECONDS", 0.5)
    server = endpoint((503, {"error": "restarting"}))
    trial = Trial.from_env(env_for(tmp_path, server.url, NASOP_REPORT_RETRY_SECONDS="60"),
                           handle_sigterm=False)
    trial._on_sigterm(signal.SIGTERM, None)
    started = time.monotonic()
    trial.finish({"val_accuracy": 0.3}, step=3)
    assert time.monotonic() - started < 3
    assert server.seen[0][1]["end"] == "interrupted"
    assert json.loads((tmp_path / "termination").read_text())["end"] == "interrupted"


def test_sigterm_leaves_the_block_with_exit_code_143(tmp_path):
    with pytest.raises(SystemExit) as exited:
        with Trial(TASK, termination_path=tmp_path / "termination") as trial:
            trial.report(1, {"val_accuracy": 0.1})
            trial._on_sigterm(signal.SIGTERM, None)
    assert exited.value.code == 143
    assert json.loads((tmp_path / "termination").read_text())["end"] == "interrupted"
    # An exception inside the block is the failure, not hidden behind the exit code.
    with pytest.raises(RuntimeError):
        with Trial(TASK, termination_path=tmp_path / "termination") as trial:
            trial._on_sigterm(signal.SIGTERM, None)
            raise RuntimeError("disk full")


def test_sigterm_after_the_whole_budget_leaves_the_result_standing(tmp_path):
    # The loop finished and reported the last epoch before the signal: the run is complete.
    with Trial(TASK, termination_path=tmp_path / "termination") as trial:
        for epoch in trial.epochs():
            trial.report(epoch, {"val_accuracy": epoch / 10})
        trial._on_sigterm(signal.SIGTERM, None)  # while saving the model, say
    assert json.loads((tmp_path / "termination").read_text())["end"] == "completed"


TRAINER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import nasop_trial

with nasop_trial.Trial.from_env() as trial:
    restored = trial.restore()
    for epoch in trial.epochs(start=restored.step if restored else 0):
        with trial.checkpoint(epoch) as path:
            (path / "state.txt").write_text(str(epoch))
        trial.report(epoch, {"val_accuracy": epoch / 10})
        if epoch == 2:
            print("waiting for SIGTERM", flush=True)
            deadline = time.monotonic() + 30
            while not trial.should_stop and time.monotonic() < deadline:
                time.sleep(0.01)
"""


def test_a_trainer_sent_sigterm_exits_143_and_reports_an_interruption(tmp_path, endpoint):
    server = endpoint()
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = dict(os.environ, **env_for(tmp_path, server.url))
    helper = str(Path(nasop_trial.__file__).parent)
    process = subprocess.Popen(
        [sys.executable, str(script), helper],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stdout:
            if line.startswith("waiting for SIGTERM"):
                break
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, err
    final = {"step": 2, "metrics": {"val_accuracy": 0.2}, "end": "interrupted"}
    assert json.loads((tmp_path / "termination").read_text()) == final
    assert server.seen[-1] == ("Bearer secret", final)
    assert "exiting with 143" in err
    # The checkpoint stands: the trial's next run continues from epoch 2.
    restored = Trial(TASK, checkpoint_dir=tmp_path / "checkpoint").restore()
    assert restored.step == 2 and (restored.path / "state.txt").read_text() == "2"


def test_without_an_endpoint_reports_are_printed_only(tmp_path, capsys):
    trial = Trial.from_env({"NASOP_TRIAL": json.dumps(TASK)}, handle_sigterm=False)
    assert trial.report(1, {"val_accuracy": 1}) == "continue"
    assert json.loads(capsys.readouterr().out) == {"step": 1, "metrics": {"val_accuracy": 1.0}}


def test_the_module_needs_only_the_standard_library():
    source = Path(nasop_trial.__file__).read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_the_rank_comes_from_torchrun_or_a_trainjob(tmp_path):
    def trial(**extra):
        return Trial.from_env(env_for(tmp_path, **extra), handle_sigterm=False)

    assert (trial().rank, trial().world_size, trial().is_primary) == (0, 1, True)
    torchrun = trial(RANK="3", WORLD_SIZE="4")
    assert (torchrun.rank, torchrun.world_size, torchrun.is_primary) == (3, 4, False)
    trainjob = trial(PET_NODE_RANK="1", PET_NNODES="2")
    assert (trainjob.rank, trainjob.world_size) == (1, 2)
    with pytest.raises(ContractError, match="RANK=4 must be from 0 to WORLD_SIZE-1=3"):
        trial(RANK="4", WORLD_SIZE="4")
    with pytest.raises(ContractError, match="must be whole numbers"):
        trial(RANK="one", WORLD_SIZE="2")


def test_only_rank_zero_reports_checkpoints_and_saves(tmp_path, endpoint, capsys):
    server = endpoint()
    env = env_for(tmp_path, server.url, RANK="1", WORLD_SIZE="2",
                  NASOP_ARTIFACT_DIR=str(tmp_path / "model"))
    trial = Trial.from_env(env, handle_sigterm=False)
    for epoch in trial.epochs():
        with trial.checkpoint(epoch) as path:
            (path / "state.txt").write_text(str(epoch))
        assert trial.report(epoch, {"val_accuracy": epoch / 10}) == "continue"
    with trial.save_model() as path:
        (path / "model.pt").write_text("weights")
    trial.finish()
    assert server.seen == [] and capsys.readouterr().out == ""
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "model").exists()
    assert not (tmp_path / "termination").exists()
    trial.fail("CUDA out of memory")
    assert (tmp_path / "termination").read_text() == (
        "nasop_trial: error: rank 1: CUDA out of memory"
    )


# Two ranks of one run, each a process with a stand-in for torch.distributed (the helper
# needs only its all_gather_object; the test venv has no torch): the two exchange each
# gather over a local connection. With argv[4] set, that rank sends itself SIGTERM during
# that epoch.
RANK_TRAINER = r"""
import sys, types
from multiprocessing.connection import Client, Listener
sys.path.insert(0, sys.argv[1])
rank, port = int(sys.argv[2]), int(sys.argv[3])
if rank == 0:
    listener = Listener(("127.0.0.1", port))
    peer = listener.accept()
else:
    import time
    for _ in range(100):
        try:
            peer = Client(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            time.sleep(0.1)

def all_gather_object(out, obj):
    peer.send(obj)
    theirs = peer.recv()
    out[:] = [obj, theirs] if rank == 0 else [theirs, obj]

torch = types.ModuleType("torch")
dist = types.ModuleType("torch.distributed")
dist.is_available = lambda: True
dist.is_initialized = lambda: True
dist.get_world_size = lambda: 2
dist.all_gather_object = all_gather_object
torch.distributed = dist
sys.modules.update({"torch": torch, "torch.distributed": dist})

import nasop_trial
with nasop_trial.Trial.from_env() as trial:
    for epoch in trial.epochs():
        if len(sys.argv) > 4 and epoch == int(sys.argv[4]):
            import os, signal
            os.kill(os.getpid(), signal.SIGTERM)
        trial.report(epoch, {"val_accuracy": epoch / 10 + rank})
    print(f"rank {rank} ended after epoch {epoch}: {trial.end}", file=sys.stderr)
"""


def _run_ranks(tmp_path, url, sigterm_rank_1_at=None):
    """Runs RANK_TRAINER as ranks 0 and 1; returns [(returncode, stderr)] by rank."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_TRAINER)
    helper = str(Path(nasop_trial.__file__).parent)
    port = str(_free_port())
    processes = []
    for rank in (0, 1):
        (tmp_path / f"r{rank}").mkdir()
        args = [sys.executable, str(script), helper, str(rank), port]
        if rank == 1 and sigterm_rank_1_at is not None:
            args.append(str(sigterm_rank_1_at))
        env = env_for(tmp_path / f"r{rank}", url, RANK=str(rank), WORLD_SIZE="2")
        processes.append(subprocess.Popen(
            args, env=dict(os.environ, **env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    errs = [p.communicate(timeout=60)[1] for p in processes]
    return [(p.returncode, err) for p, err in zip(processes, errs)]


def test_a_stop_reaches_every_rank_through_torch_distributed(tmp_path, endpoint):
    server = endpoint((200, {"action": "continue"}), (200, {"action": "stop"}))
    ended = _run_ranks(tmp_path, server.url)
    for rank, (code, err) in enumerate(ended):
        assert code == 0, err
        assert f"rank {rank} ended after epoch 2: stopped" in err
    # Rank 0's reports alone, and its final report: the result is its own.
    assert [body["step"] for _, body in server.seen] == [1, 2, 2]
    assert server.seen[-1][1]["metrics"] == {"val_accuracy": 0.2}
    assert not (tmp_path / "r1" / "termination").exists()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_sigterm_on_one_rank_stops_every_rank(tmp_path, endpoint):
    # A drain evicts rank 1's pod during epoch 2: rank 0 stops with it at that epoch (it
    # would wait in its next collective otherwise), and both end as interrupted.
    server = endpoint()
    ended = _run_ranks(tmp_path, server.url, sigterm_rank_1_at=2)
    for rank, (code, err) in enumerate(ended):
        assert code == 143, err
        assert f"rank {rank} ended after epoch 2: interrupted" in err
    assert "another rank received SIGTERM" in ended[0][1]
    final = json.loads((tmp_path / "r0" / "termination").read_text())
    assert final["end"] == "interrupted" and final["step"] == 2
