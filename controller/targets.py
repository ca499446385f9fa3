"""Who a broadcast reaches: requested targets -> normalised signed target, the command
topics to publish on (one per area, never one per terminal), and the terminals."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from controller.areas import (
    AREA_CODE,
    Circle,
    smallest_target,
    villages_by_codes,
    villages_in_shapes,
)
from controller.auth import Principal
from controller.errors import bad_request, forbidden
from controller.models import Device, Township, Village
from dalaba.protocol import Target, Topics

MAX_IDS = 2000


class CircleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_km: float = Field(gt=0, le=2000)


class TargetsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    all: bool = False
    townships: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    villages: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    devices: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    # Administrative codes (controller/areas.py): a code shorter than 12 digits is a
    # prefix covering every village under it.
    areas: list[str] = Field(default_factory=list, max_length=MAX_IDS)
    # WGS84 shapes: the villages whose coordinates fall inside (controller/areas.py).
    # A polygon is a closed ring of [lat, lon] points.
    polygons: list[list[tuple[float, float]]] = Field(default_factory=list, max_length=10)
    circles: list[CircleIn] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _not_empty(self) -> TargetsIn:
        lists = (
            self.townships
            or self.villages
            or self.devices
            or self.areas
            or self.polygons
            or self.circles
        )
        if not (self.all or lists):
            raise ValueError(
                "give all: true or at least one township, village, device, area or shape"
            )
        if self.all and lists:
            raise ValueError("all: true cannot be combined with lists")
        for i, code in enumerate(self.areas):
            if not AREA_CODE.match(code):
                raise ValueError(f"areas[{i}]: an administrative code of 2-12 digits")
        for i, ring in enumerate(self.polygons):
            if len(ring) < 4 or len(ring) > 2000 or ring[0] != ring[-1]:
                raise ValueError(f"polygons[{i}]: a closed ring of 4-2000 [lat, lon] points")
            if any(not (-90 <= lat <= 90 and -180 <= lon <= 180) for lat, lon in ring):
                raise ValueError(f"polygons[{i}]: WGS84 latitude and longitude")
        return self


@dataclass(frozen=True)
class Resolved:
    target: Target
    topics: tuple[str, ...]
    device_ids: tuple[str, ...]


def resolve(session: Session, requested: TargetsIn, principal: Principal) -> Resolved:
    """Check every id exists and lies within the caller's reach, then drop areas already
    covered by a larger one, so no terminal receives the command twice."""
    scope = principal.township_scope()
    if requested.all:
        if scope is not None:
            raise forbidden("targets.all: township staff may only broadcast to their township")
        everyone = session.exec(select(Device.id)).all()
        return Resolved(Target(all=True), (Topics.COMMAND_ALL,), tuple(sorted(everyone)))

    if requested.areas or requested.polygons or requested.circles:
        requested = _areas_expanded(session, requested)
    all_townships = set(session.exec(select(Township.id)).all())
    for i, tid in enumerate(requested.townships):
        if tid not in all_townships:
            raise bad_request(
                f"targets.townships[{i}]",
                f"unknown township {tid!r}",
                "unknown_township",
                {"id": tid},
            )
        if scope is not None and tid != scope:
            raise forbidden(f"targets.townships[{i}]: {tid} is outside your township")

    villages = {
        v.id: v.township_id
        for v in session.exec(select(Village).where(col(Village.id).in_(requested.villages))).all()
    }
    for i, vid in enumerate(requested.villages):
        if vid not in villages:
            raise bad_request(
                f"targets.villages[{i}]", f"unknown village {vid!r}", "unknown_village", {"id": vid}
            )
        if scope is not None and villages[vid] != scope:
            raise forbidden(f"targets.villages[{i}]: {vid} is outside your township")

    devices = {
        d.id: d
        for d in session.exec(select(Device).where(col(Device.id).in_(requested.devices))).all()
    }
    for i, did in enumerate(requested.devices):
        if did not in devices:
            raise bad_request(
                f"targets.devices[{i}]", f"unknown device {did!r}", "unknown_device", {"id": did}
            )
        if scope is not None and devices[did].township_id != scope:
            raise forbidden(f"targets.devices[{i}]: {did} is outside your township")

    t_set = sorted(set(requested.townships))
    v_set = sorted({v for v in requested.villages if villages[v] not in t_set})
    d_set = sorted(
        {
            d
            for d in requested.devices
            if devices[d].township_id not in t_set and devices[d].village_id not in v_set
        }
    )
    topics = (
        [Topics.command_township(t) for t in t_set]
        + [Topics.command_village(v) for v in v_set]
        + [Topics.command_device(d) for d in d_set]
    )
    query = select(Device.id).where(
        col(Device.township_id).in_(t_set)
        | col(Device.village_id).in_(v_set)
        | col(Device.id).in_(d_set)
    )
    device_ids = tuple(sorted(session.exec(query).all()))
    target = Target(townships=tuple(t_set), villages=tuple(v_set), devices=tuple(d_set))
    return Resolved(target, tuple(topics), device_ids)


def _areas_expanded(session: Session, requested: TargetsIn) -> TargetsIn:
    """The same request with its area codes turned into whole townships and villages,
    so that the checks below (existence, the caller's reach) apply to them as to ids."""
    covered = villages_by_codes(session, requested.areas)
    villages: set[str] = set()
    for i, code in enumerate(requested.areas):
        if not covered[code]:
            raise bad_request(f"targets.areas[{i}]", f"{code} covers no village of the county")
        villages |= covered[code]
    shapes = [
        *((f"polygons[{i}]", [ring], []) for i, ring in enumerate(requested.polygons)),
        *(
            (f"circles[{i}]", [], [Circle(c.lat, c.lon, c.radius_km)])
            for i, c in enumerate(requested.circles)
        ),
    ]
    for where, rings, circles in shapes:
        inside = villages_in_shapes(session, rings, circles)
        if not inside:
            raise bad_request(f"targets.{where}", "holds no village of the county")
        villages |= inside
    areas = smallest_target(session, villages)
    townships = areas.get("townships") if not areas.get("all") else None
    if townships is None:  # the whole county: every township, checked like any list
        townships = sorted(session.exec(select(Township.id)).all())
    extra_villages = list(areas.get("villages") or [])  # type: ignore[call-overload]
    return requested.model_copy(
        update={
            "areas": [],
            "polygons": [],
            "circles": [],
            "townships": [*requested.townships, *townships],  # type: ignore[misc]
            "villages": [*requested.villages, *extra_villages],
        }
    )


def topics_for(target: Target) -> tuple[str, ...]:
    """The command topics of an already-normalised target."""
    if target.all:
        return (Topics.COMMAND_ALL,)
    return (
        *(Topics.command_township(t) for t in target.townships),
        *(Topics.command_village(v) for v in target.villages),
        *(Topics.command_device(d) for d in target.devices),
    )
