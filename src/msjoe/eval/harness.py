"""The benchmark run loop: every (sampler, K) over every item, resumable, then official scoring and reports.

Layout of an output folder ``out``::

    out/predictions/<benchmark>/<sampler>_k<K>.jsonl       one line per finished item (appended, fsynced)
    out/predictions/<benchmark>/<sampler>_k<K>.run.json    the settings the lines were made with
    out/scores.json                                        every benchmark's runs and official reports
    out/report.md                                          the same as markdown tables
    out/accuracy_vs_frames_<benchmark>.png                 headline metric vs K, one line per sampler

Crash safety: a prediction line is written with one ``write`` then flushed and fsynced, so a crash loses at most
the items in flight. On a rerun the file is read back, a trailing partial line (a crash mid-write) is cut off,
and items whose id is already there are skipped. Reports are written atomically (temp file + rename).

Failures: an item whose video is missing is never run; it is listed in the report (``LoadResult.missing``).
An item whose pipeline raises (corrupt video, a request the server rejects as too long...) gets an error line
(``status "error"`` and the message), has no reply (the rule set says how that counts: wrong, left out, or as
the empty reply; the report lists it), and is not retried on reruns unless asked
(``retry_errors``). Failures that are not the item's fault (the model server unreachable, overloaded or
refusing the credentials) stop the run instead: every finished item is already saved, so a rerun resumes. Before
the first item the backend is checked (:meth:`~msjoe.mllm.base.MLLM.check`: one tiny request to a server), and a
run whose first items all fail with one message stops too (:mod:`msjoe.eval.failures`).

Scores: ``correct`` in a prediction line is the rule set applied to that reply alone when the line was written; the
reports always rescore the stored replies with the chosen rule set (:mod:`msjoe.rules`), so changing it needs no
rerun (``msjoe score`` rescores a prediction file without loading any model).

Several processes (``accelerate launch`` / ``torchrun``, one model per GPU): each answers the pending items of its
whole videos into its own shard file ``<sampler>_k<K>.rank<R>.jsonl`` beside the prediction file; the main process
then moves the shards' lines into the prediction file and writes the reports. Shards left by an interrupted run are
merged first by the next run, with any number of processes.

Concurrency: ``workers > 1`` answers items from a thread pool. It only pays with the HTTP backend, where the
time goes into waiting for the server; a local transformers model computes one request at a time anyway (and
is not meant to be shared across threads), so keep ``workers=1`` there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msjoe.atomic import KeyedJsonlLog, write_text_atomically
from msjoe.checks import is_int
from msjoe.data.benchmarks import get_benchmark
from msjoe.data.benchmarks.base import BenchmarkSpec, LoadResult, UnrunnableRow
from msjoe.data.schema import QAItem
from msjoe.defaults import DEFAULT_SAMPLER
from msjoe.distributed import SingleProcess, all_results, main_process_first, my_share, on_every_process
from msjoe.errors import MsjoeError
from msjoe.eval.evidence import evidence_recall
from msjoe.eval.failures import FailureGate
from msjoe.eval.plots import write_plots
from msjoe.eval.report import render_markdown
from msjoe.mllm.errors import BackendConnectionError, BackendHTTPError
from msjoe.pipeline import VideoQA
from msjoe.progress import progress_bar
from msjoe.rules import get_rules
from msjoe.samplers import available_samplers
from msjoe.video import round_seconds

logger = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
REPORT_FILE = "report.md"
# HTTP statuses that describe one request (too long, malformed), not the server: the item fails, the run goes on.
ITEM_HTTP_STATUSES = frozenset({400, 413, 422})


@dataclass
class EvalConfig:
    """What to evaluate and where to write it.

    Attributes:
        benchmark: registry name (``videomme``, ``longvideobench``, ``lvbench``, ``mlvu``).
        annotations: the benchmark's annotation file or folder (or its Hub dataset id).
        videos: the folder of the benchmark's videos.
        output_dir: where predictions, ``scores.json`` and ``report.md`` go; reruns into it resume.
        samplers: sampler names, each run at every budget.
        budgets: frame budgets K (paper: 8, 16, 32, 64).
        sampler_checkpoint: U-Sampler weights folder, required when ``samplers`` holds ``usampler``.
        limit: run only the first ``limit`` items (quick checks); ``None`` runs all.
        workers: items answered concurrently (threads; useful with the HTTP backend only, see module docs).
        retry_errors: rerun items whose earlier attempt ended in an error line (the new line supersedes it).
        scoring: keyword arguments for the benchmark's ``score``: ``rules`` (a rule set name of
            :mod:`msjoe.rules`) and ``seed`` (of a random fallback); empty means the benchmark's official rule set.
        run_info: what identifies the models (e.g. ``{"mllm": ..., "clip": ...}``), stored with the predictions;
            resuming a file made with different settings is refused, so answers of two setups never mix.
    """

    benchmark: str
    annotations: str | Path
    videos: str | Path | None
    output_dir: str | Path
    samplers: Sequence[str] = (DEFAULT_SAMPLER,)
    budgets: Sequence[int] = (32,)
    sampler_checkpoint: str | None = None
    limit: int | None = None
    workers: int = 1
    retry_errors: bool = False
    scoring: Mapping[str, Any] = field(default_factory=dict)
    run_info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_benchmark(self.benchmark)  # raises, listing the known names
        self.samplers = list(dict.fromkeys(self.samplers))
        self.budgets = sorted(set(self.budgets))
        if not self.samplers:
            raise ValueError("samplers must name at least one sampler")
        unknown = [name for name in self.samplers if name not in available_samplers()]
        if unknown:
            raise ValueError(f"unknown sampler {unknown[0]!r}; choose from: {', '.join(available_samplers())}")
        if ("usampler" in self.samplers) != (self.sampler_checkpoint is not None):
            raise ValueError(
                "the U-Sampler needs trained weights: pass a sampler checkpoint folder"
                if "usampler" in self.samplers
                else "a sampler checkpoint is only used with the usampler sampler"
            )
        if not self.budgets or any(not is_int(k) or k < 1 for k in self.budgets):
            raise ValueError(f"budgets must be positive integers, got {list(self.budgets)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all items), got {self.limit}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        unknown_scoring = set(self.scoring) - {"rules", "seed"}
        if unknown_scoring:
            raise ValueError(f"unknown scoring option {sorted(unknown_scoring)[0]!r}; use rules, seed")
        get_rules(self.benchmark, self.scoring.get("rules"))  # raises, listing the benchmark's rule sets


# --------------------------------------------------------------------------------------------------------------
# Prediction files
# --------------------------------------------------------------------------------------------------------------
def predictions_path(output_dir: str | Path, benchmark: str, sampler: str, k: int) -> Path:
    """Where the predictions of one (benchmark, sampler, K) run live."""
    return Path(output_dir) / "predictions" / benchmark / f"{sampler}_k{k}.jsonl"


class PredictionLog(KeyedJsonlLog):
    """An append-only JSONL file of per-item records (keyed by ``"id"``) that survives crashes, power losses
    included (every write is fsynced): :class:`msjoe.atomic.KeyedJsonlLog`, strict (a damaged line other than a
    torn last one was not written here: it is an error naming the file and line). Later records of an id supersede
    earlier ones (a retried error). :meth:`append` is thread-safe.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(
            path, key="id", what="prediction record", redo="its item is answered again", durable=True, strict=True
        )

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and fsync it: once this returns, the record survives a crash."""
        self.write([record])

    def extend(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append several records with one write and one fsync (merging shards)."""
        self.write(records)

    def done_ids(self, *, retry_errors: bool = False) -> set[str]:
        """Ids with a record (without those that ended in an error, when they are to be retried)."""
        return {key for key, rec in self.records.items() if not (retry_errors and rec.get("status") == "error")}


