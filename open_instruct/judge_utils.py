"""Judge types, the chat messages each sends, and parsers for what small judges really write.

Judge types (the part after "general-" in a dataset's verifier name):
  flip         backward inference: infer the instruction behind a response (JSON "INFERRED INSTRUCTION")
  quality      pointwise 1-10 rating of a response to a prompt (JSON "SCORE")
  quality_ref  the same with a reference answer to compare against
  pairwise     which of two responses is better (JSON "BETTER_RESPONSE": "A" | "B")
  listwise     index of the best of N responses, from 0 (JSON "BEST_RESPONSE_INDEX")

The extract_* parsers never raise on any string: they return None when no usable answer is found.
They look past reasoning blocks (text inside an unclosed <think> is never the answer), <answer> tags,
code fences and prose, pick the last JSON object that carries the key, tolerate sloppy JSON (raw newlines,
stray backslashes, trailing commas, single quotes) and fall back to a plain `KEY: value` line.
"""

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from open_instruct.prompts import load_prompt, render

Message = dict[str, str]

# --------------------------------------------------------------------------------------------------
# Judge types and their messages


@dataclass(frozen=True)
class JudgeType:
    name: str
    system_prompt: str  # template name in prompts/
    user_prompt: str
    output_key: str  # the JSON key the answer lives under


JUDGE_TYPES: dict[str, JudgeType] = {
    "flip": JudgeType("flip", "FLIP_SYSTEM", "FLIP_USER", "INFERRED INSTRUCTION"),
    "quality": JudgeType(
        "quality", "llmjudge_pointwise_rating_SYSTEM", "llmjudge_pointwise_rating_USER", "SCORE"
    ),
    "quality_ref": JudgeType(
        "quality_ref", "llmjudge_pointwise_rating_ref_SYSTEM", "llmjudge_pointwise_rating_ref_USER", "SCORE"
    ),
    "pairwise": JudgeType(
        "pairwise", "llmjudge_pairwise_ranking_SYSTEM", "llmjudge_pairwise_ranking_USER", "BETTER_RESPONSE"
    ),
    "listwise": JudgeType(
        "listwise",
        "llmjudge_listwise_ranking_SYSTEM",
        "llmjudge_listwise_ranking_USER",
        "BEST_RESPONSE_INDEX",
    ),
}


def _chat(system_template: str, user_template: str, **fields: str) -> list[Message]:
    return [
        {"role": "system", "content": load_prompt(system_template)},
        {"role": "user", "content": render(load_prompt(user_template), **fields)},
    ]


def format_context(turns: list[Message]) -> str:
    """Render earlier chat turns as plain text for the judge: one `role: content` block per turn."""
    return "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)


_FRAME_TAG = re.compile(r"<(/?)(response|conversation)>", flags=re.IGNORECASE)


def fence(text: str) -> str:
    """Text to put inside the prompt's <response>/<conversation> frame: a tag in it that could close the
    frame (and let the rest pose as the prompt) is broken up, `</response>` -> `< /response>`."""
    return _FRAME_TAG.sub(lambda m: f"< {m.group(1)}{m.group(2)}>", text)


def flip_messages(response: str, context: list[Message] | None = None) -> list[Message]:
    """Messages asking the judge to infer the instruction behind `response`.

    `context` holds the chat turns before the (hidden) last user message; system turns are left out
    because the judge should infer from the visible conversation, as a reader would. Both are fenced.
    """
    response = fence(response)
    turns = [
        {**t, "content": fence(str(t.get("content") or ""))}
        for t in (context or [])
        if t.get("role") != "system"
    ]
    if turns:
        return _chat("FLIP_SYSTEM", "FLIP_USER_MULTITURN", context=format_context(turns), response=response)
    return _chat("FLIP_SYSTEM", "FLIP_USER", response=response)


def pointwise_messages(prompt: str, response: str, reference: str | None = None) -> list[Message]:
    if reference is None:
        return _chat(*_templates("quality"), prompt=prompt, response=response)
    return _chat(*_templates("quality_ref"), prompt=prompt, response=response, reference=reference)


