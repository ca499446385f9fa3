"""A STAND-IN for the upper-level emergency-broadcast platform (the real one is a
province's or city's system that cannot run here): an aiohttp server that receives the
county's signed report packages, verifies them with the county's key and answers with
its own signed receipt; and the builder of the packages it sends down (EBM, state
requests). It speaks the county's own codec (controller/upstream), so it checks the
county's signatures and framing, not the standards' guessed field names (docs/upstream.md).
"""

from __future__ import annotations

import io
import socket
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web

from controller.upstream import fields as f
from controller.upstream.package import Package, build_package, element, read_package
from controller.upstream.signature import PackageSigner, PackageVerifier
from dalaba.protocol import now_ms

PLATFORM_ID = "010000000000000001"  # a plausible provincial platform's resource code
ZONE = ZoneInfo("Asia/Shanghai")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PlatformStandIn:
    key_dir: Path
    county_id: str
    scheme: str = "ed25519"  # of the platform's own key: ed25519 or sm2
    received: list[Package] = field(default_factory=list)
    # Recordings it serves at /audio/<name>, as a platform serves an EBM's audio file.
    audio: dict[str, bytes] = field(default_factory=dict)
    answer_code: f.ResultCode = f.ResultCode.PARSED
    _runner: web.AppRunner | None = None
    _verifier: PackageVerifier | None = None

    def __post_init__(self) -> None:
        self.signer = PackageSigner.load_or_create(
            self.scheme, self.key_dir / f"platform-{self.scheme}.pem"
        )
        self.public_key_file = self.key_dir / "platform.pub.pem"
        self.public_key_file.write_bytes(self.signer.public_pem())
        self.port = _free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ebd"

    def trust_county(self, county_key_pem: bytes) -> None:
        self._verifier = PackageVerifier([county_key_pem])

    async def start(self) -> None:
        app = web.Application(client_max_size=50_000_000)
        app.router.add_post("/ebd", self._receive)
        app.router.add_get("/audio/{name}", self._audio)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def audio_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/audio/{name}"

    async def _audio(self, request: web.Request) -> web.Response:
        data = self.audio.get(request.match_info["name"])
        return web.Response(body=data) if data is not None else web.Response(status=404)

    async def _receive(self, request: web.Request) -> web.Response:
        assert self._verifier is not None, "trust_county first"
        package = self.open(await request.read())
        self.received.append(package)
        body = element(
            f.EbdType.EBD_RESPONSE.value,
            None,
            element(f.RESULT_CODE, int(self.answer_code)),
            element(f.RESULT_DESC, ""),
        )
        return web.Response(body=self.package(f.EbdType.EBD_RESPONSE, body, related=package.ebd_id))

    def open(self, data: bytes) -> Package:
        """Read a package the county sent (verifying the county's signature)."""
        assert self._verifier is not None
        return read_package(data, self._verifier, max_bytes=50_000_000)

    def package(
        self,
        ebd_type: f.EbdType,
        body: ET.Element,
        *,
        related: str | None = None,
        files: dict[str, bytes] | None = None,
        signer: PackageSigner | None = None,
    ) -> bytes:
        return build_package(
            ebd_type,
            body,
            own_id=PLATFORM_ID,
            dest_id=self.county_id,
            signer=signer or self.signer,
            zone=ZONE,
            now_ms=now_ms(),
            related=related,
            files=files,
        )[1]

    def ebm(
        self,
        ebm_id: str,
        *,
        msg_type: int = 1,
        area_codes: str = "",
        title: str = "暴雨橙色预警",
        desc: str = "预计未来六小时有大暴雨，请沿河群众立即转移。",
        severity: str = "2",
        end_in_s: int = 1800,
        signer: PackageSigner | None = None,
        aux: tuple[int, str] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> bytes:
        now = now_ms()
        basic = element(
            f.BASIC,
            None,
            element(f.MSG_TYPE, msg_type),
            element(f.SENDER_NAME, "省应急广播平台"),
            element(f.SENDER_CODE, PLATFORM_ID),
            element(f.SEND_TIME, f.format_time(now, ZONE)),
            element(f.EVENT_TYPE, "11B17"),
            element(f.SEVERITY, severity),
            element(f.START_TIME, f.format_time(now, ZONE)),
            element(f.END_TIME, f.format_time(now + end_in_s * 1000, ZONE)),
        )
        content = element(
            f.CONTENT,
            None,
            element(f.LANGUAGE, "zho"),
            element(f.TITLE, title),
            element(f.DESC, desc),
            element(f.AREA_CODE, area_codes),
        )
        if aux is not None:
            aux_type, aux_desc = aux
            size = len((files or {}).get(aux_desc, b""))
            content.append(
                element(
                    f.AUXILIARY,
                    None,
                    element(f.AUX_TYPE, aux_type),
                    element(f.AUX_DESC, aux_desc),
                    element(f.AUX_SIZE, size),
                )
            )
        body = element(f.EBM, None, element(f.EBM_ID, ebm_id), basic, content)
        return self.package(f.EbdType.EBM, body, signer=signer, files=files)

    def state_request(self, ebm_id: str) -> bytes:
        body = element(
            f.EbdType.EBM_STATE_REQUEST.value,
            None,
            element(f.STATE_EBM, None, element(f.EBM_ID, ebm_id)),
        )
        return self.package(f.EbdType.EBM_STATE_REQUEST, body)

    def omd_request(self, start_ms: int, end_ms: int, kind: str, only: str) -> bytes:
        body = element(
            f.EbdType.OMD_REQUEST.value,
            None,
            element(f.REPORT_TYPE, kind),
            element(f.REPORT_START, f.format_time(start_ms, ZONE)),
            element(f.REPORT_END, f.format_time(end_ms, ZONE)),
            element(f.OMD_TYPE, only),
        )
        return self.package(f.EbdType.OMD_REQUEST, body)


def members_of(data: bytes) -> dict[str, bytes]:
    """A package's files by name (for tests that take one apart)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        out = {}
        for m in tar:
            stream = tar.extractfile(m)
            assert stream is not None
            out[m.name] = stream.read()
        return out


def with_odd_member(data: bytes, kind: bytes, name: str = "audio.mp3") -> bytes:
    """The package with one more member of tar type `kind` (a link to /etc/passwd, a
    directory, a device...) in front of its files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        odd = tarfile.TarInfo(name)
        odd.type = kind
        odd.linkname = "/etc/passwd"
        tar.addfile(odd)
        for member, body in members_of(data).items():
            info = tarfile.TarInfo(member)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def ebm_id(seq: int) -> str:
    return f"{PLATFORM_ID}{f.format_time(now_ms(), ZONE)[:10].replace('-', '')}{seq:04d}"
