"""The Slicer module's Qt panels (Qt and slicer imports live here and in MedAgentSeg.py only)."""
