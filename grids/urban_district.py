"""Builder of the synthetic ``urban_district`` grid (grids/data/urban_district_v1.json).

The grid is synthetic. It is modelled on typical Vietnamese urban 22 kV distribution practice:
a 110/22 kV substation transformer with an on-load tap changer on the HV side, 22 kV XLPE cable
rings run radially with one normally-open point, ring main units with a 22/0.4 kV kiosk
transformer each, and short 0.4 kV cable feeders. No real utility's data was used; parameters
are textbook-typical values chosen so that the scenarios have something to do:

- base case (stored values): every bus in 0.95-1.05 pu, every line below 80 % loading;
- EV evening peak (PV off, every load x1.3): LV feeder ends near 0.95 pu, cables near their limit;
- PV midday (PV at full output, load x0.3): LV feeder ends at about 1.05-1.08 pu.

Naming, so scenarios can address elements by name:

- buses ``HV_110``, ``SS1_22``, ring nodes ``N1`` .. ``N8``, kiosk LV busbars ``N1_LV``, LV feeder
  buses ``N1_F1_B1`` ..;
- substation transformer ``T1`` (tap -9..+9, 1.25 %/step, HV side), kiosk transformers ``TD_N1`` ..;
- switches: feeder breakers ``CB_F1`` (ring half N1-N4) and ``CB_F2`` (ring half N8-N5) at
  the substation; load-break switches at both ends of every ring cable: ``Q12`` at N1 on the
  cable to N2, ``Q21`` at N2 on the same cable, ... ``Q78``/``Q87``, and ``Q1S``/``Q8S`` at N1/N8
  on the cables from the substation. ``Q45`` is the normally-open point. To isolate a faulted
  cable N2-N3 open ``Q23`` and ``Q32``, then close ``Q45``. LV feeder head switches
  ``LV_N1_F1`` ..;
- loads ``RES_...`` (residential), ``COM_...`` (commercial; ``COM_N3_MV`` etc. are 22 kV customers
  with their own substations), ``EV_...`` (EV chargers) and ``MV_OTHER_FEEDERS`` (the
  substation's other 22 kV feeders, lumped); column ``category`` holds
  ``residential`` / ``commercial`` / ``ev`` / ``aggregate`` (pandapower's own ``type`` column
  means wye/delta, so it is not reused);
- rooftop PV as sgens ``PV_...`` with ``type == "PV"``; ``sn_mva`` is the inverter rating and
  ``p_mw`` the full (peak) output.

Geodata: WGS84 longitude/latitude on ``bus.geo`` and ``line.geo`` (GeoJSON, as pandapower 3
keeps it), laid out as a plausible street-level plan of a few blocks of Hai Chau district, Da
Nang: the 110/22 kV substation near the Han river, the 22 kV ring around the blocks to the west
(node spacing follows the cable lengths only roughly), and each kiosk's LV feeders along the
streets of its block (segment spacing = cable length). The coordinates are made up for the
diagram; they are not a survey of real assets.

Run ``python -m grids.urban_district`` to rewrite the JSON file; the build is deterministic (no
random numbers), and a test checks that the stored file equals a rebuild.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pandapower.auxiliary import pandapowerNet

_log = logging.getLogger(__name__)

VERSION = 1
JSON_PATH = Path(__file__).resolve().parent / "data" / f"urban_district_v{VERSION}.json"

# --- electrical parameters (typical values, see the module docstring) -------------------------
_EXT_GRID_VM_PU = 1.0
_T1 = dict(
    sn_mva=40.0, vn_hv_kv=110.0, vn_lv_kv=22.0, vk_percent=12.0, vkr_percent=0.35,
    pfe_kw=25.0, i0_percent=0.04, shift_degree=0.0, tap_side="hv", tap_neutral=0,
    tap_min=-9, tap_max=9, tap_step_percent=1.25, tap_pos=-2, tap_changer_type="Ratio",
)  # fmt: skip
# Cu/XLPE/PVC 3x240 mm2 24 kV (CXV/DSTA), laid in ground.
_MV_CABLE = dict(r_ohm_per_km=0.0754, x_ohm_per_km=0.105, c_nf_per_km=380.0, max_i_ka=0.42)
# Kiosk transformers 22/0.4 kV, Dyn11 (pandapower's 150 degree convention for Dyn5 is not used:
# the shift does not matter for the radial load flow, 330 degrees is Dyn11).
_TD = dict(
    vn_hv_kv=22.0, vn_lv_kv=0.4, vkr_percent=1.1, pfe_kw=1.0, i0_percent=0.25,
    shift_degree=330.0, tap_side="hv", tap_neutral=0, tap_min=-2, tap_max=2,
    tap_step_percent=2.5, tap_pos=-1, tap_changer_type="Ratio",
)  # fmt: skip
# 0.6/1 kV Cu/XLPE cables: feeder trunk 4x185 and a lighter 4x95 for the tail.
_LV_TRUNK = dict(r_ohm_per_km=0.0991, x_ohm_per_km=0.072, c_nf_per_km=0.0, max_i_ka=0.36)
_LV_TAIL = dict(r_ohm_per_km=0.193, x_ohm_per_km=0.075, c_nf_per_km=0.0, max_i_ka=0.245)

_PF_RES = 0.95
_PF_COM = 0.92
_PF_EV = 0.99
_MV_OTHER_MW = 8.0
# Large customers (offices, malls, a hospital) own their 22/0.4 kV substations, as is usual in
# Vietnamese cities; they are lumped as 22 kV loads at the ring node (MW).
_MV_CUSTOMERS: tuple[tuple[str, float], ...] = (
    ("N2", 1.2), ("N3", 1.5), ("N5", 1.0), ("N6", 1.5), ("N7", 2.0),
)  # fmt: skip


@dataclass(frozen=True)
class _Feeder:
    """One LV feeder: per bus (residential kW, commercial kW, EV kW, PV kWp), segment lengths."""

    buses: tuple[tuple[float, float, float, float], ...]
    seg_km: tuple[float, ...]
    parallel: int = 1  # parallel cables per segment (commercial feeders)


@dataclass(frozen=True)
class _Node:
    name: str
    kva: float
    vk_percent: float
    mv_km: float  # cable length from the previous ring node (or the substation) to this node
    feeders: tuple[_Feeder, ...]


def _res_feeder(n: int, res_kw: float, ev_at: tuple[int, ...], pv_at: tuple[int, ...],
                seg_km: float, parallel: int = 1) -> _Feeder:  # fmt: skip
    buses = tuple(
        (res_kw, 0.0, 11.0 if i in ev_at else 0.0, 30.0 if i in pv_at else 0.0) for i in range(n)
    )
    return _Feeder(buses, tuple(seg_km for _ in range(n)), parallel)


_NODES: tuple[_Node, ...] = (
    _Node(
        "N1",
        630,
        4.5,
        1.2,
        (
            _res_feeder(4, 30.0, ev_at=(2, 3), pv_at=(1, 3), seg_km=0.09),
            _res_feeder(4, 30.0, ev_at=(2,), pv_at=(0, 2), seg_km=0.08),
        ),
    ),
    _Node(
        "N2",
        630,
        4.5,
        0.9,
        (
            _res_feeder(5, 25.0, ev_at=(3, 4), pv_at=(2, 4), seg_km=0.08),
            _res_feeder(4, 25.0, ev_at=(), pv_at=(1,), seg_km=0.07),
        ),
    ),
    _Node(
        "N3",
        1000,
        5.0,
        1.1,
        (  # shopping centre with DC fast chargers
            _Feeder(
                ((0.0, 150.0, 0.0, 100.0), (0.0, 100.0, 50.0, 0.0), (0.0, 60.0, 50.0, 0.0)),
                (0.05, 0.06, 0.06),
                parallel=3,
            ),
            _res_feeder(4, 30.0, ev_at=(3,), pv_at=(1, 3), seg_km=0.09),
        ),
    ),
    _Node(
        "N4",
        630,
        4.5,
        1.0,
        (
            _res_feeder(5, 28.0, ev_at=(2, 4), pv_at=(1, 3, 4), seg_km=0.09),
            _res_feeder(4, 25.0, ev_at=(3,), pv_at=(2,), seg_km=0.08),
        ),
    ),
    _Node(
        "N5",
        1000,
        5.0,
        1.3,
        (  # high-rise apartments
            _res_feeder(3, 90.0, ev_at=(1, 2), pv_at=(0, 2), seg_km=0.06, parallel=2),
            _res_feeder(3, 80.0, ev_at=(2,), pv_at=(1,), seg_km=0.06, parallel=2),
        ),
    ),
    _Node(
        "N6",
        630,
        4.5,
        0.8,
        (
            _res_feeder(5, 28.0, ev_at=(1, 3), pv_at=(0, 2, 3), seg_km=0.08),
            _res_feeder(4, 28.0, ev_at=(3,), pv_at=(1, 3), seg_km=0.1),
        ),
    ),
    _Node(
        "N7",
        1000,
        5.0,
        0.9,
        (  # offices
            _Feeder(
                ((0.0, 140.0, 22.0, 80.0), (0.0, 120.0, 22.0, 0.0), (0.0, 100.0, 0.0, 60.0)),
                (0.05, 0.07, 0.07),
                parallel=3,
            ),
            _res_feeder(4, 28.0, ev_at=(2,), pv_at=(2, 3), seg_km=0.08),
        ),
    ),
    _Node(
        "N8",
        630,
        4.5,
        1.4,
        (
            _res_feeder(4, 30.0, ev_at=(2, 3), pv_at=(1, 2, 3), seg_km=0.09),
            _res_feeder(4, 28.0, ev_at=(1,), pv_at=(0, 2), seg_km=0.08),
        ),
    ),
)
#: The ring is split between the two feeder breakers at this sectionaliser (normally open).
OPEN_POINT = "Q45"
_SS_TO_N8_KM = 1.0


# --- geodata (see the module docstring) ------------------------------------------------------
# The substation (lon, lat), Hai Chau district, Da Nang, a few hundred metres west of the river.
_SS_LONLAT = (108.2205, 16.0640)
_M_PER_DEG_LAT = 111_320.0
# The ring's centre, relative to the substation (east, north) in metres, and its radius.
_RING_CENTRE_M = (-900.0, 250.0)
_RING_RADIUS_M = 800.0


def _lonlat(east_m: float, north_m: float) -> tuple[float, float]:
    """(lon, lat) of a point ``east_m``/``north_m`` metres from the substation, to ~0.1 m."""
    lon0, lat0 = _SS_LONLAT
    m_per_deg_lon = _M_PER_DEG_LAT * math.cos(math.radians(lat0))
    return (round(lon0 + east_m / m_per_deg_lon, 6), round(lat0 + north_m / _M_PER_DEG_LAT, 6))


def _ring_xy(i: int, n: int) -> tuple[float, float]:
    """Ring node ``i`` of ``n`` (0-based) in metres: clockwise from the substation's side."""
    # N1 starts south-east of the centre (next to the substation), N8 ends north-east of it.
    ang = math.radians(-60.0 - 300.0 * i / (n - 1))
    cx, cy = _RING_CENTRE_M
    return (cx + _RING_RADIUS_M * math.cos(ang), cy + _RING_RADIUS_M * math.sin(ang))


