"""Session-wide test infrastructure, built once and shared by tests/ and moto_tests/ (tests/infra/)."""

import os

import pytest

from tests.infra import SSHD, SSHLab


@pytest.fixture(scope="session", autouse=True)
def no_memory_left(tmp_path_factory):
    """Heads made by tests keep memory folders on the machine's tmpfs (runtime/blobs.py); those of stores
    in this session's temporary folders go with the session, as `launch down` takes a cluster's."""
    yield
    from core.shm import forget_memory_under

    forget_memory_under(tmp_path_factory.getbasetemp())


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
def node_images():
    """Debian roots for image twins (tests/infra/images.py): built once per machine, then cached."""
    from tests.infra.images import IMAGES, ensure, images_unavailable

    reason = images_unavailable()
    if reason:
        pytest.skip(reason)
    return {name: ensure(image) for name, image in IMAGES.items()}


@pytest.fixture(scope="session")
def moto_twins(twin_net):
    """A moto server on the twins' bridge whose instances are twins (tests/infra/moto_twins.py)."""
    from tests.infra.moto_twins import MotoTwins

    cloud = MotoTwins(twin_net)
    yield cloud
    cloud.close()


GCE_PROJECT, GCE_REGION, GCE_ZONES = "launch-test", "us-west1", ["us-west1-a", "us-west1-b"]


@pytest.fixture(scope="session")
def gce_server():
    """A fake Compute Engine endpoint (tests/infra/fake_gce.py) on loopback, without hosts behind it."""
    from tests.infra.fake_gce import FakeGCE

    fake = FakeGCE("127.0.0.1", GCE_PROJECT, GCE_REGION, GCE_ZONES)
    yield fake
    fake.close()


@pytest.fixture
def gce(gce_server):
    """The fake, as a fresh project for this test."""
    gce_server.reset()
    return gce_server


@pytest.fixture(scope="session")
def gce_twins(twin_net):
    """A fake Compute Engine endpoint on the twins' bridge whose instances are VM twins."""
    from tests.infra.fake_gce import FakeGCE

    fake = FakeGCE(twin_net.gateway, GCE_PROJECT, GCE_REGION, GCE_ZONES, net=twin_net)
    yield fake
    fake.close()


ARM_SUBSCRIPTION, ARM_LOCATION = "00000000-0000-4000-8000-000000000001", "westus2"


@pytest.fixture(scope="session")
def arm_server(tmp_path_factory):
    """A fake Azure Resource Manager over https (tests/infra/fake_arm.py) on loopback, no hosts behind it."""
    from tests.infra.fake_arm import FakeARM

    fake = FakeARM("127.0.0.1", ARM_SUBSCRIPTION, ARM_LOCATION, tmp_path_factory.mktemp("arm"))
    yield fake
    fake.close()


@pytest.fixture
def arm(arm_server):
    """The fake, as a fresh subscription for this test."""
    arm_server.reset()
    return arm_server


@pytest.fixture(scope="session")
def arm_twins(twin_net, tmp_path_factory):
    """A fake ARM endpoint on the twins' bridge whose VMs are VM twins."""
    from tests.infra.fake_arm import FakeARM

    fake = FakeARM(twin_net.gateway, ARM_SUBSCRIPTION, ARM_LOCATION, tmp_path_factory.mktemp("arm-twins"), net=twin_net)
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm on this machine (munged, slurmctld, one slurmd as node `localhost` with 4 CPUs and 2
    count-only GPUs): tests/infra/slurm.py. Every test leaves the queue empty."""
    from tests.infra.slurm import SlurmNode, TestSlurm, slurm_unavailable

    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = TestSlurm(tmp_path_factory.mktemp("slurm"), [SlurmNode("localhost", "127.0.0.1", cpus=4, gpus=2)])
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_twins(twin_net, tmp_path_factory):
    """A real Slurm whose compute nodes are two VM twins (`hpc1`: 2 CPUs; `hpc2`: 2 CPUs, 2 GPUs): one
    slurmd in each twin's network namespace, NodeAddr its IP; slurmctld on this machine at the bridge."""
    from tests.infra.slurm import SlurmNode, TestSlurm, slurm_unavailable

    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)
    nodes = [SlurmNode("hpc1", twin_net.ip(31), cpus=2), SlurmNode("hpc2", twin_net.ip(32), cpus=2, gpus=2)]
    twins = {n.name: twin_net.twin(n.name, n.addr) for n in nodes}
    cluster = TestSlurm(tmp_path_factory.mktemp("slurm-twins"), nodes, controller_addr=twin_net.gateway,
                        netns={name: t.netns for name, t in twins.items()})
    cluster.start()
    yield cluster
    cluster.stop()
    for name in twins:
        twin_net.remove(name)


@pytest.fixture(scope="session")
def container_images(twin_net, node_images, tmp_path_factory):
    """Images on the twins' bridge registry (tests/infra/containers.py), made from the Debian roots:
    `py313` (Debian 13), and `py313b`, the same root under another name (a changed image)."""
    from tests.infra.containers import ContainerLab, containers_unavailable

    reason = containers_unavailable()
    if reason:
        pytest.skip(reason)
    lab = ContainerLab(twin_net, tmp_path_factory.mktemp("containers"))
    try:
        py313 = lab.publish("py313", node_images["trixie"])
        yield {"py313": py313, "py313b": lab.alias(py313, "py313b")}
    finally:
        lab.close()


@pytest.fixture
def tmpfs(tmp_path):
    """Real small disks: `tmpfs("size=1m")` (mount options) mounts a tmpfs and returns its folder; all are
    unmounted after the test. Needs root."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = []

    def make(options: str):
        d = tmp_path / f"fs{len(made)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "none", str(d)], check=True)
        made.append(d)
        return d

    yield make
    for d in made:
        subprocess.run(["umount", "-l", str(d)], check=False)
