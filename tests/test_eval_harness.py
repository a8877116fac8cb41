"""The benchmark harness end to end: a LongVideoBench-format annotation file over short generated videos, the
tiny random CLIP, and the scripted chat-completions server as the MLLM, so every reply (and the accuracy) is
chosen by the test."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from _chat_server import Handler, ScriptedServer, completion, status
from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.cache import FeatureCache
from msjoe.cli import EXIT_ITEMS_FAILED, app
from msjoe.data.benchmarks import get_benchmark
from msjoe.distributed import SingleProcess
from msjoe.errors import MsjoeError
from msjoe.eval.failures import SYSTEMATIC_FAILURES, SystematicFailureError
from msjoe.eval.harness import EvalConfig, PredictionLog, predictions_path, run_eval, shard_path
from msjoe.features import DualEncoder
from msjoe.mllm import load_mllm
from msjoe.mllm.errors import BackendHTTPError
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.synthetic_video import write_video

# id -> (video file, correct choice, category, the reply the scripted MLLM gives)
QUESTIONS = {
    "q0": ("v0.mp4", 1, "S2E", "(B)"),  # right
    "q3": ("corrupt.mp4", 0, "O2E", "(A)"),  # the video cannot be read: an error line, counted wrong
    "q1": ("v1.mp4", 0, "T3O", "(C)"),  # wrong
    "q2": ("v0.mp4", 2, "S2E", "(C)"),  # right
    "q4": ("absent.mp4", 3, "S2E", "(D)"),  # the video is not there: listed, never run
}
ANSWER_TURN_MARK = "Answer with the option's letter"


def question_text(question_id: str) -> str:
    return f"Question {question_id}: what colour is the square?"


def scripted_mllm(handler: Handler, body: dict[str, Any]) -> None:
    """Queries for the query turn; for the answer turn, the reply scripted for the question in the prompt."""
    texts = [
        part if isinstance(part, str) else part.get("text", "")
        for message in body["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [message["content"]])
    ]
    prompt = "\n".join(texts)
    if ANSWER_TURN_MARK not in prompt:
        handler.send_json(200, completion("1. a red square\n2. a blue screen"))
        return
    reply = next(reply for qid, (*_, reply) in QUESTIONS.items() if question_text(qid) in prompt)
    handler.send_json(200, completion(reply))


@pytest.fixture(scope="module")
def benchmark_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``lvb_val.json`` with five questions and a video folder (two 2-3 s videos, one corrupt, one absent)."""
    root = tmp_path_factory.mktemp("lvb")
    videos = root / "videos"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"v{i}.mp4", duration=2.0 + i, fps=4.0, size=(64, 48))
    (videos / "corrupt.mp4").write_bytes(b"not a video at all")
    rows = [
        {
            "id": qid,
            "video_id": Path(video).stem,
            "video_path": video,
            "question": question_text(qid),
            "candidates": ["red", "green", "blue", "yellow"],
            "correct_choice": choice,
            "duration": 3.0,
            "duration_group": 15,
            "question_category": category,
        }
        for qid, (video, choice, category, _) in QUESTIONS.items()
    ]
    annotations = root / "lvb_val.json"
    annotations.write_text(json.dumps(rows))
    return annotations, videos


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


@pytest.fixture
def qa(server: ScriptedServer, encoder: DualEncoder, tmp_path: Path) -> VideoQA:
    server.default = scripted_mllm
    mllm = load_mllm(server.url, model="m", timeout=10.0, max_retries=0)
    return VideoQA(encoder, mllm, FeatureCache(tmp_path / "cache"), PipelineConfig())


