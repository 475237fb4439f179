"""python -m tiny_models OUT_DIR: every tiny model, under OUT_DIR/curation (the model stages') and OUT_DIR/cinema
(the tiny and mid presets' frozen parts: pass it as model.checkpoints or --checkpoints)."""

import sys
from pathlib import Path

from .cinema_checkpoints import save_tiny_checkpoints
from .curation_models import save_tiny_models

if len(sys.argv) != 2:
    sys.exit("usage: python -m tiny_models OUT_DIR")
out = Path(sys.argv[1])
for name, path in save_tiny_models(out / "curation").items():
    print(f"{name}: {path}")
print(f"cinema presets' frozen parts: {save_tiny_checkpoints(out / 'cinema')}")
