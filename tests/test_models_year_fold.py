"""The year fold: validation products of catalogue years few training photos come from judge the fusion too.

Why: in the shared catalog 70% of the photos are from 2011 and season follows the catalogue year more than
the garment, so on products of other years the photo model is far less right than its validation average
says; a fusion chosen on the average trusts it there and falls below the text alone (the outside check:
season 68.3% against the text's 84.7%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import models.ensemble as ensemble
from consumer.cli import app
from models.data import Product, common_years
from models.ensemble import select_pool
from models.evaluate import parse_years
from models.train import _year_groups
from models.training.features import TaskData
from models.training.fusion_fit import row_groups


def test_common_years_cover_half_of_the_photos_from_the_most_common_year_down() -> None:
    shared_like = [2011] * 70 + [2012] * 7 + [2015] * 7 + [2016] * 11 + [2013] * 5 + [None] * 40
    assert common_years(shared_like) == {2011}
    assert common_years([2011] * 40 + [2012] * 35 + [2016] * 25) == {2011, 2012}
    assert common_years([2014, 2015, 2016, 2017]) == {2014, 2015}  # ties: the earlier year first
    assert common_years([None, None]) == frozenset()
    assert common_years([]) == frozenset()


def test_year_groups_name_only_validation_products_of_rare_years() -> None:
    def prod(i: int, year: int | None) -> Product:
        return Product(id=str(i), labels={}, title=f"t{i}", year=year)

    train = [prod(i, 2011) for i in range(8)] + [prod(10 + i, 2016) for i in range(3)]
    val = [prod(100, 2011), prod(101, 2016), prod(102, None), prod(103, 2012)]
    catalogs = [{"train": train, "val": val, "test": [prod(200, 2017)]}]
    photos = TaskData("image", 0, [p.id for p in train], np.zeros((len(train), 1)), np.zeros((len(train), 1)))
    groups, record = _year_groups(catalogs, [photos])
    assert groups == {(0, "101"): "rare-year", (0, "103"): "rare-year"}  # no year: no group of its own
    assert record == {"common_years": [2011], "rare_year_products": 2, "val_products": 4}


def _source(rng: np.random.Generator, y: np.ndarray, right: np.ndarray, k: int, conf_right: float | np.ndarray,
            conf_wrong: float | np.ndarray) -> np.ndarray:
    """Probabilities whose top answer is ``y`` where ``right`` (else another class), with those confidences."""
    pred = np.where(right, y, (y + 1 + rng.integers(0, k - 1, len(y))) % k)
    conf = np.where(right, conf_right, conf_wrong)
    p = np.repeat(((1 - conf) / (k - 1))[:, None], k, 1)
    p[np.arange(len(y)), pred] = conf
    return p


def test_a_pool_that_loses_to_the_text_on_rare_years_is_not_chosen() -> None:
    """Common years: the text is right 90% of the time but hesitant, the photo right 85% and confident when right,
    so a pool beats both. Rare years (10% of the rows): the photo is right 10% of the time and just as confident
    when wrong. Judged on all rows at once the pool wins and throws the rare years away; with the rare years
    as a group of their own the fusion stays with the text there (within one product)."""
    rng = np.random.default_rng(1)
    k, n_common, n_rare = 4, 1080, 120
    y = rng.integers(0, k, n_common + n_rare)
    rare = np.arange(len(y)) >= n_common
    text_right = rng.random(len(y)) < 0.9
    text = _source(rng, y, text_right, k, 0.3, 0.3)
    image_right = rng.random(len(y)) < np.where(rare, 0.1, 0.85)
    image = _source(rng, y, image_right, k, 0.9, np.where(rare, 0.9, 0.4))
    groups = np.where(rare, "as-is/rare-year", "as-is")

    def hits(sel: object, rows: np.ndarray) -> int:
        return int((sel.oof.argmax(1) == y)[rows].sum())  # type: ignore[attr-defined]

    text_rare, text_common = int(text_right[rare].sum()), int(text_right[~rare].sum())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ensemble, "pool_is_proven", lambda wins, losses: True)  # the groups alone, no proof asked
        blind = select_pool([text, image], y, ["text", "image"])
        guarded = select_pool([text, image], y, ["text", "image"], groups=list(groups))
    assert hits(blind, rare) < text_rare // 2  # the average hides the rare years' loss
    assert hits(guarded, rare) >= text_rare - 1
    assert hits(guarded, ~rare) >= text_common - 1  # and still never below the text on the common years
    # the proof a pool must give (models.ensemble.pool_is_proven) refuses it too, without the groups: the
    # common years' gain is eaten by the rare years' loss
    proven = select_pool([text, image], y, ["text", "image"])
    assert hits(proven, rare) >= text_rare - 1
    assert {"hits:as-is", "hits:as-is/rare-year"} <= set(guarded.scores[guarded.params.kind])


def test_parse_years_and_the_evaluate_flag_refuse_nonsense(tmp_path: Path) -> None:
    assert parse_years("2012,2015-2017") == {2012, 2015, 2016, 2017}
    assert parse_years(" 2019 ") == {2019}
    for bad in ("2017-2015", "twenty", "2012,", "2012-"):
        with pytest.raises(ValueError, match="years"):
            parse_years(bad)
    res = CliRunner().invoke(app, ["evaluate", "--bundle", str(tmp_path), "--catalog", str(tmp_path),
                                   "--years", "2017-2015"])
    assert res.exit_code == 2 and "--years" in res.output


def test_only_fits_with_the_photo_as_a_source_group_their_rows_by_year() -> None:
    rows = [((0, "1"), ""), ((0, "2"), ""), ((0, "1"), "squash"), ((0, "2"), "letterbox")]
    years = {(0, "2"): "rare-year"}
    assert row_groups(rows, ["text", "image"], years) == ["as-is", "as-is/rare-year", "squash", "letterbox/rare-year"]
    assert row_groups(rows, ["image"], years) == ["as-is", "as-is/rare-year", "squash", "letterbox/rare-year"]
    assert row_groups(rows[:2], ["text"], years) == ["as-is", "as-is"]
