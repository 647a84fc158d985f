"""Sending and fetching attachments with a lab client, as a real client does: upload (as an
encrypted file for an encrypted room), send the event, and download what arrives
(authenticated media), decrypting it when it came as an encrypted file."""
from __future__ import annotations

import io
from typing import Any

import aiohttp
from nio import UploadError
from nio.crypto.attachments import decrypt_attachment

from .client import LabClient, LabClientError


async def upload(client: LabClient, data: bytes, content_type: str, filename: str,
                 encrypt: bool = False) -> dict[str, Any]:
    """{"url": mxc} or, with `encrypt`, {"file": EncryptedFile}."""
    resp, keys = await client.nio.upload(io.BytesIO(data), content_type=content_type,
                                         filename=filename, encrypt=encrypt, filesize=len(data))
    if isinstance(resp, UploadError):
        raise LabClientError(f"{client.user_id} upload: {resp.message}", resp.status_code)
    if encrypt:
        return {"file": {**keys, "url": resp.content_uri}}
    return {"url": resp.content_uri}


async def send_media(client: LabClient, room_id: str, data: bytes, *, filename: str,
                     mimetype: str, msgtype: str = "m.image", encrypt: bool = False,
                     caption: str | None = None, event_type: str = "m.room.message",
                     **extra: Any) -> str:
    """An attachment event the way Element sends one: the file name in body (or filename,
    with a caption in body), mimetype and size in info, plus any `extra` fields."""
    source = await upload(client, data, mimetype, filename, encrypt)
    content: dict[str, Any] = {"body": caption if caption is not None else filename,
                               "info": {"mimetype": mimetype, "size": len(data)}, **source}
    if event_type == "m.room.message":
        content["msgtype"] = msgtype
        content["filename"] = filename
    return await client.send_raw(room_id, event_type, {**content, **extra})


async def download(client: LabClient, mxc: str) -> bytes:
    """The bytes of an mxc URI, through the client's own homeserver (authenticated media)."""
    server_name, media_id = mxc.removeprefix("mxc://").split("/", 1)
    url = (f"{client.user.homeserver.client_url}/_matrix/client/v1/media/download/"
           f"{server_name}/{media_id}")
    headers = {"Authorization": f"Bearer {client.user.access_token}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                raise LabClientError(f"download {mxc}: HTTP {resp.status}")
            return await resp.read()


async def received_media(client: LabClient, content: dict[str, Any],
                         thumbnail: bool = False) -> bytes:
    """The plaintext bytes of a received attachment (or of its thumbnail)."""
    holder = content.get("info", {}) if thumbnail else content
    file = holder.get("thumbnail_file" if thumbnail else "file")
    if file is None:
        return await download(client, holder["thumbnail_url" if thumbnail else "url"])
    ciphertext = await download(client, file["url"])
    return decrypt_attachment(ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"])
