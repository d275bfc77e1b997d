"""Service configs read from the environment, and the TorchServe config.properties they produce."""

from __future__ import annotations

import pytest

from faceedit.errors import InvalidInputError
from services.inference.archive import model_config
from services.inference.handler_support import InferenceConfig
from services.inference.server import TorchServeConfig, config_properties
from services.worker.app import create_app
from services.worker.config import WorkerConfig

pytestmark = pytest.mark.inference  # make test-services


def properties(config: TorchServeConfig) -> dict[str, str]:
    text = config_properties(config.with_ports())
    return dict(line.split("=", 1) for line in text.splitlines())


def test_loopback_defaults_keep_everything_local_and_registration_off():
    props = properties(TorchServeConfig(model_store="/srv/models"))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:") and not props[key].endswith(":0")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["enable_model_api"] == "false" and props["disable_token_authorization"] == "true"
    assert props["allowed_urls"] == "file:///srv/models/.*"
    assert len({props["grpc_inference_port"], props["grpc_management_port"]}) == 2


def test_listening_beyond_loopback_turns_token_auth_on_but_never_exposes_management():
    props = properties(TorchServeConfig(host="0.0.0.0"))
    assert props["inference_address"].startswith("http://0.0.0.0:")
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false"
    assert properties(TorchServeConfig(token_auth=True))["disable_token_authorization"] == "false"


def test_torchserve_config_from_env():
    config = TorchServeConfig.from_env({"FACEEDIT_TS_GRPC_PORT": "7070", "FACEEDIT_TS_MODELS": "generator",
                                        "FACEEDIT_TS_TOKEN_AUTH": "true"})
    assert config.grpc_port == 7070 and config.models == "generator" and config.token_auth is True
    assert config.with_ports().grpc_port == 7070


def test_inference_config_layers_env_over_the_model_yaml():
    yaml_config = model_config("generator", {"lru_size": 2})
    assert InferenceConfig.load(yaml_config, {}).lru_size == 2
    config = InferenceConfig.load(yaml_config, {"FACEEDIT_LRU_SIZE": "7", "FACEEDIT_REDIS_URL": "redis://x",
                                                "FACEEDIT_ARTIFACT_STORE_URL": "file:///a"})
    assert config.lru_size == 7 and config.redis_url == "redis://x"
    with pytest.raises(InvalidInputError) as info:
        InferenceConfig.load(yaml_config, {"FACEEDIT_REDIS_URL": "redis://x"})
    assert info.value.field == "artifact_store_url"
    with pytest.raises(InvalidInputError):
        InferenceConfig.load(yaml_config, {"FACEEDIT_MEMORY_BUDGET_MB": "0"})


def test_the_memory_budget_sizes_a_synthesis_call():
    """1024 px at ~0.55 GB per image: the default 6 GB budget allows 10 images per call, the demo's 64 px thousands."""
    config = InferenceConfig.load(model_config("generator"), {})
    assert config.images_per_call(1024) == 10 and config.images_per_call(64) > 1000
    assert InferenceConfig.load(model_config("generator"),
                                {"FACEEDIT_MEMORY_BUDGET_MB": "100"}).images_per_call(1024) == 1


def test_worker_config_and_celery_settings():
    config = WorkerConfig.from_env({"FACEEDIT_LEASE_TTL": "2.5", "FACEEDIT_VISIBILITY_TIMEOUT": "99",
                                    "FACEEDIT_MODELS": "/m/models.yaml"})
    assert config.lease_ttl == 2.5 and config.models == "/m/models.yaml"
    with pytest.raises(InvalidInputError) as info:
        WorkerConfig.from_env({"FACEEDIT_ITERATIONS": "many"})
    assert info.value.field == "FACEEDIT_ITERATIONS"
    app = create_app(config)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1 and app.conf.task_default_queue == "gpu"
    assert app.conf.broker_transport_options == {"visibility_timeout": 99, "unacked_restore_interval": 1,
                                                 "unacked_restore_throttle": 1}
    app.close()


def test_the_documented_tuning_and_text_edit_settings_are_read_from_the_environment():
    """README: FACEEDIT_PTI_SETTINGS (JSON of InversionConfig fields, under a job's own steps),
    FACEEDIT_COMPUTE_RELEVANCE and FACEEDIT_RELEVANCE_SAMPLES (the worker), optimize_max_s (the encoder handler)."""
    from services.worker.tuning import tuning_config

    config = WorkerConfig.from_env({"FACEEDIT_PTI_SETTINGS": '{"optimize_steps": 7, "tune_steps": 9}',
                                    "FACEEDIT_COMPUTE_RELEVANCE": "1", "FACEEDIT_RELEVANCE_SAMPLES": "4"})
    assert config.compute_relevance is True and config.relevance_samples == 4
    assert WorkerConfig.from_env({}).compute_relevance is False  # off unless asked: hours at 1024 px
    pti = tuning_config(config.pti_settings, {})
    assert (pti.optimize_steps, pti.tune_steps) == (7, 9)
    assert tuning_config(config.pti_settings, {"iterations": 3}).tune_steps == 3  # the job's options.steps wins
    with pytest.raises(InvalidInputError) as info:
        tuning_config(WorkerConfig.from_env({"FACEEDIT_PTI_SETTINGS": '{"tune_stepz": 1}'}).pti_settings, {})
    assert info.value.field == "pti_settings.tune_stepz"
    encoder = InferenceConfig.load(model_config("encoder"), {"FACEEDIT_OPTIMIZE_MAX_S": "2.5"})
    assert encoder.optimize_max_s == 2.5 and InferenceConfig.load(model_config("encoder"), {}).optimize_max_s == 60.0


def test_the_java_frontend_runs_c1_only_by_default_and_the_env_replaces_its_flags():
    # C2's compiler thread took the model worker's cores for minutes (services/inference/server.py).
    assert properties(TorchServeConfig())["vmargs"].split() == ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
    assert "vmargs" not in properties(TorchServeConfig(jvm_args=""))
    custom = TorchServeConfig.from_env({"FACEEDIT_TS_JVM_ARGS": "-Xmx2g"})
    assert properties(custom)["vmargs"] == "-Xmx2g"
