"""The model registry as AWS keeps it: UpdateModelPackage adds to CustomerMetadataProperties.

moto's UpdateModelPackage sets the version's properties to the request's, so an approval (which
sends none) erases what `invoke register` recorded (run, metrics, gate). AWS documents the
parameter as "the metadata properties associated with the model package versions" to add or
update, and CustomerMetadataPropertiesToRemove as the way to remove one: the patch merges.
"""

from __future__ import annotations

from typing import Any

from project.sandbox.patches import MethodPatch


class MergedMetadataUpdates(MethodPatch):
    """While entered, UpdateModelPackage merges CustomerMetadataProperties into the version's."""

    def target(self) -> tuple[type, str, Any]:
        from moto.sagemaker.models import SageMakerModelBackend

        original = SageMakerModelBackend.update_model_package

        def update_model_package(backend: Any, model_package_arn: str, *args: Any, **kwargs: Any) -> Any:
            name = backend.model_package_name_mapping.get(model_package_arn, model_package_arn)
            package = backend.model_packages.get(name)
            kept = dict(getattr(package, "customer_metadata_properties", None) or {})
            given = kwargs.get("customer_metadata_properties")
            kwargs["customer_metadata_properties"] = {**kept, **(given or {})}
            return original(backend, model_package_arn, *args, **kwargs)

        return SageMakerModelBackend, "update_model_package", update_model_package
