"""Adapted-generator index in a real Redis, and the delta weights helpers (sha256 verified before loading)."""

from __future__ import annotations

import time

import pytest
import torch

from faceedit.errors import (
    CheckpointMismatchError,
    ChecksumMismatchError,
    InvalidInputError,
    NotFoundError,
)
from services.common.artifacts import LocalArtifactStore
from services.common.registry import (
    READY,
    GeneratorIndex,
    GeneratorRecord,
    load_adapted_generator,
    save_adapted_generator,
)

from factories import tiny_generator

pytestmark = pytest.mark.inference  # make test-services


def record(gid: str, tenant: str, created: float | None = None) -> GeneratorRecord:
    return GeneratorRecord(id=gid, tenant=tenant, base_generator="demo", sha256="0" * 64, size_bytes=1,
                           created=created or time.time(), state=READY, artifact_key=f"k/{gid}")


def test_add_get_list_per_tenant(index):
    index.add(record("g1", "acme", 1.0))
    index.add(record("g2", "acme", 2.0))
    index.add(record("g3", "other", 3.0))
    assert index.get("g1", "acme").base_generator == "demo"
    assert [r.id for r in index.list("acme")] == ["g1", "g2"]
    assert [r.id for r in index.list("other")] == ["g3"]
    assert index.list("nobody") == []


def test_other_tenants_id_is_not_found_like_an_unknown_one(index):
    index.add(record("g1", "acme"))
    with pytest.raises(NotFoundError) as foreign:
        index.get("g1", "other")
    with pytest.raises(NotFoundError) as unknown:
        index.get("g-unknown", "other")
    assert str(foreign.value).replace("g1", "X") == str(unknown.value).replace("g-unknown", "X")
    with pytest.raises(NotFoundError):
        index.delete("g1", "other")
    assert index.get("g1", "acme")  # still there


def test_adding_an_existing_id_keeps_the_first_record(index):
    first = index.add(record("g1", "acme", 1.0))
    second = index.add(record("g1", "acme", 5.0))
    assert second == first and len(index.list("acme")) == 1


def test_bad_ids_are_invalid_input(index):
    with pytest.raises(InvalidInputError) as info:
        index.get("../x", "acme")
    assert info.value.field == "generator_id"


def _trained(base):
    # Any change to a synthesis conv is a valid delta. Additive noise, not a scale: weight
    # demodulation cancels a uniform scale of a conv weight.
    weight = base.state_dict()["convs.0.conv.weight"]
    return {"convs.0.conv.weight": weight + torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))}


def test_save_and_load_adapted_generator(index, store):
    base = tiny_generator()
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base, job_id="job-1")
    assert saved.state == READY and saved.job_id == "job-1" and store.exists(saved.artifact_key)
    assert index.get(saved.id, "acme") == saved
    adapted = load_adapted_generator(store, saved, base)
    assert torch.equal(adapted.state_dict()["convs.0.conv.weight"], _trained(base)["convs.0.conv.weight"])
    assert torch.equal(adapted.state_dict()["convs.1.conv.weight"], base.state_dict()["convs.1.conv.weight"])
    ws = base.broadcast(base.w_avg.unsqueeze(0))
    assert (adapted.synthesis(ws) - base.synthesis(ws)).abs().max() > 0.05


def test_saving_twice_with_one_id_creates_one_generator(index, store):
    base = tiny_generator()
    first = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base, generator_id="gen-job-1")
    other = {"convs.0.conv.weight": torch.zeros_like(base.state_dict()["convs.0.conv.weight"])}
    again = save_adapted_generator(store, index, "acme", "demo", other, base=base, generator_id="gen-job-1")
    assert again == first and len(index.list("acme")) == 1
    assert store.get(first.artifact_key)  # the first weights were not overwritten
    assert torch.equal(load_adapted_generator(store, first, base).state_dict()["convs.0.conv.weight"],
                       _trained(base)["convs.0.conv.weight"])


