"""Install torchreid-sdtps; entry points come from torchreid_sdtps/_entry_points.py."""
import os.path as osp
import runpy

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = osp.dirname(osp.abspath(__file__))
ENTRY_POINTS = runpy.run_path(osp.join(HERE, "torchreid_sdtps", "_entry_points.py"))["ENTRY_POINTS"]
AUTOLOAD = runpy.run_path(osp.join(HERE, "torchreid_sdtps", "_autoload.py"))


class BuildPyWithAutoload(build_py):
    """Also write ``torchreid_sdtps_autoload.pth`` to the root of site-packages, so importing
    torchreid registers the plugin (see torchreid_sdtps/_autoload.py).

    Wheels (``pip install .``): the file goes to ``build_lib``, whose root becomes the wheel's.
    Editable wheels (``pip install -e .``): setuptools builds into a throw-away ``build_lib``
    and packs the ``install_lib`` folder, so the file goes there.
    """

    def run(self) -> None:
        super().run()
        targets = [self.build_lib]
        if getattr(self, "editable_mode", False):
            targets.append(self.get_finalized_command("install").install_lib)
        for folder in targets:
            self.mkpath(folder)
            path = osp.join(folder, AUTOLOAD["PTH_NAME"])
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(AUTOLOAD["PTH_LINE"] + "\n")


# the commands: one module each in torchreid_sdtps/cli/ (tools/*.py are thin wrappers of the same)
COMMAND_NAMES = runpy.run_path(osp.join(HERE, "torchreid_sdtps", "cli", "names.py"))["COMMAND_NAMES"]
CONSOLE_SCRIPTS = {f"torchreid-sdtps-{name}": f"torchreid_sdtps.cli.{name}:console"
                   for name in COMMAND_NAMES}

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
    # configs/ holds data only (no __init__.py): named here, so setuptools installs it as a
    # package of data files without its "absent from the packages configuration" warning
    packages=find_packages(include=["torchreid_sdtps", "torchreid_sdtps.*"])
    + ["torchreid_sdtps.configs"],
    include_package_data=True,
    package_data={"torchreid_sdtps.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "torchreid>=0.2.5",
        "timm>=1.0.31,<2",  # the tested range: checkpoint_filter_fn, VisionTransformer.load_pretrained
        "yacs",
        "tqdm",
        "pyyaml",
        "filelock>=3.12",  # one run per save_dir (checkpoint/lock.py), per-spec data generation lock
    ] + TORCHREID_RUNTIME,
    extras_require={
        "test": ["pytest>=7", "ruff>=0.5"],
        # ONNX export (torch's dynamo exporter needs onnxscript) and ONNX Runtime inference
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        # FAISS indexes over gallery feature stores (torchreid-sdtps-index); faiss-gpu, when
        # installed instead, is used the same way
        "index": ["faiss-cpu>=1.7.4"],
    },
    cmdclass={"build_py": BuildPyWithAutoload},
    entry_points={
        **{group: [f"{name} = {value}" for name, value in entries.items()]
           for group, entries in ENTRY_POINTS.items()},
        "console_scripts": [f"{name} = {value}" for name, value in CONSOLE_SCRIPTS.items()],
    },
)
