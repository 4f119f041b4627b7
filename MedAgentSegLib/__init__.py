"""MedAgentSeg agent library: engines, actions, sessions, policies and metrics.

Importing this package needs only numpy; torch and friends load inside the engines that need them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
