"""`invoke local`'s training process: `python -m project.child <overrides>` (project.local).

It starts listening for the check's word before it imports torch and Lightning, so the data
files the check verified are read and decompressed on a second core while the imports run
(project.resolve.Resolved.warm); then it is project.train's main.
"""

import sys

from project import deferred_imports, local

if __name__ == "__main__":
    local.listen()
    deferred_imports.install()  # before Lightning imports torchmetrics (project/deferred_imports.py)
    from project.train import main  # the heavy imports, overlapped with the listener's work

    sys.exit(main())
