r"""em_hf's graders as Hugging Face ``evaluate`` metrics, shipped inside the package.

Each metric is an ``evaluate.Metric`` script in its own folder here (``math_accuracy/``,
``physics_accuracy/``, ``code_pass_at_k/``), so ``evaluate.load(path)`` works on the installed
package and :func:`load` finds the folders by name:

- ``math_accuracy``: :func:`em_hf.eval.grading.grade_math` per completion, mean over items.
- ``physics_accuracy``: :func:`em_hf.eval.grading.grade_physics` (UGPhysics rule), mean over items.
- ``code_pass_at_k``: every candidate program run against the problem's tests in
  :func:`em_hf.eval.sandbox.run_code`, then the unbiased pass@k estimator (:func:`pass_at_k`).

Loading never uses the network: ``evaluate.load`` is given the absolute path of the script, which
it copies into its modules cache (``$HF_MODULES_CACHE``) and imports; the Hugging Face Hub is only
consulted for bare names such as ``"accuracy"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from em_hf.metrics._common import pass_at_k

if TYPE_CHECKING:  # evaluate (and datasets) are imported on first use: `import em_hf.metrics` stays cheap
    import evaluate

__all__ = ["METRICS", "list_metrics", "load", "metric_path", "pass_at_k"]

_HERE = Path(__file__).resolve().parent

METRICS: dict[str, str] = {
    "math_accuracy": "accuracy of final math answers (last \\boxed{}, numeric, math-verify)",
    "physics_accuracy": "accuracy of physics answers (UGPhysics rule: relative tolerance, several answers)",
    "code_pass_at_k": "pass@k of candidate programs run against tests in em_hf's sandbox",
}


def list_metrics() -> list[str]:
    """The names :func:`load` accepts, sorted (descriptions in ``METRICS``).

    Example::

        >>> from em_hf.metrics import list_metrics
        >>> list_metrics()
        ['code_pass_at_k', 'math_accuracy', 'physics_accuracy']
    """
    return sorted(METRICS)


def metric_path(name: str) -> Path:
    """Absolute path of the metric script ``<name>/<name>.py`` inside the installed package (what
    ``evaluate.load`` takes).

    Parameters:
        name (`str`):
            One of :func:`list_metrics`.
    """
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"`name` must be one of {list_metrics()}, got {name!r}.")
    path = _HERE / name / f"{name}.py"
    if not path.is_file():  # pragma: no cover - a broken installation
        raise FileNotFoundError(f"The metric script {path} is missing: reinstall em_hf.")
    return path


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    r"""Load one of em_hf's metrics with ``evaluate.load``, offline.

    The script's absolute path goes to ``evaluate.load``, which then takes its local branch: it
    copies the script into its modules cache and imports it, and never contacts the Hugging Face Hub
    (no offline flag is needed, so none is changed; a missing script raises ``FileNotFoundError``
    instead of falling back to the Hub).

    Parameters:
        name (`str`):
            The metric: ``"math_accuracy"``, ``"physics_accuracy"`` or ``"code_pass_at_k"``
            (:func:`list_metrics`).
        kwargs (*optional*):
            Passed on to ``evaluate.load`` (``config_name``, ``process_id``, ``num_process``,
            ``cache_dir``, ``experiment_id``, ...). ``keep_in_memory`` defaults to `True` here (no
            Arrow cache files) unless ``num_process`` > 1, where ``evaluate`` gathers the processes'
            predictions through files and needs `False`.

    Returns:
        `evaluate.EvaluationModule`: the metric; call ``.compute(predictions=..., references=...)``.

    Examples:

    ```python
    >>> from em_hf.metrics import load
    >>> math_accuracy = load("math_accuracy")
    >>> math_accuracy.compute(predictions=["... so \\boxed{4}", "It is 5."], references=["4", 6])
    {'math_accuracy': 0.5, 'num_correct': 1, 'num_items': 2}
    >>> load("code_pass_at_k").compute(
    ...     predictions=[["```python\nx = 1\n```", "```python\nx = 2\n```"]],
    ...     references=["assert x == 1"],
    ...     k=[1, 2],
    ... )
    {'pass@1': 0.5, 'pass@2': 1.0}

    ```
    """
    import evaluate

    path = metric_path(name)
    if "keep_in_memory" not in kwargs:
        kwargs["keep_in_memory"] = kwargs.get("num_process", 1) == 1
    return evaluate.load(str(path), **kwargs)
