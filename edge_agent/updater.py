"""Over-the-air agent updates on the terminal: fetch, unpack beside, switch, prove.

The layout on flash (under the terminal's `state_dir`):

    releases/<version>/      one unpacked release (the packages of its wheel)
    releases/current   ->    the release the launcher runs (absent: the base install)
    releases/switch.json     written by the old agent just before it exits to switch
    releases/ok.json         written by the new release once it passed its self-test
    releases/result.json     the launcher's verdict on a switch, for the agent to report

Why unpack the wheel into a slot instead of `pip install` into a new venv: a board has
no package index to reach and little flash, the agent's wheel is pure Python, and its
third-party dependencies are the base install's (pinned by requirements.lock). The
slot holds only our packages and is put first on the path by the launcher
(`edge_agent.launcher`); a release that needs other dependencies than the board has is
refused here, before anything is switched. Unpacking is what pip does for a pure-Python
wheel (minus scripts, which the launcher does not use); the archive is read as hostile
all the same: no absolute or `..` paths, no links, bounded size and entry count.

Emergencies are never delayed by an update: downloading, unpacking and the switch each
wait until nothing plays, is queued or is due soon; a download under way is cancelled
when a play is accepted (and taken up again when the terminal is quiet); unpacking runs
in a worker thread at the lowest CPU priority, so the event loop keeps playing.

The self-test after the switch is the new version's own: it connected to the broker,
verified the signed offer that brought it with its own code, and wrote `releases/ok.json`
before the launcher's deadline (`UpdateBody.self_test_s`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dalaba import __version__ as RUNNING_VERSION
from dalaba import protocol as p
from dalaba.signing import VerifierSet
from edge_agent.fetcher import PREFETCH_BACKOFF, FetchDeadline, MediaFetcher, MediaUnavailable

log = logging.getLogger(__name__)

# Set by `edge_agent.launcher` for the agent it runs: only then can a switch happen (the
# simulator runs thousands of agents in one process and must never try).
LAUNCHER_ENV = "DALABA_AGENT_LAUNCHER"
# The packages a release brings onto a terminal (the controller's are left in the wheel).
AGENT_PACKAGES = ("dalaba", "dalaba_ops", "edge_agent", "firmware_sim")
MAX_UNPACKED_BYTES = 4 * p.MAX_RELEASE_BYTES
MAX_ENTRIES = 5000
# Downloading, unpacking and the switch wait while a play sounds, waits, or is due
# within this long (a restart takes seconds; unpacking takes CPU on a small board).
QUIET_WINDOW_MS = 60_000
IDLE_POLL_S = 1.0
# How long a release is fetched before the terminal gives up (it is retried gently).
DOWNLOAD_WINDOW_MS = 30 * 60_000
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class ReleaseRefused(Exception):
    """The release cannot be installed here; the message is the reason reported."""


@dataclass(frozen=True)
class Layout:
    state_dir: Path

    @property
    def releases(self) -> Path:
        return self.state_dir / "releases"

    def slot(self, version: str) -> Path:
        return self.releases / version

    @property
    def current(self) -> Path:
        return self.releases / "current"

    @property
    def switch_file(self) -> Path:
        return self.releases / "switch.json"

    @property
    def ok_file(self) -> Path:
        return self.releases / "ok.json"

    @property
    def result_file(self) -> Path:
        return self.releases / "result.json"

    def current_slot(self) -> Path | None:
        """The release the launcher runs, or None for the base install."""
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        slot = self.releases / target
        return slot if slot.is_dir() else None

    def point_current_at(self, version: str | None) -> None:
        """Atomically switch `current` (None: back to the base install)."""
        self.releases.mkdir(parents=True, exist_ok=True)
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                self.current.unlink()
            return
        tmp = self.releases / "current.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(version)  # relative: the state dir may be moved or mounted elsewhere
        os.replace(tmp, self.current)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- unpacking


def unpack_release(archive: Path, slot: Path, version: str) -> None:
    """Unpack the agent's packages of a wheel (or a zip bundle of them) into `slot`.

    Raises ReleaseRefused for anything that is not a sane release of `version`."""
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ReleaseRefused(f"not a wheel or zip bundle: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ReleaseRefused(f"{len(infos)} entries, more than {MAX_ENTRIES}")
        if sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
            raise ReleaseRefused(f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        wanted = []
        metadata_text = ""
        for info in infos:
            name = info.filename
            parts = name.split("/")
            if name.startswith("/") or "\\" in name or ".." in parts or ":" in parts[0]:
                raise ReleaseRefused(f"unsafe path in archive: {name[:100]!r}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ReleaseRefused(f"link in archive: {name[:100]!r}")
            if parts[0].endswith(".dist-info") and parts[-1] == "METADATA":
                metadata_text = zf.read(info).decode("utf-8", "replace")
            if parts[0] in AGENT_PACKAGES and not info.is_dir():
                wanted.append(info)
        names = {i.filename for i in wanted}
        if "edge_agent/agent.py" not in names or "dalaba/__init__.py" not in names:
            raise ReleaseRefused("no agent inside (edge_agent/agent.py, dalaba/__init__.py)")
        found = _VERSION_LINE.search(zf.read("dalaba/__init__.py").decode("utf-8", "replace"))
        if found is None or found.group(1) != version:
            raise ReleaseRefused(
                f"package says version {found.group(1) if found else '?'}, offer says {version}"
            )
        missing = missing_dependencies(metadata_text)
        if missing:
            raise ReleaseRefused(f"needs what this board lacks: {', '.join(missing)}")
        tmp = slot.with_name(slot.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        for info in wanted:
            target = tmp / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(slot, ignore_errors=True)
    os.replace(tmp, slot)


def _unpack_niced(archive: Path, slot: Path, version: str) -> None:
    """Unpack at the lowest CPU priority: on Linux a thread has its own nice value, so
    an emergency arriving meanwhile keeps the event loop's share of a small board."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    unpack_release(archive, slot, version)


