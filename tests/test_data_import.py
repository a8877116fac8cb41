"""`msjoe data import`: NExT-QA (real val.csv rows and map entries, doc-doc/NExT-QA @ 6b92588a), Perception Test
(its JSON layout), a benchmark (LVBench) and the generic field map over JSON / JSONL / CSV / parquet, with
generated videos. Missing videos are listed, bad rows rejected with file:line and reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.importer import FieldMap, import_annotations, report_path, write_import
from msjoe.data.records import read_records
from msjoe.data.schema import read_qa_jsonl
from msjoe.synthetic_video import write_video

FIXTURES = Path(__file__).parent / "data" / "import"
runner = CliRunner()


def make_video(path: Path, seconds: float = 3.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, duration=seconds, fps=4.0, size=(32, 32))


@pytest.fixture
def nextqa(tmp_path: Path) -> Path:
    """The real rows, plus three bad ones appended, and videos for two of the four VidOR ids."""
    folder = tmp_path / "nextqa"
    folder.mkdir()
    shutil.copy(FIXTURES / "map_vid_vidorID.json", folder)
    csv_text = (FIXTURES / "nextqa_val.csv").read_text()
    bad = [
        "7508439506,765,640,480,why is the baby crying,7,11,CW,a,b,c,d,e",  # answer out of range
        "7508439506,765,640,480,why is the baby crying,x,12,CW,a,b,c,d,e",  # not an integer
        "7508439506,765,640,480,why is the baby crying,1,13,CW,a,b,,d,e",  # an empty option
    ]
    (folder / "val.csv").write_text(csv_text + "\n".join(bad) + "\n")
    make_video(tmp_path / "NExTVideo" / "1201" / "7508439506.mp4", 3.0)
    make_video(tmp_path / "NExTVideo" / "1106" / "4010069381.mp4", 2.0)
    return folder / "val.csv"


def test_nextqa_rows_become_items_missing_videos_are_listed_and_bad_rows_located(nextqa: Path) -> None:
    result = import_annotations("nextqa", nextqa, video_root=nextqa.parent.parent / "NExTVideo")
    ids = [item.id for item in result.items]
    assert ids == ["4010069381_6", "4010069381_1", "7508439506_1", "7508439506_4", "7508439506_2"]
    first = result.items[0]
    assert first.question == "how do the two man play the instrument"
    assert first.options == ("roll the handle", "tap their feet", "strum the string", "hit with sticks",
                             "pat with hand")  # fmt: skip
    assert first.answer == "A" and first.task == "CH" and first.categories["type_group"] == "causal"
    assert first.duration == pytest.approx(2.0) and result.items[2].duration == pytest.approx(3.0)  # probed
    assert result.items[4].answer == "C"  # "what color shirt is the baby wearing": 2 -> white
    assert first.meta == {"video_id": "4010069381", "qid": "6", "split": "val", "frame_count": 369, "width": 640,
                          "height": 480}  # fmt: skip
    assert [Path(v).relative_to(nextqa.parent.parent).as_posix() for v in result.missing_videos] == [
        "NExTVideo/0063/2435100235.mp4",
        "NExTVideo/1201/8132842161.mp4",
    ]
    assert len(result.missing) == 4
    assert [(row.location, row.reason) for row in result.skipped] == [
        ("val.csv:11", "field 'answer' must be an option index 0..4, got 7"),
        ("val.csv:12", "field 'answer' must be an integer, got 'x'"),
        ("val.csv:13", "field 'a2' is empty"),
    ]


def test_the_import_command_writes_the_items_and_a_report(nextqa: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "nextqa_val.jsonl"
    args = ["data", "import", str(nextqa), "-o", str(output), "--format", "nextqa"]
    result = runner.invoke(app, [*args, "--video-root", str(nextqa.parent.parent / "NExTVideo")])
    assert result.exit_code == 0, result.output
    assert "5 items written" in result.output and "4 missing a video, not written" in result.output
    assert "val.csv:11: field 'answer' must be an option index 0..4, got 7" in result.output
    assert len(read_qa_jsonl(output)) == 5
    report = json.loads(report_path(output).read_text())
    assert report["items_missing_video"] == 4 and len(report["missing_videos"]) == 2
    assert [row["location"] for row in report["rejected_rows"]] == ["val.csv:11", "val.csv:12", "val.csv:13"]
    # Without a video root, videos are looked for beside the annotations: all missing, still not an error.
    again = runner.invoke(app, [*args, "--keep-missing"])
    assert again.exit_code == 0 and len(read_qa_jsonl(output)) == 9


def test_perception_test_questions_with_durations_from_metadata(tmp_path: Path) -> None:
    annotations = tmp_path / "mc_question_valid.json"
    data = json.loads((FIXTURES / "perceptiontest_mc_question_valid.json").read_text())
    data["video_1102"]["mc_question"].append({"id": 1, "question": "Bad?", "options": ["a", "b"], "answer_id": 5})
    annotations.write_text(json.dumps(data, indent=2))
    make_video(tmp_path / "videos" / "video_8241.mp4")
    result = import_annotations("perceptiontest", annotations, video_root=tmp_path / "videos")
    assert [item.id for item in result.items] == ["video_8241-0", "video_8241-1"]
    occlusion = result.items[0]
    assert occlusion.answer == "C" and occlusion.duration == 30.0  # 900 frames at 30 fps, not probed
    assert occlusion.categories == {"area": "memory", "reasoning": "descriptive",
                                    "tag": ("object tracking", "spatial relations")}  # fmt: skip
    assert [item.id for item in result.missing] == ["video_1102-0"]
    line = next(n for n, text in enumerate(annotations.read_text().splitlines(), 1) if '"video_1102"' in text)
    assert [(row.location, row.reason) for row in result.skipped] == [
        (f"mc_question_valid.json:{line} mc_question[1]", "field 'answer_id' must be an option index 0..1, got 5")
    ]


def llava_turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [turn for human, gpt in pairs for turn in ({"from": "human", "value": human}, {"from": "gpt", "value": gpt})]


INSTRUCTION = "Answer with the option's letter from the given choices directly."


def test_llava_video_conversations_give_one_question_per_pair(tmp_path: Path) -> None:
    """LLaVA-Video-178K's layout: several human/gpt pairs per video, the media tag on the first human turn."""
    entries = [
        {"id": "v_abc", "video": "academic_source/clip_abc.mp4", "data_source": "0_30_s_academic_v0_1",
         "conversations": llava_turns(
             (f"<image>\nWhat does the man hold?\nA. A cup.\nB. A phone.\nC. A pen.\nD. Nothing.\n{INSTRUCTION}",
              "B."),
             (f"Which colour is the door?\nOptions:\n(A) red\n(B) green\n{INSTRUCTION}", "(A) red"),
             ("What happens at the end?", "The man leaves the room."),  # open-ended: rejected
             (f"Where is he?\nA. inside\nB. outside\n{INSTRUCTION}", "E."),  # no option E
         )},
        {"id": "v_gone", "video": "academic_source/gone.mp4",
         "conversations": llava_turns((f"<image>\nWhy?\nA. x\nB. y\n{INSTRUCTION}", "A"))},
        ["not", "an", "entry"],
        {"id": "v_novideo", "conversations": []},
    ]  # fmt: skip
    annotations = tmp_path / "0_30_s_academic_mc_v0_1_qa_processed.json"
    annotations.write_text(json.dumps(entries, indent=1))
    make_video(tmp_path / "subset" / "academic_source" / "clip_abc.mp4", 2.5)
    result = import_annotations("llava_video", annotations, video_root=tmp_path / "subset")

    first, second = result.items
    assert (first.id, first.question, first.options, first.answer) == (
        "v_abc-0", "What does the man hold?", ("A cup.", "A phone.", "A pen.", "Nothing."), "B")  # fmt: skip
    assert (second.id, second.question, second.options, second.answer) == (
        "v_abc-1", "Which colour is the door?", ("red", "green"), "A")  # fmt: skip
    assert first.video == str(tmp_path / "subset" / "academic_source" / "clip_abc.mp4")
    assert first.duration == pytest.approx(2.5, abs=0.3) and first.source == "llava_video"  # probed
    assert first.categories == {"subset": "0_30_s_academic_v0_1"}
    assert [item.id for item in result.missing] == ["v_gone-0"]
    reasons = {row.location.split(" ", 1)[-1] if " " in row.location else row.location: row.reason
               for row in result.skipped}  # fmt: skip
    assert reasons["conversations[4]"].startswith("open-ended question")
    assert reasons["conversations[6]"] == "the answer 'E.' does not start with one of the letters A-B"
    assert any("expected a conversation entry" in r.reason for r in result.skipped)
    assert any("field 'video' must be a non-empty path" in r.reason for r in result.skipped)
    assert all(row.location.startswith(annotations.name + ":") for row in result.skipped)

    # The command line takes the format by name and writes the items and the report.
    output = tmp_path / "train.jsonl"
    cli = runner.invoke(app, ["data", "import", str(annotations), "--format", "llava_video", "--video-root",
                              str(tmp_path / "subset"), "--output", str(output)])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    assert [item.id for item in read_qa_jsonl(output)] == ["v_abc-0", "v_abc-1"]


