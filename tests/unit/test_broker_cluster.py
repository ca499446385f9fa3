"""The EMQX files `dalaba broker-config --kind emqx` writes.

EMQX itself cannot run here (no Debian package; no Docker Hub or GitHub downloads from
this machine), so the rules are held to the county's Mosquitto ACL another way: one
table of (account, publish/subscribe, topic) -> allowed runs against the real Mosquitto
with write_acl's file, and against the generated EMQX rules through an evaluator of
EMQX 5.8's first-match code (dalaba_ops.broker_cluster.emqx_authorize), once on the rule
list and once on the acl.conf as Erlang itself reads it (file:consult). The password
hashes are checked with Erlang's crypto the way emqx_passwd.erl checks them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dalaba import protocol as p
from dalaba.mqtt import BrokerAddress, MqttConnection
from dalaba_ops.broker import (
    ControllerAccount,
    DeviceAccount,
    MosquittoProcess,
    free_port,
    mosquitto_password_hash,
    write_acl,
    write_broker_config,
    write_password_file,
)
from dalaba_ops.broker_cluster import (
    PBKDF2_ITERATIONS,
    EmqxRule,
    Placement,
    emqx_acl_rules,
    emqx_authorize,
    emqx_topic_match,
    emqx_user_from_mosquitto,
    read_county_accounts,
    render_acl_conf,
    render_bridge_conf,
    render_emqx_base_hocon,
    render_emqx_conf,
    render_province_bridge_acl,
    write_emqx_files,
)
from dalaba_ops.cli import main
from dalaba_ops.provisioning import merge_broker_files

C1, C2 = "dalaba-controller", "dalaba-controller-2"
A = DeviceAccount("t01-v01-d1", "t01-v01", "t01", "pw-a-123")
B = DeviceAccount("t01-v02-d1", "t01-v02", "t01", "pw-b-123")
D = DeviceAccount("t02-v03-d1", "t02-v03", "t02", "pw-d-123")
PASSWORDS = {C1: "ctrl-1-pw", C2: "ctrl-2-pw", A.device_id: A.password}
PASSWORDS |= {B.device_id: B.password, D.device_id: D.password}
R = p.TOPIC_ROOT

# (account, action, topic, allowed): what write_acl means, case by case.
CASES: list[tuple[str, str, str, bool]] = [
    # A terminal reads the command topics that cover it, and live audio...
    (A.device_id, "subscribe", p.Topics.COMMAND_ALL, True),
    (A.device_id, "subscribe", p.Topics.command_township("t01"), True),
    (A.device_id, "subscribe", p.Topics.command_village("t01-v01"), True),
    (A.device_id, "subscribe", p.Topics.command_device(A.device_id), True),
    (A.device_id, "subscribe", p.Topics.live("b1"), True),
    # ...and nothing else: not another place's or terminal's, not reports.
    (A.device_id, "subscribe", p.Topics.command_township("t02"), False),
    (A.device_id, "subscribe", p.Topics.command_village("t01-v02"), False),
    (A.device_id, "subscribe", p.Topics.command_device(B.device_id), False),
    (A.device_id, "subscribe", p.Topics.device_ack(A.device_id), False),
    (A.device_id, "subscribe", p.Topics.device_status(B.device_id), False),
    (A.device_id, "subscribe", f"{R}/bridge/c1/state", False),
    (A.device_id, "subscribe", "other/x", False),
    (D.device_id, "subscribe", p.Topics.command_township("t02"), True),
    (D.device_id, "subscribe", p.Topics.command_village("t02-v03"), True),
    (D.device_id, "subscribe", p.Topics.command_township("t01"), False),
    (D.device_id, "subscribe", p.Topics.command_village("t01-v01"), False),
    # A terminal publishes only its own four report topics.
    (A.device_id, "publish", p.Topics.device_status(A.device_id), True),
    (A.device_id, "publish", p.Topics.device_ack(A.device_id), True),
    (A.device_id, "publish", p.Topics.device_telemetry(A.device_id), True),
    (A.device_id, "publish", p.Topics.device_event(A.device_id), True),
    (A.device_id, "publish", p.Topics.device_ack(B.device_id), False),
    (A.device_id, "publish", f"{R}/device/{A.device_id}/other", False),
    (A.device_id, "publish", p.Topics.COMMAND_ALL, False),
    (A.device_id, "publish", p.Topics.command_device(A.device_id), False),
    (A.device_id, "publish", p.Topics.live("b1"), False),
    (A.device_id, "publish", "other/x", False),
    # Every controller replica: all of dalaba/v1, and nothing outside it.
    (C1, "subscribe", p.Topics.device_ack(A.device_id), True),
    (C1, "subscribe", p.Topics.COMMAND_ALL, True),
    (C1, "subscribe", p.Topics.live("b1"), True),
    (C1, "subscribe", "other/x", False),
    (C2, "subscribe", p.Topics.device_event(D.device_id), True),
    (C2, "publish", p.Topics.COMMAND_ALL, True),
    (C2, "publish", p.Topics.command_village("t02-v03"), True),
    (C2, "publish", p.Topics.device_ack(A.device_id), True),
    (C1, "publish", p.Topics.live("b1"), True),
    (C1, "publish", "other/x", False),
]


def county_broker_dir(tmp_path: Path) -> Path:
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    extra = [ControllerAccount(C2, PASSWORDS[C2])]
    write_password_file(broker_dir / "passwd", PASSWORDS[C1], [A, B, D], extra_controllers=extra)
    write_acl(broker_dir / "acl", [A, B, D], extra_controllers=extra)
    return broker_dir


def generated_rules(tmp_path: Path, broker_dir: Path | None = None) -> list[EmqxRule]:
    accounts = read_county_accounts(broker_dir or county_broker_dir(tmp_path))
    return emqx_acl_rules(accounts.controllers, accounts.devices)


@pytest.mark.parametrize(("account", "action", "topic", "allowed"), CASES)
def test_emqx_rules_decide_each_case_as_the_mosquitto_acl_means(
    tmp_path: Path, account: str, action: str, topic: str, allowed: bool
) -> None:
    rules = generated_rules(tmp_path)
    assert emqx_authorize(rules, username=account, action=action, topic=topic) is allowed  # type: ignore[arg-type]


# ------------------------------------------------------------- acl.conf through Erlang

ESCRIPT = r"""%% -*- erlang -*-
-mode(compile).
main([Path]) ->
    {ok, Terms} = file:consult(Path),
    lists:foreach(fun(T) -> print(T) end, Terms).