def _street(dx: float, dy: float) -> tuple[float, float]:
    """The street direction (a unit step along east-west or north-south) closest to (dx, dy)."""
    if abs(dx) >= abs(dy):
        return (math.copysign(1.0, dx), 0.0)
    return (0.0, math.copysign(1.0, dy))


def _q(p_mw: float, pf: float) -> float:
    return p_mw * math.tan(math.acos(pf))


def build() -> pandapowerNet:
    """Build the urban_district net from the tables above (deterministic)."""
    import pandapower as pp

    net = pp.create_empty_network(name="urban_district", f_hz=50.0, sn_mva=1.0)
    hv = pp.create_bus(net, 110.0, name="HV_110", type="b", zone="SS1", geodata=_lonlat(40.0, 0.0))
    ss = pp.create_bus(net, 22.0, name="SS1_22", type="b", zone="SS1", geodata=_lonlat(0.0, 0.0))
    xy: dict[int, tuple[float, float]] = {hv: (40.0, 0.0), ss: (0.0, 0.0)}
    pp.create_ext_grid(
        net, hv, vm_pu=_EXT_GRID_VM_PU, va_degree=0.0, name="GRID_110",
        s_sc_max_mva=5000.0, s_sc_min_mva=3000.0, rx_max=0.1, rx_min=0.1,
    )  # fmt: skip
    pp.create_transformer_from_parameters(net, hv, ss, name="T1", **_T1)
    lo = pp.create_load(net, ss, p_mw=_MV_OTHER_MW, q_mvar=_q(_MV_OTHER_MW, 0.93),
                        name="MV_OTHER_FEEDERS")  # fmt: skip
    categories: dict[int, str] = {lo: "aggregate"}

    ring = []
    for i, node in enumerate(_NODES):
        pos = _ring_xy(i, len(_NODES))
        b = pp.create_bus(net, 22.0, name=node.name, type="b", zone="RING1", geodata=_lonlat(*pos))
        xy[b] = pos
        ring.append(b)

    def geo(a: int, b: int) -> list[tuple[float, float]]:
        return [_lonlat(*xy[a]), _lonlat(*xy[b])]

    def mv_line(a: int, b: int, km: float, name: str) -> int:
        return pp.create_line_from_parameters(
            net, a, b, length_km=km, name=name, type="cs", geodata=geo(a, b), **_MV_CABLE
        )

    def ring_switch(bus: int, line: int, name: str, kind: str = "LBS") -> None:
        pp.create_switch(net, bus, line, et="l", closed=name != OPEN_POINT, type=kind, name=name)

    # Ring: SS1_22 - N1 - N2 - ... - N8 - SS1_22. Feeder 1 leaves towards N1, feeder 2 towards
    # N8. Every ring cable has a switch at both ends (ring main units), so a faulted section can
    # be isolated on both sides: Q<i><j> sits at node i on the cable towards node j; Q1S and
    # Q8S sit at N1 and N8 on the cables from the substation.
    n = len(_NODES)
    first = mv_line(ss, ring[0], _NODES[0].mv_km, "L_SS1_N1")
    ring_switch(ss, first, "CB_F1", "CB")
    ring_switch(ring[0], first, "Q1S")
    for i in range(1, n):
        a, b = ring[i - 1], ring[i]
        ln = mv_line(a, b, _NODES[i].mv_km, f"L_{_NODES[i - 1].name}_{_NODES[i].name}")
        ring_switch(a, ln, f"Q{i}{i + 1}")
        ring_switch(b, ln, f"Q{i + 1}{i}")
    last = mv_line(ss, ring[-1], _SS_TO_N8_KM, f"L_SS1_{_NODES[-1].name}")
    ring_switch(ss, last, "CB_F2", "CB")
    ring_switch(ring[-1], last, f"Q{n}S")

    mv_customers = dict(_MV_CUSTOMERS)
    for node, mv in zip(_NODES, ring, strict=True):
        if node.name in mv_customers:
            p = mv_customers[node.name]
            idx = pp.create_load(net, mv, p_mw=p, q_mvar=_q(p, _PF_COM), name=f"COM_{node.name}_MV",
                                 sn_mva=p / _PF_COM)  # fmt: skip
            categories[idx] = "commercial"
        # The kiosk stands 25 m outwards of its ring node; its feeders run along the streets.
        mx, my = xy[mv]
        ox, oy = mx - _RING_CENTRE_M[0], my - _RING_CENTRE_M[1]
        norm = math.hypot(ox, oy) or 1.0
        kx, ky = mx + 25.0 * ox / norm, my + 25.0 * oy / norm
        lv = pp.create_bus(
            net, 0.4, name=f"{node.name}_LV", type="b", zone=node.name, geodata=_lonlat(kx, ky)
        )
        xy[lv] = (kx, ky)
        out_dir = _street(ox, oy)
        # Feeder 1 runs outwards along one street, feeder 2 along the cross street (turned left).
        dirs = (out_dir, (-out_dir[1], out_dir[0]))
        pp.create_transformer_from_parameters(
            net, mv, lv, sn_mva=node.kva / 1000.0, vk_percent=node.vk_percent,
            name=f"TD_{node.name}", **_TD,
        )  # fmt: skip
        for fi, feeder in enumerate(node.feeders, start=1):
            prefix = f"{node.name}_F{fi}"
            prev = lv
            sx, sy = dirs[(fi - 1) % len(dirs)]
            px, py = kx, ky
            for bi, ((res, com, ev, pv), km) in enumerate(
                zip(feeder.buses, feeder.seg_km, strict=True), start=1
            ):
                tag = f"{prefix}_B{bi}"
                px, py = px + sx * km * 1000.0, py + sy * km * 1000.0
                bus = pp.create_bus(
                    net, 0.4, name=tag, type="n", zone=node.name, geodata=_lonlat(px, py)
                )
                xy[bus] = (px, py)
                # Trunk for the first half of the feeder, lighter cable for the tail.
                params = _LV_TRUNK if bi <= (len(feeder.buses) + 1) // 2 else _LV_TAIL
                ln = pp.create_line_from_parameters(
                    net,
                    prev,
                    bus,
                    length_km=km,
                    name=f"L_{tag}",
                    type="cs",
                    parallel=feeder.parallel,
                    geodata=geo(prev, bus),
                    **params,
                )
                if bi == 1:
                    pp.create_switch(net, lv, ln, et="l", closed=True, type="LBS",
                                     name=f"LV_{prefix}")  # fmt: skip
                for kind, kw, pf, cat in (
                    ("RES", res, _PF_RES, "residential"),
                    ("COM", com, _PF_COM, "commercial"),
                    ("EV", ev, _PF_EV, "ev"),
                ):
                    if kw > 0:
                        p = kw / 1000.0
                        idx = pp.create_load(net, bus, p_mw=p, q_mvar=_q(p, pf),
                                             name=f"{kind}_{tag}", sn_mva=p / pf)  # fmt: skip
                        categories[idx] = cat
                if pv > 0:
                    p = pv / 1000.0
                    pp.create_sgen(net, bus, p_mw=p, q_mvar=0.0, sn_mva=p * 1.1,
                                   name=f"PV_{tag}", type="PV")  # fmt: skip
                prev = bus

    net.load["category"] = [categories[i] for i in net.load.index]
    return net


def to_json(net: pandapowerNet) -> str:
    """Serialize a net the way the bundled file is stored."""
    import pandapower as pp

    return pp.to_json(net)


def write(path: Path = JSON_PATH) -> Path:
    """Build the grid and write it to ``path`` (atomically)."""
    text = to_json(build())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    _log.info("wrote %s (%d bytes)", path, len(text))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild grids/data/urban_district_v1.json")
    parser.add_argument("--out", type=Path, default=JSON_PATH, help="output file")
    args = parser.parse_args(argv)
    print(write(args.out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
