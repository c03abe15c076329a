"""Building and pushing our image (`job.image=custom`): the docker commands and ECR's login and tag check.

Which image a job runs and its tag are image.py's; the commands run in project/aws/workflow.py.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from project.aws.image import ImageError


@dataclass(frozen=True)
class ImageRef:
    repository_url: str  # <account>.dkr.ecr.<region>.amazonaws.com/<name>
    tag: str

    @property
    def uri(self) -> str:
        return f"{self.repository_url}:{self.tag}"

    @property
    def registry(self) -> str:
        return self.repository_url.split("/", 1)[0]

    @property
    def repository(self) -> str:
        return self.repository_url.split("/", 1)[1]


def build_command(ref: ImageRef, base_image: str, dockerfile: str = "Dockerfile") -> list[str]:
    return [
        "docker",
        "build",
        "--platform",
        "linux/amd64",  # SageMaker training instances are x86-64
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--tag",
        ref.uri,
        "--file",
        dockerfile,
        ".",
    ]


def push_commands(ref: ImageRef) -> list[list[str]]:
    """docker login (password on stdin, from `ecr_password`), then push the one immutable tag."""
    return [
        ["docker", "login", "--username", "AWS", "--password-stdin", ref.registry],
        ["docker", "push", ref.uri],
    ]


def ecr_password(ecr) -> str:
    """The registry password from ECR's authorization token (base64 of 'AWS:<password>')."""
    data = ecr.get_authorization_token()["authorizationData"]
    if not data:
        raise ImageError("ECR returned no authorization token; check the credentials' ecr:GetAuthorizationToken")
    user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
    if user != "AWS" or not password:
        raise ImageError("ECR authorization token is malformed")
    return password


def tag_exists(ecr, repository_name: str, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository_name, imageIds=[{"imageTag": tag}])
        return True
    except ecr.exceptions.ImageNotFoundException:
        return False
