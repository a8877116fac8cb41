"""``msjoe data ...``: build a training set: import, calibrate, filter, needle, split, stats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from msjoe.cli_support import command_processes, console, fail
from msjoe.video import DEFAULT_FPS, DEFAULT_MAX_FRAMES

app = typer.Typer(
    help="Build a training set: import annotations, calibrate difficulty, filter, synthesise needles, split, inspect.",
    no_args_is_help=True,
)
SHOWN = 10  # rejected rows / missing videos printed; the report files list them all

QaFile = Annotated[Path, typer.Argument(help="QA JSONL (msjoe.data.schema).", show_default=False)]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Where to write the QA JSONL.", show_default=False)]
VideoRootOption = Annotated[
    Path | None, typer.Option("--video-root", help="Folder relative video paths are resolved against.")
]


def _read(qa_file: Path, video_root: Path | None = None) -> list:
    from msjoe.data.schema import read_qa_jsonl

    return read_qa_jsonl(qa_file, video_root=video_root)


def _listing(title: str, lines: list[str]) -> None:
    if not lines:
        return
    console.print(f"{title} ({len(lines)}):", markup=False, highlight=False)
    for line in lines[:SHOWN]:
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if len(lines) > SHOWN:
        console.print(f"  ... and {len(lines) - SHOWN} more", markup=False)


# --------------------------------------------------------------------------------------------------------------
@app.command("import")
def import_command(
    annotations: Annotated[str, typer.Argument(help="Annotation file (a benchmark also takes a folder or Hub id).")],
    output: OutputOption,
    format: Annotated[str, typer.Option("--format", "-f", help="See `msjoe data formats`.")],
    video_root: Annotated[
        Path | None, typer.Option("--video-root", help="Folder of the videos \\[default: the annotation's folder].")
    ] = None,
    field_map: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="generic format: NAME=FIELD (question, options, answer, answer_format, video, id, "
            "duration, task, category.NAME, evidence, evidence_start, evidence_end, meta). Repeat.",
            show_default=False,
        ),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="generic format: the items' source \\[default: file stem].")
    ] = None,
    video_map: Annotated[
        Path | None, typer.Option(help="nextqa: map_vid_vidorID.json when it is not beside the CSV.")
    ] = None,
    probe: Annotated[bool, typer.Option(help="Read missing durations from the videos' headers.")] = True,
    keep_missing: Annotated[bool, typer.Option(help="Also write questions whose video is missing.")] = False,
) -> None:
    """Convert annotations into msjoe's QA JSONL. Missing videos are listed, rejected rows named (file:line and
    why); both are also in OUTPUT's .import.json report."""
    from msjoe.data.importer import FieldMap, import_annotations, write_import
    from msjoe.data.records import FileFormatError
    from msjoe.data.schema import QAFormatError

    try:
        fields = FieldMap.parse(field_map) if field_map else None
        if format == "generic" and fields is None:
            fields = FieldMap()
        result = import_annotations(
            format, annotations, video_root=video_root, fields=fields, source=source, video_map=video_map, probe=probe
        )
        path, report = write_import(
            result,
            output,
            keep_missing=keep_missing,
            details={"annotations": str(annotations), "video_root": None if video_root is None else str(video_root)},
        )
    except (ValueError, FileNotFoundError, FileFormatError, QAFormatError) as error:
        raise fail(error) from error
    _listing("rejected rows", [f"{row.location}: {row.reason}" for row in result.skipped])
    _listing("missing videos", result.missing_videos)
    written = len(result.items) + (len(result.missing) if keep_missing else 0)
    typer.echo(
        f"{written} items written to {path} ({len(result.items)} with their video, {len(result.missing)} missing "
        f"a video{'' if keep_missing else ', not written'}, {len(result.skipped)} rows rejected); report: {report}"
    )
    if written == 0:
        raise typer.Exit(code=1)


@app.command("formats")
def formats_command() -> None:
    """List the formats `msjoe data import` reads."""
    from msjoe.data.importer import IMPORT_FORMATS

    for name, description in IMPORT_FORMATS.items():
        typer.echo(f"{name:16s} {description}")


