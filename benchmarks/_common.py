"""What the benchmark scripts share: the machine line, the command line, the date and the
rewrite of a marked section in a Markdown file (``benchmarks/RESULTS.md``).

The scripts run as ``python benchmarks/<name>.py`` (this folder is then first on ``sys.path``)
against the installed package (``make`` installs it).
"""
from __future__ import annotations

import datetime
import os
import os.path as osp
import platform
import shlex
import sys
from collections.abc import Sequence

import torch

from torchreid_sdtps.io import atomic_path

__all__ = ["machine", "command_line", "now", "write_section"]


def machine(device: str = "cpu") -> str:
    """CPU model (and GPU on ``cuda``), cores, torch and Python versions, torch threads."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"{cpu}, {os.cpu_count()} logical cores{gpu}, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python benchmarks/<script> ARGS`` as typed (``argv`` None: this process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python benchmarks/{script}", *(shlex.quote(a) for a in args)]).strip()


def now() -> str:
    """The local date and time to the minute, for the reports."""
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def write_section(path: str, body: str, begin: str, end: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``path`` (append them if absent);
    written to a temporary file and moved into place."""
    old = ""
    if osp.isfile(path):
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
    block = f"{begin}\n{body}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block + "\n"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(new)
