"""Hydra launchers of this project, found by Hydra's plugin scan of the `hydra_plugins` namespace.

`hydra/launcher=local` runs a sweep's jobs here one after another; `hydra/launcher=sagemaker`
runs each as a SageMaker training job (project.face.sweep says how `invoke local/train -m` use them).
"""
