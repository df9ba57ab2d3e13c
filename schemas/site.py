"""The site inventory: one TOML file describes a site's devices; this model is its definition.

Why TOML (README, "The site inventory"): Python reads it with no dependency (``tomllib``),
it has no implicit typing (YAML 1.1 reads a MAC address of digits as a number and ``no`` as
false), a 1,000-miner fleet stays one inline table per line, and a style-preserving writer
(tomlkit) lets ``hashplane site discover --merge`` add miners without touching what a person
wrote, comments included.

Secrets are never values in the file: a field ending in ``_env`` names the environment
variable that holds the secret, and ``check`` reports one that is not set.  Every error
names its place in the file (``asics[12].host: Field required``).
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

#: Firmware dialects hashplane speaks; ``auto`` identifies the firmware on first contact.
Dialect = Literal["auto", "luxos", "braiins", "antminer", "whatsminer", "vnish"]
DIALECTS: tuple[str, ...] = Dialect.__args__  # type: ignore[attr-defined]

Quantity = Literal["frequency_hz", "voltage_v", "active_power_kw", "reactive_power_kvar",
                   "power_factor", "current_a", "energy_import_kwh", "nominal_hz"]
RegisterType = Literal["float32", "int16", "uint16", "int32", "uint32"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")


def _host(v: str) -> str:
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        if _HOST.fullmatch(v):
            return v
    raise ValueError("not an IP address or a host name")


def _url(schemes: tuple[str, ...]) -> Any:
    def check(v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in schemes or not rest or any(c.isspace() for c in v):
            starts = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(f"must be a URL starting with {starts}")
        return v
    return AfterValidator(check)


DeviceId = Annotated[str, Field(pattern=_ID.pattern, description="Stable device id")]
Host = Annotated[str, AfterValidator(_host)]
Port = Annotated[int, Field(ge=1, le=65535)]
EnvVar = Annotated[str, Field(pattern=_ENV.pattern,
                              description="Name of the environment variable holding a secret")]
HttpUrl = Annotated[str, _url(("http", "https"))]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(_Entry):
    """A login a firmware asks for (the web UI's or the API's)."""

    username: str = "root"
    password_env: EnvVar


class Asic(_Entry):
    """One miner."""

    id: DeviceId
    host: Host
    port: Port = Field(default=4028, description="CGMiner-compatible RPC port")
    web_port: Port = Field(default=80, description="HTTP API port (Antminer stock, VNish)")
    firmware: Dialect = "auto"
    model: str = Field(default="", max_length=64)
    nameplate_w: float | None = Field(
        default=None, gt=0, le=20_000, description="Rated draw; used when the firmware "
        "reports none (Antminer stock)")
    feed: str = Field(default="", description="The feed it draws from ([[feeds]] id)")
    rack: str = Field(default="", max_length=64)
    credentials: str = Field(default="", description="A [credentials.NAME] table; empty: "
                             "the firmware's factory login")


class Gpu(_Entry):
    index: int = Field(ge=0, le=63)
    card: str = ""


class Rig(_Entry):
    """A GPU rig running RainbowMiner."""

    id: DeviceId
    api_url: HttpUrl
    nvml: str = Field(default="", description='Where its GPUs are read and limited: "local" '
                      "(NVML on this host: `hashplane connect gpu` runs on the rig), an http(s) "
                      "URL of an NVML endpoint (the simulated rigs'), empty: none")
    nvml_library: str = Field(default="", description="Path of libnvidia-ml.so.1 when the "
                              "loader does not find it (nvml = \"local\")")
    config_dir: str = Field(default="", description="RainbowMiner's Config directory (the GPU "
                            "actuator writes OC profiles there)")
    log_path: str = ""
    gpus: list[Gpu] = Field(default_factory=list)


    @field_validator("nvml")
    @classmethod
    def _nvml(cls, v: str) -> str:
        if v not in ("", "local") and not v.startswith(("http://", "https://")):
            raise ValueError('"local", an http(s) URL, or empty')
        return v


#: register type -> (registers it spans, struct format of its big-endian bytes)
REGISTER_TYPES: dict[str, tuple[int, str]] = {
    "float32": (2, ">f"), "int32": (2, ">i"), "uint32": (2, ">I"), "int16": (1, ">h"),
    "uint16": (1, ">H")}

#: The most registers one read may ask for (Modbus application protocol, function 3 and 4).
MODBUS_MAX_READ = 125


class RegisterField(_Entry):
    address: int = Field(ge=0, le=65535)
    type: RegisterType = "float32"
    scale: float = Field(default=1.0, description="Multiplier from the register to the unit")

    @property
    def words(self) -> int:
        return REGISTER_TYPES[self.type][0]


class RegisterMap(_Entry):
    """Where a meter keeps each quantity."""

    function: Literal["holding", "input"] = "holding"
    word_order: Literal["big", "little"] = Field(
        default="big", description="big: the high word first (SEL's default)")
    max_read: int = Field(default=MODBUS_MAX_READ, ge=1, le=MODBUS_MAX_READ,
                          description="Most registers the meter answers in one read")
    fields: dict[Quantity, RegisterField]

    @model_validator(mode="after")
    def _needed(self) -> RegisterMap:
        missing = {"frequency_hz", "voltage_v", "active_power_kw"} - set(self.fields)
        if missing:
            raise ValueError(f"register map lacks {', '.join(sorted(missing))}")
        return self


#: Register maps by name.
#:
#: ``ieee754-float``: the generic map of float32 pairs, high word first, that many meters
#: and gateways offer (and the simulated meter serves by default).
#:
#: ``sel-735``: the SEL-735 Power Quality and Revenue Meter's own Modbus map (Table E.26 of
#: its instruction manual; no user map needed).  Function 3 (the meter answers 4 alike);
#: 32-bit values are the manual's ``LONG`` with the most significant word in the lower
#: register, scaled by 100; frequency is one register in hundredths of a hertz; values are
#: primary (V, A, kW, kvar).  IA 350, VAB 364 (line to line, so a Form 5 delta meter reads
#: it too), W3 370, Q3 374, FREQ 900.  Where the addresses come from: README, "Meter
#: register maps".
REGISTER_MAPS: dict[str, RegisterMap] = {
    "ieee754-float": RegisterMap(fields={
        "frequency_hz": RegisterField(address=0), "voltage_v": RegisterField(address=2),
        "active_power_kw": RegisterField(address=4),
        "reactive_power_kvar": RegisterField(address=6),
        "power_factor": RegisterField(address=8), "current_a": RegisterField(address=10),
        "energy_import_kwh": RegisterField(address=12),
        "nominal_hz": RegisterField(address=14)}),
    "sel-735": RegisterMap(fields={
        "current_a": RegisterField(address=350, type="int32", scale=0.01),
        "voltage_v": RegisterField(address=364, type="int32", scale=0.01),
        "active_power_kw": RegisterField(address=370, type="int32", scale=0.01),
        "reactive_power_kvar": RegisterField(address=374, type="int32", scale=0.01),
        "frequency_hz": RegisterField(address=900, type="uint16", scale=0.01)}),
}


class Meter(_Entry):
    """The grid meter at the point of connection (Modbus TCP)."""

    id: DeviceId = "grid-meter"
    host: Host
    port: Port = 502
    unit: int = Field(default=1, ge=0, le=247)
    register_map: Annotated[
        Annotated[Annotated[str, Field(pattern=r"^[a-z0-9-]+$")], Tag("name")]
        | Annotated[RegisterMap, Tag("inline")],
        Discriminator(lambda v: "inline" if isinstance(v, dict | RegisterMap) else "name"),
    ] = Field(default="ieee754-float", description="A map's name, or an inline table")
    nominal_hz: Literal[50, 60] | None = None

    def registers(self) -> RegisterMap:
        if isinstance(self.register_map, RegisterMap):
            return self.register_map
        return REGISTER_MAPS[self.register_map]


class Mqtt(_Entry):
    """The broker the feeds' sensors publish to."""

    url: Annotated[str, _url(("mqtt", "mqtts"))] = Field(
        description="mqtt://host:port, or mqtts://host:port for TLS")
    username: str = ""
    password_env: EnvVar | None = None
    ca_file: str = Field(default="", description="CA bundle for mqtts (empty: the system's)")
    client_cert: str = ""
    client_key: str = ""

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        hostport = self.url.split("://", 1)[1].split("/", 1)[0]
        _, sep, port = hostport.rpartition(":")
        return int(port) if sep and port.isdigit() else (8883 if self.tls else 1883)


