"""Typed keys for what the wiring puts on the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from controller.broadcasts import BroadcastService
    from controller.db import Database
    from controller.dispatch import Dispatcher
    from controller.ingest import Ingestor
    from controller.media import MediaStore
    from controller.settings import Settings

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
MEDIA: web.AppKey[MediaStore] = web.AppKey("media")
BROADCASTS: web.AppKey[BroadcastService] = web.AppKey("broadcasts")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
INGESTOR: web.AppKey[Ingestor] = web.AppKey("ingestor")
