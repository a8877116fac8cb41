"""msjoe.sim: the simulator family, the public protocol driven by a simulator written here, resumable training and
the `msjoe sim` commands."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from msjoe.cli import app
from msjoe.samplers import get_sampler
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.sim import variants
from msjoe.sim.evaluate import paired_difference, score
from msjoe.sim.planted import generate_item
from msjoe.sim.protocol import (
    SimulatorError,
    check_item,
    checked_items,
    item_difficulty,
    load_simulator,
    uniform_pass_rate,
)
from msjoe.sim.train import LOG_FILE, train_on_simulator
from msjoe.train.stage1 import Stage1Config

# A user's simulator, as a researcher would write it: one bump per item, the answer needs a frame inside it.
USER_SIMULATOR = textwrap.dedent(
    """
    import torch


    class Item:
        def __init__(self, generator):
            num_frames = int(torch.randint(60, 120, (1,), generator=generator))
            start = int(torch.randint(0, num_frames - 5, (1,), generator=generator))
            self.spans = [(start, start + 5)]
            self.sim = 0.2 + 0.01 * torch.randn(2, num_frames, generator=generator)
            self.sim[0, start : start + 5] += 0.05

        def p_correct(self, chosen):
            start, end = self.spans[0]
            return 0.9 if bool(((chosen >= start) & (chosen < end)).any()) else 0.25


    class BumpSimulator:
        def items(self, n, seed):
            generator = torch.Generator().manual_seed(seed)
            return [Item(generator) for _ in range(n)]


    def factory():
        return BumpSimulator()
    """
)


@pytest.fixture
def user_simulator(tmp_path: Path) -> str:
    path = tmp_path / "my_simulator.py"
    path.write_text(USER_SIMULATOR)
    return f"{path}:factory"


TINY_RUN = Stage1Config(steps=4, k=4, batch_size=2, samples_per_item=2, warmup_steps=0)
TINY_NET = USamplerConfig(widths=(8, 16))


def test_the_protocol_trains_and_evaluates_a_users_simulator(user_simulator: str, tmp_path: Path) -> None:
    simulator = load_simulator(user_simulator)
    items = checked_items(simulator, 30, seed=1)
    # No difficulty on these items: estimated from p_correct on stratified uniform draws.
    chance = 1 - (1 - 5 / items[0].sim.shape[1]) ** 4  # about the chance that 4 stratified frames hit the span
    assert (
        0.25 < item_difficulty(items[0], 4) < 0.9 and abs(item_difficulty(items[0], 4) - (0.25 + 0.65 * chance)) < 0.2
    )

    out = tmp_path / "trained"
    train_on_simulator(simulator, out, config=TINY_RUN, sampler_config=TINY_NET, progress=False)
    trained = get_sampler("usampler", checkpoint=out)
    assert trained.is_trained and trained.training_steps == 4
    assert len((out / LOG_FILE).read_text().splitlines()) == 4
    scores = score(trained, items, 4)
    assert scores.recall.shape == (30,) and set(np.unique(scores.recall)) <= {0.0, 1.0}
    assert np.all((scores.accuracy == 0.9) == (scores.recall == 1.0))  # the user's answer model, per item


def test_training_resumes_after_a_crash_to_the_same_weights(user_simulator: str, tmp_path: Path) -> None:
    simulator = load_simulator(user_simulator)
    config = Stage1Config(steps=6, k=4, batch_size=2, samples_per_item=2, warmup_steps=0)
    whole = train_on_simulator(simulator, tmp_path / "whole", config=config, sampler_config=TINY_NET, progress=False)

    class Crash(Exception):
        pass

    class CrashingSimulator:
        """The same items, but the 9th item (step 5) cannot be answered: the run dies after saving step 4."""

        def items(self, n: int, seed: int) -> list:
            items = list(simulator.items(n, seed))

            def broken(chosen: torch.Tensor) -> float:
                raise Crash

            items[8].p_correct = broken
            return items

    folder = tmp_path / "crashed"
    with pytest.raises(Crash):
        train_on_simulator(
            CrashingSimulator(),
            folder,
            config=config,
            sampler_config=TINY_NET,
            save_every=2,
            progress=False,
            description="bump",
        )
    assert USampler.from_pretrained(folder).training_steps == 4
    resumed = train_on_simulator(
        simulator, folder, config=config, sampler_config=TINY_NET, save_every=2, progress=False, description="bump"
    )
    assert resumed.training_steps == 6
    for name, tensor in whole.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (folder / LOG_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="other settings"):
        train_on_simulator(simulator, folder, config=Stage1Config(steps=7), sampler_config=TINY_NET, progress=False)


def test_sim_commands(user_simulator: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-trained"
    result = runner.invoke(
        app,
        ["sim", "train", "--simulator", user_simulator, "--out", str(out), "--steps", "2", "-k", "4", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    assert USampler.from_pretrained(out).training_steps == 2
    report = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["sim", "eval", "--simulator", user_simulator, "--sampler", "usampler,binmax,uniform", "--checkpoint", str(out),
         "-k", "4,8", "--items", "12", "--json", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert set(data["results"]) == {"usampler", "binmax", "uniform"} and set(data["results"]["binmax"]) == {"4", "8"}
    assert data["results"]["usampler"]["8"]["recall_minus_reference"] == 0.0
    assert 0 <= data["results"]["binmax"]["8"]["evidence_recall"] <= 1
    result = runner.invoke(app, ["sim", "list"])
    assert result.exit_code == 0 and all(v.name in result.output for v in variants.variants())
    result = runner.invoke(app, ["sim", "eval", "--simulator", "nonexistent", "--items", "4"])
    assert result.exit_code == 1 and "unknown simulator variant" in result.output


def test_protocol_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SimulatorError, match="does not exist"):
        load_simulator(str(tmp_path / "missing.py") + ":factory")
    with pytest.raises(SimulatorError, match="cannot import"):
        load_simulator("no_such_module_here:factory")
    with pytest.raises(SimulatorError, match="no callable 'nothing'"):
        load_simulator("msjoe.sim.variants:nothing")

    class Item:
        sim = torch.zeros(2, 10)
        spans: ClassVar = [(3, 12)]

        def p_correct(self, chosen: torch.Tensor) -> float:
            return 1.5

    with pytest.raises(SimulatorError, match=r"item 7: spans .* <= T = 10"):
        check_item(Item(), 7)
    Item.spans = [(3, 5)]
    check_item(Item(), 0)
    Item.sim = torch.zeros(10)
    with pytest.raises(SimulatorError, match=r"item 0: sim must be a float tensor \[Nq, T\]"):
        check_item(Item(), 0)
    Item.sim = torch.zeros(2, 10)
    with pytest.raises(SimulatorError, match="probability"):
        score(get_sampler("uniform"), [Item()], 4)


@pytest.mark.parametrize("variant", [v.name for v in variants.variants()])
def test_every_variant_makes_valid_items_in_its_range(variant: str) -> None:
    config = variants.get_variant(variant).config
    for item in checked_items(load_simulator(variant), 6, seed=3):
        assert config.min_frames <= item.num_frames <= config.max_frames
        assert 0 <= item.difficulty <= 1


def test_variants_differ_as_described() -> None:
    roles = {v.name: v.role for v in variants.variants()}
    assert sum(r == "validation" for r in roles.values()) >= 3 and sum(r == "held-out" for r in roles.values()) >= 3
    lvbench = variants.get_variant("lvbench").config
    lengths = [span.length for i in range(150) for span in generate_item(lvbench, split_seed=9, index=i).evidence]
    # LVBench's quantiles (p25 4 s, median 17 s, p75 75 s), held to the frames a span must supply.
    assert 2 <= np.percentile(lengths, 25) <= 8 and 9 <= np.median(lengths) <= 30 and np.percentile(lengths, 75) >= 40
    summary = [generate_item(variants.get_variant("global").config, split_seed=9, index=i) for i in range(20)]
    assert all(item.kind == "global" and 6 <= len(item.evidence) <= 12 for item in summary)
    spans = [generate_item(variants.get_variant("multi_span").config, split_seed=9, index=i) for i in range(20)]
    assert all(item.kind == "multi_hop" and 2 <= len(item.evidence) <= 4 for item in spans)
    for name, after in (("relations", 0.75), ("relations_long", 0.5)):
        config = variants.get_variant(name).config
        assert config.relation_fraction > 0 and config.relation_after == after
    relation = [generate_item(variants.get_variant("relations_long").config, split_seed=9, index=i) for i in range(20)]
    assert 8 <= sum(item.kind == "relation" for item in relation) <= 19
    mix = list(load_simulator("validation").items(40, seed=0))
    assert all(item.num_frames >= 300 for item in mix)
    # The validation mix takes its variants in turn; only the 4th, relations, asks relation questions.
    assert {i % 4 for i, item in enumerate(mix) if item.kind == "relation"} == {3}


def test_estimated_pass_rate_matches_the_exact_one() -> None:
    item = generate_item(variants.get_variant("planted").config, split_seed=4, index=2, budget=8)

    class WithoutExact:  # the same item, seen through the protocol only
        sim, spans = item.sim, item.spans

        def p_correct(self, chosen: torch.Tensor) -> float:
            return item.p_correct(chosen)

        def coverage(self, chosen: torch.Tensor) -> float:
            return item.coverage(chosen)

    estimate = uniform_pass_rate(WithoutExact(), 8, draws=400)
    assert estimate == pytest.approx(item.uniform_pass_rate(8), abs=0.03)
    assert item_difficulty(item, 16) == pytest.approx(item.uniform_pass_rate(16), abs=1e-12)  # exact at another K


def test_paired_difference_by_hand() -> None:
    mean, stderr = paired_difference(np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 0.0]))
    # differences 1, 0, 0, 1: mean 0.5, sample sd sqrt(1/3), s.e. sqrt(1/3) / 2
    assert mean == 0.5 and stderr == pytest.approx((1 / 3) ** 0.5 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="same non-empty shape"):
        paired_difference(np.array([1.0]), np.array([1.0, 2.0]))


def test_the_readme_simulator_example_runs(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("**Your own simulator.**") :]
    code = section[
        section.index("```python\n") + len("```python\n") : section.index("\n```", section.index("```python"))
    ]
    (tmp_path / "readme_simulator.py").write_text(code)
    simulator = load_simulator(f"{tmp_path / 'readme_simulator.py'}:factory")
    items = checked_items(simulator, 8, seed=0)
    assert score(get_sampler("topk"), items, 8).mean_recall > score(get_sampler("uniform"), items, 8).mean_recall
