"""The county's townships, villages and terminals: loaded from the data file in the
repo (or generated at a given size for scale tests) and written into the database."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from controller.areas import resource_code, village_code
from controller.models import Device, Township, Village

COUNTY_FILE = Path(__file__).parent / "data" / "county.json"


@dataclass(frozen=True)
class VillageSpec:
    id: str
    township_id: str
    name: str
    lat: float
    lon: float
    terminals: int = 1
    tags: tuple[str, ...] = ()
    code: str | None = None  # 12-digit administrative code (controller/areas.py)

    def device_ids(self) -> list[str]:
        return [f"d-{self.id}-{n}" for n in range(1, self.terminals + 1)]

    def resource_codes(self) -> list[str | None]:
        """The terminals' 18-digit resource codes, in `device_ids` order."""
        n = range(1, self.terminals + 1)
        return [resource_code(self.code, extension=i) if self.code else None for i in n]


@dataclass(frozen=True)
class TownshipSpec:
    id: str
    name: str
    name_en: str
    lat: float
    lon: float
    villages: tuple[VillageSpec, ...] = field(default=())
    code: str | None = None  # 9-digit administrative code


@dataclass(frozen=True)
class County:
    name: str
    timezone: str
    townships: tuple[TownshipSpec, ...]
    code: str | None = None  # 6-digit GB/T 2260 county code

    @property
    def villages(self) -> list[VillageSpec]:
        return [v for t in self.townships for v in t.villages]

    @classmethod
    def load(cls, path: Path = COUNTY_FILE) -> County:
        data = json.loads(path.read_text())
        _check_codes(data)
        townships = []
        for t in data["townships"]:
            villages = tuple(
                VillageSpec(
                    id=v["id"],
                    township_id=t["id"],
                    name=v["name"],
                    lat=v["lat"],
                    lon=v["lon"],
                    terminals=v.get("terminals", 1),
                    tags=tuple(v.get("tags", ())),
                    code=v.get("code"),
                )
                for v in t["villages"]
            )
            townships.append(
                TownshipSpec(
                    t["id"],
                    t["name"],
                    t.get("name_en", ""),
                    t["lat"],
                    t["lon"],
                    villages,
                    t.get("code"),
                )
            )
        county = data["county"]
        return cls(county["name"], county["timezone"], tuple(townships), county.get("code"))

    @classmethod
    def for_size(cls, villages: int) -> County:
        """The demo county for 164 villages; otherwise the same county cut down, or
        grown with generated townships of ~14 villages (for scale tests)."""
        base = cls.load()
        if villages <= len(base.villages):
            kept, left = [], villages
            for t in base.townships:
                if left <= 0:
                    break
                kept.append(
                    TownshipSpec(t.id, t.name, t.name_en, t.lat, t.lon, t.villages[:left], t.code)
                )
                left -= len(kept[-1].villages)
            return cls(base.name, base.timezone, tuple(kept), base.code)
        townships = list(base.townships)
        left = villages - len(base.villages)
        n = len(townships)
        while left > 0:
            n += 1
            size = min(14, left)
            angle, radius = n * 2.4, 0.3 + 0.02 * math.sqrt(n)
            tlat, tlon = 28.2 + radius * math.sin(angle), 112.9 + radius * math.cos(angle)
            tid = f"t{n:03d}"
            # Generated townships are numbered as 乡 from 300 (the data file's end below).
            tcode = f"{base.code}{300 + n:03d}" if base.code and n < 700 else None
            vs = tuple(
                VillageSpec(
                    f"{tid}-v{i:02d}",
                    tid,
                    f"第{n}乡{i}村",
                    round(tlat + 0.01 * (i % 5), 4),
                    round(tlon + 0.01 * (i // 5), 4),
                    code=village_code(tcode, i) if tcode else None,
                )
                for i in range(1, size + 1)
            )
            townships.append(TownshipSpec(tid, f"第{n}乡", f"Township {n}", tlat, tlon, vs, tcode))
            left -= size
        return cls(base.name, base.timezone, tuple(townships), base.code)


def _check_codes(data: dict[str, Any]) -> None:
    """Codes are optional; one given must be the right length and lie under its parent's
    (controller/areas.py), or targeting by code would silently miss places."""
    county = data["county"].get("code")
    if county is not None and not re.fullmatch(r"[0-9]{6}", county):
        raise ValueError(f"county.code {county!r}: 6 digits (GB/T 2260)")
    for t in data["townships"]:
        tcode = t.get("code")
        if tcode is not None and not (
            re.fullmatch(r"[0-9]{9}", tcode) and tcode.startswith(county or "")
        ):
            raise ValueError(f"township {t['id']} code {tcode!r}: 9 digits under {county}")
        for v in t["villages"]:
            vcode = v.get("code")
            if vcode is not None and not (
                re.fullmatch(r"[0-9]{12}", vcode) and vcode.startswith(tcode or county or "")
            ):
                raise ValueError(f"village {v['id']} code {vcode!r}: 12 digits under {tcode}")


def seed(session: Session, county: County) -> int:
    """Insert what is missing; never changes rows that already exist, except to give
    an administrative or resource code to a row that has none (a database from before
    codes existed). Returns the number of terminals added."""
    have_t = {t.id: t for t in session.exec(select(Township)).all()}
    have_v = {v.id: v for v in session.exec(select(Village)).all()}
    have_d = {d.id: d for d in session.exec(select(Device)).all()}
    added = 0
    for t in county.townships:
        if t.id not in have_t:
            session.add(
                Township(id=t.id, name=t.name, name_en=t.name_en, code=t.code, lat=t.lat, lon=t.lon)
            )
        elif have_t[t.id].code is None and t.code:
            have_t[t.id].code = t.code
    session.flush()
    for t in county.townships:
        for v in t.villages:
            if v.id not in have_v:
                session.add(
                    Village(
                        id=v.id, township_id=t.id, name=v.name, code=v.code, lat=v.lat, lon=v.lon
                    )
                )
            elif have_v[v.id].code is None and v.code:
                have_v[v.id].code = v.code
    session.flush()
    for t in county.townships:
        for v in t.villages:
            for n, (device_id, rcode) in enumerate(
                zip(v.device_ids(), v.resource_codes(), strict=True), start=1
            ):
                if device_id not in have_d:
                    name = v.name if v.terminals == 1 else f"{v.name}#{n}"
                    session.add(
                        Device(
                            id=device_id,
                            village_id=v.id,
                            township_id=t.id,
                            name=name,
                            resource_code=rcode,
                        )
                    )
                    added += 1
                elif have_d[device_id].resource_code is None and rcode:
                    have_d[device_id].resource_code = rcode
    return added
