"""Load and fill the judge prompt templates in the repo's `prompts/` folder.

Those files are the single source of every template (standalone scoring, the trainer, evaluation).
Placeholders are `{name}`; filling is one regex pass, so braces inside a response, or a response that
itself contains "{prompt}", are never re-interpreted, and JSON examples in the templates stay literal.
"""

import functools
import os
import re
from pathlib import Path

PROMPTS_DIR = Path(os.environ.get("FLIP_PROMPTS_DIR", Path(__file__).resolve().parent.parent / "prompts"))
_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")


@functools.cache
def load_prompt(name: str) -> str:
    """Return the text of prompts/<name>.prompt (trailing newline stripped)."""
    path = PROMPTS_DIR / f"{name}.prompt"
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt template {path} not found (set FLIP_PROMPTS_DIR to the prompts/ folder)"
        )
    return path.read_text(encoding="utf-8").rstrip("\n")


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER.findall(template))


def render(template: str, **fields: str) -> str:
    """Fill `{name}` placeholders; every placeholder must be given and every field must be used."""
    missing = placeholders(template) - fields.keys()
    extra = fields.keys() - placeholders(template)
    if missing or extra:
        raise KeyError(f"template fields mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]), template)
