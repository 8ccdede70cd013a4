"""The S3 backend: instance files as objects in an S3-compatible bucket.

An instance up to MULTIPART_THRESHOLD is held in memory once received and hashed, and goes up
in one PUT: until the server has acknowledged it nothing was acknowledged to the sender, so a
copy on local disk would protect nothing (and cost a write, an fsync, a read and an unlink per
instance). A larger one is staged on local disk exactly as for the filesystem backend
(`.incoming/<host>.<pid>` under DICOM_STAGING_DIR, local to each receiver node), then goes up as
a multipart upload read from the staged file (a few parts in memory and on the wire at a time,
each with its Content-MD5). A publish returns only once the server acknowledged the object, so
the caller's commit and success come after it; a crash between upload and commit leaves an
orphan object, which `verifystorage --repair` indexes.

Two clients share the work. The requests made once per instance (PUT, HEAD, GET, DELETE) go
through obstore, Python bindings of Rust's object_store: signing, sending and parsing cost a
fifth of the CPU boto3 spends on the same request, and boto3's per-request cost was most of the
cost of an instance. boto3 keeps what it alone does here: credentials resolved as every AWS tool
resolves them (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and the config files,
instance roles; obstore asks boto3 for them), multipart uploads with Content-MD5 per part, the
managed copy past 5 GB, listings, and the start-up check whose errors name the setting at fault.
Endpoint and region come from the standard AWS environment too (AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION), resolved by boto3 for both clients.

Integrity, DICOM_S3_CHECKSUM: `md5` (the default) sends no x-amz-checksum header, which some
S3-compatible servers refuse: a single PUT is covered by the SHA-256 of its body in its SigV4
signature (x-amz-content-sha256, checked by the server), multipart parts carry Content-MD5.
`sha256` adds x-amz-checksum-sha256 to single PUTs. Recent botocore would add CRC checksums with
a streaming trailer to every upload it makes: it asks for them only where the API requires one
(AWS_REQUEST_CHECKSUM_CALCULATION=when_supported restores its default).
"""

import base64
import contextlib
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import os
import posixpath
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import obstore
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
)
from django.conf import settings
from obstore.exceptions import BaseError as ObstoreError
from obstore.exceptions import PermissionDeniedError, PreconditionError, UnauthenticatedError

from archive.exceptions import StorageFailure
from archive.storage.base import INCOMING, MARKER, S3_SCHEME, StagedFile, Storage, pid_alive
from archive.storage.filesystem import FilesystemStorage

logger = logging.getLogger(__name__)

# Above this an instance goes up in parts; each part is read from the staged file in turn, so
# memory stays at PARTS_IN_FLIGHT parts per association whatever the instance's size.
MULTIPART_THRESHOLD = 8 * 2**20
PART_SIZE = 8 * 2**20  # S3's smallest part is 5 MB
PARTS_IN_FLIGHT = 4
_DOWNLOAD_CHUNK = 2**20
_ATTRIBUTES = {"Content-Type": "application/dicom"}
CHECKSUMS = ("md5", "sha256")
DEFAULT_STAGING_DIR = "./staging"


