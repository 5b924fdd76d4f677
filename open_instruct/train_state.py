"""Full training state, for resuming a run after a crash: one directory per saved step, written atomically.

    OUTPUT_DIR/state/step_12/trainer.json   step, data position, run identity, wandb run id
    OUTPUT_DIR/state/step_12/learner/       DeepSpeed checkpoint of every learner rank: model, optimizer,
                                            LR scheduler, torch RNG
    OUTPUT_DIR/state/latest                 "step_12", replaced once step_12 is complete

A state is built in `step_N.tmp/` and renamed to `step_N/` only when every rank has written its part; then
`latest` is swapped atomically (os.replace). A crash at any moment leaves the previous complete state as
`latest`, so rerunning the same command resumes from the newest complete state. On a cluster OUTPUT_DIR
must be on a filesystem every learner node sees.

Generation needs no RNG state of its own: each step's sampling seeds derive from (seed, step), and the data
position is the prompt sampler's state after the prompts of the saved step.
"""

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

# Flags that fix which prompts each step sees and how they are grouped: a resumed run must use the same.
IDENTITY_FLAGS = (
    "seed",
    "dataset_mixer_list",
    "dataset_mixer_list_splits",
    "num_unique_prompts_rollout",
    "num_samples_per_prompt_rollout",
    "model_name_or_path",
    "max_prompt_token_length",
)


class PromptSampler:
    """Endless shuffled passes over the prompts, reproducible from the seed, with a saveable position."""

    def __init__(self, prompts: list, seed: int):
        self.prompts, self.rng, self.order, self.pos, self.epoch = prompts, random.Random(seed), [], 0, 0

    def take(self, k: int) -> list:
        out = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
                self.pos, self.epoch = 0, self.epoch + 1
            out.append(self.prompts[self.order[self.pos]])
            self.pos += 1
        return out

    def state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {
            "epoch": self.epoch,
            "pos": self.pos,
            "order": list(self.order),
            "rng": [version, list(internal), gauss],
        }

    def load(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.epoch, self.pos, self.order = state["epoch"], state["pos"], list(state["order"])


@dataclass
class TrainerState:
    step: int
    """the last training step whose update is in this state."""
    sampler: dict
    """PromptSampler.state() after the prompts of `step` were taken."""
    identity: dict
    """IDENTITY_FLAGS and their values, checked on resume."""
    wandb_run_id: str | None = None


def state_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "state"


def latest(output_dir: str | Path) -> tuple[Path, TrainerState] | None:
    """The newest complete state, or None when the run starts fresh."""
    root = state_root(output_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    data = json.loads((path / "trainer.json").read_text())
    return path, TrainerState(**data)


def begin(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary directory for the state of `step` (leftovers of an interrupted save are removed)."""
    tmp = state_root(output_dir) / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(output_dir: str | Path, tmp: Path, state: TrainerState, keep: int = 2) -> Path:
    """Write trainer.json, make the state visible under its final name, point `latest` at it and prune
    older states (the newest `keep` are kept)."""
    root = state_root(output_dir)
    _write_atomic(tmp / "trainer.json", json.dumps(asdict(state)))
    final = root / f"step_{state.step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(root / "latest", final.name)
    _fsync_dir(root)
    saved = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for old in saved[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def check_identity(saved: dict, current: dict) -> str | None:
    """None when a resumed run sees the same data and groups; else a one-line reason naming the flag."""
    for flag in IDENTITY_FLAGS:
        if saved.get(flag) != current.get(flag):
            return (
                f"--{flag} was {saved.get(flag)!r} when the saved state was written and is "
                f"{current.get(flag)!r} now: rerun with the same value, or use a new --output_dir"
            )
    return None


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Keep the rows of a per-step JSONL log up to `last_step` (a resumed run rewrites what came after),
    and return them."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the crash
            continue
        if row.get("step", 0) <= last_step:
            rows.append(row)
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".writing")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
