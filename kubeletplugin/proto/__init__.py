"""The kubelet's gRPC protocols (plugin registration, DRA v1 and v1beta1).

The ``*_pb2.py`` / ``*_pb2_grpc.py`` modules are generated from the ``.proto`` files here by
``make protos`` (kubeletplugin/protos.mk) and are not checked in.
"""
