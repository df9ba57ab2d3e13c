"""The settings in force and where each came from (``hashplane config``), and the one-line
messages the command line prints for the errors a person can act on (a bad setting, an
unreachable broker, a wrong ClickHouse DSN), instead of a traceback."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from schemas.settings import Settings

#: Settings whose values are never printed (keys, tokens); ``config`` says only "set".
SECRET_FIELDS = frozenset({"api_key", "api_keys"})
#: Credentials read from the environment by name, outside Settings (connectors/alert_sinks).
CREDENTIAL_VARS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")


@dataclass(frozen=True)
class Entry:
    """One setting: its variable, the value in force (printable) and its source."""

    name: str
    env: str
    value: str
    source: str


def env_name(field: str) -> str:
    """The environment variable of a setting."""
    return f"HASHPLANE_{field.upper()}"


def redact_dsn(dsn: str) -> str:
    """A DSN with its password replaced by ``***`` (printable in a log or an error)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return dsn
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _shown(field: str, value: Any) -> str:
    if field in SECRET_FIELDS:
        return "(set, hidden)" if value else "(not set)"
    if field == "clickhouse_dsn":
        return redact_dsn(str(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, dict, tuple)):
        import json

        return json.dumps(value, default=str)
    return str(value)


def _dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    if not path.is_file():
        return {}
    return {k.upper(): v for k, v in dotenv_values(path).items() if v is not None}


def effective(settings: Settings, *, options: Mapping[str, str] | None = None,
              env_file_keys: Mapping[str, str] | None = None,
              environ: Mapping[str, str] | None = None,
              dotenv_path: Path = Path(".env")) -> list[Entry]:
    """Every setting in force, with its source, by pydantic-settings' precedence: a command
    option (``options``: field -> the option), the environment (``env_file_keys``: the
    variables ``--env-file`` set, and its path), the ``.env`` file, the default."""
    environ = os.environ if environ is None else environ
    upper = {k.upper(): k for k in environ}
    dotenv = _dotenv(dotenv_path)
    out: list[Entry] = []
    for field in type(settings).model_fields:
        var = env_name(field)
        value = getattr(settings, field)
        if options and field in options:
            source = f"option {options[field]}"
        elif env_file_keys and var in env_file_keys:
            source = f"file {env_file_keys[var]}"
        elif var in upper:
            source = "env"
        elif var in dotenv:
            source = f"file {dotenv_path}"
        else:
            source = "default"
        shown = _shown(field, value)
        if field == "clickhouse_dsn" and not value:
            shown = f"{redact_dsn(settings.history_dsn)} (embedded, under data_dir)"
        out.append(Entry(field, var, shown, source))
    for var in CREDENTIAL_VARS:
        out.append(Entry(var.lower(), var, "(set, hidden)" if environ.get(var) else "(not set)",
                         "env" if environ.get(var) else "-"))
    return out


# -- one-line errors ---------------------------------------------------------------------------

def setting_error(exc: ValidationError) -> str:
    """A settings ValidationError as one line naming each variable, what is wrong and the
    value that was given."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        field = str(err["loc"][0]) if err["loc"] else ""
        where = env_name(field) + loc.removeprefix(field) if field else loc
        given = err.get("input")
        got = f" (got {given!r})" if isinstance(given, (str, int, float)) else ""
        parts.append(f"{where}: {err['msg']}{got}")
    return "bad setting " + "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _connection_reason(text: str) -> str | None:
    """What a driver's long connection error comes down to ("connection refused", "cannot
    resolve host 'x'"), or None when it is not a connection error."""
    import re

    if m := re.search(r"Failed to resolve '([^']+)'", text):
        return f"cannot resolve host {m.group(1)!r}"
    if m := re.search(r"\[Errno -?\d+\] ([A-Za-z][^\"')\]]*)", text):
        return m.group(1).strip().lower()
    if "timed out" in text.lower():
        return "timed out"
    return None


def actionable(exc: BaseException, settings: Settings | None) -> str | None:
    """The one line to print for an error a person can act on, or None for a bug (whose
    traceback is the useful output)."""
    from aiokafka.errors import KafkaConnectionError, KafkaError
    from clickhouse_connect.driver.exceptions import ClickHouseError

    from streams.publish import PublishError
    from streams.topics import BrokerUnavailable

    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return setting_error(exc)
    bootstrap = settings.kafka_bootstrap if settings is not None else "?"
    if isinstance(exc, KafkaConnectionError):
        return (f"cannot reach the Kafka broker at {bootstrap} (HASHPLANE_KAFKA_BOOTSTRAP): "
                "no broker answered")
    if isinstance(exc, (KafkaError, PublishError, BrokerUnavailable)):
        return f"the Kafka broker at {bootstrap} failed: {_first_line(exc)}"
    if isinstance(exc, ClickHouseError):
        dsn = redact_dsn(settings.history_dsn) if settings is not None else "?"
        reason = _connection_reason(str(exc))
        if reason is not None:
            return f"cannot reach ClickHouse at {dsn} (HASHPLANE_CLICKHOUSE_DSN): {reason}"
        return f"ClickHouse at {dsn} (HASHPLANE_CLICKHOUSE_DSN) failed: {_first_line(exc)}"
    return None
