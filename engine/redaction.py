"""Credentials out of everything the project prints or records.

A URI may carry `user:password@` (a tracking server, a data URL). Such text is
redacted before it reaches the terminal, a param, a tag, an artifact or an error:
`https://alice:s3cret@host/x` becomes `https://***:***@host/x`. Use
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead of putting them in URIs.
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s]+@")


def redact(text: str) -> str:
    return _USERINFO.sub(r"\g<scheme>***:***@", text)


def redact_value(value: Any) -> Any:
    """Strings redacted; anything else as it is."""
    return redact(value) if isinstance(value, str) else value
