"""A step's metrics worked out by hand from a small rollout, and the curves file."""

import math
from dataclasses import dataclass, field

import pytest

from open_instruct.ground_truth_utils import VerifierResult
from open_instruct.rl_utils import group_advantages
from open_instruct.rollouts import Rollout
from open_instruct.train_metrics import PLOTTED, plot, step_metrics


@dataclass
class Prompt:
    dataset: str
    index: int = 0
    messages: list = field(default_factory=list)


def sample(tokens: int, finish: str = "stop", versions=(4, 4)) -> dict:
    return {
        "token_ids": [1] * tokens,
        "logprobs": [-1.0] * tokens,
        "finish_reason": finish,
        "text": "x",
        "weight_versions": versions,
    }


def rollout() -> Rollout:
    """Two prompts x 2 samples: word-share 0.0 / 1.0; a FLIP group with one failed judge call and one unparsed
    answer scored on its raw text."""
    results = [
        [VerifierResult(0.0), VerifierResult(1.0)],
        [VerifierResult(None, judge_ok=False, error="503"), VerifierResult(0.5, parsed=False, cost=0.25)],
    ]
    completions = [[sample(4), sample(6, "length")], [sample(2, versions=(3, 3)), sample(8)]]
    prompts = [Prompt("word-share"), Prompt("general-flip", index=1)]
    return Rollout(
        5, prompts, completions, results, gen_seconds=2.0, reward_seconds=0.5, sampler_state={"epoch": 1}
    )


def test_step_metrics_by_hand():
    ro = rollout()
    adv = group_advantages([r.score for g in ro.results for r in g], 2)
    stats = [
        {
            "loss_sum": 1.0,
            "tokens": 10.0,
            "kl_sum": 0.5,
            "clipped_tokens": 2.0,
            "logprob_diff_sum": 0.002,
            "logprob_diff_max": 0.0004,
            "grad_norm": 3.0,
            "updates": 1,
            "lr": 1e-6,
        },
        {
            "loss_sum": 3.0,
            "tokens": 10.0,
            "kl_sum": 1.5,
            "clipped_tokens": 0.0,
            "logprob_diff_sum": 0.004,
            "logprob_diff_max": 0.0009,
            "grad_norm": 3.0,
            "updates": 1,
            "lr": 1e-6,
        },
    ]
    m = step_metrics(ro, adv, stats, sync_seconds=0.1, train_seconds=1.0, step_seconds=4.0)
    assert m["step"] == 5
    assert m["reward_mean"] == pytest.approx(0.5)  # 0, 1, 0.5: the failed call has no reward
    assert m["reward_std"] == pytest.approx(math.sqrt(((0.5) ** 2 + 0.5**2 + 0) / 3))
    assert m["reward/word-share"] == pytest.approx(0.5) and m["reward/general-flip"] == pytest.approx(0.5)
    assert (m["judge_failures"], m["judge_answers"], m["unparsed"], m["judge_cost"]) == (1, 3, 1, 0.25)
    assert m["rewarded"] == 3  # every sample is rewarded or a failed judge call: 3 + 1 = 4
    assert m["loss"] == pytest.approx(4.0 / 20) and m["kl"] == pytest.approx(2.0 / 20)
    assert m["clip_fraction"] == pytest.approx(2.0 / 20)
    # engine vs learner: the token-weighted mean over both ranks, the largest on either
    assert m["logprob_diff_mean"] == pytest.approx(0.006 / 20) and m["logprob_diff_max"] == 0.0009
    assert m["response_length_mean"] == pytest.approx(20 / 4) and m["stop_rate"] == pytest.approx(3 / 4)
    assert m["tokens_per_second"] == pytest.approx(20 / 4.0)
    # the word-share group trains both samples; the FLIP group has one reward left and is dropped
    assert (m["samples_trained"], m["dropped_groups"], m["zero_std_groups"]) == (2, 1, 0)
    assert (m["grad_norm"], m["lr"]) == (3.0, 1e-6)
    # step 5 trains the weights of step 4: samples from version 3 are one update behind
    assert (m["weights_staleness"], m["weights_staleness_min"]) == (1, 0)
    assert (
        m["time/generation"],
        m["time/reward"],
        m["time/training"],
        m["time/weight_sync"],
        m["time/step"],
    ) == (2.0, 0.5, 1.0, 0.1, 4.0)


