"""The terminal's side of an agent update: what it refuses, and that it never delays a play.

Real agents on simulated hardware, a real private Mosquitto and a media server (the rig
of tests/unit/test_agent_truth.py). The switch itself (the launcher restarting the
agent) runs in tests/integration/test_updates.py with real processes; here the agent's
hand-over to the launcher is recorded instead of ending the test's own process.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dalaba import __version__ as RUNNING
from dalaba import protocol as p
from dalaba.signing import Ed25519Signer
from edge_agent.agent import EdgeAgent
from edge_agent.updater import LAUNCHER_ENV, Layout, ReleaseRefused, unpack_release
from tests.unit import test_agent_truth as truth
from tests.unit.test_agent_truth import Rig, plays_started, sha

pytestmark = [pytest.mark.broker]

# The rig and its tones, as test_agent_truth.py's tests have them.
rig = truth.rig
tones = truth.tones

S = p.DeliveryState
U = p.UpdateState
NEXT = "99.0.1"


def bundle(version: str = NEXT, extra: dict[str, bytes] | None = None, metadata: str = "") -> bytes:
    """A minimal release: the agent's packages as a zip (what a wheel holds)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("dalaba/__init__.py", f'__version__ = "{version}"\n')
        zf.writestr("edge_agent/__init__.py", "")
        zf.writestr("edge_agent/agent.py", "# the agent\n")
        zf.writestr("controller/app.py", "# not for a terminal\n")
        if metadata:
            zf.writestr(f"dalaba-{version}.dist-info/METADATA", metadata)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out.getvalue()


def offer(rig: Rig, data: bytes, *, version: str = NEXT, digest: str | None = None) -> p.UpdateBody:
    rig.media.serve(data)
    return p.UpdateBody(
        rollout_id="r-1",
        release_id="rel-1",
        version=version,
        min_version=RUNNING,
        package=p.MediaRef(
            sha256=digest or sha(data), url=sha(data), size=len(data), duration_ms=0
        ),
        self_test_s=60,
    )


def progress(rig: Rig, device_id: str) -> list[tuple[U, str | None]]:
    return [
        (p.UpdateProgress.model_validate(e.detail).state, e.reason)
        for e in rig.events(device_id)
        if e.kind is p.EventKind.UPDATE_STATE
    ]


@pytest.fixture(autouse=True)
def _under_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAUNCHER_ENV, "1")  # as if run by `dalaba agent-launcher`


def record_switches(agent: EdgeAgent) -> list[int]:
    switched: list[int] = []
    agent.updater.exit_for_switch = lambda: switched.append(p.now_ms())
    return switched


async def test_an_offer_with_a_forged_signature_is_refused_and_nothing_is_fetched(
    rig: Rig,
) -> None:
    agent, _ = await rig.start_agent(rig.config())
    switched = record_switches(agent)
    data = bundle()
    body = offer(rig, data)
    forger = Ed25519Signer.generate()
    command = p.Command.new(body, p.Target(devices=("d-1",)), p.now_ms() + 60_000)
    assert rig.controller is not None
    await rig.controller.publish_confirmed(p.Topics.command_device("d-1"), p.seal(command, forger))
    await rig.wait(
        lambda: any(e.reason == "bad_signature" for e in rig.events("d-1")),
        what="the forged offer rejected",
    )
    await rig.settled("d-1")
    assert progress(rig, "d-1") == []
    assert f"/media/{sha(data)}" not in rig.media.hits
    assert not Layout(agent.config.state_dir).slot(NEXT).exists()
    assert switched == []


async def test_a_package_that_does_not_hash_to_the_signed_sha256_is_refused(rig: Rig) -> None:
    agent, _ = await rig.start_agent(rig.config())
    switched = record_switches(agent)
    body = offer(rig, bundle(), digest=sha(b"what the controller signed"))
    await rig.send("d-1", body)
    await rig.wait(
        lambda: any(state is U.FAILED for state, _ in progress(rig, "d-1")),
        what="the update failed",
    )
    (failed,) = [reason for state, reason in progress(rig, "d-1") if state is U.FAILED]
    assert failed is not None and "hash mismatch" in failed
    assert [state for state, _ in progress(rig, "d-1")] == [U.DOWNLOADING, U.FAILED]
    assert not Layout(agent.config.state_dir).slot(NEXT).exists()
    assert switched == []