def location_parse(location: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://BUCKET/PREFIX`; ValueError naming what is wrong."""
    if not location.startswith(S3_SCHEME):
        raise ValueError(f"{location!r} is not an s3://BUCKET/PREFIX URL")
    bucket, _, prefix = location[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{location!r} names no bucket")
    return bucket, prefix.strip("/")


class S3Storage(Storage):
    """Instance files as objects under `s3://BUCKET/PREFIX/<relative name>`."""

    uploads = True

    def __init__(
        self,
        location: str | Path,
        *,
        min_free_bytes: int = 0,
        staging_dir: str | Path | None = None,
        checksum: str | None = None,
    ) -> None:
        self._location = str(location)
        try:
            self.bucket, self.prefix = location_parse(self._location)
        except ValueError as exc:
            raise StorageFailure(f"storage.directory: {exc}") from None
        self.checksum = (checksum or os.environ.get("DICOM_S3_CHECKSUM") or "md5").lower()
        if self.checksum not in CHECKSUMS:
            raise StorageFailure(
                f"DICOM_S3_CHECKSUM: {self.checksum!r} is not one of {', '.join(CHECKSUMS)}"
            )
        staging = staging_dir or getattr(settings, "DICOM_STAGING_DIR", DEFAULT_STAGING_DIR)
        # Staging is local disk, one folder per process, exactly as for the filesystem backend.
        self.local = FilesystemStorage(staging, min_free_bytes=min_free_bytes)
        self.min_free_bytes = min_free_bytes
        self._clients: tuple[int, Any] | None = None
        self._stores: tuple[int, Any] | None = None
        self._client_lock = threading.Lock()

    # --- the client --------------------------------------------------------------------

    @property
    def client(self) -> Any:
        # One client per process (boto3 clients are thread-safe, not fork-safe): worker
        # processes forked after construction make their own.
        pid = os.getpid()
        clients = self._clients
        if clients is None or clients[0] != pid:
            with self._client_lock:
                if self._clients is None or self._clients[0] != pid:
                    self._clients = (pid, _client_make())
                clients = self._clients
        return clients[1]

    @property
    def store(self) -> Any:
        """The obstore client of the per-instance requests; one per process, as `client`."""
        pid = os.getpid()
        stores = self._stores
        if stores is None or stores[0] != pid:
            client = self.client  # before the lock, which `client` takes too
            with self._client_lock:
                if self._stores is None or self._stores[0] != pid:
                    self._stores = (pid, _store_make(client, self.bucket, self.checksum))
                stores = self._stores
        return stores[1]

    @property
    def location(self) -> str:
        return self._location

    @property
    def incoming(self) -> Path:  # type: ignore[override]
        return self.local.incoming

    def key(self, relative: str) -> str:
        """The object key of a relative name; StorageFailure for a name that leaves the prefix."""
        normal = posixpath.normpath(relative.replace("\\", "/")) if relative else ""
        first = normal.partition("/")[0]
        if not normal or normal.startswith("/") or first in ("", ".", "..", INCOMING, MARKER):
            raise StorageFailure(f"refusing path outside the storage directory: {relative!r}")
        return f"{self.prefix}/{normal}" if self.prefix else normal

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _aside_prefix(self, host_pid: str = "") -> str:
        base = f"{self.prefix}/{INCOMING}/" if self.prefix else f"{INCOMING}/"
        return base + host_pid

    # --- life cycle ----------------------------------------------------------------------

    def prepare(self) -> int:
        """Check the staging directory and the bucket; remove what dead processes left.

        Raises StorageFailure with one line naming the setting at fault: the bucket missing,
        credentials refused or missing, the endpoint unreachable.
        """
        removed = self.local.prepare()
        try:
            self.client.head_bucket(Bucket=self.bucket)
            self.store  # noqa: B018 (built now, so that a setting it refuses stops the start)
        except Exception as exc:
            raise self._failure(f"use bucket {self.bucket}", exc, startup=True) from None
        return removed + self._remove_stale_asides()

    def _remove_stale_asides(self) -> int:
        host = socket.gethostname()
        removed = 0
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._aside_prefix(host)):
                for item in page.get("Contents", []):
                    folder = item["Key"][len(self._aside_prefix()) :].partition("/")[0]
                    name, _, pid = folder.rpartition(".")
                    if name != host or not pid.isdigit() or pid_alive(int(pid)):
                        continue
                    if int(pid) == os.getpid():
                        continue
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        except (BotoCoreError, ClientError) as exc:
            logger.warning("Could not clear objects set aside by stopped receivers: %s", exc)
        return removed

    def release(self) -> None:
        self.local.release()

    def free_bytes(self) -> int | None:
        return None  # a bucket has no volume to fill; storage.retention sets a limit instead

    # --- writing -------------------------------------------------------------------------

    def stage(self, parts: Iterable[bytes]) -> StagedFile:
        """Hash the dataset and hold it in memory, or past MULTIPART_THRESHOLD stage it on local
        disk (StorageFailure as the filesystem backend's `stage`)."""
        held: list[bytes] = []
        size = 0
        digest = hashlib.sha256()
        remaining = iter(parts)
        for part in remaining:
            held.append(part)
            size += len(part)
            if size > MULTIPART_THRESHOLD:
                return self.local.stage(itertools.chain(held, remaining))
            digest.update(part)
        data = held[0] if len(held) == 1 else b"".join(held)
        return StagedFile(path=None, size=size, sha256=digest.hexdigest(), data=bytes(data))

    def publish(self, staged: StagedFile, relative: str, *, durable: bool = True) -> str:
        """Upload a staged file as the object of `relative`; return once the server has
        acknowledged it with its integrity checked. The staged file is removed then."""
        key = self.key(relative)
        try:
            if staged.path is None or staged.size <= MULTIPART_THRESHOLD:
                self._put(staged, key)
            else:
                self._put_multipart(staged, key)
        except Exception as exc:
            raise self._failure(f"store {relative}", exc) from None
        staged.published = True
        staged.data = None
        if staged.path is not None:
            staged.path.unlink(missing_ok=True)
        return key

    def _put(self, staged: StagedFile, key: str) -> None:
        """One PUT, its integrity checked by the server (see the module docstring)."""
        data = staged.data
        if data is None:
            assert staged.path is not None
            with open(staged.path, "rb") as fh:
                data = fh.read()
        obstore.put(self.store, key, data, attributes=_ATTRIBUTES, use_multipart=False)

    def _put_multipart(self, staged: StagedFile, key: str) -> None:
        assert staged.path is not None
        client = self.client
        upload_id = client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType="application/dicom"
        )["UploadId"]
        try:
            etags: dict[int, str] = {}
            # A few parts go up at once: one at a time, a 1 GB instance took longer to answer
            # than DCMTK's 60 s socket timeout against moto. Each part is read into one of
            # PARTS_IN_FLIGHT buffers, reused once its part is acknowledged: memory stays at
            # those buffers per association (fresh 8 MB strings per part made the allocator
            # keep tens of MB more).
            free = [bytearray(PART_SIZE) for _ in range(PARTS_IN_FLIGHT)]
            with (
                open(staged.path, "rb", buffering=0) as fh,
                ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part") as pool,
            ):
                pending: dict[Future[tuple[int, str]], bytearray] = {}
                number = 1
                while True:
                    if not free:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            free.append(pending.pop(future))
                            etags.update((future.result(),))
                    buffer = free.pop()
                    length = _read_into(fh, buffer)
                    if not length:
                        break
                    # botocore takes bytes or a bytearray, not a view: only the last part,
                    # shorter, is copied out.
                    body = buffer if length == PART_SIZE else bytes(buffer[:length])
                    future = pool.submit(self._part, client, key, upload_id, number, body)
                    pending[future] = buffer
                    number += 1
                etags.update(future.result() for future in wait(pending).done)
            client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"ETag": etags[n], "PartNumber": n} for n in sorted(etags)]
                },
            )
        except BaseException:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def _part(
        self, client: Any, key: str, upload_id: str, number: int, chunk: bytes | bytearray
    ) -> tuple[int, str]:
        """Upload one part with its Content-MD5 checked by the server: (number, ETag)."""
        answer = client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=chunk,
            ContentMD5=_b64(hashlib.md5(chunk).digest()),
        )
        return number, answer["ETag"]

    def make_durable(self, published: Any) -> None:
        """Nothing to do: publish returned only once the server acknowledged the object."""

    def discard(self, staged: StagedFile) -> None:
        staged.data = None
        if not staged.published and staged.path is not None:
            staged.path.unlink(missing_ok=True)

    def set_aside(self, relative: str) -> str | None:
        """Copy the object to a second key, so it can be restored if its replacement fails."""
        return self._aside(relative, "previous", move=False)

    def move_aside(self, relative: str) -> str | None:
        """Take the object away from its key (deletion); `restore` puts it back."""
        return self._aside(relative, "deleted", move=True)

    def _aside(self, relative: str, kind: str, *, move: bool) -> str | None:
        key = self.key(relative)
        aside = f"{self._aside_prefix(f'{socket.gethostname()}.{os.getpid()}')}/"
        aside += f"{uuid.uuid4().hex}.{kind}"
        try:
            self._copy(key, aside)
            if move:
                obstore.delete(self.store, key)
        except Exception as exc:
            if _missing(exc):
                return None
            raise self._failure(f"set aside {relative}", exc) from None
        return aside

    def _copy(self, source: str, target: str) -> None:
        # The managed copy switches to a multipart copy past 5 GB, where CopyObject stops.
        self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)

    def restore(self, aside: str | None, relative: str) -> None:
        if aside is None:
            return
        try:
            self._copy(aside, self.key(relative))
            obstore.delete(self.store, aside)
        except Exception as exc:
            logger.error("Could not restore %s (kept as %s): %s", relative, aside, exc)

    def drop_aside(self, aside: str | None) -> None:
        if aside is None:
            return
        try:
            obstore.delete(self.store, aside)
        except Exception as exc:
            logger.error("Could not remove %s: %s", aside, exc)

    def prune_directories(self, relative: str) -> None:
        """Nothing to do: a bucket has no folders."""

    def remove(self, relative: str) -> None:
        try:
            obstore.delete(self.store, self.key(relative))
        except StorageFailure:
            raise
        except Exception as exc:
            logger.error("Could not remove %s: %s", relative, exc)

    # --- reading -------------------------------------------------------------------------

    def open(self, relative: str) -> BinaryIO:
        """The object as a seekable file read from the bucket as it is read here: a ranged GET
        from the position being read, a new one after a seek elsewhere. Nothing is copied to
        local disk first, so a WADO or C-GET of a 1 GB object starts sending at once and holds
        one buffer. Reads are pinned to the object opened (If-Match on its ETag): an object
        replaced meanwhile fails the read instead of mixing two versions. The first GET, made
        here, asks for the whole object and gives its size and ETag: a sequential read, a
        resend's comparison or a download, costs that one request."""
        key = self.key(relative)
        try:
            answer = obstore.get(self.store, key)
        except FileNotFoundError:
            raise FileNotFoundError(relative) from None
        except Exception as exc:
            raise self._failure(f"read {relative}", exc) from None
        meta = answer.meta
        raw = _ObjectReader(self, key, meta["size"], meta["e_tag"], relative)
        raw.body_take(answer)
        return io.BufferedReader(raw, _DOWNLOAD_CHUNK)  # type: ignore[return-value]

    def _head(self, relative: str) -> dict[str, Any]:
        """The object's metadata (obstore's ObjectMeta); FileNotFoundError when missing."""
        try:
            return obstore.head(self.store, self.key(relative))
        except StorageFailure:
            raise
        except FileNotFoundError:
            raise FileNotFoundError(relative) from None
        except Exception as exc:
            raise self._failure(f"read {relative}", exc) from None

    def size(self, relative: str) -> int:
        return int(self._head(relative)["size"])

    def exists(self, relative: str) -> bool:
        # Through boto3, not obstore: the storage identity check calls this at start-up in the
        # parent of `runscp --workers N`, whose forks must not inherit a started obstore
        # runtime (it does not survive a fork). Nothing calls it per instance.
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(relative))
        except Exception as exc:
            if _missing(exc):
                return False
            raise self._failure(f"read {relative}", exc) from None
        return True

    def modified(self, relative: str) -> dt.datetime:
        return self._head(relative)["last_modified"].astimezone(dt.UTC)

    def names(self) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        staging = self._aside_prefix()
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key.startswith(staging) or key.endswith("/") or key == self._marker_key:
                        continue
                    yield self._relative(key)
        except (BotoCoreError, ClientError) as exc:
            raise self._failure(f"list bucket {self.bucket}", exc) from None

    # --- identity ------------------------------------------------------------------------

    @property
    def _marker_key(self) -> str:
        return f"{self.prefix}/{MARKER}" if self.prefix else MARKER

    def marker_read(self) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._marker_key)["Body"]
            with contextlib.closing(body):
                marker = json.loads(body.read().decode("utf-8"))
        except Exception:
            return None
        return marker if isinstance(marker, dict) and "identity" in marker else None

    def marker_write(self, marker: dict) -> None:
        data = (json.dumps(marker, indent=1) + "\n").encode("utf-8")
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._marker_key,
                Body=data,
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
            )
        except Exception as exc:
            raise self._failure(f"write {MARKER}", exc) from None

    # --- errors --------------------------------------------------------------------------

    def _failure(self, action: str, exc: BaseException, *, startup: bool = False) -> StorageFailure:
        """One line naming what failed and, where the fix is a setting, which one."""
        where = f"storage.directory {self._location}"
        if isinstance(exc, StorageFailure):
            return exc
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
            return StorageFailure(
                f"cannot {action}: credentials refused "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
        if isinstance(exc, ValueError) and "get_credentials" in str(exc):
            # obstore's boto3 credential provider found none
            return StorageFailure(
                f"cannot {action}: no credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
        if isinstance(exc, ObstoreError):
            # object_store's messages run over several lines of nested causes: the first says
            # what failed, the last why.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
            return StorageFailure(f"cannot {action}: {reason[:400]} ({where})")
        if isinstance(exc, EndpointConnectionError):
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
            return StorageFailure(
                f"cannot {action}: endpoint {endpoint} unreachable (AWS_ENDPOINT_URL)"
            )
        if isinstance(exc, NoCredentialsError):
            return StorageFailure(
                f"cannot {action}: no credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket", "404") or (startup and status == 404):
                return StorageFailure(
                    f"cannot {action}: bucket {self.bucket} does not exist ({where})"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AccessDenied"):
                return StorageFailure(
                    f"cannot {action}: credentials refused ({code}; "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"
                )
            return StorageFailure(f"cannot {action}: {code or exc} ({where})")
        if isinstance(exc, OSError):
            return StorageFailure(f"cannot {action}: {exc.strerror or exc}")
        return StorageFailure(f"cannot {action}: {exc} ({where})")


class _ObjectReader(io.RawIOBase):
    """One object as a raw seekable file (S3Storage.open): reads continue one GET's body while
    they are sequential; a seek only moves the position, the next read opens a GET from there."""

    def __init__(
        self, storage: S3Storage, key: str, size: int, etag: str | None, relative: str
    ) -> None:
        super().__init__()
        self._storage, self._key, self._size = storage, key, size
        self._etag, self.name = etag, relative
        self._position = 0
        self._body: Iterator[Any] | None = None  # the chunks of the open GET
        self._pending = memoryview(b"")  # what is left of the chunk last taken from it
        self._body_position = 0

    def body_take(self, answer: Any) -> None:
        """Read on from a GET made at `_body_position` (obstore's GetResult)."""
        self._body = iter(answer.stream(min_chunk_size=_DOWNLOAD_CHUNK))
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        # A body left open while a slow peer reads may have been dropped by the server: one
        # more GET from the same position.
        for attempt in (1, 2):
            try:
                if self._body is None or self._body_position != self._position:
                    self._get()
                if not self._pending:
                    assert self._body is not None
                    chunk = next(self._body, None)
                    if not chunk:
                        raise OSError("the object ended early")
                    self._pending = memoryview(chunk)
                break
            except (StorageFailure, FileNotFoundError):
                raise  # replaced or gone: a second request would say the same
            except Exception as exc:
                self._drop()
                if attempt == 2:
                    raise self._storage._failure(f"read {self.name}", exc) from None
        count = min(wanted, len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._position += count
        self._body_position = self._position
        return count

    def _get(self) -> None:
        self._drop()
        options: dict[str, Any] = {"range": {"offset": self._position}}
        if self._etag:
            options["if_match"] = self._etag
        try:
            answer = obstore.get(self._storage.store, self._key, options=options)
        except FileNotFoundError:
            raise FileNotFoundError(self.name) from None
        except PreconditionError:
            raise StorageFailure(f"cannot read {self.name}: replaced while being read") from None
        self._body_position = self._position
        self.body_take(answer)

    def _drop(self) -> None:
        # Dropping obstore's stream closes its response.
        self._body = None
        self._pending = memoryview(b"")

    def close(self) -> None:
        self._drop()
        super().close()


def _client_make() -> Any:
    config = Config(
        # Only where the API requires one: see the module docstring.
        request_checksum_calculation=os.environ.get(
            "AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"
        ),
        response_checksum_validation=os.environ.get(
            "AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"
        ),
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        # Each association uploads on its own thread; botocore's default pool of 10 would
        # queue the eleventh.
        max_pool_connections=64,
    )
    return boto3.session.Session().client("s3", config=config)


def _store_make(client: Any, bucket: str, checksum: str) -> Any:
    """An obstore S3Store on the endpoint, region and credentials that boto3 resolved for
    `client`, so both clients follow one configuration (see the module docstring)."""
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    endpoint = client.meta.endpoint_url
    config: dict[str, Any] = {"region": client.meta.region_name}
    if urllib.parse.urlsplit(endpoint).hostname.endswith(".amazonaws.com"):
        config["virtual_hosted_style_request"] = True  # AWS's own addressing; its default URL
    else:
        config["endpoint"] = endpoint  # path-style, which every S3-compatible server answers
    if checksum == "sha256":
        config["checksum_algorithm"] = "sha256"
    return S3Store(
        bucket,
        config=config,
        credential_provider=Boto3CredentialProvider(boto3.session.Session()),
        client_options={
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": dt.timedelta(seconds=5),
            # A stalled read fails after this, as boto3's read_timeout; a long download to a
            # slow peer outlives the overall limit and is read on from a new GET.
            "read_timeout": dt.timedelta(seconds=60),
            "timeout": dt.timedelta(minutes=10),
        },
        # A few quick retries, as boto3's standard mode: an endpoint that is down costs the
        # C-STORE an error within seconds, not object_store's default three minutes.
        retry_config={
            "max_retries": 2,
            "retry_timeout": dt.timedelta(seconds=20),
            "backoff": {
                "init_backoff": dt.timedelta(milliseconds=100),
                "max_backoff": dt.timedelta(seconds=2),
                "base": 2,
            },
        },
    )


def _missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")
    return False


def _read_into(fh: BinaryIO, buffer: bytearray) -> int:
    """Fill `buffer` from `fh` as far as the file goes; the number of bytes read."""
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        count = fh.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
