"""The README's "Build a training set" commands, run as written (4 smoke items instead of 16; the stage 1 run at
the end is tested with the same config in test_train_cli.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.schema import read_qa_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"


def build_commands() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## Build a training set") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = []
    for line in block.group(1).splitlines():
        for command in line.split("&&"):
            words = shlex.split(command)
            assert words[0] == "msjoe", command
            commands.append(words[1:])
    return commands


def test_the_build_commands_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    commands = build_commands()
    assert [c[0] if c[0] != "data" else f"data {c[1]}" for c in commands] == [
        "smoke-models", "smoke-data", "data import", "data calibrate", "data filter", "data split", "data stats",
        "train",
    ]  # fmt: skip
    for words in commands[:-1]:
        words = ["4" if word == "16" and words[0] == "smoke-data" else word for word in words]
        result = runner.invoke(app, words)
        assert result.exit_code == 0, f"msjoe {shlex.join(words)}\n{result.output}"
    train, val = read_qa_jsonl("build/train.jsonl"), read_qa_jsonl("build/val.jsonl")
    assert len(train) + len(val) == 4 and all(item.difficulty is not None for item in train + val)
    assert all(item.evidence for item in train + val) and Path("build/stats/stats.md").is_file()
