"""The DeepSpeed learner on one GPU, without Ray or vLLM: speed, memory and correctness, side by side.

Four configurations, each in its own process (DeepSpeed and NCCL keep process-wide state): ZeRO-2 and
ZeRO-3, each with gradient checkpointing off and on. Each creates `open_instruct.learner.PolicyLearner` as
the controller does (world size 1, rank 0), calls setup() and trains on synthetic samples: random token
ids, advantages drawn at random and centred to mean 0, vLLM log-probs between -2.5 and -0.05. Reported per
configuration: the median seconds of a train() call over the timed steps (after --warmup steps, which take
CUDA's first-call costs and the first optimizer step allocating Adam's states), response tokens/s, model
TFLOP/s (6 x parameters x tokens plus causal attention; checkpointing's recomputed forward not counted),
the peak GPU memory allocated while training (peak reset after setup) and the memory held after setup.
Checks: loss and gradient norm finite, and one layer-0 matrix from named_weights() changed. The loss itself
is ~0 by construction (one update per step, so the ratio is 1, and the advantages have mean 0); its
gradient is not. The learning rate is 1e-4, not the usual 1e-6: Adam moves a weight by about lr, and 1e-6
is below bf16's resolution for a weight of 0.02 (~1e-4), so the weight would not visibly change.

ZeRO-3 without gradient checkpointing also checks what only matters there: named_weights() yields full,
unsharded tensors with the HF model's names and shapes; save_model() writes a checkpoint that transformers
loads with equal weights; save_state(), then load_state() into a fresh learner restores the weights exactly
and the optimizer's step count, and the fresh learner's next step (on the same samples as the original's
next step) moves the weights as the original's did: the mean |difference| of the two results is compared
with the step's own update (restored Adam moments give ~0; reset ones about the update itself, 0.99x on
CPU when tried).

At the end: a table, and the ratios gradient checkpointing on/off (peak memory, time) and ZeRO-3/ZeRO-2
(time, memory). Results go to --out as JSON, rewritten after every configuration, so a run cut short keeps
what it measured. A configuration that fails (out of memory, a build error, a timeout, a failed check)
prints one line and the others still run; the exit status is 1 if any failed.

On a GPU: bf16, NCCL, DeepSpeed's FusedAdam, JIT-built with nvcc once before the configurations into
TORCH_EXTENSIONS_DIR (if that build fails, `--adam auto` falls back to torch's AdamW and says so). The
default model is Qwen2-shaped: hidden 1024, 24 layers, intermediate 2816, 16 heads of 64, 309M parameters
with the tiny tokenizer's 670-token vocabulary (Qwen2.5-0.5B has 0.36B without its embeddings;
`--vocab 151936` makes it 464M, with Qwen's LM-head and logits cost), trained on 64 samples of 256 prompt +
1024 response tokens per step. Without CUDA the same code runs on CPU (gloo, float32, torch's AdamW) with a
tiny model (hidden 128, 2 layers) and short samples.

    python benchmarks/learner_gpu.py [--quick] [--configs z2,z2-gc,z3,z3-gc] [--hidden 1024] [--layers 24]
        [--intermediate 2816] [--vocab N] [--samples 64] [--prompt-len 256] [--response-len 1024]
        [--warmup 2] [--steps 5] [--pack-length 4096] [--adam auto|fused|torch] [--budget SECONDS]
        [--work-dir DIR] [--out FILE]

benchmarks/learner_gpu_device.sh runs it on a GPU machine that lacks deepspeed (see there).
"""

import argparse
import gc
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {  # name: (ZeRO stage, gradient checkpointing)
    "z2": (2, False),
    "z2-gc": (2, True),
    "z3": (3, False),
    "z3-gc": (3, True),
}
CHECKS_IN = "z3"  # the ZeRO-3 save/load/gather checks run once: they do not depend on checkpointing
SEED = 0
GIB = 2**30


