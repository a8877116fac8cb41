"""Stage-1 runs end to end with the tiny real models: outputs, skipped items, SIGKILL + resume, two processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _torchrun import TWO_PROCESSES, two_process_env
from msjoe.data.schema import QAItem, read_qa_jsonl, write_qa_jsonl
from msjoe.data.smoke import write_smoke_dataset
from msjoe.samplers.usampler import USampler
from msjoe.train.checkpoint import CheckpointError, checkpoint_problem, list_checkpoints
from msjoe.train.config import run_config_from_dict
from msjoe.train.metrics import METRICS_FILE, read_metrics
from msjoe.train.run import train_stage1

REPO = Path(__file__).resolve().parents[1]
# Small U-Net: the runs test the training machinery, not the network.
SMALL_SAMPLER = {"widths": [8, 16], "query_width": 4, "norm_group_size": 4}


@pytest.fixture(scope="module")
def smoke_train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smoke QA items plus one whose video is missing (it must be skipped, not crash the run)."""
    folder = tmp_path_factory.mktemp("smoke-data")
    path = write_smoke_dataset(folder, num_items=4, seed=0)
    items = read_qa_jsonl(path)
    missing = QAItem(
        id="missing-video",
        video=str(folder / "not-there.mp4"),
        question=items[0].question,
        options=items[0].options,
        answer="A",
        difficulty=0.5,
        source="test",
    )
    out = folder / "train_with_missing.jsonl"
    write_qa_jsonl(out, [*items, missing])
    return out


def _config(train_file: Path, clip: Path, qwen: Path, output_dir: Path, cache_dir: Path, **trainer: object) -> dict:
    return {
        "stage": 1,
        "models": {"mllm": str(qwen), "dual_encoder": str(clip), "dtype": "float32", "sampler_config": SMALL_SAMPLER},
        "data": {"train": str(train_file), "cache_dir": str(cache_dir), "queries": "mllm", "frame_max_pixels": 3136},
        # baseline "none" (the paper's form): the random tiny MLLM often answers a whole group alike, which the group
        # baseline would turn into zero advantages and no update at all.
        "trainer": {
            "k": 3,
            "steps": 4,
            "batch_size": 2,
            "samples_per_item": 2,
            "baseline": "none",
            "warmup_steps": 1,
            **trainer,
        },
        "run": {"output_dir": str(output_dir), "save_every": 2, "keep_last": 2, "progress": False},
    }


