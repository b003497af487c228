"""The HTML dashboard: self-contained, the right numbers in the charts, flags, and a real browser.

The browser test opens the page from disk in headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `.ci/run`) and saves screenshots under
`build/test-artifacts/`.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rundirs import pattern, write_run

from evalharness.cli import main
from evalharness.compare import load_runs
from evalharness.dashboard import PALETTE, build_dashboard, render_dashboard
from evalharness.results import wilson_interval

T, F = True, False
ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"

# Task 0: A 3/10, B 7/10 (not significant, p = 0.21875). Task 1: equal. Task 2: A 0/10,
# B 10/10 (p = 0.00195, significant).
OUTCOMES_A = {0: [T, T, T, F, F, F, F, F, F, F], 1: pattern(5, 10), 2: pattern(0, 10)}
OUTCOMES_B = {0: [T, T, F, T, T, T, T, T, F, F], 1: pattern(5, 10), 2: pattern(10, 10)}


def task_chart(page: str) -> ET.Element:
    match = re.search(r'<svg class="chart task-chart".*?</svg>', page, re.S)
    assert match, "no per-task chart"
    return ET.fromstring(match.group(0))


def rows_by_task(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        g.get("data-task", "all"): g
        for g in svg.iter("g")
        if g.get("class", "").startswith("task-row")
    }


@pytest.fixture
def pair(tmp_path):
    a = write_run(tmp_path / "runs" / "base", OUTCOMES_A, videos=[(0, 0), (2, 1)])
    b = write_run(tmp_path / "runs" / "ft", OUTCOMES_B, meta={"policy": "octo_jax:/ckpt"})
    return a, b


def test_page_is_self_contained_and_has_every_section(pair, tmp_path):
    out = build_dashboard(pair, tmp_path / "report.html")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "loads something remote"
    assert "<script src" not in page and 'rel="stylesheet"' not in page
    for section in ("summary", "tasks", "paired", "lengths", "finetune", "config", "episodes"):
        assert f'<section id="{section}">' in page


def test_task_bars_and_whiskers_are_the_wilson_numbers(pair):
    runs = load_runs(pair)
    svg = task_chart(render_dashboard(runs))
    rows = rows_by_task(svg)
    assert set(rows) == {"0", "1", "2", "all"}
    # Each task row is labelled by its instruction, not only its id.
    assert rows["0"].find("title").text.startswith("pick up the black bowl between the plate")
    bars = rows["0"].findall("rect[@class='bar']")
    assert [b.get("data-run") for b in bars] == ["base", "ft"]
    assert [float(b.get("data-rate")) for b in bars] == [0.3, 0.7]
    assert [b.get("fill") for b in bars] == [PALETTE[0], PALETTE[1]]
    # Bars start at x = 420 and 100 % is 340 px wide; whiskers span Wilson(7, 10).
    whisker = [w for w in rows["0"].findall("line[@class='whisker']") if w.get("data-run") == "ft"]
    low, high = wilson_interval(7, 10)
    assert (low, high) == pytest.approx((0.3967781, 0.8922087), abs=1e-7)
    assert float(whisker[0].get("x1")) == pytest.approx(420 + 340 * low, abs=0.01)
    assert float(whisker[0].get("x2")) == pytest.approx(420 + 340 * high, abs=0.01)


def test_difference_markers_show_sign_and_significance_in_the_winners_colour(pair):
    svg = task_chart(render_dashboard(load_runs(pair)))
    rows = rows_by_task(svg)
    marks = {task: row.find("g[@class='diff']") for task, row in rows.items()}
    assert float(marks["0"].get("data-difference")) == pytest.approx(0.4)
    assert marks["0"].get("data-significant") == "false"  # p = 0.219: hollow
    assert marks["0"].find("circle").get("fill") == "#ffffff"
    assert marks["0"].find("circle").get("stroke") == PALETTE[1]
    assert marks["2"].get("data-significant") == "true"  # p = 0.00195: filled
    assert marks["2"].find("circle").get("fill") == PALETTE[1]
    # A significant win tints the row in the winner's colour; a tie does not.
    assert rows["2"].find("rect[@class='win-tint']").get("data-winner") == "ft"
    assert rows["1"].find("rect[@class='win-tint']") is None
    assert rows["0"].find("rect[@class='win-tint']") is None


def test_paired_table_on_the_page(pair):
    page = render_dashboard(load_runs(pair))
    assert "<td><b>+40.0</b></td><td>[-3.9, +67.8]</td><td>0.219</td>" in page
    assert "<td><b>+100.0</b></td><td>[+60.8, +100.0]</td><td>0.00195</td>" in page
    assert "ft better (n.s.)" in page and "ft better</span>" in page


def test_version_mismatch_is_flagged_red_only_when_present(tmp_path, pair):
    page = render_dashboard(load_runs(pair))
    assert 'id="mismatch-banner"' not in page and "not comparable</span>" not in page
    b = write_run(tmp_path / "new_mujoco", OUTCOMES_B, meta={"versions": {"mujoco": "3.4.0"}})
    page = render_dashboard(load_runs([pair[0], b]))
    assert 'id="mismatch-banner"' in page
    assert "versions.mujoco: base=3.3.2, new_mujoco=3.4.0" in page
    assert re.search(r'<tr class="critical" data-key="versions.mujoco">', page)
    assert '<tr class="diff" data-key="policy">' not in page  # same policy here


def test_paired_episodes_that_saw_different_scenes_are_named_in_the_banner(tmp_path):
    scenes = {(0, e): f"00{e:02d}aa00bb11" for e in range(3)}
    a = write_run(tmp_path / "exact", {0: pattern(1, 3)}, fingerprints=scenes)
    b = write_run(
        tmp_path / "former",
        {0: pattern(2, 3)},
        fingerprints=scenes | {(0, 2): "5c3e0a9b17d2"},
    )
    page = render_dashboard(load_runs([a, b]))
    assert 'id="mismatch-banner"' in page
    assert (
        '<li class="scene-mismatch">1 of 3 paired episodes of exact and former saw different '
        "scenes (scene fingerprints differ): libero_spatial task 0 episode 2; " in page
    )


def test_video_links_exist_only_for_videos_on_disk_and_are_relative(pair, tmp_path):
    page = render_dashboard(load_runs(pair), tmp_path)
    links = re.findall(r'<a href="([^"]+)">video</a>', page)
    assert links == [
        "runs/base/videos/libero_spatial/task00_ep000_success_pick_up_the_black_bowl_between_the_"
        "plate_and_the_ramekin_and_place_it_on_the_plate.mp4",
        "runs/base/videos/libero_spatial/task02_ep001_failure_pick_up_the_black_bowl_from_table_"
        "center_and_place_it_on_the_plate.mp4",
    ]
    assert all((tmp_path / link).is_file() for link in links)


def test_loss_curve_appears_when_a_train_log_is_present(pair):
    page = render_dashboard(load_runs(pair))
    assert "No run has a finetune log" in page and "loss-line" not in page
    (pair[1] / "train_log.csv").write_text(
        "step,loss,learning_rate,grad_norm\n0,2.0,1e-4,1.0\n100,1.0,1e-4,0.8\n200,0.5,1e-4,0.5\n"
    )
    page = render_dashboard(load_runs(pair))
    lines = re.findall(r'<polyline class="loss-line" data-run="([^"]+)" points="([^"]+)"', page)
    assert [(run, len(points.split())) for run, points in lines] == [("ft", 3)]


def test_one_run_renders_without_a_comparison(pair):
    page = render_dashboard(load_runs(pair[:1]))
    assert "Give two or more run directories" in page
    assert len(rows_by_task(task_chart(page))) == 4


def test_cli_dashboard_writes_the_page_and_warns_on_mismatch(tmp_path, pair, capsys):
    b = write_run(tmp_path / "libero_protocol", OUTCOMES_B, meta={"protocol": {"name": "libero"}})
    out = tmp_path / "out" / "report.html"
    assert main(["dashboard", str(pair[0]), str(b), "--out", str(out), "--labels", "A,B"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out
    assert "protocol.name: A=openvla, B=libero" in captured.err
    assert 'id="mismatch-banner"' in out.read_text()
    assert main(["dashboard", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope: not a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _ten_task_pair(root: Path) -> tuple[Path, Path]:
    """Two runs of 10 tasks x 20 episodes; B wins some tasks, loses some, ties others; B
    ran on another MuJoCo (the deliberate mismatch) and has a finetune log."""
    rates_a = [0.9, 0.6, 0.8, 0.3, 0.5, 0.7, 0.2, 0.95, 0.5, 0.4]
    rates_b = [0.95, 0.9, 0.8, 0.75, 0.2, 0.7, 0.55, 1.0, 0.5, 0.3]
    rng = random.Random(0)
    out_a, out_b = {}, {}
    for task in range(10):
        draws = [rng.random() for _ in range(20)]  # shared draws: the runs are paired
        out_a[task] = [u < rates_a[task] for u in draws]
        out_b[task] = [u < rates_b[task] for u in draws]
    videos = [(task, 0) for task in range(10)]
    a = write_run(root / "octo_base", out_a, meta={"policy": "octo_jax:base"}, videos=videos)
    b = write_run(
        root / "octo_finetuned",
        out_b,
        meta={"policy": "octo_jax:finetuned", "versions": {"mujoco": "3.4.0"}},
        videos=videos,
    )
    lines = ["step,loss,learning_rate,grad_norm"]
    lines += [f"{s},{2.5 * math.exp(-s / 400) + 0.3:.4f},3e-4,1.0" for s in range(0, 2001, 50)]
    (b / "train_log.csv").write_text("\n".join(lines) + "\n")
    return a, b


def _open_in_chromium(page: Path, tmp_path: Path):
    """A headless Chromium showing ``page``, checked to have loaded without errors (the test
    is skipped where Chromium is not installed); the caller quits it."""
    found = _chromium()
    if found is None:
        pytest.skip(
            "Chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        # Uncaught errors, recorded from before the page's own script runs.
        driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__errors=[];window.addEventListener('error',"
                "function(e){window.__errors.push(String(e.message));});"
            },
        )
        driver.get(page.resolve().as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        assert driver.execute_script("return window.__errors") == []
    except BaseException:
        driver.quit()
        raise
    return driver


@pytest.mark.browser
def test_dashboard_renders_in_headless_chromium(tmp_path):
    a, b = _ten_task_pair(tmp_path / "runs")
    page = build_dashboard([a, b], tmp_path / "report.html")
    driver = _open_in_chromium(page, tmp_path)
    try:
        # Every task has a rendered row: two bars with area where the rate is > 0, two
        # whiskers, and a difference marker.
        rendered = driver.execute_script(
            """
            const out = {};
            document.querySelectorAll('svg.task-chart g.task-row[data-task]').forEach(g => {
              const bars = [...g.querySelectorAll('rect.bar')];
              out[g.dataset.task] = {
                bars: bars.length,
                drawn: bars.filter(b => b.getBoundingClientRect().width > 0
                                        || Number(b.dataset.rate) === 0).length,
                whiskers: [...g.querySelectorAll('line.whisker')]
                            .filter(l => l.getBoundingClientRect().width > 0).length,
                markers: [...g.querySelectorAll('g.diff circle')]
                            .filter(c => c.getBoundingClientRect().width > 0).length,
              };
            });
            return out;
            """
        )
        assert sorted(rendered, key=int) == [str(t) for t in range(10)]
        for task, counts in rendered.items():
            assert counts == {"bars": 2, "drawn": 2, "whiskers": 2, "markers": 1}, task
        assert driver.execute_script("return document.querySelectorAll('svg.chart').length") == 3

        # The deliberate MuJoCo mismatch is flagged, visibly and in red.
        flag = driver.execute_script(
            """
            const el = document.getElementById('mismatch-banner');
            if (!el) return null;
            const r = el.getBoundingClientRect();
            return {text: el.innerText, color: getComputedStyle(el).color,
                    visible: r.width > 0 && r.height > 0};
            """
        )
        assert flag is not None and flag["visible"]
        assert "versions.mujoco: octo_base=3.3.2, octo_finetuned=3.4.0" in flag["text"]
        red, green, blue = (int(v) for v in re.findall(r"\d+", flag["color"])[:3])
        assert red >= 150 and green < 60 and blue < 60, flag["color"]

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # The top of the page: the flag, the suite table and the per-task chart.
        driver.set_window_size(1400, 1500)
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 40, 16000))
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard-full.png"))
    finally:
        driver.quit()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


@pytest.mark.browser
def test_robustness_section_renders_in_headless_chromium(tmp_path):
    # One run of libero_spatial with its language and position-swap perturbations.
    run = tmp_path / "runs" / "pro"
    rates = {"libero_spatial": 0.9, "libero_spatial_lan": 0.7, "libero_spatial_swap": 0.1}
    rng = random.Random(1)
    draws = {t: [rng.random() for _ in range(10)] for t in range(10)}  # shared: paired
    for suite, rate in rates.items():
        write_run(run, {t: [u < rate for u in draws[t]] for t in range(10)}, suite=suite)
    page = build_dashboard([run], tmp_path / "report.html")
    driver = _open_in_chromium(page, tmp_path)
    try:
        section = driver.execute_script(
            """
            const s = document.getElementById('robustness');
            if (!s) return null;
            const r = s.getBoundingClientRect();
            const cells = t => [...s.querySelectorAll('table.' + t + ' tr')]
              .map(tr => [...tr.children].map(c => c.innerText));
            return {visible: r.width > 0 && r.height > 0, board: cells('leaderboard'),
                    axes: cells('axes'), nav: !!document.querySelector('nav a[href="#robustness"]')};
            """
        )
        assert section is not None and section["visible"] and section["nav"]
        board = section["board"]
        assert board[0] == ["Run", "Spatial Orig", "Spatial Pos", "Spatial Sem", "Mean pert."]
        assert board[1][0] == "pro" and len(board) == 2
        assert [row[1] for row in section["axes"][1:]] == ["position swap", "language"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.execute_script("document.getElementById('robustness').scrollIntoView()")
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard-robustness.png"))
    finally:
        driver.quit()
