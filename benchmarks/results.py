"""Where the benchmarks leave their numbers: ``out/bench/NAME.json`` under the checkout, one file per benchmark
(``curation plan`` reads curation.json and model_stages.json from there)."""

from __future__ import annotations

import json
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "out" / "bench"


def write_result(name: str, result: dict, path: Path | None = None) -> Path:
    """``result`` as indented JSON to ``path`` (default: out/bench/NAME.json); the path written."""
    path = Path(path) if path is not None else BENCH_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path
