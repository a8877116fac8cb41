"""The `msjoe` command line, run in-process with typer's runner on tiny models and generated videos."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _chat_server import ScriptedServer, completion, status
from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.cli import app, format_time
from msjoe.defaults import DEFAULT_SAMPLER
from msjoe.samplers import available_samplers, get_sampler
from msjoe.synthetic_video import write_video

runner = CliRunner()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cli-videos")
    return [write_video(folder / f"v{i}.mp4", duration=6.0 + i, fps=5.0, size=(96, 64)) for i in range(2)]


def run(*args: str) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def run_json(*args: str) -> dict:
    """Run a ``--json`` command: stdout must be exactly one JSON document (progress and logs go to stderr)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "command",
    [
        ["index", "v.mp4"],
        ["eval", "--benchmark", "videomme", "--annotations", "a", "--videos", "v", "--out", "o"],
        ["data", "calibrate", "qa.jsonl", "-o", "out.jsonl", "--mllm", "m", "-k", "4"],
    ],
)
def test_a_launch_that_cannot_work_is_one_error_line(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `accelerate launch --multi_gpu` on a machine without GPUs: accelerate sets up one process of N (found on a
    # CPU machine pasting the README's index command, which printed a traceback from every process).
    import contextlib

    import msjoe.distributed
    from msjoe.errors import MsjoeError

    @contextlib.contextmanager
    def single_of_eight() -> Iterator[None]:
        raise MsjoeError("launched as 8 processes but accelerate set up a single one")
        yield

    monkeypatch.setattr(msjoe.distributed, "launched_processes", single_of_eight)
    result = runner.invoke(app, command)
    assert result.exit_code == 1 and not isinstance(result.exception, MsjoeError)  # handled, not raised
    assert "error: launched as 8 processes but accelerate set up a single one" in result.output
    assert "Traceback" not in result.output


def test_index_reports_failures_at_the_end_and_resumes(videos: list[Path], tiny_clip_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("these are not video bytes")
    cache = tmp_path / "cache"
    code, out = run("index", videos[0], missing, not_a_video, videos[1], "--clip", tiny_clip_dir, "--cache-dir", cache)
    assert code == 1
    assert "2 indexed, 0 already cached, 2 failed" in out
    assert "missing.mp4" in out and "notes.mp4" in out
    code, out = run("index", *videos, "--clip", tiny_clip_dir, "--cache-dir", cache)
    assert code == 0 and "0 indexed, 2 already cached, 0 failed" in out


def test_select_prints_sorted_timestamps_as_json(videos: list[Path], tiny_clip_dir: Path, tmp_path: Path) -> None:
    args = ["select", videos[1], "-q", "a white square", "-q", "a grey screen", "-k", "3", "--json"]
    result = run_json(*args, "--sampler", "binmax", "--clip", tiny_clip_dir, "--cache-dir", tmp_path)
    assert result["num_candidates"] == 7 and len(result["timestamps"]) == 3
    assert result["timestamps"] == sorted(result["timestamps"]) and result["queries"] == [
        "a white square",
        "a grey screen",
    ]
    # binmax takes one frame in each integer bin of the 7 candidates: [0, 1], [2, 3], [4, 5, 6].
    first, second, third = result["indices"]
    assert first in (0, 1) and second in (2, 3) and third in (4, 5, 6)


def test_select_with_a_usampler_checkpoint(
    videos: list[Path], tiny_clip_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    get_sampler("usampler", seed=3).save_pretrained(tmp_path / "usampler")
    args = ["select", videos[1], "-q", "a white square", "-k", "3", "--json", "--sampler", "usampler"]
    result = run_json(
        *args, "--sampler-checkpoint", tmp_path / "usampler", "--clip", tiny_clip_dir, "--cache-dir", tmp_path
    )
    assert len(result["indices"]) == 3 and result["indices"] == sorted(set(result["indices"]))
    assert "never trained" in caplog.text


def test_select_table_output(videos: list[Path], tiny_clip_dir: Path, tmp_path: Path) -> None:
    code, out = run("select", videos[0], "-q", "a square", "-k", "2", "--clip", tiny_clip_dir, "--cache-dir", tmp_path)
    assert code == 0, out
    assert f"2 key frames ({DEFAULT_SAMPLER})" in out and "a square" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "usampler"], "needs trained weights"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
        (["-q", "2", "-q", "3", "-q", "4", "-q", "5"], "1 to 4 --query"),
    ],
)
def test_select_rejects_bad_arguments(videos: list[Path], tiny_clip_dir: Path, extra: list[str], message: str) -> None:
    code, out = run("select", videos[0], "-q", "1", *extra, "--clip", tiny_clip_dir)
    assert code == 1 and message in out


def test_select_missing_video_is_a_clear_error(tiny_clip_dir: Path, tmp_path: Path) -> None:
    code, out = run("select", tmp_path / "nope.mp4", "-q", "x", "--clip", tiny_clip_dir, "--cache-dir", tmp_path)
    assert code == 1 and "nope.mp4" in out


@pytest.mark.parametrize(
    "command", [["select", "-q", "x"], ["ask", "Which?", "-o", "a", "-o", "b", "--mllm", "no-mllm"]]
)
def test_a_missing_video_is_reported_before_any_model_loads(command: list[str], tmp_path: Path) -> None:
    # The models do not exist either: the video's error first means nothing was loaded (a 7B MLLM takes minutes).
    video = tmp_path / "nope.mp4"
    code, out = run(command[0], video, *command[1:], "--clip", tmp_path / "no-clip", "--cache-dir", tmp_path)
    assert code == 1 and f"video file not found: {video}" in out.replace("\n", "") and "no-" not in out


def test_ask_json_with_an_http_mllm(
    server: ScriptedServer, videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    server.script.extend(
        [status(200, completion('<queries>["a white square"]</queries>')), status(200, completion("B"))]
    )
    result = run_json(
        "ask", videos[0], "Which one?", "-o", "yes", "-o", "no", "-k", "4", "--mllm", server.url, "--model", "m",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path, "--json",
    )  # fmt: skip
    assert result["letter"] == "B" and result["queries"] == ["a white square"] and result["options"] == ["yes", "no"]
    assert len(result["chosen_timestamps"]) == 4 and result["timings"]["answer"] > 0


def test_ask_human_output_shows_queries_frames_and_answer(
    server: ScriptedServer, videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    server.script.extend([status(200, completion("")), status(200, completion("I am not sure."))])
    code, out = run(
        "ask", videos[0], "Which one?", "-o", "yes", "-o", "no", "-k", "2", "--mllm", server.url, "--model", "m",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path,
    )  # fmt: skip
    assert code == 0, out
    assert "from the question" in out and "Which one?" in out
    assert "answer: <unparsed>" in out and "key frames (2)" in out


def test_ask_gives_up_on_a_silent_server_after_the_timeout_and_retries_it_is_given(
    videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    # The socket listens (the kernel accepts the connection) but nobody ever reads or answers: with the defaults
    # (120 s, 3 retries) this takes 8 minutes to fail.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        started = time.monotonic()
        code, out = run(
            "ask", videos[0], "Which one?", "-o", "yes", "-o", "no", "-k", "2", "--mllm", url, "--model", "m",
            "--timeout", "0.3", "--max-retries", "1", "--clip", tiny_clip_dir, "--cache-dir", tmp_path,
        )  # fmt: skip
        waited = time.monotonic() - started
    assert code == 1 and "timed out after 2 attempts" in out and "Traceback" not in out
    assert waited < 60  # not the default 120 s per attempt


def test_samplers_lists_the_registry() -> None:
    code, out = run("samplers")
    assert code == 0 and out.split() == available_samplers()


def test_smoke_models_writes_loadable_models_and_a_video(tmp_path: Path) -> None:
    code, out = run("smoke-models", tmp_path / "smoke")
    assert code == 0, out
    for name in ("clip/config.json", "qwen2_5_vl/config.json", "demo.mp4"):
        assert (tmp_path / "smoke" / name).exists()
    mtime = (tmp_path / "smoke" / "demo.mp4").stat().st_mtime_ns
    assert run("smoke-models", tmp_path / "smoke")[0] == 0  # idempotent: nothing rewritten
    assert (tmp_path / "smoke" / "demo.mp4").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "0:00.0"), (65.25, "1:05.2"), (3725.0, "1:02:05.0")])
def test_format_time(seconds: float, text: str) -> None:
    assert format_time(seconds) == text


def test_index_store_frames_keeps_the_candidates(videos: list[Path], tiny_clip_dir: Path, tmp_path: Path) -> None:
    code, out = run("index", videos[0], "--store-frames", "--clip", tiny_clip_dir, "--cache-dir", tmp_path)
    assert code == 0, out
    assert len(list((tmp_path / "frames").rglob("*.safetensors"))) == 1


def test_model_text_with_markup_is_printed_verbatim(
    server: ScriptedServer, videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    replies = ['<queries>["[b]bold[/b] square"]</queries>', "[/INST] B [i]"]
    server.script.extend([status(200, completion(r)) for r in replies])
    code, out = run(
        "ask", videos[0], "Which one?", "-o", "yes", "-o", "no", "-k", "2", "--mllm", server.url, "--model", "m",
        "--clip", tiny_clip_dir, "--cache-dir", tmp_path,
    )  # fmt: skip
    assert code == 0, out
    assert "[/INST] B [i]" in out and "[b]bold[/b] square" in out


def test_select_query_with_markup_characters(videos: list[Path], tiny_clip_dir: Path, tmp_path: Path) -> None:
    code, out = run("select", videos[0], "-q", "[/]", "-k", "2", "--clip", tiny_clip_dir, "--cache-dir", tmp_path)
    assert code == 0, out
    assert "[/]" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "foo"], "--model: options of an HTTP server"),
        (["--timeout", "5", "--api-key-env", "K"], "--timeout, --api-key-env: options of an HTTP server"),
        (["--sampler", "bolt2"], "unknown sampler 'bolt2'"),
        (["--sampler", "usampler"], "needs trained weights"),
    ],
)
def test_ask_rejects_bad_settings_before_loading_models(videos: list[Path], extra: list[str], message: str) -> None:
    # The MLLM folder does not exist: reaching the loader would report that instead.
    code, out = run("ask", videos[0], "Which one?", "--mllm", "/nonexistent/model", *extra)
    assert code == 1 and message in out and "Traceback" not in out