# --------------------------------------------------------------------------------------------------------------
@app.command("calibrate")
def calibrate_command(
    qa_file: QaFile,
    output: OutputOption,
    mllm: Annotated[str, typer.Option("--mllm", help="The base MLLM: Hugging Face id, local folder or http(s) URL.")],
    k: Annotated[int, typer.Option("--k", "-k", help="Uniform frames per answer: the training budget K.", min=1)],
    samples: Annotated[int, typer.Option("--samples", help="Answers per item when sampling.", min=1)] = 1,
    temperature: Annotated[
        float, typer.Option("--temperature", help="0: greedy, one exact answer per item.", min=0.0)
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first sampled answer.")] = 0,
    blind: Annotated[bool, typer.Option("--blind", help="Also measure the pass rate with no frames.")] = False,
    score: Annotated[
        str,
        typer.Option(
            "--score",
            help="correct: the pass rate of decoded answers (paper); gold_probability: the mean probability of the "
            "gold letter (one forward pass each; for stage 1's answer_reward gold_probability).",
        ),
    ] = "correct",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Chats sent to the model at once.", min=1)] = 8,
    fps: Annotated[float, typer.Option("--fps", help="Candidate frames per second (as in training).", min=1e-6)] = (
        DEFAULT_FPS
    ),
    max_frames: Annotated[int, typer.Option("--max-frames", help="Cap on candidates (as in training).", min=1)] = (
        DEFAULT_MAX_FRAMES
    ),
    frame_max_pixels: Annotated[int, typer.Option("--frame-max-pixels", help="Pixel budget per frame.", min=1)] = (
        448 * 448
    ),
    answer_cache: Annotated[
        Path | None,
        typer.Option(
            "--answer-cache",
            help="Answer cache (JSONL); a rerun resumes from it \\[default: OUTPUT's stem + .answers.jsonl].",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Feature cache folder whose frame store (msjoe index --store-frames) "
            "holds the videos' frames: read instead of decoding.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Re-rate items that already have one.")] = False,
    video_root: VideoRootOption = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name to request from an HTTP server.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 or auto.")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, bfloat16, float16, float32.")] = "auto",
) -> None:
    """Measure each item's difficulty c: the base MLLM's pass rate with K uniform frames (stage 1 needs it).

    Resumable (every answer is cached as it comes) and batched. Under `accelerate launch` (or `torchrun`; on CPU
    with ACCELERATE_USE_CPU=true) each process answers the items of whole videos; the answer cache must be on
    a file system every process sees.
    """
    from msjoe.cache import FeatureCache
    from msjoe.data.calibrate import CalibrationConfig, calibrate, default_cache_path
    from msjoe.data.schema import QAFormatError
    from msjoe.devices import check_device
    from msjoe.distributed import on_every_process, process_device
    from msjoe.errors import MsjoeError
    from msjoe.frame_store import FrameStore
    from msjoe.mllm import load_mllm
    from msjoe.mllm.base import GenerationConfig

    is_http = mllm.startswith(("http://", "https://"))
    with command_processes() as state:
        try:
            if model and not is_http:
                raise ValueError("--model names a model on an HTTP server: use it with an http(s) --mllm URL")
            items = _read(qa_file, video_root)
            config = CalibrationConfig(
                k=k,
                samples=samples,
                generation=GenerationConfig(max_new_tokens=32, temperature=temperature, seed=seed),
                fps=fps,
                max_frames=max_frames,
                frame_max_pixels=frame_max_pixels,
                batch_size=batch_size,
                blind=blind,
                overwrite=overwrite,
                score=score,
            )
            options = (
                {"model": model} if is_http else {"device": check_device(process_device(state, device)), "dtype": dtype}
            )
            backend = on_every_process(state, lambda: load_mllm(mllm, **options), what="loading the model")
            on_every_process(state, backend.check, what="checking the model")  # a wrong server fails now
            store = FrameStore.for_cache(FeatureCache(cache_dir), max_pixels=frame_max_pixels) if cache_dir else None
            report = calibrate(
                items,
                output,
                mllm=backend,
                config=config,
                cache_path=answer_cache or default_cache_path(output),
                frame_store=store,
                processes=state,
                progress=True,
            )
        except (MsjoeError, QAFormatError, ValueError, FileNotFoundError) as error:
            raise fail(error) from error
    if not state.is_main_process:
        return
    _listing("items not rated", [f"{s.id} ({s.video}): {s.reason}" for s in report.skipped])
    typer.echo(report.summary())
    if report.rated == 0 and report.kept == 0:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------------------------------------------
