"""``hardware.toml``: which field devices the twin talks to, over which protocol, carrying which
points; and opening the matching field links.

Parsed once, at the edge, into frozen dataclasses; every problem is a ``ConfigError`` naming the
file, the key and what is allowed. The format is documented key by key in ``docs/hardware.md``.

Default split of the points of a device (``docs/architecture.md``): ``to_twin`` points with a
Modbus binding are read over Modbus; ``to_field`` points are written over OPC UA; ``to_twin``
points without a Modbus binding are read over OPC UA. ``read``/``write`` per link change that.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hil.errors import HilError
from hil.links.base import FieldLink
from twin.errors import ConfigError
from twin.pointmap import Point, PointMap

_log = logging.getLogger(__name__)

STALE_POLICIES = ("hold", "refuse")
SECURITY_POLICIES = ("None", "Basic256Sha256")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
OPCUA_MODES = ("subscription", "poll")

_TOP_KEYS = ("pointmap", "stale_policy", "stale_factor", "backoff_min_s", "backoff_max_s", "device")
_DEVICE_KEYS = ("name", "points", "opcua", "modbus")
_OPCUA_KEYS = (
    "endpoint", "user", "password", "password_env", "security", "security_mode", "certificate",
    "private_key", "server_certificate", "mode", "sampling_interval_s", "poll_interval_s",
    "timeout_s", "session_timeout_s", "watchdog_s", "namespace", "read", "write",
    "write_timestamps",
)  # fmt: skip
_MODBUS_KEYS = ("host", "port", "units", "timeout_s", "poll_interval_s", "max_gap", "read", "write")


@dataclass(frozen=True)
class OpcuaConfig:
    """An OPC UA endpoint of a device (see docs/hardware.md for each field)."""

    endpoint: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    security: str = "None"
    security_mode: str = "SignAndEncrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    mode: str = "subscription"
    sampling_interval_s: float = 0.1
    poll_interval_s: float | None = None
    timeout_s: float = 2.0
    session_timeout_s: float = 30.0
    watchdog_s: float = 1.0
    namespace: str | None = None  # None: the point map's namespace
    read: bool | None = None  # None: to_twin points the device has no Modbus link for
    write: bool = True
    write_timestamps: bool = True

    def security_string(self) -> str | None:
        """asyncua's ``set_security_string`` argument, or None without security."""
        if self.security == "None":
            return None
        parts = [self.security, self.security_mode, str(self.certificate), str(self.private_key)]
        if self.server_certificate is not None:
            parts.append(str(self.server_certificate))
        return ",".join(parts)


@dataclass(frozen=True)
class ModbusConfig:
    """A Modbus TCP endpoint of a device."""

    host: str
    port: int = 502
    units: tuple[int, ...] | None = None  # None: every unit id the device's points use
    timeout_s: float = 1.0
    poll_interval_s: float | None = None  # None: the sync loop polls each step
    max_gap: int = 0
    read: bool = True
    write: bool = False


@dataclass(frozen=True)
class DeviceConfig:
    """One field device (an RTU, a protection relay, a gateway) and its links."""

    name: str
    points: tuple[str, ...] = ("*",)  # point-name patterns (fnmatch) this device carries
    opcua: OpcuaConfig | None = None
    modbus: ModbusConfig | None = None


