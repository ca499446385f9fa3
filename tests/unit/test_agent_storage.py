"""What a terminal keeps on its flash: seen command ids, claims, the local schedule and
the media cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dalaba.protocol import MediaRef, Priority, ScheduleBody, ScheduledItem
from edge_agent.cache import MediaCache
from edge_agent.local_schedule import LocalSchedule
from edge_agent.replay import SeenCommands

NOW = 1_760_000_000_000


# --------------------------------------------------------------------------- seen commands


def test_seen_commands_are_remembered_in_memory(tmp_path: Path) -> None:
    seen = SeenCommands(tmp_path / "seen.txt")
    seen.load(NOW)
    assert not seen.seen("c-1")
    seen.remember("c-1", NOW + 60_000)
    assert seen.seen("c-1")
    assert not seen.seen("c-2")
    seen.close()


def test_seen_commands_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "seen.txt"
    before = SeenCommands(path)
    before.load(NOW)  # creates the directory and the file
    before.remember("c-1", NOW + 60_000)
    before.remember("c-2", NOW + 120_000)
    before.close()

    after = SeenCommands(path)
    after.load(NOW + 1_000)
    assert after.seen("c-1")
    assert after.seen("c-2")
    assert not after.seen("c-3")
    after.close()


def test_remembered_ids_are_on_disk_before_close(tmp_path: Path) -> None:
    # A power cut gives no chance to close: each id must be flushed as it is accepted.
    path = tmp_path / "seen.txt"
    running = SeenCommands(path)
    running.load(NOW)
    running.remember("c-1", NOW + 60_000)

    rebooted = SeenCommands(path)
    rebooted.load(NOW)
    assert rebooted.seen("c-1")
    running.close()
    rebooted.close()


def test_expired_ids_are_forgotten_at_load_and_the_file_is_compacted(tmp_path: Path) -> None:
    path = tmp_path / "seen.txt"
    first = SeenCommands(path)
    first.load(NOW)
    first.remember("gone", NOW + 1_000)
    first.remember("edge", NOW + 5_000)
    first.remember("kept", NOW + 60_000)
    first.close()
    assert len(path.read_text().splitlines()) == 3

    second = SeenCommands(path)
    second.load(NOW + 5_000)  # "edge" expires exactly now: the validity check refuses it
    assert not second.seen("gone")
    assert not second.seen("edge")
    assert second.seen("kept")
    second.close()
    assert path.read_text() == f"kept {NOW + 60_000}\n"
    assert not path.with_suffix(".tmp").exists()


def test_seen_file_keeps_growing_by_appending_after_compaction(tmp_path: Path) -> None:
    path = tmp_path / "seen.txt"
    seen = SeenCommands(path)
    seen.load(NOW)
    seen.remember("a", NOW + 10)
    seen.close()

    seen = SeenCommands(path)
    seen.load(NOW)
    seen.remember("b", NOW + 20)
    seen.close()
    assert path.read_text().splitlines() == [f"a {NOW + 10}", f"b {NOW + 20}"]


def test_damaged_lines_are_skipped_at_load(tmp_path: Path) -> None:
    path = tmp_path / "seen.txt"
    path.write_text(
        f"good {NOW + 60_000}\n"
        "half-written-line\n"
        f"neg -{NOW}\n"
        "word notanumber\n"
        f"too many {NOW + 60_000}\n"
        f"also-good {NOW + 90_000}"  # no newline: cut off mid-write, but complete
    )
    seen = SeenCommands(path)
    seen.load(NOW)
    assert seen.seen("good")
    assert seen.seen("also-good")
    assert not seen.seen("half-written-line")
    assert not seen.seen("word")
    seen.close()
    assert sorted(path.read_text().splitlines()) == sorted(
        [f"also-good {NOW + 90_000}", f"good {NOW + 60_000}"]
    )


# --------------------------------------------------------------------------- media cache


def blob(tag: str, size: int = 100) -> tuple[str, bytes]:
    data = (tag.encode() * size)[:size]
    return hashlib.sha256(data).hexdigest(), data


def age(cache: MediaCache, sha: str, seconds_ago: float) -> None:
    """Give a cached file an explicit last-used time (file times are coarse)."""
    t = int((1_700_000_000 - seconds_ago) * 1e9)
    os.utime(cache.path_for(sha), ns=(t, t))


def test_put_stores_under_the_hash_and_has_finds_it(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    sha, data = blob("a")
    assert not cache.has(sha)

    path = cache.put(sha, data)
    assert path == cache.path_for(sha)
    assert path.read_bytes() == data
    assert cache.has(sha)
    assert cache.usage() == (100, 1)
    assert list(path.parent.glob("*.part")) == []  # nothing half-written left behind


def test_put_refuses_a_hash_mismatch_and_stores_nothing(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    sha, _ = blob("a")
    _, other = blob("b")
    with pytest.raises(ValueError, match="hash mismatch"):
        cache.put(sha, other)
    assert not cache.has(sha)
    assert cache.usage() == (0, 0)
    assert list((tmp_path / "cache").iterdir()) == []


def test_put_replaces_atomically(tmp_path: Path) -> None:
    # A half-written file from a power cut (the .part) never becomes the cached item.
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    sha, data = blob("a")
    cache.path_for(sha).with_suffix(".part").write_bytes(b"trunc")
    assert not cache.has(sha)
    assert cache.usage() == (0, 0)

    cache.put(sha, data)
    assert cache.path_for(sha).read_bytes() == data
    assert not cache.path_for(sha).with_suffix(".part").exists()


def test_put_is_idempotent(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    sha, data = blob("a")
    cache.put(sha, data)
    cache.put(sha, data)
    assert cache.usage() == (100, 1)


def test_least_recently_used_is_evicted_beyond_max_bytes(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=300)
    a, b, c, d = (blob(t) for t in "abcd")
    cache.put(*a)
    cache.put(*b)
    cache.put(*c)
    age(cache, a[0], 300)
    age(cache, b[0], 200)
    age(cache, c[0], 100)
    assert cache.usage() == (300, 3)  # exactly at the limit: nothing goes

    cache.put(*d)
    assert not cache.has(a[0])
    assert cache.has(b[0]) and cache.has(c[0]) and cache.has(d[0])
    assert cache.usage() == (300, 3)


def test_has_counts_as_a_use(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=300)
    a, b, c, d = (blob(t) for t in "abcd")
    for x in (a, b, c):
        cache.put(*x)
    age(cache, a[0], 300)
    age(cache, b[0], 200)
    age(cache, c[0], 100)

    assert cache.has(a[0])  # the oldest, just used again
    cache.put(*d)
    assert cache.has(a[0])
    assert not cache.has(b[0])


def test_eviction_removes_as_many_as_needed(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=300)
    small = [blob(t) for t in "abc"]
    for i, x in enumerate(small):
        cache.put(*x)
        age(cache, x[0], 300 - i)
    big = blob("big", 250)
    cache.put(*big)
    assert cache.usage() == (250, 1)
    assert cache.has(big[0])


def test_pinned_items_are_never_evicted(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=300)
    a, b, c, d, e = (blob(t) for t in "abcde")
    for x in (a, b, c):
        cache.put(*x)
    age(cache, a[0], 300)
    age(cache, b[0], 200)
    age(cache, c[0], 100)
    cache.pin(a[0])  # e.g. a pre-positioned emergency template
    cache.pin(b[0])

    cache.put(*d)
    assert cache.has(a[0]) and cache.has(b[0]) and cache.has(d[0])
    assert not cache.has(c[0])

    age(cache, d[0], 400)  # now the oldest of all, and the only one unpinned
    cache.put(*e)
    assert cache.has(a[0]) and cache.has(b[0]) and cache.has(e[0])
    assert not cache.has(d[0])

    cache.unpin(a[0])
    cache.unpin("never-pinned")  # harmless
    age(cache, a[0], 500)
    age(cache, e[0], 100)
    cache.put(*d)
    assert not cache.has(a[0])
    assert cache.has(b[0])


def test_pinned_items_may_exceed_the_limit(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=150)
    a, b = blob("a"), blob("b")
    cache.put(*a)
    cache.pin(a[0])
    cache.pin(b[0])
    cache.put(*b)
    assert cache.has(a[0]) and cache.has(b[0])
    assert cache.usage() == (200, 2)


def test_usage_counts_only_media_files(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    assert cache.usage() == (0, 0)
    cache.put(*blob("a", 10))
    cache.put(*blob("b", 25))
    (tmp_path / "cache" / "stray.part").write_bytes(b"x" * 1000)
    assert cache.usage() == (35, 2)


def test_pinned_media_replaces_per_purpose_and_releases_the_rest(tmp_path: Path) -> None:
    from dalaba.protocol import MediaRef
    from edge_agent.local_schedule import PinnedMedia

    def ref(c: str) -> MediaRef:
        return MediaRef(sha256=c * 64, url=c * 64, size=1, duration_ms=1)

    pinned = PinnedMedia(tmp_path)
    assert pinned.replace("emergency_templates", (ref("a"), ref("b"))) == set()
    assert pinned.replace("drills", (ref("c"),)) == set()
    released = pinned.replace("emergency_templates", (ref("b"),))
    assert released == {"a" * 64}
    assert set(pinned.refs) == {"b" * 64, "c" * 64}

    reloaded = PinnedMedia(tmp_path)  # after a reboot
    reloaded.load()
    assert set(reloaded.refs) == {"b" * 64, "c" * 64}


def test_a_tampered_cached_file_is_found_deleted_and_not_served(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path / "cache", max_bytes=10_000)
    sha, data = blob("a")
    cache.put(sha, data)
    assert cache.lookup(sha) == cache.path_for(sha)

    cache.path_for(sha).write_bytes(b"B" + data[1:])  # same size, other bytes
    assert cache.lookup(sha) is None
    assert not cache.path_for(sha).exists()
    assert cache.corrupt_found == 1
    cache.put(sha, data)  # fetched again
    assert cache.lookup(sha) is not None


def test_a_file_damaged_while_the_agent_was_off_is_found_at_first_use(tmp_path: Path) -> None:
    sha, data = blob("a")
    MediaCache(tmp_path / "cache", max_bytes=10_000).put(sha, data)
    path = tmp_path / "cache" / f"{sha}.media"
    path.write_bytes(data[:50])  # truncated on the flash

    rebooted = MediaCache(tmp_path / "cache", max_bytes=10_000)
    assert not rebooted.has(sha)
    assert rebooted.usage() == (0, 0)


# --------------------------------------------------------------------------- claims


def test_seen_ids_can_carry_a_value_that_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "claims.txt"
    claims = SeenCommands(path)
    claims.load(NOW)
    claims.remember("plain", NOW + 60_000)
    claims.remember("resent", NOW + 60_000, 2)
    claims.remember("resent", NOW + 60_000, 3)  # raised later: the last line wins
    assert claims.value("plain") == 0
    assert claims.value("resent") == 3
    assert claims.value("never") is None
    claims.close()
    # The two-field form is kept for a plain id, as older agents wrote and read it.
    assert path.read_text().splitlines()[0] == f"plain {NOW + 60_000}"

    rebooted = SeenCommands(path)
    rebooted.load(NOW)
    assert rebooted.value("resent") == 3
    assert rebooted.value("plain") == 0
    rebooted.close()
    assert sorted(path.read_text().splitlines()) == [
        f"plain {NOW + 60_000}",
        f"resent {NOW + 60_000} 3",
    ]


def _schedule(version: int, *occurrences: str, start: int = NOW + 60_000) -> ScheduleBody:
    media = MediaRef(sha256="a" * 64, url="a" * 64, size=1, duration_ms=1000)
    return ScheduleBody(
        version=version,
        horizon_until=start + 3_600_000,
        items=tuple(
            ScheduledItem(
                occurrence_id=o,
                schedule_id="s-1",
                priority=Priority.NOTICE,
                category="other",
                media=media,
                start_at=start + i * 1000,
                expires_at=start + 600_000,
            )
            for i, o in enumerate(occurrences)
        ),
    )


def test_local_schedule_takes_only_a_newer_version_and_keeps_it_on_flash(
    tmp_path: Path,
) -> None:
    schedule = LocalSchedule(tmp_path)
    schedule.load(NOW)
    assert schedule.version == 0
    assert schedule.replace(_schedule(5, "o-1", "o-2"))
    assert not schedule.replace(_schedule(5, "o-other"))  # same version: kept as is
    assert not schedule.replace(_schedule(4, "o-old"))  # older (a late duplicate)
    assert set(schedule.items) == {"o-1", "o-2"}
    schedule.close()

    rebooted = LocalSchedule(tmp_path)
    rebooted.load(NOW)
    assert rebooted.version == 5 and set(rebooted.items) == {"o-1", "o-2"}
    assert not rebooted.replace(_schedule(5, "o-other"))  # the rule holds after a reboot
    assert rebooted.replace(_schedule(6, "o-3"))
    assert set(rebooted.items) == {"o-3"}
    rebooted.close()


def test_a_corrupt_schedule_file_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / "schedule.json").write_text('{"version": 7, "items": [')
    schedule = LocalSchedule(tmp_path)
    schedule.load(NOW)
    assert schedule.version == 0 and schedule.items == {}
    assert schedule.replace(_schedule(1, "o-1"))  # the controller's resend is taken
    schedule.close()


def test_claimed_occurrences_are_not_due_and_stay_claimed_after_a_reboot(
    tmp_path: Path,
) -> None:
    schedule = LocalSchedule(tmp_path)
    schedule.load(NOW)
    schedule.replace(_schedule(1, "o-1", "o-2", start=NOW))
    assert [i.occurrence_id for i in schedule.due(NOW, lead_ms=5_000)] == ["o-1", "o-2"]
    schedule.claim("o-1", NOW + 600_000)
    assert [i.occurrence_id for i in schedule.due(NOW, lead_ms=5_000)] == ["o-2"]
    schedule.close()

    claims_file = tmp_path / "claimed-occurrences.txt"
    assert claims_file.read_text() == f"o-1 {NOW + 600_000}\n"
    rebooted = LocalSchedule(tmp_path)
    rebooted.load(NOW + 1_000)
    assert rebooted.claimed("o-1")
    assert rebooted.claimed_attempt("o-1") == 0
    assert [i.occurrence_id for i in rebooted.due(NOW + 1_000, lead_ms=5_000)] == ["o-2"]
    rebooted.close()


def test_claims_remember_the_attempt_and_are_forgotten_after_expiry(tmp_path: Path) -> None:
    schedule = LocalSchedule(tmp_path)
    schedule.load(NOW)
    schedule.claim("b-1", NOW + 10_000)
    schedule.claim("b-1", NOW + 10_000, attempt=2)  # a resend taken up
    schedule.claim("b-2", NOW + 90_000, attempt=1)
    assert schedule.claimed_attempt("b-1") == 2
    assert schedule.claimed_attempt("b-9") is None
    schedule.close()

    later = LocalSchedule(tmp_path)
    later.load(NOW + 10_000)  # b-1's command has expired: nothing can bring it back
    assert not later.claimed("b-1")
    assert later.claimed_attempt("b-2") == 1
    later.close()
