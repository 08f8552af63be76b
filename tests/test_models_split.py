"""SplitSpec: the random split, the strict time split and the time split whose later years are shared by
validation and test (``--split-years VAL_FROM``)."""

from __future__ import annotations

from collections import Counter

import pytest

from models.data import SplitSpec
from models.training.config import TrainConfig


def test_the_strict_time_split_follows_the_year_only() -> None:
    spec = SplitSpec("year", 0, (0.8, 0.1, 0.1), 2013, 2016)
    assert [spec.of("p1", y) for y in (2012, 2013, 2015, 2016, 2019)] == ["train", "val", "val", "test", "test"]
    assert spec.of("p1", None) == SplitSpec().of("p1", None)  # no year: the hash split, nothing is lost


def test_a_single_split_year_shares_the_later_years_between_validation_and_test() -> None:
    spec = SplitSpec("year", 7, (0.8, 0.1, 0.1), 2013, None)
    assert {spec.of(str(i), 2012) for i in range(500)} == {"train"}  # the models learn from earlier years only
    later = Counter(spec.of(str(i), 2013 + i % 7) for i in range(4000))
    assert set(later) == {"val", "test"}
    assert abs(later["val"] - later["test"]) < 250  # 1:1, as fractions 0.1 : 0.1
    by_year = {y: Counter(spec.of(str(i), y) for i in range(1000)) for y in (2013, 2019)}
    assert all(c["val"] > 400 and c["test"] > 400 for c in by_year.values())  # every later year in both
    assert spec.of("p9", 2017) == spec.of("p9", 2017)  # stable
    assert SplitSpec("year", 8, (0.8, 0.1, 0.1), 2013, None).of("p9", 2017) in ("val", "test")


def test_the_split_round_trips_through_the_manifest() -> None:
    for spec in (SplitSpec(), SplitSpec("year", 3, (0.8, 0.1, 0.1), 2013, 2016),
                 SplitSpec("year", 3, (0.8, 0.1, 0.1), 2014, None)):
        assert SplitSpec.from_json(spec.to_json()) == spec
    assert SplitSpec.from_json({"method": "year", "val_from": 2013, "test_from": None}).test_from is None
    assert SplitSpec.from_json(None) == SplitSpec()  # an old manifest without a split


@pytest.mark.parametrize(("years", "bounds"), [("2013,2016", (2013, 2016)), ("2013", (2013, None)),
                                               ("2014,2014", (2014, 2014))])
def test_split_years_accepts_one_or_two_years(years: str, bounds: tuple[int, int | None]) -> None:
    assert TrainConfig(split="year", split_years=years).split_bounds() == bounds


@pytest.mark.parametrize("years", ["2016,2013", "", "2013,2014,2015", "twenty", "2013,"])
def test_split_years_refuses_anything_else(years: str) -> None:
    with pytest.raises(ValueError, match="split_years"):
        TrainConfig(split_years=years)