@dataclass(frozen=True)
class HardwareConfig:
    """The parsed ``hardware.toml``."""

    devices: tuple[DeviceConfig, ...]
    pointmap: Path | None = None
    stale_policy: str = "hold"
    stale_factor: float | None = None  # None: the point map's
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    source: str | None = None
    emulated: bool = False  # the embedded emulated substation (ports known once it runs)

    def bind_emulator(
        self,
        opcua_endpoint: str,
        modbus_port: int,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> HardwareConfig:
        """This config pointed at a running emulated substation (its endpoint and port)."""
        devices = []
        for d in self.devices:
            op = d.opcua
            if op is not None:
                op = replace(
                    op,
                    endpoint=opcua_endpoint,
                    user=user if user is not None else op.user,
                    password=password if password is not None else op.password,
                )
            mb = replace(d.modbus, port=int(modbus_port)) if d.modbus is not None else None
            devices.append(replace(d, opcua=op, modbus=mb))
        return replace(self, devices=tuple(devices))


def default_hardware(*, user: str | None = "plant", password: str | None = None) -> HardwareConfig:
    """The embedded emulated substation on 127.0.0.1; ports are chosen when it starts.

    Call :meth:`HardwareConfig.bind_emulator` with the running substation's endpoint and port
    before :func:`open_links`.
    """
    return HardwareConfig(
        devices=(
            DeviceConfig(
                name="emulated",
                opcua=OpcuaConfig(
                    endpoint="opc.tcp://127.0.0.1:0/gridtwin/", user=user, password=password
                ),
                modbus=ModbusConfig(host="127.0.0.1", port=0),
            ),
        ),
        emulated=True,
        source="<default: emulated substation>",
    )


# --- parsing ---------------------------------------------------------------------------------
class _Reader:
    """Typed access to one TOML table; every error names the file and the full key."""

    def __init__(self, path: str, base: Path, data: Mapping[str, Any], prefix: str) -> None:
        self.path = path
        self.base = base
        self.data = data
        self.prefix = prefix

    def key(self, k: str) -> str:
        return f"{self.prefix}{k}"

    def fail(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(k), problem)

    def only(self, allowed: tuple[str, ...]) -> None:
        for k in self.data:
            if k not in allowed:
                raise self.fail(k, f"unknown key; allowed keys: {', '.join(allowed)}")

    def get(self, k: str, kind: type | tuple[type, ...], default: Any = None, *, what: str = ""):
        if k not in self.data:
            return default
        v = self.data[k]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, bool) and bool not in kinds:
            v = None  # a bool is an int in Python, never a number here
        if v is None or not isinstance(v, kinds):
            names = what or " or ".join(t.__name__ for t in kinds)
            raise self.fail(k, f"expected {names}, found {self.data[k]!r}")
        return v

    def choice(self, k: str, allowed: tuple[str, ...], default: str) -> str:
        v = self.get(k, str, default)
        if v not in allowed:
            raise self.fail(k, f"expected one of {', '.join(allowed)}, found {v!r}")
        return v

    def positive(self, k: str, default: float | None) -> float | None:
        v = self.get(k, float, default, what="a number of seconds")
        if v is not None and not v > 0:
            raise self.fail(k, f"expected a number > 0, found {v!r}")
        return v

    def path_(self, k: str, *, must_exist: bool = True) -> Path | None:
        v = self.get(k, str, None, what="a file path")
        if v is None:
            return None
        p = Path(v)
        if not p.is_absolute():
            p = self.base / p
        if must_exist and not p.is_file():
            raise self.fail(k, f"expected an existing file, found no file at {p}")
        return p

    def sub(self, k: str) -> _Reader | None:
        v = self.data.get(k)
        if v is None:
            return None
        if not isinstance(v, dict):
            raise self.fail(k, f"expected a table [{self.key(k)}], found {v!r}")
        return _Reader(self.path, self.base, v, f"{self.key(k)}.")


