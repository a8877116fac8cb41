"""Training of MSJoE: the stage-1 and stage-2 trainers (:mod:`~msjoe.train.stage1`, :mod:`~msjoe.train.stage2`
with its config and rollout modules), data preparation, runs on ``accelerate``, checkpoints, metrics and run
configs. The pure maths (rewards, advantages, losses) lives in :mod:`msjoe.rl`; the choices in docs/decisions.md.
"""
