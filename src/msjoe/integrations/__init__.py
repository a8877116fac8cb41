"""Bridges from msjoe to other tools. Each bridge is an optional extra; importing this package imports none of them.

- :mod:`msjoe.integrations.lmms_eval`: the ``msjoe`` model for lmms-eval (``pip install "msjoe[lmms-eval]"``).
"""

from __future__ import annotations

from typing import Any

LMMS_EVAL_MODEL_NAME = "msjoe"


def lmms_eval_model_manifest() -> Any:
    """The ``lmms_eval.models`` entry point: tells lmms-eval that ``--model msjoe`` is
    :class:`msjoe.integrations.lmms_eval.MSJoE`.

    lmms-eval calls this while building its model registry, for every run, whatever model is asked for; it lives
    here rather than beside the model so that it imports nothing heavy (the model module, torch and the pipeline
    are imported only when ``msjoe`` is the model run).
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=LMMS_EVAL_MODEL_NAME, simple_class_path="msjoe.integrations.lmms_eval.MSJoE")