def _read_opcua(r: _Reader, env: Mapping[str, str]) -> OpcuaConfig:
    r.only(_OPCUA_KEYS)
    endpoint = r.get("endpoint", str, None)
    if endpoint is None:
        raise r.fail("endpoint", 'missing; expected e.g. "opc.tcp://10.0.0.5:4840/"')
    if not endpoint.startswith("opc.tcp://"):
        raise r.fail("endpoint", f"expected an opc.tcp:// URL, found {endpoint!r}")
    password = r.get("password", str, None)
    password_env = r.get("password_env", str, None)
    if password is not None and password_env is not None:
        raise r.fail("password_env", "expected either password or password_env, found both")
    if password_env is not None:
        if password_env not in env:
            raise r.fail(
                "password_env", f"expected environment variable {password_env} to be set, it is not"
            )
        password = env[password_env]
    user = r.get("user", str, None)
    if password is not None and user is None:
        raise r.fail("user", "missing; a password needs a user name")
    security = r.choice("security", SECURITY_POLICIES, "None")
    security_mode = r.choice("security_mode", SECURITY_MODES, "SignAndEncrypt")
    cert = key = server_cert = None
    if security != "None":
        cert = r.path_("certificate")
        key = r.path_("private_key")
        server_cert = r.path_("server_certificate")
        for k, v in (("certificate", cert), ("private_key", key)):
            if v is None:
                raise r.fail(
                    k, f"missing; security {security} needs a client {k.replace('_', ' ')}"
                )
    else:
        for k in ("certificate", "private_key", "server_certificate", "security_mode"):
            if k in r.data:
                raise r.fail(k, 'only used with security = "Basic256Sha256"; security is "None"')
    read = r.get("read", bool, None)
    return OpcuaConfig(
        endpoint=endpoint,
        user=user,
        password=password,
        security=security,
        security_mode=security_mode,
        certificate=cert,
        private_key=key,
        server_certificate=server_cert,
        mode=r.choice("mode", OPCUA_MODES, "subscription"),
        sampling_interval_s=r.positive("sampling_interval_s", 0.1) or 0.1,
        poll_interval_s=r.positive("poll_interval_s", None),
        timeout_s=r.positive("timeout_s", 2.0) or 2.0,
        session_timeout_s=r.positive("session_timeout_s", 30.0) or 30.0,
        watchdog_s=r.positive("watchdog_s", 1.0) or 1.0,
        namespace=r.get("namespace", str, None),
        read=read,
        write=r.get("write", bool, True),
        write_timestamps=r.get("write_timestamps", bool, True),
    )


def _read_modbus(r: _Reader) -> ModbusConfig:
    r.only(_MODBUS_KEYS)
    host = r.get("host", str, None)
    if not host:
        raise r.fail("host", 'missing; expected a host name or address, e.g. "10.0.0.5"')
    port = r.get("port", int, 502, what="a TCP port number")
    if not 0 < port < 65536:
        raise r.fail("port", f"expected a TCP port in 1..65535, found {port}")
    units = r.get("units", list, None, what="a list of unit ids")
    if units is not None:
        if not units or not all(
            isinstance(u, int) and not isinstance(u, bool) and 0 <= u <= 255 for u in units
        ):
            raise r.fail("units", f"expected a non-empty list of unit ids 0..255, found {units!r}")
        units = tuple(units)
    max_gap = r.get("max_gap", int, 0, what="a number of registers")
    if not 0 <= max_gap <= 100:
        raise r.fail("max_gap", f"expected 0..100 registers, found {max_gap}")
    return ModbusConfig(
        host=host,
        port=port,
        units=units,
        timeout_s=r.positive("timeout_s", 1.0) or 1.0,
        poll_interval_s=r.positive("poll_interval_s", None),
        max_gap=max_gap,
        read=r.get("read", bool, True),
        write=r.get("write", bool, False),
    )


