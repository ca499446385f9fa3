"""Beyond one Mosquitto: the same accounts and rules for an EMQX 5.8 cluster, and a
Mosquitto bridge from a county broker to a province broker (docs/operations.md, 12).

Everything here is generated from what the county's Mosquitto already runs on (the
password and ACL files that `write_password_file`, `write_acl` and `dalaba provision`
write), so the two brokers cannot drift apart by hand-editing.

EMQX was not run on this machine (no package in Debian 12, and only PyPI, apt and npm
are reachable here). Every key and file format below was read in EMQX's own source at
tag v5.8.9, the last Apache-2.0 line (5.9 and later are BSL 1.1); each is cited where it
is used. tests/unit/test_broker_cluster.py checks the rules against the real Mosquitto
ACL through an evaluator of EMQX's matching code, and the acl.conf with Erlang itself.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dalaba.protocol import TOPIC_ROOT, Topics, check_id
from dalaba_ops.broker import (
    CONTROLLER_USER,
    SALT_ALPHABET,
    _write_private,
    mosquitto_password_hash,
)
from dalaba_ops.provisioning import _acl_blocks, read_or_create_secret, read_password_file

EMQX_RELEASE = "5.8.9"
# Mosquitto's $7$ hashes are PBKDF2-SHA512 with 101 rounds (dalaba_ops/broker.py). EMQX
# checks pbkdf2 as hex(pbkdf2_hmac(mac_fun, password, salt, iterations, dk_length)),
# the salt being the import file's text as is (apps/emqx/src/emqx_passwd.erl, v5.8.9),
# so the same hash verifies in both when its salt is printable: the authenticator is
# configured with exactly these parameters, one per authenticator.
PBKDF2_MAC = "sha512"
PBKDF2_ITERATIONS = 101
PBKDF2_DK_LENGTH = 64
# The authenticator's id in EMQX's REST API (mechanism:backend).
EMQX_AUTHN_ID = "password_based:built_in_database"

Action = Literal["publish", "subscribe"]
_ID_RE = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"  # check_id's alphabet, as a PCRE


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Placement:
    """Where a terminal is: what its per-device ACL block names."""

    device_id: str
    village_id: str
    township_id: str


@dataclass(frozen=True)
class CountyAccounts:
    """What the county's Mosquitto knows: every account's hash, which of them are
    controllers, and where each terminal is."""

    hashes: dict[str, str]
    controllers: list[str]
    devices: list[Placement]


_CMD_TOWNSHIP = re.compile(rf"topic read {re.escape(TOPIC_ROOT)}/cmd/township/(\S+)")
_CMD_VILLAGE = re.compile(rf"topic read {re.escape(TOPIC_ROOT)}/cmd/village/(\S+)")


def read_county_accounts(broker_dir: Path) -> CountyAccounts:
    """The accounts of a county Mosquitto from its `passwd` and `acl` files."""
    passwd, acl = broker_dir / "passwd", broker_dir / "acl"
    for path in (passwd, acl):
        if not path.is_file():
            raise ValueError(f"--broker-dir: {path} not found (the county's Mosquitto files)")
    hashes = read_password_file(passwd)
    _header, blocks = _acl_blocks(acl.read_text())
    controllers: list[str] = []
    devices: list[Placement] = []
    for user, lines in blocks.items():
        body = "\n".join(lines)
        if f"topic readwrite {Topics.ACL_ALL}" in body:
            controllers.append(user)
            continue
        township, village = _CMD_TOWNSHIP.search(body), _CMD_VILLAGE.search(body)
        if township is None or village is None:
            raise ValueError(f"{acl}: account {user!r} is neither a controller nor a terminal")
        devices.append(Placement(user, village[1], township[1]))
    if CONTROLLER_USER not in controllers:
        raise ValueError(f"{acl}: no {CONTROLLER_USER} block (not a dalaba ACL file?)")
    missing = sorted(n for n in [*controllers, *(d.device_id for d in devices)] if n not in hashes)
    if missing:
        raise ValueError(f"{passwd}: no password for {', '.join(missing[:5])}")
    return CountyAccounts(hashes, controllers, devices)


class BinarySalt(ValueError):
    """A hash written before dalaba's salts were printable: EMQX cannot hold its salt."""


