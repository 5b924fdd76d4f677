"""Write a Beaker experiment spec (YAML) for GRPO on a Ray cluster, from the same variables as the Slurm scripts.

    python scripts/beaker/make_spec.py --beaker_image USER/IMAGE --beaker_cluster ai2/CLUSTER -o spec.yaml \\
        [-- extra grpo_fast flags...]
    beaker experiment create spec.yaml --workspace ai2/WORKSPACE

The spec has one task, replicated TRAIN_NODES + JUDGE_NODES times with leader selection and host networking.
Every replica runs `scripts/cluster/ray_node.sh beaker`: the leader replica (rank 0) starts the Ray head, the
judge servers and the trainer, ranks 1 to JUDGE_NODES - 1 serve more copies of the judge, the others join it
as Ray workers; the failure of any replica ends the run.

Each variable is read from a flag of the same name in lower case, else from the environment, else its
default: the cluster's (scripts/cluster/cluster_env.sh, checked there; a bad value exits with status 2) and
Beaker's own below. Secrets are named, never copied: the replicas read them from the workspace's secrets.
OUTPUT_DIR defaults to the task's result path; every node must be able to write it (mount a shared
filesystem with BEAKER_DATASETS for multi-node runs).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = REPO / "scripts" / "cluster" / "cluster_env.sh"

# Beaker's variables: name -> (default, meaning).
BEAKER_VARS = {
    "BEAKER_IMAGE": ("", "Beaker image with this repository and its environment (required)"),
    "BEAKER_CLUSTER": ("", "clusters the replicas may run on, comma-separated (required)"),
    "BEAKER_PRIORITY": ("normal", "urgent, high, normal, low or preemptible"),
    "BEAKER_PREEMPTIBLE": (
        "0",
        "1: the run may be preempted; it is then retried (BEAKER_RETRIES) and resumes from its saved state, "
        "which needs OUTPUT_DIR on a shared mount that outlives the job, not the result path",
    ),
    "BEAKER_RETRIES": (
        "",
        "times Beaker reruns the task after a failure or preemption (none: 5 if preemptible, else 0)",
    ),
    "BEAKER_BUDGET": ("", "budget account (none: the workspace's)"),
    "BEAKER_WORKDIR": (".", "the repository inside the image (.: the image's working directory)"),
    "BEAKER_RESULT_PATH": ("/output", "directory Beaker saves as the task's result"),
    "BEAKER_SHARED_MEMORY": ("10GiB", "size of /dev/shm (Ray's object store and vLLM use it)"),
    "BEAKER_START_TIMEOUT": ("30m", "how long replicas wait for each other to be scheduled"),
    "BEAKER_DATASETS": ("", "mounts, comma-separated KIND:SOURCE:PATH with KIND beaker, hostPath or weka"),
    "BEAKER_SECRETS": ("WANDB_API_KEY,HF_TOKEN", "env vars read from workspace secrets: NAME or NAME=SECRET"),
    "BEAKER_RAY_TOKEN_SECRET": ("RAY_AUTH_TOKEN", "secret holding the Ray token all replicas share"),
}
PRIORITIES = ("urgent", "high", "normal", "low", "preemptible")
MOUNT_KINDS = ("beaker", "hostPath", "weka")


class SpecError(Exception):
    """A variable that cannot make a spec: one line, exit status 2."""


def cluster_variables(overrides: dict[str, str]) -> dict[str, str]:
    """The cluster variables, resolved and checked by cluster_env.sh itself (the one place they live), plus
    JUDGE_MODEL when a running judge is named."""
    env = {**os.environ, **overrides}
    out = subprocess.run(["bash", str(CLUSTER_ENV), "--print"], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SpecError(out.stderr.strip().removeprefix("error: "))
    values = dict(line.split("=", 1) for line in out.stdout.splitlines())
    if values["JUDGE_BASE_URL"]:
        values["JUDGE_MODEL"] = env["JUDGE_MODEL"]  # cluster_env.sh made sure it is there
    return values


def cluster_help() -> dict[str, str]:
    """NAME -> its meaning and default, from `cluster_env.sh --help`."""
    out = subprocess.run(
        ["bash", str(CLUSTER_ENV), "--help"], capture_output=True, text=True, check=True
    ).stdout
    docs: dict[str, str] = {}
    name = ""
    for line in out.splitlines():
        head, _, doc = line.strip().partition(" ")
        if line[2:3].strip():  # a name in the first column
            name, docs[head] = head, doc.strip()
        else:  # a continuation line
            docs[name] += " " + line.strip()
    return docs


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def env_vars(cluster: dict[str, str], beaker: dict[str, str]) -> list[dict]:
    """Every cluster variable by value; secrets, and the Ray token, by the name of a workspace secret."""
    entries = [{"name": name, "value": value} for name, value in cluster.items()]
    secrets = split_list(beaker["BEAKER_SECRETS"])
    if cluster["RAY_AUTH_MODE"] == "token":
        secrets.append(f"RAY_AUTH_TOKEN={beaker['BEAKER_RAY_TOKEN_SECRET']}")
    for item in secrets:
        name, _, secret = item.partition("=")
        if any(e["name"] == name for e in entries):
            raise SpecError(f"BEAKER_SECRETS: {name} is already set as a plain variable")
        entries.append({"name": name, "secret": secret or name})
    return entries


def mounts(value: str) -> list[dict]:
    out = []
    for item in split_list(value):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in MOUNT_KINDS or not parts[2].startswith("/"):
            kinds = ", ".join(MOUNT_KINDS)
            raise SpecError(f"BEAKER_DATASETS: '{item}' is not KIND:SOURCE:/PATH with KIND in {kinds}")
        kind, source, path = parts
        out.append({"mountPath": path, "source": {kind: source}})
    return out


def build_spec(cluster: dict[str, str], beaker: dict[str, str], trainer_args: list[str]) -> dict:
    for name in ("BEAKER_IMAGE", "BEAKER_CLUSTER"):
        if not beaker[name]:
            raise SpecError(f"{name} is required (flag --{name.lower()})")
    if beaker["BEAKER_PRIORITY"] not in PRIORITIES:
        priorities = ", ".join(PRIORITIES)
        raise SpecError(f"BEAKER_PRIORITY must be one of {priorities}, not '{beaker['BEAKER_PRIORITY']}'")
    if beaker["BEAKER_PREEMPTIBLE"] not in ("0", "1"):
        raise SpecError(f"BEAKER_PREEMPTIBLE must be 0 or 1, not '{beaker['BEAKER_PREEMPTIBLE']}'")
    retries = beaker["BEAKER_RETRIES"] or ("5" if beaker["BEAKER_PREEMPTIBLE"] == "1" else "0")
    if not retries.isdigit():
        raise SpecError(f"BEAKER_RETRIES must be a whole number, not '{retries}'")
    replicas = int(cluster["TRAIN_NODES"]) + int(cluster["JUDGE_NODES"])
    name = f"grpo_{cluster['JUDGE_TYPE']}_{cluster['PRESET']}"
    judge_nodes = int(cluster["JUDGE_NODES"])
    judge = (
        "the judge on the head node"
        if judge_nodes == 0
        else f"{judge_nodes} judge node(s) x {cluster['JUDGE_REPLICAS']} copies of the judge"
    )
    task = {
        "name": name,
        "image": {"beaker": beaker["BEAKER_IMAGE"]},
        # bash -c 'SCRIPT' WORKDIR ARGS...: WORKDIR is $0, the trainer flags are "$@".
        "command": [
            "bash",
            "-c",
            'cd "$0" && exec bash scripts/cluster/ray_node.sh beaker "$@"',
            beaker["BEAKER_WORKDIR"],
            *trainer_args,
        ],
        "envVars": env_vars(cluster, beaker),
        "result": {"path": beaker["BEAKER_RESULT_PATH"]},
        "resources": {
            "gpuCount": int(cluster["GPUS_PER_NODE"]),
            "sharedMemory": beaker["BEAKER_SHARED_MEMORY"],
        },
        "context": {
            "priority": beaker["BEAKER_PRIORITY"],
            "preemptible": beaker["BEAKER_PREEMPTIBLE"] == "1",
        },
        "constraints": {"cluster": split_list(beaker["BEAKER_CLUSTER"])},
    }
    if beaker["BEAKER_DATASETS"]:
        task["datasets"] = mounts(beaker["BEAKER_DATASETS"])
    if replicas > 1:  # the replicas start together, find the leader by name, and fail together
        task.update(
            replicas=replicas,
            leaderSelection=True,
            hostNetworking=True,
            propagateFailure=True,
            propagatePreemption=True,
            synchronizedStartTimeout=beaker["BEAKER_START_TIMEOUT"],
        )
    spec = {
        "version": "v2",
        "description": f"GRPO ({cluster['JUDGE_TYPE']} reward, preset {cluster['PRESET']}): "
        f"{replicas} node(s) x {cluster['GPUS_PER_NODE']} GPUs, {judge}",
        "tasks": [task],
    }
    if beaker["BEAKER_BUDGET"]:
        spec["budget"] = beaker["BEAKER_BUDGET"]
    if int(retries):  # a rerun of the same command resumes from the newest state in OUTPUT_DIR
        spec["retry"] = {"allowedTaskRetries": int(retries)}
    return spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    trainer_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="-", help="file to write (default: standard output)")
    cluster_docs = cluster_help()
    cluster_docs["JUDGE_MODEL"] = "litellm id of the judge at JUDGE_BASE_URL"
    group = p.add_argument_group("cluster variables (scripts/cluster/cluster_env.sh)")
    for name, doc in cluster_docs.items():
        group.add_argument(f"--{name.lower()}", dest=name, metavar=name, help=doc)
    group = p.add_argument_group("Beaker variables")
    for name, (default, doc) in BEAKER_VARS.items():
        group.add_argument(
            f"--{name.lower()}", dest=name, metavar=name, help=f"{doc} (default: {default or 'none'})"
        )
    args = vars(p.parse_args(argv))
    given = {name: value for name, value in args.items() if name.isupper() and value is not None}
    beaker = {
        name: given.get(name, os.environ.get(name, default)) for name, (default, _) in BEAKER_VARS.items()
    }
    overrides = {name: value for name, value in given.items() if name in cluster_docs}
    if "OUTPUT_DIR" not in overrides and "OUTPUT_DIR" not in os.environ:
        overrides["OUTPUT_DIR"] = beaker["BEAKER_RESULT_PATH"]  # what Beaker keeps
    try:
        spec = build_spec(cluster_variables(overrides), beaker, trainer_args)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, width=120)
    task = spec["tasks"][0]
    if task.get("replicas", 1) > 1 and not beaker["BEAKER_DATASETS"]:
        print(
            "note: learners on every replica write to OUTPUT_DIR; with no shared mount (BEAKER_DATASETS) the "
            "model and checkpoints may land in another replica's result",
            file=sys.stderr,
        )
    if args["output"] == "-":
        sys.stdout.write(text)
    else:
        Path(args["output"]).write_text(text)
        print(
            f"wrote {args['output']}: {task.get('replicas', 1)} replica(s) x {task['resources']['gpuCount']} GPUs; "
            f"submit with: beaker experiment create {args['output']} --workspace WORKSPACE",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
