"""Typed keys for what the wiring puts on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from controller.broadcasts import BroadcastService
    from controller.db import Database
    from controller.dispatch import Dispatcher
    from controller.events import EventHub
    from controller.ingest import Ingestor
    from controller.live import LiveHub
    from controller.media import MediaStore
    from controller.prepositioning import Prepositioner
    from controller.replicas import Leadership
    from controller.schedules.service import ScheduleService
    from controller.sessions import SessionStore
    from controller.settings import Settings
    from controller.speech import AnnouncementRenderer

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
MEDIA: web.AppKey[MediaStore] = web.AppKey("media")
BROADCASTS: web.AppKey[BroadcastService] = web.AppKey("broadcasts")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
INGESTOR: web.AppKey[Ingestor] = web.AppKey("ingestor")
PREPOSITIONER: web.AppKey[Prepositioner] = web.AppKey("prepositioner")
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions")
LIVE: web.AppKey[LiveHub] = web.AppKey("live")
SCHEDULES: web.AppKey[ScheduleService] = web.AppKey("schedules")
RENDERER: web.AppKey[AnnouncementRenderer] = web.AppKey("renderer")
EVENTS: web.AppKey[EventHub] = web.AppKey("events")
LEADERSHIP: web.AppKey[Leadership] = web.AppKey("leadership")
