"""The subscriber install: a fresh virtual environment with `pip install enrich` (no extras) reads events.

It must import the reader, decode every example, answer `enrich tail --help` and hold no torch, aiohttp or
transformers. Installs from the package index like a subscriber would (about 30 s with a warm pip cache).
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICE_ONLY = ("torch", "torchvision", "transformers", "aiohttp", "numpy", "PIL", "sklearn", "pydantic_settings")

CHECK = f"""
import importlib.util, json, sys
from schemas import EXAMPLES_DIR
from schemas.models import decode, DeadLetter, EnrichedEvent, Tombstone
from consumer.subscribe.reader import Reader, Start
from consumer.subscribe.materialize import open_db, facets
kinds = []
for name in ("attributes-enriched.v1", "dead-letter.v1"):
    for path in sorted((EXAMPLES_DIR / name).glob("*.json")):
        kinds.append(type(decode(path.read_bytes())).__name__)
kinds.append(type(decode(None, key=b"SKU-1", headers=[("enrich.source.topic", b"products"),
    ("enrich.source.partition", b"0"), ("enrich.source.offset", b"1")])).__name__)
present = [m for m in {SERVICE_ONLY!r} if importlib.util.find_spec(m) is not None]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {SERVICE_ONLY!r} + ("models",))
print(json.dumps({{"kinds": kinds, "present": present, "loaded": loaded}}))
"""


@pytest.mark.slow
def test_base_install_reads_events_without_torch(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python, enrich = env / "bin" / "python", env / "bin" / "enrich"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(REPO)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([python, "-c", CHECK], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    report = json.loads(check.stdout.splitlines()[-1])
    assert report["present"] == [] and report["loaded"] == []
    assert report["kinds"].count("EnrichedEvent") == 3 and report["kinds"].count("DeadLetter") == 6
    assert report["kinds"][-1] == "Tombstone"
    tail = subprocess.run([enrich, "tail", "--help"], capture_output=True, text=True, timeout=60)
    assert tail.returncode == 0 and "--since" in tail.stdout
    run = subprocess.run([enrich, "run"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "enrich[service]" in run.stderr
    frozen = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    names = {line.split("==")[0].lower() for line in frozen.splitlines()}
    assert not names & {"torch", "torchvision", "transformers", "aiohttp", "numpy", "pillow"}, sorted(names)
