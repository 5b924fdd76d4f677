"""What a training step reports, and where it goes.

`step_metrics` turns one step's rollout, advantages and learner statistics into the flat dict written to
metrics.jsonl (and wandb); `MetricsLog` owns those files. Keys are documented in the README ("Outputs").
"""

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from open_instruct import train_state
from open_instruct.grpo_config import GRPOConfig


def step_metrics(
    ro, adv, train_stats: list[dict], sync_seconds: float, train_seconds: float, step_seconds: float
) -> dict:
    flat = [r for group in ro.results for r in group]
    samples = [c for group in ro.completions for c in group]
    scores = [r.score for r in flat if r.score is not None]
    per_verifier: dict[str, list[float]] = {}
    for p, group in zip(ro.prompts, ro.results, strict=True):
        per_verifier.setdefault(p.dataset, []).extend(r.score for r in group if r.score is not None)
    tokens = sum(t["tokens"] for t in train_stats) if train_stats else 0.0
    response_tokens = sum(len(c["token_ids"]) for c in samples)
    m = {
        "step": ro.step,
        "loss": sum(t["loss_sum"] for t in train_stats) / tokens if tokens else float("nan"),
        "reward_mean": float(np.mean(scores)) if scores else float("nan"),
        "reward_std": float(np.std(scores)) if scores else float("nan"),
        **{f"reward/{name}": float(np.mean(v)) if v else float("nan") for name, v in per_verifier.items()},
        "rewarded": len(scores),
        "judge_failures": sum(not r.judge_ok for r in flat),
        "judge_answers": sum(r.judge_ok for r in flat),
        "unparsed": sum(r.judge_ok and not r.parsed for r in flat),
        "kl": sum(t["kl_sum"] for t in train_stats) / tokens if tokens else float("nan"),
        "clip_fraction": sum(t["clipped_tokens"] for t in train_stats) / tokens if tokens else float("nan"),
        # |learner - engine| log-prob of each trained token, before the update: kernels and weight sync alone
        # when on-policy (--async_steps 0, about 1e-6 in float32); with --async_steps 1 it also holds up to
        # one update of staleness.
        "logprob_diff_mean": sum(t["logprob_diff_sum"] for t in train_stats) / tokens
        if tokens
        else float("nan"),
        "logprob_diff_max": max((t["logprob_diff_max"] for t in train_stats), default=float("nan")),
        "response_length_mean": response_tokens / max(len(samples), 1),
        "stop_rate": sum(c["finish_reason"] == "stop" for c in samples) / max(len(samples), 1),
        "tokens_per_second": response_tokens / step_seconds if step_seconds else 0.0,
        "samples_trained": int(adv.keep.sum()),
        "zero_std_groups": adv.zero_std_groups,
        "dropped_groups": adv.dropped_groups,
        "grad_norm": train_stats[0]["grad_norm"] / max(train_stats[0]["updates"], 1)
        if train_stats
        else float("nan"),
        "lr": train_stats[0]["lr"] if train_stats else float("nan"),
        "judge_cost": sum(r.cost for r in flat),
        # Steps between the weights being trained and those that generated the samples (vLLM's weight
        # versions, per sample): the oldest and the newest. With --async_steps a step can mix versions (a
        # sync that lands between two rollout calls); truncated importance sampling corrects each token.
        "weights_staleness": ro.step - 1 - min(c["weight_versions"][0] for c in samples),
        "weights_staleness_min": ro.step - 1 - max(c["weight_versions"][1] for c in samples),
        "time/generation": ro.gen_seconds,
        "time/reward": ro.reward_seconds,
        "time/training": train_seconds,
        "time/weight_sync": sync_seconds,
        "time/step": step_seconds,
    }
    return m