def test_tampered_weights_are_refused(index, store):
    base = tiny_generator()
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    data = bytearray(store.get(saved.artifact_key))
    data[-1] ^= 0xFF
    store.put(saved.artifact_key, bytes(data))
    with pytest.raises(ChecksumMismatchError):
        load_adapted_generator(store, saved, base)


def test_delta_refuses_another_base(index, store):
    base = tiny_generator(seed=0)
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    with pytest.raises(CheckpointMismatchError):
        load_adapted_generator(store, saved, tiny_generator(seed=1))


def test_delete_removes_record_and_weights(index, store):
    base = tiny_generator()
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    index.delete(saved.id, "acme")
    assert not store.exists(saved.artifact_key)
    assert index.list("acme") == []
    with pytest.raises(NotFoundError):
        index.get(saved.id, "acme")


def test_the_loser_of_a_race_for_one_id_keeps_the_winners_weights(index, store, monkeypatch):
    base = tiny_generator()
    winner = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base, generator_id="gen-race")
    # The loser checked for the id before the winner wrote it: it writes its own object, then
    # finds the index taken and removes what it wrote.
    other = {"convs.0.conv.weight": torch.zeros_like(base.state_dict()["convs.0.conv.weight"])}
    real_read = index._read
    calls = []

    def first_call_misses(generator_id):
        calls.append(generator_id)
        if len(calls) == 1:
            raise NotFoundError("generator", generator_id)
        return real_read(generator_id)

    monkeypatch.setattr(index, "_read", first_call_misses)
    loser = save_adapted_generator(store, index, "acme", "demo", other, base=base, generator_id="gen-race")
    assert loser == winner
    objects = sorted(p.name for p in (store.root / "generators").rglob("*.safetensors"))
    assert objects == [winner.artifact_key.rsplit("/", 1)[1]]
    assert torch.equal(load_adapted_generator(store, winner, base).state_dict()["convs.0.conv.weight"],
                       _trained(base)["convs.0.conv.weight"])


def test_a_lost_index_is_rebuilt_from_the_artifacts_own_metadata(index, store, redis_client, namespace):
    base = tiny_generator()
    saved = [save_adapted_generator(store, index, tenant, "demo", _trained(base), base=base, job_id=f"job-{i}",
                                    display_name=f"style {i}") for i, tenant in enumerate(["acme", "acme", "other"])]
    for key in redis_client.scan_iter(match=f"{namespace}:*"):  # Redis lost everything
        redis_client.delete(key)
    assert index.list("acme") == []

    report = index.ensure_built()  # what the editor runs at start and every job check
    assert sorted(report.restored) == sorted(r.id for r in saved) and not report.orphans and not report.dangling
    assert [r for r in index.list("acme")] == saved[:2]  # every field, created order and tenant included
    assert index.list("other") == saved[2:]
    assert load_adapted_generator(store, index.get(saved[0].id, "acme"), base)  # sha256 recomputed and right
    assert index.ensure_built() is None  # built: nothing more to do until Redis loses it again
    again = index.rebuild()
    assert again.restored == [] and sorted(again.indexed) == sorted(r.id for r in saved)


def test_orphans_and_dangling_records_are_reported_then_collected(index, store):
    base = tiny_generator()
    kept = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    gone = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    store.delete(gone.artifact_key)  # a record whose weights are gone
    store.put("generators/tX/junk.safetensors", b"not safetensors")  # no metadata to index it by
    # A copy of kept's weights under another key: the id is indexed to its first artifact.
    data = store.get(kept.artifact_key)
    stray = kept.artifact_key.replace(kept.sha256[:16], "0" * 16)
    store.put(stray, data)

    report = index.rebuild()
    assert report.indexed == [kept.id] and report.restored == []
    assert sorted(o.split(":")[0] for o in report.orphans) == sorted(["generators/tX/junk.safetensors", stray])
    assert [d.split(":")[0] for d in report.dangling] == [gone.id]
    assert store.exists(stray) and index.get(gone.id, "acme")  # reporting changes nothing
    assert "2 orphan artifacts and 1 dangling records found" in report.summary()

    collected = index.rebuild(collect=True)
    assert len(collected.orphans) == 2 and len(collected.dangling) == 1
    assert not store.exists(stray) and not store.exists("generators/tX/junk.safetensors")
    with pytest.raises(NotFoundError):
        index.get(gone.id, "acme")
    assert index.get(kept.id, "acme") == kept and store.exists(kept.artifact_key)
    clean = index.rebuild()
    assert not clean.orphans and not clean.dangling


