"""ISO-8601 durations on the calendar: months and years move the date, the rest adds time.

"P1M" from 31 January is 28 (or 29) February; "P1Y" from a 29 February is 28 February.
"""
from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta

_DURATION = re.compile(
    r"^P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?$"
)


def is_duration(text: str) -> bool:
    return bool(text) and text not in ("P", "PT") and _DURATION.match(text) is not None


def add_months(moment: date | datetime, months: int):
    index = moment.year * 12 + moment.month - 1 + months
    year, month0 = divmod(index, 12)
    return moment.replace(year=year, month=month0 + 1,
                          day=min(moment.day, calendar.monthrange(year, month0 + 1)[1]))


def add_duration(moment: datetime, duration: str) -> datetime:
    if not is_duration(duration):
        raise ValueError(f"not an ISO-8601 duration: {duration!r}")
    v = {k: int(x) if x else 0 for k, x in _DURATION.match(duration).groupdict().items()}
    shifted = add_months(moment, v["y"] * 12 + v["mo"])
    return shifted + timedelta(weeks=v["w"], days=v["d"], hours=v["h"], minutes=v["mi"], seconds=v["s"])
