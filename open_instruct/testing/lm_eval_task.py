"""A tiny lm-eval task on local files, for the downstream-evaluation tests (nothing is downloaded).

`write_task(folder)` writes `tiny_arith.yaml` and `tiny_arith.jsonl` there: sums of two digits, answered by
generation and scored by exact match on the first number of the answer. A folder like this is what
`--include_path` takes.
"""

import json
from pathlib import Path

TASK_NAME = "tiny_arith"

# lm-eval's task format: a local JSON lines file through the `json` dataset builder, generation until a
# newline or the end of the turn, the first number in the answer compared with the target.
_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "What is {{{{a}}}} + {{{{b}}}}? Answer with the number only."
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "<|im_end|>"]
  max_gen_toks: {max_gen_toks}
  do_sample: false
  temperature: 0.0
filter_list:
  - name: first-number
    filter:
      - function: regex
        regex_pattern: "(\\\\d+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: str | Path, n: int = 4, max_gen_toks: int = 8) -> Path:
    """The task's YAML and its `n` rows in `folder`; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{TASK_NAME}.jsonl"
    rows = [{"a": i, "b": i + 1, "answer": str(2 * i + 1)} for i in range(n)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / f"{TASK_NAME}.yaml").write_text(
        _YAML.format(name=TASK_NAME, data=json.dumps(str(data.resolve())), max_gen_toks=max_gen_toks)
    )
    return out
