"""The sandbox's AWS endpoint: every service moto has, over HTTP in this process.

In this process, because the SageMaker side (service.py) works on moto's in-process record of
each job. While it serves, S3 bucket-policy conditions are evaluated (policy.py), Service Quotas
answers for SageMaker (quotas.py), IAM SimulatePrincipalPolicy is refused rather than a 500
(ecr_iam.NoPolicySimulation), UpdateModelPackage keeps a version's metadata as AWS does
(registry.py), and ListTrainingJobs filters, sorts and pages as AWS does (listing.py): the tests'
endpoint is the one `invoke sandbox` serves.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

from project.sandbox.ecr_iam import NoPolicySimulation
from project.sandbox.listing import TrainingJobListing
from project.sandbox.optml import SandboxError
from project.sandbox.policy import BucketPolicyConditions
from project.sandbox.quotas import SageMakerQuotas
from project.sandbox.registry import MergedMetadataUpdates


class PortInUse(SandboxError):
    pass


class Endpoint:
    """A threaded moto server on host:port (0: a free port); `url` once entered."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._conditions = BucketPolicyConditions()
        self._quotas = SageMakerQuotas()
        self._no_simulation = NoPolicySimulation()
        self._registry = MergedMetadataUpdates()
        self._listing = TrainingJobListing()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Endpoint:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        listening = self._listen()
        with listening:  # werkzeug serves a duplicate of it; its own bind would sys.exit() on a busy port
            self._server = make_server(
                self.host, self.port, DomainDispatcherApplication(create_backend_app), True, fd=listening.fileno()
            )
        self.port = self._server.server_address[1]
        self._conditions.__enter__()
        self._quotas.__enter__()
        self._no_simulation.__enter__()
        self._registry.__enter__()
        self._listing.__enter__()
        self._thread = threading.Thread(target=self._server.serve_forever, name="sandbox-endpoint", daemon=True)
        self._thread.start()
        return self

    def _listen(self) -> socket.socket:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does: no TIME_WAIT wait
        try:
            listening.bind((self.host, self.port))
        except OSError as exc:
            listening.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {self.port} on {self.host} is already in use (another sandbox, LocalStack or moto?): "
                    "stop it, or pick another port with --port"
                ) from None
            raise SandboxError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        listening.listen(socket.SOMAXCONN)
        return listening

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        assert self._thread is not None
        self._thread.join()
        self._server.server_close()
        self._conditions.__exit__()
        self._quotas.__exit__()
        self._no_simulation.__exit__()
        self._registry.__exit__()
        self._listing.__exit__()