def shard_path(predictions: Path, process_index: int) -> Path:
    """The file one process of a multi-process run writes its share of ``predictions`` to."""
    return predictions.with_name(f"{predictions.stem}.rank{process_index}.jsonl")


def merge_shards(log: PredictionLog) -> int:
    """Move the lines of ``log``'s shard files into it, then delete the shards; return how many were moved.

    A crash between the two leaves the shard: merging it again only repeats lines (the later of an id wins)."""
    moved = 0
    for shard in sorted(log.path.parent.glob(f"{log.path.stem}.rank*.jsonl")):
        records = list(PredictionLog(shard).records.values())
        log.extend(records)
        shard.unlink()
        moved += len(records)
    return moved


def _check_run_settings(predictions: Path, settings: Mapping[str, Any], has_records: bool) -> None:
    """Store the settings beside a prediction file; refuse to append to one made with other settings."""
    path = predictions.with_suffix(".run.json")
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(key for key in set(stored) | set(settings) if stored.get(key) != settings.get(key))
        if changed and has_records:
            details = "; ".join(f"{key}: {stored.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise ValueError(
                f"{predictions} holds predictions made with other settings ({details}); "
                "use another output folder, or delete that file to start the run again"
            )
    write_text_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------------------
def is_run_fatal(error: BaseException) -> bool:
    """Whether ``error`` is about the model server rather than the item (unreachable, overloaded, auth...)."""
    if isinstance(error, BackendConnectionError):
        return True
    return isinstance(error, BackendHTTPError) and error.status_code not in ITEM_HTTP_STATUSES