def test_a_benchmark_imports_through_its_loader_with_evidence_spans(tmp_path: Path) -> None:
    record = {
        "key": "abc", "type": "cartoon", "video_info": {"duration_minutes": 1.5},
        "qa": [{"uid": "1", "question": "What?\n(A) x\n(B) y", "answer": "B", "question_type": ["reasoning"],
                "time_reference": "00:10-00:20"}, {"uid": "2", "question": "no options", "answer": "A",
                                                    "question_type": ["reasoning"]}],
    }  # fmt: skip
    annotations = tmp_path / "video_info.meta.jsonl"
    annotations.write_text(json.dumps(record) + "\n")
    make_video(tmp_path / "videos" / "abc.mp4")
    result = import_annotations("lvbench", annotations, video_root=tmp_path / "videos")
    item = result.items[0]
    assert (item.id, item.options, item.answer, item.evidence, item.duration) == ("1", ("x", "y"), "B",
                                                                                    ((10.0, 20.0),), 90.0)  # fmt: skip
    assert [row.location for row in result.skipped] == ["video_info.meta.jsonl:1 qa[1]"]


def test_generic_csv_with_option_columns_and_one_based_answers(tmp_path: Path) -> None:
    make_video(tmp_path / "clips" / "v1.mp4", 2.0)
    (tmp_path / "qa.csv").write_text(
        "qid,clip,q,o1,o2,o3,label,kind,secs\n"
        "q1,v1,Which colour?,red,green,,2,colour,1.5\n"  # two options (an empty third), answer 2 = green
        "q2,v2,Which shape?,box,ball,cone,3,shape,\n"  # video v2 is missing
        "q3,v1,Which?,a,b,c,4,shape,\n"  # answer out of range
        "q4,v1,,a,b,c,1,shape,\n"  # no question
    )
    fields = FieldMap.parse(["id=qid", "video=clip", "question=q", "options=o1,o2,o3", "answer=label",
                             "answer_format=index1", "task=kind", "category.kind=kind", "duration=secs"])  # fmt: skip
    result = import_annotations("generic", tmp_path / "qa.csv", video_root=tmp_path / "clips", fields=fields)
    assert [(i.id, i.options, i.answer, i.duration, i.source) for i in result.items] == [
        ("q1", ("red", "green"), "B", 1.5, "qa")
    ]
    assert result.missing[0].duration is None  # its video is missing: nothing to probe
    assert [(row.location, row.reason) for row in result.skipped] == [
        ("qa.csv:4", "answer '4' (field 'label') is not an option index 1..3"),
        ("qa.csv:5", "question field 'q' is missing or empty"),
    ]


