"""The U-Sampler: network shapes and invariances, the training draw and its log-probabilities (checked by brute
force), deterministic selection, checkpoints, and a small learning check."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from msjoe.errors import ModelLoadError
from msjoe.samplers import MAX_QUERIES, get_sampler, policy
from msjoe.samplers.selection import gumbel_topk, independent_log_prob, plackett_luce_log_prob
from msjoe.samplers.unet1d import query_features
from msjoe.samplers.usampler import INFERENCE_RULES, SampledFrames, USampler, USamplerConfig

# A one-level network: same code path (query encoder, residual block, prior, head) at a fraction of the cost,
# for the tests that need thousands of forward passes.
TINY = USamplerConfig(widths=(8,), query_width=8)


def cosine_like(num_queries: int, num_frames: int, seed: int) -> torch.Tensor:
    """Values in [0.15, 0.35]: the narrow band CLIP cosines occupy."""
    generator = torch.Generator().manual_seed(seed)
    return 0.15 + 0.2 * torch.rand(num_queries, num_frames, generator=generator)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Tests run thousands of small forward passes; on a shared 2-core machine two OpenMP threads spin-wait on each
    other and make each pass tens of times slower. Results do not depend on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sampler() -> USampler:
    return USampler(seed=0)


def sequential_draw_probability(probs: list[float], order: tuple[int, ...]) -> float:
    """Reference P(order) for draws without replacement: each draw renormalises over the frames left."""
    left, result = 1.0, 1.0
    for i in order:
        result *= probs[i] / left
        left -= probs[i]
    return result


# --- the network -------------------------------------------------------------------------------------------------


def test_default_network_has_about_two_million_parameters(sampler: USampler) -> None:
    assert 1_500_000 <= sampler.num_parameters <= 2_500_000
    assert sampler.num_parameters == sum(p.numel() for p in sampler.module.parameters())


@pytest.mark.parametrize("num_frames", [1, 2, 7, 16, 17, 1000, 10_000])
def test_one_finite_logit_per_frame_for_any_length_and_query_count(sampler: USampler, num_frames: int) -> None:
    for num_queries in range(1, MAX_QUERIES + 1):
        sim = cosine_like(num_queries, num_frames, seed=num_frames + num_queries)
        with torch.inference_mode():
            logits = sampler.logits(sim)
        assert logits.shape == (num_frames,) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all(), (num_frames, num_queries)


def test_fifty_thousand_frames_forward_and_select(sampler: USampler) -> None:
    sim = cosine_like(4, 50_000, seed=3)
    picks = sampler.select(sim, 64)
    assert len(picks) == 64 and picks.tolist() == sorted(set(picks.tolist()))


def test_logits_do_not_depend_on_query_order(sampler: USampler) -> None:
    sim = cosine_like(4, 333, seed=1)
    reference = sampler.logits(sim)
    for permutation in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        torch.testing.assert_close(sampler.logits(sim[permutation]), reference, rtol=1e-5, atol=1e-5)


def test_query_count_matters_and_duplicated_query_is_not_a_new_one(sampler: USampler) -> None:
    sim = cosine_like(2, 200, seed=2)
    one, two = sampler.logits(sim[:1]), sampler.logits(sim)
    assert not torch.allclose(one, two)
    # Mean and max pooling: repeating a query row adds no information and changes nothing.
    torch.testing.assert_close(sampler.logits(sim[[0, 0]]), one, rtol=1e-5, atol=1e-5)


def test_batch_with_query_and_frame_masks_matches_items_run_alone(sampler: USampler) -> None:
    """Items of different T and Nq right-padded into one batch give each item's own logits; padding gets -inf."""
    lengths, query_counts = [37, 100, 64], [1, 4, 2]
    items = [cosine_like(nq, t, seed=10 + t) for nq, t in zip(query_counts, lengths, strict=True)]
    batch = torch.full((3, MAX_QUERIES, max(lengths)), 123.0)  # garbage in the padding must not matter
    query_mask = torch.zeros(3, MAX_QUERIES, dtype=torch.bool)
    frame_mask = torch.zeros(3, max(lengths), dtype=torch.bool)
    for b, item in enumerate(items):
        batch[b, : item.shape[0], : item.shape[1]] = item
        query_mask[b, : item.shape[0]] = True
        frame_mask[b, : item.shape[1]] = True
    module = sampler.module
    batched = module(batch, query_mask=query_mask, frame_mask=frame_mask)
    assert batched.shape == (3, max(lengths))
    for b, item in enumerate(items):
        length = item.shape[1]
        torch.testing.assert_close(batched[b, :length], module(item), rtol=1e-4, atol=1e-4)
        assert torch.isneginf(batched[b, length:]).all()
        # Drawing every valid frame from the padded row never reaches a padded position.
        drawn = gumbel_topk(batched[b], length, generator=torch.Generator().manual_seed(b))
        assert sorted(drawn.tolist()) == list(range(length))


