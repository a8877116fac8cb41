"""msjoe as an lmms-eval model: ``lmms-eval --model msjoe --model_args mllm=...,clip=...,sampler=bolt,frames=32``.

Each ``generate_until`` request runs msjoe's pipeline (docs/architecture.md) on the request's video: the MLLM writes
queries from the question and K/2 preview frames, CLIP scores every candidate frame against them, the sampler
picks K key frames, and the MLLM answers from those frames. lmms-eval's task then scores the reply with its own
rules, so the numbers are comparable with any other lmms-eval model on the same task.

Install: ``pip install "msjoe[lmms-eval]"``. The model is found through the ``lmms_eval.models`` entry point
(:func:`msjoe.integrations.lmms_eval_model_manifest`), so nothing needs registering by hand.

What a request must look like: one video file from the task's ``doc_to_visual`` (images are not supported: the
method selects frames of a video), and a multiple-choice prompt whose options are lines labelled ``A.``, ``(A)``,
``A)`` or ``A:`` in order. The options are parsed out (:func:`split_multiple_choice`) and the text before them is
the question; msjoe's answer prompt then lists the options and asks for the letter itself, so instruction lines
*after* the options (``"Answer with the option's letter..."``) are replaced, not repeated. A prompt without such
options is answered free-form with the whole prompt as the question.

Generation settings of the task (``max_new_tokens``, ``temperature``, ``top_p``) apply to the answer turn; the
query turn keeps msjoe's settings. ``until`` stop strings cut the reply, as lmms-eval's own models do.

Failures: an item whose video cannot be read (or that the model server rejects as malformed) gets an empty reply,
which every task scores as wrong, and is logged; a summary warning lists them at the end. Failures of the server
itself (unreachable, overloaded) stop the run, and so does a run whose first 5 requests all fail with the same
error (:mod:`msjoe.eval.failures`); the backend is checked when the model is built (one tiny request to a server).
``on_error=raise`` stops on any failure instead.

Scope: one process (lmms-eval's data parallelism is not supported; for throughput serve the MLLM over HTTP with
vLLM or SGLang, ``mllm=http://host:port/v1``), ``generate_until`` only (no log-likelihood: the method answers from
frames chosen per question, it does not score given continuations).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
except ImportError as err:  # the module is useless without lmms-eval: say how to get it
    raise ImportError(
        f"msjoe's lmms-eval model needs lmms-eval ({err}); install it with: pip install 'msjoe[lmms-eval]'"
    ) from err

from msjoe import video as video_io
from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM, DEFAULT_SAMPLER
from msjoe.eval.failures import FailureGate
from msjoe.eval.harness import is_run_fatal
from msjoe.mllm import http_options
from msjoe.mllm.base import GenerationConfig
from msjoe.mllm.prompts import LETTERS, strip_option_prefix
from msjoe.pipeline import Answer, PipelineConfig, VideoQA

logger = logging.getLogger(__name__)

# A line just before the options that only announces them ("Options:") is not part of the question.
_OPTIONS_HEADERS = frozenset({"options", "option", "choices", "candidates", "answer choices"})


def _option_text(line: str, letter: str) -> str | None:
    """The text of ``line`` when it is option ``letter`` (labelled ``A.``, ``(A)``, ``A)``...), else ``None``."""
    text = strip_option_prefix(line, letter)
    return text if text and text != line.strip() else None


def split_multiple_choice(prompt: str) -> tuple[str, list[str] | None]:
    """``(question, options)`` from a task prompt whose options are labelled lines ``A``, ``B``, ... in order.

    The last block of at least two such lines is the options (earlier blocks would be few-shot examples); the
    text before it is the question (a bare ``"Options:"`` line just before is dropped), the text after it (the
    task's answer instruction) is dropped. Without such a block, or with nothing before it, the whole prompt is
    the question and ``options`` is ``None``.
    """
    lines = prompt.splitlines()
    block: tuple[int, int] | None = None
    start = 0
    while start < len(lines):
        end = start
        while end < len(lines) and end - start < len(LETTERS) and _option_text(lines[end], LETTERS[end - start]):
            end += 1
        if end - start >= 2:
            block = (start, end)
        start = max(end, start + 1)
    if block is None:
        return prompt.strip(), None
    start, end = block
    options = [_option_text(line, LETTERS[i]) or "" for i, line in enumerate(lines[start:end])]
    head = lines[:start]
    if head and head[-1].strip().rstrip(":").strip().lower() in _OPTIONS_HEADERS:
        head = head[:-1]
    question = "\n".join(head).strip()
    if not question:
        return prompt.strip(), None
    return question, options


def _one_video(visuals: Any, where: str) -> str:
    """The single video path of a request; raises ``ValueError`` naming the request otherwise."""
    if isinstance(visuals, str | os.PathLike):
        visuals = [visuals]
    visuals = list(visuals or [])
    if len(visuals) != 1 or not isinstance(visuals[0], str | os.PathLike):
        kinds = ", ".join(type(v).__name__ for v in visuals) or "nothing"
        raise ValueError(
            f"{where}: msjoe answers questions about one video file, but the task's doc_to_visual gave {kinds}; "
            "use a video task (videomme, longvideobench_val_v, lvbench, mlvu_dev...)"
        )
    return os.fspath(visuals[0])


def _answer_generation(base: GenerationConfig, gen_kwargs: dict[str, Any]) -> GenerationConfig:
    """The answer turn's settings with the task's ``max_new_tokens``, ``temperature`` and ``top_p`` applied."""
    settings: dict[str, Any] = {}
    if gen_kwargs.get("max_new_tokens") is not None:
        settings["max_new_tokens"] = int(gen_kwargs["max_new_tokens"])
    if gen_kwargs.get("do_sample") is False:
        settings["temperature"] = 0.0
    elif gen_kwargs.get("temperature") is not None:
        settings["temperature"] = float(gen_kwargs["temperature"])
    if gen_kwargs.get("top_p") is not None:
        settings["top_p"] = float(gen_kwargs["top_p"])
    return replace(base, **settings)


def _cut_at_stop_strings(text: str, until: Any) -> str:
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


class MSJoE(lmms):
    """The msjoe pipeline as an lmms-eval "simple" model (requests carry the prompt and ``doc_to_visual``).

    Model arguments (``--model_args key=value,...``):
        mllm: the MLLM, a Hugging Face id, a local folder or an OpenAI-compatible ``http(s)://.../v1`` URL.
        model: the model name to request from an HTTP server.
        timeout, max_retries: for an HTTP server, seconds to wait per attempt (default 120) and retries after a
            timeout, dropped connection, 408, 429 or 5xx (default 3).
        api_key_env: for an HTTP server, the environment variable holding the API key (default:
            ``$MSJOE_API_KEY``, then ``$OPENAI_API_KEY``).
        clip: the frozen CLIP/SigLIP dual encoder (Hugging Face id or local folder).
        sampler: the key-frame sampler (``bolt``, ``usampler``, ``uniform``...; see ``msjoe samplers``).
        sampler_checkpoint: U-Sampler weights folder, required with ``sampler=usampler``.
        frames: the frame budget K shown to the MLLM at answer time.
        fps, max_frames: candidate frames per second and their cap.
        cache_dir: the feature cache (default ``$MSJOE_CACHE`` or ``~/.cache/msjoe/features``); a rerun or another
            sampler/budget on the same videos reuses the frame embeddings.
        device, dtype: for the local models (lmms-eval's ``--device`` fills ``device``; default ``cpu``).
        seed: seeds stochastic samplers.
        store_frames: keep candidate frames as JPEGs while indexing (default), so questions skip video seeking.
        reply: ``raw`` (default) returns the MLLM's reply for the task to parse; ``letter`` returns msjoe's parsed
            option letter when it found one (the raw reply otherwise).
        on_error: ``empty`` (default: a failed item gets an empty reply, scored wrong) or ``raise``.
        log_file: a JSONL file to append one line per request to: the queries, chosen timestamps and reply
            (lmms-eval's sample logs keep only the reply).
        batch_size, max_batch_size: accepted from lmms-eval and ignored; items are answered one at a time.
    """

    is_simple = True

    def __init__(
        self,
        mllm: str = DEFAULT_MLLM,
        clip: str = DEFAULT_CLIP,
        model: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        api_key_env: str | None = None,
        sampler: str = DEFAULT_SAMPLER,
        sampler_checkpoint: str | None = None,
        frames: int = 32,
        fps: float = video_io.DEFAULT_FPS,
        max_frames: int = video_io.DEFAULT_MAX_FRAMES,
        cache_dir: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        seed: int = 0,
        store_frames: bool = True,
        reply: Literal["raw", "letter"] = "raw",
        on_error: Literal["empty", "raise"] = "empty",
        log_file: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        # Validate before loading models: a typo should not cost minutes of loading a 7B model.
        config = PipelineConfig(
            k=int(frames),
            sampler=str(sampler),
            sampler_checkpoint=None if sampler_checkpoint is None else str(sampler_checkpoint),
            fps=float(fps),
            max_frames=int(max_frames),
            seed=int(seed),
            store_frames=bool(store_frames),
        )
        self._check_options(reply, on_error)
        mllm, clip = str(mllm), str(clip)
        http = http_options(  # model_args arrive as text or as lmms-eval's guess of the type
            mllm,
            model=None if model is None else str(model),
            timeout=None if timeout is None else float(timeout),
            max_retries=None if max_retries is None else int(max_retries),
            api_key_env=None if api_key_env is None else str(api_key_env),
        )
        if str(batch_size) != "1":
            logger.warning("msjoe answers one item at a time; batch_size=%s is ignored", batch_size)
        qa = VideoQA.from_pretrained(
            mllm,
            clip,
            device=device or "cpu",
            dtype=dtype,
            cache_dir=cache_dir,
            config=config,
            mllm_options=http,
        )
        self._setup(qa, reply=reply, on_error=on_error, log_file=log_file)

    @classmethod
    def from_pipeline(
        cls,
        qa: VideoQA,
        *,
        reply: Literal["raw", "letter"] = "raw",
        on_error: Literal["empty", "raise"] = "empty",
        log_file: str | None = None,
    ) -> MSJoE:
        """Wrap an already built :class:`~msjoe.pipeline.VideoQA` (its config sets the sampler and K), e.g. to
        pass ``model=MSJoE.from_pipeline(qa)`` to ``lmms_eval.evaluator.simple_evaluate``."""
        self = cls.__new__(cls)
        lmms.__init__(self)
        cls._check_options(reply, on_error)
        self._setup(qa, reply=reply, on_error=on_error, log_file=log_file)
        return self

    @staticmethod
    def _check_options(reply: str, on_error: str) -> None:
        if reply not in ("raw", "letter"):
            raise ValueError(f"reply must be 'raw' or 'letter', got {reply!r}")
        if on_error not in ("empty", "raise"):
            raise ValueError(f"on_error must be 'empty' or 'raise', got {on_error!r}")

    def _setup(self, qa: VideoQA, *, reply: str, on_error: str, log_file: str | None) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RuntimeError(
                "msjoe's lmms-eval model runs in one process; for throughput serve the MLLM over HTTP "
                "(vLLM, SGLang) and pass mllm=http://host:port/v1"
            )
        qa.mllm.check()  # a wrong server URL, model name or key stops here, not as an empty reply per request
        self.qa = qa
        self.reply_mode = reply
        self.on_error = on_error
        self.log_file = Path(log_file) if log_file else None
        self.failures: list[tuple[str, str]] = []  # (request, error) of every failed request so far
        self._gate: FailureGate[str] = FailureGate()  # stops when the first requests all fail alike

    # --- lmms-eval's model API -------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One reply per request, in request order (see the module docs for what a request must hold)."""
        from tqdm import tqdm  # lmms-eval's own progress bars are tqdm

        replies = []
        failed_before = len(self.failures)
        for request in tqdm(requests, desc="msjoe", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            where = f"task {task!r} ({split}) doc {doc_id}"
            video = _one_video(doc_to_visual(self.task_dict[task][split][doc_id]), where)
            text = self._answer(video, context, dict(gen_kwargs or {}), where, {"task": task, "doc_id": doc_id})
            replies.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        failed = len(self.failures) - failed_before
        if failed:
            listed = "; ".join(f"{where}: {error}" for where, error in self.failures[failed_before:][:20])
            logger.warning("msjoe: %d of %d requests failed and got an empty reply: %s", failed, len(requests), listed)
        return replies

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "msjoe's lmms-eval model only generates (output_type: generate_until): it answers from key frames "
            "chosen for each question and has no log-likelihood of a given continuation; run it on generate_until "
            "tasks such as videomme, longvideobench_val_v, lvbench or mlvu_dev"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "msjoe's lmms-eval model answers single-turn questions only (generate_until); multi-round tasks are "
            "not supported"
        )

    # --- one request -----------------------------------------------------------------------------------------
    def _answer(self, video: str, context: str, gen_kwargs: dict[str, Any], where: str, ids: dict[str, Any]) -> str:
        question, options = split_multiple_choice(context)
        base = self.qa.config
        self.qa.config = replace(base, answer_generation=_answer_generation(base.answer_generation, gen_kwargs))
        try:
            answer: Answer | None = self.qa.ask(video, question, options)
            error = None
        except Exception as failure:  # recorded per item, like msjoe's own harness (see the module docs)
            if self.on_error == "raise" or is_run_fatal(failure):
                raise
            answer, error = None, f"{type(failure).__name__}: {failure}"
            self.failures.append((where, error))
            logger.warning("msjoe: %s failed: %s", where, error)
        finally:
            self.qa.config = base
        self._gate.admit(where, error)
        if answer is None:
            text = ""
        elif self.reply_mode == "letter" and answer.letter:
            text = answer.letter
        else:
            text = _cut_at_stop_strings(answer.reply, gen_kwargs.get("until"))
        if self.log_file is not None:
            self._log(ids, video, question, options, answer, text, error)
        return text

    def _log(
        self,
        ids: dict[str, Any],
        video: str,
        question: str,
        options: Sequence[str] | None,
        answer: Answer | None,
        text: str,
        error: str | None,
    ) -> None:
        assert self.log_file is not None
        record = {
            **ids,
            "video": video,
            "question": question,
            "options": options,
            "queries": answer.queries if answer else [],
            "chosen_timestamps": [video_io.round_seconds(t) for t in answer.chosen_timestamps] if answer else [],
            "raw_reply": answer.reply if answer else None,
            "letter": answer.letter if answer else None,
            "reply": text,
            "error": error,
        }
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
