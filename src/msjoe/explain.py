"""The explain view: why an answer came out as it did, as one self-contained HTML page or a PNG figure.

    answer = qa.ask("talk.mp4", "What does the speaker hold?", ["A pen", "A cup", "A phone", "Nothing"])
    answer.explain("why.html")        # or "why.png"; answer.explain() returns the Explanation

An :class:`Explanation` holds what a researcher needs to judge a selection: the question, options and reply with
the parsed letter (and the ground truth for benchmark items); the queries the MLLM wrote and whether they fell
back to the question; the similarity of each query to every candidate frame; the sampler's probabilities when it
has them; the preview and key frames with their timestamps; per-stage timings; the models, sampler and K. It is
built from an :class:`~msjoe.pipeline.Answer` (:meth:`~msjoe.pipeline.Answer.explain`), by ``msjoe select --explain``,
and for benchmark items by :mod:`msjoe.eval.explain`.

Rendering:

- ``.html``: one file with everything inline (the timeline as SVG text, frames as JPEG ``data:`` URIs, CSS in a
  ``<style>``), no script, and a Content-Security-Policy that forbids any network request, so it opens from
  disk, from an e-mail attachment or inside the web service's page alike. All text is HTML-escaped.
- ``.png``: the same timeline plus a strip of the key frames, for papers and issues. The queries, the chosen
  timestamps and the preview timestamps are also stored in the PNG's ``Description`` text chunk (JSON).

Figures use matplotlib's object-oriented API on Agg/SVG canvases, never ``pyplot`` (as :mod:`msjoe.eval.plots`):
no global backend is selected and a user's own pyplot state is left alone. Markers carry SVG ids (``chosen-3``,
``preview``, ``query-0``, ``probabilities``) so tools and tests can find them in the page.

Frames are decoded again from the video at thumbnail size when the view is rendered (the pipeline does not keep
them). A video that cannot be read any more gives a view without thumbnails that says why.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from msjoe.atomic import write_bytes_atomically, write_text_atomically
from msjoe.errors import MsjoeError
from msjoe.video import format_time

if TYPE_CHECKING:
    from matplotlib.figure import Figure


logger = logging.getLogger(__name__)

SUFFIXES = (".html", ".htm", ".png")
THUMBNAIL_MAX_PIXELS = 240 * 136
"""Pixel budget of a thumbnail (240 x 135 for 16:9): readable, and ~5 kB as JPEG, so K = 64 stays under 1 MB."""
THUMBNAIL_JPEG_QUALITY = 80
FRAMES_PER_ROW = 8
"""Key frames per row of the PNG's frame strip."""
FIGURE_WIDTH_INCHES = 10.0
FIGURE_DPI = 100

