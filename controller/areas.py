"""Places by administrative code and by map: which villages an area code, a polygon or a
circle (WGS84) covers, and the smallest target that reaches exactly those villages.

Codes (docs/upstream.md, GB/T 2260 extended): a township has 9 digits (county 6 +
township 3), a village 12 (township 9 + village 3). A code given shorter than 12 digits
is a prefix and covers every place under it; the county's own 6-digit code is everything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlmodel import Session, select

from controller.models import Township, Village

AREA_CODE = re.compile(r"^[0-9]{2,12}$")
EARTH_RADIUS_KM = 6371.0088

Point = tuple[float, float]  # (lat, lon)


@dataclass(frozen=True)
class Circle:
    lat: float
    lon: float
    radius_km: float


def village_code(township_code: str, n: int) -> str:
    """Villages' committees are numbered from 201 in the statistical codes (0xx are
    urban communities, which the network does not reach)."""
    return f"{township_code}{200 + n:03d}"


def resource_code(area_code: str, kind: str = "0314", extension: int = 1) -> str:
    """An 18-digit resource code: type and subtype (4 digits; 0314 for an IP loudspeaker
    terminal in the demo data, see docs/upstream.md), the 12-digit area, 2-digit
    extension (several terminals of one village)."""
    if len(area_code) != 12 or not area_code.isdigit():
        raise ValueError(f"area code {area_code!r}: 12 digits")
    return f"{kind}{area_code}{extension:02d}"


def villages_by_codes(session: Session, codes: Iterable[str]) -> dict[str, set[str]]:
    """Each code -> the ids of the villages it covers (empty when it covers none)."""
    rows = session.exec(
        select(Village.id, Village.code, Township.code).where(Village.township_id == Township.id)
    ).all()
    out: dict[str, set[str]] = {}
    for code in codes:
        out[code] = {vid for vid, vcode, tcode in rows if (vcode or tcode or "").startswith(code)}
    return out


def point_in_polygon(lat: float, lon: float, ring: Sequence[Point]) -> bool:
    """Even-odd ray casting on the plane of (lon, lat): exact enough for a county, where a
    degree of longitude hardly changes across the polygon."""
    inside = False
    n = len(ring)
    for i in range(n):
        lat1, lon1 = ring[i]
        lat2, lon2 = ring[(i + 1) % n]
        if (lat1 > lat) != (lat2 > lat):
            cross = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
            if lon < cross:
                inside = not inside
    return inside


def distance_km(a: Point, b: Point) -> float:
    """Great-circle (haversine) distance."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def villages_in_shapes(
    session: Session, polygons: Sequence[Sequence[Point]], circles: Sequence[Circle]
) -> set[str]:
    """The villages whose coordinates fall inside any polygon or circle."""
    if not polygons and not circles:
        return set()
    found = set()
    for vid, lat, lon in session.exec(select(Village.id, Village.lat, Village.lon)).all():
        if any(point_in_polygon(lat, lon, ring) for ring in polygons) or any(
            distance_km((lat, lon), (c.lat, c.lon)) <= c.radius_km for c in circles
        ):
            found.add(vid)
    return found


def smallest_target(session: Session, village_ids: Iterable[str]) -> dict[str, object]:
    """A `TargetsIn`-shaped dict reaching exactly these villages: whole townships named as
    townships (one command topic each instead of one per village), the county as all."""
    wanted = set(village_ids)
    by_township: dict[str, set[str]] = {}
    for vid, tid in session.exec(select(Village.id, Village.township_id)).all():
        by_township.setdefault(tid, set()).add(vid)
    if wanted and all(vs <= wanted for vs in by_township.values()):
        return {"all": True}
    townships = sorted(t for t, vs in by_township.items() if vs and vs <= wanted)
    covered = set().union(*(by_township[t] for t in townships)) if townships else set()
    return {"townships": townships, "villages": sorted(wanted - covered)}
