"""This machine's own state dir ($LAUNCH_HOME) read-only or full: one line naming the path or the cause,
no traceback, and nothing left running that a later `down` could not find (real tmpfs mounts)."""

from __future__ import annotations

from tests.infra import cli, local_cluster, processes_with_env, write_config


def test_a_read_only_state_dir_is_named_in_one_line(tmpfs, tmp_path):
    home = tmpfs("ro,size=1m") / "launch"
    path = write_config(tmp_path / "c.yaml", local_cluster("ro"))
    r = cli("up", str(path), "--yes", home=home)
    assert r.returncode == 1 and r.stderr.strip() == f"error: {home}: Read-only file system", r.stderr


def test_a_state_dir_that_fills_fails_in_one_line_and_down_still_ends_the_nodes(tmpfs, tmp_path):
    fs = tmpfs("size=64k")
    home = fs / "launch"
    path = write_config(tmp_path / "c.yaml", local_cluster("full"))
    r = cli("up", str(path), "--yes", home=home, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "No space left on device" in line, r.stderr
    # whatever `up` had made is known: `down` ends it, the disk full all the while
    r = cli("down", str(path), "--yes", home=home, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert processes_with_env(str(fs)) == []
