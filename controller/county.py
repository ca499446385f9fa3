"""The county's townships, villages and terminals: loaded from the data file in the
repo (or generated at a given size for scale tests) and written into the database."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, select

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

    def device_ids(self) -> list[str]:
        return [f"d-{self.id}-{n}" for n in range(1, self.terminals + 1)]


@dataclass(frozen=True)
class TownshipSpec:
    id: str
    name: str
    name_en: str
    lat: float
    lon: float
    villages: tuple[VillageSpec, ...] = field(default=())


@dataclass(frozen=True)
class County:
    name: str
    timezone: str
    townships: tuple[TownshipSpec, ...]

    @property
    def villages(self) -> list[VillageSpec]:
        return [v for t in self.townships for v in t.villages]

    @classmethod
    def load(cls, path: Path = COUNTY_FILE) -> County:
        data = json.loads(path.read_text())
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
                )
                for v in t["villages"]
            )
            townships.append(
                TownshipSpec(t["id"], t["name"], t.get("name_en", ""), t["lat"], t["lon"], villages)
            )
        return cls(data["county"]["name"], data["county"]["timezone"], tuple(townships))

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
                kept.append(TownshipSpec(t.id, t.name, t.name_en, t.lat, t.lon, t.villages[:left]))
                left -= len(kept[-1].villages)
            return cls(base.name, base.timezone, tuple(kept))
        townships = list(base.townships)
        left = villages - len(base.villages)
        n = len(townships)
        while left > 0:
            n += 1
            size = min(14, left)
            angle, radius = n * 2.4, 0.3 + 0.02 * math.sqrt(n)
            tlat, tlon = 28.2 + radius * math.sin(angle), 112.9 + radius * math.cos(angle)
            tid = f"t{n:03d}"
            vs = tuple(
                VillageSpec(
                    f"{tid}-v{i:02d}",
                    tid,
                    f"第{n}乡{i}村",
                    round(tlat + 0.01 * (i % 5), 4),
                    round(tlon + 0.01 * (i // 5), 4),
                )
                for i in range(1, size + 1)
            )
            townships.append(TownshipSpec(tid, f"第{n}乡", f"Township {n}", tlat, tlon, vs))
            left -= size
        return cls(base.name, base.timezone, tuple(townships))


def seed(session: Session, county: County) -> int:
    """Insert what is missing; never touches rows that already exist. Returns the
    number of terminals added."""
    have_t = set(session.exec(select(Township.id)).all())
    have_v = set(session.exec(select(Village.id)).all())
    have_d = set(session.exec(select(Device.id)).all())
    added = 0
    for t in county.townships:
        if t.id not in have_t:
            session.add(Township(id=t.id, name=t.name, name_en=t.name_en, lat=t.lat, lon=t.lon))
    session.flush()
    for t in county.townships:
        for v in t.villages:
            if v.id not in have_v:
                session.add(Village(id=v.id, township_id=t.id, name=v.name, lat=v.lat, lon=v.lon))
    session.flush()
    for t in county.townships:
        for v in t.villages:
            for n, device_id in enumerate(v.device_ids(), start=1):
                if device_id not in have_d:
                    name = v.name if v.terminals == 1 else f"{v.name}#{n}"
                    session.add(Device(id=device_id, village_id=v.id, township_id=t.id, name=name))
                    added += 1
    return added
