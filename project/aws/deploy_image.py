"""Which AWS PyTorch inference image serves a run's model.ts, and why (deploy and batch-predict)."""

from __future__ import annotations

import re
from typing import Any

from project.aws.deploy_requests import DeployError, Echo, Source
from project.serving import archive as serving


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a PyTorch version ('2.13.0+cpu' -> (2, 13)): what TorchScript compatibility follows."""
    major, minor = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    return int(major), int(minor)


def inference_version(exported: str | None, requested: str | None, known: list[str], what: str) -> tuple[str, str]:
    """The PyTorch inference image version for a model.ts saved by `exported`, and why (a `warning: `
    line when it is older than `exported`).

    TorchScript loads in the PyTorch that saved it or a newer one; an older one may not know a newer
    operator, and the endpoint would fail only after minutes of Creating. By default the newest image
    the SageMaker SDK knows (`known`: its major.minor versions) serves it. An export newer than every
    image is served there too, with a warning that says what to do if it fails: the models of the
    standard layers load in older versions (the built-in CNN's model.ts saved by 2.13 gives the same
    answers under 2.6), and refusing them would block every model trained with a current PyTorch.
    deploy.framework_version (`requested`) chooses the image.
    """
    newest = max(known, key=_release)
    if requested is not None:
        if _release(requested) not in {_release(v) for v in known}:
            raise DeployError(
                f"deploy.framework_version={requested}: the SageMaker SDK has no PyTorch inference image of that "
                f"version (newest: {newest}); pick one it has, or null to choose by the export"
            )
        if exported is not None and _release(requested) < _release(exported):
            return requested, (
                f"warning: {what} was saved by PyTorch {exported} and is served on PyTorch {requested} "
                "(deploy.framework_version): if the endpoint fails to load it, train it with that PyTorch"
            )
        return requested, f"PyTorch {requested} (deploy.framework_version)"
    if exported is None:
        return newest, f"PyTorch {newest}, the newest image; {what} does not record which PyTorch saved it"
    if _release(exported) > _release(newest):
        return newest, (
            f"warning: {what} was saved by PyTorch {exported}, newer than every PyTorch inference image the "
            f"SageMaker SDK knows; it is served on the newest, {newest}, where standard layers load: if the "
            f"endpoint fails to load it, train the model with PyTorch <= {newest} (job.pytorch_version={newest})"
        )
    return newest, f"PyTorch {newest}, the newest image (>= PyTorch {exported}, which saved {what})"


def known_inference_versions() -> list[str]:
    """The PyTorch inference images the pinned SageMaker SDK knows, as major.minor (its version aliases)."""
    from sagemaker.core import image_uris

    config = image_uris.config_for_framework("pytorch")["inference"]
    return list(config.get("version_aliases") or config["versions"])


def serving_image(region: str, dc: Any, instance: str | None, source: Source) -> tuple[str, str]:
    """The region's AWS PyTorch inference image for this source's model.ts (as the SageMaker SDK looks
    it up), and the line that says which PyTorch it has and why."""
    from sagemaker.core import image_uris

    requested = None if dc.framework_version is None else str(dc.framework_version)
    what = f"{source.name}'s {serving.TORCHSCRIPT_FILE}"
    version, why = inference_version(source.exported_by, requested, known_inference_versions(), what)
    uri = image_uris.retrieve(
        "pytorch",
        region=region,
        version=version,
        instance_type=instance or "ml.m5.large",  # serverless runs on CPU
        image_scope="inference",
    )
    return uri, why


def echo_image(image: str, why: str, echo: Echo) -> None:
    echo(f"image: {image}" + (f"\n{why}" if why.startswith("warning: ") else f" ({why})"))