def test_a_step_that_trained_nothing_reports_nan_not_zero():
    ro = rollout()
    m = step_metrics(ro, group_advantages([r.score for g in ro.results for r in g], 2), [], 0.0, 0.0, 1.0)
    assert math.isnan(m["loss"]) and math.isnan(m["grad_norm"]) and math.isnan(m["lr"])
    assert math.isnan(m["logprob_diff_mean"]) and math.isnan(m["logprob_diff_max"])


def test_curves_are_a_png_with_every_panel(tmp_path):
    history = [{"step": s, **{k: float(s) for k in PLOTTED}} for s in (1, 2, 3)]
    path = plot(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot([], tmp_path / "none.png") is None


def test_a_fresh_run_keeps_an_earlier_runs_metrics_aside(tmp_path, capsys):
    from open_instruct.grpo_config import GRPOConfig
    from open_instruct.train_metrics import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
    MetricsLog(GRPOConfig(), tmp_path).close()
    kept = list(tmp_path.glob("metrics.before-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == '{"step": 1, "reward_mean": 0.5}\n'
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert f"kept as {kept[0].name}" in capsys.readouterr().out


def test_downstream_rows_go_to_metrics_jsonl_not_the_step_history(tmp_path):
    """They arrive after later steps were logged; a resume keeps them apart from the training steps."""
    import json

    from open_instruct.grpo_config import GRPOConfig
    from open_instruct.train_metrics import MetricsLog, plot_downstream

    log = MetricsLog(GRPOConfig(), tmp_path)
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "reward_mean": 0.1})
        + "\n"
        + json.dumps({"step": 2, "reward_mean": 0.2})
        + "\n"
    )
    for step, score in ((0, 0.25), (2, 0.5)):
        log.log_downstream({"step": step, "downstream_step": step, "downstream/ifeval": score})
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 0, 2] and rows[-1]["downstream/ifeval"] == 0.5
    resumed = MetricsLog(GRPOConfig(), tmp_path, resume_step=2)
    assert [m["step"] for m in resumed.history] == [1, 2]
    assert [r["downstream_step"] for r in resumed.downstream] == [0, 2]
    png = plot_downstream(resumed.downstream, tmp_path / "downstream.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_downstream([], tmp_path / "none.png") is None


def test_downstream_rows_never_make_wandb_drop_a_training_step(tmp_path, monkeypatch):
    """Two evaluations finishing between steps 1 and 2: each downstream row rides along with a training
    step's row, so wandb's step never runs ahead of the trainer's. Failed before: each downstream row
    advanced wandb's step, and step 2 was dropped ("ignoring partial history record" in its log)."""
    from open_instruct.grpo_config import GRPOConfig
    from open_instruct.train_metrics import MetricsLog

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    log = MetricsLog(GRPOConfig(with_tracking=True), tmp_path)
    ro = Rollout.__new__(Rollout)
    ro.step, ro.sampler_state, ro.prompts = 1, {"epoch": 0}, []
    log.log({"step": 1, "reward_mean": 0.1}, ro)
    for step in (0, 1):
        log.log_downstream({"step": step, "downstream_step": step, "downstream/ifeval": 0.5})
    for step in (2, 3):
        ro.step = step
        log.log({"step": step, "reward_mean": 0.1 * step}, ro)
    log.log_downstream({"step": 3, "downstream_step": 3, "downstream/ifeval": 0.75})
    log.close()
    (debug,) = tmp_path.glob("wandb/offline-run-*/logs/debug-internal.log")
    assert "ignoring partial history record" not in debug.read_text()
