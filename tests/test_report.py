"""The HTML report of the tiny run: one item per figure, categories in natural order, a first page
that describes the run and links every figure, and (in headless Chromium, where installed) the
rendered menu and a figure one click from the first page."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from conftest import snakemake
from seelike import config as sc
from seelike import paths, registry

pytestmark = pytest.mark.slow


def script_var(html: str, name: str):
    """The JSON value of `var <name> = ...;` in one of the report's <script> blocks."""
    m = re.search(rf"<script[^>]*>\s*var {name} = (.*?);\s*</script>", html, re.S)
    assert m, f"the report has no `var {name}`"
    return json.loads(m.group(1))


class Links(HTMLParser):
    """The first page's links: (href, text)."""

    def __init__(self):
        super().__init__()
        self.links, self._href = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href", ""), ""

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text.strip()))
            self._href = None


def shown_figure(href: str) -> dict:
    """What a first-page link shows: the setView call's category, result and content kind."""
    fields = dict(re.findall(r"(\w+):'([^']*)'", unquote(href)))
    assert href.startswith("javascript:app.setView(") and "contentPath:results[" in unquote(href), href
    return fields


@pytest.fixture(scope="module")
def report(tiny_local_run, tmp_path_factory):
    run, cfgfile = tiny_local_run
    out = tmp_path_factory.mktemp("report") / "report.html"
    snakemake(run, cfgfile, "--nolock", "--report", str(out))
    html = out.read_text()
    raw = yaml.safe_load(cfgfile.read_text())
    return {"path": out, "run": run, "raw": raw, "cfg": sc.load(raw, check_timm=False), "html": html, "desc": script_var(html, "workflow_desc"),
            "results": script_var(html, "results"), "categories": script_var(html, "categories")}


def table_categories(report) -> set:
    """The categories of the report's tables (the findings, when the run has them)."""
    return {cat for cat, subcats in report["categories"].items() for paths in subcats.values() for p in paths
            if report["results"][p]["mime_type"] == "text/csv"}


def figure_categories(report) -> dict:
    """Figure id -> its category, for every figure of the run."""
    wanted = {Path(p).parent.name for p in registry.final_figures(report["cfg"])}
    return {f.id: f.category for f, _ in registry.figures() if f.id in wanted}


def test_one_item_per_figure_labelled_by_model(report):
    cfg, results, categories = report["cfg"], report["results"], report["categories"]
    pngs = {p for p in registry.final_figures(cfg) if p.endswith(".png")}
    assert len(pngs) * len(cfg["figures"]["formats"]) == len(registry.final_figures(cfg)) and len(pngs) > 1
    images = {p for p, r in results.items() if r["mime_type"].startswith("image/")}
    assert images == pngs and not any(p.endswith(".pdf") for p in results)
    for fid, cat in figure_categories(report).items():
        # no subcategory per model: one click on the category lists the models
        assert list(categories[cat]) == ["Other"], cat
        paths = categories[cat]["Other"]
        assert {Path(p).parent.name for p in paths} == {fid}
        for p in paths:
            assert results[p]["labels"] == {"model": Path(p).stem.replace("__", " vs ")}
            assert results[p]["caption"].startswith("<p><strong>" + fid + ":"), results[p]["caption"][:80]


def test_categories_sort_as_text_in_natural_order(report):
    """Snakemake's menu sorts categories as text: that order is F1, F2, ..., F14, V1, ... with the
    findings (when the run has them) first."""
    cats, tables = figure_categories(report), table_categories(report)
    assert set(report["categories"]) == set(cats.values()) | tables
    by_text = sorted(report["categories"])
    assert by_text == sorted(tables) + [cats[i] for i in sorted(cats, key=registry.natural_key)]
    assert by_text[len(tables):][:2] == ["F01 within-model CKA", "F02 cross-model CKA"]
    assert "F14 MLP-Mixer CKA" in by_text


