"""Model library: a directory of JSON entries in MedSegAgent's dataset-metadata form, validated by a schema.

Entry fields: ``name``, ``description``, ``input_modalities`` ({"0": "CT"}, free forms like "MR or CT",
"MR T2 FLAIR"), ``labels`` ({"liver": 1, "whole_tumor": [1, 2, 3]}: a label may be a union of ids),
``numTraining``, ``file_ending``, ``models``; MedAgentSeg adds optional ``runner`` and ``license``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..language.modality import ModalitySpec, parse_modality

__all__ = ["Entry", "Label", "LibraryError", "default_library_dir", "load_entry", "load_library", "schema_path"]


class LibraryError(ValueError):
    """A library file is missing, not JSON, or breaks the schema. The message names the file and the field."""


@dataclass
class Label:
    """One label of an entry: its name as written and the label ids (a union when more than one)."""

    name: str
    ids: list[int]


@dataclass
class Entry:
    """A validated library entry. ``channels``: one parsed :class:`ModalitySpec` per input channel."""

    name: str
    description: str
    input_modalities: dict[str, str]
    labels: list[Label]
    num_training: int
    file_ending: str
    models: dict
    runner: dict | None
    path: Path | None
    raw: dict = field(repr=False, default_factory=dict)
    channels: list[ModalitySpec] = field(default_factory=list)

    @property
    def modality_label(self) -> str:
        """Channels as written, joined with ' + '."""
        return " + ".join(self.input_modalities[k] for k in sorted(self.input_modalities, key=int))


def schema_path() -> Path:
    """``Resources/Models/schema/model_entry.schema.json`` of this checkout."""
    for parent in Path(__file__).resolve().parents:
        cand = parent / "Resources" / "Models" / "schema" / "model_entry.schema.json"
        if cand.is_file():
            return cand
    raise FileNotFoundError("Resources/Models/schema/model_entry.schema.json was not found next to MedAgentSegLib.")


def default_library_dir() -> Path:
    """``$MEDAGENTSEG_LIBRARY`` if set, else ``Resources/Models`` of this checkout."""
    env = os.environ.get("MEDAGENTSEG_LIBRARY")
    return Path(env) if env else schema_path().parent.parent


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _field_path(err) -> str:
    parts = [str(p) for p in err.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def load_entry(data: dict | str | os.PathLike, source: str | None = None) -> Entry:
    """Validate and load one entry (a dict or a JSON file path).

    Raises :class:`LibraryError` naming the file and the failing field, e.g.
    ``broken.json: field 'labels.liver': 'one' is not valid under any of the given schemas``.
    """
    path = None
    if not isinstance(data, dict):
        path = Path(data)
        source = source or str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LibraryError(f"{source}: file not found.") from None
        except json.JSONDecodeError as e:
            raise LibraryError(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
        except UnicodeDecodeError:  # a binary file (a pickle, an archive): read as data only, never loaded
            raise LibraryError(f"{source}: not a text file; library entries are JSON.") from None
        except RecursionError:
            raise LibraryError(f"{source}: nested too deeply to be a library entry; entries are flat JSON.") from None
        except IsADirectoryError:
            raise LibraryError(f"{source}: is a folder; library entries are *.json files.") from None
    source = source or "<entry>"
    if not isinstance(data, dict):
        raise LibraryError(f"{source}: an entry must be a JSON object with name, input_modalities and labels.")
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = _field_path(e)
        if e.validator == "required":
            missing = e.message.split("'")[1] if "'" in e.message else e.message
            raise LibraryError(f"{source}: field '{missing}' is required (MedSegAgent entry form: name, "
                               "description, input_modalities, labels, numTraining, file_ending, models).")
        raise LibraryError(f"{source}: field '{where}': {e.message}.")
    labels = []
    for name, value in data["labels"].items():
        ids = [value] if isinstance(value, int) else list(value)
        labels.append(Label(name=name, ids=ids))
    entry = Entry(
        name=data["name"], description=data.get("description", ""), input_modalities=data["input_modalities"],
        labels=labels, num_training=int(data.get("numTraining", 0)), file_ending=data.get("file_ending", ""),
        models=data.get("models", {}), runner=data.get("runner"), path=path, raw=data,
    )
    entry.channels = [parse_modality(v, split_or=True) for _, v in sorted(entry.input_modalities.items(),
                                                                          key=lambda kv: int(kv[0]))]
    return entry


def load_library(directory: str | os.PathLike | None = None) -> list[Entry]:
    """Load every ``*.json`` entry in ``directory`` (not recursive; a ``schema`` folder is skipped).

    Raises :class:`LibraryError` for a missing/empty folder, a broken file (named, with the field) or two
    entries with the same name.
    """
    d = Path(directory) if directory else default_library_dir()
    if not d.is_dir():
        raise LibraryError(f"{d}: library folder not found; pass --library DIR with JSON entries.")
    entries: list[Entry] = []
    seen: dict[str, str] = {}
    for f in sorted(d.glob("*.json")):
        e = load_entry(f, source=f.name)
        if e.name in seen:
            raise LibraryError(f"{f.name}: field 'name': '{e.name}' is already used by {seen[e.name]}.")
        seen[e.name] = f.name
        entries.append(e)
    if not entries:
        raise LibraryError(f"{d}: no *.json entries in the library folder.")
    return entries