def test_index_with_an_unloadable_encoder_is_a_clear_error(videos: list[Path], tmp_path: Path) -> None:
    code, out = run("index", videos[0], "--clip", tmp_path / "no-such-clip", "--cache-dir", tmp_path)
    assert code == 1 and "no-such-clip" in out


def test_cli_defaults_are_the_librarys() -> None:
    import typer.main

    from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM, DEFAULT_SAMPLER
    from msjoe.pipeline import PipelineConfig

    ask = typer.main.get_command(app).commands["ask"]
    defaults = {param.name: param.default for param in ask.params}
    assert defaults["clip"] == DEFAULT_CLIP and defaults["mllm"] == DEFAULT_MLLM
    assert defaults["sampler"] == DEFAULT_SAMPLER and defaults["k"] == PipelineConfig().k


@pytest.mark.slow
def test_index_under_torchrun_splits_the_videos_and_reports_once(
    videos: list[Path], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.mp4"
    cache = tmp_path / "cache"
    args = ["index", *map(str, videos), str(missing), "--clip", str(tiny_clip_dir), "--cache-dir", str(cache)]
    command = [*TWO_PROCESSES, "-m", "msjoe", *args]
    result = subprocess.run(command, env=two_process_env(), capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output  # the missing video fails the job, as with one process
    # ... through the main process alone: had process 1 ended with an error too, torchrun would stop the main process
    # on seeing it, on a loaded machine before the main process had printed the report (a flaky test). Process 1
    # may still be listed, stopped by torchrun (SIGTERM) once the main process has ended.
    assert not re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: 1 ", output), output
    assert output.count("2 indexed, 0 already cached, 1 failed") == 1, output  # the main process reports all shares
    assert "missing.mp4" in output
    # Both shares landed in the shared cache: one process alone now finds every video cached.
    code, out = run("index", *videos, "--clip", tiny_clip_dir, "--cache-dir", cache)
    assert code == 0 and "0 indexed, 2 already cached, 0 failed" in out


_HELP_IMPORTS_NOTHING_HEAVY = """
import sys

import typer
from typer.testing import CliRunner

from msjoe.cli import app

def command_paths(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer ships its own click)
        yield from command_paths(sub, (*path, name))

paths = list(command_paths(typer.main.get_command(app)))
assert len(paths) > 10, paths  # the walk reached the sub-apps (train, data, sim), not only the top level
runner = CliRunner()
for path in paths:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, (path, result.output)
heavy = ("torch", "torchvision", "transformers", "peft", "matplotlib", "httpx")
heavy = sorted(name for name in heavy if name in sys.modules)
assert not heavy, f"--help imported {heavy}"
print(len(paths))
"""


def test_help_of_every_command_imports_no_heavy_library() -> None:
    # A fresh interpreter: this test process has long since imported torch. `--help` must stay quick, so each
    # command imports torch, transformers and the like inside its body, never at module level.
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _HELP_IMPORTS_NOTHING_HEAVY], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) > 10


