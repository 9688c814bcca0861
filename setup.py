"""Install torchreid-sdtps; entry points come from torchreid_sdtps/_entry_points.py."""
import os.path as osp
import runpy

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))
ENTRY_POINTS = runpy.run_path(osp.join(HERE, "torchreid_sdtps", "_entry_points.py"))["ENTRY_POINTS"]

# using a trained model (torchreid_sdtps/deploy/cli.py)
CONSOLE_SCRIPTS = [
    "torchreid-sdtps-extract = torchreid_sdtps.deploy.cli:extract_entry",
    "torchreid-sdtps-search = torchreid_sdtps.deploy.cli:search_entry",
    "torchreid-sdtps-export = torchreid_sdtps.deploy.cli:export_entry",
]

ENTRY_POINT_LINES = {group: [f"{name} = {value}" for name, value in entries.items()]
                     for group, entries in ENTRY_POINTS.items()}
ENTRY_POINT_LINES.setdefault("console_scripts", []).extend(CONSOLE_SCRIPTS)

# torchreid==0.2.5 on PyPI declares no dependencies: everything it imports is listed here.
TORCHREID_RUNTIME = [
    "numpy",
    "scipy",
    "Pillow",
    "opencv-python-headless",
    "tensorboard",
    "gdown",
    "h5py",
    "imageio",
]

setup(
    name="torchreid-sdtps",
    version=runpy.run_path(osp.join(HERE, "torchreid_sdtps", "_version.py"))["__version__"],
    description="Multi-modal (RGB/NI/TI) re-identification with SDTPS token selection for torchreid",
    long_description=open(osp.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["torchreid_sdtps", "torchreid_sdtps.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "torchreid>=0.2.5",
        "timm>=0.9",
        "yacs",
        "tqdm",
        "pyyaml",
    ] + TORCHREID_RUNTIME,
    extras_require={
        "test": ["pytest>=7"],
        # ONNX export (torch's dynamo exporter needs onnxscript) and ONNX Runtime inference
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
    },
    entry_points=ENTRY_POINT_LINES,
)
