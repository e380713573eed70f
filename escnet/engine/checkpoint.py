"""Checkpointing that never leaves a half-written file and fails clearly on a bad checkpoint."""
import os
import pickle
import re
import zipfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.errors import EscnetError
from ..utils.io import atomic_path

# Checkpoints Detectron2's trainer writes into OUTPUT_DIR (model_0000099.pth, model_final.pth).
_TRAINER_CHECKPOINT = re.compile(r"^model_(\d+|final)\.pth$")
# What torch.load raises for a truncated or corrupt file (zip reader, unpickler, short read).
_DAMAGE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
                  AttributeError, ImportError, IndexError, TypeError, OSError)


class DamagedCheckpointError(EscnetError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, not a checkpoint)."""


def _reason(err):
    """The first sentence of ``err``'s message (PyTorch appends paragraphs of advice)."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files (``*.pth``, ``last_checkpoint``) are written atomically.

    A run killed while saving keeps its previous checkpoint and ``last_checkpoint`` tag intact,
    so ``--resume`` always finds a complete file; a failed write (disk full, permission denied)
    is a one-line error that leaves them intact too. A damaged checkpoint is a one-line error
    naming the file; when resuming, the newest intact checkpoint is used instead, with a warning.
    """

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        try:
            with atomic_path(save_file) as tmp:
                torch.save(data, tmp)
            self.tag_last_checkpoint(os.path.basename(save_file))
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
            previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
            kept = f"; {os.path.basename(previous)} and last_checkpoint are unchanged" if previous else ""
            raise EscnetError(f"cannot write checkpoint {save_file} ({_reason(err)}){kept}") from None

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_path(os.path.join(self.save_dir, "last_checkpoint")) as tmp:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)

    def _load_file(self, filename):
        try:
            return super()._load_file(filename)
        except _DAMAGE_ERRORS as err:
            raise DamagedCheckpointError(
                f"checkpoint {filename} is damaged or not a checkpoint ({_reason(err)})"
            ) from None

    def _load_model(self, checkpoint):
        """Load like Detectron2, but refuse a checkpoint that leaves tensors missing or misshapen."""
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.incorrect_shapes:
            key, ckpt_shape, model_shape = incompatible.incorrect_shapes[0]
            problems.append(
                f"{len(incompatible.incorrect_shapes)} tensors differ in shape (e.g. {key}: "
                f"checkpoint {tuple(ckpt_shape)}, model {tuple(model_shape)})"
            )
        if incompatible.missing_keys:
            problems.append(f"{len(incompatible.missing_keys)} tensors are missing (e.g. {incompatible.missing_keys[0]})")
        if problems:
            raise EscnetError(f"checkpoint does not fit the model built from the config: {'; '.join(problems)}")
        return incompatible

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise EscnetError(f"checkpoint not found: {path!r} (check MODEL.WEIGHTS)")
        try:
            return super().load(path, *args, **kwargs)
        finally:  # Detectron2 resets this only after a successful load; the next load asserts it
            self._parsed_url_during_load = None

    # ------------------------------------------------------------------ resuming
    def resume_candidates(self):
        """Checkpoints to resume from, best first: ``last_checkpoint``'s file, then the trainer's
        other ``model_*.pth`` files in ``save_dir``, newest first (hidden temporary files ignored)."""
        found = []
        if self.save_dir and os.path.isdir(self.save_dir):
            for name in os.listdir(self.save_dir):
                path = os.path.join(self.save_dir, name)
                if _TRAINER_CHECKPOINT.match(name) and os.path.isfile(path):
                    found.append(path)
        found.sort(key=lambda p: (os.path.getmtime(p), os.path.basename(p)), reverse=True)
        tagged = self.get_checkpoint_file() if super().has_checkpoint() else ""
        if tagged and os.path.isfile(tagged):
            found = [tagged] + [p for p in found if os.path.abspath(p) != os.path.abspath(tagged)]
        return found

    def has_checkpoint(self):
        """True when ``save_dir`` holds a checkpoint to resume from (tagged or not)."""
        return bool(self.resume_candidates())

    def resume_or_load(self, path, *, resume=True):
        """As Detectron2's, but resuming skips damaged checkpoints (newest intact one, with a warning)."""
        tagged = self.get_checkpoint_file() if resume and super().has_checkpoint() else ""
        if tagged and not os.path.isfile(tagged):
            self.logger.warning(f"last_checkpoint names {tagged}, which does not exist; looking for another checkpoint")
        candidates = self.resume_candidates() if resume else []
        if not candidates:
            return self.load(path, checkpointables=[])
        damaged = []
        for candidate in candidates:
            try:
                result = self.load(candidate)
            except DamagedCheckpointError as err:
                damaged.append(str(err))
                self.logger.warning(f"{err}; trying an older checkpoint")
                continue
            if damaged:
                self.logger.warning(
                    f"resuming from {os.path.basename(candidate)}, the newest intact checkpoint "
                    f"({len(damaged)} newer damaged: {damaged[0]})"
                )
            return result
        raise EscnetError(f"no intact checkpoint to resume from in {self.save_dir}: {damaged[0]}")