def test_console_script_help_works() -> None:
    import shutil
    import sys

    script = Path(sys.executable).with_name("msjoe")
    command = [str(script)] if script.exists() else [shutil.which("msjoe") or "msjoe"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: msjoe" in result.stdout and "index" in result.stdout and "train" in result.stdout


@pytest.mark.parametrize(("option", "expected"), [(None, "float32"), ("bfloat16", "bfloat16"), ("auto", "float32")])
def test_index_loads_the_encoder_in_the_dtype_asked(
    option: str | None,
    expected: str,
    videos: list[Path],
    tiny_clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from msjoe.features import DualEncoder

    loaded: list[DualEncoder] = []
    real_load = DualEncoder.from_pretrained.__func__

    def recording_load(cls: type[DualEncoder], *args, **kwargs) -> DualEncoder:
        loaded.append(real_load(cls, *args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(DualEncoder, "from_pretrained", classmethod(recording_load))
    dtype_args = [] if option is None else ["--dtype", option]
    cache = tmp_path / "cache"
    code, out = run("index", videos[0], "--clip", tiny_clip_dir, "--cache-dir", cache, "--workers", "0", *dtype_args)
    assert code == 0, out
    assert [encoder.dtype for encoder in loaded] == [getattr(torch, expected)]  # the tiny CLIP is saved in float32
    assert "1 indexed, 0 already cached, 0 failed" in out


def test_index_refuses_an_unknown_dtype_before_loading(tiny_clip_dir: Path, tmp_path: Path) -> None:
    code, out = run(
        "index", tmp_path / "missing.mp4", "--clip", tiny_clip_dir, "--dtype", "float8", "--cache-dir", tmp_path
    )
    assert code == 1
    assert "--dtype must be one of auto, float32, bfloat16, float16, got 'float8'" in " ".join(out.split())
    assert "--dtype" in run("index", "--help")[1]
