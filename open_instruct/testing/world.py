"""A small synthetic world in which tiny models can do FLIP's task: the rows, responses and judge answers.

An instruction asks for a task form (poem, list, email, recipe, summary, story, code) about a topic, with
some of three constraints (a tone, an audience, a number of parts), worded one of several ways. Its on-task
response shows all of them: the form by its layout, the topic by name and by its words, the tone by its
words, the audience by how it is addressed, the number by its parts. Off-task responses are the kinds a weak
policy writes: the right form on another topic, another form on the right topic, a response that breaks one
constraint, a generic evasive reply, and an echo of the prompt.

Everything here is a pure function of a seed (`random.Random`), so a world is the same on every machine.
world_models.py trains the tiny judge and policy on it.
"""

import json
import random
import re
from dataclasses import dataclass, replace

from open_instruct.f1 import f1_score

TOPICS: dict[str, list[str]] = {
    "cats": ["whiskers", "purring", "soft paws", "a sunny nap"],
    "the ocean": ["waves", "salt", "the tide", "a blue horizon"],
    "coffee": ["beans", "a warm mug", "steam", "the morning roast"],
    "winter": ["snow", "cold air", "a frozen lake", "warm gloves"],
    "space travel": ["rockets", "stars", "the moon", "zero gravity"],
    "gardening": ["seeds", "soil", "green shoots", "a watering can"],
    "football": ["the ball", "a goal", "the crowd", "the final whistle"],
    "trains": ["rails", "the station", "a long whistle", "the carriages"],
    "music": ["a melody", "drums", "the rhythm", "a love song"],
    "bees": ["honey", "the hive", "flowers", "a busy hum"],
    "mountains": ["peaks", "a steep trail", "thin air", "the summit"],
    "robots": ["gears", "circuits", "a metal arm", "blinking lights"],
    "bread": ["flour", "the oven", "a golden crust", "warm dough"],
    "rain": ["clouds", "puddles", "an umbrella", "grey skies"],
}
TONES: dict[str, list[str]] = {
    "funny": ["silly", "giggling", "ridiculous", "ha ha"],
    "sad": ["lonely", "tears", "heavy", "sorrow"],
    "formal": ["respectfully", "indeed", "furthermore", "accordingly"],
    "cheerful": ["bright", "happy", "smiling", "joy"],
    "calm": ["gentle", "quiet", "slowly", "peaceful"],
}
AUDIENCES: dict[str, str] = {  # audience -> how an on-task response addresses it
    "children": "little friends",
    "experts": "fellow experts",
    "beginners": "new learners",
    "my team": "dear team",
    "my grandmother": "dear grandma",
}
NUMBERS = {3: "three", 4: "four"}
UNASKED_PARTS = 2  # a response to an instruction that asks for no number of parts has two


@dataclass(frozen=True)
class Form:
    name: str
    nouns: tuple[str, ...]  # how instructions name it: "poem", "short poem"
    unit: str  # what its parts are called: "lines"


FORMS: dict[str, Form] = {
    f.name: f
    for f in (
        Form("poem", ("poem", "short poem"), "lines"),
        Form("list", ("list of tips", "list of ideas"), "items"),
        Form("email", ("email", "short email"), "sentences"),
        Form("recipe", ("recipe", "simple recipe"), "steps"),
        Form("summary", ("summary", "brief summary"), "sentences"),
        Form("story", ("story", "short story"), "sentences"),
        Form("code", ("python function", "python script"), "lines"),
    )
}
OPENERS = (
    "Write a {noun}",
    "Please write a {noun}",
    "Can you write a {noun}",
    "Compose a {noun}",
    "I need a {noun}",
)
GENERIC_REPLIES = (
    "I would be glad to help with that. Could you tell me a little more about what you need?",
    "Sure, I can help. What exactly would you like me to do?",
    "That is an interesting request. Let me know more details and I will do my best.",
    "Happy to help! Please share more about what you have in mind.",
)
GENERIC_INSTRUCTION = "Can you help me with something?"
KINDS = ("on_task", "wrong_topic", "wrong_form", "broken_constraint", "generic", "echo")


@dataclass(frozen=True)
class Task:
    form: str
    topic: str
    tone: str | None
    audience: str | None
    n: int | None
    wording: int  # which opener, preposition and clause order the instruction uses


def sample_task(rng: random.Random) -> Task:
    return Task(
        form=rng.choice(sorted(FORMS)),
        topic=rng.choice(sorted(TOPICS)),
        tone=rng.choice(sorted(TONES)) if rng.random() < 0.6 else None,
        audience=rng.choice(sorted(AUDIENCES)) if rng.random() < 0.5 else None,
        n=rng.choice(sorted(NUMBERS)) if rng.random() < 0.6 else None,
        wording=rng.randrange(1 << 16),
    )


