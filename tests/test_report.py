"""The run folder's report: every documented file, report.html in a real headless browser,
scaling.png's series, and `noisesearch report` rebuilding the same page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from noisesearch.cli import build_app
from noisesearch.report import CSP, nfe_axis, running_best, scaling_series, write_report
from noisesearch.runs import list_runs

RUN_FILES = {"run.json", "candidates.jsonl", "baseline.png", "best.png", "best_noise.safetensors",
             "grid.png", "scaling.png", "report.html", "top"}


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    result = invoke("run", "--model", "digits", "-o", str(out), "-q", "--label", "3", "--candidates", "8",
                    "--top-k", "6")
    assert result.exit_code == 0, result.output
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy


def chromium() -> str:
    """Debian's chromium; in CI (``CI`` set) a missing browser fails the test."""
    path = os.environ.get("NOISESEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser"
    )
    if path:
        return path
    message = ("Chromium is not installed, so report.html cannot be checked in a real browser. "
               "Install it: apt-get install -y --no-install-recommends chromium (see .ci/run).")
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


#: Appended to a copy of the page: records, in the DOM, each image's decoded width.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-broken",
    images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt).join("|"));
  document.body.setAttribute("data-pixelated-shown",
    images.filter(i => i.classList.contains("pixelated")).map(i => i.width).join(","));
  document.body.setAttribute("data-checked", "yes");
});
</script>"""


def test_a_run_writes_every_documented_file(run_dir: Path) -> None:
    assert {p.name for p in run_dir.iterdir()} >= RUN_FILES
    run = json.loads((run_dir / "run.json").read_text())
    assert [entry["image"] for entry in run["top"]] == [f"top/{i:02d}.png" for i in range(1, 7)]
    assert all((run_dir / entry["image"]).is_file() for entry in run["top"])
    assert set(run["timings"]) >= {"model", "verifiers", "search_total"}
    assert run["environment"]["packages"]["torch"]
    lines = [json.loads(line) for line in (run_dir / "candidates.jsonl").read_text().splitlines()]
    assert all(line["nfe_spent"] >= line["nfe"] for line in lines)
    assert lines[-1]["nfe_spent"] == run["usage"]["nfe"]


def test_report_renders_in_headless_chromium_with_every_image(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    browser = chromium()
    page = (run_dir / "report.html").read_text()
    assert CSP in page
    # The check needs a script; the page's policy allows none, so the copy allows inline ones.
    checked = page.replace(CSP, CSP + "; script-src 'unsafe-inline'").replace(
        "</body>", CHECK_SCRIPT + "</body>"
    )
    probe = tmp_path / "probe.html"
    probe.write_text(checked)
    dom = headless(browser, tmp_path / "profile-a", "--virtual-time-budget=5000", "--dump-dom",
                   probe.as_uri())
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body and 'data-checked="yes"' in body.group(1), dom.stderr[-2000:]
    attributes = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    # baseline + best + 6 top candidates + the scaling plot
    assert attributes["data-images"] == "9"
    assert attributes["data-broken"] == ""
    assert all(int(width) >= 128 for width in attributes["data-pixelated-shown"].split(","))

    shot = tmp_path / "shot.png"
    result = headless(browser, tmp_path / "profile-b", f"--screenshot={shot}", "--window-size=1200,1600",
                      (run_dir / "report.html").as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 1600)
        assert max(ImageStat.Stat(image.convert("RGB")).var) > 0


def test_report_is_one_self_contained_page(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in page and "https://" not in page
    assert "image-rendering: pixelated" in page
    baseline = re.search(r'<figure class="baseline"><img [^>]*>', page).group(0)
    assert 'class="pixelated"' in baseline and 'width="256"' in baseline
    for heading in ("First candidate and best", "Top candidates", "Best score against compute",
                    "Configuration", "judge says"):
        assert heading in page


def test_report_command_rebuilds_the_same_page(run_dir: Path) -> None:
    written = {name: (run_dir / name).read_bytes() for name in ("report.html", "scaling.png")}
    for name in written:
        (run_dir / name).unlink()
    result = invoke("report", str(run_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run_dir / "report.html")
    assert {name: (run_dir / name).read_bytes() for name in written} == written


def test_text_from_run_json_is_escaped_and_never_runs(run_dir: Path, tmp_path: Path) -> None:
    copy = copy_run(run_dir, tmp_path)
    run = json.loads((copy / "run.json").read_text())
    hostile = '<script>alert("x")</script> costs $5 and $x^2$'
    run["condition"] = {"prompt": hostile}
    run["config"].update(prompt=hostile, label=None)
    (copy / "run.json").write_text(json.dumps(run))
    page = write_report(copy).read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_embeds_no_file_from_outside_the_run_folder(run_dir: Path, tmp_path: Path) -> None:
    copy = copy_run(run_dir, tmp_path)
    outside = tmp_path / "secret.png"
    shutil.copy(copy / "best.png", outside)
    run = json.loads((copy / "run.json").read_text())
    run["top"][0]["image"] = "../secret.png"
    (copy / "run.json").write_text(json.dumps(run))
    page = write_report(copy).read_text()
    assert page.count("<img ") == 8 and "image missing" in page


def test_an_interrupted_run_still_gets_a_report_and_a_listing(run_dir: Path, tmp_path: Path) -> None:
    copy = copy_run(run_dir, tmp_path)
    (copy / "run.json").unlink()
    with (copy / "candidates.jsonl").open("a") as handle:
        handle.write('{"index": 8, "recipe": {"ki')  # killed mid-line
    page = write_report(copy).read_text()
    assert "Run interrupted; resume with `noisesearch run --resume" in page
    (listed,) = list_runs(tmp_path)
    assert listed["complete"] is False and listed["candidates"] == 8
    assert listed["best"] == max(json.loads(line)["objective"] for line in
                                 (run_dir / "candidates.jsonl").read_text().splitlines())


def test_a_batch_scored_at_once_is_spread_over_its_candidates() -> None:
    first, second = {"nfe": 20, "nfe_spent": 60, "scores": {}}, {"nfe": 20, "nfe_spent": 100, "scores": {}}
    rows = [first] * 3 + [second] * 2
    assert nfe_axis(rows) == [20, 40, 60, 80, 100]
    assert nfe_axis([{"nfe": 5, "scores": {}}] * 3) == [5, 10, 15]


def test_scaling_lines_are_running_bests_per_verifier_and_the_judge_of_the_searched_best() -> None:
    scores = [{"a": 1.0, "b": 5.0, "judge": 0.1}, {"a": 3.0, "b": 1.0, "judge": -2.0},
              {"a": 2.0, "b": 9.0, "judge": 4.0}]
    rows = [{"nfe": 10, "nfe_spent": 10 * (i + 1), "scores": s} for i, s in enumerate(scores)]
    series = {label: y for label, _, y, _ in scaling_series(rows, ["a", "b"], "judge")}
    assert series == {
        "a (searched on)": [1.0, 3.0, 3.0],
        "b": [5.0, 5.0, 9.0],
        "judge (evaluator)": [0.1, 0.1, 4.0],
        "judge of the searched best": [0.1, -2.0, -2.0],
    }
    assert running_best([None, float("nan"), 2.0, 1.0]) == [None, None, 2.0, 2.0]
