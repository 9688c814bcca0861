"""Pictures: multi-modal rank lists (:mod:`.visrank`) and SDTPS token heat maps
(:mod:`.token_maps`). The command that draws them is ``torchreid-sdtps-visualize``
(:mod:`torchreid_sdtps.cli.visualize`)."""