def test_logits_batch_matches_items_and_is_differentiable(sampler: USampler) -> None:
    items = [cosine_like(1, 5, seed=1), cosine_like(4, 300, seed=2), cosine_like(2, 64, seed=3)]
    batched = sampler.logits_batch(items)
    assert [logits.shape for logits in batched] == [(5,), (300,), (64,)]
    for logits, sim in zip(batched, items, strict=True):
        torch.testing.assert_close(logits, sampler.logits(sim), rtol=1e-4, atol=1e-4)
    sampler.module.zero_grad()
    plackett_luce_log_prob(batched[1], torch.tensor([4, 2, 9])).backward()
    assert sampler.module.head.weight.grad.abs().sum() > 0
    sampler.module.zero_grad()
    with pytest.raises(ValueError, match="at least one"):
        sampler.logits_batch([])


def test_logits_stay_within_the_heads_bound_whatever_the_body_weights() -> None:
    """The head reads a per-frame RMS-normalised tensor, so growth anywhere inside the network (what Adam did to the
    unnormalised path in the diverging stage-1 runs) cannot push a logit past ``||head|| * max|gain| * sqrt(C)``."""
    plain = USampler(config=USamplerConfig(similarity_prior=False), seed=0)
    module = plain.module
    sim = cosine_like(3, 1500, seed=11)
    with torch.no_grad():
        module.head.weight.normal_(std=1.0)
        module.head_norm.weight.uniform_(0.5, 2.0)
        bound = float(module.head.weight.norm() * module.head_norm.weight.abs().max() * math.sqrt(16))
        before = plain.logits(sim)
        generator = torch.Generator().manual_seed(0)
        for name, parameter in module.named_parameters():
            if not name.startswith("head"):
                parameter.mul_(1 + 29 * torch.rand(parameter.shape, generator=generator))  # up to 30x larger
        after = plain.logits(sim)
    assert not torch.allclose(before, after, atol=1e-2)  # the body did change the logits ...
    for logits in (before, after):  # ... but never beyond the head's bound
        assert torch.isfinite(logits).all() and logits.abs().max() <= bound * (1 + 1e-5), (logits.abs().max(), bound)


def test_equal_length_batch_without_masks_matches_items(sampler: USampler) -> None:
    items = torch.stack([cosine_like(3, 90, seed=s) for s in range(4)])
    batched = sampler.module(items)
    for b in range(4):
        torch.testing.assert_close(batched[b], sampler.module(items[b]), rtol=1e-4, atol=1e-4)


