"""What the user is told: budgets larger than the video, empty queries, skipped annotation rows, misleading
messages and how times print. CLI runs go through typer's runner on the tiny CLIP, the scripted chat server and
PyAV-generated videos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _chat_server import ScriptedServer, completion
from msjoe.cache import FeatureCache
from msjoe.cli import app
from msjoe.features import DualEncoder
from msjoe.mllm import load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA, select_frames
from msjoe.samplers import get_sampler
from msjoe.synthetic_video import write_video

runner = CliRunner()


@pytest.fixture(scope="module")
def five_second_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 s at 5 fps: 5 candidate frames at 1 fps."""
    return write_video(tmp_path_factory.mktemp("user-videos") / "five.mp4", duration=5.0, fps=5.0, size=(96, 64))


def invoke(*args: object) -> tuple[int, str, str]:
    """Exit code, stdout and everything printed."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.output


# --- a budget larger than the video ---------------------------------------------------------------------------
def test_select_reports_the_frames_it_chose_when_the_video_has_fewer(
    five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = ["--clip", tiny_clip_dir, "--cache-dir", tmp_path, "-k", "8", "--sampler", "bolt"]
    code, stdout, output = invoke("select", five_second_video, "-q", "a square", *common, "--json")
    assert code == 0, output
    result = json.loads(stdout)
    assert result["k"] == 5 and result["requested_k"] == 8 and len(result["indices"]) == 5
    assert "asked for 8 key frames but the video has only 5 candidate frames" in caplog.text

    code, stdout, output = invoke("select", five_second_video, "-q", "a square", *common)
    assert code == 0 and "5 key frames (bolt)" in stdout and "-k 8 asked; the video has only 5 candidate" in stdout


def test_select_within_the_budget_says_nothing_more(
    five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["select", five_second_video, "-q", "a square", "-k", "5", "--clip", tiny_clip_dir, "--cache-dir", tmp_path]
    code, stdout, _ = invoke(*args, "--json")
    assert code == 0 and json.loads(stdout)["k"] == json.loads(stdout)["requested_k"] == 5
    assert "asked for" not in caplog.text


def test_answer_and_ask_report_the_frames_used(
    server: ScriptedServer, five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    server.default = lambda handler, body: handler.send_json(200, completion("B"))
    mllm = load_mllm(server.url, model="m", timeout=10.0, max_retries=0)
    qa = VideoQA(DualEncoder.from_pretrained(tiny_clip_dir), mllm, FeatureCache(tmp_path), PipelineConfig(k=8))
    answer = qa.ask(five_second_video, "Which one?", ["yes", "no"])
    assert answer.requested_k == 8 and answer.k == 5 == len(answer.chosen_timestamps)
    assert answer.to_dict()["k"] == 5 and answer.to_dict()["requested_k"] == 8

    common = ["-o", "yes", "-o", "no", "-k", "8", "--mllm", server.url, "--model", "m", "--clip", tiny_clip_dir]
    code, stdout, output = invoke("ask", five_second_video, "Which one?", *common, "--cache-dir", tmp_path, "--json")
    assert code == 0, output
    assert json.loads(stdout)["k"] == 5 and json.loads(stdout)["requested_k"] == 8
    code, stdout, output = invoke("ask", five_second_video, "Which one?", *common, "--cache-dir", tmp_path)
    assert code == 0 and "key frames (5; -k 8 asked; the video has only 5 candidate frames)" in stdout


def test_select_frames_warns_when_the_budget_exceeds_the_candidates(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="msjoe.pipeline"):
        assert select_frames(get_sampler("topk"), torch.tensor([[0.1, 0.3, 0.2]]), 5) == [0, 1, 2]
    assert "only 3 candidate frames" in caplog.text


# --- empty queries --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("queries", "number"), [([""], 1), (["  "], 1), (["a square", "\t \n"], 2)])
def test_select_rejects_empty_queries_before_loading_the_encoder(
    five_second_video: Path, tmp_path: Path, queries: list[str], number: int
) -> None:
    # The encoder folder does not exist: a command that got past the check would report that instead.
    flags = [arg for query in queries for arg in ("-q", query)]
    code, _, output = invoke("select", five_second_video, *flags, "--clip", tmp_path / "no-clip")
    assert code == 1 and f"query {number} is empty" in output and "no-clip" not in output


def test_library_rejects_empty_queries(five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path) -> None:
    from msjoe.index import index_video
    from msjoe.pipeline import check_queries, query_similarity

    encoder = DualEncoder.from_pretrained(tiny_clip_dir)
    features = index_video(five_second_video, encoder, FeatureCache(tmp_path))
    with pytest.raises(ValueError, match=r"query 2 is empty \(' '\)"):
        query_similarity(encoder, ["a square", " "], features)
    assert query_similarity(encoder, ["a square"], features).shape == (1, 5)
    with pytest.raises(ValueError, match="give 1 to 4 queries, got 0"):
        check_queries([])
    with pytest.raises(ValueError, match="list of strings"):
        check_queries("a square")  # a bare string would be read as one query per character


# --- eval: malformed annotation rows --------------------------------------------------------------------------
def lvb_row(qid: str, **changes: object) -> dict[str, object]:
    row = {"id": qid, "video_id": "five", "video_path": "five.mp4", "question": f"Question {qid}?",
           "candidates": ["red", "green"], "correct_choice": 0, "duration": 5.0, "duration_group": 15,
           "question_category": "S2E"}  # fmt: skip
    return {**row, **changes}


@pytest.mark.parametrize("as_json", [False, True])
def test_eval_prints_the_skipped_annotation_rows(
    server: ScriptedServer, five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path, as_json: bool
) -> None:
    server.default = lambda handler, body: handler.send_json(200, completion("(A)"))
    rows = [lvb_row("good"), *(lvb_row(f"bad{i}", correct_choice=7) for i in range(6)), lvb_row("noq", question=5)]
    annotations = tmp_path / "lvb.json"
    annotations.write_text(json.dumps(rows))
    out = tmp_path / "out"
    code, stdout, output = invoke(
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", five_second_video.parent,
        "--sampler", "uniform", "--frames", "2", "--mllm", server.url, "--model", "m", "--clip", tiny_clip_dir,
        "--cache-dir", tmp_path / "cache", "--out", out, *(["--json"] if as_json else []),
    )  # fmt: skip
    assert code == 0, output
    console = output.replace(stdout, "")  # stderr
    assert "7 malformed annotation rows skipped" in console
    assert "lvb.json[1]: " in console and "lvb.json[5]: " in console and "lvb.json[6]" not in console  # the first 5
    assert f"... and 2 more, all listed in {out / 'report.md'}" in console
    if as_json:
        assert len(json.loads(stdout)["skipped_rows"]) == 7  # stdout is still one JSON document