def _official_outcome(bench: BenchmarkSpec, item: QAItem, reply: str, scoring: Mapping[str, Any]) -> dict[str, Any]:
    """The rule set applied to one reply alone: the letter it reads (a random fallback drawn as for a first item)
    and whether that is correct."""
    if item.answer is None:
        return {"scored_letter": None, "correct": None}
    scored = bench.score([item], {item.id: reply}, **scoring)["items"][0]
    return {"scored_letter": scored["chosen"], "correct": scored["correct"] if scored["counted"] else None}


def answer_item(
    qa: VideoQA,
    bench: BenchmarkSpec,
    item: QAItem,
    *,
    sampler: str,
    k: int,
    sampler_checkpoint: str | None = None,
    scoring: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Ask one item and return its prediction record; a failure becomes an error record unless it is about the
    model server (:func:`is_run_fatal`), which is raised.

    Record fields: ``id``, ``video``, ``question``, ``options``, ``answer``, ``reply``, ``letter`` (our parser's
    letter), ``status`` (the parser's status, or ``"error"``), ``scored_letter`` and ``correct`` (by the
    benchmark's official rule; ``correct`` is ``None`` when the rule leaves the item out or it has no ground
    truth), ``queries``, ``chosen_timestamps``, ``timings`` (seconds per stage), and ``error`` on failures.
    """
    base = {
        "id": item.id,
        "video": item.video,
        "question": item.question,
        "options": list(item.options),
        "answer": item.answer,
        "sampler": sampler,
        "k": k,
    }
    start = time.perf_counter()
    try:
        answer = qa.ask(
            item.video,
            item.question,
            list(item.options),
            k=k,
            sampler=sampler,
            sampler_checkpoint=sampler_checkpoint if sampler == "usampler" else None,
        )
    except Exception as error:  # any per-item failure is recorded so the run goes on
        if is_run_fatal(error):
            raise
        logger.warning("item %s failed: %s: %s", item.id, type(error).__name__, error)
        return {
            **base,
            "reply": None,
            "letter": None,
            "status": "error",
            "scored_letter": None,
            "correct": False if item.answer is not None else None,
            "error": f"{type(error).__name__}: {error}",
            "queries": [],
            "chosen_timestamps": [],
            "timings": {"total": time.perf_counter() - start},
        }
    return {
        **base,
        "reply": answer.reply,
        "letter": answer.letter,
        "status": answer.status,
        **_official_outcome(bench, item, answer.reply, scoring or {}),
        "queries": answer.queries,
        "queries_from_question": answer.queries_from_question,
        "chosen_timestamps": [round_seconds(t) for t in answer.chosen_timestamps],
        "timings": {**answer.timings, "total": time.perf_counter() - start},
    }


def _answer_all(
    pending: Sequence[QAItem], ask: Callable[[QAItem], dict[str, Any]], workers: int
) -> Iterator[dict[str, Any]]:
    """Records of ``pending`` in completion order. With workers, at most ``2 * workers`` items are queued so
    a fatal error stops the run quickly; the error is raised after the items in flight finish and are yielded."""
    if workers == 1:
        for item in pending:
            yield ask(item)
        return
    queue = iter(pending)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msjoe-eval")
    try:
        running: set[Future[dict[str, Any]]] = set()
        fatal: BaseException | None = None
        while True:
            while fatal is None and len(running) < 2 * workers and (item := next(queue, None)) is not None:
                running.add(pool.submit(ask, item))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    yield future.result()
                except Exception as error:  # the first fatal error is raised once the pool drains
                    fatal = fatal or error
        if fatal is not None:
            raise fatal
    finally:
        # On Ctrl-C or a failed write, queued items must not start: their answers would not be saved.
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------
def _score_run(
    bench: BenchmarkSpec,
    items: Sequence[QAItem],
    records: Mapping[str, Mapping[str, Any]],
    scoring: Mapping[str, Any],
    unrunnable: Sequence[UnrunnableRow] = (),
) -> dict[str, Any] | None:
    """The rule set's report over ``items`` (failed items have no reply: the rule set says how they count) and
    the ``unrunnable`` rows it scores, without the per-item list (that is in the prediction file); ``None`` when
    no item has ground truth."""
    gradable = [item for item in items if item.answer is not None]
    if not gradable:
        return None
    predictions = {
        item.id: records[item.id]["reply"]
        for item in gradable
        if item.id in records and records[item.id].get("status") != "error"
    }
    report = bench.score(gradable, predictions, unrunnable=unrunnable, **scoring)
    report.pop("items", None)
    return report


def _load_scores(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"benchmarks": {}}
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg}); delete it, it is rebuilt by the next run") from None
    if not isinstance(scores, dict) or not isinstance(scores.get("benchmarks"), dict):
        raise ValueError(f"{path}: not a msjoe scores file; delete it, it is rebuilt by the next run")
    return scores


def write_reports(output_dir: str | Path, scores: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``scores.json``, the accuracy-versus-frames plots and ``report.md`` (which links the plots), each
    atomically; return the paths of ``scores.json`` and ``report.md``."""
    out = Path(output_dir)
    scores_path = write_text_atomically(out / SCORES_FILE, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    write_plots(out, scores)
    report_path = write_text_atomically(out / REPORT_FILE, render_markdown(scores))
    return scores_path, report_path


def run_eval(
    qa: VideoQA,
    config: EvalConfig,
    *,
    progress: bool = True,
    loaded: LoadResult | None = None,
    processes: Any = None,
) -> dict[str, Any]:
    """Run every (sampler, K) of ``config`` over the benchmark's items, resuming finished ones, then score and
    write ``scores.json``, ``report.md`` and the plots. Returns this benchmark's entry of ``scores.json``.

    ``loaded`` skips loading the annotations (tests, or callers that filtered the items themselves).
    ``processes`` splits the items over the processes of an ``accelerate launch`` job (an ``accelerate``
    ``PartialState``, see :func:`msjoe.distributed.process_state`; None: this process alone); every process
    calls ``run_eval`` and gets the entry. Raises the backend error when the model server fails (see
    :func:`is_run_fatal`); finished items are saved.
    """
    state = processes if processes is not None else SingleProcess()
    bench = get_benchmark(config.benchmark)
    out = Path(config.output_dir)
    result = on_every_process(state, lambda: _load_items(qa, bench, config, loaded), what="loading the benchmark")
    items = result.items[: config.limit] if config.limit is not None else list(result.items)
    scoring = dict(config.scoring)
    # The main process merges old shards and records the settings first; then every process sees the same files,
    # and so the same pending items, before anyone writes again.
    logs = main_process_first(
        state, lambda: _open_prediction_logs(qa, bench, config, state), what="reading the prediction files"
    )
    # Whole videos per process, the same for every (sampler, K): a video is decoded and encoded by one process.
    mine = my_share(state, items, lambda item: item.video_key)
    pending = _pending_items(logs, mine, retry_errors=config.retry_errors)

    def answer_share() -> dict[tuple[str, int], list[str]]:
        return _answer_pending(qa, bench, config, logs, pending, state, scoring=scoring, progress=progress)

    written = all_results(state, on_every_process(state, answer_share, what="answering benchmark items"))

    def finish() -> dict[str, Any]:
        _merge_and_check_shards(logs, written, out)
        return _finish(bench, config, out, items, result, logs, scoring)

    entry = on_every_process(state, lambda: finish() if state.is_main_process else None, what="scoring")
    return all_results(state, entry)[0]


def _load_items(qa: VideoQA, bench: BenchmarkSpec, config: EvalConfig, loaded: LoadResult | None) -> LoadResult:
    """Step 1 (every process): build each sampler of the run, so a bad name or checkpoint fails before any item
    runs; then load the benchmark's annotations (or take ``loaded``)."""
    for name in config.samplers:
        qa.sampler(name, config.sampler_checkpoint if name == "usampler" else None)
    return loaded if loaded is not None else bench.load(config.annotations, config.videos)


def _open_prediction_logs(
    qa: VideoQA, bench: BenchmarkSpec, config: EvalConfig, state: Any
) -> dict[tuple[str, int], PredictionLog]:
    """Step 2: the prediction log of each (sampler, K). The main process merges the shards an interrupted
    multi-process run left; each log's settings (the pipeline's, the run's models, the sampler and K) are checked
    against those it was written with, and recorded for a new one."""
    out = Path(config.output_dir)
    pipeline_settings = {
        key: value for key, value in dataclasses.asdict(qa.config).items() if key not in ("k", "sampler")
    }
    pipeline_settings["sampler_checkpoint"] = None
    logs = {}
    for sampler in config.samplers:
        for k in config.budgets:
            path = predictions_path(out, bench.name, sampler, k)
            log = PredictionLog(path)
            if state.is_main_process and merge_shards(log):
                logger.info("%s: merged the shard files of an interrupted multi-process run", path)
            settings = {
                **pipeline_settings,
                **dict(config.run_info),
                "benchmark": bench.name,
                "sampler": sampler,
                "k": k,
                "sampler_checkpoint": config.sampler_checkpoint if sampler == "usampler" else None,
            }
            _check_run_settings(path, json.loads(json.dumps(settings)), bool(log.records))
            logs[sampler, k] = log
    return logs


def _pending_items(
    logs: Mapping[tuple[str, int], PredictionLog], mine: Sequence[QAItem], *, retry_errors: bool
) -> dict[tuple[str, int], list[QAItem]]:
    """Step 3: per (sampler, K), this process's items its log has no answer for (nor an error, unless
    ``retry_errors``)."""
    pending = {}
    for key, log in logs.items():
        done = log.done_ids(retry_errors=retry_errors)
        pending[key] = [item for item in mine if item.id not in done]
    return pending


def _answer_pending(
    qa: VideoQA,
    bench: BenchmarkSpec,
    config: EvalConfig,
    logs: Mapping[tuple[str, int], PredictionLog],
    pending: Mapping[tuple[str, int], Sequence[QAItem]],
    state: Any,
    *,
    scoring: Mapping[str, Any],
    progress: bool,
) -> dict[tuple[str, int], list[str]]:
    """Step 4 (every process): answer this process's pending items, appending each record to its log (to this
    process's shard of it when there are several) through the failure gate; the ids written, per (sampler, K)."""
    rank, world = state.process_index, state.num_processes
    written: dict[tuple[str, int], list[str]] = {key: [] for key in logs}
    if not any(pending.values()):
        return written
    qa.mllm.check()  # a wrong server URL, model name or key stops here, not as an error line per item
    writers = logs if world == 1 else {key: PredictionLog(shard_path(log.path, rank)) for key, log in logs.items()}
    gate: FailureGate[dict[str, Any]] = FailureGate()

    def write(records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            writers[record["sampler"], record["k"]].append(record)
            written[record["sampler"], record["k"]].append(record["id"])

    with progress_bar(enabled=progress and state.is_main_process) as bar:
        whose = "" if world == 1 else f" (process 0 of {world})"
        task = bar.add_task(f"{bench.name}{whose}", total=sum(len(todo) for todo in pending.values()))
        for (sampler, k), todo in pending.items():
            bar.update(task, description=f"{bench.name} {sampler} K={k}{whose}")

            def ask(item: QAItem, sampler: str = sampler, k: int = k) -> dict[str, Any]:
                return answer_item(
                    qa,
                    bench,
                    item,
                    sampler=sampler,
                    k=k,
                    sampler_checkpoint=config.sampler_checkpoint,
                    scoring=scoring,
                )

            for record in _answer_all(todo, ask, config.workers):
                write(gate.admit(record, record.get("error")))
                bar.advance(task)
    write(gate.release())
    return written


def _merge_and_check_shards(
    logs: Mapping[tuple[str, int], PredictionLog], written: Sequence[Mapping[tuple[str, int], list[str]]], out: Path
) -> None:
    """Step 5 (main process): merge every process's shard into its log, and raise ``MsjoeError`` when an answer a
    process wrote is not there (a shard on a disk the main process cannot see is lost work)."""
    for log in logs.values():
        merge_shards(log)
    for process, ids in enumerate(written):
        for key, answered in ids.items():
            lost = [item_id for item_id in answered if item_id not in logs[key].records]
            if lost:
                raise MsjoeError(
                    f"process {process} answered {len(lost)} {key[0]} K={key[1]} items that are not in "
                    f"{logs[key].path}: is {out} on a file system every process sees?"
                )


def _finish(
    bench: BenchmarkSpec,
    config: EvalConfig,
    out: Path,
    items: Sequence[QAItem],
    result: LoadResult,
    logs: Mapping[tuple[str, int], PredictionLog],
    scoring: Mapping[str, Any],
) -> dict[str, Any]:
    """Main process: score every run, and write ``scores.json``, the plots and ``report.md``."""
    runs = []
    for (sampler, k), log in logs.items():
        selected = [log.records[item.id] for item in items if item.id in log.records]
        errors = [record["id"] for record in selected if record.get("status") == "error"]
        runs.append(
            {
                "sampler": sampler,
                "k": k,
                "items": len(items),
                "errors": len(errors),
                "error_ids": errors,
                "error_messages": {record["id"]: record.get("error") for record in selected if record["id"] in errors},
                "predictions": log.path.relative_to(out).as_posix(),
                # Rows only the official code can score are added to a whole run, not to a --limit check.
                "report": _score_run(bench, items, log.records, scoring, result.unrunnable if not config.limit else ()),
                "evidence_recall": evidence_recall(items, log.records),
            }
        )

    scores = _load_scores(out / SCORES_FILE)
    previous = scores["benchmarks"].get(bench.name, {})
    # Runs of this benchmark from earlier invocations (other samplers or budgets) stay in the report.
    kept = [run for run in previous.get("runs", []) if (run["sampler"], run["k"]) not in logs]
    entry = {
        "annotations": str(config.annotations),
        "videos": None if config.videos is None else str(config.videos),
        "limit": config.limit,
        "items": len(items),
        "missing_items": [item.id for item in result.missing],
        "missing_videos": result.missing_videos,
        "skipped_rows": [row.to_dict() for row in result.skipped],
        "run_info": dict(config.run_info),
        "runs": sorted([*kept, *runs], key=lambda run: (run["sampler"], run["k"])),
    }
    scores["benchmarks"][bench.name] = entry
    write_reports(out, scores)
    return entry
