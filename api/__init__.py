"""The user-facing contract of vgpu-dra: names, the VgpuConfig opaque config, quantities."""