def loads_hardware(
    text: str,
    *,
    source: str = "<string>",
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> HardwareConfig:
    """Parse hardware.toml text; relative paths are taken from ``base`` (default: cwd)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(syntax)", f"expected valid TOML: {exc}") from None
    env = os.environ if env is None else env
    top = _Reader(source, base or Path.cwd(), data, "")
    top.only(_TOP_KEYS)
    raw_devices = data.get("device")
    if raw_devices is None:
        raise top.fail("device", "missing; expected at least one [[device]] table")
    if not isinstance(raw_devices, list) or not all(isinstance(d, dict) for d in raw_devices):
        raise top.fail("device", "expected [[device]] tables (an array of tables)")
    devices: list[DeviceConfig] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_devices):
        r = _Reader(source, top.base, raw, f"device[{i}].")
        r.only(_DEVICE_KEYS)
        name = r.get("name", str, f"device{i}")
        if name in names:
            raise r.fail("name", f"expected a unique device name, found {name!r} twice")
        names.add(name)
        pats = r.get("points", (list, str), ["*"], what="a list of point-name patterns")
        if isinstance(pats, str):
            pats = [pats]
        if not pats or not all(isinstance(p, str) and p for p in pats):
            raise r.fail("points", f"expected a non-empty list of patterns, found {pats!r}")
        op_r, mb_r = r.sub("opcua"), r.sub("modbus")
        if op_r is None and mb_r is None:
            raise r.fail("opcua", "missing; a device needs an [device.opcua] or [device.modbus]")
        devices.append(
            DeviceConfig(
                name=name,
                points=tuple(pats),
                opcua=_read_opcua(op_r, env) if op_r else None,
                modbus=_read_modbus(mb_r) if mb_r else None,
            )
        )
    stale_factor = top.positive("stale_factor", None)
    if stale_factor is not None and stale_factor < 1.0:
        raise top.fail("stale_factor", f"expected a factor >= 1, found {stale_factor!r}")
    bmin = top.positive("backoff_min_s", 0.2) or 0.2
    bmax = top.positive("backoff_max_s", 5.0) or 5.0
    if bmax < bmin:
        raise top.fail("backoff_max_s", f"expected >= backoff_min_s ({bmin:g}), found {bmax:g}")
    return HardwareConfig(
        devices=tuple(devices),
        pointmap=top.path_("pointmap"),
        stale_policy=top.choice("stale_policy", STALE_POLICIES, "hold"),
        stale_factor=stale_factor,
        backoff_min_s=bmin,
        backoff_max_s=bmax,
        source=source,
    )


def load_hardware(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> HardwareConfig:
    """Read a hardware.toml file.

    Raises:
        ConfigError: the file is missing, not TOML, or a key is unknown or has a wrong value.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), "(file)", f"expected a readable file: {exc.strerror}") from None
    return loads_hardware(text, source=str(p), base=p.resolve().parent, env=env)


# --- points per link -------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkPlan:
    """One link to open: its device, protocol and points."""

    device: str
    protocol: str  # "opcua" | "modbus"
    points: tuple[Point, ...]


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def plan_links(config: HardwareConfig, pointmap: PointMap) -> list[LinkPlan]:
    """Which points each link carries (see the module docstring for the default split).

    Raises:
        ConfigError: a to_field point written by two links, or a link carrying no point.
    """
    where = config.source or "<hardware>"
    plans: list[LinkPlan] = []
    for i, dev in enumerate(config.devices):
        mine = [p for p in pointmap.points if _matches(p.name, dev.points)]
        if not mine:
            raise ConfigError(
                where,
                f"device[{i}].points",
                f"expected patterns matching points of {pointmap.source or 'the point map'}, "
                f"found none matching {list(dev.points)}",
            )
        mb_read: set[str] = set()
        n_before = len(plans)
        if dev.modbus is not None:
            mb = dev.modbus
            pts = []
            for p in mine:
                b = p.modbus
                if b is None or (mb.units is not None and b.unit not in mb.units):
                    continue
                if p.direction == "to_twin" and mb.read:
                    pts.append(p)
                    mb_read.add(p.name)
                elif (
                    p.direction == "to_field"
                    and mb.write
                    and b.table in ("coil", "holding_register")
                ):
                    pts.append(p)
            if pts:
                plans.append(LinkPlan(dev.name, "modbus", tuple(pts)))
        if dev.opcua is not None:
            op = dev.opcua
            pts = []
            for p in mine:
                if p.opcua is None:
                    continue
                if p.direction == "to_field" and op.write:
                    pts.append(p)
                elif p.direction == "to_twin":
                    if op.read is True or (op.read is None and p.name not in mb_read):
                        pts.append(p)
            if pts:
                plans.append(LinkPlan(dev.name, "opcua", tuple(pts)))
        # every output of the device goes somewhere, or the file is refused: an output that
        # cannot be written would otherwise be dropped silently (a Modbus server under test
        # with measurements in input registers, a device without OPC UA writes)
        written = {p.name for plan in plans[n_before:] for p in plan.points}
        lost = [p for p in mine if p.direction == "to_field" and p.name not in written]
        if lost:
            first = lost[0]
            where_mb = (
                f"Modbus {first.modbus.table} {first.modbus.address}"
                if first.modbus is not None
                else "no Modbus binding"
            )
            raise ConfigError(
                where,
                f"device[{i}]",
                f"expected every to_field point of device {dev.name!r} to be written by one of "
                f"its links (OPC UA write = true, or Modbus write = true with coils/holding "
                f"registers), found {len(lost)} that none can write, e.g. {first.name!r} "
                f"({where_mb}); bind them to holding registers in the point map, enable a "
                "writer, or leave them out of the device's points",
            )
    writers: dict[str, str] = {}
    for plan in plans:
        for p in plan.points:
            if p.direction != "to_field":
                continue
            tag = f"{plan.device}/{plan.protocol}"
            if p.name in writers:
                raise ConfigError(
                    where,
                    "device",
                    f"expected each to_field point written by one link, found {p.name!r} "
                    f"written by {writers[p.name]} and {tag}",
                )
            writers[p.name] = tag
    unread = [
        p.name
        for p in pointmap.points
        if p.direction == "to_twin" and not any(p in plan.points for plan in plans)
    ]
    if unread:
        _log.warning(
            "%s: %d to_twin point(s) read by no link: %s",
            where,
            len(unread),
            ", ".join(unread[:10]),
        )
    return plans