async def test_an_emergency_arriving_during_the_download_plays_on_time_and_the_switch_waits(
    rig: Rig,
    tones: Callable[[float], bytes],
) -> None:
    agent, hw = await rig.start_agent(rig.config())
    switched = record_switches(agent)
    data = bundle()
    body = offer(rig, data)
    rig.media.status[f"/media/{sha(data)}"] = 503  # the download hangs on a busy server
    await rig.send("d-1", body)
    await rig.wait(
        lambda: progress(rig, "d-1") == [(U.DOWNLOADING, "downloading")],
        what="the download under way",
    )
    emergency = rig.play("e-1", tones(2.0), start_in_ms=1_500, priority=p.Priority.EMERGENCY)
    await rig.send("d-1", emergency)
    await rig.wait_state("d-1", "e-1", S.PLAYING)
    del rig.media.status[f"/media/{sha(data)}"]  # the release could be fetched now

    done = await rig.wait_state("d-1", "e-1", S.DONE)
    playing = next(r for r in rig.reports("d-1", "e-1") if r.state is S.PLAYING)
    assert playing.late_ms is None, playing  # on its signed instant
    (start,) = plays_started(hw, "e-1")
    assert start["start_at_ms"] == emergency.start_at
    await rig.wait(lambda: bool(switched), timeout_s=60, what="the switch")
    # Nothing of the update happened while the emergency was due or sounding.
    assert switched[0] >= done.at
    await rig.wait(
        lambda: [state for state, _ in progress(rig, "d-1")] == [U.DOWNLOADING, U.INSTALLED],
        what="downloading, then installed (and nothing else)",
    )
    layout = Layout(agent.config.state_dir)
    assert os.readlink(layout.current) == NEXT
    assert (layout.slot(NEXT) / "edge_agent" / "agent.py").is_file()
    assert not (layout.slot(NEXT) / "controller").exists()  # the controller stays behind
    assert layout.switch_file.is_file()


async def test_offers_a_terminal_cannot_take_are_answered_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _ = await rig.start_agent(rig.config())
    record_switches(agent)
    too_new = offer(rig, bundle()).model_copy(update={"min_version": "99.0"})
    await rig.send("d-1", too_new)
    same = offer(rig, bundle(RUNNING), version=RUNNING).model_copy(update={"rollout_id": "r-2"})
    await rig.send("d-1", same)
    monkeypatch.delenv(LAUNCHER_ENV)  # the simulator's agents: never switch
    await rig.send("d-1", offer(rig, bundle()).model_copy(update={"rollout_id": "r-3"}))
    await rig.wait(lambda: len(progress(rig, "d-1")) == 3, what="three answers")
    answers = progress(rig, "d-1")
    assert answers[0][0] is U.FAILED and "below minimum 99.0" in (answers[0][1] or "")
    assert answers[1] == (U.DONE, "already running this version")
    assert answers[2][0] is U.FAILED and "agent-launcher" in (answers[2][1] or "")


# --------------------------------------------------------------------------- unpacking


def _zip(entries: dict[str, bytes], link: str | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return out.getvalue()


GOOD_ENTRIES = {
    "dalaba/__init__.py": f'__version__ = "{NEXT}"\n'.encode(),
    "edge_agent/agent.py": b"",
}


@pytest.mark.parametrize(
    ("archive", "why"),
    [
        (b"not a zip at all", "not a wheel"),
        (_zip({**GOOD_ENTRIES, "../../etc/cron.d/x": b"evil"}), "unsafe path"),
        (_zip({**GOOD_ENTRIES, "/etc/x": b"evil"}), "unsafe path"),
        (_zip(GOOD_ENTRIES, link="edge_agent/link"), "link in archive"),
        (_zip({"edge_agent/agent.py": b""}), "no agent inside"),
        (bundle("99.0.2"), "offer says 99.0.1"),
        (
            bundle(metadata='Requires-Dist: no-such-package-x==1; extra == "agent"\n'),
            "no-such-package-x",
        ),
    ],
)
def test_archives_that_are_not_a_sane_release_are_refused(
    tmp_path: Path, archive: bytes, why: str
) -> None:
    path = tmp_path / "release.whl"
    path.write_bytes(archive)
    slot = tmp_path / "releases" / NEXT
    with pytest.raises(ReleaseRefused, match=why):
        unpack_release(path, slot, NEXT)
    assert not slot.exists()
    assert not (tmp_path.parent / "etc").exists()


def test_a_release_needing_only_what_the_board_has_unpacks(tmp_path: Path) -> None:
    path = tmp_path / "release.whl"
    metadata = (
        'Requires-Dist: aiohttp==3.10; extra == "agent"\n'
        'Requires-Dist: sqlmodel==0.0.1; extra == "controller"\n'
    )
    path.write_bytes(bundle(metadata=metadata))
    slot = tmp_path / "releases" / NEXT
    unpack_release(path, slot, NEXT)
    assert (slot / "dalaba" / "__init__.py").read_text() == f'__version__ = "{NEXT}"\n'
