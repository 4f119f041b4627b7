"""Routing: model library (MedSegAgent JSON form), coarse-to-fine matching, specialist runners, ensemble.

Only the library and matching are imported here; specialist runners import torch/monai inside functions.
"""

from __future__ import annotations

import os

from ..language.parser import RequestParser
from ..language.terminology import Terminology, default_terminology
from .library import Entry, LibraryError, load_entry, load_library
from .matching import Match, RouteResult, match_request

__all__ = ["Entry", "LibraryError", "Match", "RouteResult", "Router", "load_entry", "load_library",
           "match_request"]


class Router:
    """Parse a request and match it against a library folder (default ``Resources/Models``)."""

    def __init__(self, library: str | os.PathLike | list[Entry] | None = None,
                 terminology: Terminology | None = None) -> None:
        self.term = terminology or default_terminology()
        self.entries = library if isinstance(library, list) else load_library(library)
        self.parser = RequestParser(self.term)

    def route(self, query: str | None, image_metadata: dict | str | None = None) -> RouteResult:
        """Parse ``query`` and return every matching entry with its label ids."""
        return match_request(self.parser.parse(query, image_metadata), self.entries, self.term)