def config(files: tuple[Path, Path], out: Path, **overrides: Any) -> EvalConfig:
    annotations, videos = files
    settings: dict[str, Any] = {"samplers": ["uniform", "bolt"], "budgets": [2], **overrides}
    return EvalConfig("longvideobench", annotations, videos, out, **settings)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_predictions_and_a_report(qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path):
    out = tmp_path / "out"
    entry = run_eval(qa, config(benchmark_files, out), progress=False)

    # uniform asks once per runnable item, bolt twice (queries, then the answer); the corrupt video asks nothing.
    assert len(server.requests) == 3 * 1 + 3 * 2
    for sampler in ("uniform", "bolt"):
        lines = read_lines(predictions_path(out, "longvideobench", sampler, 2))
        assert [line["id"] for line in lines] == ["q0", "q3", "q1", "q2"]
        by_id = {line["id"]: line for line in lines}
        assert [by_id[q]["correct"] for q in ("q0", "q1", "q2")] == [True, False, True]
        assert by_id["q1"]["letter"] == "C" and by_id["q1"]["scored_letter"] == "C" and by_id["q1"]["answer"] == "A"
        assert by_id["q0"]["reply"] == "(B)" and by_id["q0"]["status"] == "ok"
        assert len(by_id["q0"]["chosen_timestamps"]) == 2 and by_id["q0"]["timings"]["total"] > 0
        assert by_id["q3"]["status"] == "error" and "NotAVideoError" in by_id["q3"]["error"]
        assert by_id["q3"]["reply"] is None and by_id["q3"]["correct"] is False
    bolt = read_lines(predictions_path(out, "longvideobench", "bolt", 2))[0]
    assert bolt["queries"] == ["a red square", "a blue screen"]

    # 2 right of 4 run: the failed item has no reply, which lmms-eval's rule scores as "" (a random option, here
    # the first draw of the seed-0 stream: wrong); the absent video is listed, not counted.
    runs = {run["sampler"]: run for run in entry["runs"]}
    for run in runs.values():
        assert run["report"]["overall"] == {"correct": 2, "total": 4, "accuracy": 0.5}
        assert run["report"]["ids"]["missing_predictions"] == ["q3"]
        assert run["report"]["rules"]["name"] == "longvideobench" and run["report"]["rules"]["missing"] == "as_empty"
        assert run["report"]["headline"] == {"metric": "accuracy", "value": 0.5}
        assert run["errors"] == 1 and run["error_ids"] == ["q3"]
        categories = run["report"]["breakdowns"]["question_category"]
        assert categories["S2E"]["accuracy"] == 1.0 and categories["T3O"]["accuracy"] == 0.0
    assert entry["missing_items"] == ["q4"] and entry["missing_videos"][0].endswith("absent.mp4")
    assert json.loads((out / "scores.json").read_text())["benchmarks"]["longvideobench"] == entry

    report = (out / "report.md").read_text()
    summary_row = next(line for line in report.splitlines() if line.startswith("| longvideobench | uniform"))
    assert summary_row == "| longvideobench | uniform | `longvideobench` | accuracy | 50.0 |"
    assert "absent.mp4" in report and "`q3 (all runs): NotAVideoError" in report
    assert "| S2E | 100.0 (2) | 100.0 (2) |" in report


