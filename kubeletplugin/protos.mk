# Generates the gRPC stubs of the kubelet plugin into kubeletplugin/proto/ (git-ignored).
# Run from the repository root: `make protos`, or `make -f kubeletplugin/protos.mk PY=.venv/bin/python`.
#
# protoc sees the .proto files under the virtual path vgpu_dra/kubeletplugin/proto/, so the
# generated *_pb2_grpc.py import their messages as `from vgpu_dra.kubeletplugin.proto import ...`
# and work inside the package without rewriting. Output is a pure function of the .proto files and
# the grpcio-tools version (no timestamps), hence reproducible.
PY        ?= python3
PROTO_DIR := kubeletplugin/proto
VIRTUAL   := vgpu_dra/kubeletplugin/proto
PROTOS    := pluginregistration dra_v1 dra_v1beta1 dra_health_v1alpha1
STUBS     := $(foreach p,$(PROTOS),$(PROTO_DIR)/$(p)_pb2.py $(PROTO_DIR)/$(p)_pb2_grpc.py)

.PHONY: protos clean-protos
protos: $(STUBS)

$(PROTO_DIR)/%_pb2.py $(PROTO_DIR)/%_pb2_grpc.py: $(PROTO_DIR)/%.proto kubeletplugin/protos.mk
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -I$(VIRTUAL)=$(PROTO_DIR) --python_out=$$tmp --grpc_python_out=$$tmp \
	    $(VIRTUAL)/$*.proto && \
	mv $$tmp/$(VIRTUAL)/$*_pb2.py $$tmp/$(VIRTUAL)/$*_pb2_grpc.py $(PROTO_DIR)/ && \
	rm -rf $$tmp && echo "protoc $(PROTO_DIR)/$*.proto"

clean-protos:
	rm -f $(STUBS)