def test_stage1_run_writes_metrics_checkpoints_and_a_trained_sampler(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = run_config_from_dict(_config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache"))
    summary = train_stage1(config)

    assert (summary.steps_done, summary.examples, summary.skipped) == (4, 4, 1)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["missing-video"]
    assert "not-there.mp4" in skipped[0]["reason"]
    records = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert 0 <= record["accuracy"] <= 1 and record["entropy"] > 0
        assert sum(record["frame_position_histogram"]) == 2 * 2 * 3  # items x draws x K
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert list((out / "tensorboard").iterdir())
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["steps"] == 4

    sampler = USampler(checkpoint=summary.exported["sampler"])
    assert sampler.is_trained and sampler.training_steps == 4
    initial = USampler(config=sampler.config, seed=0)
    changed = [
        name
        for (name, trained), (_, fresh) in zip(
            sampler.module.state_dict().items(), initial.module.state_dict().items(), strict=True
        )
        if not trained.equal(fresh)
    ]
    assert changed, "training changed no weight"

    # Rerunning the finished run resumes at its last step and does nothing more.
    again = train_stage1(config)
    assert again.steps_done == 4 and again.resumed_from.name == "step-00000004"
    assert [r["step"] for r in read_metrics(out / METRICS_FILE)] == [1, 2, 3, 4]
    assert USampler(checkpoint=again.exported["sampler"]).training_steps == 4  # restored, not recounted


def test_stage1_run_with_the_gold_probability_reward(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    """The expected reward: no decoding, a probability per rollout, so the group baseline has something to
    centre even when the random model would answer a whole group alike."""
    out = tmp_path / "run"
    raw = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache",
                  answer_reward="gold_probability", baseline="group_mean", steps=2)  # fmt: skip
    summary = train_stage1(run_config_from_dict(raw))
    assert summary.steps_done == 2
    records = read_metrics(out / METRICS_FILE)
    for record in records:  # the mean gold probability of 4 rollouts: not a multiple of 1/4 as 0/1 answers give
        assert 0 < record["accuracy"] < 1 and (record["accuracy"] * 4) % 1 != 0
        assert record["advantage_abs_mean"] > 0
    answers = [json.loads(line) for path in (out / "answer_cache").glob("*.jsonl") for line in path.open()]
    assert answers and all(a["reply"] == "" and 0 < a["letter_mass"] <= 1 for a in answers)
    assert all(abs(sum(a["probabilities"].values()) - 1) < 1e-5 for a in answers)
    assert USampler(checkpoint=summary.exported["sampler"]).training_steps == 2


def _cli(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "msjoe", "train", "stage1", "--config", str(config_path)]


def _env() -> dict[str, str]:
    # One thread, as in this test process: float results must not depend on the thread count.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_losses(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    steps = {"steps": 6}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    for out in (reference_dir, killed_dir):
        out.mkdir()
        config = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, cache, **steps)
        (out / "config.in.yaml").write_text(yaml.safe_dump(config))

    subprocess.run(_cli(reference_dir / "config.in.yaml"), check=True, env=_env(), capture_output=True, timeout=600)
    reference = {r["step"]: r["loss"] for r in read_metrics(reference_dir / METRICS_FILE)}
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    # Kill the second run with SIGKILL once step 3 is logged: after the step-2 checkpoint, before step 4's.
    process = subprocess.Popen(
        _cli(killed_dir / "config.in.yaml"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    metrics = killed_dir / METRICS_FILE
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and any(r["step"] >= 3 for r in read_metrics(metrics)):
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()}"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    logged = [r["step"] for r in read_metrics(metrics)]
    assert 3 in logged and 6 not in logged
    assert list_checkpoints(killed_dir)[-1].name in {"step-00000002", "step-00000004"}

    result = subprocess.run(_cli(killed_dir / "config.in.yaml"), env=_env(), capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    assert "resumed from step-" in result.stdout.decode()
    resumed = read_metrics(metrics)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # redone steps are not duplicated
    assert {r["step"]: r["loss"] for r in resumed} == reference  # exactly the uninterrupted losses


@pytest.mark.slow
def test_two_processes_keep_identical_parameters(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    config = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache", steps=3)
    config["run"]["save_every"] = 0
    (out / "config.in.yaml").write_text(yaml.safe_dump(config))
    command = [*TWO_PROCESSES, str(REPO / "tests" / "_two_process_train.py"), str(out / "config.in.yaml")]
    result = subprocess.run(command, env=two_process_env(), capture_output=True, timeout=900)
    assert result.returncode == 0, result.stderr.decode()[-4000:]

    ranks = [json.loads((out / f"params_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["num_processes"] == ranks[1]["num_processes"] == 2
    assert ranks[0]["digests"] == ranks[1]["digests"]  # DDP kept the replicas identical after every step
    assert len(set(ranks[0]["digests"])) == 3  # ... and they did change at every step
    assert ranks[0]["items"] != ranks[1]["items"]  # each process trained on its own items
    # Each process indexed one of the two readable videos and wrote the frozen MLLM's queries for its items, into
    # the shared feature cache and its own query cache file; then all read everything from the caches.
    videos = {str(Path(item.video)) for item in read_qa_jsonl(smoke_train_file) if Path(item.video).exists()}
    assert len(ranks[0]["decoded"]) == len(ranks[1]["decoded"]) == 1
    assert set(ranks[0]["decoded"]) | set(ranks[1]["decoded"]) == videos
    query_keys = [
        [json.loads(line)["key"] for line in (out / "query_cache" / f"rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    ]
    assert len(query_keys[0]) == len(query_keys[1]) == 2  # two questions per video, each asked once
    assert not set(query_keys[0]) & set(query_keys[1])
    # The item whose video is missing was skipped once, by the process that owned its video, and listed once.
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [entry["id"] for entry in skipped] == ["missing-video"] and "not-there.mp4" in skipped[0]["reason"]
    assert [r["step"] for r in read_metrics(out / METRICS_FILE)] == [1, 2, 3]  # only the main process logs


@pytest.mark.slow
def test_two_processes_agree_to_resume_past_a_checkpoint_damaged_for_one_of_them(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    config = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache", steps=3)
    (out / "config.in.yaml").write_text(yaml.safe_dump(config))  # checkpoints at steps 2 and 3
    command = [*TWO_PROCESSES, str(REPO / "tests" / "_two_process_train.py"), str(out / "config.in.yaml")]
    first = subprocess.run(command, env=two_process_env(), capture_output=True, timeout=900)
    assert first.returncode == 0, first.stderr.decode()[-4000:]
    digests = [json.loads((out / f"params_rank{rank}.json").read_text())["digests"] for rank in (0, 1)]

    _truncate(out / "checkpoints" / "step-00000003" / "trainer_state_rank1.pt")  # only process 1 reads this file
    again = subprocess.run(command, env=two_process_env(), capture_output=True, timeout=900)
    assert again.returncode == 0, again.stderr.decode()[-4000:]
    for rank in (0, 1):
        resumed = json.loads((out / f"params_rank{rank}.json").read_text())
        assert resumed["resumed_from"] == "step-00000002"  # both processes, not just the one whose file is bad
        assert resumed["digests"] == digests[rank][2:]  # step 3 redone exactly as the first time
    assert len(list((out / "checkpoints").glob("damaged-*/step-00000003"))) == 1


@pytest.mark.slow
def test_a_failure_on_one_process_while_preparing_ends_every_process(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    # Indexing fails on process 1 only: process 0 must end with an error naming it, not wait for process 1 at the
    # next collective until the timeout (msjoe.distributed).
    out = tmp_path / "ddp-fail"
    out.mkdir()
    config = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache")
    (out / "config.in.yaml").write_text(yaml.safe_dump(config))
    command = [*TWO_PROCESSES, str(REPO / "tests" / "_two_process_train.py"), str(out / "config.in.yaml")]
    env = two_process_env(MSJOE_TEST_FAIL_INDEXING_ON_RANK="1")
    result = subprocess.run([*command, "--record-error"], env=env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    errors = [json.loads((out / f"error_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert errors[1] == {"type": "CacheError", "message": "simulated: the cache is unwritable on process 1"}
    assert errors[0] == {
        "type": "PeerFailedError",
        "message": "process 1 failed while preparing the training data: CacheError: simulated: the cache is "
        "unwritable on process 1",
    }


def test_nan_loss_stops_the_run_and_saves_the_batch(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path: Path
) -> None:
    import torch

    from msjoe.errors import NonFiniteLossError
    from msjoe.samplers.usampler import USamplerConfig

    # A U-Sampler whose weights blew up (finite, but the logits overflow to inf and the loss to NaN) must stop the
    # run with the batch saved, not train on. (NaN weights themselves are refused when loading.)
    broken = USampler(config=USamplerConfig(**SMALL_SAMPLER), seed=0)
    with torch.no_grad():
        broken.module.head.weight.fill_(3e38)
    broken.training_steps = 1
    folder = broken.save_pretrained(tmp_path / "broken-sampler")

    out = tmp_path / "run"
    raw = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, out, tmp_path / "cache")
    raw["models"]["sampler"] = str(folder)
    with pytest.raises(NonFiniteLossError) as caught:
        train_stage1(run_config_from_dict(raw))
    assert caught.value.step == 1
    saved = torch.load(out / "bad_batches" / "step-00000001-rank0.pt", weights_only=False)
    assert saved["step"] == 1 and len(saved["batch"]["item_ids"]) == 2
    assert not list_checkpoints(out)  # nothing was stepped or saved


# --- damaged checkpoints ---------------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    """Keep the first half of ``path``: what a full disk, a quota or an interrupted copy leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def four_step_run(
    smoke_train_file: Path, tiny_clip_dir: Path, tiny_qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """The raw config and output folder of a finished 4-step stage-1 run with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("four-steps")
    raw = _config(smoke_train_file, tiny_clip_dir, tiny_qwen_dir, root / "run", root / "cache")
    train_stage1(run_config_from_dict(raw))
    assert [path.name for path in list_checkpoints(root / "run")] == ["step-00000002", "step-00000004"]
    return raw, root / "run"


def _copy_of(four_step_run: tuple[dict, Path], out: Path) -> dict:
    raw, run = four_step_run
    shutil.copytree(run, out)
    return {**raw, "run": {**raw["run"], "output_dir": str(out)}}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("model.safetensors", "model.safetensors is truncated"),
        ("optimizer.bin", "optimizer.bin is not a whole torch.save file"),
        ("trainer_state_rank0.pt", "trainer_state_rank0.pt is not a whole torch.save file"),
        ("random_states_0.pkl", "random_states_0.pkl is not a whole torch.save file"),
        ("sampler/config.json", "sampler/config.json is unreadable"),
    ],
)
def test_checkpoint_problem_names_the_truncated_file(
    four_step_run: tuple[dict, Path], tmp_path: Path, name: str, problem: str
) -> None:
    folder = tmp_path / "step"
    shutil.copytree(four_step_run[1] / "checkpoints" / "step-00000004", folder)
    assert checkpoint_problem(folder) is None
    _truncate(folder / name)
    assert checkpoint_problem(folder).startswith(problem)


def test_checkpoint_problem_finds_a_missing_trainer_state(four_step_run: tuple[dict, Path], tmp_path: Path) -> None:
    folder = tmp_path / "step"
    shutil.copytree(four_step_run[1] / "checkpoints" / "step-00000004", folder)
    info = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**info, "num_processes": 2}))
    assert checkpoint_problem(folder) == "trainer_state_rank1.pt is missing"


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "trainer_state_rank0.pt"])
def test_resume_sets_a_damaged_newest_checkpoint_aside_and_resumes_from_the_previous_one(
    four_step_run: tuple[dict, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    out = tmp_path / "run"
    raw = _copy_of(four_step_run, out)
    _truncate(out / "checkpoints" / "step-00000004" / name)
    damaged_size = (out / "checkpoints" / "step-00000004" / name).stat().st_size

    with caplog.at_level(logging.WARNING, logger="msjoe.train.checkpoint"):
        summary = train_stage1(run_config_from_dict(raw))
    assert summary.resumed_from.name == "step-00000002" and summary.steps_done == 4
    assert f"step-00000004 is damaged ({name}" in caplog.text
    [aside] = (out / "checkpoints").glob("damaged-*/step-00000004")  # kept, renamed, not deleted
    assert (aside / name).stat().st_size == damaged_size
    assert [path.name for path in list_checkpoints(out)] == ["step-00000002", "step-00000004"]  # step 4 redone
    # Steps 3 and 4 were redone from the step-2 checkpoint exactly as the first time.
    reference = {r["step"]: r["loss"] for r in read_metrics(four_step_run[1] / METRICS_FILE)}
    assert {r["step"]: r["loss"] for r in read_metrics(out / METRICS_FILE)} == reference


def test_every_checkpoint_damaged_stops_with_their_names_and_keeps_them(
    four_step_run: tuple[dict, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    raw = _copy_of(four_step_run, out)
    _truncate(out / "checkpoints" / "step-00000004" / "optimizer.bin")
    _truncate(out / "checkpoints" / "step-00000002" / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"every checkpoint .*step-00000004: optimizer.bin .*step-00000002: model.safetensors"
    ):
        train_stage1(run_config_from_dict(raw))
    assert not list_checkpoints(out)
    assert len(list((out / "checkpoints").glob("damaged-*/step-*"))) == 2


def test_a_checkpoint_that_does_not_load_is_named(four_step_run: tuple[dict, Path], tmp_path: Path) -> None:
    import torch

    out = tmp_path / "run"
    raw = _copy_of(four_step_run, out)
    # A whole torch.save file, but not an optimiser state: only loading it shows the problem.
    torch.save("not an optimiser state", out / "checkpoints" / "step-00000004" / "optimizer.bin")
    assert checkpoint_problem(out / "checkpoints" / "step-00000004") is None
    with pytest.raises(CheckpointError, match=r"cannot resume from .*step-00000004: .*move it out of"):
        train_stage1(run_config_from_dict(raw))


def test_an_explicit_damaged_resume_folder_is_refused_by_name(four_step_run: tuple[dict, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    raw = _copy_of(four_step_run, out)
    folder = out / "checkpoints" / "step-00000002"
    _truncate(folder / "trainer_state_rank0.pt")
    raw["run"]["resume"] = str(folder)
    with pytest.raises(CheckpointError, match=r"step-00000002 cannot be resumed from: trainer_state_rank0.pt is not"):
        train_stage1(run_config_from_dict(raw))
    assert folder.is_dir()  # named by the user: reported, not moved
