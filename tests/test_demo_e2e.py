"""`enrich demo` as the README's `make demo` runs it: a separate process, nothing given but a cache dir.

It generates the sample catalog, trains the demo bundle with `enrich train`'s code path, starts its own
embedded broker and image server, streams the events through the real consumer service and prints the
summary. The demo raises (exit code 1) if an output or a dead letter is missing, so exit code 0 already
means nothing was lost; the test also reads the summary it printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_enrich_demo_runs_end_to_end_from_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "demo", "--cache-dir", str(cache), "--products", "80"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert (cache / "sample-catalog" / "styles.csv").is_file()
    assert (cache / "demo-bundle" / "manifest.json").is_file()  # trained by `enrich train`'s code path

    enriched, tombstones = map(int, re.search(r"enriched / tombstones\s*│?\s*(\d+) / (\d+)", output).groups())
    dead = int(re.search(r"dead-lettered\s*│?\s*(\d+)", output).group(1))
    events_in = int(re.search(r"events in\s*│?\s*(\d+)", output).group(1))
    assert enriched >= 70 and tombstones > 0 and dead > 0  # the demo mixes deletes and invalid events in
    # an upsert still in flight when its product's delete arrives is superseded: answered without an output
    skipped = int(re.search(r"superseded / stale \(no output\)\s*│?\s*(\d+)", output).group(1))
    assert events_in == enriched + tombstones + dead + skipped
    # the demo model agrees with the synthetic catalog's labels on colour where it answers
    colour = re.search(r"color\s*│?\s*(\d+)\s*│?\s*([\d.]+)%\s*│?\s*([\d.]+)%", output)
    assert colour is not None, output[-4000:]
    assert float(colour.group(2)) > 50 and float(colour.group(3)) > 80
