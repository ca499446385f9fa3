"""Every controller setting, in one place. Environment variables `DALABA_*` or a
`.env`-style file override the defaults; `config/dalaba.example.env` lists them all."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dalaba.mqtt import BrokerAddress
from dalaba.protocol import MAX_INLINE_MEDIA_BYTES
from dalaba.signing import SigningScheme

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "password"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DALABA_", extra="ignore")

    data_dir: Path = Path("./data")
    # sqlite:///... (embedded default) or postgresql+psycopg://user@host/db (scale-out)
    database_url: str | None = None
    # How commands are signed: "ed25519", or "sm2" (SM2 with SM3, the national scheme
    # county procurement asks for). Each has its own key file (signing_key_path), and
    # terminals must hold the matching public key or certificate.
    signing_scheme: SigningScheme = "ed25519"
    # At start, bring an older database's schema to this release's (controller/migrations).
    # False: refuse to start on it instead, for operators who run `dalaba db upgrade`
    # themselves after a backup.
    auto_migrate: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The URL terminals use to fetch media; defaults to http://<http_host>:<http_port>/media/
    public_media_url: str | None = None
    # mqtts://host:port (MQTT over TLS, port 8883 by default) or mqtt://host:port.
    broker_url: str = "mqtt://127.0.0.1:1883"
    # The broker as terminals reach it, told to boards at enrolment (default: broker_url).
    terminal_broker_url: str | None = None
    # Enrolment and revocation (controller/enrolment.py): the directory of the broker's
    # `passwd` and `acl` files, which this controller may then rewrite, and the broker's
    # pid file, which it signals (SIGHUP) to reload them. Unset: terminals are
    # provisioned by file (`dalaba provision`) and the console offers no codes.
    broker_accounts_dir: Path | None = None
    broker_pid_file: Path | None = None
    broker_username: str = "dalaba-controller"
    broker_password: SecretStr = SecretStr("")
    # TLS (mqtts:// only): the CA that signed the broker's certificate (unset: the
    # system's trusted CAs; the host name is always checked), and the controller's own
    # certificate and key where the broker takes identities from certificates.
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    # This process's name among several controller replicas on one PostgreSQL database
    # (logs, the scheduler leadership, the live relay); default <host>-<pid>. Its MQTT
    # client id is its broker account (broker_username): every replica needs its own,
    # dalaba-controller, dalaba-controller-2, ... (docs/operations.md, "Replicas").
    replica_id: str | None = Field(default=None, min_length=1, max_length=64)
    # Several replicas take the terminals' reports through one MQTT 5 shared subscription
    # ($share/dalaba-controllers/...), so each report is stored once. Off for a single
    # controller, on PostgreSQL too: Mosquitto 2.0 does not keep a shared subscription of
    # a persistent session across its own restart, and the reports terminals send before
    # the controller subscribes again are lost (seen: a broker restart lost half the
    # reports of offline plays). A plain subscription's session keeps them queued.
    shared_ingest: bool = False
    # Demo mode allows generated/placeholder secrets and prints credentials.
    demo: bool = False

    # Terminals start this long after the command is published, so they all start
    # together; more when the audio is new and every terminal must fetch it first.
    sync_lead_ms: int = Field(default=600, ge=100, le=10_000)
    fetch_lead_ms: int = Field(default=900, ge=0, le=60_000)
    # An emergency's audio this small (bytes) travels inside the signed play command,
    # so no terminal fetches it and only the sync lead is needed; longer audio, and
    # notices and routine programmes, are fetched over HTTP after the fetch lead. 0
    # turns inline delivery off. Bounded so the envelope stays under the terminals'
    # command size limit.
    inline_media_max_bytes: int = Field(default=64 * 1024, ge=0, le=MAX_INLINE_MEDIA_BYTES)
    default_expiry_s: dict[str, int] = {
        "emergency": 3600,
        "notice": 6 * 3600,
        "routine": 3600,
    }
    max_text_chars: int = 2000
    # Recorded announcements: larger or longer uploads are refused with a 400.
    upload_max_bytes: int = Field(default=20_000_000, ge=1000, le=100_000_000)
    upload_max_duration_s: float = Field(default=600.0, ge=1.0, le=3600.0)
    # Speech: backends tried in this order; edge-tts needs the internet.
    speech_backends: tuple[str, ...] = ("edge-tts", "espeak-ng")
    edge_tts_timeout_s: float = 3.0
    ingest_batch_ms: int = 50
    telemetry_history_interval_s: int = 300
    # Other base URLs terminals may fetch media from when the controller's own fails
    # (a mirror or another replica serving the same /media/); named in every command.
    media_mirrors: tuple[str, ...] = ()
    # Delivery truth. A terminal silent this many telemetry intervals is shown offline
    # (the broker may have lost its will); its interval is the one its telemetry gives,
    # or `default_telemetry_interval_s` before it has sent any.
    liveness_intervals: float = Field(default=3.0, ge=1.5, le=20)
    default_telemetry_interval_s: float = Field(default=60.0, ge=1, le=3600)
    # A delivery `playing` for its audio's length plus this long, without a word from
    # the terminal, is shown `unknown` (it may have played; nobody can say).
    unknown_after_s: float = Field(default=30.0, ge=1, le=3600)
    # A fault still open this long opens a work order for a technician
    # (controller/workorders.py); a fault that returns before it is closed reopens it.
    work_order_after_s: float = Field(default=3600, ge=0, le=30 * 24 * 3600)

    # Console logins. A session lasts one duty shift; cookie_secure must be true
    # wherever the console is served over HTTPS (it should be, outside a county LAN).
    session_ttl_s: int = Field(default=12 * 3600, ge=60)
    cookie_secure: bool = False
    # Log-in defence, per (user name, client address): after `login_free_failures`
    # wrong passwords in a row from one address, that address waits
    # `login_backoff_base_s` before its next try for that name, doubling with every
    # further failure up to `login_backoff_max_s`. Other addresses are not slowed, so an
    # attacker cannot lock the duty room out; an admin can clear it (users page).
    login_free_failures: int = Field(default=3, ge=1, le=100)
    login_backoff_base_s: float = Field(default=1.0, gt=0, le=3600)
    login_backoff_max_s: int = Field(default=15 * 60, ge=1, le=24 * 3600)
    # A failure count with no new failure for this long starts again from zero.
    login_forget_s: int = Field(default=24 * 3600, ge=60)
    # Reverse proxies (addresses or networks) whose X-Forwarded-For is believed; from
    # anyone else the header is ignored and the connection's own address is the client.
    trusted_proxies: tuple[str, ...] = ()
    # Two-person rule (Hawaii, 2018): a real (not drill) emergency at one of these levels
    # that reaches the whole county, or at least `two_person_min_townships` townships
    # when that is above 0, waits for a second duty officer. Empty: no second person.
    two_person_levels: tuple[int, ...] = (1, 2)
    two_person_min_townships: int = Field(default=0, ge=0)
    # ... counting, for one officer, every real emergency at those levels they sent
    # within this many seconds of this one: twelve one-township sends are the county.
    # At least a minute: the rule must not be switched back to counting one request.
    two_person_window_s: int = Field(default=600, ge=60, le=7 * 24 * 3600)
    approval_timeout_s: int = Field(default=30 * 60, ge=60)

    # Warnings from upstream (controller/warnings; docs/upstream.md). CAP severity ->
    # emergency level (1 = I red ... 4 = IV blue, as GB/T 35965 pairs them); a severity
    # not listed (Unknown), an urgency in cap_notice_urgencies or a certainty in
    # cap_notice_certainties makes a notice without level instead.
    cap_severity_levels: dict[str, int] = {"Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4}
    cap_notice_urgencies: tuple[str, ...] = ("Past",)
    cap_notice_certainties: tuple[str, ...] = ("Unlikely",)
    # Largest CAP message accepted (bytes); XML beyond it is refused unread.
    cap_max_bytes: int = Field(default=512 * 1024, ge=4096, le=16 * 1024 * 1024)

    # --- upper-level platform link (controller/upstream; docs/upstream.md, "EBM") ---
    # This county platform's 18-digit resource code (SRC of what it sends, DEST of what it
    # accepts) and the upper platform's (SRC of what is accepted; empty: not checked).
    upstream_resource_code: str = Field(default="", pattern=r"^([0-9]{18})?$")
    upstream_platform_resource_code: str = Field(default="", pattern=r"^([0-9]{18})?$")
    # Where reports go up (the platform's package endpoint, http(s)); empty: none sent.
    upstream_url: str | None = Field(default=None, pattern=r"^https?://")
    # Keys (PEM public keys or certificates) of the upper platform: a package is obeyed
    # only when one of them signed it. None configured: every package is refused.
    upstream_trusted_keys: tuple[Path, ...] = ()
    # The scheme of the county's own package signatures (unset: signing_scheme); sm2 is
    # what the standards ask for and needs the sm2 extra (tongsuopy).
    upstream_signing_scheme: SigningScheme | None = None
    # Reports up every this many seconds (incremental since the last); 0: on request only.
    upstream_report_interval_s: int = Field(default=3600, ge=0, le=7 * 24 * 3600)
    upstream_package_max_bytes: int = Field(default=30_000_000, ge=10_000, le=200_000_000)
    # An EBM's audio by URL is fetched only over http(s) from the platform's own origin
    # (that of upstream_url) or one of these ("https://media.example.gov.cn"); never
    # redirected, at most upload_max_bytes, and checked like any upload.
    upstream_audio_origins: tuple[str, ...] = ()
    upstream_http_timeout_s: float = Field(default=30.0, gt=0, le=600)

    # The county's local time: schedules are written in it, quiet hours are read in it.
    timezone: str = "Asia/Shanghai"
    # The county's name as its year-end report is headed (controller/report.py); empty:
    # "本县" / "the county".
    county_name: str = Field(default="", max_length=100)
    # Schedules. Each occurrence is fired this long before its due time, so the signed
    # play command reaches the terminals before the instant they start together.
    schedule_fire_lead_ms: int = Field(default=3000, ge=1000, le=60_000)
    # An occurrence the controller could not fire on time (it was down, or overloaded)
    # still fires up to this late; after that it is recorded "missed" with the reason.
    schedule_misfire_grace_s: int = Field(default=60, ge=0, le=3600)
    # How long after its due time an occurrence may still play on a terminal (one busy
    # with an emergency, or just back online), per priority.
    schedule_expiry_s: dict[str, int] = {"emergency": 3600, "notice": 1800, "routine": 600}
    # Terminals are given their occurrences this far ahead (at least 48 h must hold).
    schedule_horizon_h: int = Field(default=72, ge=48, le=24 * 14)
    schedule_refresh_s: int = Field(default=3600, ge=10)  # extend the horizon
    schedule_repush_s: int = Field(default=6 * 3600, ge=60)  # resend an unchanged schedule
    schedule_online_repush_s: int = Field(default=15 * 60, ge=0)  # ... to one back online
    schedule_push_debounce_ms: int = Field(default=300, ge=0, le=60_000)
    schedule_heartbeat_s: float = Field(default=2.0, gt=0, le=60)

    # Retention (controller/retention.py; docs/operations.md, "Retention"): a daily job at
    # this local hour rolls telemetry up as it ages and deletes what is kept no longer.
    # Periods in days; 0 keeps for ever. Records a county reports on (broadcasts, history,
    # audit) are kept at least a year when a period is set.
    retention_enabled: bool = True
    retention_hour: int = Field(default=3, ge=0, le=23)
    retention_raw_telemetry_days: int = Field(default=7, ge=1, le=366)
    retention_hourly_telemetry_days: int = Field(default=90, ge=1, le=3660)
    retention_daily_telemetry_days: int = Field(default=1826, ge=0)
    retention_broadcast_days: int = Field(default=1826, ge=0)
    retention_audit_days: int = Field(default=0, ge=0)
    retention_security_days: int = Field(default=1096, ge=0)
    retention_history_days: int = Field(default=1826, ge=0)

    @field_validator("cap_severity_levels")
    @classmethod
    def _levels_1_to_4(cls, value: dict[str, int]) -> dict[str, int]:
        for severity, level in value.items():
            if level not in (1, 2, 3, 4):
                raise ValueError(f"{severity}: level 1-4, not {level}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return value

    @model_validator(mode="after")
    def _retention_holds_together(self) -> Settings:
        if self.retention_hourly_telemetry_days < self.retention_raw_telemetry_days:
            raise ValueError(
                "retention_hourly_telemetry_days: at least retention_raw_telemetry_days"
            )
        daily = self.retention_daily_telemetry_days
        if 0 < daily < self.retention_hourly_telemetry_days:
            raise ValueError(
                "retention_daily_telemetry_days: 0 (for ever) or at least "
                "retention_hourly_telemetry_days"
            )
        for name in ("broadcast", "audit", "security", "history"):
            days = getattr(self, f"retention_{name}_days")
            if 0 < days < 365:
                raise ValueError(f"retention_{name}_days: 0 (for ever) or at least 365")
        return self

    @model_validator(mode="after")
    def _upstream_link_named(self) -> Settings:
        # Reports that name no sender would be refused above, or worse, taken as another's.
        if self.upstream_url and not self.upstream_resource_code:
            raise ValueError("upstream_resource_code: required when upstream_url is set")
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        # With a client certificate the broker takes the account from it, not a password.
        if (
            not self.demo
            and self.broker_cert_file is None
            and self.broker_password.get_secret_value() in PLACEHOLDER_SECRETS
        ):
            raise ValueError(
                "broker_password: set DALABA_BROKER_PASSWORD (placeholder secrets are only "
                "allowed with DALABA_DEMO=true)"
            )
        return self

    @model_validator(mode="after")
    def _broker_tls_agrees(self) -> Settings:
        try:
            self.broker_address()
        except ValueError as exc:
            raise ValueError(
                f"broker_url, broker_ca_file, broker_cert_file, broker_key_file: {exc}"
            ) from exc
        return self

    def broker_address(self) -> BrokerAddress:
        """The broker as the controller reaches it: URL, TLS files and its account."""
        return BrokerAddress.from_url(
            self.broker_url,
            ca_file=self.broker_ca_file,
            cert_file=self.broker_cert_file,
            key_file=self.broker_key_file,
        ).with_credentials(self.broker_username, self.broker_password.get_secret_value())

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dalaba.db'}"

    @property
    def replica_name(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def media_url(self) -> str:
        return self.public_media_url or f"http://{self.http_host}:{self.http_port}/media/"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def signing_key_path(self) -> Path:
        """The controller's private key; its certificate, if it has one, is beside it
        with the suffix .crt (controller-sm2.crt)."""
        return self.data_dir / "keys" / f"controller-{self.signing_scheme}.pem"

    @property
    def upstream_key_path(self) -> Path:
        """The key that signs packages sent up (its own file: it is given to the upper
        platform, and never signs terminal commands)."""
        scheme = self.upstream_signing_scheme or self.signing_scheme
        return self.data_dir / "keys" / f"upstream-{scheme}.pem"
