# TorchServe model directories and the inference server (services/inference). Included by the Makefile.
MAR_DIR ?= model_store
MAR_STAMP := $(MAR_DIR)/.mar-built
# The archives hold handler code and settings only: the handlers load the weights that the model
# configuration names (FACEEDIT_MODELS, `make demo MODELS=...`), so they need no rebuild for other weights.
MAR_INPUTS := $(wildcard services/inference/*.py services/inference/config/*)
SERVICE_TEST_ARGS ?=

.PHONY: mar inference-start inference-stop test-services

# model_store/generator/ and model_store/encoder/ in no-archive format (served in place, no unzip).
mar: $(MAR_STAMP)

$(MAR_STAMP): $(MAR_INPUTS) | $(STAMP)
	$(BIN)/python -m services.inference.archive --export $(MAR_DIR)
	@touch $@

# TorchServe on loopback, in the background; ports and paths from FACEEDIT_TS_* (random ports by default).
inference-start: mar
	$(BIN)/python -m services.inference.server start

inference-stop:
	-$(BIN)/python -m services.inference.server stop

# The inference, state and worker tests: those marked `inference` (the editor's run under test-editor).
# protos: the TorchServe integration test talks gRPC through the stubs the editor uses.
test-services: install protos
	nice -n 19 $(BIN)/python -m pytest -q -m inference $(SERVICE_TEST_ARGS)
