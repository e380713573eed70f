"""Detectron2 compatibility: escnet needs none of detectron2's compiled ``_C`` ops."""
import logging


def compiled_ops_available():
    """True when ``detectron2._C`` (rotated boxes, deformable conv, fast COCO eval) loads."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def report_compiled_ops():
    """Log (once per run, from the command lines' setup) when detectron2's compiled ops are unusable."""
    if not compiled_ops_available():
        logging.getLogger("escnet").info(
            "detectron2's compiled ops (_C) are not available; escnet does not need them. "
            "Detectron2 features that do (deformable conv, rotated boxes, fast COCO eval) "
            "will raise an error if called."
        )
