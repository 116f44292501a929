"""
Tests for L{gateway.core.units}: the value syntaxes of the INI file.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.units import parseBool, parseDuration, parseList, parseSize


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("30d", 2592000.0),
        ("30", 30.0),
        ("1.5", 1.5),
        ("1.5s", 1.5),
        (".25s", 0.25),
        ("0", 0.0),
        (" 5s ", 5.0),
        ("5 s", 5.0),
        ("2H", 7200.0),
        ("250MS", 0.25),
    ],
)
def test_durationsInEveryUnit(text: str, seconds: float) -> None:
    assert parseDuration(text) == pytest.approx(seconds)


def test_durationErrorNamesTheSpellings() -> None:
    with pytest.raises(
        ValueError,
        match=r"^'5x' is not a duration \(use 500ms, 5s, 10m, 1h or seconds\)$",
    ):
        parseDuration("5x")


def test_negativeDurationSaysNegative() -> None:
    with pytest.raises(
        ValueError, match=r"^'-5s' is negative: a duration must be 0 or more$"
    ):
        parseDuration("-5s")


@pytest.mark.parametrize(
    "text", ["", "s", "5 x", "1e3", "nan", "inf", "5s5", "1w", "1..5", "5 ms s"]
)
def test_garbageIsNotADuration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parseDuration(text)


def test_absurdlyLongDurationIsRefused() -> None:
    with pytest.raises(ValueError, match="too long"):
        parseDuration("9" * 400 + "h")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16k", 16384),
        ("16K", 16384),
        ("1m", 1024**2),
        ("1G", 1024**3),
        ("1024", 1024),
        ("0", 0),
        (" 8 k ", 8192),
    ],
)
def test_sizesInEveryUnit(text: str, size: int) -> None:
    assert parseSize(text) == size


def test_sizeErrorNamesTheSpellings() -> None:
    with pytest.raises(
        ValueError, match=r"^'16x' is not a size \(use 16k, 1m, 1g or bytes\)$"
    ):
        parseSize("16x")


@pytest.mark.parametrize("text", ["", "1.5k", "k", "16kb", "1t"])
def test_garbageIsNotASize(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parseSize(text)


def test_negativeSizeSaysNegative() -> None:
    with pytest.raises(ValueError, match="negative"):
        parseSize("-1k")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True),
        ("yes", True),
        ("true", True),
        ("1", True),
        ("ON", True),
        (" True ", True),
        ("off", False),
        ("no", False),
        ("false", False),
        ("0", False),
        ("Off", False),
    ],
)
def test_booleanSpellings(text: str, value: bool) -> None:
    assert parseBool(text) is value


def test_booleanErrorNamesTheSpellings() -> None:
    with pytest.raises(
        ValueError,
        match=r"^'maybe' is not a boolean \(use on/off, yes/no, true/false or 1/0\)$",
    ):
        parseBool("maybe")


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("a, b,c", ("a", "b", "c")),
        ("a,,b,", ("a", "b")),
        ("", ()),
        (" , ", ()),
        ("one", ("one",)),
        ("a,\n  b\n  c, d", ("a", "b", "c", "d")),
    ],
)
def test_listsAreStrippedAndEmptiesDropped(text: str, items: tuple[str, ...]) -> None:
    assert parseList(text) == items


@given(
    st.integers(min_value=0, max_value=10**9), st.sampled_from(["ms", "s", "m", "h"])
)
def test_wholeDurationsScaleByTheirUnit(number: int, unit: str) -> None:
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parseDuration(f"{number}{unit}") == pytest.approx(number * scale)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_bareNumbersAreSeconds(seconds: float) -> None:
    assert parseDuration(f"{seconds:.17f}") == pytest.approx(seconds)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "k", "m", "g"]))
def test_sizesScaleByPowersOf1024(number: int, unit: str) -> None:
    assert parseSize(f"{number}{unit}") == number * 1024 ** ["", "k", "m", "g"].index(
        unit
    )


@given(st.text())
def test_parsersRaiseOnlyValueError(text: str) -> None:
    """
    Whatever an operator types, the answer is a value or a message that
    quotes what was typed: never another exception, never inf or nan.
    """
    for parse in (parseDuration, parseSize, parseBool):
        message = None
        try:
            value = parse(text)
        except ValueError as e:
            message = e.args[0]
        if message is not None:
            assert repr(text.strip()) in message
        else:
            assert not isinstance(value, float) or math.isfinite(value)


@given(st.lists(st.text(alphabet="abc ,\n", max_size=5)))
def test_listItemsNeverContainSeparators(chunks: list[str]) -> None:
    items = parseList(",".join(chunks))
    for item in items:
        assert item
        assert item == item.strip()
        assert "," not in item
        assert "\n" not in item
