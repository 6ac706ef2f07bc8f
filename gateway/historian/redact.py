"""Secrets out of what the historian stores or reports.

The ``runs`` table keeps the config text of every run, and the writer's last error is
shown by ``/summary``: both may hold credentials (a historian URL
``mysql://user:password@host/db``, a bus URL ``nats://token@host``, an MQTT URL, a key
named ``password``/``token``/``secret``). :func:`redact` replaces the secret parts with
``***`` and keeps the rest readable (host, user, database, key names), so a stored config
still tells what the run talked to without handing out the means to talk to it.
"""

from __future__ import annotations

import re

MASK = "***"

#: ``scheme://user:password@`` -> ``scheme://user:***@``
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@\"'<>]*):(?P<secret>[^\s@/\"'<>]*)@")
#: schemes whose user part alone is a credential (a NATS token: ``nats://TOKEN@host``)
_URL_TOKEN = re.compile(r"(?P<head>\b(?:nats|tls)://)(?P<secret>[^\s:/@\"'<>]+)@",
                        re.IGNORECASE)
#: a key that names a secret: ``password``, ``db_password``, ``auth_token``, ``api_key``
_SECRET_WORD = r"[\w.-]*(?:password|passwd|passphrase|pwd|token|secret|api_?key|credentials?)"
#: ``?password=...`` / ``&token=...`` in a URL query
_QUERY = re.compile(rf"(?P<head>[?&]{_SECRET_WORD}=)(?P<secret>[^&\s\"'#]*)", re.IGNORECASE)
#: ``password = "..."`` (TOML/INI, also inside an inline table) and ``"token": "..."``
_KEY = re.compile(
    rf"""(?P<head>(?:^|(?<=[\s{{,]))(?:{_SECRET_WORD}\s*=|"{_SECRET_WORD}"\s*[=:])\s*)"""
    r"""(?P<secret>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s,}#]+)""",
    re.IGNORECASE | re.MULTILINE)


def _mask_value(m: re.Match[str]) -> str:
    value = m["secret"]
    if value[:1] in ("'", '"'):
        return f"{m['head']}{value[0]}{MASK}{value[0]}"
    return f"{m['head']}{MASK}"


def redact(text: str) -> str:
    """``text`` with passwords in URLs and values of secret-named keys replaced by
    ``***`` (see the module docstring)."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _URL_TOKEN.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)
    return _KEY.sub(_mask_value, text)
