# gRPC stubs, the demo stack (Redis, TorchServe, editor, worker) and its client session. Included by the Makefile.
# Generated stubs (one file of each set stands for it): faceedit.v1 in the client package, TorchServe's in services.
PROTO_OUT := clients/python/faceedit_client/v1/editor_pb2.py services/common/ts_grpc/inference_pb2.py
PROTO_OUT_ALL = $(wildcard clients/python/faceedit_client/v1/*_pb2*.py* services/common/ts_grpc/*_pb2*.py*)
PROTO_SRC := $(wildcard protos/faceedit/v1/*.proto)
RUN_DIR ?= run
DEMO_OUT ?= out
# The model configuration every service reads (services/common/models.py); empty: the demo zoo's.
MODELS ?=
MODELS_ARG := $(if $(MODELS),--models $(abspath $(MODELS)))

.PHONY: protos demo stop demo-up test-editor reindex

# Python stubs, never committed: faceedit.v1 into clients/python/faceedit_client/v1 (the client package
# ships them; the editor imports them from there), TorchServe's inference.proto (from its jar) into
# services/common/ts_grpc.
protos: $(PROTO_OUT)

$(PROTO_OUT) &: $(PROTO_SRC) services/build_protos.py | $(STAMP)
	$(BIN)/python services/build_protos.py
	@touch $(PROTO_OUT)

# The tests import the stubs: build them before `make test` runs.
test: protos

# Start everything on loopback, run examples/client_demo.py, leave the stack up for `make stop`.
# Ctrl-C (or a failure) while it runs stops every process it started.
demo: install protos mar
	nice -n 10 $(BIN)/python -m services.launcher up --run-root $(RUN_DIR) --model-store $(MAR_DIR) $(MODELS_ARG) --demo --out $(DEMO_OUT)

# The stack without the client session.
demo-up: install protos mar
	$(BIN)/python -m services.launcher up --run-root $(RUN_DIR) --model-store $(MAR_DIR) $(MODELS_ARG)

stop:
	@test -x $(BIN)/python && $(BIN)/python -m services.launcher down --run-root $(RUN_DIR) || true

# The running stack's generator index rebuilt from its artifact store; orphans reported (COLLECT=1 removes them).
reindex: install
	$(BIN)/python -m services.launcher reindex --run-root $(RUN_DIR) $(if $(COLLECT),--collect)

test-editor: install protos
	nice -n 19 $(BIN)/python -m pytest -q tests/services/test_editor_*.py $(PYTEST_ARGS)
