"""CPU budget detection: cgroup v2 and v1 quota files, no quota, and the affinity mask as the upper bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.ops.cpus import available_cpus, cgroup_cpu_quota
from consumer.ops.settings import Settings


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.0


def test_cgroup_v1_unlimited_and_missing(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_available_cpus_rounds_quota_up_and_never_exceeds_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU -> 1 thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 8) * 100000} 100000\n")  # quota above the mask
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("garbage\n")
    assert available_cpus(tmp_path) == affinity


def test_torch_threads_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_TORCH_THREADS", "3")
    assert Settings().torch_threads == 3
    monkeypatch.setenv("ENRICH_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads"):
        Settings()
