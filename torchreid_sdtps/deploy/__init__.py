"""Using a trained model: feature files, gallery search, ONNX export with parity checks.

Submodules: :mod:`.features` (feature files, search), :mod:`.onnx` (export, ONNX Runtime
forward, parity), :mod:`.cli` (``tools/extract.py``, ``tools/search.py``, ``tools/export.py``).
The feature extractor itself is :class:`torchreid_sdtps.utils.FeatureExtractor`.
"""