class Feed(_Entry):
    """A power feed and its sensor."""

    id: DeviceId
    topic: str = Field(min_length=1, max_length=512)
    capacity_kw: float | None = Field(
        default=None, gt=0, description="Nameplate capacity, used when the sensor reports "
        "none (a volts-and-amps sensor must never make the site shed itself)")
    format: Literal["json", "number"] = "json"
    fields: dict[str, str] = Field(default_factory=dict, description="quantity -> JSON key")
    scale: dict[str, float] = Field(default_factory=dict, description="quantity -> factor")
    nominal_voltage_v: float = Field(default=400.0, gt=0)


class Coordinator(_Entry):
    """The job coordinator (seed 002)."""

    url: HttpUrl
    api_key_env: EnvVar
    rig: str = Field(default="", description="The rig ([[rigs]] id) whose GPUs run the jobs: "
                     "its seed-001 score doubles while it holds one")


class ModelEndpoint(_Entry):
    name: DeviceId
    url: HttpUrl


class Uplink(_Entry):
    """The internet check: a URL that answers 204 while the uplink is up."""

    url: HttpUrl


class Price(_Entry):
    """The power price feed: a day-ahead or real-time price list (CSV or JSON, per MWh) in a
    file or at an http(s) URL, re-read every ``poll_s`` (connectors/power_price.py)."""

    source: str = Field(min_length=1, description="A file path or an http(s) URL")
    format: Literal["auto", "csv", "json"] = Field(
        default="auto", description="auto: from the file's suffix, else from its first byte")
    market: Literal["day_ahead", "real_time"] = Field(
        default="day_ahead", description="Market of rows that do not name theirs")
    currency: str = Field(default="", pattern="^([A-Z]{3})?$", description="Currency of a "
                          "file that does not say; empty: the site's (HASHPLANE_CURRENCY)")
    poll_s: float = Field(default=300.0, gt=0, le=86_400)
    hashprice_per_th_day: float | None = Field(
        default=None, ge=0, le=1_000, description="Published as the site's hashprice "
        "(HashpriceObserved) at start and whenever it changes")
    hashprice_source: str = Field(
        default="", description="A file or http(s) URL of a JSON object with "
        "hashprice_per_th_day (or hashprice_per_ph_day), re-read every poll_s; its value "
        "wins over hashprice_per_th_day, which stays the fallback")

    @field_validator("source", "hashprice_source")
    @classmethod
    def _source(cls, v: str) -> str:
        if "://" in v and not v.startswith(("http://", "https://")):
            raise ValueError(f"a price source is a file path or an http(s) URL, not {v!r}")
        return v


