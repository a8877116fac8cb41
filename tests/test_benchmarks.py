"""Benchmark loaders on small annotation files in each benchmark's released format (with a malformed row and a
missing video each), and scores checked against hand-computed accuracies (rule sets in detail: test_rules.py)."""

import json
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from msjoe.data.benchmarks import available_benchmarks, get_benchmark, longvideobench, lvbench, mlvu, videomme
from msjoe.data.benchmarks.base import resolve_annotations
from msjoe.data.schema import QAItem
from msjoe.eval.predictions import read_predictions
from msjoe.synthetic_video import write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One tiny real video (1 s, 64x48); tests copy it under the names their annotations expect."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", duration=1.0, fps=4.0, size=(64, 48))


def place(clip: Path, folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, folder / name)
    return folder


def acc(report, *path):
    node = report
    for key in path:
        node = node[key]
    return node["correct"], node["total"]


# --------------------------------------------------------------------------------------------------------------
# Registry and annotation lookup
# --------------------------------------------------------------------------------------------------------------
def test_registry_lists_the_four_benchmarks():
    assert available_benchmarks() == ["longvideobench", "lvbench", "mlvu", "videomme"]
    spec = get_benchmark("videomme")
    assert spec.load is videomme.load and spec.score is videomme.score
    assert spec.hf_dataset_id == "lmms-lab/Video-MME"
    with pytest.raises(ValueError, match="unknown benchmark 'mvbench'; choose one of: longvideobench, lvbench"):
        get_benchmark("mvbench")


class NotFoundHub(BaseHTTPRequestHandler):
    """A hub on 127.0.0.1 that knows no repository: every request gets 404."""

    def do_GET(self) -> None:  # the names http.server dispatches requests to
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in ``tmp_path``, hub calls allowed (HF_HUB_OFFLINE unset)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def answering_hub(monkeypatch) -> Iterator[str]:
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    yield url
    server.shutdown()
    server.server_close()


