"""Full training state, for resuming a run after a crash: one directory per saved step, written atomically.

    OUTPUT_DIR/state/step_12/trainer.json   step, data position, run identity, wandb run id
    OUTPUT_DIR/state/step_12/learner/       DeepSpeed checkpoint of every learner rank: model, optimizer,
                                            LR scheduler, torch RNG
    OUTPUT_DIR/state/step_12/manifest.json  every file of the state with its size and a SHA-256
    OUTPUT_DIR/state/latest                 "step_12", replaced once step_12 is complete

A state is built in `step_N.tmp/` and renamed to `step_N/` only when every rank has written its part; then
`latest` is swapped atomically (os.replace). A crash at any moment leaves the previous complete state as
`latest`, so rerunning the same command resumes from the newest complete state. The newest
`--keep_last_n_states` are kept: a state found damaged on resume (a missing learner shard, a truncated file,
a checksum that does not match the manifest) is named in one line and the one before is used; when none is
usable the run refuses to start rather than start over. A save that fails (a full disk) leaves the previous
state as it was. On a cluster OUTPUT_DIR must be on a filesystem every learner node sees.

Generation needs no RNG state of its own: each step's sampling seeds derive from (seed, step), and the data
position is the prompt sampler's state after the prompts of the saved step.
"""

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from open_instruct.cli_utils import RunFailure, UserError

# Files above this size are checksummed on their first and last MiB only (plus their size): hashing a 7B
# model's optimizer state whole would add minutes to every save.
FULL_HASH_MAX = 64 * 2**20

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


def latest(output_dir: str | Path, report=print) -> tuple[Path, TrainerState] | None:
    """The newest complete and undamaged state, or None when the run starts fresh. A damaged state is named
    through `report` and skipped; when states exist but none is usable, a UserError."""
    root = state_root(output_dir)
    pointer = root / "latest"
    candidates = sorted(
        (
            p
            for p in root.glob("step_*")
            if p.is_dir() and not p.name.endswith(".tmp") and _step_of(p) is not None
        ),
        key=_step_of,
        reverse=True,
    )
    if pointer.is_file():  # the pointer names the newest complete one; anything newer was never committed
        newest = _step_of(root / pointer.read_text().strip())
        candidates = [p for p in candidates if newest is not None and _step_of(p) <= newest]
    elif candidates and not any((p / "trainer.json").is_file() for p in candidates):
        return None
    damaged = []
    for path in candidates:
        problem = check_state(path)
        if problem is None:
            state = TrainerState(**json.loads((path / "trainer.json").read_text()))
            if damaged:
                report(f"{'; '.join(damaged)}: resuming from {path.name} instead")
            return path, state
        damaged.append(f"{path.name} is damaged ({problem})")
    if damaged:
        raise UserError(
            f"{root}: no usable saved state ({'; '.join(damaged)}); move the state folder aside to start over"
        )
    return None


def check_state(path: Path) -> str | None:
    """None when every file of the state at `path` is there as its manifest says; else what is wrong, naming
    the file."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        return "manifest.json is missing"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "manifest.json is not valid JSON"
    for name, (size, digest) in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
        if _digest(f) != digest:
            return f"{name} does not match its checksum"
    try:
        TrainerState(**json.loads((path / "trainer.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        return f"trainer.json cannot be read: {type(e).__name__}"
    return None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= FULL_HASH_MAX:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f.read(2**20))
            f.seek(size - 2**20)
            h.update(f.read(2**20))
    return h.hexdigest()


def _step_of(path: Path) -> int | None:
    try:
        return int(path.name.removeprefix("step_"))
    except ValueError:
        return None


def begin(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary directory for the state of `step` (leftovers of an interrupted save are removed)."""
    tmp = state_root(output_dir) / f"step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(output_dir: str | Path, tmp: Path, state: TrainerState, keep: int = 2) -> Path:
    """Write trainer.json and the manifest, make the state visible under its final name, point `latest` at
    it and prune older states (the newest `keep` are kept). A full disk (or any other OSError) leaves the
    previous state as it was and raises RunFailure naming the path and the free space."""
    root = state_root(output_dir)
    final = root / f"step_{state.step}"
    try:
        _write_atomic(tmp / "trainer.json", json.dumps(asdict(state)))
        files = sorted(f for f in tmp.rglob("*") if f.is_file() and f.name != "manifest.json")
        manifest = {str(f.relative_to(tmp)): [f.stat().st_size, _digest(f)] for f in files}
        _write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", final.name)
        _fsync_dir(root)
    except OSError as e:
        raise save_failed(root, tmp, state.step, e.strerror or str(e)) from None
    saved = sorted(
        (p for p in root.glob("step_*") if p.is_dir() and _step_of(p) is not None),
        key=_step_of,
    )
    for old in saved[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_failed(root: Path, tmp: Path, step: int, why: str) -> RunFailure:
    """The one-line error of a state that could not be written (a full disk, most often); its partial files go."""
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(root).free / 2**30
    return RunFailure(
        f"saving the state of step {step} in {root} failed ({why}; {free:.1f} GiB free there); the previous "
        "state is intact: free some space and rerun the same command to resume"
    )


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
