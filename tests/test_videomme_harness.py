"""The harness end to end on Video-MME's released format: a parquet file with the dataset's exact columns and types
(``lmms-lab/Video-MME``, ``videomme/test-00000-of-00001.parquet``), videos named ``<videoID>.mp4`` / ``.mkv`` as the
dataset names them, one video absent.

``run_eval`` runs against the scripted chat server, so every reply is chosen here and the official scores can be
counted by hand: the expected tables below are hand counts, and they are checked a second time against a tally
made from the predictions file. The CLI test runs the tiny random Qwen2.5-VL and CLIP as local models; their
replies are noise, so it checks the scores against the predictions file it wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from _chat_server import Handler, ScriptedServer, completion
from msjoe.cache import FeatureCache
from msjoe.cli import app
from msjoe.eval.harness import EvalConfig, predictions_path, run_eval
from msjoe.eval.plots import plot_filename
from msjoe.features import DualEncoder
from msjoe.mllm import load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.synthetic_video import write_video

# The dataset's schema, column order included (every column a string, ``options`` a list of strings).
VIDEOMME_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("duration", pa.string()),
        ("domain", pa.string()),
        ("sub_category", pa.string()),
        ("url", pa.string()),
        ("videoID", pa.string()),
        ("question_id", pa.string()),
        ("task_type", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
    ]
)

# video_id -> (duration bucket, domain, sub_category, YouTube id, file written; None: the video is absent)
VIDEOS = {
    "001": ("short", "Knowledge", "Astronomy", "fFjv93ACGo8", "fFjv93ACGo8.mp4"),
    "002": ("medium", "Film & Television", "Animation", "K3a-Xq_09Zc", "K3a-Xq_09Zc.mkv"),
    "003": ("long", "Sports Competition", "Football", "p0_Zw-Tq4LM", "p0_Zw-Tq4LM.mp4"),
    "004": ("long", "Life Record", "Travel", "zZ9nMissing1", None),
}
# question_id -> (task_type, answer, scripted reply, the letter Video-MME's rule reads from it, by hand)
QUESTIONS = {
    "001-1": ("Counting Problem", "C", "C", "C"),
    "001-2": ("OCR Problems", "A", "The best answer is B.", "B"),
    "001-3": ("Counting Problem", "D", "I cannot tell from these frames.", None),  # no A-D capital: excluded
    "002-1": ("Action Recognition", "B", "(B) the dog", "B"),
    "002-2": ("Counting Problem", "D", "Based on the frames, D", "B"),  # the official rule takes Based's B
    "002-3": ("OCR Problems", "A", "A.", "A"),
    "003-1": ("Temporal Reasoning", "C", "The answer is C", "C"),
    "003-2": ("Action Recognition", "B", "D", "D"),
    "003-3": ("Object Reasoning", "A", "a", None),  # lower case: excluded
    "004-1": ("Information Synopsis", "A", "A", "A"),  # the video is missing: never asked
    "004-2": ("Spatial Perception", "B", "B", "B"),
    "004-3": ("Attribute Perception", "C", "C", "C"),
}
RUNNABLE = [qid for qid in QUESTIONS if not qid.startswith("004")]
MISSING = ["004-1", "004-2", "004-3"]

# Counted by hand from the tables above: 7 counted (2 excluded), 4 right.
EXPECTED_OVERALL = {"correct": 4, "total": 7, "accuracy": 4 / 7}
EXPECTED_BREAKDOWNS = {
    "duration": {"short": (1, 2), "medium": (2, 3), "long": (1, 2)},
    "domain": {"Knowledge": (1, 2), "Film & Television": (2, 3), "Sports Competition": (1, 2)},
    "sub_category": {"Astronomy": (1, 2), "Football": (1, 2), "Animation": (2, 3)},
    "task_type": {
        "Action Recognition": (1, 2),
        "OCR Problems": (1, 2),
        "Counting Problem": (1, 2),
        "Temporal Reasoning": (1, 1),
    },
}
ANSWER_TURN_MARK = "Answer with the option's letter"
OPTION_TEXTS = ("a red square", "a green circle", "a blue triangle", "a yellow star")


def question_text(question_id: str) -> str:
    return f"Question {question_id}: which shape appears first?"


def categories(question_id: str) -> dict[str, str]:
    duration, domain, sub_category, *_ = VIDEOS[question_id.split("-")[0]]
    task_type = QUESTIONS[question_id][0]
    return {"duration": duration, "domain": domain, "sub_category": sub_category, "task_type": task_type}


@pytest.fixture(scope="module")
def videomme_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the annotations folder in the dataset's layout, the video folder)."""
    root = tmp_path_factory.mktemp("videomme")
    videos = root / "videos"
    videos.mkdir()
    for i, (*_, file) in enumerate(VIDEOS.values()):
        if file is not None:
            write_video(videos / file, duration=2.0 + i, fps=4.0, size=(64, 48))
    rows = []
    for question_id, (task_type, answer, _, _) in QUESTIONS.items():
        video_id = question_id.split("-")[0]
        duration, domain, sub_category, youtube_id, _ = VIDEOS[video_id]
        rows.append(
            {
                "video_id": video_id,
                "duration": duration,
                "domain": domain,
                "sub_category": sub_category,
                "url": f"https://www.youtube.com/watch?v={youtube_id}",
                "videoID": youtube_id,
                "question_id": question_id,
                "task_type": task_type,
                "question": question_text(question_id),
                "options": [f"{letter}. {text}" for letter, text in zip("ABCD", OPTION_TEXTS, strict=True)],
                "answer": answer,
            }
        )
    annotations = root / "annotations"
    (annotations / "videomme").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=VIDEOMME_SCHEMA), annotations / "videomme" / "test-00000-of-00001.parquet"
    )
    return annotations, videos


