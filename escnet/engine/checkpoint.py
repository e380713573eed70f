"""Checkpointing that never leaves a half-written file and fails clearly on a missing checkpoint."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.errors import EscnetError
from ..utils.io import atomic_path


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files (``*.pth``, ``last_checkpoint``) are written atomically.

    A run killed while saving keeps its previous checkpoint and ``last_checkpoint`` tag intact,
    so ``--resume`` always finds a complete file.
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
        with atomic_path(save_file) as tmp:
            torch.save(data, tmp)
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_path(os.path.join(self.save_dir, "last_checkpoint")) as tmp:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)

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
        return super().load(path, *args, **kwargs)