def defaults(on_gpu: bool, quick: bool) -> dict:
    if on_gpu:
        d = dict(
            hidden=1024,
            layers=24,
            intermediate=2816,
            samples=64,
            prompt_len=256,
            response_len=1024,
            warmup=2,
            steps=5,
        )
        if quick:
            d.update(samples=16, warmup=1, steps=2)
    else:
        d = dict(
            hidden=128,
            layers=2,
            intermediate=256,
            samples=8,
            prompt_len=32,
            response_len=96,
            warmup=1,
            steps=3,
        )
        if quick:
            d.update(samples=4, prompt_len=16, response_len=48, steps=2)
    return d


# --------------------------------------------------------------------------------------------------
# Worker side: one configuration in this process.


def make_batch(
    gen, n: int, prompt_len: int, response_len: int, vocab: int, pack_length: int, packed_rows: bool
):
    """One step's synthetic samples, packed for the single rank (packing.plan_step)."""
    import torch

    from open_instruct.packing import Sample, plan_step

    adv = torch.randn(n, generator=gen)
    adv -= adv.mean()  # zero mean, as group-normalized advantages are
    ids = torch.randint(0, vocab, (n, prompt_len + response_len), generator=gen)
    lps = -(0.05 + 2.45 * torch.rand(n, response_len, generator=gen))
    samples = [
        Sample(ids[i, :prompt_len].tolist(), ids[i, prompt_len:].tolist(), lps[i].tolist(), float(adv[i]))
        for i in range(n)
    ]
    return plan_step(samples, 1, 1, pack_length, packed_rows)[0]


def one_weight(learner, name: str):
    """One tensor from named_weights(), on CPU; closes the generator so ZeRO-3 re-partitions at once."""
    it = learner.named_weights()
    try:
        for n, t in it:
            if n == name:
                return t.detach().to("cpu", copy=True)
    finally:
        it.close()
    raise KeyError(name)


