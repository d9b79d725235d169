"""The report reads the store: build one with the runner, then check the HTML against it."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic_root):
    tmp = tmp_path_factory.mktemp("report")
    store = f"sqlite:///{tmp}/mlflow.db"
    proj = tmp / "proj"
    (proj / "experiments").mkdir(parents=True)
    for eid in ("tutorial-base", "fastai-simplenet"):
        shutil.copy(REPO / "experiments" / f"{eid}.toml", proj / "experiments")
    text = (REPO / "experiments" / "fastai-convnet.toml").read_text().replace('id = "fastai-convnet"', 'id = "diverge"')
    (proj / "experiments" / "diverge.toml").write_text(text.replace("lr = 1e-1", "lr = 1e12"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_STATE_DIR", str(tmp / "state"))
        mp.chdir(proj)
        common = ["--data-dir", str(synthetic_root), "--tracking-uri", store, "--epochs", "2", "--max-train-images", "400", "--no-progress"]
        r = CliRunner().invoke(main, ["run-all", "--repeats", "2", "--skip", "diverge", *common])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["run", "diverge", *common])
        assert r.exit_code == 1
        out, csv = tmp / "r.html", tmp / "r.csv"
        r = CliRunner().invoke(main, ["report", "--tracking-uri", store, "--out", str(out), "--csv", str(csv), "--mlflow-ui-url", "http://ui.example:5000"])
        assert r.exit_code == 0, r.output
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
    return {"html": out.read_text(), "csv": pd.read_csv(csv), "runs": runs, "store": store, "out": out, "proj": proj}


@pytest.mark.slow
def test_every_run_appears(built):
    html = built["html"]
    assert len(built["runs"]) == 5
    for r in built["runs"]:
        assert r.info.run_id[:8] in html and r.info.run_id in html, r.info.run_name
    failed = [r for r in built["runs"] if r.info.status == "FAILED"]
    assert len(failed) == 1 and "diverged" in html
    # experiments of the catalogue with no run are listed as missing (cwd is the repo here)
    assert "missing" in html.lower()


@pytest.mark.slow
def test_self_contained(built):
    html = built["html"]
    assert html.count("data:image/png;base64,") >= 6  # accuracy, time, pareto, per-class, loss, confusion
    assert not re.search(r'<(script|link|iframe)\b', html, re.I)
    assert not re.search(r'(src|srcset)\s*=\s*["\']?https?:', html, re.I)
    assert not re.search(r'url\(\s*["\']?https?:', html, re.I)
    assert not re.search(r'@import', html)
    for href in re.findall(r'href="([^"]+)"', html):
        assert href.startswith("http://ui.example:5000/#/experiments/"), href


@pytest.mark.slow
def test_summary_numbers_equal_the_store(built):
    runs = [r for r in built["runs"] if r.info.status == "FINISHED"]
    html = built["html"]
    summary = html[html.index('id="summary"'): html.index("</table>", html.index('id="summary"'))]
    csv = built["csv"].set_index("id")
    for eid in ("tutorial-base", "fastai-simplenet"):
        accs = [r.data.metrics["test_acc"] for r in runs if r.data.tags["harness.experiment_id"] == eid]
        assert len(accs) == 2
        mean = sum(accs) / 2
        std = pd.Series(accs).std()
        assert f">{mean:.2f}<" in summary
        assert csv.loc[eid, "test_acc_mean"] == pytest.approx(mean)
        assert csv.loc[eid, "test_acc_std"] == pytest.approx(std)
        assert csv.loc[eid, "n"] == 2 and bool(csv.loc[eid, "capped"])
        times = [r.data.metrics["train_time_s"] for r in runs if r.data.tags["harness.experiment_id"] == eid]
        assert csv.loc[eid, "train_time_s"] == pytest.approx(sum(times) / 2)
    assert set(csv.index) == {"tutorial-base", "fastai-simplenet"}
    assert "capped" in summary


@pytest.mark.slow
def test_csv_matches_table(built):
    html = built["html"]
    for _, row in built["csv"].iterrows():
        assert f"<b>{row['id']}</b>" in html
        assert f"{row['test_acc_mean']:.2f}" in html and f"{row['train_time_s']:.1f}" in html


@pytest.mark.slow
def test_significance_section(built):
    html = built["html"]
    sig = html[html.index('id="significance"'):]
    assert "McNemar" in html
    # two experiments: one comparison against the best and one between neighbouring ranks; with
    # 2 seeds each the spread is not measured, so the verdict is about runs and names the settling command
    nb = html[html.index('id="neighbours"'): html.index("</table>", html.index('id="neighbours"'))]
    assert nb.count("<tr><td") == 1 and "recipes untested" in nb and "--repeats auto" in nb
    assert "recipes untested" in sig and '<span class="tag real">' not in sig


@pytest.mark.slow
def test_empty_store_and_unknown_experiment_fail_cleanly(tmp_path, built):
    r = CliRunner().invoke(main, ["report", "--tracking-uri", f"sqlite:///{tmp_path}/empty.db", "--out", str(tmp_path / "x.html")])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["report", "--tracking-uri", built["store"], "--experiment-name", "nope", "--out", str(tmp_path / "x.html")])
    assert r.exit_code != 0 and "nope" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});</script></body>"""


