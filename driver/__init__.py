"""The shared core: inventory, device model, allocator, limits, CDI, checkpoint, regions. No network I/O."""