def scripted_mllm(handler: Handler, body: dict[str, Any]) -> None:
    """Queries for the query turn; for the answer turn, the reply scripted for the question in the prompt."""
    prompt = "\n".join(
        part if isinstance(part, str) else part.get("text", "")
        for message in body["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [message["content"]])
    )
    if ANSWER_TURN_MARK not in prompt:
        handler.send_json(200, completion("1. a red square\n2. a yellow star"))
        return
    reply = next(QUESTIONS[qid][2] for qid in QUESTIONS if question_text(qid) in prompt)
    handler.send_json(200, completion(reply))


@pytest.fixture
def qa(server: ScriptedServer, tiny_clip_dir: Path, tmp_path: Path) -> VideoQA:
    server.default = scripted_mllm
    mllm = load_mllm(server.url, model="m", timeout=10.0, max_retries=0)
    encoder = DualEncoder.from_pretrained(str(tiny_clip_dir))
    return VideoQA(encoder, mllm, FeatureCache(tmp_path / "cache"), PipelineConfig())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tally_from_predictions(lines: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per-category (correct, counted) from a predictions file: items whose ``correct`` is null are excluded."""
    correct: dict[str, Counter[str]] = {name: Counter() for name in EXPECTED_BREAKDOWNS}
    total: dict[str, Counter[str]] = {name: Counter() for name in EXPECTED_BREAKDOWNS}
    for line in lines:
        if line["correct"] is None:
            continue
        for name, group in categories(line["id"]).items():
            total[name][group] += 1
            correct[name][group] += int(line["correct"])
    return {name: {group: (correct[name][group], total[name][group]) for group in total[name]} for name in total}


def breakdown_counts(report: dict[str, Any]) -> dict[str, dict[str, tuple[int, int]]]:
    return {
        name: {group: (tally["correct"], tally["total"]) for group, tally in groups.items()}
        for name, groups in report["breakdowns"].items()
    }


def test_run_eval_scores_videomme_by_duration_domain_and_task(
    qa: VideoQA, server: ScriptedServer, videomme_files: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, videos = videomme_files
    parquet = annotations / "videomme" / "test-00000-of-00001.parquet"
    out = tmp_path / "out"
    entry = run_eval(
        qa, EvalConfig("videomme", parquet, videos, out, samplers=["uniform"], budgets=[2]), progress=False
    )

    lines = read_lines(predictions_path(out, "videomme", "uniform", 2))
    assert [line["id"] for line in lines] == RUNNABLE
    for line in lines:
        _, answer, reply, official_letter = QUESTIONS[line["id"]]
        assert (line["reply"], line["answer"], line["scored_letter"]) == (reply, answer, official_letter)
        assert line["video"].endswith(VIDEOS[line["id"].split("-")[0]][4])  # .mkv found for 002
        assert line["correct"] == (None if official_letter is None else official_letter == answer)

    report = entry["runs"][0]["report"]
    assert report["overall"] == EXPECTED_OVERALL
    assert report["counts"]["unparsed"] == 2 and report["ids"]["unparsed"] == ["001-3", "003-3"]
    assert report["rules"]["unparsed"] == "exclude" and report["rules"]["name"] == "videomme"
    counts = breakdown_counts(report)
    assert counts == EXPECTED_BREAKDOWNS
    assert counts == tally_from_predictions(lines)
    assert list(counts["duration"]) == ["short", "medium", "long"]  # the official listing order
    assert json.loads((out / "scores.json").read_text())["benchmarks"]["videomme"] == entry

    # The absent video: its questions are listed, never asked, and do not count.
    assert entry["missing_items"] == MISSING
    assert entry["missing_videos"] == [str(videos / "zZ9nMissing1.mp4")]
    asked = "\n".join(json.dumps(body) for *_, body in server.requests)
    assert not any(question_text(qid) in asked for qid in MISSING)
    report_md = (out / "report.md").read_text()
    assert "Missing videos (1):" in report_md and "zZ9nMissing1.mp4" in report_md
    assert "| videomme | uniform | `videomme` | accuracy | 57.1 |" in report_md
    assert "| medium | 66.7 (3) |" in report_md
    assert (out / plot_filename("videomme")).is_file() and f"({plot_filename('videomme')})" in report_md


def test_rerun_with_another_sampler_skips_done_items(
    qa: VideoQA, server: ScriptedServer, videomme_files: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, videos = videomme_files
    out = tmp_path / "out"
    run_eval(qa, EvalConfig("videomme", annotations, videos, out, samplers=["uniform"], budgets=[2]), progress=False)
    assert len(server.requests) == len(RUNNABLE)  # uniform: one answer turn per item

    entry = run_eval(
        qa, EvalConfig("videomme", annotations, videos, out, samplers=["uniform", "bolt"], budgets=[2]), progress=False
    )
    # Only bolt's items ran (query turn + answer turn each); uniform's were all read back.
    assert len(server.requests) == len(RUNNABLE) + 2 * len(RUNNABLE)
    assert len(read_lines(predictions_path(out, "videomme", "uniform", 2))) == len(RUNNABLE)
    runs = {run["sampler"]: run for run in entry["runs"]}
    assert set(runs) == {"uniform", "bolt"}
    for run in runs.values():  # the replies depend on the question only, so both samplers score the same
        assert run["report"]["overall"] == EXPECTED_OVERALL
        assert breakdown_counts(run["report"]) == EXPECTED_BREAKDOWNS

    before = len(server.requests)
    again = run_eval(
        qa, EvalConfig("videomme", annotations, videos, out, samplers=["uniform", "bolt"], budgets=[2]), progress=False
    )
    assert len(server.requests) == before and again == entry


def test_cli_eval_with_tiny_local_models(
    tiny_qwen_dir: Path, tiny_clip_dir: Path, videomme_files: tuple[Path, Path], tmp_path: Path
) -> None:
    annotations, videos = videomme_files
    out = tmp_path / "out"
    args = [
        "eval", "--benchmark", "videomme", "--annotations", annotations, "--videos", videos,
        "--sampler", "uniform,bolt", "--frames", "2", "--rules", "videomme_lmms_eval", "--mllm", tiny_qwen_dir,
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path / "cache", "--out", out, "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["missing_items"] == MISSING and entry["items"] == len(RUNNABLE)
    assert {(run["sampler"], run["k"]) for run in entry["runs"]} == {("uniform", 2), ("bolt", 2)}
    for run in entry["runs"]:
        lines = read_lines(out / run["predictions"])
        assert sorted(line["id"] for line in lines) == sorted(RUNNABLE)
        assert all(isinstance(line["reply"], str) and len(line["chosen_timestamps"]) <= run["k"] for line in lines)
        # Unparsed replies count as wrong here, so every item is counted in each of its groups.
        report = run["report"]
        assert report["overall"]["total"] == len(RUNNABLE) and report["rules"]["unparsed"] == "wrong"
        assert report["overall"]["correct"] == sum(line["correct"] for line in lines)
        assert breakdown_counts(report) == tally_from_predictions(lines)
        assert sum(total for _, total in breakdown_counts(report)["duration"].values()) == len(RUNNABLE)
    assert (out / plot_filename("videomme")).is_file()
