"""`gpt4l_next_line`: an lm-eval multiple-choice task that needs no download, built from held-out stdlib code.

Each item is 8 consecutive lines of a standard-library module and four candidates for the line after them: the
true one and three lines drawn from other held-out modules; the metric is lm-eval's `acc` (and `acc_norm`).
The modules are those `prepare`'s split holds out of training (`is_val` of their text at the default
`val_fraction`), so a model trained on `data=stdlib` has not seen them. Items are a seeded function of the
interpreter's standard library: the same Python version gives the same task.

`write_task(directory)` writes `gpt4l_next_line.yaml` and its data (`next_line.jsonl`, absolute path in the
YAML) for `lm_eval --include_path <directory> --tasks gpt4l_next_line`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from pathlib import Path

from gpt4_lightning.utils.files import write_text

TASK = "gpt4l_next_line"
CONTEXT_LINES = 8
CHOICES = 4
ITEMS = 200
VAL_FRACTION = 0.02  # DataConfig's default: the modules a data=stdlib run holds out


def held_out_modules() -> list[str]:
    """The text of every stdlib module the default split holds out, in the corpus order."""
    from gpt4_lightning.data.config import DataConfig
    from gpt4_lightning.data.prepare.corpus import Corpus
    from gpt4_lightning.data.prepare.directory import is_val

    return [text for text in Corpus(DataConfig(source="stdlib")) if is_val(text, VAL_FRACTION)]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def build_items(modules: list[str], items: int = ITEMS, seed: int = 0) -> list[dict]:
    """`items` questions: {context, choices, label}, seeded; only lines of 16 to 80 characters are asked or offered
    (a line, not a block; short enough for a small model's context)."""
    rng = random.Random(seed)
    lines = [_lines(text) for text in modules]

    def fits(line: str) -> bool:
        return len(line.strip()) >= 16 and len(line) <= 80

    askable = [(m, i) for m, ls in enumerate(lines) for i in range(CONTEXT_LINES, len(ls)) if fits(ls[i])]
    pool = [(m, line) for m, ls in enumerate(lines) for line in ls if fits(line)]
    out = []
    for m, i in rng.sample(askable, min(items, len(askable))):
        true = lines[m][i]
        distractors: list[str] = []
        while len(distractors) < CHOICES - 1:
            other, line = rng.choice(pool)
            if other != m and line != true and line not in distractors:
                distractors.append(line)
        choices = [true, *distractors]
        rng.shuffle(choices)
        context = "\n".join(lines[m][i - CONTEXT_LINES : i]) + "\n"
        out.append({"context": context, "choices": choices, "label": choices.index(true)})
    return out


@functools.lru_cache(maxsize=1)
def task_data() -> str:
    """The task's jsonl, built once per process (it walks the standard library: seconds)."""
    return "".join(json.dumps(item) + "\n" for item in build_items(held_out_modules()))


def write_task(directory: Path) -> Path:
    """The task's YAML and data in `directory` (made again only if what it would write differs)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = task_data()
    path = directory / "next_line.jsonl"
    yaml = "\n".join([
        f"task: {TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(path.absolute()))}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{context}}"',
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"',
        'target_delimiter: ""',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        f"  version: 1.0  # data sha256 {hashlib.sha256(data.encode()).hexdigest()[:16]}",
        "",
    ])
    for name, text in (("next_line.jsonl", data), (f"{TASK}.yaml", yaml)):
        target = directory / name
        if not target.is_file() or target.read_text() != text:
            write_text(target, text)
    return directory
