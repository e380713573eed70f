#!/usr/bin/env python
"""Prepare the ADE20K-847 validation labels; see datasets/README.md.

Usage: python datasets/prepare_ade20k_full.py [--root DATASETS_ROOT] [--workers N]
"""
from escnet.data.prepare.ade20k_full import main

if __name__ == "__main__":
    main()
