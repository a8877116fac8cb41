"""Reading replies to score from prediction files in the layouts researchers have: msjoe's own, lmms-eval's
``--log_samples`` output, and each benchmark's own submission file.

:func:`read_predictions` returns ``{item id: reply}``; scoring is a rule set's job (:mod:`msjoe.rules`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msjoe.checks import is_int

# The field of an lmms-eval sample's ``doc`` that holds the item id msjoe's loaders give each benchmark's items
# (lmms-eval's own dataset copies; ``--log_samples`` keeps every non-media field of the doc).
LMMS_EVAL_ID_FIELDS = {
    "videomme": "question_id",  # lmms-lab/Video-MME, as lmms-eval's videomme_process_results reads it
    "longvideobench": "id",  # longvideobench/LongVideoBench, as longvideobench_process_results reads it
    "lvbench": "uid",  # lmms-eval/LVBench: assumed to keep LVBench's uid (not checked); --id-field overrides
}


def read_predictions(path: str | Path, *, benchmark: str | None = None, id_field: str | None = None) -> dict[str, str]:
    """Replies by item id from a prediction file, in any of these layouts:

    - JSONL, one ``{"id": ..., "reply": ...}`` per line (what ``msjoe eval`` writes; its error lines, with
      ``"status": "error"`` and no reply, are skipped: the item has no reply, and the rule set says how that
      counts);
    - lmms-eval's ``--log_samples`` JSONL (``samples_<task>.jsonl``): per line ``doc`` and ``filtered_resps``
      (the reply lmms-eval scored); the id is ``doc[id_field]``, by default the field of
      :data:`LMMS_EVAL_ID_FIELDS` for ``benchmark``;
    - a JSON object ``{id: reply}`` (LVBench's answer file for ``compute_accuracy.py``; lmms-eval's
      LongVideoBench submission file);
    - Video-MME's results file (``evaluation/output_test_template.json`` of the Video-MME repository): a list of
      videos, each with ``questions`` holding ``question_id`` and ``response``.

    Ids are returned as strings (LVBench's ``uid`` keys may be integers in hand-written files). Raises
    ``ValueError`` naming the file and the line or entry that is malformed, and for duplicate ids.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"predictions file not found: {path}") from None
    if path.suffix == ".jsonl":
        return _read_jsonl_predictions(path, text, benchmark=benchmark, id_field=id_field)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if isinstance(data, dict):
        predictions = {}
        for key, reply in data.items():
            if not isinstance(reply, str):
                raise ValueError(f"{path}: the reply for id {key!r} must be a string, got {type(reply).__name__}")
            predictions[str(key)] = reply
        return predictions
    if isinstance(data, list):
        return _read_videomme_results(path, data)
    raise ValueError(
        f"{path}: expected a JSON object {{id: reply}} or Video-MME's results list, got {type(data).__name__}"
    )


def _read_jsonl_predictions(path: Path, text: str, *, benchmark: str | None, id_field: str | None) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected an object with 'id' and 'reply'")
        if "doc" in record and "filtered_resps" in record:
            key, reply = _lmms_eval_sample(path, number, record, benchmark, id_field)
            if key in predictions:
                raise ValueError(f"{path}:{number}: duplicate id {key!r} (doc[{id_field or 'id'!r}])")
            predictions[key] = reply
            continue
        if record.get("status") == "error" and record.get("reply") is None:
            continue  # the pipeline failed on this item: there is no reply to score
        for name in ("id", "reply"):
            if name not in record:
                raise ValueError(f"{path}:{number}: field {name!r} is required")
        key, reply = record["id"], record["reply"]
        if not (isinstance(key, str) or is_int(key)):
            raise ValueError(f"{path}:{number}: field 'id' must be a string or an integer, got {type(key).__name__}")
        if not isinstance(reply, str):
            raise ValueError(f"{path}:{number}: field 'reply' must be a string, got {type(reply).__name__}")
        if str(key) in predictions:
            raise ValueError(f"{path}:{number}: duplicate id {key!r}")
        predictions[str(key)] = reply
    return predictions


def _read_videomme_results(path: Path, videos: list[Any]) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for v, video in enumerate(videos):
        if not isinstance(video, dict) or not isinstance(video.get("questions"), list):
            raise ValueError(f"{path}: entry {v} must be a video object with a 'questions' list (Video-MME layout)")
        for q, question in enumerate(video["questions"]):
            where = f"{path}: entry {v}, questions[{q}]"
            if not isinstance(question, dict) or "question_id" not in question or "response" not in question:
                raise ValueError(f"{where}: 'question_id' and 'response' are required")
            if not isinstance(question["response"], str):
                raise ValueError(f"{where}: 'response' must be a string")
            key = str(question["question_id"])
            if key in predictions:
                raise ValueError(f"{where}: duplicate question_id {key!r}")
            predictions[key] = question["response"]
    return predictions


def _lmms_eval_sample(
    path: Path, number: int, record: dict[str, Any], benchmark: str | None, id_field: str | None
) -> tuple[str, str]:
    """``(id, reply)`` of one lmms-eval ``--log_samples`` line: the reply is ``filtered_resps[0]`` (what the
    task's ``process_results`` received; a list of generations gives its first)."""
    field = id_field or LMMS_EVAL_ID_FIELDS.get(benchmark or "")
    where = f"{path}:{number}"
    if field is None:
        raise ValueError(
            f"{where}: an lmms-eval sample; which field of its 'doc' holds the item id is not known for "
            f"{benchmark or 'this benchmark'}: pass it (--id-field)"
        )
    doc = record["doc"]
    if not isinstance(doc, dict) or doc.get(field) is None:
        raise ValueError(f"{where}: the sample's doc has no {field!r} field (choose another with --id-field)")
    responses: Sequence[Any] = record["filtered_resps"]
    reply = responses[0] if isinstance(responses, list) and responses else None
    if isinstance(reply, list):
        reply = reply[0] if reply else None
    if not isinstance(reply, str):
        raise ValueError(f"{where}: 'filtered_resps' must hold the reply string, got {responses!r:.80}")
    return str(doc[field]), reply
