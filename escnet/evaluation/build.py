"""Choose the evaluator of a dataset from its ``evaluator_type`` metadata."""
from detectron2.data import MetadataCatalog

from ..utils.errors import EscnetError
from .sem_seg_evaluation import SemSegBackgroundEvaluator, SemSegEvaluator

EVALUATORS = {"sem_seg": SemSegEvaluator, "sem_seg_background": SemSegBackgroundEvaluator}


def build_evaluator(dataset_name, output_dir, distributed=True):
    """The evaluator registered for ``dataset_name``'s ``evaluator_type``."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATORS:
        raise EscnetError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; escnet knows {sorted(EVALUATORS)}"
        )
    return EVALUATORS[evaluator_type](dataset_name, distributed=distributed, output_dir=output_dir)