def test_masks_are_validated(sampler: USampler) -> None:
    sim = cosine_like(2, 10, seed=0).unsqueeze(0)
    with pytest.raises(ValueError, match="query_mask must have shape"):
        sampler.module(sim, query_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="frame_mask leaves an item with nothing valid"):
        sampler.module(sim, frame_mask=torch.zeros(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \[Nq, T\] or \[B, Nq, T\]"):
        sampler.module(sim.reshape(-1))


@pytest.mark.parametrize("method", ["logits", "probs", "select", "sample"])
def test_bad_similarity_is_rejected(sampler: USampler, method: str) -> None:
    nan_sim = torch.tensor([[0.1, float("nan"), 0.3]])
    call = getattr(sampler, method)
    args = (nan_sim,) if method in ("logits", "probs") else (nan_sim, 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        call(*args)
    with pytest.raises(ValueError, match="1 to 4 query rows"):
        call(torch.zeros(MAX_QUERIES + 1, 6), *args[1:])


# --- input features ------------------------------------------------------------------------------------------


def test_query_features_by_hand() -> None:
    sim = torch.tensor([[[3.0, 1.0, 2.0, 2.0]]])
    features, zscore = query_features(sim, ["cosine", "zscore", "percentile", "minmax"])
    mean, std = 2.0, (0.5**0.5)  # population std of [3, 1, 2, 2]
    expected_z = (torch.tensor([3.0, 1.0, 2.0, 2.0]) - mean) / (std + 1e-3)
    torch.testing.assert_close(features[0, 0, 0], sim[0, 0])
    torch.testing.assert_close(features[0, 0, 1], expected_z)
    torch.testing.assert_close(zscore[0, 0], expected_z)
    # Mid-ranks (1 below 3 of 4 ...): 3 -> (3+4)/4-1, 1 -> (0+1)/4-1, the tied 2s -> (1+3)/4-1.
    torch.testing.assert_close(features[0, 0, 2], torch.tensor([0.75, -0.75, 0.0, 0.0]))
    torch.testing.assert_close(features[0, 0, 3], torch.tensor([1.0, 0.0, 0.5, 0.5]))


def test_percentile_feature_matches_counting_with_ties_and_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    sim = torch.randint(0, 6, (2, 3, 40), generator=generator).float()  # many ties
    lengths = [40, 23]
    mask = torch.arange(40)[None, :] < torch.tensor(lengths)[:, None]
    features, _ = query_features(sim, ["percentile"], mask)
    for b, length in enumerate(lengths):
        for q in range(3):
            row = sim[b, q, :length].tolist()
            expected = [(sum(v < x for v in row) + sum(v <= x for v in row)) / length - 1 for x in row]
            torch.testing.assert_close(features[b, q, 0, :length], torch.tensor(expected))


def test_query_features_of_a_flat_row_carry_no_position() -> None:
    features, _ = query_features(torch.full((1, 1, 9), 0.25), ["zscore", "percentile", "minmax"])
    assert torch.count_nonzero(features) == 0


def test_query_features_ignore_padded_frames() -> None:
    sim = torch.tensor([[[0.2, 0.4, 0.3, 99.0, -99.0]]])
    mask = torch.tensor([[True, True, True, False, False]])
    names = ["cosine", "zscore", "percentile", "minmax"]
    padded, _ = query_features(sim, names, mask)
    alone, _ = query_features(sim[..., :3], names)
    torch.testing.assert_close(padded[..., :3], alone)
    assert torch.count_nonzero(padded[..., 3:]) == 0


# --- sampling (training) -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_frames", "k"), [(300, 32), (5, 2), (3, 8), (1, 1)])
def test_sample_draws_distinct_frames_with_both_log_probs(sampler: USampler, num_frames: int, k: int) -> None:
    sim = cosine_like(3, num_frames, seed=num_frames)
    draw = sampler.sample(sim, k, generator=torch.Generator().manual_seed(0))
    assert isinstance(draw, SampledFrames)
    assert len(set(draw.order.tolist())) == len(draw.order) == min(k, num_frames)
    assert draw.indices.tolist() == sorted(draw.order.tolist())
    logits = sampler.logits(sim)
    torch.testing.assert_close(draw.logits, logits)
    width = sampler.suppression_width(num_frames, k)
    torch.testing.assert_close(draw.log_prob, policy.log_prob(logits, draw.order, width))
    torch.testing.assert_close(draw.log_prob_independent, independent_log_prob(logits, draw.order))
    # Recomputing from the stored draw gives the same numbers.
    torch.testing.assert_close(sampler.log_prob(sim, draw.order), draw.log_prob)
    torch.testing.assert_close(sampler.log_prob(sim, draw.order, estimator="independent"), draw.log_prob_independent)
    if k >= num_frames:  # drawing everything: the set is certain, the order is not
        assert draw.log_prob.item() <= 0


def test_sample_is_reproducible_with_a_seeded_generator(sampler: USampler) -> None:
    sim = cosine_like(2, 500, seed=4)
    first = sampler.sample(sim, 16, generator=torch.Generator().manual_seed(7)).order
    again = sampler.sample(sim, 16, generator=torch.Generator().manual_seed(7)).order
    other = sampler.sample(sim, 16, generator=torch.Generator().manual_seed(8)).order
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("k", [2, 3])
def test_draw_probabilities_are_exact_and_match_draw_frequencies(k: int) -> None:
    """T = 5: enumerate every ordered draw, compare with the sequential reference and with the sampler's draws."""
    small = USampler(config=TINY, seed=1)
    sim = torch.tensor([[0.30, 0.18, 0.25, 0.21, 0.27], [0.20, 0.31, 0.22, 0.19, 0.24]])
    probs = small.probs(sim).double().tolist()
    orders = list(itertools.permutations(range(5), k))
    exact = {order: small.log_prob(sim, torch.tensor(order)).exp().item() for order in orders}
    for order, value in exact.items():
        assert value == pytest.approx(sequential_draw_probability(probs, order), rel=1e-4)
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(exact.values()) > 3 * min(exact.values())  # the test would be weak on a near-uniform distribution

    draws = 2000
    generator = torch.Generator().manual_seed(2024)
    counts = Counter(tuple(small.sample(sim, k, generator=generator).order.tolist()) for _ in range(draws))
    for order, p in exact.items():  # each frequency within 5 binomial standard deviations (+ one draw)
        assert abs(counts[order] / draws - p) <= 5 * math.sqrt(p * (1 - p) / draws) + 1 / draws, order
    assert set(counts) <= set(orders)


@pytest.mark.parametrize("estimator", ["plackett_luce", "independent"])
def test_log_prob_gradients_reach_every_parameter(sampler: USampler, estimator: str) -> None:
    sim = cosine_like(3, 257, seed=5)
    sampler.module.zero_grad()
    draw = sampler.sample(sim, 16, generator=torch.Generator().manual_seed(3))
    (draw.log_prob if estimator == "plackett_luce" else draw.log_prob_independent).backward()
    for name, parameter in sampler.module.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    sampler.module.zero_grad()


def test_log_prob_rejects_bad_orders(sampler: USampler) -> None:
    sim = cosine_like(1, 10, seed=0)
    with pytest.raises(ValueError, match="outside"):
        sampler.log_prob(sim, torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="repeats a frame"):
        sampler.log_prob(sim, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="1-D integer"):
        sampler.log_prob(sim, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="estimator"):
        sampler.log_prob(sim, torch.tensor([1]), estimator="reinforce")  # type: ignore[arg-type]


def test_temperature_divides_logits() -> None:
    sim = cosine_like(2, 50, seed=6)
    base = USampler(config=TINY, seed=0)
    hot = USampler(config=USamplerConfig(widths=(8,), query_width=8, temperature=2.0), seed=0)
    torch.testing.assert_close(hot.logits(sim), base.logits(sim) / 2)


# --- selection (inference) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", INFERENCE_RULES)
def test_select_contract(rule: str) -> None:
    sampler = USampler(inference_rule=rule)
    for num_frames in (1, 2, 7, 50, 301):
        for num_queries in (1, 4):
            sim = cosine_like(num_queries, num_frames, seed=num_frames * 10 + num_queries)
            for k in (1, 3, 8, 32, 400):
                picks = sampler.select(sim, k)
                values = picks.tolist()
                context = f"{rule}: T={num_frames}, Nq={num_queries}, k={k}"
                assert picks.dtype == torch.long and picks.device == sim.device, context
                assert len(values) == min(k, num_frames) and values == sorted(set(values)), context
                assert all(0 <= i < num_frames for i in values), context
                if k >= num_frames:
                    assert values == list(range(num_frames)), context
                assert torch.equal(sampler.select(sim, k), picks), context


def test_select_rules_follow_the_logits(sampler: USampler) -> None:
    sim = cosine_like(2, 400, seed=8)
    logits = sampler.logits(sim).detach()
    topk = USampler(inference_rule="topk").select(sim, 10)
    assert set(topk.tolist()) == set(torch.topk(logits, 10).indices.tolist())
    radius = 7
    nms = USampler(inference_rule="nms", nms_radius=radius).select(sim, 10).tolist()
    assert all(b - a > radius for a, b in itertools.pairwise(nms))
    assert int(torch.argmax(logits)) in nms
    # The default rule: the policy read greedily, with suppression floor(0.125 * 400 / 10) = 5 on each side.
    default = USampler().select(sim, 10).tolist()
    assert USamplerConfig().inference_rule == "policy" and all(b - a > 5 for a, b in itertools.pairwise(default))
    assert int(torch.argmax(logits)) in default


def test_constant_similarity_gives_valid_deterministic_picks(sampler: USampler) -> None:
    sim = torch.full((2, 40), 0.25)
    picks = sampler.select(sim, 8)
    assert len(picks) == 8 and torch.equal(picks, sampler.select(sim, 8))


# --- construction, configuration and checkpoints -----------------------------------------------------------------


def test_seeded_initialisation_is_reproducible_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b, c = USampler(config=TINY, seed=3), USampler(config=TINY, seed=3), USampler(config=TINY, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    weights = [torch.cat([p.flatten() for p in s.module.parameters()]) for s in (a, b, c)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_registry_builds_it_and_reports_untrained() -> None:
    built = get_sampler("usampler", config=TINY, inference_rule="topk")
    assert isinstance(built, USampler) and built.name == "usampler" and built.needs_queries
    assert built.config.inference_rule == "topk" and not built.is_trained
    with pytest.raises(ValueError, match=r"only .* can be overridden"):
        USampler(widths=(8,))
    with pytest.raises(ValueError, match="not both"):
        USampler(checkpoint="somewhere", config=TINY)


@pytest.mark.parametrize(
    ("changes", "message"),
    [  # each message names the field, what it must be and the value given
        ({"inference_rule": "best"}, "inference_rule must be one of ('policy', 'nms', 'topk', 'quantile'), got 'best'"),
        ({"features": ("cosine", "colour")}, "features must be distinct names from"),
        ({"features": "cosine"}, "features must be a tuple of str, got 'cosine'"),
        ({"widths": (8, 12)}, "widths must be positive multiples of norm_group_size=8: [8, 12]"),
        ({"widths": (8, 16.0)}, "widths must be a tuple of int, got (8, 16.0)"),
        ({"widths": ()}, "widths must list at least one level"),
        ({"kernel_size": 4}, "kernel_size must be a positive odd number, got 4"),
        ({"kernel_size": 0}, "kernel_size must be an int >= 1, got 0"),
        ({"query_width": 0}, "query_width must be an int >= 1, got 0"),
        ({"query_width": 8.0}, "query_width must be an int >= 1, got 8.0"),
        ({"level_stride": 1}, "level_stride must be an int >= 2, got 1"),
        ({"norm_group_size": 0}, "norm_group_size must be an int >= 1, got 0"),
        ({"global_context": 1}, "global_context must be true or false, got 1"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"temperature": "1"}, "temperature must be a finite number > 0, got '1'"),
        ({"nms_radius": -1}, "nms_radius must be None or an int >= 0, got -1"),
        ({"nms_radius": 2.5}, "nms_radius must be None or an int >= 0, got 2.5"),
        ({"nms_radius": True}, "nms_radius must be None or an int >= 0, got True"),
        ({"suppression": True}, "suppression must be a finite number >= 0, got True"),
        ({"suppression": -0.5}, "suppression must be a finite number >= 0, got -0.5"),
        ({"suppression": float("nan")}, "suppression must be a finite number >= 0, got nan"),
    ],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        USamplerConfig(**changes)


def test_config_accepts_json_lists_and_every_inference_rule() -> None:
    config = USamplerConfig(features=["cosine"], widths=[8, 16], nms_radius=None, suppression=0)
    assert config.features == ("cosine",) and config.widths == (8, 16)
    assert [USamplerConfig(inference_rule=rule).inference_rule for rule in INFERENCE_RULES] == list(INFERENCE_RULES)


def test_config_json_round_trip() -> None:
    config = USamplerConfig(widths=(8, 16), inference_rule="quantile", nms_radius=3, temperature=0.5)
    assert USamplerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown USamplerConfig fields"):
        USamplerConfig.from_dict({**config.to_dict(), "dropout": 0.1})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    original = USampler(config=USamplerConfig(widths=(8, 16, 24)), seed=5)
    original.training_steps = 12
    folder = original.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = USampler.from_pretrained(folder)
    sim = cosine_like(3, 77, seed=9)
    assert torch.equal(loaded.logits(sim), original.logits(sim))
    assert loaded.config == original.config and loaded.is_trained and loaded.training_steps == 12
    # Inference settings can be overridden at load; the network is untouched.
    relaxed = USampler.from_pretrained(folder, inference_rule="quantile", temperature=2.0)
    assert relaxed.config.inference_rule == "quantile"
    torch.testing.assert_close(relaxed.logits(sim), original.logits(sim) / 2)
    via_registry = get_sampler("usampler", checkpoint=str(folder))
    assert torch.equal(via_registry.select(sim, 8), original.select(sim, 8))


def test_untrained_network_saves_as_untrained(tmp_path: Path) -> None:
    folder = USampler(config=TINY).save_pretrained(tmp_path / "fresh")
    assert not USampler.from_pretrained(folder).is_trained


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return USampler(config=USamplerConfig(widths=(8, 16)), seed=0).save_pretrained(tmp_path / "ckpt")


def test_load_missing_folder_or_files(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        USampler.from_pretrained(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"has no model\.safetensors"):
        USampler.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        USampler.from_pretrained(saved)


def test_load_corrupt_weights(saved: Path) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        USampler.from_pretrained(saved)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        USampler.from_pretrained(saved)


def test_load_nan_weights(saved: Path) -> None:
    broken = USampler(config=USamplerConfig(widths=(8, 16)), seed=0)
    with torch.no_grad():
        broken.module.head.weight.fill_(float("nan"))
    broken.save_pretrained(saved)
    with pytest.raises(ModelLoadError, match=r"NaN or infinite weights in \['head\.weight'\]"):
        USampler.from_pretrained(saved)


def test_load_config_that_does_not_match_the_weights(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["widths"] = [8, 24]
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"do not match its config.json: .*wrong shapes"):
        USampler.from_pretrained(saved)
    meta["config"]["widths"] = [8, 16, 24]
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="missing"):
        USampler.from_pretrained(saved)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: "not json {", "not readable JSON"),
        (lambda meta: json.dumps({**meta, "format": "something-else"}), "not a U-Sampler config"),
        (lambda meta: json.dumps({**meta, "format_version": 99}), "format_version 99"),
        (lambda meta: json.dumps({**meta, "format_version": 1}), "earlier U-Net"),
        (lambda meta: json.dumps({**meta, "config": {**meta["config"], "kernel_size": 4}}), "invalid U-Sampler config"),
        (lambda meta: json.dumps({**meta, "config": {**meta["config"], "depth": 3}}), "unknown USamplerConfig"),
        (lambda meta: json.dumps({**meta, "training_steps": -1}), "training_steps"),
    ],
)
def test_load_bad_config_file(saved: Path, edit, message: str) -> None:
    meta = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(edit(meta))
    with pytest.raises(ModelLoadError, match=message):
        USampler.from_pretrained(saved)


# --- learning ----------------------------------------------------------------------------------------------------


def planted_item(generator: torch.Generator, num_frames: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two queries over background noise: ``(sim, target, decoy)``. The target span is where *both* queries are
    moderately high; in the decoy span one query is very high. The untrained prior (max over queries) prefers the
    decoy, so learning the target means learning to combine queries."""
    sim = 0.2 + 0.01 * torch.randn(2, num_frames, generator=generator)
    starts = torch.randperm(num_frames // 16, generator=generator)[:2] * 16
    target = torch.zeros(num_frames, dtype=torch.bool)
    target[starts[0] : starts[0] + 12] = True
    decoy = torch.zeros(num_frames, dtype=torch.bool)
    decoy[starts[1] : starts[1] + 12] = True
    sim[:, target] += 0.06
    sim[int(torch.randint(2, (1,), generator=generator)), decoy] += 0.15
    return sim, target, decoy


def test_network_learns_to_put_mass_on_a_planted_span() -> None:
    """A few dozen supervised steps (maximise the log-probability of the target frames) on random items move the
    probability mass of held-out items from the decoy onto the target (0.95 and 0.04 after 40 steps, seed 0)."""
    sampler = USampler(seed=0)
    optimizer = torch.optim.Adam(sampler.module.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    held_out = [planted_item(torch.Generator().manual_seed(1000 + i)) for i in range(4)]

    def mass(span: int) -> float:
        with torch.no_grad():
            return sum(float(sampler.probs(item[0])[item[span]].sum()) for item in held_out) / len(held_out)

    target_before, decoy_before = mass(1), mass(2)
    assert decoy_before > target_before
    for _ in range(40):
        sim, target, _ = planted_item(generator)
        loss = -torch.log_softmax(sampler.logits(sim), dim=-1)[target].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mass(1) > 0.9, (target_before, mass(1))
    assert mass(2) < 0.05


def test_a_checkpoint_saved_before_the_policy_loads_with_its_old_sampling(tmp_path: Path) -> None:
    """Pre-policy config.json files have no `suppression`: those weights were trained by plain sampling without
    replacement, so they load with suppression 0 (log-probabilities unchanged) and keep their saved rule."""
    folder = USampler(config=USamplerConfig(widths=(8,), inference_rule="nms"), seed=0).save_pretrained(
        tmp_path / "old"
    )
    meta = json.loads((folder / "config.json").read_text())
    del meta["config"]["suppression"]
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = USampler.from_pretrained(folder)
    assert loaded.config.suppression == 0.0 and loaded.config.inference_rule == "nms"
    assert loaded.suppression_width(3600, 8) == 0
