"""The docs site builds with `mkdocs build --strict` (a broken link or anchor fails it), its generated
references are complete, and the README's links reach files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.infra import ROOT


def test_the_site_builds_strict_with_generated_references(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (./dev test installs the test extras)")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for command in ("launch up", "launch dashboard", "launch simulate", "launch job list", "--trace"):
        assert command in cli
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    for key in ("idle_timeout_minutes", "max_cost_per_hour", "available_node_types.NAME", "provider (type: aws)",
                "boot_time_s", "spot_interruptions_per_hour"):
        assert key in config
    for page in ("overview", "cost", "autoscaler", "jobs", "job", "tasks", "nodes", "node"):  # a picture of each
        assert (tmp_path / "site" / "img" / f"dashboard-{page}.png").exists()


def test_the_readmes_links_reach_files():
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not t.startswith(("http", "#"))]
    assert links and [t for t in links if not (ROOT / t.split("#")[0]).exists()] == []
