"""Moving attachment bytes: authenticated download (capped), upload, attachment encryption.

Downloads go through the bridge's own homeserver (which fetches remote media over
federation) on the authenticated endpoint, GET /_matrix/client/v1/media/download/{server}/
{media}, as one of the bridge's ghosts; uploads are made as the ghost who will send them.
"""
from __future__ import annotations

import asyncio
import re

import aiohttp
from mautrix.appservice import IntentAPI
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment
from mautrix.errors import DecryptionError, MatrixRequestError, MatrixStandardRequestError

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=30)
# An mxc URI as the spec has it; anything else is never put into a request path.
_MXC = re.compile(r"mxc://([A-Za-z0-9.\-]+(?::\d{1,5})?|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?)"
                  r"/([A-Za-z0-9_\-]{1,255})")
_B64 = re.compile(r"[A-Za-z0-9+/_\-]+={0,2}")


class Unavailable(Exception):
    """The media cannot be had; args[0] is the refusal reason (a message key suffix)."""


def parse_mxc(value: object) -> str:
    if not isinstance(value, str) or not _MXC.fullmatch(value):
        raise Unavailable("malformed")
    return value


def encrypted_source(file: object) -> tuple[str, dict]:
    """(mxc, key material) of an EncryptedFile, checked before anything is fetched."""
    if not isinstance(file, dict) or file.get("v") != "v2":
        raise Unavailable("malformed")
    key, hashes, iv = file.get("key"), file.get("hashes"), file.get("iv")
    if not (isinstance(key, dict) and key.get("alg") == "A256CTR" and isinstance(hashes, dict)
            and all(isinstance(v, str) and _B64.fullmatch(v)
                    for v in (key.get("k"), hashes.get("sha256"), iv))):
        raise Unavailable("malformed")
    return parse_mxc(file.get("url")), {"key": key["k"], "hash": hashes["sha256"], "iv": iv}


def decrypt(ciphertext: bytes, material: dict) -> bytes:
    try:
        return decrypt_attachment(ciphertext, material["key"], material["hash"], material["iv"])
    except DecryptionError:
        raise Unavailable("media_unreadable") from None


async def download(intent: IntentAPI, mxc: str, max_bytes: int) -> bytes:
    """The media's bytes; Unavailable when it is gone, refused or larger than max_bytes.
    A busy or failing homeserver (429, 500, 503) raises MatrixStandardRequestError, which
    the dispatcher treats as transient and retries."""
    api = intent.api
    url = api.get_download_url(mxc, authenticated=True)
    params = {"allow_redirect": "true"}
    # The appservice acting as this ghost (mautrix's AppServiceAPI keeps it as `identity`,
    # and its own download_media leaves it out: it would download as the bot).
    user_id = getattr(api, "identity", None) or getattr(api, "bot_mxid", None)
    if user_id:
        params["user_id"] = user_id
    headers = {"Authorization": f"Bearer {api.token}"}
    try:
        async with api.session.get(url, params=params, headers=headers,
                                   timeout=DOWNLOAD_TIMEOUT) as resp:
            if resp.status in (429, 500, 503):
                raise MatrixStandardRequestError(resp.status, "media download failed")
            if resp.status != 200:
                # 404 (gone), 502/504 (the sender's server did not answer), 403, ...
                raise Unavailable("media_unavailable")
            if (resp.content_length or 0) > max_bytes:
                raise Unavailable("media_too_big")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise Unavailable("media_too_big")
            return bytes(data)
    except (asyncio.TimeoutError, aiohttp.ClientPayloadError):  # too slow, or cut off
        raise Unavailable("media_unavailable") from None


async def upload(intent: IntentAPI, data: bytes, mimetype: str, filename: str | None,
                 encrypted: bool) -> tuple[dict, int]:
    """Upload as the ghost: ({"url": mxc} or {"file": EncryptedFile}, size of the plaintext).
    Encrypted uploads are opaque bytes with no name or type on the homeserver."""
    try:
        if not encrypted:
            mxc = await intent.upload_media(data, mime_type=mimetype, filename=filename)
            return {"url": str(mxc)}, len(data)
        ciphertext, info = encrypt_attachment(data)
        info.url = await intent.upload_media(ciphertext, mime_type="application/octet-stream")
        return {"file": info.serialize()}, len(data)
    except MatrixRequestError as e:
        if e.http_status == 413:  # over the homeserver's max_upload_size
            raise Unavailable("media_too_big") from None
        raise
