#!/usr/bin/env python
"""Prepare the PASCAL VOC-20, VOC-20b and VOC-21 validation labels; see datasets/README.md.

Usage: python datasets/prepare_voc.py [--root DATASETS_ROOT] [--workers N]
"""
from escnet.data.prepare.voc import main

if __name__ == "__main__":
    main()
