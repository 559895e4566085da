"""One moto server for the whole session (../shared/TESTING.md); every test starts from a reset account.

The real boto3 client talks to it over HTTP (AWS_ENDPOINT_URL), in this process and in every `launch`
process the tests start, so the product's code path is the one users run.
"""

import logging
import os

import pytest
import requests

REGION = "us-west-2"


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION=REGION)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    yield url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def aws(moto_server):
    """A fresh, empty account for this test."""
    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    import boto3

    return boto3.client("ec2", region_name=REGION)
