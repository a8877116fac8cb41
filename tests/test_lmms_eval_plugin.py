"""msjoe's lmms-eval model, run by lmms-eval itself: a tiny local task (a JSON file of four questions about
generated videos, a task YAML with its ``utils.py``) evaluated through ``simple_evaluate`` with the model found by
name through msjoe's ``lmms_eval.models`` entry point, and lmms-eval's ``Instance`` objects fed to
``generate_until`` directly.

Skipped when lmms-eval is not importable: it is an optional extra whose full install drags in a CUDA torch build.
Install what these tests need without touching the environment's torch or PyAV (see docs/lmms_eval.md):

    pip install -c constraints.txt --no-deps -r requirements-lmms-eval.txt
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from _chat_server import Handler, ScriptedServer, completion, status

SKIP_REASON = "lmms-eval is not installed (optional extra; see docs/lmms_eval.md for a CPU-only install)"
pytest.importorskip("lmms_eval.api.model", reason=SKIP_REASON)

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402

from msjoe.cache import FeatureCache  # noqa: E402
from msjoe.eval.failures import SYSTEMATIC_FAILURES, SystematicFailureError  # noqa: E402
from msjoe.features import DualEncoder  # noqa: E402
from msjoe.integrations.lmms_eval import MSJoE, split_multiple_choice  # noqa: E402
from msjoe.mllm import load_mllm  # noqa: E402
from msjoe.mllm.errors import BackendCheckError  # noqa: E402
from msjoe.pipeline import PipelineConfig, VideoQA  # noqa: E402
from msjoe.synthetic_video import write_video  # noqa: E402

OPTIONS = ["red", "green", "blue", "yellow"]
# doc id -> (answer, the reply the scripted MLLM gives); the task's rule reads the first capital A-D.
DOCS = {
    "d0": ("A", "A"),  # right
    "d1": ("B", "C"),  # wrong
    "d2": ("C", "C\n\nBecause the square is blue."),  # right; the task's until="\n\n" cuts the explanation
    "d3": ("D", "The answer is D."),  # right
}
HAND_ACCURACY = 3 / 4
ANSWER_TURN_MARK = "Answer with the option's letter"
FRAMES = 3

TASK_UTILS = """
import re


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", doc["options"]))
    return (
        "Select the best answer to the following multiple-choice question based on the video.\\n"
        f"{doc['question']}\\n{options}\\nAnswer with the option's letter from the given choices directly."
    )


def process_results(doc, results):
    match = re.search(r"[ABCD]", results[0])
    return {"accuracy": float(match is not None and match.group(0) == doc["answer"])}
"""


def question_text(doc_id: str) -> str:
    return f"Question {doc_id}: what colour is the square?"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lmms-videos")
    return {
        doc_id: write_video(folder / f"{doc_id}.mp4", duration=4.0 + i, fps=2.0, size=(64, 48))
        for i, doc_id in enumerate(DOCS)
    }


@pytest.fixture
def task_dir(videos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local lmms-eval task ``msjoe_tiny_videoqa`` over ``videos``; every cache goes under ``tmp_path``."""
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "LMMS_EVAL_DATASETS_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / "hf" / name.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "task"
    folder.mkdir()
    docs = [
        {"id": doc_id, "video": str(videos[doc_id]), "question": question_text(doc_id), "options": OPTIONS,
         "answer": answer}
        for doc_id, (answer, _) in DOCS.items()
    ]  # fmt: skip
    (folder / "docs.json").write_text(json.dumps(docs))
    (folder / "utils.py").write_text(TASK_UTILS)
    (folder / "msjoe_tiny_videoqa.yaml").write_text(
        textwrap.dedent(f"""\
            task: msjoe_tiny_videoqa
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {folder / "docs.json"}
            test_split: test
            output_type: generate_until
            doc_to_visual: !function utils.doc_to_visual
            doc_to_text: !function utils.doc_to_text
            doc_to_target: answer
            generation_kwargs:
              max_new_tokens: 16
              temperature: 0
              do_sample: false
              until: ["\\n\\n"]
            process_results: !function utils.process_results
            metric_list:
              - metric: accuracy
                aggregation: mean
                higher_is_better: true
            metadata:
              - version: 0.0
            """)
    )
    return folder