def instruction(task: Task) -> str:
    """The user's instruction for `task`, in the wording `task.wording` picks."""
    rng = random.Random(task.wording)
    form = FORMS[task.form]
    noun = rng.choice(form.nouns)
    if task.tone:
        noun = f"{task.tone} {noun}"
    head = rng.choice(OPENERS).format(noun=noun) + rng.choice((" about ", " on ")) + task.topic
    clauses = []
    if task.n:
        clauses.append(
            rng.choice(
                (
                    f"in {task.n} {form.unit}",
                    f"with {NUMBERS[task.n]} {form.unit}",
                    f"using {task.n} {form.unit}",
                )
            )
        )
    if task.audience:
        clauses.append(rng.choice((f"for {task.audience}", f"meant for {task.audience}")))
    rng.shuffle(clauses)
    text = " ".join([head, *clauses])
    return text + ("?" if text.startswith("Can") else ".")


def _parts(task: Task, rng: random.Random) -> list[str]:
    """The sentences of an on-task response: each names the topic or one of its words, with a tone word."""
    words = TOPICS[task.topic]
    tone = TONES[task.tone] if task.tone else [""]
    count = task.n or UNASKED_PARTS
    out = []
    for i in range(count):
        thing = task.topic if i == 0 else rng.choice(words)
        feel = rng.choice(tone)
        out.append(
            " ".join(w for w in (feel, thing, rng.choice(("and", "with", "near")), rng.choice(words)) if w)
        )
    return out


def response(task: Task, rng: random.Random) -> str:
    """An on-task response: the form's layout, the topic, the tone's words, the audience, `n` parts."""
    parts = _parts(task, rng)
    greet = AUDIENCES[task.audience] if task.audience else None
    topic = task.topic
    if task.form == "poem":
        body = "\n".join(p.capitalize() + "," for p in parts)
        return (f"To my {greet}:\n" if greet else "") + f"Ode to {topic}\n{body}"
    if task.form == "list":
        items = "\n".join(f"{i + 1}. Enjoy {p}." for i, p in enumerate(parts))
        return f"Tips on {topic}" + (f" for my {greet}" if greet else "") + f":\n{items}"
    if task.form == "email":
        body = " ".join(f"I write about {p}." for p in parts)
        return f"Subject: {topic}\nHello {greet or 'there'},\n{body}\nBest regards"
    if task.form == "recipe":
        steps = "\n".join(f"Step {i + 1}: mix {p}." for i, p in enumerate(parts))
        return (
            f"Recipe: {topic} pie"
            + (f" for my {greet}" if greet else "")
            + f"\nIngredients: flour, {topic}\n{steps}"
        )
    if task.form == "summary":
        body = " ".join(f"It covers {p}." for p in parts)
        return "In summary" + (f", my {greet}" if greet else "") + f", this is about {topic}. {body}"
    if task.form == "story":
        body = " ".join(f"Then came {p}." for p in parts)
        return (
            "Once upon a time" + (f", my {greet}" if greet else "") + f", there was {topic}. {body} The end."
        )
    if task.form == "code":
        name = topic.replace(" ", "_")
        lines = "\n".join(f"    # {p}" for p in parts)
        return (
            f"def count_{name}():"
            + (f"\n    # for my {greet}" if greet else "")
            + f"\n{lines}\n    return {len(parts)}"
        )
    raise ValueError(f"unknown form {task.form!r}")


def _other(rng: random.Random, choices, current):
    return rng.choice([c for c in sorted(choices) if c != current])


def off_task(task: Task, kind: str, rng: random.Random) -> tuple[str, Task | None]:
    """A response of `kind` to `task`, and the task it actually does (None for generic replies and echoes)."""
    if kind == "wrong_topic":
        done = replace(task, topic=_other(rng, TOPICS, task.topic))
    elif kind == "wrong_form":
        done = replace(task, form=_other(rng, FORMS, task.form))
    elif kind == "broken_constraint":
        field = rng.choice(["tone", "audience", "n"])
        current = getattr(task, field)
        pool = {"tone": TONES, "audience": AUDIENCES, "n": NUMBERS}[field]
        done = replace(task, **{field: _other(rng, pool, current)})
    elif kind == "generic":
        return rng.choice(GENERIC_REPLIES), None
    elif kind == "echo":
        return instruction(task), None
    else:
        raise ValueError(f"unknown response kind {kind!r}")
    return response(done, rng), done


