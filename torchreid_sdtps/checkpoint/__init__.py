"""The one checkpoint contract: save with meta, safe read, unwrap, strict load into a model,
and :class:`Checkpointer` (the run directory's file names, save, latest, resume, the run lock).

Checkpoints keep torchreid's keys (``state_dict``, ``epoch``, ``optimizer``, ``scheduler``,
``rank1``...) so torchreid's own ``load_checkpoint`` / ``resume_from_checkpoint`` /
``load_pretrained_weights`` still read them; this project adds a ``meta`` entry (model name and
options, classes, cameras, image size, normalisation, config: :func:`make_meta`) that lets a
checkpoint rebuild its model and say which model it holds.

Reading uses ``torch.load(weights_only=True)`` with an allow-list of the NumPy scalar types
torchreid's stock engines pickle (:func:`safe_globals`); ``weights_only=False`` (a file that
pickles Python objects, which runs code from the file) only when the caller opts in with
``allow_unsafe_pickle=True`` or ``TORCHREID_SDTPS_ALLOW_UNSAFE_PICKLE=1``.

Loading into a model is strict by default: every parameter and buffer of the model must come
from the checkpoint with the same shape, and the checkpoint must hold nothing else; otherwise
:class:`CheckpointMismatchError` lists what is missing, unexpected or mis-shaped and which model
the checkpoint holds. torchreid's ``load_pretrained_weights`` instead drops what does not fit,
which ranks an untrained network without a word.
"""
from __future__ import annotations

from .checkpointer import Checkpointer, Loaded, resume_engine
from .files import (
    META_FORMAT,
    UNSAFE_PICKLE_ENV,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    UnsafePickleError,
    load_file,
    read_checkpoint,
    safe_globals,
    safe_loading,
    save_checkpoint,
    state_dict_of,
    unsafe_pickle_allowed,
)
from .load import LoadReport, load_into_model
from .lock import RunDirLockedError, RunLock
from .meta import attach_meta, checkpoint_meta, describe_meta, make_meta, meta_of, unwrap_model

__all__ = [
    "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError", "UnsafePickleError",
    "UNSAFE_PICKLE_ENV", "META_FORMAT", "LoadReport",
    "save_checkpoint", "read_checkpoint", "load_file", "checkpoint_meta", "make_meta",
    "describe_meta", "attach_meta", "meta_of", "state_dict_of", "load_into_model", "safe_globals",
    "safe_loading", "unsafe_pickle_allowed", "unwrap_model", "Checkpointer", "Loaded",
    "resume_engine", "RunLock", "RunDirLockedError",
]
