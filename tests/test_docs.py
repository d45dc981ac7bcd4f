"""Every command line in README.md and docs/ composes and passes the value checks, as typed there.

Documentation drifts when a config key is renamed and the page is not: this reads each `python -m
cxr.<command> ...` line from the pages' code blocks and composes it with Hydra's compose API against
conf/ (a multirun line as its first job), then runs the checks the command runs before any work.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cxr.config import (
    CONF_DIR,
    check_app,
    check_ensemble,
    check_evaluation,
    check_predict,
    check_training,
    register_configs,
)
from cxr.predict import model_alias
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIG_NAMES = {
    "train": "config",
    "prepare": "config",
    "evaluate": "evaluate",
    "ensemble": "ensemble",
    "promote": "promote",
    "predict": "predict",
    "app": "app",
    "report": "report",
}
CHECKS = {
    "train": check_training,
    "evaluate": lambda cfg: check_evaluation(cfg.evaluation),
    "ensemble": check_ensemble,
    "predict": check_predict,
    "app": check_app,
}
PLACEHOLDERS = {"version=N": "version=1"}  # written for a reader to fill in
FLAGS_WITH_VALUES = ("--cfg", "-c", "--info", "-i")  # Hydra's flags that take a word after them


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|console)?\n(.*?)^```", text, flags=re.M | re.S)


def command_lines(page: Path) -> list[str]:
    """`python -m cxr.<command> ...` lines of the page's code blocks, continuation lines joined."""
    found = []
    for block in code_blocks(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()  # a trailing comment
            line = line.rsplit("&& ", 1)[-1]  # `pip install -e . && python -m cxr.train ...`
            if re.match(r"^(\w+=\S+ )*python -m cxr\.\w+", line):
                found.append(line)
    return found


def top_level_arguments(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def first_value(value: str) -> str:
    """A sweep value's first choice: `a,b` -> `a`, `int(interval(5, 10))` -> `5`, `tag(log, ...)`."""
    while call := re.fullmatch(r"(\w+)\((.*)\)", value):
        arguments = top_level_arguments(call.group(2))
        value = arguments[1] if call.group(1) == "tag" else arguments[0]
    if "," in value and not value.startswith(("[", "{")):
        value = top_level_arguments(value)[0]
    return value


def first_job(arguments: list[str]) -> list[str]:
    """A multirun's first job, without Hydra's flags (-m, --cfg job, --help)."""
    out, skip = [], False
    for argument in arguments:
        if skip or argument.startswith("-"):
            skip = argument in FLAGS_WITH_VALUES
            continue
        key, equals, value = argument.partition("=")
        out.append(f"{key}={first_value(value)}" if equals else argument)
    return out


LINES = sorted({(page.relative_to(REPO).as_posix(), line) for page in PAGES for line in command_lines(page)})


def test_the_pages_hold_command_lines_of_every_command():
    commands = {re.search(r"python -m cxr\.(\w+)", line).group(1) for _, line in LINES}
    assert commands == set(CONFIG_NAMES), commands
    assert len(LINES) >= 25


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}: {line[:60]}" for p, line in LINES])
def test_a_documented_command_line_composes_and_passes_the_value_checks(page, line):
    words = shlex.split(line)
    start = words.index("python")
    command = words[start + 2].removeprefix("cxr.")
    arguments = [PLACEHOLDERS.get(w, w) for w in words[start + 3 :]]
    if "--config-dir" in arguments:
        pytest.skip("a config folder of the reader's own (docs/extending.md)")
    if command in ("predict", "app", "report"):
        arguments = model_alias(arguments)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(CONFIG_NAMES[command], overrides=first_job(arguments))
    finally:
        GlobalHydra.instance().clear()
    CHECKS.get(command, lambda cfg: None)(cfg)