def worker(spec: dict, out_path: Path) -> int:
    import torch

    res: dict = {"name": spec["name"], "stage": spec["stage"], "gc": spec["gc"], "ok": False}
    try:
        # The learner travels in a list so the checks can drop the last reference before the resume test.
        box, last_batch = _train_config(spec, res)
        if spec["checks"]:
            _zero3_checks(spec, res, box, last_batch)
        res["ok"] = all(res["checks"].values())
        if not res["ok"]:
            res["error"] = "check failed: " + ", ".join(k for k, v in res["checks"].items() if not v)
    except Exception as e:  # a failure is a result to report, not a crash
        traceback.print_exc()
        msg = str(e).strip().splitlines()
        res["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]
        if torch.cuda.is_available():
            res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GIB
    out_path.write_text(json.dumps(res))
    return 0 if res["ok"] else 1


def _train_config(spec: dict, res: dict) -> tuple[list, list, float]:
    import logging

    import deepspeed
    import torch

    import open_instruct.learner as learner_mod
    from open_instruct.learner import PolicyLearner
    from open_instruct.net_utils import free_port

    deepspeed.utils.logger.setLevel(logging.WARNING)  # its per-step INFO lines would bury the results
    if spec["torch_adam"]:  # FusedAdam could not be built: same engine, torch's AdamW
        base_config = learner_mod.deepspeed_config

        def with_torch_adam(cfg, on_gpu):
            c = base_config(cfg, on_gpu)
            c["optimizer"]["params"]["torch_adam"] = True
            return c

        learner_mod.deepspeed_config = with_torch_adam

    on_gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    n_steps = spec["warmup"] + spec["steps"]
    t0 = time.perf_counter()
    learner = PolicyLearner(learner_config_of(spec), rank=0, world_size=1)
    info = learner.setup("127.0.0.1", free_port())
    sync()
    # setup()'s own count is taken after deepspeed.initialize, when ZeRO-3 has already partitioned the
    # parameters (numel() is then the local shard); ds_numel is the full size.
    params = sum(getattr(p, "ds_numel", p.numel()) for p in learner.model.module.parameters())
    res.update(
        setup_s=time.perf_counter() - t0,
        params=params,
        params_reported_by_setup=info["params"],
        device=torch.cuda.get_device_name(0) if on_gpu else info["device"],
        attn=learner.model.module.config._attn_implementation,
        optimizer=type(
            learner.model.optimizer.optimizer
            if hasattr(learner.model.optimizer, "optimizer")
            else learner.model.optimizer
        ).__name__,
    )
    if on_gpu:
        res["mem_after_setup_gib"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()

    gen = torch.Generator().manual_seed(SEED)
    vocab = learner.model.module.config.vocab_size
    batches = [
        make_batch(
            gen,
            spec["samples"],
            spec["prompt_len"],
            spec["response_len"],
            vocab,
            spec["pack_length"],
            info["packed_rows"],
        )
        for _ in range(n_steps)
    ]
    probe = spec["probe"]
    before = one_weight(learner, probe)
    times, stats = [], []
    for i, samples in enumerate(batches):
        sync()
        t = time.perf_counter()
        s = learner.train(samples)
        sync()
        times.append(time.perf_counter() - t)
        stats.append(s)
        print(
            f"  [{spec['name']}] step {i + 1}/{n_steps}: {times[-1]:.3f}s "
            f"loss {s['loss_sum'] / max(s['tokens'], 1):.4g} grad_norm {s['grad_norm']:.4g}",
            flush=True,
        )
    timed = times[spec["warmup"] :]
    res.update(
        step_s=times,
        median_s=statistics.median(timed),
        peak_mem_gib=None,
        updates=sum(s["updates"] for s in stats),
        loss=[s["loss_sum"] / max(s["tokens"], 1) for s in stats],
        grad_norm=[s["grad_norm"] for s in stats],
    )
    if on_gpu:
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GIB
        res["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    after = one_weight(learner, probe)
    changed = (after != before).float().mean().item()
    res.update(
        probe=probe, probe_changed_fraction=changed, probe_max_abs_diff=(after - before).abs().max().item()
    )
    res["checks"] = {
        "loss_finite": all(math.isfinite(s["loss_sum"]) and math.isfinite(s["grad_norm"]) for s in stats),
        "weights_changed": changed > 0,
    }
    return [learner], batches[-1]


def _zero3_checks(spec: dict, res: dict, box: list, samples) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from open_instruct.learner import PolicyLearner
    from open_instruct.net_utils import free_port

    t0 = time.perf_counter()
    learner = box.pop()
    checks, out = res["checks"], Path(spec["scratch"])
    # 1. named_weights(): full tensors, the HF model's names and shapes.
    full = {n: t.to("cpu", copy=True) for n, t in learner.named_weights()}
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec["model"]))
    expected = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    got = {n: tuple(t.shape) for n, t in full.items()}
    checks["gathered_full_shapes"] = got == expected
    if got != expected:
        bad = [n for n in expected if got.get(n) != expected[n]][:3]
        print(
            f"  [{spec['name']}] named_weights shape mismatch, e.g. {[(n, got.get(n), expected[n]) for n in bad]}"
        )
    # 2. save_model(): an HF checkpoint with the same weights.
    learner.save_model(str(out / "hf"))
    loaded = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=next(iter(full.values())).dtype)
    loaded_params = dict(loaded.named_parameters())
    checks["save_model_equal"] = loaded_params.keys() == full.keys() and all(
        torch.equal(loaded_params[n].detach(), t) for n, t in full.items()
    )
    del loaded, loaded_params
    # 3. save_state() -> load_state() into a fresh learner; both then take the same step.
    probe = spec["probe"]
    saved_w = full[probe]
    del full
    steps_saved = learner.model.global_steps
    learner.save_state(str(out / "state"))
    cont = learner.train(samples)
    cont_w = one_weight(learner, probe)
    del learner
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # init_distributed() in setup() finds the process group up and keeps it (a real resume starts a new process).
    fresh = PolicyLearner(learner_config_of(spec), rank=0, world_size=1)
    fresh.setup("127.0.0.1", free_port())
    fresh.load_state(str(out / "state"))
    checks["load_state_weights_equal"] = torch.equal(one_weight(fresh, probe), saved_w)
    checks["load_state_step_count"] = fresh.model.global_steps == steps_saved
    resumed = fresh.train(samples)
    resumed_w = one_weight(fresh, probe)
    checks["resumed_step_finite"] = math.isfinite(resumed["loss_sum"]) and math.isfinite(resumed["grad_norm"])
    checks["resumed_step_counted"] = fresh.model.global_steps == steps_saved + 1
    update = (cont_w.float() - saved_w.float()).abs().mean().item()
    gap = (resumed_w.float() - cont_w.float()).abs().mean().item()
    # Reset Adam moments would give an update of a different size altogether (about lr on every weight).
    checks["resumed_step_matches"] = update > 0 and gap < 0.25 * update
    res["resume"] = dict(
        global_steps_saved=steps_saved,
        update_mean_abs=update,
        resumed_vs_continued_mean_abs=gap,
        grad_norm_continued=cont["grad_norm"],
        grad_norm_resumed=resumed["grad_norm"],
    )
    res["checks_s"] = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)


