"""medvqa-lite: a lightweight medical VQA model (BiomedCLIP ViT-B/16 -> projector -> Llama-3-8B), Hugging Face-native."""

from setuptools import find_packages, setup

setup(
    name="medvqa-lite",
    version="0.1.0",
    description="Lightweight medical visual question answering: BiomedCLIP + Llama-3, trained the Hugging Face way",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_medvqa", "training", "training.*", "hub_card", "benchmarks"]),
    package_data={"hub_card": ["*.md", "space/*"], "training": ["evaluation/*.json"]},
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "transformers>=5.24,<6",
        "timm>=1.0.20",
        "open_clip_torch>=3.0",
        "huggingface_hub>=1.0",
        "safetensors",
        "numpy",
        "pillow",
        "pydicom>=3.0",
        "nibabel>=5.0",
        "scikit-image>=0.24",
        "tifffile",  # TIFFs Pillow has no mode for (float64 gray ...); also a scikit-image dependency
        "datasets>=3.0",
        "pyyaml",
        "matplotlib",
        "scipy",  # exact McNemar test and the paired bootstrap of eval / compare
    ],
    extras_require={
        "train": ["trl>=1.16", "peft>=0.17", "accelerate>=1.10", "deepspeed>=0.17", "tensorboard"],
        # 4/8-bit inference and QLoRA (bitsandbytes ships a CPU backend, so the tests run it here too)
        "quant": ["bitsandbytes>=0.45"],
        # the web app (medvqa app) and its Space
        "app": ["gradio>=5.0", "gradio_client>=1.0"],
        # parameterized: imported by transformers' test_modeling_common.py (tests/test_transformers_common.py)
        "dev": ["pytest", "ruff", "hypothesis", "playwright", "parameterized"],
    },
    entry_points={"console_scripts": ["medvqa=training.cli:main"]},
)