def missing_dependencies(metadata_text: str) -> list[str]:
    """The `dalaba[agent]` requirements of a wheel's METADATA that are not installed.

    Only the name is checked: the base install's versions are the lock's, and a release
    built from the same lock agrees with them."""
    missing = []
    for line in metadata_text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = line.partition(":")[2]
        spec, _, marker = requirement.partition(";")
        if marker and "extra" in marker and '"agent"' not in marker and "'agent'" not in marker:
            continue  # another extra's (the controller's)
        match = _REQUIREMENT_NAME.match(spec)
        if match is None:
            continue
        if marker and "python_version" in marker and "extra" not in marker:
            continue  # version-conditional backports: the base install decided those
        try:
            metadata.version(match.group(1))
        except metadata.PackageNotFoundError:
            missing.append(match.group(1))
    return missing


# --------------------------------------------------------------------------- the agent's side


def _terminate_this_process() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class Updater:
    """One terminal's update worker, driven by its `EdgeAgent`."""

    def __init__(
        self,
        *,
        state_dir: Path,
        fetcher: MediaFetcher,
        verifiers: VerifierSet,
        now_ms: Callable[[], int],
        report: Callable[[p.UpdateProgress, str | None], None],
        quiet: Callable[[int], bool],
    ) -> None:
        self.layout = Layout(state_dir)
        self._fetcher = fetcher
        self._verifiers = verifiers
        self._now_ms = now_ms
        self._report = report
        self._quiet = quiet  # nothing plays, is queued or due within the given ms
        self._task: asyncio.Task[None] | None = None
        self._body: p.UpdateBody | None = None
        self._download: asyncio.Task[Path] | None = None
        self.switch_requested = False
        # How the agent hands over to the launcher: its own graceful SIGTERM path
        # (offline status sent, journal closed). A test running agents in its own
        # process replaces it.
        self.exit_for_switch: Callable[[], None] = _terminate_this_process

    def tasks(self) -> list[asyncio.Task[None]]:
        """What the agent cancels when it stops (a download is taken up at the next start
        only if the controller offers again: offers are not kept on flash)."""
        return [self._task] if self._task is not None else []

    @property
    def under_launcher(self) -> bool:
        return os.environ.get(LAUNCHER_ENV) == "1"

    def progress(self, body: p.UpdateBody, state: p.UpdateState, reason: str | None) -> None:
        self._report(
            p.UpdateProgress(
                rollout_id=body.rollout_id,
                release_id=body.release_id,
                version=body.version,
                state=state,
                running=RUNNING_VERSION,
            ),
            reason,
        )

    def offer(self, body: p.UpdateBody, envelope: bytes) -> None:
        """A verified offer (the agent checked signature, expiry, replay and target)."""
        refusal = self._refusal(body)
        if refusal is not None:
            state, reason = refusal
            self.progress(body, state, reason)
            return
        if self._task is not None and not self._task.done():
            if self._body is not None and self._body.version == body.version:
                return  # the same release again (another rollout): already at it
            self._task.cancel()
        self._body = body
        self._task = asyncio.create_task(self._run(body, envelope), name="agent-update")

    def _refusal(self, body: p.UpdateBody) -> tuple[p.UpdateState, str] | None:
        running = p.version_key(RUNNING_VERSION)
        if p.version_key(body.version) == running:
            return p.UpdateState.DONE, "already running this version"
        if running < p.version_key(body.min_version):
            return p.UpdateState.FAILED, f"runs {RUNNING_VERSION}, below minimum {body.min_version}"
        if not self.under_launcher:
            return p.UpdateState.FAILED, "not run by `dalaba agent-launcher`: cannot switch"
        return None

    def yield_to_play(self) -> None:
        """A play was accepted: give the link to its audio (the download resumes later)."""
        if self._download is not None and not self._download.done():
            self._download.cancel()

    async def _run(self, body: p.UpdateBody, envelope: bytes) -> None:
        try:
            self.progress(body, p.UpdateState.DOWNLOADING, None)
            archive = await self._fetch(body)
            await self._until_quiet()
            slot = self.layout.slot(body.version)
            await asyncio.to_thread(_unpack_niced, archive, slot, body.version)
            self.progress(body, p.UpdateState.INSTALLED, None)
            await self._until_quiet()
            self._switch(body, envelope)
        except asyncio.CancelledError:
            raise
        except ReleaseRefused as exc:
            self.progress(body, p.UpdateState.FAILED, str(exc))
        except (MediaUnavailable, FetchDeadline) as exc:
            self.progress(body, p.UpdateState.FAILED, f"download: {exc}")
        except OSError as exc:
            self.progress(body, p.UpdateState.FAILED, f"install: {exc}")

    async def _until_quiet(self) -> None:
        while not self._quiet(QUIET_WINDOW_MS):
            await asyncio.sleep(IDLE_POLL_S)

    async def _fetch(self, body: p.UpdateBody) -> Path:
        deadline = self._now_ms() + DOWNLOAD_WINDOW_MS
        while True:
            # Low priority: not while a play sounds, waits or is due (its audio may be on
            # the link); a play accepted meanwhile cancels the download (yield_to_play).
            await self._until_quiet()
            self._download = asyncio.create_task(
                self._fetcher.fetch(body.package, deadline, PREFETCH_BACKOFF)
            )
            try:
                path = await self._download
            except asyncio.CancelledError:
                if self._task is not None and self._task.cancelling():
                    raise
                log.info("update download paused for a play")
                continue
            if path.stat().st_size != body.package.size:
                raise ReleaseRefused(
                    f"package is {path.stat().st_size} bytes, offer says {body.package.size}"
                )
            return path

    def _switch(self, body: p.UpdateBody, envelope: bytes) -> None:
        """Hand over to the launcher: point `current` at the new slot and exit."""
        layout = self.layout
        previous = layout.current_slot()
        write_json(
            layout.switch_file,
            {
                "rollout_id": body.rollout_id,
                "release_id": body.release_id,
                "version": body.version,
                "previous": previous.name if previous is not None else None,
                "previous_version": RUNNING_VERSION,
                "self_test_s": body.self_test_s,
                "offer": base64.b64encode(envelope).decode(),
            },
        )
        with contextlib.suppress(FileNotFoundError):
            layout.ok_file.unlink()
        layout.point_current_at(body.version)
        log.warning("switching to agent %s: exiting for the launcher", body.version)
        self.switch_requested = True
        self.exit_for_switch()

    # ------------------------------------------------------------------ after a start

    def after_start(self) -> None:
        """Report the launcher's verdict on a switch, and pass the self-test if this run
        is the new version on trial. Called once connected to the broker."""
        layout = self.layout
        result = read_json(layout.result_file)
        if result is not None:
            self._report_result(result)
            with contextlib.suppress(FileNotFoundError):
                layout.result_file.unlink()
        switch = read_json(layout.switch_file)
        if switch is None or switch.get("version") != RUNNING_VERSION:
            return
        if read_json(layout.ok_file) is not None:
            return  # passed already (a restart during the trial)
        reason = self._self_test(switch)
        if reason is not None:
            log.error("self-test of agent %s failed: %s", RUNNING_VERSION, reason)
            return  # the launcher rolls back at its deadline
        write_json(layout.ok_file, {"version": RUNNING_VERSION, "at": self._now_ms()})
        self._report_switch(switch, p.UpdateState.DONE, None)

    def _self_test(self, switch: dict[str, Any]) -> str | None:
        """This version verifies the signed offer that brought it, with its own code."""
        try:
            raw = base64.b64decode(str(switch["offer"]), validate=True)
            command: p.Command | None = p.open_envelope(raw, self._verifiers, self._now_ms())
        except p.CommandRejected as exc:
            # Expired meanwhile (a long wait to switch): its signature was checked first.
            if exc.reason is not p.RejectReason.EXPIRED:
                return f"offer did not verify: {exc}"
            command = exc.command
        except (KeyError, ValueError) as exc:
            return f"offer did not verify: {exc}"
        body = command.body if command is not None else None
        if not isinstance(body, p.UpdateBody) or body.version != RUNNING_VERSION:
            return "offer names another version"
        return None

    def _report_switch(
        self, switch: dict[str, Any], state: p.UpdateState, reason: str | None
    ) -> None:
        try:
            progress = p.UpdateProgress(
                rollout_id=switch["rollout_id"],
                release_id=switch["release_id"],
                version=switch["version"],
                state=state,
                running=RUNNING_VERSION,
            )
        except (KeyError, ValueError):
            log.warning("unreadable switch record: not reported")
            return
        self._report(progress, reason)

    def _report_result(self, result: dict[str, Any]) -> None:
        state = p.UpdateState.ROLLED_BACK
        self._report_switch(result, state, str(result.get("reason", "rolled back"))[:500])