def test_delete_removes_the_weights_before_the_record(index, store, monkeypatch):
    # A crash between the two steps must leave a dangling record, never weights rebuild would bring back.
    base = tiny_generator()
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    monkeypatch.setattr(index, "_unindex", lambda record: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        index.delete(saved.id, "acme")
    assert not store.exists(saved.artifact_key)
    assert index.rebuild().restored == []


def test_the_recovery_watch_rebuilds_a_lost_index_as_soon_as_it_starts(index, store, redis_client, namespace, caplog):
    from services.common.jobs import JobStore
    from services.common.recovery import RecoveryWatch

    base = tiny_generator()
    saved = save_adapted_generator(store, index, "acme", "demo", _trained(base), base=base)
    for key in redis_client.scan_iter(match=f"{namespace}:*"):
        redis_client.delete(key)
    # The product's job-check interval is 15 s; an hour here shows the first check does not wait for it.
    watch = RecoveryWatch(JobStore(redis_client, namespace), lambda job_id: None, interval_s=3600, index=index)
    with caplog.at_level("WARNING", logger="faceedit.recovery"):
        watch.start()
        try:
            for _ in range(200):  # a watchdog of 10 s, not a speed assertion
                if redis_client.exists(f"{namespace}:generator:{saved.id}"):
                    break
                time.sleep(0.05)
        finally:
            watch.stop()
    assert index.get(saved.id, "acme") == saved
    assert "1 restored" in caplog.text


def test_make_reindex_repairs_the_current_runs_index(index, store, redis_client, redis_server, namespace, tmp_path,
                                                     monkeypatch, capsys):
    """`make reindex` (services.launcher reindex) against a run directory laid out as `make demo` leaves it."""
    import json

    from services import launcher

    run_root = tmp_path / "run"
    run = run_root / "demo-1"
    run.mkdir(parents=True)
    (run_root / launcher.CURRENT).symlink_to(run.name)
    (run / "stack.json").write_text(json.dumps({"redis_url": redis_server.url}))
    run_store = LocalArtifactStore(run / "artifacts")
    base = tiny_generator()
    saved = save_adapted_generator(run_store, GeneratorIndex(redis_client, run_store, namespace), "acme", "demo",
                                   _trained(base), base=base)
    run_store.put("generators/tX/junk.safetensors", b"junk")
    redis_client.delete(f"{namespace}:generator:{saved.id}")
    for name in ("FACEEDIT_REDIS_URL", "FACEEDIT_ARTIFACT_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACEEDIT_REDIS_NAMESPACE", namespace)

    assert launcher.main(["reindex", "--run-root", str(run_root)]) == 0
    out = capsys.readouterr().out
    assert "1 restored, 1 orphan artifacts" in out and "generators/tX/junk.safetensors" in out
    assert GeneratorIndex(redis_client, run_store, namespace).get(saved.id, "acme") == saved
    assert launcher.main(["reindex", "--run-root", str(run_root), "--collect"]) == 0
    assert "1 indexed, 0 restored, 1 orphan artifacts and 0 dangling records removed" in capsys.readouterr().out
    assert not run_store.exists("generators/tX/junk.safetensors")
    assert launcher.main(["reindex", "--run-root", str(tmp_path / "nothing")]) == 2  # no stack, no env: says so
