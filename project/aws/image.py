"""The training image: tag from git, `docker build`/`push` command lines, ECR login.

Tags are immutable in the Terraform repository, so an image is named by the commit it was
built from; a dirty working tree is refused unless asked for, and then marked as such.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

ROOT = Path(__file__).resolve().parent.parent.parent
# AWS Deep Learning Container for PyTorch training on SageMaker (GPU, CUDA 12, Python 3.12);
# the account 763104351884 hosts the DLCs in most regions. Override with --base-image.
DEFAULT_BASE_IMAGE = (
    "763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-training:2.8.0-gpu-py312-cu129-ubuntu22.04-sagemaker"
)


class ImageError(UserError):
    pass


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageError(
            f"git {' '.join(args)} failed ({exc}); the image tag comes from git: commit your work"
        ) from None


def image_tag(allow_dirty: bool = False) -> str:
    """The git short sha of HEAD; `<sha>-dirty-<diff hash>` for a dirty tree when allowed."""
    sha = _git("rev-parse", "--short=7", "HEAD").strip()
    status = _git("status", "--porcelain", "--untracked-files=no").strip()
    if not status:
        return sha
    if not allow_dirty:
        raise ImageError(
            f"the working tree has uncommitted changes ({len(status.splitlines())} file(s)); commit them, "
            "or pass --allow-dirty to build an image tagged <sha>-dirty-<hash>"
        )
    diff = hashlib.sha256(_git("diff", "HEAD").encode()).hexdigest()[:8]
    return f"{sha}-dirty-{diff}"


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