def test_generic_json_jsonl_and_parquet_with_letter_and_text_answers(tmp_path: Path) -> None:
    make_video(tmp_path / "a.mp4", 2.0)
    rows = [
        {"video": "a", "question": "Q1?", "options": ["A. one", "B. two"], "answer": "(B)", "span": [0.5, 1.0]},
        {"video": "a", "question": "Q2?", "options": ["one", "two"], "answer": "C"},
    ]
    (tmp_path / "list.json").write_text(json.dumps(rows, indent=2))
    result = import_annotations("generic", tmp_path / "list.json", fields=FieldMap())
    assert [(i.id, i.options, i.answer) for i in result.items] == [("list-1", ("one", "two"), "B")]
    assert [(r.location, r.reason) for r in result.skipped] == [
        ("list.json:15", "answer 'C' (field 'answer') is not one of the option letters A, B")
    ]

    (tmp_path / "qa.jsonl").write_text('{"video": "a.mp4", "q": {"text": "Q?"}, "opts": ["x", "y"], "ans": "y", '
                                       '"spans": [[0, 1], [1.5, 2]]}\n{not json\n')  # fmt: skip
    fields = FieldMap.parse(["question=q.text", "options=opts", "answer=ans", "answer_format=text",
                             "evidence=spans", "evidence_start=s", "evidence_end=e"])  # fmt: skip
    result = import_annotations("generic", tmp_path / "qa.jsonl", fields=fields, source="mine")
    assert [(i.question, i.answer, i.source, i.duration, i.evidence) for i in result.items] == [
        ("Q?", "B", "mine", 2.0, ((0.0, 1.0), (1.5, 2.0)))
    ]
    assert [r.location for r in result.skipped] == ["qa.jsonl:2"]
    assert result.skipped[0].reason.startswith("invalid JSON")

    table = pa.table({"vid": ["a"], "question": ["Q?"], "choices": [["p", "q", "r"]], "gt": [0], "t0": [0.5],
                      "t1": [1.25]})  # fmt: skip
    pq.write_table(table, tmp_path / "qa.parquet")
    fields = FieldMap.parse(["video=vid", "options=choices", "answer=gt", "answer_format=index", "evidence_start=t0",
                             "evidence_end=t1"])  # fmt: skip
    result = import_annotations("generic", tmp_path / "qa.parquet", fields=fields)
    assert [(i.options, i.answer, i.evidence) for i in result.items] == [(("p", "q", "r"), "A", ((0.5, 1.25),))]


