"""compalign: compositional text-to-image alignment (ReNO + IterComp) with an embedded world."""

__version__ = "0.1.0"
