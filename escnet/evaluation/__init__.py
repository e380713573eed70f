from .sem_seg_evaluation import (  # noqa: F401
    SemSegBackgroundEvaluator,
    SemSegEvaluator,
    confusion_matrix,
    segmentation_metrics,
)
from .build import build_evaluator  # noqa: F401
