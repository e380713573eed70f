#!/usr/bin/env python
"""Prepare the COCO-Stuff-171 (train2017 + val2017) labels; see datasets/README.md.

Usage: python datasets/prepare_coco_stuff.py [--root DATASETS_ROOT] [--workers N] [--splits val2017]
"""
from escnet.data.prepare.coco_stuff import main

if __name__ == "__main__":
    main()
