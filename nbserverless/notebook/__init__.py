"""The notebook face: magics, capture, widgets, progress, the lab comm."""
