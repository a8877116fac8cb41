"""Training runs of MSJoE (DESIGN.md §4): data preparation, the stage-1 and stage-2 loops on ``accelerate``,
checkpoints, metrics and run configs. The pure maths (rewards, advantages, losses) lives in :mod:`msjoe.rl`.
"""
