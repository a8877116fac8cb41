"""The explain view: HTML and PNG checked for their content (queries, timestamps, chosen markers), built from real
answers (tiny CLIP, a scripted chat server choosing the MLLM's replies) and from ``msjoe select``."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import msjoe.explain
from _chat_server import ScriptedServer, completion, status
from msjoe.cache import FeatureCache
from msjoe.cli import app
from msjoe.explain import CHOSEN_COLOR, Explanation, check_explain_path
from msjoe.features import DualEncoder
from msjoe.mllm import load_mllm
from msjoe.pipeline import PipelineConfig, VideoQA
from msjoe.samplers import available_samplers, get_sampler
from msjoe.samplers.bolt import bolt_probabilities
from msjoe.synthetic_video import Event, event_color, write_video
from msjoe.video import format_time

runner = CliRunner()
QUERIES = ["a red screen", "a white <square> & $x$"]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 s at 4 fps, 96x64: 20 one-second candidates, a red event at 6-9 s."""
    folder = tmp_path_factory.mktemp("explain-video")
    return write_video(
        folder / "v.mp4", duration=20.0, fps=4.0, size=(96, 64), events=[Event(6.0, 9.0, event_color(0))]
    )


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir: Path) -> DualEncoder:
    return DualEncoder.from_pretrained(str(tiny_clip_dir))


def ask(server: ScriptedServer, encoder: DualEncoder, video: Path, cache: Path, **config: object):
    server.script.extend(
        [status(200, completion("<queries>" + json.dumps(QUERIES) + "</queries>")), status(200, completion("B"))]
    )
    qa = VideoQA(
        encoder, load_mllm(server.url, model="m", max_retries=0), FeatureCache(cache), PipelineConfig(**config)
    )
    return qa.ask(video, "What colour is it? <script>alert(1)</script>", ["red", "green", "blue"])


