"""Low-level helpers every layer may use: errors, atomic writes, the allocator, processes, devices."""
