"""Artifact stores: local atomic writes, key validation, the S3 store against a fake client, URL parsing."""

from __future__ import annotations

import io
import sys

import pytest

from faceedit.errors import InvalidInputError, NotFoundError
from services.common.artifacts import LocalArtifactStore, S3ArtifactStore, open_artifact_store

pytestmark = pytest.mark.inference  # make test-services


def test_local_put_get_delete(tmp_path):
    store = LocalArtifactStore(tmp_path)
    store.put("generators/t1/g.safetensors", b"abc")
    assert store.exists("generators/t1/g.safetensors")
    assert store.get("generators/t1/g.safetensors") == b"abc"
    store.put("generators/t1/g.safetensors", b"new")
    assert store.get("generators/t1/g.safetensors") == b"new"
    # No temporary files are left behind next to the object.
    assert [p.name for p in (tmp_path / "generators" / "t1").iterdir()] == ["g.safetensors"]
    store.delete("generators/t1/g.safetensors")
    store.delete("generators/t1/g.safetensors")  # idempotent
    assert not store.exists("generators/t1/g.safetensors")
    with pytest.raises(NotFoundError):
        store.get("generators/t1/g.safetensors")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "", ".hidden", "a\\b", "x.tmp",
                                 "a/" + "b" * 200])
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidInputError) as info:
        store.put(key, b"x")
    assert info.value.field == "key"
    assert not (tmp_path / "x").exists()


def test_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalArtifactStore(tmp_path / "store")
    (tmp_path / "store" / "link").symlink_to(outside)
    with pytest.raises(InvalidInputError):
        store.put("link/x", b"x")
    assert not (outside / "x").exists()


class FakeS3:
    """The calls S3ArtifactStore makes, with botocore-shaped errors for missing keys and S3's paging."""

    PAGE = 2  # S3 pages 1,000 keys; two here so the paging loop runs

    class ClientError(Exception):
        def __init__(self, code: str):
            self.response = {"Error": {"Code": code}}

    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, Bucket, Key, Body):
        self.objects[(Bucket, Key)] = Body

    def get_object(self, Bucket, Key):
        if (Bucket, Key) not in self.objects:
            raise self.ClientError("NoSuchKey")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def head_object(self, Bucket, Key):
        if (Bucket, Key) not in self.objects:
            raise self.ClientError("404")
        return {}

    def delete_object(self, Bucket, Key):
        self.objects.pop((Bucket, Key), None)

    def list_objects_v2(self, Bucket, Prefix, ContinuationToken=None):
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix))
        start = int(ContinuationToken or 0)
        page = keys[start:start + self.PAGE]
        more = start + self.PAGE < len(keys)
        return {"Contents": [{"Key": k} for k in page], "IsTruncated": more,
                **({"NextContinuationToken": str(start + self.PAGE)} if more else {})}


def test_s3_store_prefixes_keys_and_maps_missing_to_not_found():
    fake = FakeS3()
    store = S3ArtifactStore("bucket", "/faceedit/prod/", client=fake)
    store.put("generators/g.safetensors", b"w")
    assert fake.objects == {("bucket", "faceedit/prod/generators/g.safetensors"): b"w"}
    assert store.get("generators/g.safetensors") == b"w"
    assert store.exists("generators/g.safetensors")
    assert store.path_hint("x") == "s3://bucket/faceedit/prod/x"
    store.delete("generators/g.safetensors")
    assert not store.exists("generators/g.safetensors")
    with pytest.raises(NotFoundError):
        store.get("generators/g.safetensors")
    with pytest.raises(InvalidInputError):
        store.put("../escape", b"x")


def test_s3_store_passes_other_errors_through():
    class Denied(FakeS3):
        def get_object(self, Bucket, Key):
            raise self.ClientError("AccessDenied")

    with pytest.raises(FakeS3.ClientError):
        S3ArtifactStore("bucket", client=Denied()).get("k")


def test_open_artifact_store(tmp_path):
    store = open_artifact_store(f"file://{tmp_path}/a")
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "a").resolve()
    assert isinstance(open_artifact_store(str(tmp_path / "b")), LocalArtifactStore)
    for bad in ("ftp://host/x", "file://remote-host/x", ""):
        with pytest.raises(InvalidInputError) as info:
            open_artifact_store(bad)
        assert info.value.field == "artifact_store_url"


def test_s3_url_opens_a_boto3_client_lazily(monkeypatch):
    made = []

    class FakeBoto3:
        @staticmethod
        def client(service, endpoint_url=None):
            made.append((service, endpoint_url))
            return FakeS3()

    monkeypatch.setitem(sys.modules, "boto3", FakeBoto3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    store = open_artifact_store("s3://models/faceedit/prod")
    assert isinstance(store, S3ArtifactStore) and store.bucket == "models" and store.prefix == "faceedit/prod"
    assert made == [("s3", "http://127.0.0.1:9000")]
    store.put("k", b"v")
    assert store.client.objects == {("models", "faceedit/prod/k"): b"v"}


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_keys_lists_everything_under_a_prefix_and_nothing_else(kind, tmp_path):
    store = LocalArtifactStore(tmp_path) if kind == "local" else S3ArtifactStore("b", "pre/fix", client=FakeS3())
    wanted = {f"generators/t{i % 2}/g{i}.safetensors" for i in range(5)}
    for key in wanted | {"targets/t0/a.png", "generatorsX/g.safetensors"}:
        store.put(key, b"x")
    assert set(store.keys("generators")) == wanted
    assert list(store.keys("nothing-here")) == []