def test_rerun_skips_finished_items(qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_eval(qa, config(benchmark_files, out), progress=False)
    before = len(server.requests)
    second = run_eval(qa, config(benchmark_files, out), progress=False)
    assert len(server.requests) == before
    assert second == first
    assert len(read_lines(predictions_path(out, "longvideobench", "bolt", 2))) == 4


def test_partial_last_line_is_cut_and_its_item_redone(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    path = predictions_path(out, "longvideobench", "uniform", 2)
    text = path.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[: last_start + 25])  # a crash half-way through writing q2's line
    assert PredictionLog(path).done_ids() == {"q0", "q3", "q1"}
    assert path.read_text() == text[:last_start]  # the partial line is gone from the file

    before = len(server.requests)
    entry = run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    assert len(server.requests) == before + 1  # only q2 asked again
    assert [line["id"] for line in read_lines(path)] == ["q0", "q3", "q1", "q2"]
    assert entry["runs"][0]["report"]["overall"]["correct"] == 2


def test_shards_of_an_interrupted_multi_process_run_are_merged_not_redone(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    reference = run_eval(qa, config(benchmark_files, tmp_path / "reference", samplers=["uniform"]), progress=False)
    lines = read_lines(predictions_path(tmp_path / "reference", "longvideobench", "uniform", 2))
    # A two-process run died after process 0 finished q0 and process 1 finished q3 and half of q2's line.
    out = tmp_path / "out"
    path = predictions_path(out, "longvideobench", "uniform", 2)
    path.parent.mkdir(parents=True)
    (tmp_path / "reference" / "predictions" / "longvideobench" / "uniform_k2.run.json").rename(
        path.with_suffix(".run.json")
    )
    shard_path(path, 0).write_text(json.dumps(lines[0]) + "\n")
    shard_path(path, 1).write_text(json.dumps(lines[1]) + "\n" + json.dumps(lines[3])[:30])

    before = len(server.requests)
    entry = run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    assert len(server.requests) == before + 2  # q1 and q2 only
    assert not list(path.parent.glob("*.rank*.jsonl"))  # the shards were moved into the prediction file
    assert sorted(line["id"] for line in read_lines(path)) == ["q0", "q1", "q2", "q3"]
    assert entry["runs"] == reference["runs"]


def test_whole_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "reply": "A"}\n{"id": "b", "reply": "B"}')  # crash before the newline
    log = PredictionLog(path)
    assert log.done_ids() == {"a", "b"} and path.read_text().endswith('"B"}\n')
    log.append({"id": "c", "reply": "C"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def test_limit_runs_the_first_items(qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    entry = run_eval(qa, config(benchmark_files, out, samplers=["uniform"], limit=2), progress=False)
    assert [line["id"] for line in read_lines(predictions_path(out, "longvideobench", "uniform", 2))] == ["q0", "q3"]
    assert len(server.requests) == 1
    assert entry["items"] == 2 and entry["runs"][0]["report"]["overall"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert "first 2" in (out / "report.md").read_text()


def test_server_failure_stops_the_run_and_a_rerun_resumes(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    server.script.extend([scripted_mllm, status(503, {"error": {"message": "overloaded"}})])
    with pytest.raises(BackendHTTPError):
        run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    path = predictions_path(out, "longvideobench", "uniform", 2)
    assert [line["id"] for line in read_lines(path)] == ["q0", "q3"]  # q1 hit the failure and is not recorded
    before = len(server.requests)
    entry = run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    assert len(server.requests) == before + 2  # q1 and q2
    assert entry["runs"][0]["report"]["overall"]["correct"] == 2


def test_retry_errors_supersedes_the_error_line(qa: VideoQA, benchmark_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False)
    entry = run_eval(qa, config(benchmark_files, out, samplers=["uniform"], retry_errors=True), progress=False)
    ids = [line["id"] for line in read_lines(predictions_path(out, "longvideobench", "uniform", 2))]
    assert ids == ["q0", "q3", "q1", "q2", "q3"]  # tried again (still corrupt), counted once
    assert entry["runs"][0]["errors"] == 1 and entry["runs"][0]["report"]["overall"]["total"] == 4


def test_workers_answer_concurrently_with_the_same_results(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    def slow_scripted(handler: Handler, body: dict[str, Any]) -> None:
        time.sleep(0.2)  # long enough that items answered from several threads overlap at the server
        scripted_mllm(handler, body)

    server.default = slow_scripted
    entry = run_eval(qa, config(benchmark_files, tmp_path / "out", samplers=["bolt"], workers=3), progress=False)
    assert server.max_in_flight >= 2
    lines = read_lines(predictions_path(tmp_path / "out", "longvideobench", "bolt", 2))
    assert sorted(line["id"] for line in lines) == ["q0", "q1", "q2", "q3"]
    assert entry["runs"][0]["report"]["overall"] == {"correct": 2, "total": 4, "accuracy": 0.5}


def test_resuming_with_other_settings_is_refused(qa: VideoQA, benchmark_files, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_eval(qa, config(benchmark_files, out, samplers=["uniform"], run_info={"mllm": "a"}), progress=False)
    with pytest.raises(ValueError, match=r"other settings.*mllm"):
        run_eval(qa, config(benchmark_files, out, samplers=["uniform"], run_info={"mllm": "b"}), progress=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"samplers": ["nope"]}, "unknown sampler 'nope'"),
        ({"samplers": ["usampler"]}, "needs trained weights"),
        ({"budgets": [0]}, "budgets must be positive"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"workers": 0}, "workers must be >= 1"),
        ({"scoring": {"policy": "x"}}, "unknown scoring option 'policy'"),
        ({"scoring": {"rules": "videomme"}}, "unknown rule set 'videomme' for longvideobench"),
    ],
)
def test_config_rejects_bad_settings(benchmark_files, tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config(benchmark_files, tmp_path, **overrides)


def test_cli_eval_end_to_end(server: ScriptedServer, tiny_clip_dir: Path, benchmark_files, tmp_path: Path) -> None:
    server.default = scripted_mllm
    annotations, videos = benchmark_files
    out = tmp_path / "out"
    args = [
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", videos,
        "--sampler", "uniform,bolt", "--frames", "2,3", "--mllm", server.url, "--model", "m",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path / "cache", "--out", out, "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    # The corrupt video's item failed in each of the 4 runs: the report is written, the exit status says so.
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output
    assert "4 item answer(s) failed" in result.stderr and "--retry-errors" in result.stderr
    entry = json.loads(result.stdout)
    assert {(run["sampler"], run["k"]) for run in entry["runs"]} == {("uniform", 2), ("uniform", 3), ("bolt", 2),
                                                                    ("bolt", 3)}  # fmt: skip
    assert all(run["report"]["headline"]["value"] == 0.5 for run in entry["runs"])
    report = (out / "report.md").read_text()
    assert "| longvideobench | bolt | `longvideobench` | accuracy | 50.0 | 50.0 |" in report
    assert len(server.checks) == 1  # the backend was checked once, before the first item

    # Table output, and a rerun asks nothing new (not even the check).
    before = len(server.requests)
    result = CliRunner().invoke(app, [str(a) for a in args[:-1]])
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output
    assert len(server.requests) == before and "50.0" in result.stdout and "report.md" in result.output
    assert len(server.checks) == 1

    # Without failed items (only the first question), the exit status is 0.
    limited = [*args[:-1], "--limit", "1", "--out", tmp_path / "first-item"]
    result = CliRunner().invoke(app, [str(a) for a in limited])
    assert result.exit_code == 0, result.output


def test_cli_eval_with_a_model_the_server_does_not_serve_stops_before_any_item(
    server: ScriptedServer, tiny_clip_dir: Path, benchmark_files, tmp_path: Path
) -> None:
    # What transformers serve answers to every request for another model than the one it was started with.
    server.default = server.check = status(400, {"detail": "Server is pinned to 'served-model'; requested 'typo'."})
    annotations, videos = benchmark_files
    args = [
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", videos,
        "--sampler", "uniform", "--frames", "2", "--mllm", server.url, "--model", "typo", "--max-retries", "0",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "cannot answer a chat with model 'typo'" in message and "pinned to 'served-model'" in message
    assert "the server lists ['served-model']" in message
    assert server.requests == []  # no item was sent
    assert not any(path.read_text() for path in (tmp_path / "out").glob("predictions/*/*.jsonl"))


def test_a_run_whose_first_items_all_fail_alike_stops_without_recording_them(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    # The check (text only) passes, but the server refuses every request with images: a text-only model.
    refuse_images = status(400, {"object": "error", "message": "this model does not accept image inputs"})
    server.default = refuse_images
    annotations, videos = benchmark_files
    loaded = get_benchmark("longvideobench").load(annotations, videos)
    readable = dataclasses.replace(loaded, items=[item for item in loaded.items if item.id != "q3"])
    settings = config(benchmark_files, tmp_path / "out", samplers=["uniform", "bolt"], budgets=[2, 3])
    with pytest.raises(SystematicFailureError, match=rf"first {SYSTEMATIC_FAILURES} items .* image inputs"):
        run_eval(qa, settings, progress=False, loaded=readable)
    assert len(server.requests) == SYSTEMATIC_FAILURES  # stopped there, not after all 12 item answers
    assert not any(path.read_text() for path in (tmp_path / "out").glob("predictions/*/*.jsonl"))

    # Fixed server: the rerun asks every item again, the failed ones included (uniform: 3 items x 2 budgets x 1
    # request; bolt: x 2 requests), and none is an error.
    server.default = scripted_mllm
    entry = run_eval(qa, settings, progress=False, loaded=readable)
    assert len(server.requests) == SYSTEMATIC_FAILURES + 6 + 12
    assert all(run["errors"] == 0 and run["report"]["overall"]["total"] == 3 for run in entry["runs"])


def test_items_failing_alike_after_a_success_are_ordinary_failures(
    qa: VideoQA, server: ScriptedServer, benchmark_files, tmp_path: Path
) -> None:
    server.script.append(scripted_mllm)  # q0 answered; every later request refused the same way
    server.default = status(400, {"object": "error", "message": "too many images"})
    annotations, videos = benchmark_files
    loaded = get_benchmark("longvideobench").load(annotations, videos)
    readable = dataclasses.replace(loaded, items=[item for item in loaded.items if item.id != "q3"])
    settings = config(benchmark_files, tmp_path / "out", samplers=["uniform"], budgets=[2, 3, 4])
    entry = run_eval(qa, settings, progress=False, loaded=readable)
    assert [run["errors"] for run in entry["runs"]] == [2, 3, 3]  # 8 alike failures, but not from the start


@pytest.mark.slow
def test_cli_eval_on_two_processes_splits_the_items(
    server: ScriptedServer, tiny_clip_dir: Path, benchmark_files, tmp_path: Path
) -> None:
    server.default = scripted_mllm
    annotations, videos = benchmark_files
    out = tmp_path / "out"
    args = [
        "eval", "--benchmark", "longvideobench", "--annotations", annotations, "--videos", videos,
        "--sampler", "uniform,bolt", "--frames", "2", "--mllm", server.url, "--model", "m",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path / "cache", "--out", out, "--json",
    ]  # fmt: skip
    command = [*TWO_PROCESSES, "-m", "msjoe", *map(str, args)]
    result = subprocess.run(command, env=two_process_env(), capture_output=True, text=True, timeout=300)
    # The corrupt video's item failed: the main process ends with EXIT_ITEMS_FAILED, which torchrun reports as a
    # failed child (its own status is 1).
    assert result.returncode != 0 and f"exitcode  : {EXIT_ITEMS_FAILED}" in result.stderr, result.stderr[-4000:]
    assert "2 item answer(s) failed" in result.stderr
    # Every item asked once in all (uniform: the answer; bolt: queries and answer), not once per process.
    assert len(server.requests) == 3 * 1 + 3 * 2
    entry = json.loads(result.stdout)  # printed by the main process only
    for run in entry["runs"]:
        assert run["report"]["overall"] == {"correct": 2, "total": 4, "accuracy": 0.5}
        assert run["error_ids"] == ["q3"]
        lines = read_lines(out / run["predictions"])
        assert sorted(line["id"] for line in lines) == ["q0", "q1", "q2", "q3"]
    assert not list(out.glob("predictions/*/*.rank*.jsonl"))  # the shards were merged
    assert (out / "report.md").exists()


def test_cli_eval_rejects_workers_with_a_local_model(tmp_path: Path) -> None:
    args = ["eval", "--benchmark", "longvideobench", "--annotations", tmp_path, "--mllm", "some/local-model"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--workers", "2", "--out", tmp_path]])
    assert result.exit_code == 1 and "--workers" in result.output


def test_answers_that_never_reach_the_prediction_file_stop_the_scoring(
    qa: VideoQA, benchmark_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process 0 of two writes its share into a shard file; were --out a per-node disk, the main process could not
    # merge it (simulated: merging finds nothing) and would score those items as missing. It must say so instead.
    import msjoe.eval.harness as harness

    monkeypatch.setattr(harness, "merge_shards", lambda log: 0)
    process_0_of_2 = SingleProcess(num_processes=2, process_index=0, is_main_process=True)
    out = tmp_path / "out"
    with pytest.raises(MsjoeError, match=r"process 0 answered \d+ uniform K=2 items that are not in .*file system"):
        run_eval(qa, config(benchmark_files, out, samplers=["uniform"]), progress=False, processes=process_0_of_2)
    shard = shard_path(predictions_path(out, "longvideobench", "uniform", 2), 0)
    assert read_lines(shard)  # the answers are kept in the shard for a rerun to merge
    assert not (out / "scores.json").exists()  # nothing was scored from incomplete predictions
