"""What the user is told: budgets larger than the video, empty queries, skipped annotation rows, misleading
messages and how times print. CLI runs go through typer's runner on the tiny CLIP, the scripted chat server and
PyAV-generated videos."""

from __future__ import annotations

import json
import logging
import re
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


# --- messages that used to mislead ----------------------------------------------------------------------------
def test_a_folder_is_not_reported_as_a_missing_video(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from msjoe.cache import fingerprint
    from msjoe.errors import VideoNotFoundError
    from msjoe.video import probe

    folder = tmp_path / "clips"
    folder.mkdir()
    for read in (fingerprint, probe):
        with pytest.raises(VideoNotFoundError, match="clips is a folder, not a video file"):
            read(folder)
    with pytest.raises(VideoNotFoundError, match=r"video file not found: .*absent\.mp4"):
        fingerprint(tmp_path / "absent.mp4")
    code, _, output = invoke("select", folder, "-q", "x", "--clip", tiny_clip_dir, "--cache-dir", tmp_path / "c")
    assert code == 1 and "is a folder, not a video file" in output and "not found" not in output


def test_an_unwritable_cache_names_the_cli_options_on_the_command_line(
    five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from msjoe.errors import CacheError

    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be created under a file, even by root")
    with pytest.raises(CacheError, match=r"pass FeatureCache\(root=...\) to a writable folder"):
        FeatureCache(blocker / "cache").ensure_writable()  # Python users get the Python remedy

    args = ["--clip", tiny_clip_dir, "--cache-dir", blocker / "cache"]
    for command in (["index", five_second_video], ["select", five_second_video, "-q", "x"]):
        code, _, output = invoke(*command, *args)
        assert code == 1 and f"cannot create the feature cache directory {blocker / 'cache'}" in output
        assert "choose a writable folder with --cache-dir or $MSJOE_CACHE" in output
        assert "FeatureCache(" not in output


def test_eval_offers_to_resume_only_when_the_run_had_started(
    server: ScriptedServer, five_second_video: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from _chat_server import status

    annotations = tmp_path / "lvb.json"
    annotations.write_text(json.dumps([lvb_row("q0"), lvb_row("q1")]))
    common = ["eval", "--benchmark", "longvideobench", "--videos", five_second_video.parent, "--sampler", "uniform",
              "--frames", "2", "--mllm", server.url, "--model", "m", "--clip", tiny_clip_dir,
              "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out"]  # fmt: skip
    # Setup errors: nothing ran, so there is nothing to resume.
    for bad in (["--annotations", tmp_path / "absent.json"], ["--annotations", annotations, "--frames", "0"]):
        code, _, output = invoke(*common, *bad)
        assert code != 0 and "error" in output.lower() and "rerun to resume" not in output
    # The server refuses the credentials part-way: finished items are kept, a rerun resumes.
    server.script.append(status(200, completion("(A)")))
    server.default = status(401, {"error": {"message": "bad key"}})
    code, _, output = invoke(*common, "--annotations", annotations)
    assert code == 1 and "401" in output
    assert f"finished items are saved in {tmp_path / 'out'}; rerun to resume" in output


def test_a_damaged_prediction_line_is_named_without_inviting_to_delete_the_file(tmp_path: Path) -> None:
    from msjoe.eval.harness import PredictionLog

    path = tmp_path / "uniform_k2.jsonl"
    path.write_text('{"id": "q0", "reply": "A"}\n{"id": "q1", "reply": \n{"id": "q2", "reply": "C"}\n')
    with pytest.raises(ValueError) as raised:
        PredictionLog(path)
    message = str(raised.value)
    assert message.startswith(f"{path}:2: not a prediction record")
    assert "fix line 2 or delete that line alone (its item is answered again); keep the others" in message
    assert "delete the file" not in message
    path.write_text('{"id": "q0"}\n{"id": 3}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: a prediction record needs a string 'id': fix line 2")):
        PredictionLog(path)


# --- how times print ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_length_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5.28 s: the last 1-fps candidate is (5 + 5.28) / 2, which float arithmetic makes 5.140000000000001."""
    return write_video(tmp_path_factory.mktemp("odd") / "odd.mp4", duration=5.28, fps=25.0, size=(64, 48))


def test_times_print_as_what_they_are(
    server: ScriptedServer, odd_length_video: Path, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    from msjoe.video import candidate_timestamps, probe, round_seconds

    assert candidate_timestamps(probe(odd_length_video))[-1] == 5.140000000000001  # the exact value is kept
    assert round_seconds(5.140000000000001) == 5.14 and round_seconds(1 / 3) == 0.333333

    common = ["-k", "6", "--clip", tiny_clip_dir, "--cache-dir", tmp_path]
    code, stdout, output = invoke("select", odd_length_video, "-q", "x", *common, "--json")
    assert code == 0, output
    assert json.loads(stdout)["timestamps"][-1] == 5.14 and "5.140000000000001" not in stdout

    server.default = lambda handler, body: handler.send_json(200, completion("A"))
    mllm = ["-o", "yes", "-o", "no", "--mllm", server.url, "--model", "m"]
    code, stdout, output = invoke("ask", odd_length_video, "Which one?", *mllm, *common, "--json")
    assert code == 0, output
    assert json.loads(stdout)["chosen_timestamps"][-1] == 5.14 and "5.140000000000001" not in stdout

    annotations = tmp_path / "lvb.json"
    annotations.write_text(json.dumps([lvb_row("q0", video_path="odd.mp4")]))
    out = tmp_path / "out"
    code, _, output = invoke(
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", odd_length_video.parent,
        "--sampler", "uniform", "--frames", "6", "--mllm", server.url, "--model", "m", "--clip", tiny_clip_dir,
        "--cache-dir", tmp_path, "--out", out,
    )  # fmt: skip
    assert code == 0, output
    predictions = (out / "predictions" / "longvideobench" / "uniform_k6.jsonl").read_text()
    assert json.loads(predictions)["chosen_timestamps"][-1] == 5.14 and "5.140000000000001" not in predictions
