"""One strict parser for every PROV4ML_HPC_* variable: the same value means the same everywhere, or fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import prov4ml_hpc as p4
from prov4ml_hpc import settings
from prov4ml_hpc.errors import ConfigError

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


@pytest.mark.parametrize(
    ("name", "raw", "value"),
    [
        (settings.SYSTEM_METRICS, None, True),
        (settings.SYSTEM_METRICS, "", True),
        (settings.SYSTEM_METRICS, " Off ", False),
        (settings.SYSTEM_METRICS, "YES", True),
        (settings.SYSTEM_METRICS, False, False),
        (settings.SAMPLE_INTERVAL, "0", 0.0),
        (settings.SAMPLE_INTERVAL, "OFF", 0.0),
        (settings.SAMPLE_INTERVAL, "2.5", 2.5),
        (settings.SAMPLE_INTERVAL, 0.1, 0.1),
        (settings.BUFFER_ROWS, "100", 100),
        (settings.ATTEMPT, "0", 0),
        (settings.ATTEMPT, None, None),
        (settings.LOG_LEVEL, "info", "info"),
        (settings.HOOK, "ALL", "all"),
    ],
)
def test_parse_accepts(name, raw, value):
    got = settings.parse(name, raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        (settings.SYSTEM_METRICS, "flase"),
        (settings.SYSTEM_METRICS, "2"),
        (settings.GATHER, "maybe"),
        (settings.COPY_ARTIFACTS, "enabled"),
        (settings.SAMPLE_INTERVAL, "-1"),
        (settings.SAMPLE_INTERVAL, "nan"),
        (settings.SAMPLE_INTERVAL, "inf"),
        (settings.SAMPLE_INTERVAL, "soon"),
        (settings.FLUSH_INTERVAL, "0"),
        (settings.BUFFER_ROWS, "1.5"),
        (settings.BUFFER_ROWS, "0"),
        (settings.BUFFER_ROWS, True),
        (settings.ATTEMPT, "-1"),
        (settings.GATHER_TIMEOUT, "-3"),
        (settings.LOG_LEVEL, "loud"),
        (settings.HOOK, "yes please"),
    ],
)
def test_parse_rejects_with_the_name_and_the_value(name, raw):
    with pytest.raises(ConfigError) as err:
        settings.parse(name, raw)
    assert name in str(err.value) and repr(raw) in str(err.value)


def test_every_variable_the_package_reads_is_in_the_table():
    root = Path(settings.__file__).parent
    import re

    used = set()
    for path in root.rglob("*.py"):
        used |= set(re.findall(r"PROV4ML_HPC_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    # names that are shell variables of the rendered job scripts, not settings read by Python
    shell_only = {"PROV4ML_HPC_SITE", "PROV4ML_HPC_MERGE", "PROV4ML_HPC_MERGE_DIR", "PROV4ML_HPC_RUN_ID_"}
    assert used - shell_only <= set(settings.SETTINGS), sorted(used - shell_only - set(settings.SETTINGS))


def test_a_bad_switch_stops_start_run_before_any_file_exists(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.SYSTEM_METRICS, "flase")
    with pytest.raises(ConfigError, match="PROV4ML_HPC_SYSTEM_METRICS='flase'"):
        p4.start_run("exp", str(tmp_path), run_id="r")
    assert not (tmp_path / "exp").exists()
    assert p4.active_run() is None


@pytest.mark.parametrize(
    "name",
    [
        settings.SAMPLE_GPU,
        settings.SAMPLE_ENERGY,
        settings.GATHER,
        settings.GATHER_TIMEOUT,
        settings.ENERGY_INTERVAL,
        settings.COPY_ARTIFACTS,
    ],
)
def test_every_optional_part_is_checked_at_start(tmp_path, monkeypatch, name):
    monkeypatch.setenv(name, "bogus")
    with pytest.raises(ConfigError, match=name):
        p4.start_run("exp", str(tmp_path), run_id="r")
    assert p4.active_run() is None


def test_docs_table_is_generated_from_the_settings():
    out = subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc", "settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == settings.markdown_table()
    assert settings.markdown_table() in DOC.read_text()


def test_settings_command_shows_current_values_and_errors():
    env = {settings.SYSTEM_METRICS: "flase", settings.BUFFER_ROWS: "100"}
    out = subprocess.run(
        [sys.executable, "-m", "prov4ml_hpc", "settings"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**__import__("os").environ, **env},
    )
    assert out.returncode == 1, out.stderr
    assert "PROV4ML_HPC_BUFFER_ROWS='100' -> 100" in out.stdout
    assert "PROV4ML_HPC_SYSTEM_METRICS='flase' -> ERROR" in out.stdout
