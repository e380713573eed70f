#!/usr/bin/env python
"""List every registered dataset: name, benchmark, classes, and whether its files are there.

    python tools/list_datasets.py            # table (name, benchmark, classes, status, image folder)
    python tools/list_datasets.py --names    # names only, one per line

Datasets live under $DETECTRON2_DATASETS (default datasets/); datasets/README.md says how to
prepare each one. The synthetic dataset is generated on first use.
"""
import argparse
import os
import warnings

# fvcore (imported by Detectron2) calls the deprecated torch.jit.script at import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from tabulate import tabulate  # noqa: E402

import escnet  # noqa: F401,E402  (registers the datasets)
from escnet.data.datasets.common import datasets_root  # noqa: E402
from escnet.utils.errors import cli_entry  # noqa: E402


def dataset_status(metadata):
    """"ready", "generated on first use" or "not prepared" (its image/label folders are missing)."""
    folders = [metadata.get("image_root", ""), metadata.get("sem_seg_root", "")]
    if all(folder and os.path.isdir(folder) and os.listdir(folder) for folder in folders):
        return "ready"
    if "generated on first use" in metadata.get("prepare_hint", ""):
        return "generated on first use"
    return "not prepared"


def dataset_rows():
    rows = []
    for name in sorted(DatasetCatalog.list()):
        metadata = MetadataCatalog.get(name)
        classes = metadata.get("stuff_classes", None)
        rows.append([name, metadata.get("benchmark_name", ""), len(classes) if classes is not None else "",
                     dataset_status(metadata), metadata.get("image_root", "")])
    return rows


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", action="store_true", help="print the names only")
    args = parser.parse_args(argv)
    if args.names:
        print("\n".join(sorted(DatasetCatalog.list())))
        return
    print(f"datasets root: {os.path.abspath(datasets_root())} ($DETECTRON2_DATASETS)")
    print(tabulate(dataset_rows(), headers=["name", "benchmark", "classes", "status", "images"], tablefmt="simple"))


if __name__ == "__main__":
    main()
