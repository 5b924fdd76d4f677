"""Build the world of world.py offline: a tokenizer, a tiny FLIP judge and a tiny policy trained on CPU, and the
data files that the demo, the tests and the benchmarks read.

    python -m open_instruct.testing.world_models --output_dir .cache/flip-world [--seed 0]
    python -m open_instruct.testing.world_models --data_dir data/flip_world   # the data files alone

The judge reads the project's own FLIP prompt (prompts/FLIP_*, through judge_utils.flip_messages and the
ChatML template) and answers with the JSON the prompt asks for; it learns from on-task responses (the
instruction to infer is the task's plainest wording) and generic replies. It never sees an echo of a prompt
or text aimed at a judge: those are left for the reward-hacking measurements. The policy is pre-trained on
the world's responses, but to a prompt it answers on task only one time in five; GRPO has the rest to win.

The output directory holds `judge/` and `policy/` (Hugging Face models, float32, Qwen2 architecture, served by
vLLM) and `report.json` (the judge's held-out scores). The data directory holds `train.jsonl` / `eval.jsonl`
(RLVR rows for general-flip), `train_llmjudge.jsonl` (the same prompts for general-quality) and
`rewardbench.jsonl` (RewardBench 2's layout).
The build is deterministic for a seed, and kept in the user's cache (`cache_root()`, keyed by a hash of the
builder's sources and library versions): a new checkout copies it from there instead of training again.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from open_instruct import judge_utils
from open_instruct.testing import world
from open_instruct.testing.tiny_models import build_model, build_tokenizer

# What a weak policy writes to a prompt: rarely on task, often generic. GRPO learns to move this mass.
POLICY_MIX = {
    "on_task": 0.2,
    "wrong_topic": 0.15,
    "wrong_form": 0.15,
    "broken_constraint": 0.1,
    "generic": 0.4,
}
JUDGE = {"hidden_size": 128, "num_layers": 2, "steps": 900, "batch_size": 16, "lr": 3e-3}
POLICY = {"hidden_size": 128, "num_layers": 2, "steps": 800, "batch_size": 32, "lr": 2e-3}


def judge_example(task, rng: random.Random) -> tuple[list[dict], str]:
    """(FLIP messages for a response, the answer the judge should give). 15% generic replies."""
    if rng.random() < 0.15:
        text, done = world.off_task(task, "generic", rng)
    else:
        text, done = world.response(task, rng), task
    return judge_utils.flip_messages(text), world.flip_answer(done, world.canonical_instruction(done))


def policy_example(task, rng: random.Random) -> tuple[list[dict], str]:
    kind = rng.choices(list(POLICY_MIX), weights=list(POLICY_MIX.values()))[0]
    text = world.response(task, rng) if kind == "on_task" else world.off_task(task, kind, rng)[0]
    return [{"role": "user", "content": world.instruction(task)}], text


def tokenizer_corpus(seed: int) -> list[str]:
    from open_instruct.prompts import PROMPTS_DIR

    rng = random.Random(seed)
    lines = [p.read_text(encoding="utf-8") for p in sorted(PROMPTS_DIR.glob("*.prompt"))] * 20
    for task in world.tasks(3000, seed):
        lines += [
            world.instruction(task),
            world.response(task, rng),
            world.flip_answer(task, world.canonical_instruction(task)),
        ]
    return lines + list(world.GENERIC_REPLIES) * 20


def encode(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return p, a


def answer_loss(model, ids, mask, labels):
    """The causal LM loss of transformers' `model(..., labels=labels).loss` (mean over the tokens whose label
    is not -100), with logits computed only where a label is: the vocabulary projection of the prompt
    positions, whose logits nothing uses, is skipped."""
    import torch.nn.functional as F

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]  # position t predicts token t + 1
    scored = targets != -100
    return F.cross_entropy(model.lm_head(hidden[:, :-1][scored]), targets[scored])


def train(
    model,
    examples: list[tuple[list[int], list[int]]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str,
):
    """Next-token training on the answer tokens only (answer_loss: the judge's answer is a tenth of its row,
    the FLIP prompt the rest, and projecting every prompt position onto the vocabulary took a quarter of a
    step); AdamW, linear warm-up then cosine decay."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    model.train()
    bar = tqdm(range(steps), desc=desc, mininterval=2)
    for _ in bar:
        batch = rng.sample(examples, batch_size)
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.zeros(batch_size, width, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros(batch_size, width, dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            row = p + a
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, len(p) : len(row)] = torch.tensor(a)
            mask[i, : len(row)] = 1
        loss = answer_loss(model, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model


def generate(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy answers (as the judge serves at temperature 0), left-padded batches."""
    import torch

    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False
            )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def judge_report(model, tokenizer, seed: int, n: int = 200) -> dict:
    """Held-out rows (tasks from another seed): parse rate and F1 of the inferred instruction against the true
    instruction and against another row's."""
    rng = random.Random(seed + 7)
    held = world.tasks(n, seed + 1_000_003)
    prompts = [encode(tokenizer, judge_utils.flip_messages(world.response(t, rng)), "")[0] for t in held]
    answers = generate(model, tokenizer, prompts, max_new_tokens=96)
    inferred = [judge_utils.extract_inferred_instruction(a) for a in answers]
    truth = [world.instruction(t) for t in held]
    others = truth[1:] + truth[:1]
    return {
        "rows": n,
        "parse_rate": sum(i is not None for i in inferred) / n,
        "f1_true": world.mean_f1((i or "", t) for i, t in zip(inferred, truth, strict=True)),
        "f1_mismatched": world.mean_f1((i or "", t) for i, t in zip(inferred, others, strict=True)),
        "f1_ceiling": world.mean_f1((world.canonical_instruction(t), world.instruction(t)) for t in held),
        "examples": [{"instruction": t, "judge": a} for t, a in zip(truth[:3], answers[:3], strict=True)],
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def rewardbench_rows(seed: int, n_per_subset: int = 60) -> list[dict]:
    """RewardBench 2's layout: 1 chosen, 3 rejected. `focus`: the rejected are off task (another topic, another
    form, a generic reply); `constraints`: same form and topic, one constraint broken."""
    rng = random.Random(seed + 11)
    rows = []
    for subset, kinds in (
        ("focus", ("wrong_topic", "wrong_form", "generic")),
        ("constraints", ("broken_constraint",) * 3),
    ):
        for i, task in enumerate(world.tasks(n_per_subset, seed + 2_000_003 + len(rows))):
            if subset == "constraints":
                task = world.Task(
                    task.form,
                    task.topic,
                    task.tone or "calm",
                    task.audience or "children",
                    task.n or 3,
                    task.wording,
                )
            rejected = []
            while len(rejected) < 3:
                text = world.off_task(task, kinds[len(rejected)], rng)[0]
                if text not in rejected:
                    rejected.append(text)
            rows.append(
                {
                    "id": f"{subset}-{i}",
                    "prompt": world.instruction(task),
                    "chosen": [world.response(task, rng)],
                    "rejected": rejected,
                    "num_correct": 1,
                    "subset": subset,
                }
            )
    return rows


def score_rows(seed: int, n_tasks: int = 3) -> list[dict]:
    """Rows for `flip score`: each task's instruction with a response of every kind (`kind` says which)."""
    rng = random.Random(seed + 13)
    rows = []
    for task in world.tasks(n_tasks, seed + 4_000_037):
        for kind in world.KINDS:
            text = world.response(task, rng) if kind == "on_task" else world.off_task(task, kind, rng)[0]
            rows.append({"instruction": world.instruction(task), "response": text, "kind": kind})
    return rows


def bon_rows(seed: int, n: int = 40) -> list[dict]:
    """Rows for `flip bon`: four candidates (one on task, another topic, another form, generic) in a seeded
    order; `on_task_index` says where the on-task one is."""
    rng = random.Random(seed + 17)
    rows = []
    for task in world.tasks(n, seed + 5_000_011):
        candidates = [world.response(task, rng)]
        candidates += [world.off_task(task, k, rng)[0] for k in ("wrong_topic", "wrong_form", "generic")]
        order = list(range(4))
        rng.shuffle(order)
        rows.append(
            {
                "prompt": world.instruction(task),
                "responses": [candidates[i] for i in order],
                "on_task_index": order.index(0),
            }
        )
    return rows


def write_data(output_dir: str | Path, seed: int = 0) -> Path:
    """The world's data files (data/flip_world/ holds seed 0's, checked against this by the tests)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rl_tasks = world.tasks(600, seed + 3_000_017)
    write_jsonl(out / "train.jsonl", [world.rlvr_row(t) for t in rl_tasks[:500]])
    write_jsonl(out / "eval.jsonl", [world.rlvr_row(t) for t in rl_tasks[500:]])
    write_jsonl(out / "train_llmjudge.jsonl", [world.rlvr_row(t, "general-quality") for t in rl_tasks[:500]])
    write_jsonl(out / "rewardbench.jsonl", rewardbench_rows(seed))
    write_jsonl(out / "score.jsonl", score_rows(seed))
    write_jsonl(out / "bon.jsonl", bon_rows(seed))
    return out


def source_fingerprint() -> str:
    """A hash of everything a build depends on (this file, the world, the parts of tiny_models.py it calls, the
    judge prompts, and the versions of the libraries that compute it), so a cached build made from other code
    is rebuilt, and one made before an unrelated change to tiny_models.py (another architecture) is not."""
    import importlib.metadata as md
    import inspect

    from open_instruct.prompts import PROMPTS_DIR
    from open_instruct.testing import tiny_models as tm

    files = [Path(__file__), Path(world.__file__), *sorted(PROMPTS_DIR.glob("FLIP_*.prompt"))]
    used = [inspect.getsource(f) for f in (tm.corpus, tm.build_tokenizer, tm.build_model)]
    used += [repr(v) for v in (tm.SPECIAL_TOKENS, tm.CHAT_TEMPLATE, tm._WORDS)]
    versions = " ".join(f"{name}=={md.version(name)}" for name in ("torch", "transformers", "tokenizers"))
    text = b"".join(f.read_bytes() for f in files) + "".join(used).encode() + versions.encode()
    return hashlib.sha256(text).hexdigest()[:16]


def cache_root() -> Path:
    """Where built worlds are kept across runs and checkouts: $FLIP_CACHE_DIR, else
    $XDG_CACHE_HOME/open-instruct-flip, else ~/.cache/open-instruct-flip."""
    if os.environ.get("FLIP_CACHE_DIR"):
        return Path(os.environ["FLIP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "open-instruct-flip"


def make_world(
    output_dir: str | Path,
    seed: int = 0,
    tasks: int = 6000,
    judge_steps: int = JUDGE["steps"],
    policy_steps: int = POLICY["steps"],
    report_rows: int = 200,
) -> dict:
    """Train the world's judge and policy into `output_dir` (no cache); returns the judge's report. The
    defaults are the world the demo and the tests use; smaller numbers give a reduced world for tests of the
    builder itself."""
    import torch

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    start = time.time()
    tokenizer = build_tokenizer(vocab_size=2048, seed=seed, lines=tokenizer_corpus(seed))

    rng = random.Random(seed)
    train_tasks = world.tasks(tasks, seed)
    judge = build_model(tokenizer, JUDGE["hidden_size"], JUDGE["num_layers"], seed=seed)
    examples = [encode(tokenizer, *judge_example(t, rng)) for t in train_tasks]
    train(judge, examples, judge_steps, JUDGE["batch_size"], JUDGE["lr"], seed, "world judge")
    report = judge_report(judge, tokenizer, seed, n=report_rows)
    tokenizer.save_pretrained(out / "judge")
    judge.save_pretrained(out / "judge", safe_serialization=True)

    policy = build_model(tokenizer, POLICY["hidden_size"], POLICY["num_layers"], seed=seed + 1)
    examples = [encode(tokenizer, *policy_example(t, rng)) for t in train_tasks]
    train(policy, examples, policy_steps, POLICY["batch_size"], POLICY["lr"], seed, "world policy")
    tokenizer.save_pretrained(out / "policy")
    policy.save_pretrained(out / "policy", safe_serialization=True)

    report["build_seconds"] = round(time.time() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` for the block: one build at a time per cache entry, across processes (a test
    session and a launch script may ask for the same world at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


WORLD_FILES = ("judge", "policy", "report.json")


def world_spec(seed: int) -> dict:
    """What a built world's stamp (world_spec.json) says: its seed and the fingerprint of its sources."""
    return {"seed": seed, "source": source_fingerprint()}


def is_built(output_dir: str | Path, seed: int = 0, spec: dict | None = None) -> bool:
    """Whether `output_dir` holds the world of this seed and these sources (copied whole: the stamp goes last)."""
    stamp = Path(output_dir) / "world_spec.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == (spec or world_spec(seed))


def build_world(output_dir: str | Path, seed: int = 0, quiet: bool = False) -> Path:
    """The world in `output_dir` (where the tiny preset reads it), built once per version of its sources and
    kept in the cache (cache_root()), so a new checkout or a cleaned `.cache` copies it instead of training
    again; a change to the builder's code, the prompts or the libraries gives a new cache entry."""
    out, spec = Path(output_dir), world_spec(seed)
    if is_built(out, spec=spec):
        return out
    stamp = out / "world_spec.json"
    cached = cache_root() / "flip-world" / f"{spec['source']}-seed{seed}"
    with _locked(cached.with_name(cached.name + ".lock")):
        if not is_built(cached, spec=spec):
            partial = cached.with_name(cached.name + ".partial")
            for leftover in (partial, cached):  # a build or a copy that was cut short
                shutil.rmtree(leftover, ignore_errors=True)
            report = make_world(partial, seed)
            (partial / "world_spec.json").write_text(json.dumps(spec))
            partial.rename(cached)
            if not quiet:
                print(
                    f"world judge on {report['rows']} held-out rows: parse rate {report['parse_rate']:.2f}, "
                    f"F1 {report['f1_true']:.3f} against the true instruction (ceiling "
                    f"{report['f1_ceiling']:.3f}), {report['f1_mismatched']:.3f} against another row's; built "
                    f"in {report['build_seconds']:.0f} s, cached in {cached}"
                )
        elif not quiet:
            print(f"world models from the cache: {cached}")
        out.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)  # the stamp goes last: a copy cut short is copied again next time
        for name in WORLD_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            if (cached / name).is_dir():
                shutil.copytree(cached / name, target)
            else:
                shutil.copyfile(cached / name, target)
        stamp.write_text(json.dumps(spec))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", help="where to build the judge and the policy (and report.json)")
    p.add_argument("--data_dir", help="where to write the world's data files")
    p.add_argument("--seed", type=int, default=0, help="seed of the world's rows and of the training")
    args = p.parse_args()
    if not (args.output_dir or args.data_dir):
        p.error("give --output_dir, --data_dir or both")
    if args.data_dir:
        print(f"world data in {write_data(args.data_dir, args.seed)}")
    if args.output_dir:
        print(f"world models in {build_world(args.output_dir, args.seed)}")


if __name__ == "__main__":
    main()
