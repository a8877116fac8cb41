"""Explain views of benchmark items: written by `msjoe eval --explain-items`, or later by `msjoe explain OUT` from
the run folder alone (the similarity recomputed from the feature cache, no MLLM)."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from _chat_server import ScriptedServer
from msjoe.cli import app
from msjoe.eval.explain import item_filename, pick_records
from test_eval_harness import benchmark_files, scripted_mllm  # noqa: F401  (fixture and scripted MLLM)
from test_explain import Page

runner = CliRunner()


def read_records(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_eval_explain_items_then_explain_on_demand(
    server: ScriptedServer, tiny_clip_dir: Path, benchmark_files, tmp_path: Path
) -> None:
    server.default = scripted_mllm
    annotations, videos = benchmark_files
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = runner.invoke(app, [str(a) for a in [
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", videos,
        "--sampler", "bolt,uniform", "--frames", "2", "--mllm", server.url, "--model", "m", "--clip", tiny_clip_dir,
        "--cache-dir", cache, "--out", out, "--explain-items", "2",
    ]])  # fmt: skip
    assert result.exit_code == 3, result.output  # finished, with q3's failure (its video is corrupt)
    assert "explain views" in result.output

    # Wrong answers first: q3 (its video is corrupt: an error line) and q1 (answered C, truth A).
    index = Page((out / "explain" / "index.html").read_text(encoding="utf-8"))
    links = [a["href"] for a in index.all("a")]
    assert links == ["longvideobench/bolt_k2/q1.html", "longvideobench/uniform_k2/q1.html"]
    assert "".join(index.text).count("no view") == 2  # q3 in both runs, with the reason
    records = read_records(out / "predictions" / "longvideobench" / "bolt_k2.jsonl")
    page = Page((out / "explain" / "longvideobench" / "bolt_k2" / "q1.html").read_text(encoding="utf-8"))
    words = "".join(page.text)
    assert "q1" in words and "wrong" in words and "a red square" in words and "a blue screen" in words
    assert [a.get("class") for a in page.all("li") if a.get("class") in ("picked", "truth")] == ["truth", "picked"]
    chosen = [float(f["data-time"]) for f in page.all("figure", "chosen")]
    assert chosen == pytest.approx(records["q1"]["chosen_timestamps"])
    assert {"chosen-0", "chosen-1", "query-0", "query-1", "probabilities"} <= page.ids
    uniform = Page((out / "explain" / "longvideobench" / "uniform_k2" / "q1.html").read_text(encoding="utf-8"))
    assert "probabilities" not in uniform.ids and "this sampler uses no queries" in "".join(uniform.text)

    # Later, from the run folder alone (encoder from the run's settings): one item, as PNG figures.
    result = runner.invoke(app, ["explain", str(out), "--item", "q0", "--png", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    figure = Image.open(BytesIO((out / "explain" / "longvideobench" / "bolt_k2" / "q0.png").read_bytes()))
    described = json.loads(figure.text["Description"])
    assert described["chosen_timestamps"] == pytest.approx(records["q0"]["chosen_timestamps"])
    assert described["queries"] == records["q0"]["queries"]
    assert [a["href"] for a in Page((out / "explain" / "index.html").read_text()).all("a")] == [
        "longvideobench/bolt_k2/q0.png",
        "longvideobench/uniform_k2/q0.png",
    ]


def test_explain_on_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", str(tmp_path)])
    assert result.exit_code == 1 and "no matching runs" in result.output and "Traceback" not in result.output


def test_pick_records_puts_wrong_answers_first() -> None:
    records = [
        {"id": "a", "correct": True},
        {"id": "b", "correct": None},
        {"id": "c", "correct": False},
        {"id": "d", "correct": True},
        {"id": "e", "correct": False},
    ]
    assert [r["id"] for r in pick_records(records, None)] == ["c", "e", "b", "a", "d"]
    assert [r["id"] for r in pick_records(records, 3)] == ["c", "e", "b"]
    assert [r["id"] for r in pick_records(records, None, wrong_only=True)] == ["c", "e"]
    assert [r["id"] for r in pick_records(records, None, ids=["d", "zz", "a"])] == ["d", "a"]


def test_item_filenames_are_safe_and_distinct() -> None:
    names = [item_filename(i) for i in ("q1", "a/b c", "a_b_c", "../x", "é")]
    assert names[0] == "q1.html"
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert len(set(names)) == len(names)
