"""ECR and IAM where moto falls short, for the sandbox.

`LocalImages` makes every ECR image tag exist: a sandbox job runs in this machine's Python
environment, whatever image it names. `NoPolicySimulation` answers IAM SimulatePrincipalPolicy
(moto: 500, so the SageMaker SDK's role check crashed) with AccessDenied, which the SDK takes as
"permissions unknown" and goes on: moto cannot simulate IAM.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from project.sandbox.patches import MethodPatch


class LocalImages(MethodPatch):
    """While entered, ECR DescribeImages finds every tag asked for, registering it on first sight."""

    def target(self) -> tuple[type, str, Any]:
        from moto.ecr.responses import ECRResponse

        original = ECRResponse.describe_images

        def describe_images(response: Any) -> Any:
            self._register(response)
            return original(response)

        return ECRResponse, "describe_images", describe_images

    @staticmethod
    def _register(response: Any) -> None:
        repository = response._get_param("repositoryName")
        tags = [i["imageTag"] for i in response._get_param("imageIds") or [] if "imageTag" in i]
        backend = response.ecr_backend
        if repository not in backend.repositories:
            return  # moto answers RepositoryNotFoundException, as ECR does
        known = {tag for image in backend.repositories[repository].images for tag in image.image_tags}
        for tag in set(tags) - known:
            backend.put_image(repository, placeholder_manifest(tag), tag)


def placeholder_manifest(tag: str) -> str:
    """An image manifest naming no layers, its config digest unique per tag (tags are immutable)."""
    digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": digest, "size": 1, "mediaType": "application/vnd.docker.container.image.v1+json"},
            "layers": [],
        }
    )


class NoPolicySimulation(MethodPatch):
    """While entered, IAM SimulatePrincipalPolicy is refused (AccessDenied) instead of a 500."""

    def target(self) -> tuple[type, str, Any]:
        from moto.iam.responses import IamResponse

        return IamResponse, "simulate_principal_policy", _refuse_simulation


def _refuse_simulation(response: Any) -> Any:
    from moto.core.exceptions import AccessDeniedError

    raise AccessDeniedError(user_arn=response._get_param("PolicySourceArn"), action="iam:SimulatePrincipalPolicy")
