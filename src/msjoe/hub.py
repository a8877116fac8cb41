"""Fail fast when a Hugging Face id can neither come from the local cache nor from the hub.

Without this check, ``from_pretrained`` on an uncached id with no network retries every file for about a minute
(printing a warning for each try) before it gives up. :func:`require_hub_model` looks in the local cache first
(no network: cached models load exactly as before) and otherwise makes one short request to the hub.
"""

from __future__ import annotations

from huggingface_hub import constants, get_session, try_to_load_from_cache

from msjoe.errors import ModelLoadError

PROBE_TIMEOUT_S = 4.0
"""How long the one reachability request may take; a hub that answers at all answers well within it."""

_ADVICE = (
    "pass a local model folder (`msjoe smoke-models` writes tiny test models), or download the model where the "
    "hub is reachable (HF_HOME / HF_HUB_CACHE select the cache)"
)


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""The names transformers looks for first: one of them in the cache stands for the weights (shards follow their
index, which ``from_pretrained`` checks itself)."""


def _is_cached(repo_id: str, revision: str | None) -> bool:
    """Whether the cache holds ``repo_id`` at ``revision``: its ``config.json`` and its weights (a download that
    stopped after the config would otherwise skip the probe and meet the minute of retries)."""

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)

    try:
        return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)
    except ValueError:  # an id huggingface_hub rejects: let from_pretrained report it in its own words
        return True


def require_hub_model(repo_id: str, revision: str | None = None) -> None:
    """Return when ``repo_id`` can be loaded from the local cache or the hub answers; else raise at once.

    Raises:
        ModelLoadError: the model is not in the local cache, and HF_HUB_OFFLINE is set or the hub
            (``HF_ENDPOINT``) did not answer within :data:`PROBE_TIMEOUT_S`. The message names the id.
    """
    if _is_cached(repo_id, revision):
        return
    if constants.is_offline_mode():
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE is set; {_ADVICE}"
        )
    unreachable = hub_unreachable()
    if unreachable:
        raise ModelLoadError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the hub {constants.ENDPOINT} is "
            f"unreachable ({unreachable}); {_ADVICE}"
        )


def hub_unreachable() -> str | None:
    """None when the hub (``HF_ENDPOINT``) answers one request within :data:`PROBE_TIMEOUT_S`, else why not.

    Any HTTP answer (even an error status) means the hub is there: the caller's download then reports what is
    wrong (unknown id, gated repository) in its own words. ``head()`` raises only when no answer came (refused,
    reset, timed out); the exception's class belongs to whichever HTTP client huggingface_hub uses (httpx2 today),
    hence the broad catch."""
    try:
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception as err:
        return f"{type(err).__name__}: {err or 'no answer'}"
    return None
