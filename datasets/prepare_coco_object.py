#!/usr/bin/env python
"""Prepare the COCO-Object val2017 labels (80 things + background, from COCO-Stuff); see datasets/README.md.

Usage: python datasets/prepare_coco_object.py [--root DATASETS_ROOT] [--workers N]
"""
from escnet.data.prepare.coco_object import main

if __name__ == "__main__":
    main()
