"""The bottom storey, Pure: names, errors, the config, the run's topology and identity, the run
layout, process plumbing. It imports nothing of ours above it (pyproject.toml's import contracts)
and nothing heavy: the laptop, the container and the sandbox all stand on it."""
