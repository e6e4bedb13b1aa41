"""The ``code_pass_at_k`` metric script (load it with :func:`em_hf.metrics.load` or ``evaluate.load``)."""
