"""The ``physics_accuracy`` metric script (load it with :func:`em_hf.metrics.load` or ``evaluate.load``)."""
