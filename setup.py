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
        # detectron2 declares numpy<2 (its code uses numpy-1 copy semantics); 4.11 is the last
        # OpenCV that supports numpy 1.
        "numpy>=1.24,<2",
        "opencv-python-headless>=4.8,<4.12",
        "pycocotools",
        "scipy",
        "Pillow",
        "tqdm",
        "tabulate",
        "psutil",
        "filelock",
        "diffusers>=0.27",  # CLIPer's fine-grained compensation (Stable Diffusion UNet)
        "transformers>=4.40",  # CLIPer: Stable Diffusion's text encoder and tokenizer (null prompt)
        "gradio>=6.0,<7",  # demo/app.py (6.x API: theme given to launch())
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout", "playwright>=1.40"]},
)