def emqx_user_from_mosquitto(username: str, encoded: str, *, superuser: bool = False) -> dict:
    """One entry of EMQX's user import JSON (`user_id`, `password_hash`, `salt`,
    `is_superuser`: apps/emqx_auth/data/user-credentials.json and
    emqx_authn_mnesia:convert_user/3, v5.8.9) carrying a Mosquitto $7$ hash over."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7" or parts[2] != str(PBKDF2_ITERATIONS):
        raise ValueError(f"account {username}: not a $7$101 Mosquitto hash")
    salt = base64.b64decode(parts[3])
    if not salt or not set(salt.decode("latin-1")) <= set(SALT_ALPHABET):
        raise BinarySalt(f"account {username}: its salt is binary")
    digest = base64.b64decode(parts[4])
    if len(digest) != PBKDF2_DK_LENGTH:
        raise ValueError(f"account {username}: digest is {len(digest)} bytes, not 64")
    return {
        "user_id": check_id(username),
        "password_hash": digest.hex(),
        "salt": salt.decode("ascii"),
        "is_superuser": superuser,
    }


def emqx_users(accounts: CountyAccounts) -> tuple[list[dict], list[str]]:
    """Every account, controllers first, and the controller accounts left out because
    their hash has a binary salt (the operator adds them to EMQX with their password:
    docs/operations.md, 12). No one is a superuser: a superuser skips authorization
    (emqx_authz:authorize/5), and controllers are bound by the ACL too.

    A terminal with a binary salt is refused: `dalaba provision` run again for it
    keeps its password (from its device file) and writes a new hash, whose salt is
    printable, so nothing on the board changes."""
    users, controllers_left, terminals_refused = [], [], []
    for name in accounts.controllers:
        try:
            users.append(emqx_user_from_mosquitto(name, accounts.hashes[name]))
        except BinarySalt:
            controllers_left.append(name)
    for device in accounts.devices:
        try:
            users.append(
                emqx_user_from_mosquitto(device.device_id, accounts.hashes[device.device_id])
            )
        except BinarySalt:
            terminals_refused.append(device.device_id)
    if terminals_refused:
        villages = sorted(
            {d.village_id for d in accounts.devices if d.device_id in terminals_refused}
        )
        raise ValueError(
            f"{len(terminals_refused)} terminal accounts have hashes with binary salts "
            f"(first: {terminals_refused[0]}), which EMQX cannot import: run "
            f"`dalaba provision --village V` again for their villages ({', '.join(villages[:5])}"
            f"{', ...' if len(villages) > 5 else ''}); it keeps their passwords"
        )
    return users, controllers_left


# --------------------------------------------------------------------------- EMQX ACL


@dataclass(frozen=True)
class EmqxRule:
    """One term of EMQX's acl.conf: {Permission, Who, Action, Topics}. `who` is
    ("all",), ("username", name) or ("username_re", regex)."""

    permission: Literal["allow", "deny"]
    who: tuple[str, ...]
    action: Literal["publish", "subscribe", "all"]
    topics: tuple[str, ...]


def emqx_acl_rules(controllers: Sequence[str], devices: Iterable[Placement]) -> list[EmqxRule]:
    """`write_acl` as EMQX rules, first match wins, with authorization.no_match = deny.

    Mosquitto's `%u` becomes `${username}`; with mqtt.use_username_as_clientid the
    client id is the username too, so `${clientid}` would be the same. The pattern rules
    apply only to usernames of check_id's alphabet: a name with `+` or `#` would render
    a wildcard into the topic (Mosquitto refuses such names in patterns itself)."""
    ids_only = ("username_re", _ID_RE)
    rules = [
        EmqxRule(
            "allow",
            (
                "username",
                check_id(name),
            ),
            "all",
            (Topics.ACL_ALL,),
        )
        for name in controllers
    ]
    rules.append(
        EmqxRule(
            "allow",
            ids_only,
            "publish",
            tuple(t.replace("%u", "${username}") for t in Topics.acl_device_writes()),
        )
    )
    rules.append(
        EmqxRule(
            "allow",
            ids_only,
            "subscribe",
            tuple(t.replace("%u", "${username}") for t in Topics.acl_device_reads()),
        )
    )
    for d in devices:
        rules.append(
            EmqxRule(
                "allow",
                ("username", check_id(d.device_id)),
                "subscribe",
                (Topics.command_township(d.township_id), Topics.command_village(d.village_id)),
            )
        )
    rules.append(EmqxRule("deny", ("all",), "all", ("#",)))
    return rules


def _erl_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_acl_conf(rules: Sequence[EmqxRule]) -> str:
    """The rules in acl.conf's Erlang-term format (apps/emqx_auth/etc/acl.conf, v5.8.9:
    one `{Permission, Who, Action, [Topic]}.` term per rule, read with file:consult)."""
    lines = [
        "%% Written by dalaba (dalaba broker-config --kind emqx) from the county's Mosquitto",
        "%% ACL; regenerate it, do not edit. Format: apps/emqx_auth/etc/acl.conf (EMQX 5.8).",
        "%% First match wins; the last rule denies the rest (and authorization.no_match =",
        "%% deny in emqx.conf says the same for anything a rule forgot).",
    ]
    for r in rules:
        if r.who == ("all",):
            who = "all"
        elif r.who[0] == "username_re":
            who = f"{{username, {{re, {_erl_string(r.who[1])}}}}}"
        else:
            who = f"{{username, {_erl_string(r.who[1])}}}"
        topics = ", ".join(_erl_string(t) for t in r.topics)
        lines.append(f"{{{r.permission}, {who}, {r.action}, [{topics}]}}.")
    return "\n".join(lines) + "\n"


def emqx_authz_users(devices: Iterable[Placement]) -> list[dict]:
    """The per-terminal rules for EMQX's built_in_database authorization source
    (POST /api/v5/authorization/sources/built_in_database/rules/users: `username`,
    `rules` of `topic`/`permission`/`action`; emqx_authz_api_mnesia.erl, v5.8.9), the
    province-scale form: looked up by username instead of scanned in a file."""
    return [
        {
            "username": d.device_id,
            "rules": [
                {
                    "topic": Topics.command_township(d.township_id),
                    "permission": "allow",
                    "action": "subscribe",
                },
                {
                    "topic": Topics.command_village(d.village_id),
                    "permission": "allow",
                    "action": "subscribe",
                },
            ],
        }
        for d in devices
    ]


# ---------------------------------------------- EMQX's matching, for the tests and --check


def _words(topic: str) -> list[str]:
    return topic.split("/")


def emqx_topic_match(name: str, topic_filter: str) -> bool:
    """emqx_topic:match/2 (apps/emqx/src/emqx_topic.erl, v5.8.9): word by word, `+`
    one word, `#` the rest; a name starting with `$` is not matched by a leading
    wildcard. `name` may itself be a filter (a SUBSCRIBE), whose `+` then matches
    only a `+` (or a wildcard) in the rule's filter."""
    n, f = _words(name), _words(topic_filter)
    if n[0].startswith("$") and f[0] in ("+", "#"):
        return False
    i = 0
    while True:
        if i == len(f):
            return i == len(n)
        if f[i] == "#" and i == len(f) - 1:
            return True
        if i == len(n):
            return False
        if f[i] != n[i] and f[i] != "+":
            return False
        i += 1


