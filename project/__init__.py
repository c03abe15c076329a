"""Train a Lightning model locally or on SageMaker with the same code and config (README)."""

from . import deferred_imports

# Every process that imports the project (the training process, each rank of a job, `invoke`)
# keeps torchmetrics' scipy.signal import, 0.8 s of start-up, for when it is used.
deferred_imports.install()
