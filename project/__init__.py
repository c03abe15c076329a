"""Train a Lightning model locally or on SageMaker with the same code and config (README).

Importing it runs nothing: the training entries (project.training.child, sm_entry.py) install what their
process needs themselves (project.training.deferred_imports).
"""