def reasoning(task: Task | None) -> str:
    """What the judge's REASONING says: the features of the response that point to the request."""
    if task is None:
        return "The reply does no task; it only offers help."
    form = FORMS[task.form]
    bits = [f"The reply is a {task.tone + ' ' if task.tone else ''}{form.nouns[0]} about {task.topic}"]
    if task.n:
        bits.append(f"with {task.n} {form.unit}")
    if task.audience:
        bits.append(f"for {task.audience}")
    return " ".join(bits) + "."


def canonical_instruction(task: Task | None) -> str:
    """The instruction a judge should infer for a response that does `task`, in the plainest wording."""
    if task is None:
        return GENERIC_INSTRUCTION
    form = FORMS[task.form]
    text = f"Write a {task.tone + ' ' if task.tone else ''}{form.nouns[0]} about {task.topic}"
    if task.n:
        text += f" in {task.n} {form.unit}"
    if task.audience:
        text += f" for {task.audience}"
    return text + "."


def flip_answer(task: Task | None, inferred: str) -> str:
    """The judge's answer in the format prompts/FLIP_SYSTEM asks for."""
    return json.dumps({"REASONING": reasoning(task), "INFERRED INSTRUCTION": inferred})


def rlvr_row(task: Task, verifier: str = "general-flip") -> dict:
    text = instruction(task)
    return {"messages": [{"role": "user", "content": text}], "ground_truth": text, "dataset": verifier}


def tasks(n: int, seed: int) -> list[Task]:
    rng = random.Random(seed)
    return [sample_task(rng) for _ in range(n)]


def mean_f1(pairs) -> float:
    pairs = list(pairs)
    return sum(f1_score(a, b)["f1"] for a, b in pairs) / max(len(pairs), 1)


# --------------------------------------------------------------------------------------------------
# Reading the world back: what an instruction asks for, and whether a response does it (judge-free, for the
# benchmark and the tests: how often a policy is on task, whoever rewarded it).

_SIGNATURES = {  # the text an on-task response of each form carries, given the topic
    "poem": "Ode to {topic}\n",
    "list": "Tips on {topic}",
    "email": "Subject: {topic}\n",
    "recipe": "Recipe: {topic} pie",
    "summary": "this is about {topic}.",
    "story": "there was {topic}.",
    "code": "def count_{name}():",
}
_PART = {
    "poem": r"^[^\n:]+,$",
    "list": r"^\d+\. Enjoy ",
    "email": r"I write about ",
    "recipe": r"^Step \d+: mix ",
    "summary": r"It covers ",
    "story": r"Then came ",
    "code": r"^    # (?!for my )",
}


def _word(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(phrase)}(?![\w])", text, flags=re.IGNORECASE) is not None


def parse_instruction(text: str) -> Task | None:
    """The task an instruction of this world asks for, or None when `text` is not one."""
    forms = [f.name for f in FORMS.values() for noun in f.nouns if _word(text, noun)]
    topics = [t for t in TOPICS if _word(text, t)]
    if len(set(forms)) != 1 or len(topics) != 1:
        return None
    tone = next((t for t in TONES if _word(text, t)), None)
    audience = next((a for a in AUDIENCES if _word(text, a)), None)
    unit = FORMS[forms[0]].unit
    words = {w: k for k, w in NUMBERS.items()}
    m = re.search(rf"\b(\d+|{'|'.join(words)}) {unit}\b", text)
    n = None if m is None else int(words.get(m.group(1), m.group(1)))
    return Task(forms[0], topics[0], tone, audience, n, wording=0)


def does_task(task: Task, text: str) -> bool:
    """Whether `text` is an on-task response to `task`: the form's layout on the topic, the tone's words and no
    other tone's, the audience addressed (and no other), and the number of parts asked for."""
    signature = _SIGNATURES[task.form].format(topic=task.topic, name=task.topic.replace(" ", "_"))
    if signature.lower() not in text.lower():
        return False
    for tone, words in TONES.items():
        if any(_word(text, w) for w in words) != (tone == task.tone):
            return False
    for audience, greeting in AUDIENCES.items():
        if _word(text, greeting) != (audience == task.audience):
            return False
    parts = len(re.findall(_PART[task.form], text, flags=re.MULTILINE))
    return parts == (task.n or UNASKED_PARTS)


def on_task_rate(rows) -> float:
    """Share of (instruction, response) pairs whose response does the instruction's task."""
    rows = list(rows)
    hits = [(t := parse_instruction(i)) is not None and does_task(t, r) for i, r in rows]
    return sum(hits) / max(len(hits), 1)