CHOSEN_COLOR = "#d62728"
PREVIEW_COLOR = "#555555"
PROBABILITY_COLOR = "#8c564b"
# One colour per query row (at most 4); none of them is the key frames' red.
QUERY_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e")
# The page may not load anything: no script, no remote image, font or style. Images are data: URIs.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def check_explain_path(path: str | Path) -> Path:
    """``path`` as a Path if its suffix names a format we write (``.html``, ``.htm``, ``.png``), else ValueError.

    Commands call it before loading models, so a typo costs nothing."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"explain file {path} must end in .html or .png (got {path.suffix or 'no suffix'!r})")
    return path


@dataclass
class Explanation:
    """Everything the explain view shows. Arrays are numpy; timestamps are seconds from the video's start.

    Only ``candidate_timestamps`` and ``chosen_indices`` are required: a view of ``msjoe select`` has no question
    or reply, a rule-based sampler has no probabilities, and ``uniform`` writes no queries (no similarity).
    """

    candidate_timestamps: np.ndarray
    """``[T]`` the candidate frames' times."""
    chosen_indices: list[int]
    """The key frames as indices into the candidates, in time order."""
    video: str | None = None
    queries: list[str] = field(default_factory=list)
    similarity: np.ndarray | None = None
    """``[len(queries), T]`` cosine similarity of each query to each candidate."""
    probabilities: np.ndarray | None = None
    """``[T]`` the sampler's distribution over candidates (BOLT, Q-Frame, U-Sampler), or None."""
    preview_timestamps: list[float] = field(default_factory=list)
    question: str | None = None
    options: list[str] = field(default_factory=list)
    reply: str | None = None
    letter: str | None = None
    status: str | None = None
    correct_letter: str | None = None
    """The ground truth, when known (benchmark items)."""
    queries_from_question: bool = False
    query_reply: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """What produced the answer: ``mllm``, ``clip``, ``sampler``, ``k`` and anything else worth a row."""
    title: str | None = None
    error: str | None = None
    """Why the item has no answer (a failed benchmark item); shown at the top."""
    thumbnails: dict[float, np.ndarray] | None = field(default=None, repr=False)
    """Frames by timestamp (uint8 ``[H, W, 3]``); filled by :meth:`load_thumbnails` on first render."""
    thumbnail_error: str | None = None

    def __post_init__(self) -> None:
        self.candidate_timestamps = np.asarray(self.candidate_timestamps, dtype=np.float64).reshape(-1)
        num_candidates = len(self.candidate_timestamps)
        self.chosen_indices = [int(i) for i in self.chosen_indices]
        bad = [i for i in self.chosen_indices if not 0 <= i < num_candidates]
        if bad:
            raise ValueError(f"chosen indices {bad[:5]} are outside the {num_candidates} candidates")
        if self.similarity is not None:
            self.similarity = np.asarray(self.similarity, dtype=np.float64)
            if self.similarity.ndim == 1:
                self.similarity = self.similarity[None, :]
            if self.similarity.shape != (len(self.queries), num_candidates):
                raise ValueError(
                    f"similarity has shape {self.similarity.shape}; expected ({len(self.queries)} queries, "
                    f"{num_candidates} candidates)"
                )
        if self.probabilities is not None:
            self.probabilities = np.asarray(self.probabilities, dtype=np.float64).reshape(-1)
            if len(self.probabilities) != num_candidates:
                raise ValueError(f"{len(self.probabilities)} probabilities for {num_candidates} candidates")
        self.preview_timestamps = [float(t) for t in self.preview_timestamps]
        self.options = list(self.options)

    @property
    def chosen_timestamps(self) -> list[float]:
        return [float(self.candidate_timestamps[i]) for i in self.chosen_indices]

    def chosen_similarity(self) -> list[tuple[float, int] | None]:
        """Per key frame: (highest similarity over the queries, which query), or None without similarity."""
        if self.similarity is None or not len(self.similarity):
            return [None] * len(self.chosen_indices)
        columns = self.similarity[:, self.chosen_indices]
        return [(float(columns[:, n].max()), int(columns[:, n].argmax())) for n in range(columns.shape[1])]

    def load_thumbnails(self, max_pixels: int = THUMBNAIL_MAX_PIXELS) -> None:
        """Decode the preview and key frames from :attr:`video` at thumbnail size (once). A video that cannot be
        read leaves :attr:`thumbnails` empty and :attr:`thumbnail_error` saying why."""
        if self.thumbnails is not None:
            return
        times = sorted(set(self.chosen_timestamps) | set(self.preview_timestamps))
        self.thumbnails = {}
        if not times:
            return
        if self.video is None:
            self.thumbnail_error = "no video path"
            return
        try:
            self.thumbnails = decode_thumbnails(self.video, times, max_pixels)
        except (MsjoeError, OSError, ValueError) as error:
            logger.warning("explain view without frames: %s", error)
            self.thumbnail_error = str(error)

    # --- rendering ----------------------------------------------------------------------------------------------
    def figure(self, *, frames: bool = False) -> Figure:
        """The matplotlib figure: similarity curves with chosen and preview markers, the sampler's probabilities
        (when known) and, with ``frames``, a strip of the key frames (decoded if needed)."""
        if frames:
            self.load_thumbnails()
        return _timeline_figure(self, frames=frames)

    def to_png(self) -> bytes:
        """The PNG bytes of :meth:`figure` with the frame strip (``FIGURE_DPI``; no tight bbox, so pixel positions
        follow the figure's own transforms)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        with _rc():
            figure = self.figure(frames=True)
            FigureCanvasAgg(figure)
            buffer = io.BytesIO()
            description = {
                "video": self.video,
                "queries": self.queries,
                "chosen_timestamps": self.chosen_timestamps,
                "preview_timestamps": self.preview_timestamps,
                "letter": self.letter,
            }
            metadata = {"Title": self.heading(), "Description": json.dumps(description), "Software": "msjoe"}
            figure.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata=metadata)
        return buffer.getvalue()

    def timeline_svg(self) -> str:
        """The timeline (without the frame strip) as an inline ``<svg>`` element, text kept as text."""
        from matplotlib.backends.backend_svg import FigureCanvasSVG

        with _rc():
            figure = self.figure(frames=False)
            FigureCanvasSVG(figure)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg") :]  # drop the XML declaration and DOCTYPE: the page is HTML
        return svg.replace("<svg ", '<svg id="timeline" role="img" aria-label="similarity timeline" ', 1)

    def heading(self) -> str:
        if self.title:
            return self.title
        if self.question is None:
            return f"{len(self.chosen_indices)} key frames"
        if self.letter:
            return f"Why the answer is {self.letter}"
        return "Why this answer"

    def to_html(self) -> str:
        """The self-contained page (see the module notes)."""
        self.load_thumbnails()
        return _render_html(self)

    def save(self, path: str | Path) -> Path:
        """Write the view as ``.html`` or ``.png`` (by the suffix), atomically; return the path."""
        path = check_explain_path(path)
        if path.suffix.lower() == ".png":
            return write_bytes_atomically(path, self.to_png())
        return write_text_atomically(path, self.to_html())


# --------------------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------------------
def decode_thumbnails(video: str | Path, timestamps: Sequence[float], max_pixels: int) -> dict[float, np.ndarray]:
    """Frames of ``video`` at ``timestamps`` within ``max_pixels`` (aspect kept), keyed by timestamp."""
    from msjoe import video as video_io
    from msjoe.frame_store import budget_frame_size

    info = video_io.probe(video)
    size = budget_frame_size(info.height, info.width, max_pixels)
    times = sorted(float(t) for t in timestamps)
    frames = video_io.decode_frames(video, times, size)
    return dict(zip(times, frames, strict=True))


def _jpeg_data_uri(frame: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------------------------
def _rc() -> Any:
    """Settings for every explain figure: user text is never read as mathtext (a query with ``$`` in it stays
    literal), SVG keeps text as text (searchable, selectable), SVG ids are reproducible."""
    import matplotlib

    return matplotlib.rc_context({"text.parse_math": False, "svg.fonttype": "none", "svg.hashsalt": "msjoe-explain"})


def _short(text: str, limit: int = 60) -> str:
    """One line of at most ``limit`` characters, control characters dropped (untrained models write them)."""
    text = " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _timeline_figure(view: Explanation, *, frames: bool) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    times = view.candidate_timestamps
    chosen_ts = view.chosen_timestamps
    has_probabilities = view.probabilities is not None
    strip = [t for t in chosen_ts if view.thumbnails and t in view.thumbnails] if frames else []
    strip_rows = math.ceil(len(strip) / FRAMES_PER_ROW)
    heights = [2.8] + ([1.3] if has_probabilities else []) + [1.35] * strip_rows
    figure = Figure(figsize=(FIGURE_WIDTH_INCHES, sum(heights) + 0.6), dpi=FIGURE_DPI, layout="constrained")
    grid = figure.add_gridspec(len(heights), 1, height_ratios=heights)

    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    span = (float(times[0]) - step / 2, float(times[-1]) + step / 2)
    time_axis = FuncFormatter(lambda x, _pos: format_time(max(x, 0.0)))

    axes = figure.add_subplot(grid[0])
    handles: list[Any] = []
    if view.similarity is not None:
        for j, query in enumerate(view.queries):
            (line,) = axes.plot(
                times,
                view.similarity[j],
                color=QUERY_COLORS[j % len(QUERY_COLORS)],
                lw=1.3,
                label=f"q{j + 1}: {_short(query)}",
            )
            line.set_gid(f"query-{j}")
            handles.append(line)
        axes.set_ylabel("cosine similarity")
    else:
        axes.set_yticks([])
        axes.text(
            0.5,
            0.5,
            "no similarity: this sampler uses no queries",
            ha="center",
            va="center",
            transform=axes.transAxes,
            color="#777777",
        )
    for n, t in enumerate(chosen_ts):
        axes.axvline(t, color=CHOSEN_COLOR, lw=1.0, zorder=1).set_gid(f"chosen-{n}")
    handles.append(Line2D([], [], color=CHOSEN_COLOR, lw=1.0, label=f"key frames ({len(chosen_ts)})"))
    if view.preview_timestamps:
        (preview,) = axes.plot(
            view.preview_timestamps,
            [0.0] * len(view.preview_timestamps),
            ls="none",
            marker="^",
            ms=7,
            color=PREVIEW_COLOR,
            transform=axes.get_xaxis_transform(),
            clip_on=False,
            label=f"preview frames ({len(view.preview_timestamps)})",
        )
        preview.set_gid("preview")
        handles.append(preview)
    axes.set_xlim(*span)
    axes.xaxis.set_major_formatter(time_axis)
    axes.grid(True, alpha=0.25)
    axes.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, fontsize=8, frameon=False)
    figure.suptitle(_short(view.question or view.heading(), 120), fontsize=10, x=0.01, ha="left")

    if has_probabilities:
        probs = view.probabilities
        assert probs is not None
        paxes = figure.add_subplot(grid[1], sharex=axes)
        paxes.fill_between(times, probs, step="mid", color=PROBABILITY_COLOR, alpha=0.45, lw=0).set_gid("probabilities")
        paxes.plot(chosen_ts, probs[view.chosen_indices], ls="none", marker="o", ms=3.5, color=CHOSEN_COLOR)
        paxes.set_ylabel("sampler p")
        paxes.set_ylim(bottom=0)
        paxes.grid(True, alpha=0.25)
        paxes.xaxis.set_major_formatter(time_axis)
        axes.tick_params(labelbottom=False)
        paxes.set_xlabel("time in video")
    else:
        axes.set_xlabel("time in video")

    if strip:
        assert view.thumbnails is not None
        first_strip_row = len(heights) - strip_rows
        cells = grid[first_strip_row:].subgridspec(strip_rows, FRAMES_PER_ROW, wspace=0.05, hspace=0.3)
        for n, t in enumerate(strip):
            cell = figure.add_subplot(cells[n // FRAMES_PER_ROW, n % FRAMES_PER_ROW])
            cell.imshow(view.thumbnails[t])
            cell.set_title(f"#{n + 1}  {format_time(t)}", fontsize=7, color=CHOSEN_COLOR)
            cell.set_axis_off()
    return figure


# --------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1rem 1.5rem;
color:#222;background:#fff}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
.video{color:#666;word-break:break-all}.error{background:#fde2e1;border:1px solid #d62728;padding:.5rem}
ol.options li.picked{font-weight:600;color:#d62728}ol.options li.truth::after{content:"  ✓ correct";color:#2ca02c}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;margin:.3rem 0}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.4rem;vertical-align:middle}
.note{color:#777}svg{max-width:100%;height:auto}.right{color:#2ca02c}.wrong{color:#d62728}
.frames{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.5rem}
figure.frame{margin:0;border:2px solid #ddd;padding:2px}figure.chosen{border-color:#d62728}
figure.frame img{width:100%;display:block}figcaption{font-size:12px}
table{border-collapse:collapse}td,th{padding:.15rem .8rem .15rem 0;text-align:left;vertical-align:top}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def html_page(title: str, body: Sequence[str]) -> str:
    """A self-contained page (the explain view's style and Content-Security-Policy) around ``body``, which must
    already be escaped HTML; ``title`` is text."""
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} · msjoe</title><style>{_STYLE}</style></head><body>",
    ]
    return "\n".join([*head, *body, "</body></html>"]) + "\n"


def _render_html(view: Explanation) -> str:
    parts = [f"<header><h1>{_e(view.heading())}</h1>"]
    if view.video:
        parts.append(f'<div class="video">{_e(view.video)}</div>')
    parts.append("</header>")
    if view.error:
        parts.append(f'<p class="error" id="error">This item failed: {_e(view.error)}</p>')
    parts += _question_section(view)
    parts += _queries_section(view)
    parts.append('<section id="timeline-section"><h2>Timeline</h2>')
    parts.append(view.timeline_svg())
    if view.probabilities is None:
        sampler = view.settings.get("sampler")
        parts.append(
            f'<p class="note">The sampler{f" {_e(sampler)}" if sampler else ""} has no probabilities '
            "(a rule, not a distribution).</p>"
        )
    parts.append("</section>")
    parts += _frames_section(view, "key-frames", f"Key frames ({len(view.chosen_indices)})", chosen=True)
    if view.preview_timestamps:
        title = f"Preview frames ({len(view.preview_timestamps)}, low resolution, seen while writing the queries)"
        parts += _frames_section(view, "preview-frames", title, chosen=False)
    parts += _table_section("timings", "Timings", {k: f"{1000 * v:.0f} ms" for k, v in view.timings.items()})
    settings = {**view.settings, "candidates": len(view.candidate_timestamps)}
    if len(view.candidate_timestamps):
        settings["video span"] = format_time(float(view.candidate_timestamps[-1]))
    parts += _table_section("settings", "Settings", {k: v for k, v in settings.items() if v is not None})
    return html_page(view.heading(), parts)


def _question_section(view: Explanation) -> list[str]:
    if view.question is None:
        return []
    parts = ['<section id="question"><h2>Question</h2>', f"<p>{_e(view.question)}</p>"]
    if view.options:
        parts.append('<ol class="options" type="A">')
        for n, option in enumerate(view.options):
            letter = chr(ord("A") + n)
            classes = [
                name for name, on in (("picked", letter == view.letter), ("truth", letter == view.correct_letter)) if on
            ]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            parts.append(f"<li{attr}>{_e(option)}</li>")
        parts.append("</ol>")
    if view.reply is not None:
        parts.append(f'<p>Reply:</p><pre id="reply">{_e(view.reply)}</pre>')
    if view.options:
        verdict = view.letter or f"none ({view.status})"
        parts.append(f'<p>Parsed letter: <strong id="letter">{_e(verdict)}</strong>')
        if view.correct_letter:
            right = "right" if view.letter == view.correct_letter else "wrong"
            parts.append(
                f' — ground truth <strong>{_e(view.correct_letter)}</strong> (<span id="verdict">{right}</span>)'
            )
        parts.append("</p>")
    parts.append("</section>")
    return parts


def _queries_section(view: Explanation) -> list[str]:
    parts = ['<section id="queries"><h2>Queries</h2>']
    if not view.queries:
        parts.append('<p class="note">No queries: this sampler does not use them.</p>')
    else:
        if view.queries_from_question:
            parts.append(
                '<p class="note" id="fallback">The MLLM wrote no query that could be parsed: the question '
                "itself was the query.</p>"
            )
        parts.append("<ol>")
        for j, query in enumerate(view.queries):
            color = QUERY_COLORS[j % len(QUERY_COLORS)]
            parts.append(f'<li class="query"><span class="swatch" style="background:{color}"></span>{_e(query)}</li>')
        parts.append("</ol>")
    if view.query_reply is not None:
        parts.append(f"<details><summary>The MLLM's reply</summary><pre>{_e(view.query_reply)}</pre></details>")
    parts.append("</section>")
    return parts


def _frames_section(view: Explanation, section_id: str, title: str, *, chosen: bool) -> list[str]:
    parts = [f'<section id="{section_id}"><h2>{_e(title)}</h2>']
    if view.thumbnail_error:
        parts.append(f'<p class="note">Frames unavailable: {_e(view.thumbnail_error)}</p>')
    parts.append('<div class="frames">')
    times = view.chosen_timestamps if chosen else view.preview_timestamps
    scores = view.chosen_similarity() if chosen else [None] * len(times)
    for n, (t, score) in enumerate(zip(times, scores, strict=True)):
        frame = (view.thumbnails or {}).get(t)
        image = f'<img alt="frame at {format_time(t)}" src="{_jpeg_data_uri(frame)}">' if frame is not None else ""
        caption = f"#{n + 1} · {format_time(t)}"
        if score is not None:
            best, query = score
            caption += f" · sim {best:.3f} (q{query + 1})"
        if chosen and view.probabilities is not None:
            caption += f" · p {view.probabilities[view.chosen_indices[n]]:.3g}"
        kind = "chosen" if chosen else "preview"
        parts.append(
            f'<figure class="frame {kind}" data-time="{t:.3f}">{image}<figcaption>{_e(caption)}</figcaption></figure>'
        )
    parts.append("</div></section>")
    return parts


def _table_section(section_id: str, title: str, rows: Mapping[str, object]) -> list[str]:
    if not rows:
        return []
    body = "".join(f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in rows.items())
    return [f'<section id="{section_id}"><h2>{_e(title)}</h2><table>{body}</table></section>']
