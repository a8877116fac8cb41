"""Every ``msjoe ...`` command the docs show names real subcommands, flags and files.

The commands come from README.md, docs/*.md and the comments of configs/: fenced ``bash`` blocks and inline code
spans. Running them all needs models, GPUs and data (they are run as pasted in test_data_readme.py,
test_lmms_eval_plugin.py and by .ci/run for the set-up blocks); what rots silently is a renamed flag, a
subcommand that moved, a config path or an lmms-eval model argument, and those are checked here against the
command-line definitions themselves, loading nothing. README's "### Python" examples are run as pasted, on the
smoke-test models.
"""

from __future__ import annotations

import inspect
import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from msjoe.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_COMMENTS = sorted((ROOT / "configs").rglob("*.yaml"))


def _fenced_commands(text: str) -> list[str]:
    """Shell commands of the ```bash blocks: continuation lines joined, ``&&`` / ``&`` / ``;`` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            commands += [part for part in re.split(r"&&|;|&(?=\s|$)", line) if part.strip()]
    return commands


def _inline_commands(text: str) -> list[str]:
    """Inline code spans that start a command (``msjoe ...``, ``accelerate launch ... -m msjoe ...``)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [
        span
        for span in re.findall(r"`([^`\n]+)`", text)
        if re.match(r"(\S+=\S+ )*(msjoe|accelerate|torchrun|lmms-eval) ", span)
    ]


def _config_commands(path: Path) -> list[str]:
    """Commands shown in a config's leading comment (``#   msjoe train ...``, continued with ``\\``)."""
    comment = "\n".join(line[1:] for line in path.read_text().splitlines() if line.startswith("#"))
    lines = comment.replace("\\\n", " ").splitlines()
    return [part for line in lines for part in line.split("&&") if re.match(r"\s*(msjoe|accelerate) ", part)]


def documented_commands() -> list[tuple[str, str]]:
    """``(where, command)`` for every documented shell command."""
    found = []
    for path in DOCS:
        text = path.read_text()
        found += [(path.name, command) for command in _fenced_commands(text) + _inline_commands(text)]
    for path in CONFIG_COMMENTS:
        found += [(f"configs/{path.relative_to(ROOT / 'configs')}", command) for command in _config_commands(path)]
    return found


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # a table cell such as `msjoe ask VIDEO "question" ...` may not be valid shell
        return command.split()


def _msjoe_arguments(words: list[str]) -> list[str] | None:
    """The words after ``msjoe`` when the command runs msjoe (``msjoe``, ``.venv/bin/msjoe``, ``-m msjoe``)."""
    for index, word in enumerate(words):
        if word == "msjoe" and (index == 0 or words[index - 1] == "-m" or "=" in words[index - 1]):
            return words[index + 1 :]
        if word.endswith("/msjoe") and index == 0:
            return words[index + 1 :]
    return None


ROOT_COMMAND = typer.main.get_command(app)  # typer's own click classes (vendored): tell groups by `commands`


def _resolve(arguments: list[str]) -> tuple[Any, list[str]] | None:
    """The (sub)command the arguments name and the arguments left; None when a placeholder stands for it."""
    command = ROOT_COMMAND
    rest = [word.strip("[]") for word in arguments]
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            placeholder = "|" in rest[0] or rest[0].isupper() or rest[0].startswith("...")
            return None if placeholder else (command, rest)
        command, rest = command.commands[rest[0]], rest[1:]
    return command, rest


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for parameter in command.params:
        names.update(parameter.opts + parameter.secondary_opts)
    return names


MSJOE_COMMANDS = [
    pytest.param(words, id=f"{where}: {' '.join(words)[:70]}")
    for where, command in documented_commands()
    if (words := _msjoe_arguments(_words(command))) is not None
]


def test_the_docs_show_commands_of_every_kind() -> None:
    # The extraction itself: if a pattern stops matching, the checks below would pass on nothing.
    runs = [" ".join(words) for words in (param.values[0] for param in MSJOE_COMMANDS)]
    expected_starts = (
        "ask smoke-models/demo.mp4",
        "train stage2 --config configs/stage2_paper.yaml",
        "data needle",
        "eval --benchmark videomme",
        "sim eval --simulator lvbench",
        "score --benchmark lvbench",
    )
    for expected in expected_starts:
        assert any(run.startswith(expected) for run in runs), expected
    assert len(runs) > 30


@pytest.mark.parametrize("words", MSJOE_COMMANDS)
def test_documented_msjoe_commands_use_real_subcommands_flags_and_files(words: list[str]) -> None:
    resolved = _resolve(words)
    if resolved is None:
        return  # `msjoe data import|calibrate|...`: a placeholder, not a command
    command, rest = resolved
    if hasattr(command, "commands") and not rest:
        return  # prose naming a group: `msjoe sim` trains ...
    assert not hasattr(command, "commands"), f"`msjoe {' '.join(words)}` stops at the group {command.name!r}"
    unknown = sorted({word.split("=")[0] for word in rest if re.match(r"--?[a-zA-Z]", word)} - _options(command))
    assert not unknown, f"`msjoe {' '.join(words)}`: {unknown} are not options of `{command.name}`"
    for flag, value in itertools.pairwise(rest):
        if flag in ("--config", "--include_path") and not value.startswith(("...", "FILE")):
            assert (ROOT / value).exists(), f"`msjoe {' '.join(words)}`: {value} does not exist"


def test_documented_lmms_eval_model_arguments_exist() -> None:
    from msjoe.integrations.lmms_eval import MSJoE

    accepted = set(inspect.signature(MSJoE.__init__).parameters) - {"self"}
    documented = []
    for where, command in documented_commands():
        words = _words(command)
        if words and words[0] == "lmms-eval" and "--model_args" in words:
            arguments = words[words.index("--model_args") + 1]
            documented += [(where, pair.split("=")[0]) for pair in arguments.split(",")]
            include = words[words.index("--include_path") + 1] if "--include_path" in words else None
            assert include is None or (ROOT / include).is_dir(), include
    assert documented, "no lmms-eval command with --model_args found in the docs"
    unknown = [(where, name) for where, name in documented if name not in accepted]
    assert not unknown, f"model arguments MSJoE does not take: {unknown}"


def test_the_readme_python_examples_run_as_pasted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's "### Python" blocks, in order, in a folder where `msjoe smoke-models smoke-models` has run."""
    from msjoe.tiny_models import write_smoke_models

    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python") : text.index("## Scoring")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    write_smoke_models("smoke-models")
    for number, code in enumerate(blocks):
        exec(compile(code, f"README.md Python example {number + 1}", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "why.html").is_file()
