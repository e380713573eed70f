"""escnet: open-vocabulary semantic segmentation (ESC-Net and friends) on Detectron2.

Detectron2 itself is not on PyPI; ``tools/install.sh`` installs it (or keeps yours).
"""
from setuptools import find_packages, setup

setup(
    name="escnet",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation toolkit (ESC-Net) built on Detectron2",
    python_requires=">=3.9",
    packages=find_packages(include=["escnet", "escnet.*"]),
    package_data={"escnet": ["data/vocab/*.json", "data/tables/*"]},
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "open_clip_torch>=2.26",
        "segment-anything>=1.0",
        "timm>=0.9",
        "einops",
        "opencv-python-headless",
        "pycocotools",
        "scipy",
        "Pillow",
        "tqdm",
        "tabulate",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