def shard_of(device_id: str, count: int) -> int:
    """The shard (of ``count``) a device belongs to."""
    return zlib.crc32(device_id.encode()) % count


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` -> (i, n), 0 <= i < n; ValueError with the reason otherwise."""
    i, sep, n = text.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ValueError(f"--shard {text!r}: want i/n with 0 <= i < n, e.g. 0/2")
    return int(i), int(n)


class Site(_Entry):
    """Everything at one site hashplane reads or controls."""

    site: DeviceId = "site-1"
    asics: list[Asic] = Field(default_factory=list)
    rigs: list[Rig] = Field(default_factory=list)
    meter: Meter | None = None
    mqtt: Mqtt | None = None
    feeds: list[Feed] = Field(default_factory=list)
    coordinator: Coordinator | None = None
    model_endpoints: list[ModelEndpoint] = Field(default_factory=list)
    uplink: Uplink | None = None
    price: Price | None = None
    credentials: dict[Annotated[str, Field(pattern=_ID.pattern)], Credentials] = Field(
        default_factory=dict)

    def shard(self, index: int, count: int) -> Site:
        """Shard ``index`` of ``count`` (``--shard i/n``): the ASICs and rigs whose id hashes
        to it (CRC-32: each device is in exactly one shard, and adding a device moves no
        other), and the site-wide devices (meter, feeds, coordinator, model endpoints,
        uplink, price feed) with shard 0."""
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: want 0 <= i < n")
        if count == 1:
            return self
        first = index == 0
        return self.model_copy(update={
            "asics": [a for a in self.asics if shard_of(a.id, count) == index],
            "rigs": [r for r in self.rigs if shard_of(r.id, count) == index],
            "meter": self.meter if first else None, "mqtt": self.mqtt if first else None,
            "feeds": self.feeds if first else [],
            "coordinator": self.coordinator if first else None,
            "model_endpoints": self.model_endpoints if first else [],
            "uplink": self.uplink if first else None, "price": self.price if first else None})

    def secret(self, name: str | None, environ: Mapping[str, str]) -> str:
        """The value of the environment variable ``name`` ('' for none)."""
        return environ.get(name, "") if name else ""

    def summary(self) -> list[str]:
        """One line per device kind, for ``site check``."""
        by_fw: dict[str, int] = {}
        for a in self.asics:
            by_fw[a.firmware] = by_fw.get(a.firmware, 0) + 1
        gpus = sum(len(r.gpus) for r in self.rigs)
        cap = [f.capacity_kw for f in self.feeds if f.capacity_kw]
        return [
            f"asics           {len(self.asics)}"
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(by_fw.items()))})" if by_fw else ""),
            f"gpu rigs        {len(self.rigs)} ({gpus} GPUs)",
            f"grid meter      {_where(self.meter)}",
            f"feeds           {len(self.feeds)}"
            + (f" ({sum(cap):g} kW nameplate)" if cap else "")
            + (f" on {self.mqtt.url}" if self.mqtt else ""),
            f"coordinator     {self.coordinator.url if self.coordinator else '-'}",
            f"model endpoints {len(self.model_endpoints)}",
            f"uplink probe    {self.uplink.url if self.uplink else '-'}",
            f"power price     {self.price.source if self.price else '-'}",
        ]


def _where(m: Meter | None) -> str:
    if m is None:
        return "-"
    rm = m.register_map if isinstance(m.register_map, str) else "inline map"
    return f"{m.host}:{m.port} unit {m.unit} ({rm})"


# -- loading and checking ---------------------------------------------------------------

class SiteError(ValueError):
    """An inventory that is not valid; ``problems`` are ``place: message`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))
        self.source, self.problems = source, problems


