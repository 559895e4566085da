"""Session-wide test infrastructure, built once and shared by tests/ and moto_tests/ (tests/infra/)."""

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


@pytest.fixture(scope="session")
def twin_net(ssh_lab, tmp_path_factory):
    """VM twins on a bridge of this session's own; they accept the SSH lab's client key."""
    from tests.infra.twins import TwinNet, twins_unavailable

    reason = twins_unavailable()
    if reason:
        pytest.skip(reason)
    net = TwinNet(tmp_path_factory.mktemp("twins"), ssh_lab.root / "client_key.pub")
    yield net
    net.close()


@pytest.fixture(scope="session")
def moto_twins(twin_net):
    """A moto server on the twins' bridge whose instances are twins (tests/infra/moto_twins.py)."""
    from tests.infra.moto_twins import MotoTwins

    cloud = MotoTwins(twin_net)
    yield cloud
    cloud.close()
