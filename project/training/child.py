"""`invoke local`'s training process: `python -m project.training.child <overrides>` (project.training.local).

It starts listening for the check's word before it imports torch and Lightning, so the data
files the check verified are read and decompressed on a second core while the imports run
(project.training.resolve.Resolved.warm); then it is project.training.train's main.
"""

import sys

from project.training import deferred_imports, local

if __name__ == "__main__":
    local.listen()
    deferred_imports.install()  # before Lightning imports torchmetrics (project/training/deferred_imports.py)
    from project.training.train import main  # the heavy imports, overlapped with the listener's work

    sys.exit(main())
