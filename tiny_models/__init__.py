"""Tiny, randomly initialised models for tests and the demo, saved in the formats the real loaders read.

Not part of the product: the product packages load real models and these through the same code. ``curation_models``
builds the curation model stages' models, ``cinema_checkpoints`` the frozen parts of the model's tiny and mid presets.
"""
