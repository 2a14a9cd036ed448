"""A real S3-wire server for tests: moto's standalone server (from PyPI), on a free loopback port.

The broker talks to it exactly as to S3 or MinIO: boto3 over HTTP, configured only by the
standard AWS environment variables, which `S3Server.env` gives for the broker's process.
"""

import uuid
from dataclasses import dataclass

import boto3
from botocore.config import Config
from brokerkit import free_port
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


class S3Server:
    """moto's server in a thread of the test process; `stop` and `start` again simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> "S3Server":
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def env(self) -> dict[str, str]:
        """What a broker needs in its environment to reach this server (the standard AWS names)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
        }

    def client(self):
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )


@dataclass
class Bucket:
    server: S3Server
    name: str
    prefix: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    def keys(self) -> list[str]:
        page = self.server.client().list_objects_v2(Bucket=self.name, Prefix=self.prefix)
        return sorted(obj["Key"] for obj in page.get("Contents", []))


def new_bucket(server: S3Server) -> Bucket:
    name = f"m2kt-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return Bucket(server, name, "packets")