def emqx_authorize(rules: Sequence[EmqxRule], *, username: str, action: Action, topic: str) -> bool:
    """emqx_authz_rule:matches/4 over one file source, no_match = deny. For a
    SUBSCRIBE to `$share/<group>/<filter>` EMQX 5.8 checks only `<filter>`
    (emqx_channel:do_check_sub_authzs2/3 calls emqx_topic:get_shared_real_topic)."""
    if action == "subscribe" and topic.startswith("$share/"):
        topic = topic.split("/", 2)[2]
    for rule in rules:
        if rule.action != "all" and rule.action != action:
            continue
        if rule.who[0] == "username" and rule.who[1] != username:
            continue
        if rule.who[0] == "username_re" and not re.search(rule.who[1], username):
            continue
        for pattern in rule.topics:
            rendered = pattern.replace("${username}", username).replace("${clientid}", username)
            if emqx_topic_match(topic, rendered):
                return rule.permission == "allow"
    return False


# --------------------------------------------------------------------------- emqx.conf


def render_emqx_conf(*, nodes: Sequence[str], cluster_name: str = "dalaba") -> str:
    """What must not change while EMQX runs, for etc/emqx.conf on every node: the node
    and the cluster (apps/emqx_conf/src/emqx_conf_schema.erl, v5.8.9)."""
    if len(nodes) < 1:
        raise ValueError("--nodes: give at least one node name (emqx@host)")
    for node in nodes:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+", node):
            raise ValueError(f"--nodes: {node!r} is not an Erlang node name (emqx@host)")
    seeds = ", ".join(json.dumps(n) for n in nodes)
    return f"""## Written by dalaba (dalaba broker-config --kind emqx) for EMQX {EMQX_RELEASE}, the
## last Apache-2.0 release line. Append it to etc/emqx.conf on EVERY node; only node.name
## differs per node (set EMQX_NODE__NAME in each node's environment, or edit it here).
## Keys were read in the v5.8.9 schema, not guessed (files named beside each block).
## The rest of dalaba's settings are in base.hocon: emqx.conf is read last and wins
## over what the dashboard or the API change (emqx_config:do_parse_hocon/3 reads
## base.hocon, cluster.hocon, emqx.conf in that order), so only what must never change
## at run time is here.

## apps/emqx_conf/src/emqx_conf_schema.erl: fields("node"), fields("cluster").
node {{
  name = {json.dumps(nodes[0])}
  ## node.cookie is deliberately not here: the same secret on every node, given as
  ## EMQX_NODE__COOKIE in each node's environment (environment variables override
  ## emqx.conf: apps/emqx_conf/etc/emqx_conf.conf; bin/emqx checks it at start).
}}
cluster {{
  name = {cluster_name}
  ## Open-source 5.8 nodes are all `core` (replicant is Enterprise-only since 5.8.0).
  discovery_strategy = static
  static.seeds = [{seeds}]
}}
"""


