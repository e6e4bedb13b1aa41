"""Checkpoints that survive a crash: a manifest written last, and resuming from the last COMPLETE one.

``transformers.Trainer`` writes ``checkpoint-N`` file by file (weights, optimizer, scheduler, RNG
states, ``trainer_state.json``), and ``train(resume_from_checkpoint=True)`` picks the highest N
whether or not its save finished: after a process is killed inside a save, every retry fails
("Can't find a valid checkpoint"). The trainers of this package (``CompleteCheckpointsMixin``):

- write ``em_hf_checkpoint.json`` into each checkpoint once the ``Trainer`` has written everything
  (atomically, so it exists whole or not at all): the size of every file of the checkpoint;
- resume (``resume_from_checkpoint=True``) from the newest checkpoint that is complete, skipping newer
  incomplete ones with a warning that names them and why. Complete means: the manifest's files all
  present with their sizes, or, for a checkpoint without a manifest (written by another trainer), a
  ``trainer_state.json`` that parses (the ``Trainer`` writes it after everything else).

A checkpoint passed by path that is incomplete raises ``ValueError`` naming what is missing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from em_hf.utils.files import atomic_write_text
from em_hf.utils.logging import get_logger

__all__ = [
    "CHECKPOINT_MANIFEST",
    "CompleteCheckpointsMixin",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "write_checkpoint_manifest",
]

CHECKPOINT_MANIFEST = "em_hf_checkpoint.json"
_TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

logger = get_logger(__name__)


def _files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``folder`` (the manifest excluded)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if relative != CHECKPOINT_MANIFEST:
                found[relative] = path.stat().st_size
    return found


def write_checkpoint_manifest(folder: str | os.PathLike, global_step: int) -> None:
    """Record the size of every file of a finished checkpoint (written atomically, last)."""
    folder = Path(folder)
    manifest = {"global_step": int(global_step), "files": _files(folder)}
    atomic_write_text(folder / CHECKPOINT_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint (a sentence), or None when it is (module docstring).

    Examples:
        >>> import tempfile
        >>> from em_hf.trainers.checkpoints import checkpoint_problem
        >>> checkpoint_problem(tempfile.mkdtemp())
        'no trainer_state.json (its save did not finish)'
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    manifest_path = folder / CHECKPOINT_MANIFEST
    if manifest_path.is_file():
        try:
            files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
            expected = {str(name): int(size) for name, size in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return f"unreadable {CHECKPOINT_MANIFEST} ({type(error).__name__})"
        for name, size in sorted(expected.items()):
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} when saved"
        return None
    state = folder / _TRAINER_STATE
    if not state.is_file():
        return f"no {_TRAINER_STATE} (its save did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {_TRAINER_STATE} ({type(error).__name__})"
    return None


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None if there is none); newer incomplete
    checkpoints are skipped with a warning.

    Examples:
        >>> import tempfile
        >>> from em_hf.trainers.checkpoints import last_complete_checkpoint
        >>> last_complete_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    for _, path in reversed(_checkpoints(Path(output_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping the incomplete checkpoint %s: %s.", path, problem)
    return None


class CompleteCheckpointsMixin:
    """For ``transformers.Trainer`` subclasses: a manifest written into each checkpoint after its save,
    and ``train(resume_from_checkpoint=True)`` resuming from the last complete checkpoint (module
    docstring). Put it before the ``Trainer`` class in the bases.

    Parameters:
        *args, **kwargs:
            Those of the ``Trainer`` it is mixed into; the mixin adds none.

    Examples:
        :class:`~em_hf.trainers.EntropyMinTrainer` and :class:`~em_hf.trainers.EMRLOOTrainer` use it:

        >>> from em_hf.trainers import EntropyMinTrainer
        >>> from em_hf.trainers.checkpoints import CompleteCheckpointsMixin
        >>> issubclass(EntropyMinTrainer, CompleteCheckpointsMixin)
        True
    """

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                write_checkpoint_manifest(folder, self.state.global_step)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            found = last_complete_checkpoint(self.args.output_dir)
            if found is None:
                names = [p.name for _, p in _checkpoints(Path(self.args.output_dir))]
                raise ValueError(
                    f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete checkpoint"
                    + (f" (incomplete: {names})" if names else "")
                    + "; train from the start with resume_from_checkpoint=None."
                )
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, str | os.PathLike):
            problem = checkpoint_problem(resume_from_checkpoint)
            if problem is not None:
                latest = last_complete_checkpoint(Path(resume_from_checkpoint).parent)
                raise ValueError(
                    f"resume_from_checkpoint={str(resume_from_checkpoint)!r} is not a complete checkpoint: "
                    f"{problem}." + (f" The newest complete one is {latest!r}." if latest else "")
                )
            resume_from_checkpoint = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)