def place(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a path into the file: ``asics[12].host``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(file)"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if p not in ("name", "inline") and not (
            isinstance(p, str) and p.startswith("function-after")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            msg = "field required"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (a typo? see infra/site.example.toml)"
        out.append(f"{place(loc)}: {msg}")
    return out


def cross_check(site: Site, environ: Mapping[str, str]) -> list[str]:
    """What one entry cannot see alone: duplicates, references, secrets that are unset."""
    problems: list[str] = []

    def unique(kind: str, field: str, keys: list[str]) -> None:
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in first:
                problems.append(f"{kind}[{i}].{field}: duplicate {k!r} (first at "
                                f"{kind}[{first[k]}])")
            else:
                first[k] = i

    unique("asics", "id", [a.id for a in site.asics])
    unique("asics", "host", [f"{a.host}:{a.port}" for a in site.asics])
    unique("rigs", "id", [r.id for r in site.rigs])
    unique("feeds", "id", [f.id for f in site.feeds])
    unique("feeds", "topic", [f.topic for f in site.feeds])
    unique("model_endpoints", "name", [m.name for m in site.model_endpoints])
    feeds = {f.id for f in site.feeds}
    for i, a in enumerate(site.asics):
        if a.feed and a.feed not in feeds:
            problems.append(f"asics[{i}].feed: no feed {a.feed!r} in [[feeds]]")
        if a.credentials and a.credentials not in site.credentials:
            problems.append(f"asics[{i}].credentials: no [credentials.{a.credentials}] table")
    if site.meter is not None and isinstance(site.meter.register_map, str) \
            and site.meter.register_map not in REGISTER_MAPS:
        problems.append(f"meter.register_map: unknown map {site.meter.register_map!r} "
                        f"(known: {', '.join(REGISTER_MAPS)}; or an inline table)")
    if site.feeds and site.mqtt is None:
        problems.append("mqtt: field required (the feeds' sensors publish over MQTT)")
    secrets: list[tuple[str, str | None]] = [
        (f"credentials.{k}.password_env", c.password_env) for k, c in site.credentials.items()]
    if site.mqtt is not None:
        secrets.append(("mqtt.password_env", site.mqtt.password_env))
    if site.coordinator is not None:
        secrets.append(("coordinator.api_key_env", site.coordinator.api_key_env))
    for where, name in secrets:
        if name and name not in environ:
            problems.append(f"{where}: environment variable {name} is not set")
    return problems


def parse_site(data: Any, environ: Mapping[str, str], source: str = "site") -> Site:
    """A valid ``Site`` from parsed TOML, or SiteError listing every problem with its place."""
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        raise SiteError(source, _pydantic_problems(exc)) from None
    problems = cross_check(site, environ)
    if problems:
        raise SiteError(source, problems)
    return site


def load_site(path: Path | str, environ: Mapping[str, str]) -> Site:
    """Read and check an inventory file (SiteError on any problem)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError(str(p), [f"cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise SiteError(str(p), [f"not UTF-8 text: {exc}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(str(p), [f"TOML syntax: {exc}"]) from None
    return parse_site(data, environ, str(p))


# -- writing ----------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "nan"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return inline_table(v)
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def inline_table(d: Mapping[str, Any]) -> str:
    """``{id = "a", port = 4028}``: one device per line."""
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in d.items()
                           if v is not None) + "}"


def dump_site(site: Site, header: str = "") -> str:
    """The inventory as TOML: scalars, the ASICs one per line, then the tables."""
    import tomli_w

    data = site.model_dump(mode="json", exclude_defaults=True)
    data.pop("site", None)
    asics = site.model_dump(mode="json", include={"asics"})["asics"]
    for a in asics:
        for k in ("web_port", "rack", "feed", "credentials", "model", "nameplate_w"):
            if a.get(k) in (None, "", 80):
                a.pop(k, None)
    data.pop("asics", None)
    lines = [header.rstrip()] if header else []
    lines.append(f"site = {_toml_value(site.site)}")
    lines.append("asics = [")
    lines += [f"  {inline_table(a)}," for a in asics]
    lines.append("]")
    return "\n".join(lines) + "\n\n" + tomli_w.dumps(data)


# -- merging discovered miners ---------------------------------------------------------

def asic_id(host: str, port: int = 4028) -> str:
    """A stable id for a discovered miner: its address (``asic-10-10-1-11``)."""
    base = "asic-" + host.replace(".", "-").replace(":", "-")
    return base if port == 4028 else f"{base}-{port}"


def merge_asics(text: str, found: list[dict[str, Any]]) -> tuple[str, int, int]:
    """Add the discovered miners ``found`` (dicts of Asic fields) that ``text`` (an
    inventory, possibly empty) does not list yet, matched by host and port.  What is there
    -- entries, comments, order, a person's edits -- is kept as it is, so merging twice
    adds nothing.  Returns the new text, how many were added and how many already there."""
    import tomlkit
    from tomlkit.items import AoT, Array

    doc = tomlkit.parse(text) if text.strip() else tomlkit.document()
    existing = doc.get("asics")
    if existing is None:
        existing = tomlkit.array()
        existing.multiline(True)
        doc["asics"] = existing
    rows = list(existing)
    have = {(str(a.get("host")), int(a.get("port", 4028))) for a in rows}
    ids = {str(a.get("id")) for a in rows}
    added = 0
    for entry in found:
        key = (str(entry["host"]), int(entry.get("port", 4028)))
        if key in have:
            continue
        rest = {k: v for k, v in entry.items() if v not in (None, "") and k != "id"}
        base = str(entry.get("id") or asic_id(*key))
        new_id, n = base, 2
        while new_id in ids:
            new_id, n = f"{base}-{n}", n + 1
        new = {"id": new_id, **rest}
        Asic.model_validate(new)  # a discovered entry is a valid one
        if isinstance(existing, AoT):
            table = tomlkit.table()
            table.update(new)
            existing.append(table)
        elif isinstance(existing, Array):
            inline = tomlkit.inline_table()
            inline.update(new)
            existing.append(inline)
        else:
            raise ValueError("the inventory's asics is not a list")
        have.add(key)
        ids.add(new_id)
        added += 1
    return tomlkit.dumps(doc), added, len(found) - added
