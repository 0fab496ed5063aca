"""``--log-format json``: one JSON object per log line, for log shippers (Loki, Elasticsearch).

Each line has ``time`` (RFC 3339, UTC), ``level``, ``logger`` and ``message`` (the formatted
text, as the plain format shows it), ``exception`` when there is one, and every structured
field the call passed with ``extra=`` (they would be lost in the plain format's one line).
"""

from __future__ import annotations

import datetime
import json
import logging

# the attributes every LogRecord has: what is left on a record beyond them came from ``extra=``
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        return json.dumps(line, default=str)


__all__ = ["JsonFormatter"]
