"""The job's image: the AWS PyTorch container (`job.image=aws`) or ours (`job.image=custom`).

`aws` is the AWS Deep Learning Container for PyTorch training of the job's region and instance
(the SageMaker SDK's image URI lookup, offline from the SDK's bundled tables); the job pip-installs
the training requirements at start, all but torch: the image's CUDA build of torch stays.
`custom` is the Dockerfile here, with those requirements baked in. Its tag is a hash of what goes
into the image (Dockerfile, .dockerignore, requirements-train.txt, base image), never of the code:
the code travels in the job's code channel, so a code change never needs a rebuild.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from project.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent.parent
TRAIN_REQUIREMENTS = ROOT / "requirements-train.txt"
TRACKING_REQUIREMENTS = ROOT / "requirements-tracking.txt"  # logger=mlflow/wandb: what the job installs besides
# What `docker build` reads: the tag hashes exactly these and the base image.
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "requirements-train.txt")
JOB_REQUIREMENTS = "requirements.txt"  # job.image=aws: in the code channel, installed by the SDK's sm_train.sh
IMAGE_KINDS = ("aws", "custom")
DLC_FRAMEWORK = "pytorch"
DLC_REPOSITORY = "pytorch-training"
DLC_INFERENCE_REPOSITORY = "pytorch-inference"  # endpoints and transform jobs (project/aws/deploy_image.py)
# job.image=custom builds FROM this AWS Deep Learning Container for PyTorch training on SageMaker
# (GPU, CUDA 12, Python 3.12); the account 763104351884 hosts the DLCs in most regions.
DEFAULT_BASE_IMAGE = (
    "763104351884.dkr.ecr.{region}.amazonaws.com/pytorch-training:2.8.0-gpu-py312-cu129-ubuntu22.04-sagemaker"
)
# The lowest PyTorch each pinned library supports, for the pins in requirements-train.txt (a test
# checks the pins agree). Sources: the Requires-Dist of the pinned wheels (pytorch-lightning 2.6.6:
# torch>=2.1.0; torchmetrics 1.9.0: torch>=2.0.0) and Lightning's compatibility matrix
# (docs/source-pytorch/versioning.rst: "≥2.1"; its newest column is the last CI-tested version,
# "informational, not a hard upper bound", so no upper bound here).
MIN_TORCH = {"pytorch-lightning": ("2.6.6", (2, 1)), "torchmetrics": ("1.9.0", (2, 0))}
# The newest DLC PyTorch whose CUDA build still runs on an instance family's GPU. The 2.9 training
# DLCs are CUDA 13.0 builds (DLC release v1.0-hf-5.3.0-pt-2.9.0-tr-gpu-py312: tag 2.9.0-gpu-py312-cu130),
# and CUDA 13.0 dropped Volta, the V100 of ml.p3*: those stop at 2.8 (cu129).
NEWEST_PYTORCH_FOR_FAMILY = {"p3": "2.8.0", "p3dn": "2.8.0"}
# pip's download-and-unpack rate on a training instance, for the start-up estimate. An assumption,
# not a measurement (nothing here reaches PyPI): S3-class bandwidth, but pip unpacks one wheel at a time.
PIP_INSTALL_MB_PER_SECOND = 25.0
PIP_FIXED_SECONDS = 10.0  # pip's own start, dependency resolution against the image's packages


class ImageError(UserError):
    pass


@dataclass(frozen=True)
class PipInstall:
    """What job.image=aws installs at job start: the training requirements but torch."""

    packages: int  # the requirements and their dependencies, torch's own left out (the image has them)
    megabytes: float  # their installed size here (RECORD sizes): an upper bound of the download

    @property
    def seconds(self) -> float:
        return PIP_FIXED_SECONDS + self.megabytes / PIP_INSTALL_MB_PER_SECOND

    def line(self) -> str:
        return (
            f"pip installs {self.packages} packages (~{self.megabytes:.0f} MB) at job start: "
            f"~{self.seconds:.0f} s more start-up (job.image=custom has them built in)"
        )


@dataclass(frozen=True)
class JobImage:
    kind: str  # aws | custom
    uri: str
    pytorch_version: str | None  # None: unknown (a custom base image whose tag does not say)
    install: PipInstall | None = None  # aws only

    @property
    def tag(self) -> str:
        return self.uri.rsplit(":", 1)[1]

    def line(self) -> str:
        torch = f"PyTorch {self.pytorch_version}" if self.pytorch_version else "PyTorch of the base image"
        what = "AWS Deep Learning Container" if self.kind == "aws" else "ours: invoke build/push"
        return f"{self.uri}  ({torch}, {what})"


def training_requirements() -> list[str]:
    """The pinned lines of requirements-train.txt."""
    lines = (line.split("#", 1)[0].strip() for line in TRAIN_REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def job_requirements(extra: tuple[str, ...] = ()) -> str:
    """job.image=aws's requirements file: everything but torch, so pip keeps the image's CUDA build,
    and the `extra` lines of the run's tracker (tracking_requirements).

    pytorch-lightning and torchmetrics ask for torch>=X, which the image's torch satisfies
    (check_pytorch), so pip never replaces it.
    """
    kept = [line for line in training_requirements() if _name(line) != "torch"]
    return "\n".join([*kept, *extra]) + "\n"


def tracking_requirements(mlflow: bool, sagemaker_mlflow: bool, wandb: bool) -> tuple[str, ...]:
    """What a job installs at start (either image) for its trackers, at requirements-tracking.txt's
    versions: for logger=mlflow MLflow's client, mlflow-skinny (the server and UI stay on the laptop),
    and the sagemaker-mlflow plugin when it logs to a SageMaker managed tracking server (its ARN); for
    logger=wandb, wandb. Nothing for a job that uses neither."""
    lines = (line.split("#", 1)[0].strip() for line in TRACKING_REQUIREMENTS.read_text().splitlines())
    pins = {_name(line): line for line in lines if line}
    wanted = [pins["mlflow"].replace("mlflow", "mlflow-skinny", 1)] if mlflow else []
    wanted += [pins["sagemaker-mlflow"]] if mlflow and sagemaker_mlflow else []
    return (*wanted, *([pins["wandb"]] if wandb else []))


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def check_pytorch(version: str | None, kind: str) -> None:
    """Refuse an image whose PyTorch the pinned Lightning or torchmetrics do not support."""
    if version is None:
        return
    for package, (pin, lowest) in MIN_TORCH.items():
        if _version_tuple(version) < lowest:
            fix = "pick job.pytorch_version" if kind == "aws" else "pick a newer job.base_image"
            raise ImageError(
                f"{package}=={pin} needs PyTorch >= {'.'.join(map(str, lowest))}, the image has {version}: "
                f"{fix} >= {'.'.join(map(str, lowest))}"
            )


@functools.cache  # this environment's installed packages: the same answer for every image looked up
def pip_install_estimate() -> PipInstall:
    """The requirements' closure less torch's, sized from this environment's installed RECORDs.

    Offline and exact for these pins: the same versions are installed here (`invoke local` runs them).
    Installed size overstates the download (wheels are zip-compressed) and the image may hold some
    of them already, so this is an upper bound.
    """
    from packaging.requirements import Requirement

    def closure(names: list[str]) -> set[str]:
        seen: set[str] = set()
        while names:
            name = names.pop()
            if name in seen:
                continue
            seen.add(name)
            try:
                requires = importlib.metadata.distribution(name).requires or []
            except importlib.metadata.PackageNotFoundError:
                continue
            for text in requires:
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    names.append(_name(req.name))
        return seen

    wanted = [_name(line) for line in training_requirements()]
    packages = closure([n for n in wanted if n != "torch"]) - closure(["torch"])
    size = 0
    for name in packages:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        size += sum(f.size or 0 for f in files)
    return PipInstall(len(packages), size / 1e6)


def newest_pytorch() -> str:
    """The newest PyTorch training image the pinned SageMaker SDK knows."""
    from sagemaker.core import image_uris

    versions = image_uris.config_for_framework(DLC_FRAMEWORK)["training"]["versions"]
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def dlc_accounts() -> dict[str, str]:
    """Region -> the AWS account whose ECR registry serves the PyTorch training and inference
    Deep Learning Containers this tool can choose (PyTorch the pins run on), from the SageMaker
    SDK's image tables: the execution role may pull only from there (terraform/dlc.tf holds the
    same map; a test keeps the two in agreement)."""
    from sagemaker.core import image_uris

    lowest = max(low for _, low in MIN_TORCH.values())  # older images are refused (check_pytorch)
    accounts: dict[str, set[str]] = {}
    for scope in ("training", "inference"):
        for version, table in image_uris.config_for_framework(DLC_FRAMEWORK)[scope]["versions"].items():
            if _version_tuple(version) >= lowest:
                for region, account in table["registries"].items():
                    accounts.setdefault(region, set()).add(account)
    split = {region: sorted(found) for region, found in accounts.items() if len(found) > 1}
    if split:  # one account per region is what the role's grant (and this map) can say
        raise ImageError(f"the SageMaker SDK's PyTorch images come from several accounts in a region: {split}")
    return {region: found.pop() for region, found in sorted(accounts.items())}


def aws_image(region: str, instance_type: str, pytorch_version: str | None) -> JobImage:
    """The AWS PyTorch training container for this region and instance (CPU or GPU flavour)."""
    from sagemaker.core import image_uris

    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    ceiling = NEWEST_PYTORCH_FOR_FAMILY.get(family)
    version = pytorch_version or ceiling or newest_pytorch()
    check_pytorch(version, "aws")
    if ceiling and _version_tuple(version) > _version_tuple(ceiling):
        raise ImageError(
            f"the AWS PyTorch {version} image's CUDA does not run on {instance_type}'s GPUs (newest: {ceiling}); "
            f"use job.pytorch_version={ceiling} or a newer instance family"
        )
    try:
        uri = image_uris.retrieve(
            DLC_FRAMEWORK, region=region, version=version, instance_type=instance_type, image_scope="training"
        )
    except (ValueError, KeyError) as exc:
        why = str(exc).split(". You may need")[0] if str(exc) else type(exc).__name__  # the SDK's reason
        raise ImageError(
            f"no AWS PyTorch {version} training image for {instance_type} in {region} ({why}); "
            "pick another instance, job.pytorch_version, or job.image=custom"
        ) from None
    if uri.split("/", 1)[1].split(":", 1)[0] != DLC_REPOSITORY:
        raise ImageError(
            f"{instance_type} has no AWS PyTorch training image for CPU or GPU (the SDK offers {uri}); "
            "pick a CPU or NVIDIA GPU instance"
        )
    return JobImage("aws", uri, version, pip_install_estimate())


def base_image(cfg: Any, region: str) -> str:
    return str(cfg.job.base_image or DEFAULT_BASE_IMAGE.format(region=region))


def content_tag(base: str) -> str:
    """The custom image's tag: a hash of the files the Dockerfile reads and the base image."""
    digest = hashlib.sha256(base.encode())
    for name in IMAGE_INPUTS:
        digest.update(b"\0" + name.encode() + b"\0" + (ROOT / name).read_bytes())
    return f"deps-{digest.hexdigest()[:12]}"


def custom_image(cfg: Any, repository_url: str, region: str) -> JobImage:
    base = base_image(cfg, region)
    found = re.search(r":(\d+\.\d+(?:\.\d+)?)-", base)  # DLC tags start with the PyTorch version
    version = found.group(1) if found else None
    check_pytorch(version, "custom")
    return JobImage("custom", f"{repository_url}:{cfg.job.image_tag or content_tag(base)}", version)


def job_image(cfg: Any, repository_url: str, region: str) -> JobImage:
    """The image job.image names, refused in one line when the pinned libraries cannot run on it."""
    kind = cfg.job.image
    if kind == "aws":
        return aws_image(region, cfg.instance.type, cfg.job.pytorch_version)
    if kind == "custom":
        return custom_image(cfg, repository_url, region)
    raise ImageError(f"job.image={kind!r}: choose one of {', '.join(IMAGE_KINDS)}")
