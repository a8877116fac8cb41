"""One process of tests/test_stage2.py's two-process test (started by torch.distributed.run; not a test module).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_two_process_stage2.py QWEN CLIP FOLDER

Each process trains on its own item; it writes ``FOLDER/rank{R}.json`` with its gradients' error against the
single-process reference over both processes' rollouts, its statistics and a digest of its weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from _stage2_helpers import OPTIONS, VIDEO_FPS, perturb_lora, small_config, with_rewards
from msjoe.data.schema import QAItem
from msjoe.features import DualEncoder
from msjoe.index import index_video
from msjoe.mllm.transformers_backend import TransformersMLLM
from msjoe.samplers.usampler import USampler, USamplerConfig
from msjoe.synthetic_video import Event, event_color, write_video
from msjoe.train.examples import TrainExample
from msjoe.train.stage2 import Stage2Trainer


def main(qwen_dir: str, clip_dir: str, folder: str) -> None:
    """Train, compare with the reference, write the report."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from msjoe.rl.advantages import group_advantages

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    video = write_video(
        Path(folder) / f"video{rank}.mp4", duration=6.0 + 2 * rank, fps=VIDEO_FPS, size=(128, 72),
        events=[Event(2.0, 4.0, event_color(rank))],
    )  # fmt: skip
    encoder = DualEncoder.from_pretrained(clip_dir)
    question = ("What colour is the background?", "Which shape moves?")[rank]
    qa = QAItem(id=f"item-{rank}", video=str(video), question=question, options=OPTIONS, answer="A")
    example = TrainExample(qa=qa, features=index_video(video, encoder, None, fps=1.0))
    mllm = TransformersMLLM(qwen_dir, dtype="float32")
    sampler = USampler(config=USamplerConfig(widths=(8, 16), query_width=4), seed=0, device=accelerator.device)
    trainer = Stage2Trainer(mllm, sampler, encoder, small_config(kl_beta=0.1), accelerator=accelerator)
    perturb_lora(trainer)  # same seed on both processes
    groups = with_rewards(trainer.rollout([example]), ((1.0, 0.0, 0.5), (0.2, 0.9, 0.4))[rank])
    everyone = gather_object([groups[0]])

    trainer.mllm_optimizer.zero_grad(set_to_none=True)
    trainer.mllm_backward(groups)
    policy = trainer.policy_model
    got = {name: p.grad.clone() for name, p in policy.named_parameters() if p.requires_grad}
    trainer.sampler_optimizer.zero_grad(set_to_none=True)
    trainer.sampler_backward(groups)
    got_sampler = {name: p.grad.clone() for name, p in sampler.module.named_parameters()}

    # The reference on the unwrapped modules (no synchronisation), over both processes' rollouts.
    policy.zero_grad(set_to_none=True)
    total_tokens = sum(r.num_tokens for group in everyone for r in group)
    loss = torch.zeros(())
    for group in everyone:
        advantages = group_advantages(torch.tensor([r.reward for r in group], dtype=torch.float64)).tolist()
        for r, advantage in zip(group, advantages, strict=True):
            turns = [(r.query_messages, r.query_token_ids, r.query_ref_logprobs)]
            turns.append((r.answer_messages, r.answer_token_ids, r.answer_ref_logprobs))
            for messages, ids, reference in turns:
                logprobs = mllm.token_logprobs(messages, ids, 1.0, model=policy)
                log_ratio = reference - logprobs  # k3 KL to the base model
                kl = (torch.exp(log_ratio) - log_ratio - 1).sum()
                loss = loss + (-advantage * logprobs.sum() + 0.1 * kl) / total_tokens
    loss.backward()
    sampler.module.zero_grad(set_to_none=True)
    draws = [r for group in everyone for r in group]
    sampler_loss = sum(-r.reward * sampler.log_prob(r.sim, torch.tensor(r.draw_order)) for r in draws) / len(draws)
    sampler_loss.backward()

    def relative_error(got: dict[str, torch.Tensor], module: torch.nn.Module) -> float:
        parameters = [(name, p) for name, p in module.named_parameters() if p.grad is not None]
        return max(float((got[name] - p.grad).abs().max() / (p.grad.abs().max() + 1e-12)) for name, p in parameters)

    report = {
        "mllm_gradient_error": relative_error(got, policy),
        "sampler_gradient_error": relative_error(got_sampler, sampler.module),
        "gradient_norm": float(torch.cat([g.flatten() for g in got.values()]).norm()),
    }
    trainer.update(groups)
    stats = trainer.step([example])
    report["stats"] = {key: value for key, value in stats.to_dict().items() if not key.endswith("seconds")}
    report["weights"] = [
        float(sum(p.detach().double().sum() for p in module.parameters() if p.requires_grad))
        for module in (policy, sampler.module)
    ]

    mllm = TransformersMLLM(qwen_dir, dtype="float32")
    sampler = USampler(config=USamplerConfig(widths=(8, 16), query_width=4), seed=0, device=accelerator.device)
    trainer = Stage2Trainer(mllm, sampler, encoder, small_config(ppo_epochs=2), accelerator=accelerator)
    perturb_lora(trainer)
    stats = trainer.update(with_rewards(trainer.rollout([example]), ((0.5, 0.5, 0.5), (0.2, 0.9, 0.4))[rank]))
    report["epochs"] = {
        "stats": {key: value for key, value in stats.to_dict().items() if not key.endswith("seconds")},
        "weights": [
            float(sum(p.detach().double().sum() for p in module.parameters() if p.requires_grad))
            for module in (trainer.policy_model, sampler.module)
        ],
    }
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    try:
        main(*sys.argv[1:4])
    finally:  # as the CLI commands do: else gloo's worker threads can abort the interpreter at exit
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
