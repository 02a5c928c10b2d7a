"""The shared training loop (``loop``), the optimizer and guarded update (``optim``) and
orbax checkpoints (``checkpoint``)."""