class Page(HTMLParser):
    """The parts of an explain page a reader relies on: element ids, classes, attributes, text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes))
        if "id" in attributes:
            self.ids.add(attributes["id"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [
            a for t, a in self.elements if t == tag and (css_class is None or css_class in a.get("class", "").split())
        ]


def test_answer_explain_html_shows_everything_and_loads_nothing(
    server: ScriptedServer, encoder: DualEncoder, video: Path, tmp_path: Path
) -> None:
    answer = ask(server, encoder, video, tmp_path / "cache", k=4, sampler="bolt")
    path = tmp_path / "why.html"
    answer.explain(path)
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    words = "".join(page.text)

    # Question, options, reply and the parsed letter; user text is escaped, never markup.
    assert "What colour is it? <script>alert(1)</script>" in words and "<script" not in text.lower()
    assert [a.get("class", "") for a in page.all("li")][:3] == ["", "picked", ""]
    assert "letter" in page.ids and "B" in words
    # The queries the MLLM wrote (also inside the SVG, as text), not the question fallback.
    assert [q for q in QUERIES if q in words] == QUERIES and "fallback" not in page.ids
    # The timeline: one curve per query, one marker per key frame, the preview frames, the sampler's probabilities.
    assert {"timeline", "query-0", "query-1", "preview", "probabilities"} <= page.ids
    assert {f"chosen-{n}" for n in range(4)} <= page.ids and "chosen-4" not in page.ids
    # Key frames with their timestamps and a picture each; K/2 previews.
    chosen = page.all("figure", "chosen")
    assert [float(f["data-time"]) for f in chosen] == pytest.approx(answer.chosen_timestamps)
    assert all(format_time(t) in words for t in answer.chosen_timestamps)
    assert len(page.all("figure", "preview")) == 2
    images = page.all("img")
    assert len(images) == 6 and all(img["src"].startswith("data:image/jpeg;base64,") for img in images)
    # Timings and settings.
    assert "query_reasoning" in words and "answer" in words and "bolt" in words and encoder.model_id in words
    # Self-contained: a CSP forbidding requests, and nothing that would make one.
    csp = [m for m in page.all("meta") if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert not page.all("script") and not page.all("link")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert not re.search(r"url\((?!#)", text)  # only references inside the page (SVG clip paths)


def test_explain_png_draws_the_markers_where_the_frames_are(video: Path, tmp_path: Path) -> None:
    times = np.arange(20.0) + 0.5
    sim = np.stack([np.sin(times / 3), np.cos(times / 5)])
    chosen = [2, 7, 8, 15]
    view = Explanation(
        times, chosen, video=str(video), queries=["q one", "q two"], similarity=sim,
        probabilities=np.full(20, 0.05), preview_timestamps=[4.5, 14.5], question="Why?",
    )  # fmt: skip
    data = view.to_png()
    image = Image.open(BytesIO(data))
    described = json.loads(image.text["Description"])
    assert described["queries"] == ["q one", "q two"] and described["chosen_timestamps"] == [2.5, 7.5, 8.5, 15.5]
    assert described["preview_timestamps"] == [4.5, 14.5]

    # The same figure, laid out the same way, tells where each marker must be in the PNG's pixels.
    with msjoe.explain._rc():
        figure = view.figure(frames=True)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(figure).draw()
    assert image.size == (round(figure.bbox.width), round(figure.bbox.height))
    pixels = np.asarray(image.convert("RGB")).astype(int)
    red = np.array([int(CHOSEN_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    timeline = figure.axes[0]
    top, bottom = (image.size[1] - timeline.bbox.y1, image.size[1] - timeline.bbox.y0)

    def red_rows(x: float) -> int:
        column = pixels[int(top) + 2 : int(bottom) - 2, round(x) - 1 : round(x) + 2]
        return int((np.abs(column - red).sum(axis=-1) < 120).any(axis=1).sum())

    for t in view.chosen_timestamps:
        x = timeline.transData.transform((t, 0))[0]
        assert red_rows(x) > 0.8 * (bottom - top - 4), f"no key-frame marker at {t} s"
    x_empty = timeline.transData.transform((12.0, 0))[0]  # no key frame within 3 s of here
    assert red_rows(x_empty) == 0
    # The frame strip: one titled picture per key frame, the event's red in the frame at 7.5 s.
    strip = figure.axes[-4:]
    assert [a.get_title() for a in strip] == [
        f"#{n + 1}  {format_time(t)}" for n, t in enumerate(view.chosen_timestamps)
    ]
    x0, y0, x1, y1 = strip[1].bbox.extents
    cell = pixels[image.size[1] - int(y1) + 2 : image.size[1] - int(y0) - 2, int(x0) + 2 : int(x1) - 2]
    assert (np.abs(cell - np.array(event_color(0))).sum(axis=-1) < 60).mean() > 0.3


def test_explain_without_queries_or_video(tmp_path: Path) -> None:
    view = Explanation(np.arange(10.0), [0, 5, 9], video=str(tmp_path / "gone.mp4"), settings={"sampler": "uniform"})
    page = Page(view.to_html())
    words = "".join(page.text)
    assert "this sampler uses no queries" in words and "has no probabilities" in words
    assert "Frames unavailable" in words and "gone.mp4" in words
    assert {"chosen-0", "chosen-1", "chosen-2"} <= page.ids and not page.all("img")
    assert Image.open(BytesIO(view.to_png())).size[0] > 0


def test_explain_rejects_inconsistent_data_and_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the 3 candidates"):
        Explanation(np.arange(3.0), [3])
    with pytest.raises(ValueError, match=r"expected \(1 queries, 3 candidates\)"):
        Explanation(np.arange(3.0), [0], queries=["a"], similarity=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"must end in \.html or \.png"):
        check_explain_path(tmp_path / "view.pdf")


@pytest.mark.parametrize("name", available_samplers())
def test_sampler_probabilities_are_what_it_selects_from(name: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 50, generator=generator) * 0.4
    sampler = get_sampler(name, seed=1) if name == "usampler" else get_sampler(name)
    probs = sampler.probabilities(sim)
    if name in ("uniform", "topk", "topk-z", "aks", "binmax", "binmax-z", "nms-z"):  # deterministic: no distribution
        assert probs is None
        return
    assert probs.shape == (50,) and float(probs.sum()) == pytest.approx(1.0, abs=1e-5) and (probs >= 0).all()
    if name == "bolt":
        assert torch.equal(probs, bolt_probabilities(sim.max(dim=0).values, sampler.alpha))
    elif name == "qframe":
        expected = torch.softmax(sim.max(dim=0).values.double() * sampler.logit_scale / sampler.tau, dim=0)
        assert torch.allclose(probs, expected)
    else:
        assert torch.allclose(probs, torch.softmax(sampler.logits(sim), dim=-1).detach())


def test_cli_ask_and_select_write_explain_views(
    server: ScriptedServer, tiny_clip_dir: Path, video: Path, tmp_path: Path
) -> None:
    server.script.extend([status(200, completion('<queries>["a red screen"]</queries>')), status(200, completion("A"))])
    result = runner.invoke(app, [
        "ask", str(video), "Which colour?", "-o", "red", "-o", "blue", "-k", "3", "--mllm", server.url, "--model", "m",
        "--clip", str(tiny_clip_dir), "--cache-dir", str(tmp_path), "--explain", str(tmp_path / "ask.png"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    described = json.loads(Image.open(tmp_path / "ask.png").text["Description"])
    assert described["queries"] == ["a red screen"] and len(described["chosen_timestamps"]) == 3

    result = runner.invoke(app, [
        "select", str(video), "-q", "a red screen", "-k", "3", "--sampler", "topk", "--clip", str(tiny_clip_dir),
        "--cache-dir", str(tmp_path), "--explain", str(tmp_path / "select.html"), "--json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    chosen = json.loads(result.stdout)["timestamps"]
    page = Page((tmp_path / "select.html").read_text(encoding="utf-8"))
    assert [float(f["data-time"]) for f in page.all("figure", "chosen")] == pytest.approx(chosen)
    assert {"chosen-0", "chosen-2", "query-0"} <= page.ids and "question" not in page.ids


def test_cli_refuses_an_unknown_explain_format_before_loading_models(video: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, [
        "ask", str(video), "Which?", "--mllm", "/nonexistent/model", "--explain", str(tmp_path / "view.pdf"),
    ])  # fmt: skip
    assert result.exit_code == 1 and "must end in .html or .png" in result.output