def prompt_text(body: dict[str, Any]) -> str:
    return "\n".join(
        part if isinstance(part, str) else part.get("text", "")
        for message in body["messages"]
        for part in (message["content"] if isinstance(message["content"], list) else [message["content"]])
    )


def scripted_mllm(handler: Handler, body: dict[str, Any]) -> None:
    """Queries for the query turn; for the answer turn, the reply scripted for the question in the prompt."""
    prompt = prompt_text(body)
    if ANSWER_TURN_MARK not in prompt:
        handler.send_json(200, completion("1. a red square\n2. a blue screen"))
        return
    reply = next(reply for doc_id, (_, reply) in DOCS.items() if question_text(doc_id) in prompt)
    handler.send_json(200, completion(reply))


def image_count(body: dict[str, Any]) -> int:
    return sum(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
    )


def test_entry_point_registers_the_model() -> None:
    # Fails (rather than skips) when msjoe's install predates the entry point: reinstall with `pip install -e .`.
    assert get_model("msjoe") is MSJoE


def test_simple_evaluate_runs_the_pipeline_on_a_local_task(
    server: ScriptedServer, tiny_clip_dir: Path, task_dir: Path, tmp_path: Path
) -> None:
    evaluator = pytest.importorskip("lmms_eval.evaluator", reason=SKIP_REASON)
    from lmms_eval.tasks import TaskManager

    server.default = scripted_mllm
    log_file = tmp_path / "msjoe-requests.jsonl"
    model_args = (
        f"mllm={server.url},model=served,clip={tiny_clip_dir},sampler=bolt,frames={FRAMES},"
        f"cache_dir={tmp_path / 'cache'},log_file={log_file}"
    )
    results = evaluator.simple_evaluate(
        model="msjoe",
        model_args=model_args,
        tasks=["msjoe_tiny_videoqa"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
        process_docs_parallel=1,
    )

    assert results["results"]["msjoe_tiny_videoqa"]["accuracy,none"] == pytest.approx(HAND_ACCURACY)
    samples = {sample["doc"]["id"]: sample for sample in results["samples"]["msjoe_tiny_videoqa"]}
    assert samples["d2"]["filtered_resps"] == ["C"]  # cut at the task's stop string
    assert samples["d1"]["filtered_resps"] == ["C"]

    # Each doc: a query turn with K/2 preview frames, then an answer turn with K key frames and the parsed options.
    answer_turns = [body for *_, body in server.requests if ANSWER_TURN_MARK in prompt_text(body)]
    query_turns = [body for *_, body in server.requests if ANSWER_TURN_MARK not in prompt_text(body)]
    assert len(answer_turns) == len(query_turns) == len(DOCS)
    assert all(image_count(body) == FRAMES for body in answer_turns)
    assert all(image_count(body) == FRAMES // 2 for body in query_turns)
    assert all("Options:\nA. red\nB. green\nC. blue\nD. yellow" in prompt_text(body) for body in answer_turns)
    assert all(body["max_tokens"] == 16 for body in answer_turns)  # the task's max_new_tokens

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert sorted(line["question"] for line in lines) == sorted(
        "Select the best answer to the following multiple-choice question based on the video.\n" + question_text(d)
        for d in DOCS
    )
    for line in lines:
        assert line["options"] == OPTIONS and line["queries"] == ["a red square", "a blue screen"]
        assert len(line["chosen_timestamps"]) == FRAMES and line["error"] is None


def test_generate_until_with_lmms_eval_instances_and_tiny_local_models(
    tiny_qwen_dir: Path, tiny_clip_dir: Path, videos: dict[str, Path], tmp_path: Path
) -> None:
    model_class = get_model("msjoe")
    log_file = tmp_path / "log.jsonl"
    model = model_class.create_from_arg_string(
        f"mllm={tiny_qwen_dir},clip={tiny_clip_dir},sampler=uniform,frames=2,cache_dir={tmp_path / 'cache'},"
        f"log_file={log_file}",
        {"batch_size": 1, "device": "cpu"},
    )
    docs = [{"video": str(videos[doc_id]), "question": question_text(doc_id)} for doc_id in ("d0", "d1")]
    docs.append({"video": str(tmp_path / "absent.mp4"), "question": question_text("d2")})
    model.task_dict = {"tiny": {"test": docs}}
    requests = [
        Instance(
            request_type="generate_until",
            arguments=(
                f"{doc['question']}\nA. red\nB. green\nC. blue\nD. yellow\nThe best answer is:",
                {"max_new_tokens": 4, "until": ["\n\n"]},
                lambda doc: [doc["video"]],
                index,
                "tiny",
                "test",
            ),
            idx=0,
            metadata={"task": "tiny", "doc_id": index, "repeats": 1},
        )
        for index, doc in enumerate(docs)
    ]
    replies = model.generate_until(requests)

    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    assert replies[2] == ""  # the missing video: an empty reply (scored wrong by any task), listed in failures
    [(where, error)] = model.failures
    assert where == "task 'tiny' (test) doc 2" and error.startswith("VideoNotFoundError")
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [line["doc_id"] for line in lines] == [0, 1, 2]
    assert [line["options"] for line in lines] == [OPTIONS] * 3
    assert all(len(line["chosen_timestamps"]) == 2 for line in lines[:2])
    assert [line["reply"] for line in lines] == replies
    assert lines[2]["error"] == error and lines[2]["queries"] == []


def test_http_settings_from_model_args_reach_the_backend(
    server: ScriptedServer, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_PROVIDER_KEY", "provider-key")
    arguments = f"mllm={server.url},model=m,clip={tiny_clip_dir},timeout=2.5,max_retries=0,api_key_env=MY_PROVIDER_KEY"
    model = get_model("msjoe").create_from_arg_string(arguments)
    backend = model.qa.mllm
    assert backend.max_retries == 0 and backend._client.timeout.read == 2.5
    assert backend._client.headers["Authorization"] == "Bearer provider-key"
    with pytest.raises(ValueError, match=r"timeout: options of an HTTP server"):
        get_model("msjoe").create_from_arg_string(f"mllm=/local/model,clip={tiny_clip_dir},timeout=3")


def test_a_model_the_server_does_not_serve_fails_when_the_model_is_built(
    server: ScriptedServer, tiny_clip_dir: Path
) -> None:
    server.check = status(404, {"object": "error", "message": "The model `typo` does not exist."})  # vLLM's answer
    with pytest.raises(BackendCheckError, match=r"model 'typo'.*does not exist.*the server lists \['served-model'\]"):
        get_model("msjoe").create_from_arg_string(f"mllm={server.url},model=typo,clip={tiny_clip_dir}")
    assert server.requests == []


def test_requests_failing_alike_from_the_first_stop_the_run(
    server: ScriptedServer, tiny_clip_dir: Path, videos: dict[str, Path], tmp_path: Path
) -> None:
    server.default = status(400, {"object": "error", "message": "this model does not accept image inputs"})
    qa = VideoQA(
        DualEncoder.from_pretrained(str(tiny_clip_dir)),
        load_mllm(server.url, model="m"),
        FeatureCache(tmp_path / "cache"),
        PipelineConfig(k=2, sampler="uniform"),
    )
    model = MSJoE.from_pipeline(qa)
    doc_ids = [*DOCS, "d0", "d1"]  # 6 requests
    model.task_dict = {"t": {"test": [{"video": str(videos[doc_id])} for doc_id in doc_ids]}}
    requests = [
        Instance(
            "generate_until",
            (f"{question_text(doc_id)}\nA. x\nB. y", {}, lambda doc: [doc["video"]], i, "t", "test"),
            0,
            {"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, doc_id in enumerate(doc_ids)
    ]
    with pytest.raises(SystematicFailureError, match=rf"first {SYSTEMATIC_FAILURES} items .* image inputs"):
        model.generate_until(requests)
    assert len(server.requests) == SYSTEMATIC_FAILURES


def test_unsupported_requests_fail_with_a_clear_message(server: ScriptedServer, tiny_clip_dir: Path) -> None:
    qa = VideoQA(
        DualEncoder.from_pretrained(str(tiny_clip_dir)),
        load_mllm(server.url, model="m"),
        FeatureCache(),
        PipelineConfig(),
    )
    model = MSJoE.from_pipeline(qa)
    with pytest.raises(NotImplementedError, match="only generates"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="single-turn"):
        model.generate_until_multi_round([])
    model.task_dict = {"t": {"test": [{"x": 1}]}}
    image_request = Instance(
        "generate_until",
        ("q?", {}, lambda doc: [object()], 0, "t", "test"),
        0,
        {"task": "t", "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(ValueError, match=r"task 't' \(test\) doc 0: msjoe answers questions about one video file"):
        model.generate_until([image_request])
    with pytest.raises(ValueError, match="reply must be 'raw' or 'letter'"):
        MSJoE.from_pipeline(qa, reply="json")


@pytest.mark.parametrize(
    ("prompt", "question", "options"),
    [
        (
            "Select the best answer.\nWhat is shown?\nA. a cat\nB. a dog\nC. a bird\nAnswer with the letter.",
            "Select the best answer.\nWhat is shown?",
            ["a cat", "a dog", "a bird"],
        ),
        (
            "What is shown?\nOptions:\n(A) a cat\n(B) a dog\nOnly give the best option.",
            "What is shown?",
            ["a cat", "a dog"],
        ),
        ("Who?\nA) Ann\nB) Bob", "Who?", ["Ann", "Bob"]),
        # An earlier block (a few-shot example) is part of the question; the last block is the options.
        ("Q1\nA. x\nB. y\nQ2\nA. u\nB. v\nC. w", "Q1\nA. x\nB. y\nQ2", ["u", "v", "w"]),
        ("Describe the video.", "Describe the video.", None),  # free-form
        ("A. x\nB. y", "A. x\nB. y", None),  # nothing to ask: the whole prompt, free-form
        ("Which?\nA. x\nC. y", "Which?\nA. x\nC. y", None),  # letters out of order: not an option block
        ("A man walks.\nB movies are fun.", "A man walks.\nB movies are fun.", None),  # no labels
    ],
)
def test_split_multiple_choice(prompt: str, question: str, options: list[str] | None) -> None:
    assert split_multiple_choice(prompt) == (question, options)


def test_documented_offline_smoke_task_runs_as_pasted(tmp_path: Path) -> None:
    """docs/lmms_eval.md's "Check the install offline" block, pasted into a shell at a repository root, evaluates the
    example task through lmms-eval's own command line and writes one sample per doc with msjoe's reply."""
    import os
    import re
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "lmms_eval.md").read_text()
    block = re.search(r"<!-- smoke-task -->\n```bash\n(.*?)```", doc, re.S)
    assert block, "docs/lmms_eval.md lost its smoke-task block"
    (tmp_path / "examples").symlink_to(root / "examples", target_is_directory=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update({name: str(tmp_path / "hf" / name.lower()) for name in ("HF_HOME", "LMMS_EVAL_DATASETS_CACHE")})
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Error during evaluation" not in output, output[-3000:]  # lmms-eval exits 0 even then
    [samples] = (tmp_path / "smoke-runs" / "lmms-eval").glob("*_samples_msjoe_smoke_videoqa.jsonl")
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    expected = [json.loads(line) for line in (root / "examples/lmms_eval_smoke/docs.jsonl").read_text().splitlines()]
    assert sorted(line["doc_id"] for line in lines) == list(range(len(expected)))
    assert all(line["target"] == doc["answer"] and doc["question"] in line["input"] for line, doc in zip(
        sorted(lines, key=lambda line: line["doc_id"]), expected, strict=True))  # fmt: skip
    assert all(isinstance(line["resps"], str) and line["resps"].strip() for line in lines)  # the tiny MLLM replied
    assert "msjoe_smoke_videoqa" in output  # the results table