def render_emqx_base_hocon(
    *,
    # EMQX expands ${EMQX_ETC_DIR} in both paths itself (emqx_authz_file:filename/1,
    # emqx_authn_mnesia:boostrap_user_from_file/2: naive_env_interpolation).
    acl_path: str = "${EMQX_ETC_DIR}/acl.conf",
    bootstrap_path: str = "${EMQX_ETC_DIR}/dalaba-users.csv",
    certfile: str | None = None,
    keyfile: str | None = None,
    cacertfile: str | None = None,
) -> str:
    """The rest of dalaba's settings, for etc/base.hocon on every node: read first, so
    what an operator later changes through the dashboard or the API (written to
    cluster.hocon, cluster-wide) takes effect. Keys from the v5.8.9 schema:
    apps/emqx/src/emqx_schema.erl (mqtt, listeners, authorization, durable_sessions),
    apps/emqx_auth_mnesia/src/emqx_authn_mnesia_schema.erl and
    apps/emqx_auth/src/emqx_authn/emqx_authn_password_hashing.erl (authentication)."""
    ssl = ""
    if certfile and keyfile:
        ca = f"    cacertfile = {json.dumps(cacertfile)}\n" if cacertfile else ""
        ssl = (
            "\n# MQTT over TLS for terminals across the public network; the load balancer\n"
            "# passes TCP through, so the terminal's TLS ends here.\n"
            "listeners.ssl.default {\n"
            '  bind = "0.0.0.0:8883"\n'
            "  max_connections = 200000\n"
            "  ssl_options {\n"
            f"    certfile = {json.dumps(certfile)}\n"
            f"    keyfile = {json.dumps(keyfile)}\n"
            f"{ca}"
            '    versions = ["tlsv1.3", "tlsv1.2"]\n'
            "  }\n"
            "}\n"
        )
    return f"""## Written by dalaba (dalaba broker-config --kind emqx) for EMQX {EMQX_RELEASE}:
## append it to etc/base.hocon on EVERY node. Keys were read in the v5.8.9 schema (files
## named beside each block).

## apps/emqx/src/emqx_schema.erl: mqtt_general(), mqtt_session().
mqtt {{
  ## A client's id is its username, as on the county's Mosquitto
  ## (use_username_as_clientid): no account can take over another's session. Set
  ## before authentication, and an empty username is refused
  ## (emqx_channel:maybe_username_as_clientid/2).
  use_username_as_clientid = true
  ## Mosquitto runs with max_packet_size 262144; commands are a few kB.
  max_packet_size = "256KB"
  max_clientid_len = 64
  max_topic_levels = 16
  retain_available = true
  wildcard_subscription = true
  ## Controller replicas read every report through $share/{Topics.CONTROLLER_SHARE_GROUP}/...;
  ## each report goes to one replica, any replica will do.
  shared_subscription = true
  shared_subscription_strategy = round_robin
  exclusive_subscription = false
  ## Only for pre-5.0 clients; MQTT 5 terminals ask for their own expiry.
  session_expiry_interval = "14d"
  ## Queued commands for an offline terminal, and the controller's report backlog
  ## (Mosquitto: max_queued_messages 100000, max_inflight_messages 1000).
  max_mqueue_len = 100000
  mqueue_store_qos0 = false
  max_inflight = 1000
  ## server_keepalive stays `disabled`: EMQX would impose it on every client (it is
  ## not a cap like Mosquitto's max_keepalive), and terminals keep 30 s so that a dead
  ## link publishes their last will within 45 s.
}}

## TCP for the load balancer's health check and for controllers on the private network.
listeners.tcp.default {{
  bind = "0.0.0.0:1883"
  max_connections = 200000
}}
{ssl}
## apps/emqx_auth_mnesia/src/emqx_authn_mnesia_schema.erl (built_in_database),
## apps/emqx_auth/src/emqx_authn/emqx_authn_password_hashing.erl (pbkdf2). These are
## Mosquitto's $7$ parameters, so the county's hashes are imported unchanged.
authentication = [
  {{
    mechanism = password_based
    backend = built_in_database
    user_id_type = username
    password_hash_algorithm {{
      name = pbkdf2
      mac_fun = {PBKDF2_MAC}
      iterations = {PBKDF2_ITERATIONS}
      dk_length = {PBKDF2_DK_LENGTH}
    }}
    ## Read once, at the first start; it never overrides a user already in the
    ## database. Later changes go through the import API (docs/operations.md, 12).
    bootstrap_file = {json.dumps(bootstrap_path)}
    bootstrap_type = hash
  }}
]

## apps/emqx/src/emqx_schema.erl: authz_fields(); the file source's format:
## apps/emqx_auth/etc/acl.conf.
authorization {{
  no_match = deny
  ## Like Mosquitto: a refused publish is dropped, the client stays connected.
  deny_action = ignore
  cache {{
    enable = true
    max_size = 32
    ttl = "1m"
  }}
  sources = [
    {{
      type = file
      enable = true
      path = {json.dumps(acl_path)}
    }}
  ]
}}

## Durable (disk) sessions stay off: in the open-source edition they use the
## builtin_local backend, which "cannot be used in a clustered EMQX setup"
## (apps/emqx_ds_builtin_local/README.md); the replicated backend is Enterprise (BSL).
durable_sessions.enable = false
"""


