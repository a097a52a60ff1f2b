"""A rank summary file's JSON read with its trend's series parsed only when asked for (most of the file's text).

Diagnosis of 1024 ranks reads every summary and uses four of a trend's ten series: parsing every number of every
series took 0.4 s of it. The trend is split into its series' texts (a regular expression that accepts only what
json.dump writes: keys without '}' and lists of numbers); anything else is parsed whole. A series whose numbers
do not parse when asked for raises ValueError naming it (the file was written whole, atomically: only a file
edited by hand gets there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

# a list of what numbers are made of (digits, signs, points, exponents, NaN, Infinity): a number's own form is
# checked when the series is parsed (a regular expression of each number cost as much as json's parse)
_SERIES = re.compile(r'"([^"\\}]*)":(\[[-+0-9.eEINafinty,]*\]|-?\d+)([,}])')
_TREND_KEY = '"trend":{'  # a key: inside a JSON string every quote is escaped


class LazyTrend(Mapping):
    """A trend (name -> list of numbers, and "stride" -> int) whose series are parsed from their text on first use."""

    def __init__(self, texts: dict[str, str]):
        self._texts = texts
        self._values: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self._values:
            try:
                self._values[name] = json.loads(self._texts[name])
            except ValueError:
                raise ValueError(f"a rank summary's trend series {name!r} is not a list of numbers: "
                                 f"{self._texts[name][:80]}") from None
        return self._values[name]

    def __contains__(self, name) -> bool:
        return name in self._texts

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def length(self, name: str) -> int | None:
        """How many values a series holds (None: not a list), without parsing it."""
        text = self._texts[name]
        if not text.startswith("["):
            return None
        return 0 if text == "[]" else text.count(",") + 1


def _trend_texts(text: str, start: int) -> tuple[dict[str, str], int] | None:
    """({name: its value's text}, index just past the trend's closing brace), or None if it is not json.dump's
    plain form."""
    texts, pos = {}, start
    while True:
        m = _SERIES.match(text, pos)
        if m is None:
            return None
        texts[m.group(1)] = m.group(2)
        pos = m.end()
        if m.group(3) == "}":
            return texts, pos


def loads(text: str) -> dict:
    """A summary's JSON object; its "trend", when written as json.dump writes it, a LazyTrend."""
    i = text.find(_TREND_KEY)
    found = _trend_texts(text, i + len(_TREND_KEY)) if i >= 0 and text.count(_TREND_KEY) == 1 else None
    if found is None:
        return json.loads(text)
    texts, end = found
    summary = json.loads(text[:i] + '"trend":null' + text[end:])
    if isinstance(summary, dict) and "trend" in summary:
        summary["trend"] = LazyTrend(texts)
    return summary


def series_lengths(trend) -> dict[str, int | None]:
    """name -> how many values each series of a trend (a dict or a LazyTrend) holds (None: not a list)."""
    if isinstance(trend, LazyTrend):
        return {k: trend.length(k) for k in trend}
    return {k: len(v) if isinstance(v, list) else None for k, v in trend.items()}
