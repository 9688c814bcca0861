"""The commands: ``torchreid-sdtps-<name>`` runs ``torchreid_sdtps/cli/<name>.py`` (its
``COMMAND``). Plain data without imports: setup.py reads this file for the console scripts, so
adding a command is one module, one name here and a ``tools/<name>.py`` wrapper."""

COMMAND_NAMES: tuple[str, ...] = ("train", "test", "extract", "search", "export", "visualize",
                                  "index")
