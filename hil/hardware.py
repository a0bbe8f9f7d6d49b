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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hil.errors import HilError
from hil.links.base import FieldLink
from twin.errors import ConfigError
from twin.pointmap import Point, PointMap
from twin.tomlfile import KeyPath, Problems, TomlDoc, key_name, load_toml, parse_toml

_log = logging.getLogger(__name__)

STALE_POLICIES = ("hold", "refuse")
SECURITY_POLICIES = ("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
OPCUA_MODES = ("subscription", "poll")

_TOP_KEYS = ("pointmap", "stale_policy", "stale_factor", "backoff_min_s", "backoff_max_s", "device")
_DEVICE_KEYS = ("name", "points", "opcua", "modbus")
_OPCUA_KEYS = (
    "endpoint", "user", "password", "password_env", "security", "security_mode", "certificate",
    "private_key", "server_certificate", "server_trust", "mode", "sampling_interval_s",
    "poll_interval_s", "timeout_s", "session_timeout_s", "watchdog_s", "namespace", "read", "write",
    "write_timestamps",
)  # fmt: skip
_MODBUS_KEYS = (
    "host", "port", "units", "timeout_s", "poll_interval_s", "max_gap", "max_in_flight", "read",
    "write", "tls_pki",
)  # fmt: skip


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
    #: folder of trusted server certificates (a PKI's ``trusted/``): the client link's trust list
    server_trust: Path | None = None
    mode: str = "subscription"
    sampling_interval_s: float = 0.1
    poll_interval_s: float | None = None
    timeout_s: float = 2.0
    session_timeout_s: float = 30.0
    watchdog_s: float = 1.0
    namespace: str | None = None  # None: the point map's namespace
    read: bool | None = None  # None: to_twin points the device has no Modbus link for
    #: None: the to_field points no other link of the device writes (the embedded default)
    write: bool | None = True
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
    #: read requests of one poll sent back to back (1: one at a time; more only for a device
    #: that answers pipelined requests: pymodbus's own server does not)
    max_in_flight: int = 1
    read: bool = True
    write: bool = False
    #: Modbus/TCP Security: PKI folder (own certificate and key, ``trusted/`` server
    #: certificates) for mutual TLS; None: plain Modbus TCP
    tls_pki: Path | None = None


@dataclass(frozen=True)
class DeviceConfig:
    """One field device (an RTU, a protection relay, a gateway) and its links."""

    name: str
    points: tuple[str, ...] = ("*",)  # point-name patterns (fnmatch) this device carries
    opcua: OpcuaConfig | None = None
    modbus: ModbusConfig | None = None
    #: the role of an in-process link into the emulated substation's store (``"plant"`` or
    #: ``"operator"``); None: no such link. Only in a description bound to the in-process
    #: emulator (:func:`emulated_hardware`), never read from a file. Beside a protocol link it
    #: carries the plant's analog side only: the to_field measurements.
    store: str | None = None


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


def emulated_hardware(
    kinds: tuple[str, ...] | list[str],
    *,
    role: str = "plant",
    password: str | None = None,
    stale_factor: float | None = None,
    embedded: Any = None,
) -> HardwareConfig:
    """The embedded emulated substation as a hardware description: one device with the links
    a scenario's ``links`` names (``"direct"``, ``"opcua"``, ``"modbus"``), logged in as ``role``.

    Modbus reads what it has a binding for and writes commands and set points (coils, holding
    registers); OPC UA, polled once per step, reads the rest and writes what no other link
    writes; ``direct`` is the in-process store link. ``embedded``
    (:class:`hil.security.run.EmbeddedSecurity`): the OPC UA link signs (and encrypts) with
    its one-time certificate and checks the emulator's against its trust list. Bind it with
    :meth:`HardwareConfig.bind_emulator` once the substation runs.
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in ("direct", "opcua", "modbus")]
    if unknown or not kinds:
        raise ConfigError(
            "<scenario>", "links", f"expected one of direct, opcua, modbus, found {unknown!r}"
        )
    op = None
    if "opcua" in kinds:
        op = OpcuaConfig(
            endpoint="opc.tcp://127.0.0.1:0/gridtwin/",
            user=role,
            password=password,
            mode="poll",
            write=None,
            write_timestamps=False,
        )
        if embedded is not None:
            op = replace(
                op,
                security="Basic256Sha256",
                security_mode=embedded.mode,
                certificate=embedded.client.cert,
                private_key=embedded.client.key,
                server_trust=embedded.client.trusted,
            )
    mb = None
    if "modbus" in kinds:
        # The substation's register blocks are contiguous (every address is mapped), so a
        # read may span the measurements between two statuses: a few requests per step.
        # ... and sent back to back: the emulator's server answers pipelined requests
        mb = ModbusConfig(
            host="127.0.0.1",
            port=0,
            write=True,
            max_gap=_EMULATED_MAX_GAP,
            max_in_flight=_EMULATED_IN_FLIGHT,
        )
    dev = DeviceConfig(
        name="emulated", opcua=op, modbus=mb, store=role if "direct" in kinds else None
    )
    return HardwareConfig(
        devices=(dev,),
        stale_factor=stale_factor,
        emulated=True,
        source="<default: emulated substation>",
    )


#: Registers/bits a Modbus read of the emulated substation may span (one request's worth).
_EMULATED_MAX_GAP = 125
#: Read requests of one poll of the emulated substation sent before the first answer.
_EMULATED_IN_FLIGHT = 4


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
class _Skip(Exception):
    """A table whose problem has been noted: the rest of it is not read (the others are)."""


class _Reader:
    """Typed access to one TOML table; every problem is noted with the file, line and full key.

    ``fail`` notes a problem and returns :class:`_Skip` to raise (the table is abandoned, the
    file's other tables are still read); an unknown key is noted and reading goes on.
    """

    def __init__(self, problems: Problems, base: Path, data: Mapping[str, Any], path: KeyPath):
        self.problems = problems
        self.base = base
        self.data = data
        self.path = path

    def key(self, k: str) -> str:
        return key_name((*self.path, k))

    def fail(self, k: str, problem: str) -> _Skip:
        self.problems.add((*self.path, k), problem)
        return _Skip()

    def only(self, allowed: tuple[str, ...]) -> None:
        for k in self.data:
            if k not in allowed:
                self.problems.add(
                    (*self.path, k), f"unknown key; allowed keys: {', '.join(allowed)}"
                )

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
        return _Reader(self.problems, self.base, v, (*self.path, k))


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
    cert = key = server_cert = server_trust = None
    if security != "None":
        cert = r.path_("certificate")
        key = r.path_("private_key")
        server_cert = r.path_("server_certificate")
        server_trust = r.path_("server_trust", must_exist=False)
        if server_trust is not None and not server_trust.is_dir():
            raise r.fail(
                "server_trust",
                f"expected a folder of trusted server certificates, found no folder at "
                f"{server_trust}",
            )
        for k, v in (("certificate", cert), ("private_key", key)):
            if v is None:
                raise r.fail(
                    k, f"missing; security {security} needs a client {k.replace('_', ' ')}"
                )
    else:
        for k in (
            "certificate", "private_key", "server_certificate", "server_trust", "security_mode",
        ):  # fmt: skip
            if k in r.data:
                raise r.fail(k, "only used with a secure policy (e.g. security = "
                             '"Basic256Sha256"); security is "None"')  # fmt: skip
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
        server_trust=server_trust,
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
    max_in_flight = r.get("max_in_flight", int, 1, what="a number of requests")
    if not 1 <= max_in_flight <= 64:
        raise r.fail("max_in_flight", f"expected 1..64 requests, found {max_in_flight}")
    tls_pki = r.path_("tls_pki", must_exist=False)
    if tls_pki is not None and not (
        (tls_pki / "own" / "cert.der").is_file() and (tls_pki / "own" / "key.pem").is_file()
    ):
        raise r.fail(
            "tls_pki",
            f"expected a PKI folder with own/cert.der and own/key.pem (gridtwin certs create "
            f"--pki {tls_pki}), found none",
        )
    return ModbusConfig(
        host=host,
        port=port,
        units=units,
        timeout_s=r.positive("timeout_s", 1.0) or 1.0,
        poll_interval_s=r.positive("poll_interval_s", None),
        max_gap=max_gap,
        max_in_flight=max_in_flight,
        read=r.get("read", bool, True),
        write=r.get("write", bool, False),
        tls_pki=tls_pki,
    )


def loads_hardware(
    text: str,
    *,
    source: str = "<string>",
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> HardwareConfig:
    """Parse hardware.toml text; relative paths are taken from ``base`` (default: cwd).

    Raises:
        TomlFileError: (a ``ConfigError``) every problem of the file, each with its line.
    """
    return _from_doc(parse_toml(text, source=source, base=base), env)


def load_hardware(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> HardwareConfig:
    """Read a hardware.toml file.

    Raises:
        TomlFileError: (a ``ConfigError``) the file is missing or not TOML, or every unknown
            key and wrong value it has, each with file, line and key.
    """
    return _from_doc(load_toml(path, what="the hardware file"), env)


def _from_doc(doc: TomlDoc, env: Mapping[str, str] | None) -> HardwareConfig:
    env = os.environ if env is None else env
    data = doc.data
    problems = Problems(doc)
    top = _Reader(problems, doc.base, data, ())
    top.only(_TOP_KEYS)
    devices: list[DeviceConfig] = []
    raw_devices = data.get("device")
    if raw_devices is None:
        problems.add(("device",), "missing; expected at least one [[device]] table")
    elif not isinstance(raw_devices, list) or not all(isinstance(d, dict) for d in raw_devices):
        problems.add(("device",), "expected [[device]] tables (an array of tables)")
    else:
        names: set[str] = set()
        for i, raw in enumerate(raw_devices):
            try:
                devices.append(
                    _read_device(_Reader(problems, doc.base, raw, ("device", i)), i, names, env)
                )
            except _Skip:
                continue
    values: dict[str, Any] = {}
    for key, read in (
        ("stale_factor", lambda: top.positive("stale_factor", None)),
        ("backoff_min_s", lambda: top.positive("backoff_min_s", 0.2) or 0.2),
        ("backoff_max_s", lambda: top.positive("backoff_max_s", 5.0) or 5.0),
        ("pointmap", lambda: top.path_("pointmap")),
        ("stale_policy", lambda: top.choice("stale_policy", STALE_POLICIES, "hold")),
    ):
        try:
            values[key] = read()
        except _Skip:
            values[key] = None
    stale_factor = values["stale_factor"]
    if stale_factor is not None and stale_factor < 1.0:
        problems.add(("stale_factor",), f"expected a factor >= 1, found {stale_factor!r}")
    bmin, bmax = values["backoff_min_s"] or 0.2, values["backoff_max_s"] or 5.0
    if bmax < bmin:
        problems.add(("backoff_max_s",), f"expected >= backoff_min_s ({bmin:g}), found {bmax:g}")
    problems.raise_if_any()
    return HardwareConfig(
        devices=tuple(devices),
        pointmap=values["pointmap"],
        stale_policy=values["stale_policy"],
        stale_factor=stale_factor,
        backoff_min_s=bmin,
        backoff_max_s=bmax,
        source=doc.source,
    )


def _read_device(r: _Reader, i: int, names: set[str], env: Mapping[str, str]) -> DeviceConfig:
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
    op = mb = None
    skipped = False
    try:  # both tables are read, so that a problem in each is reported
        op = _read_opcua(op_r, env) if op_r else None
    except _Skip:
        skipped = True
    try:
        mb = _read_modbus(mb_r) if mb_r else None
    except _Skip:
        skipped = True
    if skipped:
        raise _Skip()
    return DeviceConfig(name=name, points=tuple(pats), opcua=op, modbus=mb)


# --- points per link -------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkPlan:
    """One link to open: its device, protocol and points."""

    device: str
    protocol: str  # "opcua" | "modbus" | "direct" (in-process, the emulated substation only)
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
        others_write: set[str] = set()
        if dev.store is not None:
            protocol = dev.opcua is not None or dev.modbus is not None
            pts = [
                p
                for p in mine
                if not protocol or (p.kind == "measurement" and p.direction == "to_field")
            ]
            plans.append(LinkPlan(dev.name, "direct", tuple(pts)))
            others_write.update(p.name for p in pts if p.direction == "to_field")
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
                    and p.name not in others_write
                ):
                    pts.append(p)
                    others_write.add(p.name)
            if pts:
                plans.append(LinkPlan(dev.name, "modbus", tuple(pts)))
        if dev.opcua is not None:
            op = dev.opcua
            pts = []
            for p in mine:
                if p.opcua is None:
                    continue
                if p.direction == "to_field":
                    if op.write is True or (op.write is None and p.name not in others_write):
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
    carried = {p.name for plan in plans for p in plan.points}
    unread = [p.name for p in pointmap.points if p.direction == "to_twin" and p.name not in carried]
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
    store: Any = None,
) -> list[FieldLink]:
    """Field link objects for the config (not connected), in the order of :func:`plan_links`.

    Args:
        store: the emulated substation's point store, for a device's in-process link
            (:attr:`DeviceConfig.store`).
    """
    from hil.links.modbus import ModbusLink
    from hil.links.store import StoreLink

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
        if plan.protocol == "direct":
            if store is None or clock is None:
                raise ConfigError(
                    config.source or "<hardware>",
                    f"device {dev.name}: store",
                    "expected the in-process emulated substation's store and clock, found none",
                )
            links.append(
                StoreLink(
                    store, plan.points, role=dev.store or "plant", clock=clock, stale_factor=stale
                )
            )
        elif plan.protocol == "modbus":
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
                    max_in_flight=mb.max_in_flight,
                    tls=_modbus_tls(mb),
                    **common,
                )
            )
        else:
            from hil.links.opcua import OpcuaLink  # asyncua: only a run with an OPC UA link

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
                    server_trust=op.server_trust,
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


def _modbus_tls(mb: ModbusConfig) -> Any:
    if mb.tls_pki is None:
        return None
    from hil.security.certs import Pki
    from hil.security.modbus_tls import ModbusTls

    return ModbusTls.from_pki(Pki(mb.tls_pki))


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
