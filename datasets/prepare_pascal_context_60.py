#!/usr/bin/env python
"""Prepare the PASCAL-Context-60 (59 classes + background) validation labels; see datasets/README.md.

Usage: python datasets/prepare_pascal_context_60.py [--root DATASETS_ROOT] [--workers N]
"""
from escnet.data.prepare.pascal_context_60 import main

if __name__ == "__main__":
    main()
