"""The ``msjoe`` command line: index videos, choose key frames, answer questions, write smoke-test models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msjoe import video as video_io
from msjoe.cli_score import score as score_command
from msjoe.cli_support import command_processes, console, csv_list, fail, flag
from msjoe.data.cli import app as data_app
from msjoe.defaults import DEFAULT_CLIP, DEFAULT_MLLM, DEFAULT_SAMPLER
from msjoe.eval.explain_cli import explain_run as explain_command
from msjoe.mllm import DEFAULT_HTTP_MAX_RETRIES as DEFAULT_MAX_RETRIES
from msjoe.mllm import DEFAULT_HTTP_TIMEOUT as DEFAULT_TIMEOUT
from msjoe.mllm import http_options
from msjoe.serve.cli import serve as serve_command
from msjoe.sim.cli import app as sim_app
from msjoe.train.cli import app as train_app
from msjoe.video import format_time

if TYPE_CHECKING:
    from msjoe.eval.harness import EvalConfig

app = typer.Typer(
    help="Question answering over long videos with query-driven key-frame selection (MSJoE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(train_app, name="train")
app.add_typer(data_app, name="data")
app.add_typer(sim_app, name="sim")
app.command("score")(score_command)
app.command("explain")(explain_command)  # commands kept beside their code, importing nothing heavy until they run
app.command("serve")(serve_command)

ClipOption = Annotated[
    str, typer.Option("--clip", help="Frozen CLIP/SigLIP dual encoder: Hugging Face id or local folder.")
]
FpsOption = Annotated[float, typer.Option("--fps", help="Candidate frames per second.", min=1e-6)]
MaxFramesOption = Annotated[
    int, typer.Option("--max-frames", help="Cap on candidates; longer videos are subsampled uniformly.", min=1)
]
CacheOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Feature cache folder \\[default: $MSJOE_CACHE or ~/.cache/msjoe/features]."),
]
StoreFramesOption = Annotated[
    bool,
    typer.Option(
        "--store-frames/--no-store-frames",
        help="Keep every candidate frame as a JPEG (~25-130 MB per hour, made in the indexing pass) so questions "
        "about an indexed video read their frames instead of seeking in it.",
    ),
]
MllmOption = Annotated[
    str, typer.Option("--mllm", help="MLLM: Hugging Face id, local folder, or an OpenAI-compatible http(s) URL.")
]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model name to request from an HTTP server.")]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help=f"HTTP --mllm: seconds to wait for the server, per attempt \\[default: {DEFAULT_TIMEOUT:g}].",
        min=1e-3,
        show_default=False,
    ),
]
MaxRetriesOption = Annotated[
    int | None,
    typer.Option(
        "--max-retries",
        help=f"HTTP --mllm: retries after a timeout, dropped connection, 408, 429 or 5xx \\[default: "
        f"{DEFAULT_MAX_RETRIES}].",
        min=0,
        show_default=False,
    ),
]
ApiKeyEnvOption = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        help="HTTP --mllm: the environment variable holding the API key \\[default: $MSJOE_API_KEY, then "
        "$OPENAI_API_KEY].",
        show_default=False,
    ),
]
DtypeOption = Annotated[str, typer.Option("--dtype", help="MLLM dtype: auto, bfloat16, float16, float32.")]
ExplainOption = Annotated[
    Path | None,
    typer.Option(
        "--explain",
        help="Also write the explain view (queries, similarity timeline, chosen frames) to this .html or .png file.",
    ),
]
DeviceOption = Annotated[
    str, typer.Option("--device", help="Torch device for the models: cpu, cuda, cuda:1, auto (CUDA when available).")
]


def _fewer_frames_note(chosen: int, requested: int) -> str:
    """What to say next to the number of key frames when the video had fewer candidates than the budget."""
    return f"-k {requested} asked; the video has only {chosen} candidate frames" if chosen < requested else ""


EXIT_ITEMS_FAILED = 3
"""``msjoe eval``'s exit status when the run finished but some items ended in an error (1: the run stopped)."""


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def index(
    videos: Annotated[
        list[Path], typer.Argument(help="Video files, or folders of videos (searched recursively).", show_default=False)
    ],
    clip: ClipOption = DEFAULT_CLIP,
    fps: FpsOption = video_io.DEFAULT_FPS,
    max_frames: MaxFramesOption = video_io.DEFAULT_MAX_FRAMES,
    cache_dir: CacheOption = None,
    device: DeviceOption = "cpu",
    batch_size: Annotated[int, typer.Option(help="Frames per encoder batch.", min=1)] = 64,
    store_frames: StoreFramesOption = True,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding processes (segments of each video in parallel, encoded here as they arrive); 0 decodes "
            "in this process. [default: half the cores, 1 to 8]",
            min=0,
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Encoder weights dtype: float32, bfloat16, float16, or auto (the dtype saved with the checkpoint). "
            "bfloat16/float16 halve the encoder's memory (faster on GPUs). The cache does not record it: videos "
            "already cached are skipped, whatever dtype they were encoded in.",
        ),
    ] = "float32",
) -> None:
    """Decode candidate frames and cache their CLIP embeddings. Resumable: cached videos are skipped.

    A video that cannot be read is reported at the end; the others are still indexed. Under `accelerate launch`
    (or `torchrun`; on CPU with ACCELERATE_USE_CPU=true) each process indexes whole videos, the largest files first
    to the least-loaded process (with `--device cuda`, on its own GPU), into the cache, which must be on a file
    system every process sees; the main process prints the combined report.
    """
    from msjoe.cache import FeatureCache
    from msjoe.devices import check_device
    from msjoe.distributed import all_results, my_share, on_every_process, process_device
    from msjoe.errors import MsjoeError
    from msjoe.features import ENCODER_DTYPES, DualEncoder
    from msjoe.frame_store import FrameStore
    from msjoe.index import IndexReport, default_workers, index_videos

    if dtype not in ENCODER_DTYPES:  # before any process starts or any weights load
        raise fail(f"--dtype must be one of {', '.join(ENCODER_DTYPES)}, got {dtype!r}")
    with command_processes() as state:
        try:
            device = check_device(process_device(state, device))
            share = my_share(
                state, _video_files(videos), lambda path: str(path.expanduser().resolve()), weight=_file_size
            )
            encoder, cache = on_every_process(
                state,
                lambda: (DualEncoder.from_pretrained(clip, device=device, dtype=dtype), FeatureCache(cache_dir)),
                what="loading the encoder",
            )
            report = on_every_process(
                state,
                lambda: index_videos(
                    share,
                    encoder,
                    cache,
                    fps=fps,
                    max_frames=max_frames,
                    batch_size=batch_size,
                    progress=state.is_main_process,
                    frame_store=FrameStore.for_cache(cache) if store_frames else None,
                    workers=default_workers() if workers is None else workers,
                ),
                what="indexing",
            )
        except (MsjoeError, ValueError) as error:  # per-video errors are in the report; these stop the whole batch
            raise fail(error) from error
        report = IndexReport.combine(all_results(state, report))
    # Only the main process reports and sets the exit status: another one ending with an error would have the
    # launcher (torchrun, accelerate) stop the main process, on a busy machine before it has printed the report.
    if not state.is_main_process:
        return
    console.print(report.summary(), soft_wrap=True, markup=False, highlight=False)  # unwrapped: paths can be copied
    if report.failed:
        raise typer.Exit(code=1)


VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg", ".wmv"})
"""File name endings ``msjoe index FOLDER`` takes for videos."""


def _file_size(paths: list[Path]) -> float:
    """Bytes of a video (its share of indexing work: decoding time grows with the file); 0 when unreadable, which
    indexing then reports by name."""
    try:
        return float(paths[0].stat().st_size)
    except OSError:
        return 0.0


def _video_files(paths: list[Path]) -> list[Path]:
    """``paths`` with each folder replaced by the video files under it (sorted); files are kept as given, so a bad
    one is reported by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"{path} holds no video files (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
            files += found
        else:
            files.append(path)
    return files


@app.command()
def select(
    video: Annotated[Path, typer.Argument(help="Video file.", show_default=False)],
    query: Annotated[
        list[str], typer.Option("--query", "-q", help="A visual query (1 to 4; repeat the option).", show_default=False)
    ],
    k: Annotated[int, typer.Option("-k", help="Frame budget K.", min=1)] = 32,
    sampler: Annotated[str, typer.Option(help="Sampler name (see `msjoe samplers`).")] = DEFAULT_SAMPLER,
    sampler_checkpoint: Annotated[
        Path | None, typer.Option(help="U-Sampler weights folder (required for --sampler usampler).")
    ] = None,
    clip: ClipOption = DEFAULT_CLIP,
    fps: FpsOption = video_io.DEFAULT_FPS,
    max_frames: MaxFramesOption = video_io.DEFAULT_MAX_FRAMES,
    cache_dir: CacheOption = None,
    device: DeviceOption = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for stochastic samplers.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    explain: ExplainOption = None,
) -> None:
    """Choose K key frames of VIDEO for the given queries and print their timestamps."""
    from msjoe.cache import FeatureCache
    from msjoe.devices import check_device
    from msjoe.errors import MsjoeError
    from msjoe.explain import Explanation, check_explain_path
    from msjoe.features import DualEncoder
    from msjoe.index import index_video
    from msjoe.pipeline import build_sampler, check_queries, query_similarity, select_frames
    from msjoe.samplers import MAX_QUERIES

    try:
        device = check_device(device)
        video_io.existing_video_file(video)  # before the encoder loads
        if explain is not None:
            check_explain_path(explain)
        chosen_sampler = build_sampler(sampler, checkpoint=sampler_checkpoint)
        if not 1 <= len(query) <= MAX_QUERIES:
            raise ValueError(f"give 1 to {MAX_QUERIES} --query options, got {len(query)}")
        check_queries(query)  # before the encoder loads
        encoder = DualEncoder.from_pretrained(clip, device=device)
        if sampler == "qframe":
            chosen_sampler = build_sampler(sampler, logit_scale=encoder.logit_scale)
        features = index_video(video, encoder, FeatureCache(cache_dir), fps=fps, max_frames=max_frames)
        sim = query_similarity(encoder, query, features)
        chosen = select_frames(chosen_sampler, sim, k, seed=seed)
        if explain is not None:
            probabilities = chosen_sampler.probabilities(sim)
            Explanation(
                features.timestamps,
                chosen,
                video=str(video),
                queries=list(query),
                similarity=sim.numpy(),
                probabilities=None if probabilities is None else probabilities.numpy(),
                settings={"clip": clip, "sampler": sampler, "k": k, "seed": seed},
                title=f"{len(chosen)} key frames chosen by {sampler}",
            ).save(explain)
            console.print(f"explain view: {escape(str(explain))}", soft_wrap=True)
    except (MsjoeError, ValueError, OSError) as error:
        raise fail(error) from error
    timestamps = [video_io.round_seconds(features.timestamps[i]) for i in chosen]
    best = sim[:, chosen].max(dim=0)
    if as_json:
        result = {
            "video": str(video),
            "sampler": sampler,
            "k": len(chosen),  # every candidate when the video has fewer than the budget
            "requested_k": k,
            "queries": list(query),
            "num_candidates": len(features.timestamps),
            "indices": chosen,
            "timestamps": timestamps,
            "similarity": [round(float(v), 4) for v in best.values],
            "best_query": [int(q) for q in best.indices],
        }
        typer.echo(json.dumps(result, indent=2))
        return
    title, note = f"{len(chosen)} key frames ({sampler})", _fewer_frames_note(len(chosen), k)
    table = Table("#", "time", "seconds", "similarity", "best query", title=title, caption=note or None)
    for rank, (ts, value, q) in enumerate(zip(timestamps, best.values, best.indices, strict=True), start=1):
        table.add_row(str(rank), format_time(ts), f"{ts:.2f}", f"{float(value):.4f}", escape(query[int(q)]))
    Console().print(table)


@app.command()
def samplers() -> None:
    """List the registered samplers."""
    from msjoe.samplers import available_samplers

    for name in available_samplers():
        typer.echo(name)


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(help="Video file.", show_default=False)],
    question: Annotated[str, typer.Argument(help="The question.", show_default=False)],
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", "-o", help="An answer option (repeat; lettered A, B, ... in order).", show_default=False
        ),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Key frames shown to the MLLM.", min=1)] = 32,
    sampler: Annotated[str, typer.Option(help="Sampler name (see `msjoe samplers`).")] = DEFAULT_SAMPLER,
    sampler_checkpoint: Annotated[
        Path | None, typer.Option(help="U-Sampler weights folder (required for --sampler usampler).")
    ] = None,
    mllm: MllmOption = DEFAULT_MLLM,
    model: ModelOption = None,
    timeout: TimeoutOption = None,
    max_retries: MaxRetriesOption = None,
    api_key_env: ApiKeyEnvOption = None,
    clip: ClipOption = DEFAULT_CLIP,
    fps: FpsOption = video_io.DEFAULT_FPS,
    max_frames: MaxFramesOption = video_io.DEFAULT_MAX_FRAMES,
    cache_dir: CacheOption = None,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed for stochastic samplers.")] = 0,
    store_frames: StoreFramesOption = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    explain: ExplainOption = None,
) -> None:
    """Answer QUESTION about VIDEO from K key frames chosen for queries the MLLM writes."""
    from msjoe.devices import check_device
    from msjoe.errors import MsjoeError
    from msjoe.explain import check_explain_path
    from msjoe.pipeline import PipelineConfig, VideoQA

    try:
        device = check_device(device)
        video_io.existing_video_file(video)  # before minutes of loading a 7B model
        if explain is not None:
            check_explain_path(explain)
        mllm_options = http_options(
            mllm, flag, model=model, timeout=timeout, max_retries=max_retries, api_key_env=api_key_env
        )
        config = PipelineConfig(
            k=k,
            sampler=sampler,
            sampler_checkpoint=str(sampler_checkpoint) if sampler_checkpoint else None,
            fps=fps,
            max_frames=max_frames,
            seed=seed,
            store_frames=store_frames,
        )
        qa = VideoQA.from_pretrained(
            mllm, clip, device=device, dtype=dtype, cache_dir=cache_dir, config=config, mllm_options=mllm_options
        )
        with console.status("answering..."):
            answer = qa.ask(video, question, option or None)
        if explain is not None:
            answer.explain(explain)
            console.print(f"explain view: {escape(str(explain))}", soft_wrap=True)
    except (MsjoeError, ValueError, OSError) as error:
        raise fail(error) from error
    if as_json:
        typer.echo(json.dumps({"video": str(video), "question": question, "options": option or [], **answer.to_dict()}))
        return
    out = Console()
    source = " (from the question: no query could be parsed)" if answer.queries_from_question else ""
    queries = "; ".join(escape(q) for q in answer.queries) or "none"
    out.print(f"[bold]queries[/]{source}: {queries}", soft_wrap=True)
    note = _fewer_frames_note(answer.k, answer.requested_k)
    out.print(
        f"[bold]key frames[/] ({answer.k}{'; ' + note if note else ''}): "
        + ", ".join(map(format_time, answer.chosen_timestamps))
    )
    out.print(f"[bold]reply[/]: {escape(answer.reply.strip())}", soft_wrap=True)
    if option:
        verdict = answer.letter if answer.letter else f"<{answer.status}>"
        out.print(f"[bold]answer[/]: {verdict}")
    out.print(
        "[dim]" + "  ".join(f"{stage} {seconds * 1000:.0f} ms" for stage, seconds in answer.timings.items()) + "[/]"
    )


@app.command("smoke-models")
def smoke_models(
    folder: Annotated[Path, typer.Argument(help="Where to write the models and a demo video.")] = Path("smoke-models"),
) -> None:
    """Write tiny RANDOM models (CLIP, Qwen2.5-VL) and a demo video, to smoke-test msjoe without a model hub.

    The models are untrained and answer at random: they exercise every code path, nothing more.
    """
    from msjoe.tiny_models import write_smoke_models

    paths = write_smoke_models(folder)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command("smoke-data")
def smoke_data(
    folder: Annotated[Path, typer.Argument(help="Where to write the videos and the QA JSONL.")] = Path("smoke-data"),
    items: Annotated[int, typer.Option("--items", help="Questions to write (two per video).", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the colours and event times.")] = 0,
) -> None:
    """Write SMOKE-TEST training data: short synthetic videos with coloured flashes and a QA JSONL about them.

    Difficulties are stand-ins (not a model's pass rate): the data exercises the training code, nothing more.
    """
    from msjoe.data.smoke import write_smoke_dataset

    typer.echo(write_smoke_dataset(folder, num_items=items, seed=seed))


def _skipped_rows_summary(rows: list[dict[str, str]], out: Path, shown: int = 5) -> str:
    """The count of malformed annotation rows and the first few (where, why); the report lists them all."""
    lines = [f"warning: {len(rows)} malformed annotation row{'s' * (len(rows) != 1)} skipped:"]
    lines += [f"  {row['location']}: {row['reason']}" for row in rows[:shown]]
    if len(rows) > shown:
        lines.append(f"  ... and {len(rows) - shown} more, all listed in {out / 'report.md'}")
    return "\n".join(lines)


@app.command("eval")
def evaluate(
    benchmark: Annotated[str, typer.Option(help="Benchmark: videomme, longvideobench, lvbench, mlvu.")],
    annotations: Annotated[
        str, typer.Option(help="The benchmark's annotation file or folder (or its Hugging Face dataset id).")
    ],
    videos: Annotated[Path | None, typer.Option(help="Folder of the benchmark's videos.")] = None,
    sampler: Annotated[str, typer.Option(help="Samplers to compare, comma-separated (e.g. usampler,bolt,uniform).")] = (
        DEFAULT_SAMPLER
    ),
    frames: Annotated[str, typer.Option("--frames", help="Frame budgets K, comma-separated (e.g. 8,16,32,64).")] = (
        "32"
    ),
    out: Annotated[Path, typer.Option(help="Output folder; rerunning into it resumes.")] = Path("msjoe-eval"),
    limit: Annotated[int | None, typer.Option(help="Run only the first N items (quick checks).", min=1)] = None,
    workers: Annotated[
        int, typer.Option(help="Items answered concurrently; only helps with an HTTP --mllm (local models: 1).", min=1)
    ] = 1,
    retry_errors: Annotated[bool, typer.Option(help="Run again the items that failed in an earlier run.")] = False,
    rules: Annotated[
        str | None,
        typer.Option(help="Scoring rule set (README: Scoring) \\[default: the benchmark's official one]."),
    ] = None,
    sampler_checkpoint: Annotated[
        Path | None, typer.Option(help="U-Sampler weights folder (required when --sampler lists usampler).")
    ] = None,
    mllm: MllmOption = DEFAULT_MLLM,
    model: ModelOption = None,
    timeout: TimeoutOption = None,
    max_retries: MaxRetriesOption = None,
    api_key_env: ApiKeyEnvOption = None,
    clip: ClipOption = DEFAULT_CLIP,
    fps: FpsOption = video_io.DEFAULT_FPS,
    max_frames: MaxFramesOption = video_io.DEFAULT_MAX_FRAMES,
    cache_dir: CacheOption = None,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "auto",
    seed: Annotated[int, typer.Option(help="Seed for stochastic samplers and the random fallback.")] = 0,
    store_frames: StoreFramesOption = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print this benchmark's scores as JSON.")] = False,
    explain_items: Annotated[
        int,
        typer.Option(
            "--explain-items",
            help="Write explain views of N items per sampler and K (wrong first) to OUT/explain/.",
            min=0,
        ),
    ] = 0,
) -> None:
    """Evaluate samplers x frame budgets on a benchmark: resumable per-item predictions, scoring by a rule set
    (the benchmark's official one by default; `msjoe score` rescores without models), OUT/report.md and
    OUT/scores.json. Under `accelerate launch` (or `torchrun`; on CPU with ACCELERATE_USE_CPU=true) each process
    answers the questions of whole videos (balanced by question count) with its own model copy (with `--device
    cuda`, on its own GPU); OUT must be on a file system every process sees.

    Exit status: 0 when every item was answered (items whose video is missing are listed, not failed); 3 when the
    run finished but some items ended in an error (counted wrong, listed in the report); 1 when the run stopped: a
    bad setting, an unreachable or failing server, or the first 5 items all failing with the same error."""
    from msjoe.devices import check_device
    from msjoe.distributed import on_every_process, process_device
    from msjoe.errors import MsjoeError
    from msjoe.eval.harness import is_run_fatal, run_eval
    from msjoe.pipeline import PipelineConfig, VideoQA

    with command_processes() as state:
        try:
            device = check_device(process_device(state, device))
            mllm_options = _eval_mllm_options(
                mllm, workers, model=model, timeout=timeout, max_retries=max_retries, api_key_env=api_key_env
            )
            config = _eval_config(
                benchmark=benchmark,
                annotations=annotations,
                videos=videos,
                out=out,
                sampler=sampler,
                frames=frames,
                sampler_checkpoint=sampler_checkpoint,
                limit=limit,
                workers=workers,
                retry_errors=retry_errors,
                seed=seed,
                rules=rules,
                run_info={"mllm": mllm, "model": model, "clip": clip},
            )
            pipeline = PipelineConfig(fps=fps, max_frames=max_frames, seed=seed, store_frames=store_frames)
            qa = on_every_process(
                state,
                lambda: VideoQA.from_pretrained(
                    mllm,
                    clip,
                    device=device,
                    dtype=dtype,
                    cache_dir=cache_dir,
                    config=pipeline,
                    mllm_options=mllm_options,
                ),
                what="loading the models",
            )
            entry = run_eval(qa, config, processes=state)
        except (MsjoeError, ValueError, FileNotFoundError) as error:
            # Only a failure of the model server stops a run part-way; anything else stopped it before it began.
            hint = f"finished items are saved in {out}; rerun to resume" if is_run_fatal(error) else None
            raise fail(error, hint=hint) from error
    if not state.is_main_process:
        return
    if entry["skipped_rows"]:  # on stderr, so --json output stays one document
        console.print(_skipped_rows_summary(entry["skipped_rows"], out), soft_wrap=True, markup=False, highlight=False)
    if explain_items:
        from msjoe.eval.explain import explain_after_eval

        try:
            console.print(f"explain views: {escape(str(explain_after_eval(qa, config, explain_items)))}")
        except (MsjoeError, ValueError, OSError) as error:
            raise fail(error) from error
    if as_json:
        typer.echo(json.dumps(entry))
    else:
        _print_eval_scores(benchmark, entry, out)
    _exit_if_items_failed(entry, config)


def _eval_mllm_options(
    mllm: str,
    workers: int,
    *,
    model: str | None,
    timeout: float | None,
    max_retries: int | None,
    api_key_env: str | None,
) -> dict[str, object]:
    """`msjoe eval`, step 1: the HTTP options given for --mllm (refused for a local model), and --workers > 1
    refused for a local model, which answers one item at a time."""
    mllm_options = http_options(
        mllm, flag, model=model, timeout=timeout, max_retries=max_retries, api_key_env=api_key_env
    )
    if workers > 1 and not mllm.startswith(("http://", "https://")):
        raise ValueError("--workers > 1 needs an HTTP --mllm: a local model answers one item at a time")
    return mllm_options


def _eval_config(
    *,
    benchmark: str,
    annotations: str,
    videos: Path | None,
    out: Path,
    sampler: str,
    frames: str,
    sampler_checkpoint: Path | None,
    limit: int | None,
    workers: int,
    retry_errors: bool,
    seed: int,
    rules: str | None,
    run_info: dict[str, str | None],
) -> EvalConfig:
    """`msjoe eval`, step 2: the harness's settings from the command's options (the comma-separated --sampler and
    --frames parsed; ``run_info`` recorded in the report)."""
    from msjoe.eval.harness import EvalConfig

    scoring: dict[str, object] = {"seed": seed, "rules": rules}
    return EvalConfig(
        benchmark=benchmark,
        annotations=annotations,
        videos=videos,
        output_dir=out,
        samplers=csv_list(sampler, "--sampler"),
        budgets=csv_list(frames, "--frames", int),
        sampler_checkpoint=str(sampler_checkpoint) if sampler_checkpoint else None,
        limit=limit,
        workers=workers,
        retry_errors=retry_errors,
        scoring=scoring,
        run_info=run_info,
    )


def _print_eval_scores(benchmark: str, entry: dict, out: Path) -> None:
    """`msjoe eval`, last step without --json: the table of each sampler and K's headline score, the count of items
    skipped for a missing video, and where the report is."""
    table = Table("sampler", "K", "metric", "score", "counted", "errors", title=escape(benchmark))
    for run in entry["runs"]:
        report = run["report"]
        if report is None:
            table.add_row(escape(run["sampler"]), str(run["k"]), "-", "no ground truth", "-", str(run["errors"]))
            continue
        value = report["headline"]["value"]
        table.add_row(
            escape(run["sampler"]),
            str(run["k"]),
            escape(report["headline"]["metric"]),
            "-" if value is None else f"{100 * value:.1f}",
            str(report["overall"]["total"]),
            str(run["errors"]),
        )
    Console().print(table)
    if entry["missing_items"]:
        console.print(f"{len(entry['missing_items'])} items skipped: their video is missing (listed in the report)")
    console.print(f"report: {escape(str(out / 'report.md'))}", soft_wrap=True)


def _exit_if_items_failed(entry: dict, config: EvalConfig) -> None:
    """End with :data:`EXIT_ITEMS_FAILED` when items of the runs asked for ended in an error: the report is
    written, but its scores count those items as wrong."""
    asked = {(sampler, k) for sampler in config.samplers for k in config.budgets}
    failed = {(run["sampler"], run["k"]): run["errors"] for run in entry["runs"] if (run["sampler"], run["k"]) in asked}
    failed = {key: count for key, count in failed.items() if count}
    if failed:
        runs = ", ".join(f"{sampler} K={k}: {count}" for (sampler, k), count in sorted(failed.items()))
        console.print(
            f"[bold red]{sum(failed.values())} item answer(s) failed[/] ({escape(runs)}); they count as wrong. "
            "Their errors are in the report; rerun with --retry-errors to try them again.",
            soft_wrap=True,
        )
        raise typer.Exit(code=EXIT_ITEMS_FAILED)
