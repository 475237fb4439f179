"""``python -m training.precompute JOB.yaml``: the frozen encoders' outputs of every committed shard, once.

A Ray Data job over the job's dataset roots: each encoder actor loads the VAE and the conditioning encoder once
and turns one shard at a time into its features (``training.data.features``), decoded by the trainer's own loader
code, so the features are what the trainer would have computed. Exactly once, as curation: a shard's features
are written under a temporary name and renamed, then its commit marker; a rerun skips committed shards, redoes
the rest, and is a no-op when all are committed. Features made with another model or clip shape are refused.
"""