def test_json_object_of_records_is_located_by_line_and_keyed(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    path.write_text('{\n  "first": {"x": 1},\n\n  "second": [1, 2]\n}\n')
    records = list(read_records(path))
    assert [(r.location, r.key, r.value) for r in records] == [("qa.json:2", "first", {"x": 1}),
                                                                ("qa.json:4", "second", [1, 2])]  # fmt: skip
    path.write_text("[1, 2,, 3]")
    with pytest.raises(ValueError, match=r"qa\.json: invalid JSON at line 1"):
        list(read_records(path))


def test_field_map_errors_name_the_entry() -> None:
    with pytest.raises(ValueError, match="'questoin=q': unknown name 'questoin'"):
        FieldMap.parse(["questoin=q"])
    with pytest.raises(ValueError, match="must look like NAME=FIELD"):
        FieldMap.parse(["question"])
    with pytest.raises(ValueError, match="answer_format must be one of"):
        FieldMap.parse(["answer_format=number"])


def test_a_corrupt_video_rejects_its_rows_by_location(tmp_path: Path) -> None:
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 100)
    (tmp_path / "qa.jsonl").write_text('{"video": "bad.mp4", "question": "Q?", "options": ["x", "y"], "answer": "A"}\n')
    result = import_annotations("generic", tmp_path / "qa.jsonl", fields=FieldMap())
    assert result.items == [] and [row.location for row in result.skipped] == ["qa.jsonl:1"]
    assert "video cannot be read: NotAVideoError" in result.skipped[0].reason
    output, _ = write_import(result, tmp_path / "out.jsonl")
    assert output.read_text() == ""