print({Perm, Who, Action, Topics}) ->
    io:format("~s\t~s\t~s\t~s~n", [Perm, who(Who), Action, lists:join(" ", Topics)]).
who(all) -> "all";
who({username, {re, Re}}) -> ["username_re ", Re];
who({username, Name}) -> ["username ", Name].
"""


def consult_acl(tmp_path: Path, acl: Path) -> list[EmqxRule]:
    """The acl.conf's terms as Erlang's file:consult reads them (the call EMQX's file
    source makes: emqx_authz_file:validate/1), back into rules."""
    if shutil.which("escript") is None:
        pytest.skip("escript (Erlang) is not installed: apt-get install erlang-base")
    script = tmp_path / "consult.escript"
    script.write_text(ESCRIPT)
    out = subprocess.run(
        ["escript", str(script), str(acl)], capture_output=True, text=True, check=True
    ).stdout
    rules = []
    for line in out.splitlines():
        perm, who, action, topics = line.split("\t")
        rules.append(
            EmqxRule(perm, tuple(who.split(" ", 1)), action, tuple(topics.split(" ")))  # type: ignore[arg-type]
        )
    return rules


def test_acl_conf_as_erlang_reads_it_is_the_rule_list(tmp_path: Path) -> None:
    broker_dir = county_broker_dir(tmp_path)
    files = write_emqx_files(broker_dir, tmp_path / "out", nodes=["emqx@a", "emqx@b", "emqx@c"])
    consulted = consult_acl(tmp_path, files.acl)
    assert consulted == generated_rules(tmp_path, broker_dir)
    for account, action, topic, allowed in CASES:
        got = emqx_authorize(consulted, username=account, action=action, topic=topic)  # type: ignore[arg-type]
        assert got is allowed, (account, action, topic)


# ------------------------------------------------------------- the same table, real Mosquitto

ROOT_USER, ROOT_PASSWORD = "test-root", "test-root-pw"


async def _connect(
    proc: MosquittoProcess, user: str, subscribe: list[str], got: list[tuple[str, bytes]]
) -> MqttConnection:
    conn = MqttConnection(
        client_id=user,
        broker=BrokerAddress(proc.host, proc.port, user, PASSWORDS.get(user, ROOT_PASSWORD)),
        on_message=lambda t, m: got.append((t, m)),
        subscriptions=[(t, 1) for t in subscribe],
        session_expiry_s=0,
    )
    await conn.start()
    return conn


def _has(got: list[tuple[str, bytes]], message: tuple[str, bytes]) -> Callable[[], bool]:
    return lambda: message in got


async def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def mosquitto_decisions(proc: MosquittoProcess) -> dict[tuple[str, str, str], bool]:
    """Each case decided by the running broker: a subscription is allowed if a message
    published on the topic reaches the account; a publish if it reaches an observer
    allowed to read everything. A marker the account may use, sent last on the same
    connection, says when everything allowed has arrived."""
    decided: dict[tuple[str, str, str], bool] = {}
    root_got: list[tuple[str, bytes]] = []
    root = await _connect(proc, ROOT_USER, ["#"], root_got)
    try:
        for account in sorted({c[0] for c in CASES}):
            marker = (
                p.Topics.command_device(account)
                if account not in (C1, C2)
                else f"{R}/cmd/device/{account}"
            )
            reads = [c[2] for c in CASES if c[0] == account and c[1] == "subscribe"]
            got: list[tuple[str, bytes]] = []
            conn = await _connect(proc, account, [*reads, marker], got)
            await asyncio.sleep(0.2)  # the SUBACKs
            for topic in reads:
                await root.publish_confirmed(topic, topic.encode())
            await root.publish_confirmed(marker, b"marker")
            await _wait(_has(got, (marker, b"marker")), f"{account}'s read marker")
            for topic in reads:
                decided[(account, "subscribe", topic)] = (topic, topic.encode()) in got
            writes = [c[2] for c in CASES if c[0] == account and c[1] == "publish"]
            own = p.Topics.device_event(account) if account not in (C1, C2) else f"{R}/x"
            for topic in writes:
                conn.publish(topic, f"{account} {topic}".encode(), qos=1)
            await conn.publish_confirmed(own, f"{account} marker".encode())
            await _wait(_has(root_got, (own, f"{account} marker".encode())), "write marker")
            for topic in writes:
                decided[(account, "publish", topic)] = (
                    topic,
                    f"{account} {topic}".encode(),
                ) in root_got
            await conn.stop()
    finally:
        await root.stop()
    return decided


@pytest.mark.broker
async def test_the_table_is_what_the_real_mosquitto_acl_decides(tmp_path: Path) -> None:
    broker_dir = county_broker_dir(tmp_path)
    port = free_port()
    files = write_broker_config(tmp_path / "mosquitto", port)
    shutil.copy(broker_dir / "passwd", files.password_file)
    with files.password_file.open("a") as f:
        f.write(f"{ROOT_USER}:{mosquitto_password_hash(ROOT_PASSWORD)}\n")
    files.acl_file.write_text(
        (broker_dir / "acl").read_text() + f"\nuser {ROOT_USER}\ntopic readwrite #\n"
    )
    proc = MosquittoProcess(files, port)
    proc.start()
    try:
        decided = await mosquitto_decisions(proc)
    finally:
        proc.stop()
    expected = {(a, act, t): allowed for a, act, t, allowed in CASES}
    wrong = {k: v for k, v in decided.items() if v != expected[k]}
    assert len(decided) == len(CASES) and wrong == {}


# ------------------------------------------------------------- EMQX's own semantics


@pytest.mark.parametrize(
    ("name", "topic_filter", "matches"),
    [
        ("a/b", "a/+", True),
        ("a/b/c", "a/#", True),
        ("a", "a/#", True),  # `#` covers its parent level (MQTT 4.7.1.2)
        ("a/+", "a/b", False),  # a wildcard SUBSCRIBE is not covered by one topic
        ("a/+", "a/+", True),
        # EMQX's match_tokens lets a rule's `+` take a `#` word: subscribing to
        # dalaba/v1/live/# passes the live/+ rule, the same topics (one level).
        ("a/#", "a/+", True),
        ("a/b/#", "a/+", False),
        ("$SYS/x", "#", False),  # `$` topics escape leading wildcards
        ("$SYS/x", "+/x", False),
        ("$SYS/x", "$SYS/#", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_topic_match_is_emqx_topic_match(name: str, topic_filter: str, matches: bool) -> None:
    assert emqx_topic_match(name, topic_filter) is matches


def test_share_subscriptions_are_checked_on_the_real_filter(tmp_path: Path) -> None:
    """EMQX 5.8 checks `$share/<group>/<filter>` as `<filter>`: only controllers can join
    the report group, because only they may read reports."""
    rules = generated_rules(tmp_path)
    shared = p.Topics.shared(p.Topics.ALL_DEVICE_ACKS, p.Topics.CONTROLLER_SHARE_GROUP)
    for user in (C1, C2):
        assert emqx_authorize(rules, username=user, action="subscribe", topic=shared)
    for user in (A.device_id, D.device_id, "stranger"):
        assert not emqx_authorize(rules, username=user, action="subscribe", topic=shared)


def test_a_username_with_wildcards_gets_no_pattern_rights(tmp_path: Path) -> None:
    rules = generated_rules(tmp_path)
    assert not emqx_authorize(
        rules, username="+", action="publish", topic=p.Topics.device_ack(A.device_id)
    )
    assert not emqx_authorize(rules, username="#", action="subscribe", topic=f"{R}/cmd/device/x")


# ------------------------------------------------------------- users and hashes


def test_pbkdf2_is_computed_as_emqx_passwd_does() -> None:
    """The vector of apps/emqx/test/emqx_passwd_SUITE.erl (v5.8.9): the salt is the
    text as given, the hash lower-case hex."""
    digest = hashlib.pbkdf2_hmac("sha1", b"password", b"ATHENA.MIT.EDUraeburn", 2, 32)
    assert digest.hex() == "01dbee7f4a9e243e988b62c73cda935da05378b93244ec8f48a99e61ad799d86"


def test_imported_users_verify_their_passwords_in_erlang(tmp_path: Path) -> None:
    files = write_emqx_files(county_broker_dir(tmp_path), tmp_path / "out", nodes=["emqx@a"])
    users = json.loads(files.users_json.read_text())
    assert {u["user_id"] for u in users} == set(PASSWORDS)
    assert not any(u["is_superuser"] for u in users)
    csv_lines = files.users_csv.read_text().splitlines()
    assert csv_lines[0] == "user_id,password_hash,salt,is_superuser"
    assert [line.split(",") for line in csv_lines[1:]] == [
        [u["user_id"], u["password_hash"], u["salt"], "false"] for u in users
    ]
    if shutil.which("erl") is None:
        pytest.skip("erl (Erlang) is not installed: apt-get install erlang-base")
    checks = []
    for u in users:
        for password, ok in ((PASSWORDS[u["user_id"]], True), ("wrong", False)):
            checks.append((u, password, ok))
    expr = "".join(
        f'io:format("~s~n", [binary:encode_hex(crypto:pbkdf2_hmac(sha512, <<"{pw}">>, '
        f'<<"{u["salt"]}">>, {PBKDF2_ITERATIONS}, 64))]),'
        for u, pw, _ in checks
    )
    out = subprocess.run(
        ["erl", "-noshell", "-eval", expr + "halt()."],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for (u, _pw, ok), computed in zip(checks, out, strict=True):
        assert (computed.lower() == u["password_hash"]) is ok


def test_a_binary_salt_is_refused_with_the_account_named() -> None:
    old = "$7$101$" + "gICAgICAgICAgICA" + "$" + "A" * 88  # salt bytes 0x80..., not text
    with pytest.raises(ValueError, match="account t9: its salt is binary"):
        emqx_user_from_mosquitto("t9", old)


def test_new_salts_are_printable_so_every_new_hash_imports() -> None:
    for _ in range(200):
        emqx_user_from_mosquitto("t1", mosquitto_password_hash("x"))


# ------------------------------------------------------------- emqx.conf and the bridge


def test_emqx_conf_is_balanced_and_sets_what_dalaba_relies_on() -> None:
    conf = render_emqx_conf(nodes=["emqx@n1", "emqx@n2", "emqx@n3"]) + render_emqx_base_hocon(
        certfile="/etc/emqx/certs/server.pem", keyfile="/etc/emqx/certs/server.key"
    )
    body = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    assert body.count("{") == body.count("}") and body.count("[") == body.count("]")
    for needed in (
        "use_username_as_clientid = true",
        "discovery_strategy = static",
        'static.seeds = ["emqx@n1", "emqx@n2", "emqx@n3"]',
        "shared_subscription = true",
        "backend = built_in_database",
        "mac_fun = sha512",
        f"iterations = {PBKDF2_ITERATIONS}",
        "bootstrap_type = hash",
        "no_match = deny",
        "type = file",
        'max_packet_size = "256KB"',
        'path = "${EMQX_ETC_DIR}/acl.conf"',
        'certfile = "/etc/emqx/certs/server.pem"',
    ):
        assert needed in body, needed
    assert "cookie" not in body  # the cluster's secret stays in the environment


def test_bridge_conf_maps_the_county_under_its_prefix() -> None:
    conf = render_bridge_conf(
        county_id="c7", address="province.example:8883", remote_password="s3cret", cafile="/ca"
    )
    lines = conf.splitlines()
    for line in (
        "connection bridge-c7",
        "bridge_protocol_version mqttv50",
        "cleansession false",
        f'topic {R}/device/# out 1 "" counties/c7/',
        f'topic {R}/cmd/# in 1 "" counties/c7/',
        "bridge_cafile /ca",
    ):
        assert line in lines, line


def test_cli_errors_are_one_line_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["broker-config", "--kind", "emqx", "--out", str(tmp_path / "o")])
    assert code != 0
    code = main(
        ["broker-config", "--kind", "emqx", "--broker-dir", str(tmp_path), "--nodes", "emqx@a",
         "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code != 0
    code = main(
        ["broker-config", "--kind", "mosquitto-bridge", "--county-id", "c1", "--province",
         "nowhere", "--out", str(tmp_path / "b")]
    )  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "dalaba broker-config: error: --kind emqx: give --broker-dir and --nodes",
        f"dalaba broker-config: error: --broker-dir: {tmp_path}/passwd not found "
        "(the county's Mosquitto files)",
        "dalaba broker-config: error: --province: 'nowhere' is not host:port of the "
        "province broker",
    ]
    assert not (tmp_path / "b").exists()


def test_cli_writes_the_emqx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broker_dir = county_broker_dir(tmp_path)
    out = tmp_path / "emqx"
    code = main(
        ["broker-config", "--kind", "emqx", "--broker-dir", str(broker_dir), "--nodes",
         "emqx@a,emqx@b,emqx@c", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "5 accounts" in capsys.readouterr().out
    names = ("emqx-dalaba.conf", "base-dalaba.hocon", "acl.conf", "dalaba-users.csv")
    for name in (*names, "dalaba-users.json"):
        assert (out / name).stat().st_mode & 0o077 == 0, name  # hashes: owner only
    assert "listeners.ssl.default" not in (out / "base-dalaba.hocon").read_text()
    code = main(
        ["broker-config", "--kind", "emqx", "--broker-dir", str(broker_dir), "--nodes",
         "emqx@a", "--tls-cert", "/etc/emqx/s.pem", "--tls-key", "/etc/emqx/s.key",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert 'certfile = "/etc/emqx/s.pem"' in (out / "base-dalaba.hocon").read_text()
    authz = json.loads((out / "dalaba-authz-users.json").read_text())
    assert {u["username"] for u in authz} == {A.device_id, B.device_id, D.device_id}


# ------------------------------------------------------------- the examples in deploy/

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE_NODES = [f"emqx@emqx{i}.province.example" for i in (1, 2, 3)]


def expected_examples() -> dict[Path, str]:
    """What deploy/ shows, as the generator writes it today. After changing the
    generator, write these texts to their paths again."""
    devices = [Placement("t01-v01-d1", "t01-v01", "t01"), Placement("t02-v05-d1", "t02-v05", "t02")]
    acl = render_acl_conf(emqx_acl_rules([C1, C2], devices))
    bridge = render_bridge_conf(
        county_id="c1",
        address="mqtt.province.example:8883",
        remote_password="CHANGE-ME",
        cafile="/etc/mosquitto/province-ca.pem",
    )
    return {
        DEPLOY / "emqx/emqx-dalaba.conf.example": render_emqx_conf(nodes=EXAMPLE_NODES),
        DEPLOY / "emqx/base-dalaba.hocon.example": render_emqx_base_hocon(
            certfile="/etc/emqx/certs/server.pem", keyfile="/etc/emqx/certs/server.key"
        ),
        DEPLOY / "emqx/acl.conf.example": (
            "%% Example for a county of two terminals; generate the real one with\n"
            "%% `dalaba broker-config --kind emqx --broker-dir /etc/mosquitto/dalaba "
            "--nodes ... --out DIR`.\n" + acl
        ),
        DEPLOY / "mosquitto/bridge-county.conf.example": (
            "# Example; generate the real one (with its password) with\n"
            "# `dalaba broker-config --kind mosquitto-bridge --county-id c1 --province "
            "HOST:8883\n#  --cafile CA.pem --out DIR`, and install it as "
            "/etc/mosquitto/conf.d/dalaba-bridge.conf.\n" + bridge
        ),
        DEPLOY / "mosquitto/province-bridge-acl.example": (
            "# Example: the block the province broker's Mosquitto ACL gets for county c1's "
            "bridge\n# (province-acl-bridge-c1.txt from dalaba broker-config --kind "
            "mosquitto-bridge).\n" + render_province_bridge_acl("c1")
        ),
    }


@pytest.mark.parametrize("path", list(expected_examples()), ids=lambda p: p.name)
def test_deploy_examples_are_what_the_generator_writes(path: Path) -> None:
    assert path.read_text() == expected_examples()[path]


# ------------------------------------------------------------- hashes from before printable salts


def old_style_hash(password: str) -> str:
    """How dalaba hashed before salts were printable: 12 random bytes."""
    salt = bytes([0x80 + i for i in range(12)])  # certainly not printable
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def with_old_hash(broker_dir: Path, user: str) -> None:
    passwd = broker_dir / "passwd"
    lines = [
        f"{user}:{old_style_hash(PASSWORDS[user])}" if line.startswith(f"{user}:") else line
        for line in passwd.read_text().splitlines()
    ]
    passwd.write_text("\n".join(lines) + "\n")


def test_an_old_terminal_hash_is_refused_until_provision_rehashes_it(tmp_path: Path) -> None:
    broker_dir = county_broker_dir(tmp_path)
    with_old_hash(broker_dir, A.device_id)
    with pytest.raises(ValueError, match=r"first: t01-v01-d1.*provision --village V.*t01-v01"):
        write_emqx_files(broker_dir, tmp_path / "out", nodes=["emqx@a"])
    # What `dalaba provision --village t01-v01` does with the terminal's device file:
    # the same password, a new hash.
    merge_broker_files(broker_dir, [A], controller_password=None)
    files = write_emqx_files(broker_dir, tmp_path / "out", nodes=["emqx@a"])
    users = {u["user_id"]: u for u in json.loads(files.users_json.read_text())}
    a = users[A.device_id]
    computed = hashlib.pbkdf2_hmac("sha512", A.password.encode(), a["salt"].encode(), 101, 64)
    assert computed.hex() == a["password_hash"]


def test_an_old_controller_hash_is_left_out_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker_dir = county_broker_dir(tmp_path)
    with_old_hash(broker_dir, C1)
    code = main(
        ["broker-config", "--kind", "emqx", "--broker-dir", str(broker_dir), "--nodes",
         "emqx@a", "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    assert (
        "not carried over (hash with a binary salt): dalaba-controller;" in capsys.readouterr().out
    )
    users = json.loads((tmp_path / "out" / "dalaba-users.json").read_text())
    assert {u["user_id"] for u in users} == set(PASSWORDS) - {C1}