class MetricsLog:
    """metrics.jsonl (one object per step), data_order.jsonl (the prompts each step drew, by their index in
    the mixture) and, with --with_tracking, wandb. A resumed run keeps the rows up to its saved step and
    continues the same wandb run."""

    def __init__(
        self, cfg: GRPOConfig, out: Path, resume_step: int | None = None, wandb_run_id: str | None = None
    ):
        self.path, self.order_path = out / "metrics.jsonl", out / "data_order.jsonl"
        self.history: list[dict] = []
        self.downstream: list[dict] = []  # downstream-evaluation rows
        if resume_step is None:  # a fresh run; an earlier run's logs here are kept aside, not emptied
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for path in (self.path, self.order_path):
                if path.exists() and path.stat().st_size:
                    aside = path.with_name(f"{path.stem}.before-{stamp}{path.suffix}")
                    path.replace(aside)
                    print(
                        f"{path} held an earlier run's rows without a saved state to resume: kept as {aside.name}"
                    )
                path.write_text("")
        else:  # downstream-evaluation rows stay in the file, out of the per-step history
            rows = train_state.truncate_jsonl(self.path, resume_step)
            self.history = [r for r in rows if "downstream_step" not in r]
            self.downstream = [r for r in rows if "downstream_step" in r]
            train_state.truncate_jsonl(self.order_path, resume_step)
        self.wandb = None
        if cfg.with_tracking:
            import wandb

            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self.wandb = wandb.init(
                project=cfg.wandb_project_name,
                name=cfg.exp_name,
                config=_public_config(cfg),
                dir=str(out),
                mode=mode,
                id=wandb_run_id,
                resume="allow",
            )
            self.wandb.define_metric("downstream/*", step_metric="downstream_step")
        # Downstream rows for wandb, each sent inside a training step's row (at most one per row): sent on
        # their own, each would advance wandb's step past the trainer's and the next step would be dropped.
        self._wandb_downstream: list[dict] = []
        self._wandb_row_free = False

    @property
    def wandb_run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, metrics: dict, ro) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        with self.order_path.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "step": ro.step,
                        "epoch": ro.sampler_state["epoch"],
                        "indices": [p.index for p in ro.prompts],
                    }
                )
                + "\n"
            )
        self.history.append(metrics)
        if self.wandb is not None:
            self.wandb.log(metrics, step=metrics["step"])
            self._wandb_row_free = True
            self._send_downstream()

    def log_downstream(self, row: dict) -> None:
        """A downstream evaluation's row (downstream_eval.DownstreamEvals.row): into metrics.jsonl, and wandb
        against its own step axis, since it arrives after later training steps were logged."""
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.downstream.append(row)
        if self.wandb is not None:
            self._wandb_downstream.append({k: v for k, v in row.items() if k != "step"})
            self._send_downstream()

    def _send_downstream(self) -> None:
        if self._wandb_row_free and self._wandb_downstream:
            self.wandb.log(self._wandb_downstream.pop(0), commit=False)  # into the open training row
            self._wandb_row_free = False

    def close(self) -> None:
        if self.wandb is not None:
            for fields in self._wandb_downstream:  # training is over: each may have a row of its own
                self.wandb.log(fields)
            self.wandb.finish()


def _public_config(cfg: GRPOConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if "key" not in k.lower() and "token" not in k.lower()}


PLOTTED = ("reward_mean", "loss", "kl", "response_length_mean", "judge_failures", "time/step")


def plot(history: list[dict], path: Path) -> Path | None:
    """training_curves.png: the quantities people look at first, one panel each, against the step."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    steps = [m["step"] for m in history]
    for ax, key in zip(axes.flat, PLOTTED, strict=True):
        ax.plot(steps, [m.get(key, float("nan")) for m in history], marker="." if len(steps) < 50 else None)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_downstream(rows: list[dict], path: Path) -> Path | None:
    """downstream.png: each downstream task's score against the step of the checkpoint evaluated."""
    tasks = sorted({k for r in rows for k in r if k.startswith("downstream/")})
    if not tasks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = sorted(rows, key=lambda r: r["step"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
    for ax, key in zip(axes[0], tasks, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(key.removeprefix("downstream/"))
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
