"""One pipeline for every front end (issue #25): who makes the first turn (`first_turn`) and a whole segmentation
request from image to written outputs (`segment`). The command line parses arguments into a `SegmentRequest` and
prints; the labeling batch builds requests; the Slicer and browser logic call `first_turn` on their worker thread."""

from .segment import NeedsPrompt, SegmentRequest, UsageError, segment
from .start import CHOICES, FirstTurn, first_turn

__all__ = ["CHOICES", "FirstTurn", "first_turn", "NeedsPrompt", "SegmentRequest", "UsageError", "segment"]