def cache_dataset(cache: Path, repo_id: str, files: dict[str, str]) -> Path:
    """``repo_id``'s snapshot at branch main in the hub-cache layout, as snapshot_download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / ("datasets--" + repo_id.replace("/", "--")) / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_ids_are_fetched_with_the_annotation_patterns_only(hub_cache, answering_hub, monkeypatch):
    import huggingface_hub

    calls = []

    def recording_snapshot_download(**kwargs):  # records what would be downloaded: no hub with data here
        calls.append(kwargs)
        return str(hub_cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording_snapshot_download)
    assert resolve_annotations("zai-org/LVBench", hf_patterns=lvbench.HF_PATTERNS) == hub_cache
    assert calls == [
        {
            "repo_id": "zai-org/LVBench",
            "repo_type": "dataset",
            "allow_patterns": ["video_info.meta.jsonl"],
            "local_files_only": False,  # the hub answered
        }
    ]


def test_a_hub_that_does_not_know_the_id_and_missing_files_raise_file_not_found(tmp_path, hub_cache, answering_hub):
    with pytest.raises(FileNotFoundError, match=r"fetching it as a Hugging Face dataset failed: .*404 Not Found"):
        videomme.load("lmms-lab/Video-MME", None)
    with pytest.raises(FileNotFoundError, match="annotation file or folder not found"):
        lvbench.load(tmp_path / "nowhere" / "video_info.meta.jsonl", None)  # a path, never sent to the Hub
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        lvbench.load(write_lvbench(tmp_path), tmp_path / "no-videos")


def test_without_a_hub_a_cached_dataset_loads_and_an_uncached_one_fails_at_once(tmp_path, hub_cache, monkeypatch):
    """No retries against an unreachable hub: the cache answers alone (without the probe this took about a minute)."""
    from huggingface_hub import constants

    with socket.socket() as probe:  # a port where nothing listens: connections are refused
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{probe.getsockname()[1]}")
    rows = write_lvbench(tmp_path).read_text()
    snapshot = cache_dataset(hub_cache, "zai-org/LVBench", {"video_info.meta.jsonl": rows})

    start = time.monotonic()
    assert resolve_annotations("zai-org/LVBench", hf_patterns=lvbench.HF_PATTERNS) == snapshot
    with pytest.raises(FileNotFoundError, match=r"'lmms-lab/Video-MME' is not a local path nor a dataset in the local"):
        videomme.load("lmms-lab/Video-MME", None)
    assert time.monotonic() - start < 20  # a generous bound: huggingface_hub's retries took about a minute
    with pytest.raises(FileNotFoundError, match=rf"the hub {constants.ENDPOINT} is unreachable \(ConnectError"):
        videomme.load("lmms-lab/Video-MME", None)


# --------------------------------------------------------------------------------------------------------------
# Video-MME
# --------------------------------------------------------------------------------------------------------------
def videomme_row(
    qid,
    video_id,
    answer,
    duration="short",
    domain="Knowledge",
    sub="Humanity & History",
    task="Counting Problem",
    options=None,
):
    return {
        "video_id": qid.split("-")[0],
        "duration": duration,
        "domain": domain,
        "sub_category": sub,
        "url": f"https://www.youtube.com/watch?v={video_id}",
        "videoID": video_id,
        "question_id": qid,
        "task_type": task,
        "question": f"Question {qid}?",
        "options": options if options is not None else ["A. Three.", "B. Two.", "C. One.", "D. Four."],
        "answer": answer,
    }


def write_videomme(folder: Path) -> Path:
    rows = [
        videomme_row("001-1", "fFjv93ACGo8", "A"),
        videomme_row("001-2", "fFjv93ACGo8", "D", task="OCR Problems"),
        videomme_row("002-1", "JdlO6vFWXaY", "B", duration="medium", domain="Sports Competition", sub="Basketball"),
        videomme_row("003-1", "missingVid1", "C", duration="long"),  # its video is not downloaded
        videomme_row("004-1", "fFjv93ACGo8", "E"),  # malformed: only four options
    ]
    path = folder / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_videomme_loader(tmp_path, clip):
    annotations = write_videomme(tmp_path / "ann")
    videos = place(clip, tmp_path / "data", "fFjv93ACGo8.mp4", "JdlO6vFWXaY.mkv")
    result = videomme.load(tmp_path / "ann", videos)  # the folder is searched for the parquet file
    assert [item.id for item in result.items] == ["001-1", "001-2", "002-1"]
    first = result.items[0]
    assert first == QAItem(
        id="001-1",
        video=str(videos / "fFjv93ACGo8.mp4"),
        question="Question 001-1?",
        options=("Three.", "Two.", "One.", "Four."),
        answer="A",
        source="videomme",
        task="Counting Problem",
        categories={
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "task_type": "Counting Problem",
        },
        meta={"videoID": "fFjv93ACGo8", "video_id": "001", "url": "https://www.youtube.com/watch?v=fFjv93ACGo8"},
    )
    assert result.items[2].video == str(videos / "JdlO6vFWXaY.mkv")
    assert [item.id for item in result.missing] == ["003-1"]
    assert result.missing_videos == [str(videos / "missingVid1.mp4")]
    assert len(result.skipped) == 1
    assert result.skipped[0].location == f"{annotations.name}[4]"
    assert "field 'answer'" in result.skipped[0].reason
    summary = result.summary()
    assert (summary["items"], summary["missing_items"], len(summary["skipped_rows"])) == (3, 1, 1)
    # without a video folder nothing is checked: every well-formed row is an item
    assert len(videomme.load(annotations, None).items) == 4


def videomme_items() -> list[QAItem]:
    def item(qid, answer, duration, domain, task):
        return QAItem(
            qid,
            f"{qid}.mp4",
            "q?",
            ("w", "x", "y", "z"),
            answer,
            source="videomme",
            categories={"duration": duration, "domain": domain, "sub_category": "Football", "task_type": task},
        )

    return [
        item("q1", "A", "short", "Knowledge", "Counting Problem"),
        item("q2", "B", "short", "Knowledge", "OCR Problems"),
        item("q3", "D", "medium", "Sports Competition", "Counting Problem"),
        item("q4", "C", "long", "Sports Competition", "OCR Problems"),
        item("q5", "B", "long", "Knowledge", "Counting Problem"),
        item("q6", "A", "medium", "Knowledge", "OCR Problems"),
    ]


VIDEOMME_REPLIES = {
    "q1": "A",  # right
    "q2": "The best answer is C.",  # wrong
    "q3": "The answer is D",  # right
    "q4": "I cannot tell from these frames.",  # unparsed
    "q5": "Based on the video, the answer is C",  # "B" of "Based": right by the official rule
}  # q6 has no prediction


def test_videomme_official_scoring():
    items = videomme_items()
    report = videomme.score(items, VIDEOMME_REPLIES)
    # official: the unparsed q4 and the reply-less q6 (scored as "") leave the denominators; right q1 q3 q5
    assert acc(report, "overall") == (3, 4) and report["headline"] == {"metric": "accuracy", "value": 0.75}
    assert list(report["breakdowns"]["duration"]) == ["short", "medium", "long"]
    assert acc(report, "breakdowns", "duration", "short") == (1, 2)
    assert acc(report, "breakdowns", "duration", "medium") == (1, 1)
    assert acc(report, "breakdowns", "duration", "long") == (1, 1)
    assert acc(report, "breakdowns", "domain", "Knowledge") == (2, 3)
    assert acc(report, "breakdowns", "domain", "Sports Competition") == (1, 1)
    assert acc(report, "breakdowns", "task_type", "Counting Problem") == (3, 3)
    assert acc(report, "breakdowns", "task_type", "OCR Problems") == (0, 1)
    assert report["counts"] == {
        "items": 6,
        "counted": 4,
        "unparsed": 1,
        "random_fallback": 0,
        "missing_predictions": 1,
        "unknown_prediction_ids": 0,
    }
    assert report["ids"]["unparsed"] == ["q4"] and report["ids"]["missing_predictions"] == ["q6"]
    assert (report["rules"]["name"], report["rules"]["unparsed"], report["rules"]["missing"]) == (
        "videomme",
        "exclude",
        "as_empty",
    )
    json.dumps(report)  # the report is JSON-serialisable

    lmms_eval = videomme.score(items, VIDEOMME_REPLIES, rules="videomme_lmms_eval")
    assert acc(lmms_eval, "overall") == (2, 6)  # every item counts; q5 reads C after "the answer is"
    ours = videomme.score(items, VIDEOMME_REPLIES, rules="msjoe")
    assert acc(ours, "overall") == (2, 6)  # q5 reads as C: wrong; q4 and q6 count as wrong


def test_videomme_official_results_file_is_read(tmp_path):
    results = [
        {"video_id": "001", "duration_category": "short", "video_category": "Knowledge",
         "video_subcategory": "Humanity & History",
         "questions": [{"question_id": "q1", "task_type": "Counting Problem", "question": "?", "choices": [],
                        "answer": "A", "response": "A"},
                       {"question_id": "q2", "task_type": "OCR Problems", "question": "?", "choices": [],
                        "answer": "B", "response": "The best answer is C."}]},
    ]  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert read_predictions(path) == {"q1": "A", "q2": "The best answer is C."}


# --------------------------------------------------------------------------------------------------------------
# LongVideoBench
# --------------------------------------------------------------------------------------------------------------
def lvb_row(qid, video_id, choice, candidates, group, category, duration):
    return {
        "video_id": video_id,
        "question": f"In the scene where the man waves, {qid}?",
        "question_wo_referring_query": f"{qid}?",
        "candidates": candidates,
        "correct_choice": choice,
        "position": [120, 240],
        "topic_category": "NP-News-Programs",
        "question_category": category,
        "level": "L2-Relation",
        "id": qid,
        "video_path": f"{video_id}.mp4",
        "subtitle_path": f"{video_id}_en.json",
        "duration_group": group,
        "starting_timestamp_for_subtitles": 0,
        "duration": duration,
        "view_count": 1234,
    }


FIVE = ["a cat", "a dog", "a fox", "a cow", "a hen"]


def write_lvb(folder: Path) -> Path:
    rows = [
        lvb_row("86CxyhFV9MI_0", "86CxyhFV9MI", 1, FIVE, 600, "S2E", 301.2),
        lvb_row("86CxyhFV9MI_1", "86CxyhFV9MI", 4, FIVE, 600, "T3O", 301.2),
        lvb_row("Xq0jYhbvfr4_0", "Xq0jYhbvfr4", 0, FIVE[:4], 15, "S2E", 12.0),
        lvb_row("missing_0", "missing", 2, FIVE[:4], 3600, "T3O", 3000.0),  # video not downloaded
        lvb_row("bad_0", "Xq0jYhbvfr4", 4, FIVE[:4], 15, "S2E", 12.0),  # malformed: choice 4 of 4 options
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lvb_val.json"
    path.write_text(json.dumps(rows))
    return path


def test_longvideobench_loader(tmp_path, clip):
    write_lvb(tmp_path / "LongVideoBench")
    videos = place(clip, tmp_path / "videos", "86CxyhFV9MI.mp4", "Xq0jYhbvfr4.mp4")
    result = longvideobench.load(tmp_path / "LongVideoBench", videos)
    assert [item.id for item in result.items] == ["86CxyhFV9MI_0", "86CxyhFV9MI_1", "Xq0jYhbvfr4_0"]
    first = result.items[0]
    assert first.options == tuple(FIVE) and first.answer == "B" and result.items[1].answer == "E"
    assert first.video == str(videos / "86CxyhFV9MI.mp4") and first.duration == 301.2
    assert first.question == "In the scene where the man waves, 86CxyhFV9MI_0?"
    assert first.categories == {"duration_group": "600", "question_category": "S2E"}
    assert first.meta["subtitle_path"] == "86CxyhFV9MI_en.json" and first.meta["level"] == "L2-Relation"
    assert result.missing_videos == [str(videos / "missing.mp4")]
    assert [(row.location, row.reason) for row in result.skipped] == [
        ("lvb_val.json[4]", "field 'correct_choice' must be in 0..3, got 4")
    ]


def test_longvideobench_parquet_layout_and_test_split(tmp_path):
    rows = [
        {"video_id": "v1", "id": "v1_0", "video_path": "v1.mp4", "subtitle_path": "v1_en.json", "correct_choice": 2,
         "question": "What?", "option0": "red", "option1": "blue", "option2": "green", "option3": "pink",
         "option4": "N/A", "duration": 20.0, "duration_group": 60, "question_category": "E2O",
         "topic_category": "T", "starting_timestamp_for_subtitles": 0.0},
        {"video_id": "v2", "id": "v2_0", "video_path": "v2.mp4", "subtitle_path": "v2_en.json",
         "correct_choice": None, "question": "Who?", "option0": "x", "option1": "y", "option2": "N/A",
         "option3": "N/A", "option4": "N/A", "duration": 9.0, "duration_group": 15, "question_category": "O3O",
         "topic_category": "T", "starting_timestamp_for_subtitles": 0.0},
    ]  # fmt: skip
    path = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    items = longvideobench.load(path, None).items
    assert items[0].options == ("red", "blue", "green", "pink") and items[0].answer == "C"
    assert items[1].options == ("x", "y") and items[1].answer is None  # no ground truth: test split
    with pytest.raises(ValueError, match="1 items have no ground-truth answer"):
        longvideobench.score(items, {"v1_0": "C", "v2_0": "A"})


OPTIONS = ["a red umbrella", "a blue hat", "a green bag", "a yellow coat"]


def lvb_items() -> list[QAItem]:
    def item(qid, answer, group, category):
        return QAItem(
            qid,
            "v.mp4",
            "q?",
            tuple(OPTIONS),
            answer,
            source="longvideobench",
            categories={"duration_group": group, "question_category": category},
        )

    return [
        item("a", "A", "15", "S2E"),
        item("b", "B", "15", "T3O"),
        item("c", "C", "600", "S2E"),
        item("d", "D", "600", "T3O"),
        item("e", "B", "3600", "S2E"),
    ]


LVB_REPLIES = {
    "a": "(A)",  # right
    "b": "The answer is (C).",  # wrong
    "c": "C",  # right
    "d": "I am not sure.",  # unparsed: random fallback
    "e": "Hmm.",  # unparsed: random fallback
}


def test_longvideobench_scoring_with_seeded_random_fallback():
    items = lvb_items()
    report = longvideobench.score(items, LVB_REPLIES, seed=3)
    assert report["rules"]["name"] == "longvideobench" and report["rules"]["seed"] == 3
    assert report["ids"]["random_fallback"] == ["d", "e"] and report["counts"]["random_fallback"] == 2
    chosen = {record["id"]: record["chosen"] for record in report["items"]}
    draws = random.Random(3)  # lmms-eval: random.seed(seed), then one random.choice per unread reply, in order
    assert (chosen["d"], chosen["e"]) == (draws.choice("ABCD"), draws.choice("ABCD"))
    luck = {"d": chosen["d"] == "D", "e": chosen["e"] == "B"}
    assert acc(report, "overall") == (2 + luck["d"] + luck["e"], 5)
    assert acc(report, "breakdowns", "duration_group", "15") == (1, 2)
    assert acc(report, "breakdowns", "duration_group", "600") == (1 + luck["d"], 2)
    assert acc(report, "breakdowns", "duration_group", "3600") == (int(luck["e"]), 1)
    assert acc(report, "breakdowns", "question_category", "S2E") == (2 + luck["e"], 3)
    assert acc(report, "breakdowns", "question_category", "T3O") == (int(luck["d"]), 2)
    assert longvideobench.score(items, LVB_REPLIES, seed=3) == report  # reproducible

    strict = longvideobench.score(items, LVB_REPLIES, rules="msjoe")
    assert acc(strict, "overall") == (2, 5) and strict["ids"]["unparsed"] == ["d", "e"]
    assert strict["rules"]["seed"] is None


# --------------------------------------------------------------------------------------------------------------
# LVBench
# --------------------------------------------------------------------------------------------------------------
def lvbench_question(uid, answer, types, reference="00:10-00:15"):
    return {
        "uid": uid,
        "question": f"What happens at {uid}?\n(A) a goal\n(B) a foul\n(C) a corner\n(D) a throw-in",
        "answer": answer,
        "question_type": types,
        "time_reference": reference,
    }


def write_lvbench(folder: Path) -> Path:
    present = {
        "key": "ZUHgm0uW8tA",
        "type": "sport",
        "video_info": {"duration_minutes": 62.5, "fps": 30.0, "resolution": {"width": 640, "height": 360}},
        "qa": [
            lvbench_question(1, "A", ["entity recognition", "reasoning"]),
            lvbench_question(2, "B", ["temporal grounding"], "1:02:03-1:02:10"),
            lvbench_question(3, "C", ["reasoning"], "soon"),
            {"uid": 4, "question": "No options here?", "answer": "A", "question_type": ["reasoning"]},  # malformed
        ],
    }
    absent = {
        "key": "absentVideo",
        "type": "cartoon",
        "video_info": {"duration_minutes": 90},
        "qa": [lvbench_question(5, "D", ["entity recognition"])],
    }
    lines = [json.dumps(present), '{"key": "broken", "qa": [', json.dumps(absent)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "video_info.meta.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lvbench_loader(tmp_path, clip):
    write_lvbench(tmp_path / "data")
    videos = place(clip, tmp_path / "videos", "ZUHgm0uW8tA.mp4")
    result = lvbench.load(tmp_path, videos)  # found recursively
    assert [item.id for item in result.items] == ["1", "2", "3"]
    first = result.items[0]
    assert first.question == "What happens at 1?"
    assert first.options == ("a goal", "a foul", "a corner", "a throw-in")
    assert first.video == str(videos / "ZUHgm0uW8tA.mp4") and first.duration == 3750.0
    assert first.categories == {"question_type": ("entity recognition", "reasoning"), "video_type": "sport"}
    assert first.task == "entity recognition" and first.evidence == ((10.0, 15.0),)
    assert result.items[1].evidence == ((3723.0, 3730.0),)
    assert result.items[2].evidence == () and result.items[2].meta["time_reference"] == "soon"
    assert [item.id for item in result.missing] == ["5"] and result.missing[0].duration == 5400.0
    assert result.missing_videos == [str(videos / "absentVideo.mp4")]
    reasons = {row.location: row.reason for row in result.skipped}
    assert set(reasons) == {"video_info.meta.jsonl:1 qa[3]", "video_info.meta.jsonl:2"}
    assert "fewer than two inline options" in reasons["video_info.meta.jsonl:1 qa[3]"]
    assert reasons["video_info.meta.jsonl:2"].startswith("invalid JSON")


def test_lvbench_inline_options_on_one_line():
    stem, options = lvbench.split_inline_options("Which? (A) red (B) blue (C) a (D) word")
    assert stem == "Which?" and options == ["red", "blue", "a", "word"]


def test_lvbench_scoring_counts_multi_type_questions_in_each_type(tmp_path):
    result = lvbench.load(write_lvbench(tmp_path), None)
    items = result.items  # uids 1..3 and 5 (no video folder: nothing is missing)
    answers = {"1": "(A) a goal", "2": "I choose B", "3": "C", "5": "D."}
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(answers))  # LVBench's answer-file layout: {uid: reply}
    report = lvbench.score(items, read_predictions(path))
    # "I choose B" reads as "I" under polish_answer: uid 2 is wrong; the others are right
    assert acc(report, "overall") == (3, 4)
    types = report["breakdowns"]["question_type"]
    assert list(types) == ["entity recognition", "temporal grounding", "reasoning"]  # leaderboard order
    assert acc(types, "entity recognition") == (2, 2)  # uids 1 and 5
    assert acc(types, "reasoning") == (2, 2)  # uids 1 and 3
    assert acc(types, "temporal grounding") == (0, 1)
    assert sum(t["total"] for t in types.values()) == 5  # uid 1 counts in two types
    assert report["leaderboard"] == {"ER": 1.0, "TG": 0.0, "Rea": 1.0, "Overall": 0.75}

    official_skip = lvbench.score(items, {"1": "A", "3": "B"})  # compute_accuracy skips absent uids
    assert acc(official_skip, "overall") == (1, 2) and official_skip["ids"]["missing_predictions"] == ["2", "5"]
    lmms_eval = lvbench.score(items, answers, rules="lvbench_lmms_eval")
    assert acc(lmms_eval, "overall") == (4, 4)  # lmms-eval reads the "B" after "I choose"


# --------------------------------------------------------------------------------------------------------------
# MLVU
# --------------------------------------------------------------------------------------------------------------
def mlvu_row(video, answer, candidates, task, duration=246):
    return {
        "video": video,
        "duration": duration,
        "question": f"About {video}?",
        "candidates": candidates,
        "answer": answer,
        "question_type": task,
    }


def write_mlvu(folder: Path) -> Path:
    json_dir = folder / "MLVU" / "json"
    json_dir.mkdir(parents=True)
    colours = ["Yellow", "Red", "Green", "Blue"]
    plot = [
        mlvu_row("movie101_66.mp4", "Yellow", colours, "plotQA"),
        mlvu_row("movie101_66.mp4", "Green", colours, "plotQA"),
        mlvu_row("movie101_67.mp4", "Purple", colours, "plotQA"),  # malformed: answer not a candidate
    ]
    needle = [
        mlvu_row("needle_32.mp4", "Delivers a product", ["Shakes a hand", "Delivers a product"], "findNeedle"),
        mlvu_row("needle_33.mp4", "Waves", ["Waves", "Runs"], "findNeedle"),  # video not downloaded
    ]
    summary = [
        {
            "video": "summary_1.mp4",
            "duration": 600,
            "question": "Summarize.",
            "answer": "A long story.",
            "question_type": "summary",
        }
    ]
    (json_dir / "1_plotQA.json").write_text(json.dumps(plot))
    (json_dir / "2_needle.json").write_text(json.dumps(needle))
    (json_dir / "9_summary.json").write_text(json.dumps(summary))
    return json_dir


def test_mlvu_loader(tmp_path, clip):
    write_mlvu(tmp_path / "ann")
    # the Hugging Face layout (video/<json stem>/) for plotQA, the older one (video/<task>/) for needle
    videos = place(clip, tmp_path / "video", "1_plotQA/movie101_66.mp4", "needle/needle_32.mp4")
    result = mlvu.load(tmp_path / "ann", videos)
    assert [item.id for item in result.items] == [
        "1_plotQA/movie101_66_0",
        "1_plotQA/movie101_66_1",
        "2_needle/needle_32_0",
    ]
    first, second, needle = result.items
    assert first.answer == "A" and second.answer == "C" and needle.answer == "B"
    assert first.options == ("Yellow", "Red", "Green", "Blue") and first.duration == 246.0
    assert first.video == str(videos / "1_plotQA" / "movie101_66.mp4")
    assert needle.video == str(videos / "needle" / "needle_32.mp4")
    assert first.categories == {"task": "plotQA"} and needle.task == "findNeedle"
    assert result.missing_videos == [str(videos / "2_needle" / "needle_33.mp4")]
    reasons = {row.location: row.reason for row in result.skipped}
    assert reasons == {
        "1_plotQA.json[2]": "field 'answer' 'Purple' is not one of the candidates; still scored by choice_bench.py",
        "9_summary.json": "no row has 'candidates': an open-ended generation task, not scored by M-Avg",
    }


def test_mlvu_m_avg_is_the_mean_of_per_task_accuracies(tmp_path):
    result = mlvu.load(write_mlvu(tmp_path), None)
    items = result.items  # plotQA x2, findNeedle x2
    replies = {
        "1_plotQA/movie101_66_0": "A) Yellow",  # right
        "1_plotQA/movie101_66_1": "C. Green",  # right letter, but MLVU's rule compares the whole reply
        "2_needle/needle_32_0": "B) Delivers a product",  # right
        "2_needle/needle_33_0": "A",  # right
    }
    report = mlvu.score(items, replies)
    assert acc(report, "breakdowns", "task", "plotQA") == (1, 2)
    assert acc(report, "breakdowns", "task", "findNeedle") == (2, 2)
    assert report["m_avg"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["headline"] == {"metric": "m_avg", "value": report["m_avg"]}
    assert report["overall"]["accuracy"] == pytest.approx(3 / 4)  # the micro average differs from M-Avg
    assert result.unrunnable[0].answer == "@"  # Purple is no candidate: choice_bench.py's letter "@"
    with_row = mlvu.score(items, replies, unrunnable=result.unrunnable)  # scored, and wrong, as officially
    assert acc(with_row, "breakdowns", "task", "plotQA") == (1, 3)
    lenient = mlvu.score(items, replies, rules="msjoe")
    assert lenient["m_avg"] == 1.0


# --------------------------------------------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------------------------------------------
def test_read_predictions_jsonl_and_errors(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text('{"id": "a", "reply": "B"}\n\n{"id": 7, "reply": "(C)"}\n')
    assert read_predictions(path) == {"a": "B", "7": "(C)"}
    # The harness's error lines (pipeline failed, no reply) are skipped, also when a retry answered the item.
    path.write_text(
        '{"id": "a", "reply": null, "status": "error"}\n{"id": "b", "reply": "A"}\n{"id": "a", "reply": "C"}\n'
    )
    assert read_predictions(path) == {"b": "A", "a": "C"}
    path.write_text('{"id": "a", "reply": "B"}\n{"id": "a", "reply": "C"}\n')
    with pytest.raises(ValueError, match=r"preds.jsonl:2: duplicate id 'a'"):
        read_predictions(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"preds.jsonl:1: field 'reply' is required"):
        read_predictions(path)
    mapping = tmp_path / "answers.json"
    mapping.write_text('{"1": ["A"]}')
    with pytest.raises(ValueError, match="the reply for id '1' must be a string"):
        read_predictions(mapping)


def test_unknown_prediction_ids_are_counted():
    report = lvbench.score(
        [QAItem("1", "v.mp4", "q?", ("x", "y"), "A", categories={"question_type": ["reasoning"]})],
        {"1": "A", "999": "B"},
    )
    assert report["counts"]["unknown_prediction_ids"] == 1 and report["ids"]["unknown_predictions"] == ["999"]