def render_users_csv(users: Sequence[dict]) -> str:
    """The bootstrap file (bootstrap_type = hash): user_id,password_hash,salt,is_superuser
    (apps/emqx_auth/data/user-credentials.csv, v5.8.9). Ids and salts hold no commas."""
    lines = ["user_id,password_hash,salt,is_superuser"]
    lines += [
        f"{u['user_id']},{u['password_hash']},{u['salt']},{str(u['is_superuser']).lower()}"
        for u in users
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EmqxFiles:
    conf: Path
    base_hocon: Path
    acl: Path
    users_json: Path
    users_csv: Path
    authz_users: Path
    accounts: int
    # Controller accounts whose hash could not be carried over (binary salt).
    controllers_left: list[str]


def write_emqx_files(
    broker_dir: Path,
    out: Path,
    *,
    nodes: Sequence[str],
    cluster_name: str = "dalaba",
    certfile: str | None = None,
    keyfile: str | None = None,
) -> EmqxFiles:
    """Everything `dalaba broker-config --kind emqx` writes. With `certfile` and
    `keyfile` (paths on the EMQX nodes), the TLS listener for terminals too."""
    if (certfile is None) != (keyfile is None):
        raise ValueError("--tls-cert and --tls-key: give both or neither")
    accounts = read_county_accounts(broker_dir)
    users, controllers_left = emqx_users(accounts)
    out.mkdir(parents=True, exist_ok=True)
    files = EmqxFiles(
        conf=out / "emqx-dalaba.conf",
        base_hocon=out / "base-dalaba.hocon",
        acl=out / "acl.conf",
        users_json=out / "dalaba-users.json",
        users_csv=out / "dalaba-users.csv",
        authz_users=out / "dalaba-authz-users.json",
        accounts=len(users),
        controllers_left=controllers_left,
    )
    _write_private(files.conf, render_emqx_conf(nodes=nodes, cluster_name=cluster_name))
    _write_private(files.base_hocon, render_emqx_base_hocon(certfile=certfile, keyfile=keyfile))
    rules = emqx_acl_rules(accounts.controllers, accounts.devices)
    _write_private(files.acl, render_acl_conf(rules))
    _write_private(files.users_json, json.dumps(users, indent=1) + "\n")
    _write_private(files.users_csv, render_users_csv(users))
    _write_private(files.authz_users, json.dumps(emqx_authz_users(accounts.devices)) + "\n")
    return files


# --------------------------------------------------------------------------- bridge

BRIDGED_OUT = f"{TOPIC_ROOT}/device/#"  # every terminal's reports, up to the province
BRIDGED_IN = (f"{TOPIC_ROOT}/cmd/#", f"{TOPIC_ROOT}/live/+")  # commands and live audio, down


def province_prefix(county_id: str) -> str:
    """Where a county's `dalaba/v1/...` appears on the province broker."""
    return f"counties/{check_id(county_id)}/"


def bridge_username(county_id: str) -> str:
    return f"bridge-{check_id(county_id)}"


def _check_address(address: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}", address):
        raise ValueError(f"--province: {address!r} is not host:port of the province broker")


def render_bridge_conf(
    *,
    county_id: str,
    address: str,
    remote_password: str,
    cafile: str | None,
    restart_timeout: tuple[int, int] = (5, 60),
) -> str:
    """The `connection` section a county Mosquitto appends to its configuration (it
    holds the bridge account's password: install it 0640 root:mosquitto). Options as
    in mosquitto.conf(5) of Mosquitto 2.0."""
    _check_address(address)
    if not remote_password or any(c.isspace() for c in remote_password):
        raise ValueError("bridge password: must be non-empty, without spaces")
    prefix = province_prefix(county_id)
    user = bridge_username(county_id)
    lines = [
        f"# Written by dalaba (dalaba broker-config --kind mosquitto-bridge): county {county_id}",
        f"# forwards to the province broker, under {prefix}. Holds a password: mode 0640,",
        "# owner root, group mosquitto.",
        f"connection {user}",
        f"address {address}",
        "bridge_protocol_version mqttv50",
        # The province keeps the bridge's subscriptions and its QoS 1 messages across a
        # reconnect, and this broker queues reports while the link is down.
        "cleansession false",
        f"remote_clientid {user}",
        f"remote_username {user}",
        f"remote_password {remote_password}",
        f"local_clientid local.{user}",
        # Reports up, commands and live audio down: no topic goes both ways, so no loop.
        f'topic {BRIDGED_OUT} out 1 "" {prefix}',
        f'topic {BRIDGED_IN[0]} in 1 "" {prefix}',
        f'topic {BRIDGED_IN[1]} in 0 "" {prefix}',
        # The link's state, 1 or 0 (retained), where the county's controller can read it.
        "notifications true",
        "notifications_local_only true",
        f"notification_topic {TOPIC_ROOT}/bridge/{check_id(county_id)}/state",
        f"restart_timeout {restart_timeout[0]} {restart_timeout[1]}",
        "keepalive_interval 60",
    ]
    if cafile:
        lines += [
            # TLS to the province; the province's certificate must name the host dialled.
            f"bridge_cafile {cafile}",
            "bridge_insecure false",
            "bridge_tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def render_province_bridge_acl(county_id: str) -> str:
    """The bridge account's block for the province broker's Mosquitto ACL: it may
    publish its county's reports and read its county's commands, nothing else."""
    prefix = province_prefix(county_id)
    return (
        "\n".join(
            [
                "",
                f"user {bridge_username(county_id)}",
                f"topic write {prefix}{BRIDGED_OUT}",
                *(f"topic read {prefix}{t}" for t in BRIDGED_IN),
            ]
        )
        + "\n"
    )


def render_province_bridge_acl_emqx(county_id: str) -> str:
    """The same block as acl.conf rules for an EMQX province broker (placed before the
    final deny)."""
    prefix = province_prefix(county_id)
    user = bridge_username(county_id)
    return render_acl_conf(
        [
            EmqxRule("allow", ("username", user), "publish", (f"{prefix}{BRIDGED_OUT}",)),
            EmqxRule(
                "allow", ("username", user), "subscribe", tuple(prefix + t for t in BRIDGED_IN)
            ),
        ]
    )


@dataclass(frozen=True)
class BridgeFiles:
    county_conf: Path
    province_acl: Path
    province_acl_emqx: Path
    province_passwd_line: Path
    province_emqx_user: Path


def write_bridge_files(
    out: Path,
    *,
    county_id: str,
    address: str,
    cafile: str | None,
    restart_timeout: tuple[int, int] = (5, 60),
) -> BridgeFiles:
    """The county's bridge section and, for the province broker, the bridge account
    (its password made once, then kept in `out`) and its ACL block."""
    try:
        user = bridge_username(county_id)
    except ValueError as exc:
        raise ValueError(f"--county-id: {exc}") from None
    _check_address(address)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    password = read_or_create_secret(out / f"{user}.password")
    files = BridgeFiles(
        county_conf=out / f"{user}.conf",
        province_acl=out / f"province-acl-{user}.txt",
        province_acl_emqx=out / f"province-acl-{user}.emqx.conf",
        province_passwd_line=out / f"province-passwd-{user}.txt",
        province_emqx_user=out / f"province-emqx-user-{user}.json",
    )
    conf = render_bridge_conf(
        county_id=county_id,
        address=address,
        remote_password=password,
        cafile=cafile,
        restart_timeout=restart_timeout,
    )
    _write_private(files.county_conf, conf)
    _write_private(files.province_acl, render_province_bridge_acl(county_id))
    _write_private(files.province_acl_emqx, render_province_bridge_acl_emqx(county_id))
    encoded = mosquitto_password_hash(password)
    _write_private(files.province_passwd_line, f"{user}:{encoded}\n")
    user_entry = emqx_user_from_mosquitto(user, encoded)
    _write_private(files.province_emqx_user, json.dumps([user_entry]) + "\n")
    return files