@app.command("filter")
def filter_command(
    qa_file: QaFile,
    output: OutputOption,
    option_sanity: Annotated[
        bool, typer.Option("--option-sanity", help="Drop items without an answer or with two equal options.")
    ] = False,
    min_duration: Annotated[float | None, typer.Option(help="Drop videos shorter than this (seconds).")] = None,
    max_duration: Annotated[float | None, typer.Option(help="Drop videos longer than this (seconds).")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Drop same / near-duplicate questions per video.")] = False,
    near_duplicate: Annotated[
        float, typer.Option(help="Word-set Jaccard similarity from which two questions are near-duplicates.")
    ] = 0.9,
    min_difficulty: Annotated[float | None, typer.Option(help="Drop items whose pass rate c is below this.")] = None,
    max_difficulty: Annotated[float | None, typer.Option(help="Drop items whose pass rate c is above this.")] = None,
    drop_always_correct: Annotated[
        bool, typer.Option("--drop-always-correct", help="Drop items answered right at every uniform draw (c = 1).")
    ] = False,
    drop_blind: Annotated[
        bool, typer.Option("--drop-blind", help="Drop items answered right without frames (calibrate --blind).")
    ] = False,
    max_blind: Annotated[float, typer.Option(help="--drop-blind removes blind pass rates above this.")] = 0.0,
    balance_letters: Annotated[
        bool, typer.Option("--balance-letters", help="Down-sample to equally frequent answer letters.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of --balance-letters.")] = 0,
    removed: Annotated[
        Path | None, typer.Option("--removed", help="Also write the removed items (JSONL: id, rule, reason).")
    ] = None,
) -> None:
    """Keep the items that pass every rule asked for; print how many each rule removed."""
    import json

    from msjoe.atomic import write_text_atomically
    from msjoe.data.filters import FilterConfig, filter_items
    from msjoe.data.schema import QAFormatError, write_qa_jsonl

    try:
        items = _read(qa_file)
        config = FilterConfig(
            option_sanity=option_sanity,
            min_duration=min_duration,
            max_duration=max_duration,
            dedupe=dedupe,
            near_duplicate=near_duplicate,
            min_difficulty=min_difficulty,
            max_difficulty=max_difficulty,
            drop_always_correct=drop_always_correct,
            drop_blind=drop_blind,
            max_blind=max_blind,
            balance_letters=balance_letters,
            seed=seed,
        )
        report = filter_items(items, config)
        write_qa_jsonl(output, report.kept, relative_to=output.parent)
        if removed is not None:
            lines = [
                json.dumps({"id": item.id, "source": item.source, "rule": result.rule, "reason": reason})
                for result in report.rules
                for item, reason in result.removed
            ]
            write_text_atomically(removed, "".join(line + "\n" for line in lines))
    except (QAFormatError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error
    table = Table("rule", "checks", "removed", title=f"{report.total} items in, {len(report.kept)} kept")
    for result in report.rules:
        table.add_row(result.rule, escape(result.description), str(len(result.removed)))
    Console().print(table)
    if not report.rules:
        console.print("no rule asked for: every item kept (see --help)")
    typer.echo(f"{len(report.kept)} items written to {output}")


# --------------------------------------------------------------------------------------------------------------
@app.command("needle")
def needle_command(
    qa_file: Annotated[Path, typer.Argument(help="QA JSONL of the target items (their videos are the needles).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: videos/ and needle_qa.jsonl.")],
    count: Annotated[int, typer.Option(help="Items to make.", min=1)] = 100,
    duration: Annotated[float, typer.Option(help="Length of each video in seconds.", min=1e-3)] = 600.0,
    haystack: Annotated[
        list[Path] | None,
        typer.Option("--haystack", help="Haystack video (repeat) \\[default: the other videos of QA_FILE]."),
    ] = None,
    haystack_clip: Annotated[float, typer.Option(help="Longest piece of one haystack video (s).", min=1e-3)] = 60.0,
    max_needle: Annotated[float, typer.Option(help="Longest target clip (s).", min=1e-3)] = 60.0,
    fps: Annotated[float, typer.Option(help="Frame rate of the written videos.", min=1e-3)] = 4.0,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT of the written videos (even).")] = "640x360",
    question: Annotated[str, typer.Option(help="source: the target's question; when: which quarter shows it.")] = (
        "source"
    ),
    describe: Annotated[
        str | None, typer.Option(help="when: the target's field describing the clip (meta.caption, answer_text...).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every draw.")] = 0,
    video_root: VideoRootOption = None,
) -> None:
    """Synthesise needle-in-a-haystack items: each target clip spliced into other videos at a random position,
    with its evidence span. Seeded, reproducible and resumable (an unchanged video is not encoded again)."""
    from msjoe.data.needle import NeedleConfig, build_needles
    from msjoe.data.schema import QAFormatError
    from msjoe.errors import MsjoeError

    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise fail(f"--size must be WIDTHxHEIGHT, e.g. 640x360, got {size!r}") from None
    try:
        config = NeedleConfig(
            count=count,
            duration=duration,
            haystack_clip=haystack_clip,
            max_needle=max_needle,
            fps=fps,
            size=(width, height),
            question=question,  # type: ignore[arg-type]
            describe=describe,
            seed=seed,
        )
        report = build_needles(_read(qa_file, video_root), out, config, haystack=haystack or (), progress=True)
    except (MsjoeError, QAFormatError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error
    _listing("source items not used", [f"{item_id}: {reason}" for item_id, reason in report.unusable])
    typer.echo(f"{len(report.items)} needle items ({report.encoded} videos encoded now) written to {report.path}")


# --------------------------------------------------------------------------------------------------------------
@app.command("split")
def split_command(
    qa_file: QaFile,
    train: Annotated[Path, typer.Option("--train", help="Where to write the training items.")],
    val: Annotated[Path, typer.Option("--val", help="Where to write the validation items.")],
    val_fraction: Annotated[float, typer.Option(help="Share of the videos for validation.", min=0.0, max=0.99)] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
) -> None:
    """Split by video: no video (nor a needle's source footage) in both files."""
    from msjoe.data.schema import QAFormatError, write_qa_jsonl
    from msjoe.data.split import split_by_video

    try:
        result = split_by_video(_read(qa_file), val_fraction=val_fraction, seed=seed)
        write_qa_jsonl(train, result.train, relative_to=train.parent)
        write_qa_jsonl(val, result.val, relative_to=val.parent)
    except (QAFormatError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error
    typer.echo(f"train: {len(result.train)} items, {result.train_videos} videos -> {train}")
    typer.echo(f"val: {len(result.val)} items, {result.val_videos} videos -> {val}")


# --------------------------------------------------------------------------------------------------------------
@app.command("stats")
def stats_command(
    qa_files: Annotated[list[Path], typer.Argument(help="QA JSONL files (counted together).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for stats.md, stats.json and PNG plots.")] = None,
) -> None:
    """Counts, durations, options per question, answer-letter balance, difficulty histogram, span lengths and
    sources: printed, and with --out written as a markdown page with plots."""
    from msjoe.data.schema import QAFormatError
    from msjoe.data.stats import dataset_stats, summary_rows, write_stats

    try:
        items = [item for path in qa_files for item in _read(path)]
        title = ", ".join(path.name for path in qa_files)
        stats = write_stats(items, out, title=title) if out is not None else dataset_stats(items)
    except (QAFormatError, ValueError, FileNotFoundError) as error:
        raise fail(error) from error
    table = Table("", "value", title=escape(title))
    for name, value in summary_rows(stats):
        table.add_row(escape(name), escape(value))
    Console(width=max(100, Console().width)).print(table)
    if out is not None:
        typer.echo(f"report: {out / 'stats.md'}")
