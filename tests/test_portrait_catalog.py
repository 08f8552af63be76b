"""bench/portrait_catalog.py (documented in docs/models.md) writes a split's photos at a 3:4 shape."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_portrait_catalog_writes_the_split_at_the_new_shape(tmp_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "portrait"
    subprocess.run([sys.executable, str(ROOT / "bench" / "portrait_catalog.py"), "--catalog", str(tmp_catalog),
                    "--out", str(out), "--split", "all", "--size", "60x80"], check=True, cwd=ROOT)
    with tmp_catalog.open(newline="") as f:
        source = [r for r in csv.DictReader(f) if r["image"]]
    with (out / "styles.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["id"] for r in written] == [r["id"] for r in source]
    assert {Image.open(out / r["image"]).size for r in written} == {(60, 80)}
