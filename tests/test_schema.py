"""Name escaping and file naming: reversible, and never a path."""

from __future__ import annotations

import random

import pytest

from prov4ml_hpc import schema


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "/etc/passwd",
        "../../x",
        "loss val",
        "ünïcødé",
        "%",
        "%-",
        "%2F",
        "x" * 5000,
        "a.b.c",
        "tab\there",
        "nul\x00byte",
        "emoji😀",
        "\udcff",
    ],
)
def test_escape_round_trip_and_safety(name):
    esc = schema.escape_name(name)
    assert schema.unescape_name(esc) == name
    assert "/" not in esc and "." not in esc and esc not in ("", ".", "..")


def test_escape_is_injective_on_random_strings():
    rng = random.Random(7)
    alphabet = "ab/.%-_ é😀\x00"
    seen = {}
    for _ in range(5000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        e = schema.escape_name(s)
        assert seen.setdefault(e, s) == s
        assert schema.unescape_name(e) == s


def test_rank_file_names():
    assert schema.rank_file_name(7) == "rank-00007.h5"
    assert schema.rank_file_name(7, 2) == "rank-00007.attempt-2.h5"
    assert schema.parse_rank_file_name("rank-00007.attempt-2.h5") == (7, 2)
    assert schema.parse_rank_file_name("rank-123456.h5") == (123456, 0)
    assert schema.parse_rank_file_name("rank-7.h5") is None
    assert schema.parse_rank_file_name("rank-00007.h5.tmp") is None
