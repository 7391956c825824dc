"""The training loop, its settings, the teacher cache, torchrun, the allocator."""
