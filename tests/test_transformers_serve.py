"""The HTTP backend against an OpenAI-compatible server we did not write: ``transformers serve`` with the tiny random
Qwen2.5-VL, started as a subprocess on a free 127.0.0.1 port. ``msjoe ask`` and a small ``msjoe eval`` run over it,
and a wrong ``--model`` name stops ``eval`` with the server's own message. Fault injection (timeouts, 5xx, dropped
connections) stays with the scripted server (tests/_chat_server.py), which can misbehave on cue.

Needs ``fastapi`` and ``uvicorn`` (the dev extra installs them, as ``transformers serve`` requires).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.mllm import GenerationConfig, ImagePart, Message, load_mllm
from msjoe.synthetic_video import Event, event_color, write_video

pytest.importorskip("fastapi", reason="transformers serve needs fastapi (in the dev extra)")
pytest.importorskip("uvicorn", reason="transformers serve needs uvicorn (in the dev extra)")

STARTUP_SECONDS = 180  # importing transformers and loading the model on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served_qwen(tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` pinned to the tiny Qwen2.5-VL folder; yields its ``.../v1`` URL."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("transformers-serve") / "server.log"
    command = [
        sys.executable, "-c", "from transformers.cli.transformers import main; main()",
        "serve", str(tiny_qwen_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer /health in {STARTUP_SECONDS} s")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("serve-videos")
    return [
        write_video(
            folder / f"v{i}.mp4", duration=4.0, fps=4.0, size=(64, 48), events=[Event(1.0, 2.0, event_color(i))]
        )
        for i in range(2)
    ]


def test_the_server_answers_as_the_local_backend_does(served_qwen: str, tiny_qwen_dir: Path) -> None:
    local = load_mllm(str(tiny_qwen_dir), device="cpu", dtype="float32")
    remote = load_mllm(served_qwen)  # the model name is read from GET /models: the folder the server is pinned to
    assert remote.model == str(tiny_qwen_dir)
    greedy = GenerationConfig(max_new_tokens=12, temperature=0.0)
    chat = [Message("system", ["Be brief."]), Message("user", ["What colour is the sky?"])]
    # The same greedy tokens (the server trims the reply's leading space; the text is otherwise identical).
    assert remote.chat(chat, greedy).strip() == local.chat(chat, greedy).strip()

    # Frames reach the server at the visual token count the local backend uses: the client sends them resized to
    # their budget in sides of 28 pixels, so the server's own resizing keeps them as they are.
    frame = np.random.default_rng(0).integers(0, 256, (72, 128, 3), dtype=np.uint8)
    chats = [
        [Message("user", [ImagePart(frame, max_pixels=28 * 28 * 4), "What is this?"])],
        [Message("user", [ImagePart(frame, max_pixels=28 * 28 * 6), ImagePart(frame[:, :64]), "Which one?"])],
    ]
    for chat in chats:
        body = remote.request_body(chat, GenerationConfig(max_new_tokens=1))
        usage = httpx.post(f"{served_qwen}/chat/completions", json=body, timeout=120).json()["usage"]
        assert usage["prompt_tokens"] == local.encode(chat)["input_ids"].shape[1]


def test_msjoe_ask_over_transformers_serve(
    served_qwen: str, videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    args = [
        "ask", videos[0], "What colour flashes?", "-o", "red", "-o", "green", "-k", "4", "--sampler", "bolt",
        "--mllm", served_qwen, "--timeout", "120", "--clip", tiny_clip_dir, "--cache-dir", tmp_path, "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    # The random model's words are noise, but both turns went through the server and came back as text.
    assert answer["query_reply"] and answer["reply"] and answer["status"] in {"ok", "ambiguous", "unparsed"}
    assert len(answer["chosen_timestamps"]) == 4 and len(answer["preview_timestamps"]) == 2
    assert answer["timings"]["query_reasoning"] > 0 and answer["timings"]["answer"] > 0


def _longvideobench(folder: Path, videos: list[Path], questions: int) -> Path:
    """A LongVideoBench-format annotation file with ``questions`` items over ``videos``."""
    rows = [
        {
            "id": f"q{i}", "video_id": videos[i % len(videos)].stem, "video_path": videos[i % len(videos)].name,
            "question": f"Question {i}: what colour flashes?", "candidates": ["red", "green", "blue", "yellow"],
            "correct_choice": i % 4, "duration": 4.0, "duration_group": 15, "question_category": "S2E",
        }
        for i in range(questions)
    ]  # fmt: skip
    path = folder / "lvb_val.json"
    path.write_text(json.dumps(rows))
    return path


def _eval_args(annotations: Path, videos: list[Path], url: str, clip: Path, out: Path, tmp_path: Path) -> list[str]:
    return [
        "eval", "--benchmark", "longvideobench", "--annotations", str(annotations), "--videos", str(videos[0].parent),
        "--sampler", "uniform,bolt", "--frames", "2", "--mllm", url, "--workers", "2", "--clip", str(clip),
        "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json",
    ]  # fmt: skip


def test_msjoe_eval_over_transformers_serve(
    served_qwen: str, videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    annotations = _longvideobench(tmp_path, videos, questions=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, _eval_args(annotations, videos, served_qwen, tiny_clip_dir, out, tmp_path))
    assert result.exit_code == 0, result.output  # no item failed
    entry = json.loads(result.stdout)
    assert {(run["sampler"], run["k"]) for run in entry["runs"]} == {("uniform", 2), ("bolt", 2)}
    for run in entry["runs"]:
        assert run["errors"] == 0 and run["report"]["overall"]["total"] == 3
        lines = [json.loads(line) for line in (out / run["predictions"]).read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == ["q0", "q1", "q2"]
        assert all(line["status"] != "error" and line["reply"] for line in lines)
    assert (out / "report.md").exists()


def test_msjoe_eval_with_a_model_name_the_server_does_not_serve(
    served_qwen: str, videos: list[Path], tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    annotations = _longvideobench(tmp_path, videos, questions=3)
    out = tmp_path / "out"
    args = [*_eval_args(annotations, videos, served_qwen, tiny_clip_dir, out, tmp_path), "--model", "Qwen/typo"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    # The check before the first item fails with the server's own words and the model it serves.
    assert "cannot answer a chat with model 'Qwen/typo'" in message
    assert f"Server is pinned to '{tiny_qwen_dir}'; requested 'Qwen/typo'" in message
    assert f"the server lists ['{tiny_qwen_dir}']" in message
    assert not any(path.read_text() for path in out.glob("predictions/*/*.jsonl"))  # no item ran
