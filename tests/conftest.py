"""Shared pytest fixtures: a real tansu broker, a synthetic catalog and a loopback image server.

Session-scoped where start-up costs something (broker ~0.2 s, catalog ~2 s), so the whole suite pays once;
tests isolate themselves with unique topic and group names instead of fresh brokers. Add new shared
fixtures in their own section below, one job each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.devtools.embedded_broker import EmbeddedBroker
from consumer.devtools.image_server import ImageServer
from models.catalog.synthetic import generate_catalog

#: Big enough for the end-to-end tests (they take up to 180 products) and every article/pattern to appear.
SAMPLE_PRODUCTS = 240
SAMPLE_SEED = 7


# ------------------------------------------------------------------------------------------ broker
@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One in-memory tansu broker for the session; use unique topic/group names per test."""
    with EmbeddedBroker() as embedded:
        yield embedded


# ----------------------------------------------------------------------------------------- catalogs
@pytest.fixture(scope="session")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """styles.csv of a synthetic catalog (seed 7, 240 products, 256 px photos) shared by the session."""
    return generate_catalog(tmp_path_factory.mktemp("sample-catalog"), n_products=SAMPLE_PRODUCTS, seed=SAMPLE_SEED)


@pytest.fixture
def tmp_catalog(tmp_path: Path) -> Path:
    """A small, private synthetic catalog (30 products, 96 px photos) a test may modify."""
    return generate_catalog(tmp_path / "catalog", n_products=30, seed=11, image_size=96)


# -------------------------------------------------------------------------------------- image server
@pytest.fixture(scope="session")
def image_server(sample_catalog: Path) -> Iterator[ImageServer]:
    """Loopback HTTP server for ``sample_catalog``'s photos (``base_url + /images/<id>.jpg``)."""
    with ImageServer(sample_catalog.parent / "images") as server:
        yield server


# -------------------------------------------------------------------------------------- model bundle
#: A small bundle trained by the real `enrich train` code path: tiny CNN trunk, the packaged MiniLM with
#: its top layer fine-tuned, a few epochs. Real forward passes, trained in well under a minute on 2 cores.
TINY_BUNDLE_CONFIG = {
    "image_backbone": "tiny",
    "image_size": 64,
    "text_max_len": 32,
    "text_train_layers": 1,
    "wide_buckets": 4096,
    "epochs": 4,
    "max_minutes": 1.5,
    "batch_size": 32,
    "min_class_count": 3,
}


@pytest.fixture(scope="session")
def tiny_bundle(sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained on ``sample_catalog`` for the service tests.

    ``ENRICH_TEST_BUNDLE=DIR`` reuses a bundle trained earlier with this configuration (local iteration).
    """
    from models.train import train_command

    reuse = os.environ.get("ENRICH_TEST_BUNDLE")
    if reuse and (Path(reuse) / "manifest.json").is_file():
        return Path(reuse)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_command(catalog=[str(sample_catalog)], out=str(out), name="enrich-test", seed=0, progress=False,
                  **TINY_BUNDLE_CONFIG)
    return out
