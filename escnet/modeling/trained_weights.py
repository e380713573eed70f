"""Whether a model needs trained weights (``MODEL.WEIGHTS``) to be of any use.

A meta-architecture class says so with a ``needs_trained_weights`` attribute (default True).
Training-free models (CLIPer) set it False: their weights come from pretrained tags, so
``train_net.py --eval-only``, ``escnet.Segmenter`` and ``demo/demo.py`` run them without
``MODEL.WEIGHTS`` and without ``--allow-random-weights``.
"""
from detectron2.modeling import META_ARCH_REGISTRY


def needs_trained_weights(cfg_or_model) -> bool:
    """``needs_trained_weights`` of a built model (DDP unwrapped) or of the config's meta-architecture."""
    if hasattr(cfg_or_model, "MODEL"):
        name = cfg_or_model.MODEL.META_ARCHITECTURE
        if name not in META_ARCH_REGISTRY:
            return True  # building the model reports the unknown name
        return bool(getattr(META_ARCH_REGISTRY.get(name), "needs_trained_weights", True))
    model = getattr(cfg_or_model, "module", cfg_or_model)
    return bool(getattr(model, "needs_trained_weights", True))
