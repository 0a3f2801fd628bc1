"""The label convention of every point, mask and cell map: 1 fish, 0 background, 255 unknown.

A plain-Python module (no JAX) so the host-side data code and the device code share it.
"""

FISH = 1
BACKGROUND = 0
IGNORE = 255  # unlabelled pixel (points), unknown mask value, neutral affinity cell, padding