def offline(cmd: list[str]) -> list[str]:
    """No network at all where we may make a namespace (root); else the proxy and resolver flags."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "-n", *cmd]
    return cmd


@pytest.mark.slow
def test_renders_in_headless_chromium(built, tmp_path):
    """The report in a real browser with no network: every image decodes, every run is there."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = tmp_path / "checked.html"
    page.write_text(built["html"].replace("</body>", CHECK))  # the check runs in a copy; the report has no script
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'prof'}"]
    r = subprocess.run(offline([*base, "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]), capture_output=True, text=True, timeout=180)
    m = re.search(r'data-images="(\d+)/(\d+)"', r.stdout)
    assert m, r.stderr[-2000:]
    ok, total = int(m.group(1)), int(m.group(2))
    assert total >= 7 and ok == total, (ok, total)
    for run in built["runs"]:
        assert run.info.run_id in r.stdout, run.info.run_name
    shot = tmp_path / "shot.png"
    subprocess.run(offline([*base, "--window-size=1300,2400", f"--screenshot={shot}", built["out"].as_uri()]), capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page is a few KB


def test_holm_adjusts_a_family_of_p_values():
    from harness.report.mathstats import holm

    # sorted 0.01, 0.02, 0.04 of 3 -> 0.03, 0.04, 0.04 (monotone); None is no test
    adj = holm([0.04, 0.01, None, 0.02])
    assert adj[1] == pytest.approx(0.03) and adj[3] == pytest.approx(0.04) and adj[0] == pytest.approx(0.04) and adj[2] is None
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_t_interval_over_seeds():
    from harness.report.mathstats import t_interval

    lo, hi = t_interval([60.0, 62.0, 64.0])
    assert (lo + hi) / 2 == pytest.approx(62.0) and hi - lo == pytest.approx(2 * 4.302653 * 2 / 3**0.5, rel=1e-4)
    assert t_interval([60.0]) is None


def test_budget_table_picks_the_best_within_each_budget():
    import numpy as np

    from harness.report.budget import budget_table
    from harness.report.rows import Row

    def row(key):
        return Row(key, False, pd.DataFrame(), [])

    fast = [(np.array([20.0, 40, 60, 80]), np.array([40.0, 45, 47, 48])), (np.array([21.0, 41, 61, 81]), np.array([41.0, 46, 47.5, 48.2])),
            (np.array([20.5, 40.5, 60.5, 80.5]), np.array([40.5, 45.5, 47.2, 48.1]))]
    slow = [(np.array([100.0, 200, 400]), np.array([50.0, 60, 70])), (np.array([110.0, 210, 420]), np.array([52.0, 61, 71])),
            (np.array([105.0, 205, 410]), np.array([51.0, 60.5, 70.5]))]
    t = {b["minutes"]: b for b in budget_table([row("fast"), row("slow")], {"fast": fast, "slow": slow}, (1, 5, 15))}
    # held-out validation (the default): the best epoch within the budget: 47 at 60 s, 46 at 41 s, 45.5 at 40.5 s (61 s and 60.5 s are over)
    assert t[1]["best"] == "fast" and t[1]["runner_up"] is None and t[1]["acc"] == pytest.approx((47 + 46 + 45.5) / 3)
    assert t[5]["best"] == "slow" and t[5]["acc"] == pytest.approx(60.5) and t[5]["runner_up"] == "fast"
    assert t[5]["p"] is not None and t[5]["verdict"] == "beats it beyond seed noise"
    assert t[15]["acc"] == pytest.approx(70.5)
    # with two seeds a side the gap is not tested
    t2 = {b["minutes"]: b for b in budget_table([row("fast"), row("slow")], {"fast": fast[:2], "slow": slow[:2]}, (5,))}
    assert t2[5]["p"] is None and t2[5]["verdict"].startswith("untested: 2 seed(s)")
    # validation splits drawn by different rules are different images: ranked apart, never tested
    split = lambda frac: pd.DataFrame({"params.data.val_fraction": [frac] * 3, "params.data.val_split": ["random"] * 3})  # noqa: E731
    t3 = budget_table([Row("fast", False, split("0.2"), []), Row("slow", False, split("0.1"), [])], {"fast": fast, "slow": slow}, (5,))
    assert [(b["scored_on"], b["best"], b["runner_up"], b["p"]) for b in t3] == [
        ("validation split (10%, random)", "slow", None, None), ("validation split (20%, random)", "fast", None, None)]


@pytest.mark.slow
def test_report_has_the_budget_table_ci_and_holm(built):
    html = built["html"]
    assert 'id="budgets"' in html and "time_to_accuracy" not in html  # the figure is embedded, not named
    budgets = html[html.index('id="budgets"'): html.index("</table>", html.index('id="budgets"'))]
    for m in (1, 5, 15, 60):
        assert f">{m} min<" in budgets
    assert "Holm" in html and "p (Holm)" in html and "95% CI (seeds)" in html
    summary = html[html.index('id="summary"'): html.index("</table>", html.index('id="summary"'))]
    assert summary.count("[") >= 2  # a t-interval for each of the two experiments with 2 seeds
