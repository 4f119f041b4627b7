"""Chat understanding: terminology (SNOMED CT codes, synonyms, colours), request parser, optional LLM plug-in."""

from .modality import ModalitySpec, modality_from_metadata, parse_modality
from .parser import COMMANDS, ParsedRequest, RequestParser, Target, parse_request
from .terminology import Concept, Terminology, default_terminology

__all__ = ["COMMANDS", "Concept", "ModalitySpec", "ParsedRequest", "RequestParser", "Target", "Terminology",
           "default_terminology", "modality_from_metadata", "parse_modality", "parse_request"]
