"""The node agent (`vgpu-dra kubelet-plugin`): kubelet registration and DRA gRPC services,
Prepare/Unprepare with CDI specs and claim directories, ResourceSlice publishing, node metrics.
See docs/kubelet-plugin.md; `plugin.KubeletPlugin` wires the pieces together."""