def learner_config_of(spec: dict):
    from open_instruct.learner import LearnerConfig

    return LearnerConfig(
        spec["model"],
        learning_rate=spec["lr"],
        deepspeed_stage=spec["stage"],
        gradient_checkpointing=spec["gc"],
        pack_length=spec["pack_length"],
        total_steps=spec["warmup"] + spec["steps"] + 1,
        seed=SEED,
    )


def build_fused_adam() -> int:
    """JIT-build DeepSpeed's FusedAdam (as the engine will load it) and take one step with it."""
    import torch
    from deepspeed.ops.adam import FusedAdam

    from open_instruct.learner import jit_arch_list

    if "TORCH_CUDA_ARCH_LIST" in os.environ:  # as PolicyLearner.setup does
        os.environ["TORCH_CUDA_ARCH_LIST"] = jit_arch_list(os.environ["TORCH_CUDA_ARCH_LIST"])
    p = torch.nn.Parameter(torch.ones(1024, device="cuda"))
    opt = FusedAdam([p], lr=0.1, adam_w_mode=True)
    p.grad = torch.ones_like(p)
    opt.step()
    torch.cuda.synchronize()
    assert torch.all(p < 1), "FusedAdam step did not move the weight"
    return 0


# --------------------------------------------------------------------------------------------------
# Parent side.


_children: list[subprocess.Popen] = []


