"""Artifact store for weights and job inputs: a local directory by default, S3-compatible storage in production."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from faceedit.errors import InvalidInputError, NotFoundError

# Keys are relative, slash-separated names of safe segments: no "..", no absolute paths, no
# backslashes, so a key can never escape the store's root on disk or its prefix in a bucket.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_KEY_LENGTH = 512


def check_key(key: str) -> str:
    """Return `key` if it is a safe artifact key, else raise InvalidInputError('key', …)."""
    if not isinstance(key, str) or not key:
        raise InvalidInputError("key", "must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInputError("key", f"longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment) or segment.endswith(".tmp"):
            raise InvalidInputError("key", f"segment {segment!r} of {key!r} is not allowed "
                                           "(letters, digits, '.', '_', '-'; no leading dot; no '..')")
    return key


@runtime_checkable
class ArtifactStore(Protocol):
    """Bytes by key. Writes are all-or-nothing: a reader sees the old object or the new one."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...  # raises NotFoundError("artifact", key)

    def delete(self, key: str) -> None: ...  # deleting a missing key is not an error

    def exists(self, key: str) -> bool: ...

    def path_hint(self, key: str) -> str: ...  # where it lives, for logs and humans

    def keys(self, prefix: str) -> Iterator[str]: ...  # every key under `prefix/`, in no set order


class LocalArtifactStore:
    """A directory; each object is a file written to a temporary name and renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # Belt and braces against symlinks inside the root pointing elsewhere.
        if self.root not in path.parents:
            raise InvalidInputError("key", f"{key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError("artifact", key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def path_hint(self, key: str) -> str:
        return str(self._path(key))

    def keys(self, prefix: str) -> Iterator[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return
        for path in folder.rglob("*"):
            if path.is_file() and not path.name.startswith("."):  # "." files are put()'s unfinished writes
                yield path.relative_to(self.root).as_posix()


class S3ArtifactStore:
    """An S3 bucket (or any S3-compatible service) under a prefix; boto3 is imported only when used.

    Credentials come from boto3's usual chain (environment, shared files, instance role), never
    from the URL. `client` lets tests pass an object with the same four methods.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None,
                 endpoint_url: str | None = None):
        if not bucket:
            raise InvalidInputError("bucket", "is required")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        if client is None:
            import boto3  # lazy: only deployments that use S3 need it installed

            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the previous object or the whole new one.
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=bytes(data))

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_missing(exc):
                raise NotFoundError("artifact", key) from None
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def path_hint(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def keys(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        token = None
        while True:  # list_objects_v2 answers 1,000 keys at a time
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(prefix) + "/",
                                               **({"ContinuationToken": token} if token else {}))
            for item in page.get("Contents", []):
                yield item["Key"][strip:]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return


def _is_missing(exc: Exception) -> bool:
    """botocore's ClientError carries the HTTP code in `response`; no botocore import needed."""
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code")) in ("404", "NoSuchKey", "NotFound")


def open_artifact_store(url: str) -> ArtifactStore:
    """`file:///abs/dir`, a plain path, or `s3://bucket/prefix` (endpoint from $AWS_ENDPOINT_URL)."""
    if not url:
        raise InvalidInputError("artifact_store_url", "is empty")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise InvalidInputError("artifact_store_url", f"file URLs must be local, got host {parsed.netloc!r}")
        return LocalArtifactStore(unquote(parsed.path) if parsed.scheme else url)
    if parsed.scheme == "s3":
        return S3ArtifactStore(parsed.netloc, parsed.path, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    raise InvalidInputError("artifact_store_url", f"scheme {parsed.scheme!r} is not supported (file, s3)")
