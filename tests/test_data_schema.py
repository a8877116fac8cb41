"""The QA schema: validation of every field, JSONL round trips, precise errors (line + field), atomic writes."""

import json
import re
from pathlib import Path

import pytest

from msjoe.data.schema import FIELDS, QAFormatError, QAItem, read_qa_jsonl, write_qa_jsonl


def record(**overrides):
    base = {
        "id": "q1",
        "video": "videos/a.mp4",
        "question": "What colour is the car?",
        "options": ["red", "blue", "green"],
        "answer": "B",
    }
    base.update(overrides)
    return base


def full_item() -> QAItem:
    return QAItem(
        id="q7",
        video="/data/v/b.mp4",
        question="Which event comes first?",
        options=("a goal", "a foul", "a corner", "a throw-in"),
        answer="C",
        duration=3600.5,
        source="lvbench",
        task="reasoning",
        categories={"question_type": ["reasoning", "temporal grounding"], "video_type": "sport"},
        difficulty=0.25,
        evidence=[(10, 12.5), (30.0, 31.0)],
        meta={"key": "abc", "time_reference": "00:10-00:12"},
    )


# --- the item ------------------------------------------------------------------------------------------------
def test_item_normalises_containers_and_derives_letters():
    item = full_item()
    assert item.options == ("a goal", "a foul", "a corner", "a throw-in")
    assert item.categories["question_type"] == ("reasoning", "temporal grounding")
    assert item.evidence == ((10.0, 12.5), (30.0, 31.0))
    assert item.letters == ["A", "B", "C", "D"]
    assert item.answer_text == "a corner"
    assert QAItem.from_dict(item.to_dict()) == item
    assert list(item.to_dict()) == list(FIELDS)


def test_items_are_hashable_and_compare_by_value():
    item = full_item()
    assert len({item, QAItem.from_dict(item.to_dict())}) == 1
    assert item != QAItem.from_dict({**item.to_dict(), "difficulty": 0.5})


def test_answer_may_be_null_for_splits_without_ground_truth():
    item = QAItem.from_dict(record(answer=None))
    assert item.answer is None and item.answer_text is None


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"answer": "D"}, "answer", "one of the option letters A, B, C"),
        ({"answer": "b"}, "answer", "one of the option letters"),
        ({"options": "red, blue"}, "options", "list of strings"),
        ({"options": ["only one"]}, "options", "2 to 26 options"),
        ({"options": ["red", ""]}, "options", "option 1 is empty"),
        ({"options": ["red", 3]}, "options", "option 1 must be a string"),
        ({"id": ""}, "id", "must not be empty"),
        ({"id": 5}, "id", "must be a string"),
        ({"question": "  "}, "question", "must not be empty"),
        ({"duration": -1}, "duration", ">= 0"),
        ({"duration": True}, "duration", "must be a number"),
        ({"duration": float("nan")}, "duration", "finite"),
        ({"difficulty": 1.5}, "difficulty", "in [0, 1]"),
        ({"evidence": [[5, 2]]}, "evidence", "ends before it starts"),
        ({"evidence": [[1, 2, 3]]}, "evidence", "[start, end]"),
        ({"categories": {"task": ""}}, "categories", "'task' must be a non-empty string"),
        ({"categories": ["a"]}, "categories", "must be an object"),
        ({"meta": []}, "meta", "must be an object"),
        ({"optoins": ["x", "y"]}, "optoins", "unknown field"),
    ],
)
def test_invalid_records_name_the_field(changes, field, message):
    with pytest.raises(QAFormatError, match=re.escape(message)) as info:
        QAItem.from_dict(record(**changes))
    assert info.value.field == field


@pytest.mark.parametrize("name", ["id", "video", "question", "options", "answer"])
def test_required_fields(name):
    data = record()
    del data[name]
    with pytest.raises(QAFormatError, match="is required") as info:
        QAItem.from_dict(data)
    assert info.value.field == name


# --- JSONL ---------------------------------------------------------------------------------------------------
def test_jsonl_round_trip_resolves_relative_videos_against_the_file(tmp_path):
    items = [QAItem.from_dict(record()), full_item()]
    path = write_qa_jsonl(tmp_path / "sub" / "qa.jsonl", items)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["video"] == "videos/a.mp4"
    back = read_qa_jsonl(path)
    assert back[0].video == str(tmp_path / "sub" / "videos" / "a.mp4")
    assert back[1] == items[1]  # absolute paths are kept
    assert read_qa_jsonl(path, video_root=tmp_path / "elsewhere")[0].video == str(tmp_path / "elsewhere/videos/a.mp4")


def test_write_relative_to_makes_the_folder_portable(tmp_path):
    item = QAItem.from_dict(record(video=str(tmp_path / "data" / "videos" / "a.mp4")))
    path = write_qa_jsonl(tmp_path / "data" / "qa.jsonl", [item], relative_to=tmp_path / "data")
    assert json.loads(path.read_text())["video"] == "videos/a.mp4"
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert read_qa_jsonl(moved / "qa.jsonl")[0].video == str(moved / "videos" / "a.mp4")


def test_unicode_is_written_as_is(tmp_path):
    path = write_qa_jsonl(tmp_path / "qa.jsonl", [QAItem.from_dict(record(question="Qué pasa? 发生了什么"))])
    assert "发生了什么" in path.read_text(encoding="utf-8")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_errors_name_line_and_field(tmp_path):
    good = json.dumps(record())
    path = write_lines(tmp_path / "qa.jsonl", [good, "", json.dumps(record(id="q2", answer="Z"))])
    with pytest.raises(QAFormatError) as info:
        read_qa_jsonl(path)
    assert (info.value.line, info.value.field) == (3, "answer")
    assert str(info.value).startswith(f"{path}:3: field 'answer': ")


def test_read_reports_invalid_json_and_non_objects(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(record()), '{"id": "q2", "video": '])
    with pytest.raises(QAFormatError, match=r"bad.jsonl:2: invalid JSON") as info:
        read_qa_jsonl(path)
    assert info.value.field is None
    path = write_lines(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(QAFormatError, match=r"list.jsonl:1: a QA record must be a JSON object"):
        read_qa_jsonl(path)


def test_duplicate_ids_are_rejected_within_a_source(tmp_path):
    lines = [json.dumps(record()), json.dumps(record(source="other")), json.dumps(record())]
    path = write_lines(tmp_path / "qa.jsonl", lines)
    with pytest.raises(QAFormatError, match=r"duplicate id 'q1' .*first on line 1") as info:
        read_qa_jsonl(path)
    assert info.value.line == 3


def test_failed_write_leaves_the_previous_file_and_no_temp_files(tmp_path):
    path = write_qa_jsonl(tmp_path / "qa.jsonl", [QAItem.from_dict(record())])
    before = path.read_bytes()
    unserialisable = QAItem.from_dict(record(id="q2", meta={"when": object()}))
    with pytest.raises(QAFormatError, match="item 'q2' cannot be written as JSON") as info:
        write_qa_jsonl(path, [QAItem.from_dict(record()), unserialisable])
    assert info.value.field == "meta"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl"]
