"""Scoring rule sets against the official code they cite: verdicts on hard replies to real annotation rows, in
each benchmark's real file format, and the counting quirks (rows kept, missing and empty replies, averaging).

Expected verdicts are derived by reading the cited official code (lines cited per table); the ``msjoe`` columns
are msjoe's own parser as it stands (defined by its own tests; two letters do not always make it refuse). Where
the official code is importable here (lmms-eval 0.7.3, pinned for the lmms-eval tests), the rule set is also
checked against it directly.

Real rows: Video-MME 001-1, 001-2, 001-3, 002-1 (MME-Benchmarks/Video-MME ``evaluation/output_test_template.json`` @
e9f6a2da); LongVideoBench 86CxyhFV9MI_0 (question, candidates and answer as published in ``lvb_val.json``); MLVU
order_126, order_214, needle_4, ego_26 (JUNJIE99/MLVU ``data/*.json`` @ fd060c10). LVBench's annotation file is
not in the LVBench repository (it is on the Hugging Face Hub, unreachable here): its rows below follow the
file's format, with invented texts.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.data.benchmarks import longvideobench, lvbench, mlvu, videomme
from msjoe.data.schema import QAItem
from msjoe.eval.predictions import read_predictions
from msjoe.rules import available_rules, get_rules, register_rules
from msjoe.rules.score import score_replies


def verdicts(benchmark: str, rules: str, item, replies: list[str]) -> list[str | None]:
    rule_set = get_rules(benchmark, rules)
    return [rule_set.read(reply, item) for reply in replies]


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------
def test_registry_defaults_are_the_current_official_code_and_cite_a_commit():
    assert available_rules("videomme") == ["videomme", "videomme_legacy", "videomme_lmms_eval", "msjoe"]
    assert available_rules("longvideobench") == ["longvideobench", "longvideobench_mmmu", "msjoe"]
    assert available_rules("lvbench") == ["lvbench", "lvbench_exact", "lvbench_lmms_eval", "msjoe"]
    assert available_rules("mlvu") == ["mlvu", "mlvu_videochat2", "mlvu_lmms_eval", "mlvu_lmms_eval_legacy", "msjoe"]
    defaults = {name: get_rules(name).sources[0] for name in ("videomme", "longvideobench", "lvbench", "mlvu")}
    assert defaults["videomme"].repository == "thanku-all/parse_answer"
    assert defaults["longvideobench"].commit.startswith("c0bc79f1")
    assert defaults["lvbench"].path == "lvbench/utils/answer_util.py"
    assert defaults["mlvu"].path == "evaluation/multiple_choice_evaluation/choice_bench.py"
    for benchmark in defaults:
        for name in available_rules(benchmark):
            rules = get_rules(benchmark, name)
            assert rules.official == (name != "msjoe")
            for source in rules.sources:
                assert re.fullmatch(r"[0-9a-f]{40}", source.commit), (name, source)
                assert source.url == f"https://github.com/{source.repository}/blob/{source.commit}/{source.path}"
                assert f"{source.repository} {source.path} @ {source.commit[:8]}" in rules.heading()
    with pytest.raises(ValueError, match="unknown rule set 'official' for mlvu; choose one of: mlvu, mlvu_video"):
        get_rules("mlvu", "official")
    with pytest.raises(ValueError, match="no rule sets for benchmark 'mvbench'"):
        get_rules("mvbench", "msjoe")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"unparsed": "skip"}, "unparsed must be one of ('wrong', 'exclude', 'random'), got 'skip'"),
        ({"missing": "random"}, "missing must be one of ('wrong', 'exclude', 'as_empty'), got 'random'"),
        ({"repeated_groups": "twice"}, "repeated_groups must be one of ('once', 'each'), got 'twice'"),
        ({"mean_over": 0.5}, "mean_over must be None or an int, got 0.5"),
        ({"sources": ["x"]}, "sources must be a tuple of Source, got ['x']"),
    ],
)
def test_a_rule_set_names_the_field_the_allowed_values_and_the_value(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(get_rules("videomme"), **changes)


def test_a_taken_rule_set_name_or_default_is_refused_and_the_same_rule_set_again_is_a_no_op():
    official = get_rules("videomme")
    assert register_rules(official, default=True) is official  # a module imported twice registers again
    with pytest.raises(ValueError, match="videomme rule set 'videomme' is already registered"):
        register_rules(dataclasses.replace(official, summary="another"))
    with pytest.raises(ValueError, match="'videomme' already has a default rule set, 'videomme'"):
        register_rules(dataclasses.replace(official, name="videomme_next"), default=True)
    assert available_rules("videomme") == ["videomme", "videomme_legacy", "videomme_lmms_eval", "msjoe"]
    assert get_rules("videomme") is official


# --------------------------------------------------------------------------------------------------------------
# Video-MME
# --------------------------------------------------------------------------------------------------------------
VIDEOMME_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("video_id", "duration", "domain", "sub_category", "url", "videoID",
                                      "question_id", "task_type", "question")]
    + [("options", pa.list_(pa.string())), ("answer", pa.string())]
)  # fmt: skip
# The rows of the official template (question_id, task_type, question, options, answer); videoID is the YouTube
# id, published for 001 only in the template's sources, so 002 and 003 get stand-ins.
VIDEOMME_ROWS = [
    ("001", "fFjv93ACGo8", "001-1", "Counting Problem", "When demonstrating the Germany modern Christmas tree is "
     "initially decorated with apples, candles and berries, which kind of the decoration has the largest number?",
     ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."], "C"),
    ("001", "fFjv93ACGo8", "001-2", "Information Synopsis", "What is the genre of this video?",
     ["A. It is a news report that introduces the history behind Christmas decorations.",
      "B. It is a documentary on the evolution of Christmas holiday recipes.",
      "C. It is a travel vlog exploring Christmas markets around the world.",
      "D. It is a tutorial on DIY Christmas ornament crafting."], "A"),
    ("001", "fFjv93ACGo8", "001-3", "Counting Problem",
     "How many red socks are above the fireplace at the end of this video?",
     ["A. 1.", "B. 4.", "C. 2.", "D. 3."], "D"),
    ("002", "videoID-002", "002-1", "Object Recognition",
     "Which of the following features/items is not discussed in the video in relation to the tomb?",
     ["A. Inkstone.", "B. Niche.", "C. Jade.", "D. Sacrificial table."], "C"),
]  # fmt: skip


def write_videomme(folder: Path) -> Path:
    rows = [
        {"video_id": vid, "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
         "url": f"https://www.youtube.com/watch?v={yt}", "videoID": yt, "question_id": qid, "task_type": task,
         "question": question, "options": options, "answer": answer}
        for vid, yt, qid, task, question, options, answer in VIDEOMME_ROWS
    ]  # fmt: skip
    path = folder / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=VIDEOMME_SCHEMA), path)
    return path


# reply -> letter read by: videomme (thanku-all eval_your_results.py lines 65-89: strip, delete the prefixes in
# turn, first capital A-D), videomme_legacy (BradyFU 4e7566d3 lines 65-86: the list without "Answer:", "Option:",
# "The correct answer", "The correct option"), videomme_lmms_eval (lmms-eval mcq_extract.py: priorities start 10,
# end 9, phrase 7, (X) 6, X. 5, X: 4, X) 3, "X " 2, any 0), msjoe. Item 001-1 (answer C).
VIDEOMME_REPLIES = [
    ("C", "C", "C", "C", "C"),
    ("C. Berries.", "C", "C", "C", "C"),
    ("Answer: D", "D", "A", "D", "D"),  # the case: "Answer:" is deleted only by the current script
    ("Answer:D", "D", "A", "D", "D"),
    ("Answer: C. Disappointed.", "C", "A", "C", "C"),
    ("The answer is (B).", "B", "B", "B", "B"),
    ("Best option: (D)", "B", "B", "D", "D"),  # "Best option:" is fused with "Best answer:" (missing comma)
    ("Based on the video, the answer is C", "B", "B", "C", "C"),  # lower-case "the answer is" is not deleted
    ("c", None, None, None, "C"),  # lower case: nothing for the official rules
    ("", None, None, None, None),
    ("E", None, None, None, None),  # only A-D exist
    ("B or C", "B", "B", "B", None),  # mcq: a leading standalone letter (10) beats the trailing one (9)
    ("The correct answer is\nD", "D", "D", "D", "D"),
    ("I think it's C.", "C", "C", "C", "C"),
    ("Option: A", "A", "A", "A", "A"),
    ("Apples.", "A", "A", "A", "A"),  # the capital of the option text
    ("Berries", "B", "B", "B", "C"),  # Berries is option C: only msjoe reads option texts
    ("D\n\nExplanation: the three kinds are equal", "D", "D", "D", "D"),
    ("(C)", "C", "C", "C", "C"),
    ("**C**", "C", "C", "C", "C"),
    ("  c.  ", None, None, None, "C"),
    ("The best answer is: A", "A", "A", "A", "A"),
    ("Answer: A and B are wrong, C is right", "A", "A", "C", "C"),  # mcq: the last "X " (2) wins
    ("the answer is probably Berries", "B", "B", "B", "C"),  # mcq: a capital after the phrase, even in a word
]


def test_videomme_readings_of_hard_replies(tmp_path):
    item = videomme.load(write_videomme(tmp_path), None).items[0]
    assert (item.id, item.answer, item.options[2]) == ("001-1", "C", "Berries.")
    replies = [row[0] for row in VIDEOMME_REPLIES]
    for column, rules in enumerate(("videomme", "videomme_legacy", "videomme_lmms_eval", "msjoe"), start=1):
        assert verdicts("videomme", rules, item, replies) == [row[column] for row in VIDEOMME_REPLIES], rules


def test_videomme_counting_leaves_unparsed_and_missing_replies_out(tmp_path):
    items = videomme.load(write_videomme(tmp_path), None).items
    replies = {"001-1": "Answer: C. Disappointed.", "001-2": "c", "001-3": "", "099-9": "A"}  # 002-1: no reply
    official = videomme.score(items, replies)
    # eval_your_results lines 173-181: only extractions != "" enter "answered"; no reply = the empty reply
    assert official["overall"] == {"correct": 1, "total": 1, "accuracy": 1.0}
    assert official["ids"] == {"unparsed": ["001-2", "001-3"], "random_fallback": [],
                               "missing_predictions": ["002-1"], "unknown_predictions": ["099-9"]}  # fmt: skip
    assert official["rules"]["name"] == "videomme" and official["rules"]["missing"] == "as_empty"
    legacy = videomme.score(items, replies, rules="videomme_legacy")
    assert legacy["overall"] == {"correct": 0, "total": 1, "accuracy": 0.0}  # "Answer: C" reads A there
    lmms = videomme.score(items, replies, rules="videomme_lmms_eval")
    assert (lmms["overall"]["correct"], lmms["overall"]["total"]) == (1, 4)  # every question counts
    ours = videomme.score(items, replies, rules="msjoe")
    assert (ours["overall"]["correct"], ours["overall"]["total"]) == (1, 4)  # "c" reads C: wrong for 001-2 (A)


def test_videomme_mcq_matches_installed_lmms_eval():
    mcq = pytest.importorskip("lmms_eval.tasks._task_utils.mcq_extract")
    rules = get_rules("videomme", "videomme_lmms_eval")
    replies = [row[0] for row in VIDEOMME_REPLIES] + ["(A) (B)", "A: B.", "I pick D", "答案是B", "x) C) ", "BAD"]
    for reply in replies:
        assert rules.read(reply, None) == (mcq.extract_mcq_answer(reply, choices=["A", "B", "C", "D"]) or None)


# --------------------------------------------------------------------------------------------------------------
# LongVideoBench
# --------------------------------------------------------------------------------------------------------------
LVB_CANDIDATES = [
    "promisc has come to an end, in and run away countless times, i was just scared, i still",
    "run away countless times, i was just scared, i still and front of our crown, like a world of souls,",
    "promisc has come to an end, in and front of our crown, like a world of souls,",
    "promisc has come to an end, in and captain of the godson, three three three three three three",
]


def write_lvb(folder: Path, extra: int = 0) -> Path:
    row = {
        "video_id": "86CxyhFV9MI", "id": "86CxyhFV9MI_0", "video_path": "86CxyhFV9MI.mp4",
        "subtitle_path": "86CxyhFV9MI_en.json", "duration": 190.16, "duration_group": 600,
        "question": "In the video, which subtitles appear at the same time as the man with black hair, dressed in "
        "grey clothes with black sleeves, on stage?",
        "question_wo_referring_query": "Which subtitles appear at the same time?", "candidates": LVB_CANDIDATES,
        "correct_choice": 1, "question_category": "TOS", "topic_category": "NP-News-Programs",
        "starting_timestamp_for_subtitles": 0, "level": "L1-Perception", "position": [1, 2], "view_count": 1,
    }  # fmt: skip
    rows = [row] + [{**row, "id": f"86CxyhFV9MI_{n}", "correct_choice": n % 4} for n in range(1, extra + 1)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lvb_val.json"
    path.write_text(json.dumps(rows))
    return path


# reply -> letter read by: longvideobench (lmms-eval c0bc79f1 parse_multi_choice_response: strip, delete 8
# prefixes, first capital A-E; None = a random option), longvideobench_mmmu (lmms-eval 7548ebe1: brackets, then
# "X ", then "X.", then option texts in > 5 words; last mark wins; None = random), msjoe. Answer B, 4 options.
LVB_REPLIES = [
    ("B", "B", "B", "B"),
    ("Answer: D", "A", "D", "D"),  # the "A" of "Answer"; MMMU finds " D "
    ("D. A woman using her hands", "D", "A", "D"),  # MMMU finds "A " before it looks for "D."
    ("E", "E", None, None),  # a letter beyond the 4 options is read, and wrong; MMMU knows A-D only
    ("", None, None, None),
    ("The best option is (C)", "C", "C", "C"),
    ("b", None, None, "B"),
    ("(A) or (C)", "A", "C", None),  # MMMU: the last bracketed letter; msjoe: two alternatives, never guess
    ("I choose B", "B", "B", "B"),
    ("Correct: C.", "C", "C", "C"),  # the "C" of "Correct", which is also C
    ("All of them", "A", None, None),
    ("Best answer: B", "B", "B", "B"),
    ("Answer:\nD", "A", "D", "D"),
    (f"I believe it is {LVB_CANDIDATES[1]} for sure", None, "B", "B"),  # no capital A-E; MMMU: option text
    ("D)", "D", None, "D"),  # MMMU: neither "D " nor "D." nor "(D)"
    ("C\n", "C", None, "C"),  # MMMU strips punctuation, not newlines: " C\n " has no "C "
    ("Option B.", "B", "B", "B"),
    ("A B", "A", "B", "B"),  # MMMU: " B " is later than " A "
    ("B.", "B", "B", "B"),
    ("F", None, None, None),
    ("The answer is: E", "E", None, None),
]


def test_longvideobench_readings_of_hard_replies(tmp_path):
    item = longvideobench.load(write_lvb(tmp_path), None).items[0]
    assert (item.id, item.answer, item.categories["duration_group"]) == ("86CxyhFV9MI_0", "B", "600")
    replies = [row[0] for row in LVB_REPLIES]
    for column, rules in enumerate(("longvideobench", "longvideobench_mmmu", "msjoe"), start=1):
        assert verdicts("longvideobench", rules, item, replies) == [row[column] for row in LVB_REPLIES], rules


def test_longvideobench_random_fallback_follows_lmms_eval_seeding(tmp_path):
    """lmms-eval seeds Python's random once (default 0) and draws random.choice(letters) for each unread reply,
    document by document: the fallbacks are that stream, in item order."""
    items = longvideobench.load(write_lvb(tmp_path, extra=11), None).items
    replies = {item.id: ("b" if n % 3 else "D") for n, item in enumerate(items)}  # 8 unread replies
    report = longvideobench.score(items, replies)
    stream = random.Random(0)
    expected = [stream.choice("ABCD") if reply == "b" else "D" for reply in replies.values()]
    assert [record["chosen"] for record in report["items"]] == expected
    assert report["counts"]["random_fallback"] == 8 and report["ids"]["random_fallback"] == [
        item.id for item in items if replies[item.id] == "b"
    ]
    assert report["rules"]["seed"] == 0
    other = longvideobench.score(items, replies, seed=5)
    assert other["rules"]["seed"] == 5 and other["items"] != report["items"]  # the seed reaches the draws
    no_reply = longvideobench.score(items, {})  # lmms-eval scores "" then: a random option for every item
    assert no_reply["counts"]["missing_predictions"] == 12 and no_reply["overall"]["total"] == 12
    strict = longvideobench.score(items, replies, rules="msjoe")
    assert strict["counts"]["random_fallback"] == 0 and strict["overall"]["total"] == 12


def _installed_lmms_eval_function(module: str, name: str, namespace: dict) -> object:
    """A function of an installed lmms-eval task file, compiled alone (the file's imports need decord)."""
    spec = pytest.importorskip("importlib.util").find_spec(module.rsplit(".", 1)[0])
    if spec is None:
        pytest.skip("lmms-eval is not installed")
    path = Path(spec.submodule_search_locations[0]) / (module.rsplit(".", 1)[1] + ".py")
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace[name]


def test_longvideobench_matches_installed_lmms_eval_draw_for_draw(tmp_path):
    pytest.importorskip("lmms_eval")
    namespace = {"re": re, "random": random}
    parse = _installed_lmms_eval_function(
        "lmms_eval.tasks.longvideobench.utils", "parse_multi_choice_response", namespace
    )
    items = longvideobench.load(write_lvb(tmp_path, extra=len(LVB_REPLIES) - 1), None).items
    replies = {item.id: row[0] for item, row in zip(items, LVB_REPLIES, strict=True)}
    random.seed(0)  # what lmms-eval's evaluator does with its default --seed
    official = [
        parse(replies[item.id], item.letters, dict(zip(item.letters, item.options, strict=True))) for item in items
    ]
    assert [record["chosen"] for record in longvideobench.score(items, replies)["items"]] == official


# --------------------------------------------------------------------------------------------------------------
# LVBench
# --------------------------------------------------------------------------------------------------------------
def lvbench_qa(uid, answer, types, question=None):
    text = question or f"What is shown at {uid}?\n(A) a goal\n(B) a foul\n(C) a corner\n(D) a throw-in"
    return {"uid": uid, "question": text, "answer": answer, "question_type": types, "time_reference": "01:02-01:09"}


def write_lvbench(folder: Path) -> Path:
    video = {
        "key": "ZUHgm0uW8tA", "type": "sport", "video_info": {"duration_minutes": 62.5},
        "qa": [
            lvbench_qa(55, "C", ["key information retrieval"]),
            lvbench_qa(56, "A", ["reasoning", "reasoning"]),  # a type listed twice counts twice
            lvbench_qa(57, "B ", ["entity recognition"]),  # stored with a trailing space: never matched
            lvbench_qa(58, "D", ["temporal grounding", "reasoning"], "Which comes first? A goal or a foul?"),
            lvbench_qa(59, "E", ["summarization"]),  # not an option letter
            lvbench_qa(60, "B", ["event understanding"]),
        ],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "video_info.meta.jsonl"
    path.write_text(json.dumps(video) + "\n")
    return path


# reply -> polish_answer (answer_util.py lines 1-18) and lmms-eval mcq, msjoe; uid 55, answer C.
LVBENCH_REPLIES = [
    ("C", "C", "C", "C"),
    ("(C) a corner", "C", "C", "C"),
    ("C. a corner", "C", "C", "C"),
    ("Answer: C", "A", "C", "C"),  # polish: first character of the first word
    ("The answer is C", "T", "C", "C"),
    ("c", "c", None, "C"),  # no case folding: wrong
    ("", None, None, None),
    ("(C)", "C", "C", "C"),
    (" C ", "C", "C", "C"),
    ("C)", "C", "C", "C"),
    ("E", "E", None, None),
    ("B or C", "B", "B", None),
    ("((C", None, "C", "C"),  # after the second "(" nothing is left
    ("C\nbecause of the flag", "C", "C", "C"),  # split(" ") keeps "C\nbecause"
    ("\n(B)\n", "B", "B", "B"),
    ("Option (D)", "D", "D", "D"),  # the text after "(" in the part before ")"
    ("[C]", "[", "C", "C"),
    (")C", None, "C", "C"),  # nothing before the first ")"
    ("**C**", "*", "C", "C"),
    ("a corner", "a", None, "C"),  # mcq: no capital choice letter at all; msjoe: the option text
    ("A)", "A", "A", "A"),
]


def test_lvbench_readings_of_hard_replies(tmp_path):
    item = next(i for i in lvbench.load(write_lvbench(tmp_path), None).items if i.id == "55")
    replies = [row[0] for row in LVBENCH_REPLIES]
    for column, rules in enumerate(("lvbench", "lvbench_lmms_eval", "msjoe"), start=1):
        assert verdicts("lvbench", rules, item, replies) == [row[column] for row in LVBENCH_REPLIES], rules


def test_lvbench_counting_follows_compute_accuracy(tmp_path):
    loaded = lvbench.load(write_lvbench(tmp_path), None)
    assert [item.id for item in loaded.items] == ["55", "56", "57", "60"]
    assert [(row.id, row.answer) for row in loaded.unrunnable] == [("58", "D"), ("59", "E")]
    assert {row.location for row in loaded.skipped} == {
        "video_info.meta.jsonl:1 qa[3]",
        "video_info.meta.jsonl:1 qa[4]",
    }
    answers = tmp_path / "answers.json"  # LVBench's answer file: {uid: answer}; uid 60 has none
    answers.write_text(json.dumps({"55": "(C) a corner", "56": "A", "57": "B", "58": "D", "59": "E", "7": "A"}))
    report = lvbench.score(loaded.items, read_predictions(answers), unrunnable=loaded.unrunnable)
    # compute_accuracy lines 17-28: uids in the file only (60 skipped), "B" != "B ", rows 58 and 59 scored
    assert report["overall"] == {"correct": 4, "total": 5, "accuracy": 0.8}
    types = {name: (t["correct"], t["total"]) for name, t in report["breakdowns"]["question_type"].items()}
    assert types == {"entity recognition": (0, 1), "temporal grounding": (1, 1), "reasoning": (3, 3),
                     "key information retrieval": (1, 1), "summarization": (1, 1)}  # fmt: skip
    assert report["leaderboard"]["Rea"] == 1.0 and report["leaderboard"]["Overall"] == 0.8
    assert report["ids"]["missing_predictions"] == ["60"] and report["ids"]["unknown_predictions"] == ["7"]
    ours = lvbench.score(loaded.items, read_predictions(answers), rules="msjoe", unrunnable=loaded.unrunnable)
    # msjoe: only askable rows, a type counted once per item, "B" right for 57, no reply wrong for 60
    assert (ours["overall"]["correct"], ours["overall"]["total"]) == (3, 4)
    assert ours["breakdowns"]["question_type"]["reasoning"]["total"] == 1
    assert ours["ids"]["unknown_predictions"] == ["7"]  # 58 and 59 are known rows, left out by this rule set


# --------------------------------------------------------------------------------------------------------------
# MLVU
# --------------------------------------------------------------------------------------------------------------
ORDER_126 = {"video": "order_126.mp4", "duration": 665.3399999999999, "question": "Arrange the following events "
             "from the video in the correct chronological order: (1)Woman tapes her hands with white tape; "
             "(2)Woman starts boxing in the ring with a guy; (3)Woman does sit ups on a towel on the beach; "
             "(4)Pictures of woman in her bikini are shown.",
             "candidates": ["2->1->3->4", "3->2->1->4", "4->3->2->1", "1->2->3->4"], "answer": "1->2->3->4",
             "question_type": "order"}  # fmt: skip
ORDER_214 = {"video": "order_214.mp4", "duration": 485.77, "question": "Please identify the option that "
             "corresponds to the order of events as they occur in the video.",
             "candidates": ["abseiling --> making jewelry --> milking cow --> cleaning toilet",
                            "making jewelry --> abseiling --> cleaning toilet --> milking cow",
                            "milking cow --> cleaning toilet --> abseiling --> making jewelry",
                            "cleaning toilet --> milking cow --> abseiling --> making jewelry"],
             "answer": "abseiling --> making jewelry --> milking cow --> cleaning toilet",
             "question_type": "order"}  # fmt: skip
NEEDLE_4 = {"video": "needle_4.mp4", "duration": 510.0, "question": "What is the man in the video doing on the "
            "lake shore during the sunny summer?", "candidates": ["Fishing", "Catching the drone",
            "Launching the drone", "Sunbathing"], "answer": "Catching a flying drone quadcopter",
            "question_type": "findNeedle"}  # fmt: skip
EGO_26 = {"video": "ego_26.mp4", "duration": 375.3666666666667, "question": "Where was the drill before I picked "
          "it up?", "candidates": ["In the garage", "In the toolbox", "", "On the shelf"], "answer": "",
          "question_type": "ego"}  # fmt: skip


def write_mlvu(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "5_order.json").write_text(json.dumps([ORDER_126, ORDER_214]))
    (folder / "2_needle.json").write_text(json.dumps([NEEDLE_4]))
    (folder / "3_ego.json").write_text(json.dumps([EGO_26]))
    return folder


# reply -> what is compared with the letter by: mlvu (choice_bench.py check_ans lines 105-119: the character
# before the first ")", else the whole reply, unstripped), mlvu_videochat2 (videochat2 check_ans lines 445-460:
# the stripped reply up to the first ")"), mlvu_lmms_eval (mcq_extract), msjoe. order_126: answer D.
MLVU_REPLIES = [
    ("(D) 1->2->3->4", "D", "(D", "D", "D"),
    ("D) 1->2->3->4", "D", "D", "D", "D"),
    ("The answer is (D).", "D", "The answer is (D", "D", "D"),
    ("Best option: (D) 1->2->3->4", "D", "Best option: (D", "D", "D"),
    ("(D)", "D", "(D", "D", "D"),
    ("D", "D", "D", "D", "D"),
    ("D ", "D ", "D", "D", "D"),  # official: unstripped, so wrong
    ("D.", "D.", "D.", "D", "D"),
    ("d)", "d", "d", None, "D"),
    ("", None, None, None, None),
    (")D", None, None, "D", "D"),  # nothing before the first ")"
    ("A) or D)", "A", "A", "A", None),  # msjoe: two alternatives, never guess
    ("(1->2->3->4) is D", "4", "(1->2->3->4", "D", "D"),
    ("D\n", "D\n", "D", "D", "D"),
    (" D", " D", "D", "D", "D"),
    ("@", "@", "@", None, None),
    ("E)", "E", "E", None, None),
    ("Answer: D", "Answer: D", "Answer: D", "D", "D"),
    ("1->2->3->4", "1->2->3->4", "1->2->3->4", None, "D"),  # the option text
    ("Best Option: (C", "Best Option: (C", "Best Option: (C", "C", "C"),
    ("B)D)", "B", "B", "B", "B"),  # mcq: the leading standalone "B" (10)
]


def test_mlvu_readings_of_hard_replies(tmp_path):
    loaded = mlvu.load(write_mlvu(tmp_path), None)
    item = next(i for i in loaded.items if i.id == "5_order/order_126_0")
    assert item.answer == "D"
    replies = [row[0] for row in MLVU_REPLIES]
    for column, rules in enumerate(("mlvu", "mlvu_videochat2", "mlvu_lmms_eval", "msjoe"), start=1):
        assert verdicts("mlvu", rules, item, replies) == [row[column] for row in MLVU_REPLIES], rules


def test_mlvu_keeps_the_rows_choice_bench_scores_and_averages_per_task(tmp_path):
    loaded = mlvu.load(write_mlvu(tmp_path), None)
    assert [item.id for item in loaded.items] == ["5_order/order_126_0", "5_order/order_214_0"]
    # qa_template lines 84-89: the last equal candidate ("" is candidate C), or "@" when there is none
    assert [(row.id, row.answer) for row in loaded.unrunnable] == [
        ("2_needle/needle_4_0", "@"),
        ("3_ego/ego_26_0", "C"),
    ]
    replies = {"5_order/order_126_0": "(D) 1->2->3->4", "5_order/order_214_0": "B) making jewelry",
               "3_ego/ego_26_0": "C) ", "2_needle/needle_4_0": "(B) Catching the drone"}  # fmt: skip
    report = mlvu.score(loaded.items, replies, unrunnable=loaded.unrunnable)
    tasks = {name: (t["correct"], t["total"]) for name, t in report["breakdowns"]["task"].items()}
    assert tasks == {"findNeedle": (0, 1), "ego": (1, 1), "order": (1, 2)}
    assert report["m_avg"] == pytest.approx((0 + 1 + 0.5) / 3)  # main() lines 198-205: mean of task accuracies
    assert report["overall"]["accuracy"] == pytest.approx(2 / 4)
    no_reply = mlvu.score(loaded.items, {}, unrunnable=loaded.unrunnable)
    assert no_reply["overall"]["total"] == 4 and no_reply["counts"]["missing_predictions"] == 4  # as "": wrong
    lmms = mlvu.score(loaded.items, replies, rules="mlvu_lmms_eval", unrunnable=loaded.unrunnable)
    assert lmms["overall"]["total"] == 2 and lmms["m_avg"] == pytest.approx(0.5 / 7)  # over its 7 tasks


# --------------------------------------------------------------------------------------------------------------
# Prediction files and `msjoe score`
# --------------------------------------------------------------------------------------------------------------
def test_lmms_eval_samples_and_videomme_results_are_read(tmp_path):
    samples = tmp_path / "samples_videomme.jsonl"
    lines = [
        {"doc_id": 0, "doc": {"question_id": "001-1", "answer": "C"}, "target": "C", "arguments": [],
         "resps": [["C. Berries."]], "filtered_resps": ["C. Berries."]},
        {"doc_id": 1, "doc": {"question_id": "001-2"}, "resps": [["A"]], "filtered_resps": [["A"]]},
    ]  # fmt: skip
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_predictions(samples, benchmark="videomme") == {"001-1": "C. Berries.", "001-2": "A"}
    with pytest.raises(ValueError, match="pass it \\(--id-field\\)"):
        read_predictions(samples, benchmark="mlvu")
    with pytest.raises(ValueError, match="has no 'uid' field"):
        read_predictions(samples, benchmark="lvbench")
    results = tmp_path / "results.json"  # the template's layout (current keys)
    results.write_text(json.dumps([{"video_id": "001", "duration": "short", "domain": "Knowledge",
                                    "sub_category": "Humanity & History", "questions": [
                                        {"question_id": "001-1", "task_type": "Counting Problem", "answer": "C",
                                         "response": "Answer: C. Disappointed."}]}]))  # fmt: skip
    assert read_predictions(results) == {"001-1": "Answer: C. Disappointed."}


def test_msjoe_prediction_ids_are_strings_or_integers_not_flags(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": 7, "reply": "A"}) + "\n")
    assert read_predictions(predictions) == {"7": "A"}
    predictions.write_text(json.dumps({"id": True, "reply": "A"}) + "\n")
    with pytest.raises(ValueError, match="field 'id' must be a string or an integer, got bool"):
        read_predictions(predictions)


def test_cli_score_writes_the_eval_reports_and_lists_unmatched_ids(tmp_path):
    write_videomme(tmp_path / "ann")
    predictions = tmp_path / "uniform_k8.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": key, "reply": reply}) + "\n"
                for key, reply in [("001-1", "Answer: C. Disappointed."), ("001-2", "A"), ("777-1", "B")])
    )  # fmt: skip
    out = tmp_path / "out"
    args = ["score", "--benchmark", "videomme", "--annotations", str(tmp_path / "ann"), "--predictions",
            str(predictions), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 items without a reply: 001-3, 002-1" in result.output
    assert "1 replies matching no item: 777-1" in result.output
    scores = json.loads((out / "scores.json").read_text())
    run = scores["benchmarks"]["videomme"]["runs"][0]
    assert (run["sampler"], run["k"]) == ("uniform", 8)
    assert run["report"]["overall"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    report_md = (out / "report.md").read_text()
    assert "Scored with rule set `videomme`: follows [thanku-all/parse_answer `eval_your_results.py` @ afd52cfe]" in (
        report_md
    )
    assert "no reply (2): 001-3, 002-1" in report_md and "reply matching no item (1): 777-1" in report_md

    again = CliRunner().invoke(app, [*args, "--rules", "videomme_legacy", "--json"])
    assert again.exit_code == 0, again.output
    runs = json.loads((out / "scores.json").read_text())["benchmarks"]["videomme"]["runs"]
    assert [r["report"]["rules"]["name"] for r in runs] == ["videomme", "videomme_legacy"]  # both kept
    assert runs[1]["report"]["overall"]["correct"] == 1  # "Answer: C..." reads A under the legacy list
    assert "| uniform | `videomme_legacy` | accuracy | 50.0 |" in (out / "report.md").read_text()

    bad = CliRunner().invoke(app, [*args, "--rules", "nope"])
    assert bad.exit_code == 1 and "unknown rule set 'nope' for videomme" in bad.output


def test_score_replies_rejects_items_without_ground_truth():
    with pytest.raises(ValueError, match="1 items have no ground-truth answer"):
        score_replies([QAItem("t", "v.mp4", "q?", ("x", "y"), None)], {"t": "A"}, get_rules("videomme"))
