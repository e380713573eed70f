#!/usr/bin/env python
"""Prepare the ADE20K-150 validation labels; see datasets/README.md.

Usage: python datasets/prepare_ade20k_150.py [--root DATASETS_ROOT] [--workers N] [--splits validation]
"""
from escnet.data.prepare.ade20k_150 import main

if __name__ == "__main__":
    main()
