"""Session-wide test infrastructure (built once, shared): see tests/infra.py."""

import os

import pytest

from tests.infra import SSHD, SSHLab


@pytest.fixture(scope="session")
def ssh_lab(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server is not installed (./dev test installs it when run as root)")
    os.makedirs("/run/sshd", exist_ok=True)
    lab = SSHLab(tmp_path_factory.mktemp("sshlab"))
    yield lab
    lab.close()