def pairwise_messages(prompt: str, response1: str, response2: str) -> list[Message]:
    return _chat(*_templates("pairwise"), prompt=prompt, response1=response1, response2=response2)


def listwise_messages(prompt: str, responses: list[str]) -> list[Message]:
    response_list = "\n\n".join(f'<reply index="{i}">\n{r}\n</reply>' for i, r in enumerate(responses))
    return _chat(*_templates("listwise"), prompt=prompt, response_list=response_list)


def _templates(judge_type: str) -> tuple[str, str]:
    jt = JUDGE_TYPES[judge_type]
    return jt.system_prompt, jt.user_prompt


# --------------------------------------------------------------------------------------------------
# Parsing


def _norm_key(key: object) -> str:
    """'Inferred_Instruction', 'inferred instruction', 'INFERRED-INSTRUCTION' -> 'INFERREDINSTRUCTION'."""
    return re.sub(r"[^A-Z0-9]", "", str(key).upper())


def strip_reasoning(text: str) -> str:
    """Drop <think> blocks. An unclosed <think> hides everything after it; a lone </think> (the chat
    template opened the block) hides everything before it."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S | re.I)
    close = text.lower().rfind("</think>")
    if close >= 0:
        text = text[close + len("</think>") :]
    open_ = text.lower().find("<think>")
    if open_ >= 0:
        text = text[:open_]
    return text


def answer_blocks(text: str) -> list[str]:
    """The contents of every <answer>...</answer> block, in order; an unclosed trailing <answer> counts. The
    one place both the judge's answers and the policy's are read for them (rewards.final_answer)."""
    return re.findall(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.S | re.I)


def _answer_region(text: str) -> str:
    """Prefer the last non-empty <answer> block, else the whole text."""
    blocks = [b for b in answer_blocks(text) if b.strip()]
    return blocks[-1] if blocks else text


def _json_candidates(text: str) -> list[str]:
    """Every balanced {...} span at top level, in order; quotes are tracked so braces in strings don't count."""
    spans, depth, start, in_str, escaped = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _loads_lenient(s: str) -> dict | None:
    """json.loads with repairs small judges need; None when nothing makes it a dict."""
    attempts = [s]
    repaired = re.sub(r",\s*([}\]])", r"\1", s)  # trailing commas
    repaired = re.sub(r'\\(?!["\\/bfnrt]|u[0-9a-fA-F]{4})', r"\\\\", repaired)  # stray backslashes
    attempts.append(repaired)
    for attempt in attempts:
        try:
            obj = json.loads(attempt, strict=False)  # strict=False admits raw newlines inside strings
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    try:  # {'KEY': 'value'} written as a Python dict
        obj = ast.literal_eval(repaired)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _key_pattern(key: str) -> str:
    """Regex for a key spelled with any case and any of space/underscore/hyphen between its words."""
    return r"[\s_\-]*".join(re.escape(word) for word in re.split(r"[\s_\-]+", key))


def _regex_json_value(text: str, key: str) -> str | None:
    """Last-resort read of `"KEY": "value"` from JSON too broken to parse (e.g. unescaped inner quotes):
    the value runs to the quote that closes the object or precedes the next key."""
    pattern = rf'["\']{_key_pattern(key)}["\']\s*:\s*"(.*?)"\s*(?:,\s*["\'][A-Za-z _\-]+["\']\s*:|}}|$)'
    matches = re.findall(pattern, text, flags=re.S | re.I)
    return matches[-1] if matches else None


def _plain_line_value(text: str, key: str) -> str | None:
    """`KEY: value` on its own line (markdown bold and bullets allowed); the last such line wins.
    The value is the rest of that line, or the lines below it up to a blank line when the line is empty."""
    pattern = rf"^[\s>*#\-]*\**{_key_pattern(key)}\**\s*[:=\-]+\s*\**(.*)$"
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(pattern, lines[i], flags=re.I)
        if not m:
            continue
        value = m.group(1).strip()
        if not value:
            following = []
            for line in lines[i + 1 :]:
                if not line.strip():
                    if following:
                        break
                    continue
                following.append(line.strip())
            value = " ".join(following)
        return value.strip().strip('"').strip() or None
    return None