def run_child(argv: list[str], timeout: float | None, env: dict) -> tuple[int | None, str]:
    """Run a child in its own session, so a timeout can kill it with ninja/nvcc and anything else it started;
    its output goes to our stdout."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], cwd=REPO, env=env, start_new_session=True)
    _children.append(proc)
    try:
        return proc.wait(timeout=timeout), ""
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, f"timed out after {timeout:.0f}s"
    finally:
        _children.remove(proc)


def stop_children(signum, _frame) -> None:
    """Our own session is not theirs: pass a termination on, so no child keeps the GPU after we are gone."""
    for proc in _children:
        os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def build_model_dir(work: Path, a) -> Path:
    """Random-weight Qwen2 model + tiny tokenizer, cached under `work` by shape."""
    from open_instruct.testing.tiny_models import build_model, build_tokenizer

    spec = {
        "hidden": a.hidden,
        "layers": a.layers,
        "intermediate": a.intermediate,
        "vocab": a.vocab,
        "seed": SEED,
    }
    out = work / f"model-h{a.hidden}-l{a.layers}-i{a.intermediate}-v{a.vocab or 'tok'}"
    stamp = out / "learner_gpu_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    t = time.perf_counter()
    tok = build_tokenizer(seed=SEED)
    model = build_model(
        tok,
        hidden_size=a.hidden,
        num_layers=a.layers,
        seed=SEED,
        intermediate_size=a.intermediate,
        vocab_size=a.vocab,
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    stamp.write_text(json.dumps(spec))
    print(f"built the model in {time.perf_counter() - t:.0f}s: {out}", flush=True)
    return out


def model_flops(params: int, layers: int, hidden: int, samples: int, seq: int) -> float:
    """Training FLOPs of one step: 6 per parameter per token (the tied embedding counted once, as the LM
    head's matmul) plus causal attention, 6 x 2 x seq^2/2 x hidden per layer and sample (QK^T and AV,
    forward and backward); gradient checkpointing's recomputed forward is not counted."""
    return 6.0 * params * samples * seq + 6.0 * layers * hidden * seq * seq * samples


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer samples and steps")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {','.join(CONFIGS)}, in order")
    p.add_argument("--hidden", type=int, help="model hidden size, a multiple of 64 (GPU 1024, CPU 128)")
    p.add_argument("--layers", type=int, help="GPU 24, CPU 2")
    p.add_argument("--intermediate", type=int, help="MLP size (GPU 2816, CPU 256)")
    p.add_argument("--vocab", type=int, help="model vocabulary (default: the tiny tokenizer's, 670)")
    p.add_argument("--samples", type=int, help="samples per step (GPU 64, CPU 8)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens per sample (GPU 256, CPU 32)")
    p.add_argument("--response-len", type=int, help="response tokens per sample (GPU 1024, CPU 96)")
    p.add_argument("--warmup", type=int, help="untimed steps first (GPU 2, CPU 1)")
    p.add_argument("--steps", type=int, help="timed steps (GPU 5, CPU 3)")
    p.add_argument(
        "--pack-length", type=int, default=4096, help="tokens per micro-batch (LearnerConfig's default)"
    )
    p.add_argument("--lr", type=float, default=1e-4, help="see the docstring: large enough to show in bf16")
    p.add_argument(
        "--adam",
        choices=["auto", "fused", "torch"],
        default="auto",
        help="GPU optimizer: FusedAdam (the learner's), torch AdamW, or FusedAdam unless it fails to build",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0,
        help="seconds for the whole run; configurations that "
        "would start after it are skipped, a running one is stopped (0: no limit)",
    )
    p.add_argument("--config-timeout", type=float, default=600, help="seconds one configuration may take")
    p.add_argument("--work-dir", help="model cache and scratch (default: TMPDIR/learner_gpu_bench)")
    p.add_argument("--out", help="results JSON (default: $OUT/learner_gpu.json, else output/benchmarks/)")
    p.add_argument("--_worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    p.add_argument("--_build-fused-adam", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._worker:
        rc = worker(json.loads(a._worker[0]), Path(a._worker[1]))
        # The result is written: skip the interpreter's teardown, where a process group left by a failed
        # step could hang in NCCL's destructors and hold the parent until the timeout.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    if a._build_fused_adam:
        sys.exit(build_fused_adam())

    start = time.perf_counter()
    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    import torch

    on_gpu = torch.cuda.is_available()
    for k, v in defaults(on_gpu, a.quick).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    if unknown := [n for n in names if n not in CONFIGS]:
        p.error(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    if a.hidden % 64:
        p.error("--hidden must be a multiple of 64 (head_dim 64)")
    if a.prompt_len + a.response_len > 4096:
        p.error("prompt + response must fit the model's 4096 positions")
    if a.steps < 1:
        p.error("--steps must be at least 1")
    out_path = Path(
        a.out
        or (
            Path(os.environ["OUT"]) / "learner_gpu.json"
            if os.environ.get("OUT")
            else REPO / "output" / "benchmarks" / "learner_gpu.json"
        )
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(a.work_dir or Path(tempfile.gettempdir()) / "learner_gpu_bench")
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))  # where the JIT build is cached
    env["PYTHONPATH"] = os.pathsep.join(x for x in [str(REPO), env.get("PYTHONPATH", "")] if x)

    import deepspeed
    import transformers

    if on_gpu:  # nvidia-smi, not torch: a CUDA context here would hold GPU memory through the whole run
        try:
            smi = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()
            )
        except OSError:
            smi = []
        device = f"cuda: {smi[0] if smi else '?'}; bf16, nccl"
    else:
        device = f"CPU ({len(os.sched_getaffinity(0))} cores), float32, gloo (no CUDA)"
    print(
        f"learner benchmark on {device}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"deepspeed {deepspeed.__version__}, transformers {transformers.__version__}",
        flush=True,
    )
    model_dir = build_model_dir(work, a)
    config = json.loads((model_dir / "config.json").read_text())
    seq = a.prompt_len + a.response_len
    print(
        f"model: hidden {a.hidden}, {a.layers} layers, intermediate {a.intermediate}, vocab {config['vocab_size']}; "
        f"{a.samples} samples x ({a.prompt_len} + {a.response_len}) tokens per step, pack_length {a.pack_length}; "
        f"{a.warmup} warm-up + {a.steps} timed steps; lr {a.lr}",
        flush=True,
    )
    results: dict = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__,
        "model": {
            "hidden": a.hidden,
            "layers": a.layers,
            "intermediate": a.intermediate,
            "vocab": config["vocab_size"],
            "path": str(model_dir),
        },
        "samples": a.samples,
        "prompt_len": a.prompt_len,
        "response_len": a.response_len,
        "pack_length": a.pack_length,
        "warmup": a.warmup,
        "steps": a.steps,
        "lr": a.lr,
        "configs": {},
    }

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=1))

    def remaining() -> float | None:
        return None if not a.budget else a.budget - (time.perf_counter() - start)

    failed: list[str] = []
    torch_adam = not on_gpu or a.adam == "torch"
    if on_gpu and a.adam != "torch":
        t = time.perf_counter()
        print(f"building FusedAdam (JIT, nvcc) into {env['TORCH_EXTENSIONS_DIR']} ...", flush=True)
        left = remaining()
        rc, why = run_child(["--_build-fused-adam"], 600 if left is None else min(600, left), env)
        ok = rc == 0
        error = None if ok else why or f"exit code {rc}"
        results["fused_adam_build"] = {"ok": ok, "seconds": time.perf_counter() - t, "error": error}
        print(
            f"FusedAdam build {'ok' if ok else f'FAILED ({error})'} in {time.perf_counter() - t:.0f}s",
            flush=True,
        )
        if not ok:
            failed.append("fused_adam_build")
            torch_adam = a.adam == "auto"  # `fused` insists: its configurations will fail and say so
            if torch_adam:
                print("  falling back to torch AdamW for every configuration", flush=True)
        save()
    results["torch_adam"] = torch_adam

    probe = "model.layers.0.self_attn.q_proj.weight"
    for name in names:
        stage, grad_ckpt = CONFIGS[name]
        left = remaining()
        if left is not None and left < 30:
            res = dict(name=name, stage=stage, gc=grad_ckpt, ok=False, error="skipped: out of --budget")
        else:
            scratch = work / f"scratch-{name}"
            spec = dict(
                name=name,
                stage=stage,
                gc=grad_ckpt,
                model=str(model_dir),
                lr=a.lr,
                samples=a.samples,
                prompt_len=a.prompt_len,
                response_len=a.response_len,
                warmup=a.warmup,
                steps=a.steps,
                pack_length=a.pack_length,
                torch_adam=torch_adam,
                probe=probe,
                checks=name == CHECKS_IN,
                scratch=str(scratch),
            )
            result_file = work / f"result-{name}.json"
            result_file.unlink(missing_ok=True)
            print(
                f"--- {name}: ZeRO-{stage}, gradient checkpointing {'on' if grad_ckpt else 'off'}", flush=True
            )
            t = time.perf_counter()
            timeout = a.config_timeout if left is None else min(a.config_timeout, left)
            rc, why = run_child(["--_worker", json.dumps(spec), str(result_file)], timeout, env)
            if result_file.is_file():
                res = json.loads(result_file.read_text())
            else:
                error = why or f"exit code {rc}, no result"
                res = dict(name=name, stage=stage, gc=grad_ckpt, ok=False, error=error)
            res["wall_s"] = time.perf_counter() - t
            shutil.rmtree(scratch, ignore_errors=True)  # a failed configuration leaves its checkpoints
        if res.get("median_s"):
            res["resp_tok_s"] = a.samples * a.response_len / res["median_s"]
            res["tflops"] = (
                model_flops(res["params"], a.layers, a.hidden, a.samples, seq) / res["median_s"] / 1e12
            )
        results["configs"][name] = res
        if not res["ok"]:
            failed.append(name)
            print(f"FAILED {name}: {res['error']}", flush=True)
        else:
            print(f"--- {name} done in {res['wall_s']:.0f}s (setup {res['setup_s']:.1f}s)", flush=True)
        save()

    # ---------------------------------------------------------------------------------------------- report
    params = next((r["params"] for r in results["configs"].values() if "params" in r), 0)
    attn = next((r["attn"] for r in results["configs"].values() if "attn" in r), "?")
    optimizer = next((r["optimizer"] for r in results["configs"].values() if "optimizer" in r), "?")
    print(
        f"\nlearner on {device}; model {f'{params / 1e6:.1f}M' if params else '?'} params, attention {attn}; "
        f"{a.samples} x ({a.prompt_len}+{a.response_len}) tokens/step; median of {a.steps} steps after {a.warmup}; "
        f"optimizer {optimizer}"
    )
    columns = [
        ("config", 8),
        ("s/step", 9),
        ("resp tok/s", 11),
        ("TFLOP/s", 9),
        ("peak GiB", 9),
        ("setup GiB", 10),
        ("loss ok", 8),
        ("w changed", 10),
    ]
    print("  " + "".join(f"{h:>{w}}" for h, w in columns) + "  checks")
    yes_no = {True: "yes", False: "NO"}
    for name in names:
        r = results["configs"][name]
        c = r.get("checks", {})
        cells = [
            name,
            fmt(r.get("median_s"), ".3f"),
            fmt(r.get("resp_tok_s"), ",.0f"),
            fmt(r.get("tflops"), ".3g"),
            fmt(r.get("peak_mem_gib"), ".2f"),
            fmt(r.get("mem_after_setup_gib"), ".2f"),
            yes_no.get(c.get("loss_finite"), "-"),
            yes_no.get(c.get("weights_changed"), "-"),
        ]
        more = [k for k in c if k not in ("loss_finite", "weights_changed")]
        note = f"FAILED: {r['error'][:80]}" if not r["ok"] else f"{len(more)} more, all ok" if more else ""
        print("  " + "".join(f"{x:>{w}}" for x, (_, w) in zip(cells, columns, strict=True)) + f"  {note}")
    if CHECKS_IN in names and "resume" in results["configs"][CHECKS_IN]:
        rs = results["configs"][CHECKS_IN]["resume"]
        print(
            f"  {CHECKS_IN} resume: next-step weights, resumed vs continued {rs['resumed_vs_continued_mean_abs']:.3g} "
            f"mean |diff| against the step's update {rs['update_mean_abs']:.3g}; grad norm "
            f"{rs['grad_norm_continued']:.4g} vs {rs['grad_norm_resumed']:.4g}"
        )

    def ratio(num: str, den: str, key: str) -> float | None:
        x, y = results["configs"].get(num, {}), results["configs"].get(den, {})
        return x[key] / y[key] if x.get(key) and y.get(key) else None

    ratios = {
        "gc_memory_on_off_zero2": ratio("z2-gc", "z2", "peak_mem_gib"),
        "gc_memory_on_off_zero3": ratio("z3-gc", "z3", "peak_mem_gib"),
        "gc_time_on_off_zero2": ratio("z2-gc", "z2", "median_s"),
        "gc_time_on_off_zero3": ratio("z3-gc", "z3", "median_s"),
        "zero3_zero2_time_gc_off": ratio("z3", "z2", "median_s"),
        "zero3_zero2_time_gc_on": ratio("z3-gc", "z2-gc", "median_s"),
        "zero3_zero2_memory_gc_off": ratio("z3", "z2", "peak_mem_gib"),
    }
    results["ratios"] = ratios
    r = {k: fmt(v, ".2f") for k, v in ratios.items()}
    print(
        f"gradient checkpointing on/off: peak memory ZeRO-2 {r['gc_memory_on_off_zero2']}, ZeRO-3 "
        f"{r['gc_memory_on_off_zero3']}; time ZeRO-2 {r['gc_time_on_off_zero2']}, ZeRO-3 {r['gc_time_on_off_zero3']}"
    )
    print(
        f"ZeRO-3/ZeRO-2: time {r['zero3_zero2_time_gc_off']} (checkpointing off), {r['zero3_zero2_time_gc_on']} "
        f"(on); peak memory {r['zero3_zero2_memory_gc_off']} (off)"
    )
    results["failed"] = failed
    results["wall_s"] = time.perf_counter() - start
    save()
    print(
        f"results: {out_path}; whole run {results['wall_s']:.0f}s"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
