"""Visual tools: token heat maps (``token_maps``)."""
