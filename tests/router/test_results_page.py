"""`router report --html`: the results page from a real store (SQLite) and a real rollout
state, checked as a file a person opens: self-contained (no script, nothing fetched), the
verdict and its reasons, the arms, the plots inline, the ramp history; and its effect over
time ends where the report's verdict stands."""

from __future__ import annotations

import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from router.cli import main
from router.config import find_experiment, load_config
from router.results.document import phase_report
from router.results.page import timeline
from router.results.store import Exposure, Outcome, ResultsStore
from router.rollout.controller import RolloutController
from router.rollout.sources import StoreSource
from router.rollout.store import FileStore
from tests.router.test_outcomes import _config
from tests.support.chromium import chromium_page

ROOT = Path(__file__).resolve().parents[2]

START = 1_765_000_000.0


def _phase(store: ResultsStore, users: int = 300) -> None:
    """Ten minutes of a faster candidate whose answers users accept less often."""
    rng = random.Random(5)
    rows, reports = [], []
    for u in range(users):
        for arm, latency, accepted in (("control", 100.0, 0.8), ("candidate", 80.0, 0.6)):
            for k in range(2):
                rid, at = f"{arm}-{u}-{k}", START + 600 * (u + rng.random()) / users
                client = {"x-client": ("web", "ios")[u % 2]}
                rows.append(Exposure(rid, "ab", "p1", arm, "a" if arm == "control" else "b",
                                     f"{arm}-{u}", at, latency + rng.gauss(0, 5), False, False,
                                     False, dimensions=client))  # fmt: skip
                reports.append(Outcome(rid, "accepted", float(rng.random() < accepted), at + 1))
    store.write(rows, reports)


class _Tags(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (self.open[-5:], tag)
        self.open.pop()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, ResultsStore]:
    cfg = _config("127.0.0.1:1", "127.0.0.1:2", auto_rollback=True, dimensions=["x-client"],
                  guardrails=[{"metric": "accepted", "max_absolute_increase": 0.05}],
                  success=[{"metric": "latency_ms", "max_relative_increase": 0.0}])  # fmt: skip
    cfg["rollout"] = {"state_file": "rollout.json"}
    cfg["results"] = {"url": "sqlite:///results.sqlite"}
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.sqlite'}")
    store.create()
    _phase(store)
    return path, store


async def test_the_page_is_self_contained_and_shows_the_decision(
    setup: tuple[Path, ResultsStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, store = setup
    controller = RolloutController(path, StoreSource(store), FileStore(tmp_path / "rollout.json"))
    await controller.evaluate()  # start, then roll back on the accepted guardrail
    out = tmp_path / "page.html"
    assert main(["report", "--config", str(path), "--experiment", "ab", "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    tags = _Tags()
    tags.feed(html)
    assert tags.open == []  # every element closed
    # Nothing runs and nothing is fetched: it reads the same offline, scripts off.
    assert "script" not in tags.seen and "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|url\(\s*['"]?https?:|@import""", html)
    assert html.count("<svg") == 2  # the forest plot and the effect over time
    assert "ROLL_BACK" in html and "guardrail accepted: candidate is worse" in html
    assert "<td>control</td><td>300</td><td>600</td>" in html
    assert "<td>candidate</td><td>300</td><td>600</td>" in html
    assert "sample-ratio check p = 1" in html and 'class="warn"' not in html
    assert "<td>start</td>" in html and "<td>rollback</td>" in html  # the ramp history
    assert "<h2>Segments by x-client</h2>" in html and "<td>ios</td>" in html
    store.close()


async def test_the_page_renders_in_chromium_as_the_report_says(
    setup: tuple[Path, ResultsStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Opened in a real headless Chromium: nothing on the console, both plots laid out at a
    readable size, and the text a person reads is `router report --json`'s."""
    path, store = setup
    controller = RolloutController(path, StoreSource(store), FileStore(tmp_path / "rollout.json"))
    await controller.evaluate()
    page_file = tmp_path / "page.html"
    common = ["report", "--config", str(path), "--experiment", "ab"]
    assert main([*common, "--html", str(page_file)]) == 0
    assert main([*common, "--json"]) == 0
    said = capsys.readouterr().out
    report = json.loads(said.split("\n", 1)[1])  # after "wrote PAGE"
    with chromium_page(tmp_path / "profile") as page:
        page.open(page_file)
        plots = page.evaluate(
            "[...document.querySelectorAll('svg')].map(s => {"
            "const r = s.getBoundingClientRect(); return [r.width, r.height]; })"
        )
        text = page.evaluate("document.body.innerText")
        page.screenshot(ROOT / "out" / "results-page.png")
        errors = page.errors()
    assert errors == []
    assert len(plots) == 2 and all(w >= 400 and h >= 150 for w, h in plots), plots
    assert report["verdict"] in text and all(reason in text for reason in report["reasons"])
    for arm, n in report["counts"].items():
        assert re.search(rf"{arm}\s+{report['units'][arm]}\s+{n}\b", text), arm
    for c in report["comparisons"]:
        assert f"{c['difference']:.4g}" in text, c["metric"]
    assert "Segments by x-client" in text
    store.close()


def test_the_effect_over_time_ends_at_the_report(setup: tuple[Path, ResultsStore]) -> None:
    path, store = setup
    config = load_config(path)
    settings = find_experiment(config.routes, "ab")
    assert settings is not None
    report = phase_report(config, store, "ab", None)
    points = timeline(store, settings, "p1", ["accepted"], {"accepted": True})
    times = sorted({p.at for p in points})
    assert len(times) == 12 and times[-1] <= START + 600
    for c in report["comparisons"]:
        (last,) = [p for p in points if p.at == times[-1] and (p.arm, p.metric) ==
                   (c["arm"], c["metric"])]  # fmt: skip
        # The rollup the report reads and the events the timeline reads agree at the end.
        assert last.difference == pytest.approx(c["difference"], rel=1e-9)
        assert last.cs == pytest.approx(tuple(c["confidence_sequence"]), rel=1e-9)
    (first,) = [p for p in points if p.at == times[0] and p.metric == "accepted"]
    assert first.cs[1] - first.cs[0] > last.cs[1] - last.cs[0]  # the band narrows with users
    store.close()


def test_the_page_needs_the_configuration(
    setup: tuple[Path, ResultsStore], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = setup
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"
    code = main(["report", "--results", url, "--experiment", "ab", "--html", "x.html"])
    assert code == 2 and "--html needs --config" in capsys.readouterr().err
    path = tmp_path / "router.yaml"
    nowhere = str(tmp_path / "no-such-dir" / "page.html")
    code = main(["report", "--config", str(path), "--experiment", "ab", "--html", nowhere])
    err = capsys.readouterr().err
    assert code == 2 and "No such file or directory" in err and "Traceback" not in err
    store.close()