def test_first_page_describes_the_run_and_shows_the_findings(report):
    raw, desc = report["raw"], report["desc"]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", desc))
    assert "seelike: Do Vision Transformers See Like CNNs?" in text
    assert f"Run {raw['run_name']} of Raghu et al. (2021)" in text
    assert f"Dataset : {raw['analysis']['dataset']} , synthetic scenes, 10 classes, 16 px." in text
    # what the config leaves to the schema is named, not guessed
    assert f"Examples : {raw['analysis']['n_examples']} analysis examples from split the default of analysis.split" in text
    assert f"minibatch size: {raw['cka']['minibatch_size']}; HSIC estimator: the default of cka.estimator ." in text
    assert f"Models ({len(raw['models'])} entries of models: )" in text
    for model in raw["models"]:
        assert f" {model} : " in text, model
    findings = [p for p, r in report["results"].items() if r["mime_type"] == "text/csv"]
    for path in findings:
        # the table itself, not a link to it: its header and every row are on the page
        with open(report["run"] / path, newline="") as fh:
            rows = list(csv.reader(fh))
        assert "verdict" in rows[0]
        header = "\n".join(f'<th class="head">{h}</th>' for h in rows[0])
        assert header in desc
        for row in rows[1:]:
            assert f"<tr><td>{row[0]}</td>" in desc
    cfg = report["cfg"]
    if (report["run"] / paths.table(cfg, "summary", "findings", paths.dataset_key(cfg))).is_file():
        assert findings and table_categories(report) == {"Checked findings"}


def test_every_figure_is_one_click_from_the_first_page(report):
    parser = Links()
    parser.feed(report["desc"])
    shown = [shown_figure(href) | {"text": text} for href, text in parser.links if "setView" in href]
    images = {p for p, r in report["results"].items() if r["mime_type"].startswith("image/")}
    # below a table, its rows' figures (the findings'): each link named by the figure id it shows
    rows = [s for s in shown if re.fullmatch(r"[A-Z]\d+", s["text"])]
    shown = [s for s in shown if s not in rows]
    for s in rows:
        assert s["resultPath"] in images and Path(s["resultPath"]).parent.name == s["text"], s
    if table_categories(report):
        drawn = {Path(p).parent.name for p in images}
        wanted = {f for ids in registry.get("findings").report_rows.values() for f in ids.split() if f in drawn}
        assert {s["text"] for s in rows} == wanted and wanted
    assert sorted(s["resultPath"] for s in shown) == sorted(images)
    categories = report["categories"]
    for s in shown:
        assert s["resultPath"] in categories[s["category"]][s["subcategory"]]
        assert s["content"] == "img" and s["navbarMode"] == "resultinfo"
        assert s["text"] == report["results"][s["resultPath"]]["labels"]["model"]
    # the index lists the figures in natural order
    order = list(dict.fromkeys(Path(s["resultPath"]).parent.name for s in shown))
    assert order == sorted(order, key=registry.natural_key)


# ----------------------------------------------------------------------------- in a browser

def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def rendered_dom(page: Path) -> str:
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (chromium, chromium-browser or google-chrome): the report's "
                    "rendering is checked where one is installed, e.g. `apt-get install chromium`")
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def with_script(report, name: str, js: str) -> Path:
    """A copy of the report that runs `js` once the app has rendered."""
    html = report["html"]
    end = html.rindex("</body>")
    page = report["path"].with_name(name)
    page.write_text(html[:end] + f"<script>setTimeout(function () {{ {js} }}, 500);</script>" + html[end:])
    return page


def rendered_app(dom: str) -> str:
    """What the report's app rendered: the DOM from its root to the scripts after it (which hold the
    same names and captions as JSON)."""
    start = dom.index('<div id="app">')
    return dom[start:dom.index("<script", start)]


def test_rendered_first_page_menu_and_one_click(report):
    dom = rendered_app(rendered_dom(report["path"]))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "seelike: Do Vision Transformers See Like CNNs?" in text and "Figures" in text
    assert 'id="rulegraph"' in dom                       # the rule graph stays, below the first page
    cats = figure_categories(report)
    menu = [c for c in re.findall(r">([^<>]+)<", dom) if c in report["categories"]]
    menu = list(dict.fromkeys(menu))
    expected = sorted(table_categories(report)) + [cats[i] for i in sorted(cats, key=registry.natural_key)]
    assert menu == expected                              # the browser's sort of the menu, not Python's

    # a click on the first index link shows that figure and its caption
    page = with_script(report, "click.html", "document.querySelector('table.seelike-index a').click();")
    dom = rendered_app(rendered_dom(page))
    first = sorted(cats, key=registry.natural_key)[0]
    path = sorted(p for p in report["categories"][cats[first]]["Other"])[0]
    assert re.search(r'<img src="data:image/png;[^"]*filename=' + re.escape(Path(path).name), dom)
    assert path in dom and cats[first] in dom           # the breadcrumbs: category, then the file
    assert f"<strong>{first}:" in dom                    # the caption
