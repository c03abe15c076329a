"""The middle storey, Serving: what a trained model answers with. The archive a model is served
from (the handler ships alone in model.tar.gz: inference.py imports nothing of ours), the photo
preprocessing, and `invoke predict` on a local run. Below training: a run writes its archive."""