def extract_field(text: object, key: str) -> object | None:
    """The value of `key` in the judge's answer, or None. Never raises."""
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        region = _answer_region(strip_reasoning(text))
        region = re.sub(r"```(?:json|JSON)?", " ", region)  # code fences
        want = _norm_key(key)
        for candidate in reversed(_json_candidates(region)):
            obj = _loads_lenient(candidate)
            if obj is None:
                value = _regex_json_value(candidate, key)
            else:
                value = next((v for k, v in obj.items() if _norm_key(k) == want), None)
            if _present(value):
                return value
        for value in (_regex_json_value(region, key), _plain_line_value(region, key)):
            if _present(value):
                return value
        return None
    except Exception:  # a parser must never take a training step down  # noqa: BLE001
        return None


def _present(value: object) -> bool:
    if value is None or isinstance(value, (dict, list)):
        return False
    if isinstance(value, str):
        return value.strip().lower() not in ("", "null", "none", "n/a")
    return True


def extract_inferred_instruction(text: object) -> str | None:
    value = extract_field(text, "INFERRED INSTRUCTION")
    if value is None or isinstance(value, bool):
        return None
    return str(value).strip()


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def extract_score(text: object) -> float | None:
    """The SCORE on the judge's own scale: 7, "7", "7.5/10", "Score: 8 out of 10" -> 7.0, 7.0, 7.5, 8.0."""
    value = extract_field(text, "SCORE")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value == value else None  # NaN is not a score
    m = _NUMBER.search(str(value))
    return float(m.group()) if m else None


def extract_preference(text: object) -> str | None:
    """ "A" or "B" from BETTER_RESPONSE; accepts 'a', '[[B]]', 'Response A', 'reply_B'."""
    value = extract_field(text, "BETTER_RESPONSE")
    if not isinstance(value, str):
        return None
    letters = re.sub(r"(?i)(response|reply|assistant|output)[\s_]*", "", value)
    letters = re.sub(r"[^A-Za-z]", "", letters).upper()
    return letters if letters in ("A", "B") else None


def extract_best_index(text: object) -> int | None:
    """BEST_RESPONSE_INDEX as an int >= 0; accepts 2, "2", 2.0, "Reply 2", "[2]"."""
    value = extract_field(text, "BEST_RESPONSE_INDEX")
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, int):
        return value if value >= 0 else None
    m = re.fullmatch(r"\D*?(-?\d+)(?:\.0+)?\D*", str(value).strip())
    if not m or m.group(1).startswith("-"):
        return None
    return int(m.group(1))


# The answer's JSON type per judge type, for the schema of structured outputs.
_ANSWER_SCHEMA = {
    "flip": {"type": "string"},
    "quality": {"type": "number"},
    "quality_ref": {"type": "number"},
    "pairwise": {"type": "string", "enum": ["A", "B"]},
    "listwise": {"type": "integer", "minimum": 0},
}


def response_format(judge_type: str) -> dict:
    """The OpenAI `response_format` asking for the judge type's JSON: REASONING, then the answer's key."""
    key = JUDGE_TYPES[judge_type].output_key
    schema = {
        "type": "object",
        "properties": {"REASONING": {"type": "string"}, key: _ANSWER_SCHEMA[judge_type]},
        "required": ["REASONING", key],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": f"{judge_type}_answer", "schema": schema}}


def cut_in_reasoning(text: object) -> bool:
    """Whether an answer stops inside a <think> block it opened (no </think> after its last <think>): a
    thinking judge cut off by max_tokens before it answered. There is no answer in it to score."""
    lower = str(text or "").lower()
    return lower.rfind("<think>") > lower.rfind("</think>")


EXTRACTORS: dict[str, Callable[[object], object]] = {
    "flip": extract_inferred_instruction,
    "quality": extract_score,
    "quality_ref": extract_score,
    "pairwise": extract_preference,
    "listwise": extract_best_index,
}
