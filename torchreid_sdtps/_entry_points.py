"""The plugin's own entry points: the single source for ``setup.py`` and ``register()``.

Plain data, no imports, so ``setup.py`` can read it without importing torch.
"""

ENTRY_POINTS = {
    "torchreid.datasets": {
        "rgbnt201": "torchreid_sdtps.data.rgbnt201:RGBNT201",
        "rgbnt100": "torchreid_sdtps.data.rgbnt100:RGBNT100",
        "msvr310": "torchreid_sdtps.data.msvr310:MSVR310",
        "synthetic_msreid": "torchreid_sdtps.data.synthetic:SyntheticMSReID",
    },
    "torchreid.models": {
        "sdtps_clip_vit_b16": "torchreid_sdtps.models.net:sdtps_clip_vit_b16",
        "sdtps_vit_b16": "torchreid_sdtps.models.net:sdtps_vit_b16",
        "sdtps_vit_tiny": "torchreid_sdtps.models.net:sdtps_vit_tiny",
    },
    "torchreid.losses": {
        "selection_ratio": "torchreid_sdtps.losses.ratio:SelectionRatioLoss",
        "cross_modal_alignment": "torchreid_sdtps.losses.alignment:CrossModalAlignmentLoss",
    },
    "torchreid.engines": {
        "sdtps": "torchreid_sdtps.engine.sdtps_engine:ImageSDTPSEngine",
        "softmax": "torchreid_sdtps.engine.stock:ImageSoftmaxEngine",
        "triplet": "torchreid_sdtps.engine.stock:ImageTripletEngine",
    },
}
