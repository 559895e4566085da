"""The dashboard, as a person meets it: `launch dashboard` on a local cluster while work runs and the
autoscaler scales; headless Chromium opens the link, reads what the pages show (node count, the cost, a
job's log line, the autoscaler's launches), clicks through every page, and saves a screenshot of each
(test-artifacts/dashboard/). Without the cluster's credential the API gives nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

import runtime
from runtime.client import HeadClient
from runtime.util import placement_group
from autoscaler.history import CostHistory, read_history, spent_since
from tests.infra import ROOT, RunningCluster, cli, cluster_status, wait_for, write_config
from tests.infra.dashboard import Dashboard

ARTIFACTS = Path(os.environ.get("LAUNCH_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "dashboard"
CONFIG = {
    "cluster_name": "dash",
    "max_workers": 3,
    "max_cost_per_hour": 2.0,
    "idle_timeout_minutes": 10,
    "provider": {"type": "local"},
    "autoscaler": {"tick_s": 0.5},
    "runtime": {"heartbeat_interval_s": 0.3, "node_timeout_s": 3},
    "available_node_types": {
        "head": {"resources": {"CPU": 0}, "max_workers": 0, "cost_per_hour": 0.05},
        "cpu": {"resources": {"CPU": 2}, "max_workers": 2, "cost_per_hour": 0.10},
        "gpu": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 1, "cost_per_hour": 0.50, "spot": True},
    },
    "head_node_type": "head",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = RunningCluster(tmp_path_factory.mktemp("dash"), CONFIG)

    @runtime.remote(num_cpus=1)
    def hold(seconds):
        import time as t
        t.sleep(seconds)
        return 1

    @runtime.remote(num_cpus=0, max_retries=0)
    def broken(x):
        raise ValueError(f"bad input {x}")

    @runtime.remote(num_cpus=0)
    class Counter:
        def add(self, n):
            return n

    c.refs = [hold.remote(300) for _ in range(2)]  # a cpu worker is launched for them, and stays busy
    c.failed = broken.remote(42)
    c.actor = Counter.options(name="counter").remote()
    assert runtime.get(c.actor.add.remote(1)) == 1
    # a gang of one CPU: the cpu worker is full, so the autoscaler launches another for it
    c.group = placement_group([{"CPU": 1}], strategy="PACK", name="gang")
    job = c.path.parent / "hello.sh"
    job.write_text("echo hello $WORD\nsleep 300\n")
    r = subprocess.run([sys.executable, "-m", "launcher", "submit", str(c.path), str(job), "--cpus", "0", "--no-follow",
                        "-e", "WORD=dashboard"], env={**os.environ, "LAUNCH_HOME": str(c.home)},
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    c.job_id = r.stdout.strip()
    wait_for(lambda: [n["runtime"] for n in cluster_status(c.path, c.home)["nodes"] if n["node_type"] == "cpu"]
             == ["alive", "alive"], timeout=60, what="two cpu workers for the waiting work and the gang")
    assert c.group.wait(timeout_seconds=30)
    yield c
    c.down()


def test_without_the_clusters_credential_nothing_is_shown(cluster):
    d = Dashboard(cluster.path, cluster.home)
    try:
        status, _, body = d.get("/api/overview")
        assert status == 401 and list(json.loads(body)) == ["error"]  # no data, only what to do
        assert d.get("/api/overview", {"Authorization": "Bearer not-the-token"})[0] == 401
        assert d.get("/api/overview", {"Cookie": "launch_session=made-up"})[0] == 401
        status, _, body = d.get("/")
        assert status == 401 and b"launch dashboard CLUSTER.yaml" in body  # the login page, no data
        assert d.get("/login?code=wrong")[0] == 401
        # a page elsewhere that rebinds a name to the forward is refused, credential or not
        assert d.get("/api/overview", {"Host": "evil.example:80",
                                       "Authorization": f"Bearer {cluster.token}"})[0] == 421
        # scripts: the cluster's credential
        status, _, body = d.get("/api/overview", {"Authorization": f"Bearer {cluster.token}"})
        assert status == 200 and json.loads(body)["cluster"] == "dash"
        # a browser: the one-time link, once
        path = urlparse(d.url)._replace(scheme="", netloc="").geturl()
        status, headers, _ = d.get(path)
        cookie = headers["Set-Cookie"]
        assert status == 303 and headers["Location"] == "/" and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert d.get(path)[0] == 401  # spent
        status, headers, body = d.get("/api/cost", {"Cookie": cookie.split(";")[0]})
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        page = d.get("/", {"Cookie": cookie.split(";")[0]})[2]
        assert cluster.token.encode() not in page and cookie.split(";")[0].split("=")[1].encode() not in page
    finally:
        d.close()


def test_the_api_says_what_runs_and_what_it_costs(cluster):
    d = Dashboard(cluster.path, cluster.home)
    auth = {"Authorization": f"Bearer {cluster.token}"}
    try:
        o = json.loads(d.get("/api/overview", auth)[2])
        assert {(n["node_type"], n["status"]) for n in o["nodes"]} >= {("head", "up-to-date"), ("cpu", "up-to-date")}
        assert o["resources"]["CPU"] == {"used": 3.0, "total": 4.0} and o["autoscaler"]["alive"]
        cost = json.loads(d.get("/api/cost", auth)[2])
        assert cost["per_hour"] == pytest.approx(0.25) and cost["max_cost_per_hour"] == 2.0
        assert cost["by_type"]["cpu"] == {"count": 2, "spot": False, "per_hour_each": 0.1, "per_hour": 0.2,
                                          "source": "the config's cost_per_hour"}
        events = json.loads(d.get("/api/events?node_type=cpu&kind=launch", auth)[2])["events"]
        assert events and all(e["event"] == "launch" and e["node_type"] == "cpu" for e in events)
        jobs = json.loads(d.get("/api/jobs", auth)[2])["jobs"]
        assert [j["id"] for j in jobs] == [cluster.job_id]
        wait_for(lambda: "hello dashboard" in json.loads(d.get(f"/api/jobs/{cluster.job_id}/logs?offset=0", auth)[2])["data"],
                 timeout=30, what="the job's line")
        work = json.loads(d.get("/api/work", auth)[2])
        counts = work["tasks"]["counts"]
        assert (counts["running"], counts["failed"]) == (2, 1) and len(work["tasks"]["slowest"]) == 2
        assert "bad input 42" in work["tasks"]["failed"][0]["message"]
        with HeadClient(cluster.address, cluster.token) as head:  # a page of a busy cluster: the newest, all counted
            reply = head.recent_items("task", 1)
            done = [i for i in reply.items if i.state in ("finished", "failed", "cancelled")]
            assert len(done) == 1 and dict(reply.counts) == counts
        assert work["actors"]["counts"] == {"running": 1} and [g["name"] for g in work["groups"]] == ["gang"]
        nodes = json.loads(d.get("/api/nodes", auth)[2])["nodes"]
        assert sorted(n["node_type"] for n in nodes if n["state"] == "alive") == ["cpu", "cpu", "head"]
        task = work["tasks"]["slowest"][0]
        one = json.loads(d.get(f"/api/nodes/{task['node']}", auth)[2])
        assert task["id"] in [w["id"] for w in one["work"]] and one["total"]["CPU"] == 2.0
        assert d.get("/api/nodes/no-such-node", auth)[0] == 404 and d.get("/api/nope", auth)[0] == 404
    finally:
        d.close()


def _browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (./dev test installs the test extras)"
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "chromium and chromium-driver are not installed (./dev test installs them as root)"
    return None


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_a_person_reads_every_page_in_chromium(cluster):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d = Dashboard(cluster.path, cluster.home)
    browser = _browser(1280, 800)
    text = lambda testid: browser.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]').text  # noqa: E731

    def shows(what: str, timeout: float = 20) -> None:
        wait_for(lambda: what in browser.find_element(By.ID, "main").text, timeout=timeout, what=f"{what!r} on the page")

    try:
        browser.get(d.url)  # the one-time link: logged in, and the code gone from the address bar
        shows("Pending demand")
        assert "code=" not in browser.current_url and "/login" not in browser.current_url
        assert text("node-count") == "3" and "ticking" in text("autoscaler-live") and text("cost-now") == "$0.25/h"
        browser.save_screenshot(str(ARTIFACTS / "overview.png"))

        pages = {"Cost": "By node type", "Autoscaler": "Autoscaler timeline", "Jobs": cluster.job_id,
                 "Tasks & actors": "Placement groups", "Nodes": "cpu"}
        for link, expected in pages.items():
            browser.find_element(By.LINK_TEXT, link).click()
            shows(expected)
            browser.save_screenshot(str(ARTIFACTS / f"{link.split()[0].lower()}.png"))
            if link == "Cost":
                assert text("cost-per-hour") == "$0.25/h" and text("cost-since-up").startswith("$")
                assert browser.find_elements(By.CSS_SELECTOR, "svg path")  # the chart
            if link == "Autoscaler":
                shows("launch")
            if link == "Tasks & actors":
                assert "running: 2" in text("tasks-counts") and "failed: 1" in text("tasks-counts")
                shows("bad input 42")
                shows("gang")

        browser.find_element(By.LINK_TEXT, "Jobs").click()
        shows(cluster.job_id)
        browser.find_element(By.LINK_TEXT, cluster.job_id).click()  # a job's log, followed
        shows("hello dashboard")
        browser.save_screenshot(str(ARTIFACTS / "job.png"))
        browser.find_element(By.LINK_TEXT, "Nodes").click()
        shows("Nodes")
        cpu = next(a for a in browser.find_elements(By.CSS_SELECTOR, "main a") if a.text.startswith("local-")
                   and "cpu" in a.find_element(By.XPATH, "../..").text)
        cpu.click()
        shows("Running here")
        browser.save_screenshot(str(ARTIFACTS / "node.png"))

        # keyboard alone: from a fresh page, Tab reaches the skip link, then the pages' links; Enter follows one
        browser.refresh()
        shows("Running here")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).send_keys(Keys.TAB).perform()
        assert browser.switch_to.active_element.text == "Skip to content"
        ActionChains(browser).send_keys(Keys.TAB).perform()
        assert browser.switch_to.active_element.text == "Overview"
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        shows("Pending demand")

        browser.set_window_size(390, 844)  # a phone
        shows("Pending demand")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
        browser.save_screenshot(str(ARTIFACTS / "overview-phone.png"))
    finally:
        browser.quit()
        d.close()


def test_a_cluster_that_is_not_up_has_no_dashboard(tmp_path):
    path = write_config(tmp_path / "never.yaml", {**CONFIG, "cluster_name": "never-up"})
    r = cli("dashboard", str(path), "--no-browser", home=tmp_path / "home")
    assert r.returncode == 1 and r.stderr.strip() == "error: cluster 'never-up' is not up (no head node); run `launch up` first"


def test_cost_history_sums_what_was_spent_and_a_gap_is_a_cluster_that_was_down(tmp_path):
    h = CostHistory(tmp_path / "cost.jsonl")
    for t in range(0, 3601, 5):  # the monitor ticks every 5 s: a record a minute, and at each change
        h.record(t, {"cpu": {"count": 2 if t < 1800 else 1, "per_hour": 1.0, "spot": False}})
    records = read_history(tmp_path / "cost.jsonl")
    assert len(records) == 61
    assert spent_since(records, 0, 3600) == pytest.approx(1.5) and spent_since(records, 1800, 3600) == pytest.approx(0.5)
    again = CostHistory(tmp_path / "cost.jsonl")  # a restarted monitor goes on from the file
    again.record(3600 + 7200, {"cpu": {"count": 1, "per_hour": 1.0, "spot": False}})  # up again after 2 h down
    records = read_history(tmp_path / "cost.jsonl")
    assert records[-1]["total_usd"] == pytest.approx(1.5) and records[-1]["run_start"] == 10800
    assert spent_since(records, 0, 10800 + 3600) == pytest.approx(2.5)