def make_links(
    config: HardwareConfig,
    pointmap: PointMap,
    *,
    clock: Callable[[], float] | None = None,
) -> list[FieldLink]:
    """Field link objects for the config (not connected)."""
    from hil.links.modbus import ModbusLink
    from hil.links.opcua import OpcuaLink

    stale = config.stale_factor if config.stale_factor is not None else pointmap.stale_factor
    common: dict[str, Any] = {
        "stale_factor": stale,
        "backoff_min_s": config.backoff_min_s,
        "backoff_max_s": config.backoff_max_s,
    }
    if clock is not None:
        common["clock"] = clock
    devices = {d.name: d for d in config.devices}
    links: list[FieldLink] = []
    for plan in plan_links(config, pointmap):
        dev = devices[plan.device]
        if plan.protocol == "modbus":
            mb = dev.modbus
            assert mb is not None
            _require_port(config, mb.port, f"device {dev.name}: modbus.port")
            links.append(
                ModbusLink(
                    mb.host,
                    mb.port,
                    plan.points,
                    timeout_s=mb.timeout_s,
                    poll_interval_s=mb.poll_interval_s,
                    max_gap=mb.max_gap,
                    **common,
                )
            )
        else:
            op = dev.opcua
            assert op is not None
            if ":0/" in op.endpoint or op.endpoint.endswith(":0"):
                _require_port(config, 0, f"device {dev.name}: opcua.endpoint")
            links.append(
                OpcuaLink(
                    op.endpoint,
                    plan.points,
                    user=op.user,
                    password=op.password,
                    security=op.security_string(),
                    mode=op.mode,
                    sampling_interval_s=op.sampling_interval_s,
                    poll_interval_s=op.poll_interval_s,
                    timeout_s=op.timeout_s,
                    watchdog_s=op.watchdog_s,
                    session_timeout_s=op.session_timeout_s,
                    namespace=op.namespace or pointmap.namespace,
                    write_timestamps=op.write_timestamps,
                    **common,
                )
            )
    return links


def _require_port(config: HardwareConfig, port: int, key: str) -> None:
    if port == 0:
        raise ConfigError(
            config.source or "<hardware>",
            key,
            "expected a port; the emulated substation's ports are known once it runs "
            "(use HardwareConfig.bind_emulator)",
        )


async def open_links(
    config: HardwareConfig,
    pointmap: PointMap,
    *,
    clock: Callable[[], float] | None = None,
) -> list[FieldLink]:
    """Create and connect every link of the config (concurrently).

    Raises:
        ConfigError: see :func:`plan_links`.
        HilError: a link could not connect (the message names it); links already open are
            closed first.
    """
    links = make_links(config, pointmap, clock=clock)
    results = await asyncio.gather(*(lk.connect() for lk in links), return_exceptions=True)
    failed = [(lk, r) for lk, r in zip(links, results) if isinstance(r, BaseException)]
    if failed:
        await asyncio.gather(*(lk.close() for lk in links), return_exceptions=True)
        lk, exc = failed[0]
        if isinstance(exc, HilError):
            raise exc
        raise HilError(f"{lk.name}: connect failed: {exc!r}") from exc
    return links
