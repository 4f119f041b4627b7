"""Segment vocabulary: concepts with synonyms, SNOMED CT codes, colours, laterality and relations.

The vocabulary lives in ``Resources/Terminology/terminology.json`` (see its ``sources``). Text is turned into
concept *mentions* by normalising it (lower case, camelCase and ``_``/``-`` split, plurals folded, stop words
dropped) and matching synonyms longest-first. Pure Python; no torch, no network.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

__all__ = [
    "Concept",
    "Mention",
    "Terminology",
    "default_terminology",
    "default_terminology_path",
    "normalize_tokens",
    "singular",
]

_STOP = {
    "the", "a", "an", "of", "me", "my", "please", "help", "can", "you", "could", "would", "this", "that", "these",
    "those", "to", "i", "want", "need", "like", "some", "its", "is", "are", "be", "just", "now", "here", "there",
    "image", "images", "scan", "scans", "volume", "volumes", "study", "series", "part", "structure", "region",
    "area", "entire", "whole", "complete", "full", "blood", "proper", "label", "segmentation", "mask", "organ",
    "organs", "please,", "then", "also", "it", "them", "us", "let", "lets", "let's", "do", "go", "for", "at",
}
# words that must survive stop-word removal in synonyms ("whole tumor", "entire spine")
_KEEP_IN_SYNONYM = {"whole", "entire", "blood", "part"}
_IRREGULAR = {
    "vertebrae": "vertebra", "humeri": "humerus", "femora": "femur", "scapulae": "scapula", "cochleae": "cochlea",
    "metastases": "metastasis", "pelves": "pelvis", "ribs": "rib", "bronchi": "bronchus", "lenses": "lens",
    "costae": "costa", "clavicles": "clavicle", "vessels": "vessel", "testes": "testis", "analyses": "analysis",
    "masses": "mass", "glands": "gland", "cavities": "cavity", "arteries": "artery", "discs": "disc",
    "tumours": "tumour", "tumors": "tumor", "lesions": "lesion", "nodes": "node", "canals": "canal",
    "ovaries": "ovary", "kidneys": "kidney", "lungs": "lung", "eyes": "eye", "ears": "ear", "bones": "bone",
}
_NO_SINGULAR_ENDINGS = ("ss", "us", "is", "as", "os", "ys")
_NO_SINGULAR = {"lens", "pancreas", "iris", "series", "ascites", "thorax", "pelvis", "corpus", "diabetes",
                "this", "its", "has", "was", "is", "us", "ct", "mr", "pet", "ras", "gas", "atlas", "axis",
                "ics", "dens", "news", "bilateral", "sacrum"}
LATERAL_WORDS = {"left": "L", "l": "L", "lt": "L", "sinister": "L", "right": "R", "r": "R", "rt": "R",
                 "dexter": "R"}
BOTH_WORDS = {"both", "bilateral", "bilaterally", "pair", "all", "each"}


def singular(word: str) -> tuple[str, bool]:
    """Fold an English plural to its singular form: ``(singular, was_plural)``."""
    if word in _IRREGULAR:
        return _IRREGULAR[word], True
    if len(word) <= 3 or word in _NO_SINGULAR or word.endswith(_NO_SINGULAR_ENDINGS) or not word.isalpha():
        return word, False
    if word.endswith("ies"):
        return word[:-3] + "y", True
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2], True
    if word.endswith("s"):
        return word[:-1], True
    return word, False


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[a-zA-Z])(?=[0-9])(?![0-9]*[a-z])")


def normalize_tokens(text: str, camel: bool = True, keep_stop: bool = False) -> list[tuple[str, bool]]:
    """Split ``text`` into normalised tokens.

    Returns a list of ``(token, was_plural)``. ``camel`` splits ``TemporalLobe_L`` into ``temporal lobe l``;
    vertebra levels like ``C1`` / ``T12`` / ``L5`` stay one token.
    """
    if camel:
        text = _CAMEL.sub(" ", text)
    text = text.lower().replace("&", " and ").replace("tumour", "tumor").replace("oedema", "edema")
    text = re.sub(r"[_\-/,;:()\[\]{}\"'?!.+*]", " ", text)
    text = re.sub(r"\b([ctls])\s+(\d{1,2})\b", r"\1\2", text)  # "c 1" -> "c1" (vertebra level split by camel)
    out: list[tuple[str, bool]] = []
    for raw in text.split():
        if not keep_stop and raw in _STOP:
            continue
        out.append(singular(raw))
    return out


@dataclass(frozen=True)
class Concept:
    """One vocabulary entry (an anatomical structure, a group of structures, or a lesion type)."""

    id: str
    name: str
    kind: str  # "anatomy" | "group" | "lesion"
    synonyms: tuple[str, ...]
    paired: bool
    is_a: tuple[str, ...]
    part_of: tuple[str, ...]
    site: str | None
    region: str | None
    color: tuple[int, int, int]
    snomed: dict

    def segment_info(self, laterality: str | None = None, modifiers: dict | None = None) -> dict:
        """Name, colour (0-255 RGB) and SNOMED CT category/type/modifier for a new segment."""
        side = {"L": "left", "R": "right", "B": "bilateral"}.get(laterality or "")
        name = f"{side} {self.name}" if side and side != "bilateral" else self.name
        info = {"name": name, "concept": self.id, "color": list(self.color), "category": self.snomed.get("category"),
                "type": self.snomed.get("type"), "modifier": None}
        if side and modifiers:
            info["modifier"] = modifiers.get(side)
        return info


@dataclass
class Mention:
    """A concept found in text. ``start``/``end`` index the normalised token list; ``laterality`` is L, R or None."""

    concept: str
    start: int
    end: int
    laterality: str | None = None
    plural: bool = False
    text: str = ""
    numbers: list[int] = field(default_factory=list)


class Terminology:
    """Concept store with synonym lookup, relations and fuzzy suggestions."""

    def __init__(self, data: dict, source: str = "<dict>") -> None:
        if not isinstance(data, dict) or not isinstance(data.get("concepts"), list):
            raise ValueError(f"{source}: a terminology file needs a 'concepts' list; see "
                             "Resources/Terminology/terminology.json for the format.")
        self.source = source
        self.modifiers: dict = data.get("laterality_modifiers", {})
        self.concepts: dict[str, Concept] = {}
        self._syn: dict[tuple[str, ...], str] = {}
        self._lat_syn: dict[tuple[str, ...], str] = {}
        for i, c in enumerate(data["concepts"]):
            for key in ("id", "name"):
                if not isinstance(c.get(key), str) or not c.get(key):
                    raise ValueError(f"{source}: concepts[{i}] has no string '{key}'.")
            concept = Concept(
                id=c["id"], name=c["name"], kind=c.get("kind", "anatomy"), synonyms=tuple(c.get("synonyms", [])),
                paired=bool(c.get("paired", False)), is_a=tuple(c.get("is_a", [])),
                part_of=tuple(c.get("part_of", [])), site=c.get("site"), region=c.get("region"),
                color=tuple(c.get("color", (128, 128, 128))), snomed=c.get("snomed") or {},
            )
            self.concepts[concept.id] = concept
            for s in (concept.name, concept.id.replace("_", " "), *concept.synonyms):
                self._add_synonym(s, concept.id)
        for c in self.concepts.values():
            for r in (*c.is_a, *c.part_of):
                if r not in self.concepts:
                    raise ValueError(f"{source}: concept '{c.id}' refers to unknown concept '{r}'.")
        self.regions: dict[str, str] = {}
        for region, words in data.get("regions", {}).items():
            for w in words:
                self.regions[" ".join(t for t, _ in normalize_tokens(w, keep_stop=True))] = region
        self._children: dict[str, list[tuple[str, str]]] = {}
        for c in self.concepts.values():
            for p in c.is_a:
                self._children.setdefault(p, []).append((c.id, "is_a"))
            for p in c.part_of:
                self._children.setdefault(p, []).append((c.id, "part_of"))
        self.max_len = max(len(k) for k in (*self._syn, *self._lat_syn))
        self.vocabulary_words = sorted({w for k in self._syn for w in k} | {w for k in self._lat_syn for w in k})

    def _add_synonym(self, text: str, cid: str) -> None:
        toks = tuple(t for t, _ in normalize_tokens(text, camel=False, keep_stop=True)
                     if t not in _STOP or t in _KEEP_IN_SYNONYM)
        if not toks:
            return
        target = self._lat_syn if any(t in LATERAL_WORDS for t in toks) else self._syn
        target.setdefault(toks, cid)
        # also the form without kept stop words, so "whole tumor" matches after "whole" is dropped elsewhere
        bare = tuple(t for t in toks if t not in _STOP)
        if bare and bare != toks:
            (self._lat_syn if any(t in LATERAL_WORDS for t in bare) else self._syn).setdefault(bare, cid)

    # ---------------------------------------------------------------- relations
    def get(self, cid: str) -> Concept:
        """The concept with id ``cid`` (KeyError names it when unknown)."""
        try:
            return self.concepts[cid]
        except KeyError:
            raise KeyError(f"unknown concept '{cid}'") from None

    def descendants(self, cid: str) -> dict[str, str]:
        """All concepts below ``cid`` through is-a or part-of links: ``{id: 'is_a' | 'part_of'}``.

        The value is 'is_a' when every link on the path is is-a (a kind of), else 'part_of'.
        """
        out: dict[str, str] = {}
        stack = [(cid, "is_a")]
        while stack:
            cur, how = stack.pop()
            for child, rel in self._children.get(cur, []):
                h = "is_a" if (how == "is_a" and rel == "is_a") else "part_of"
                if child not in out or (h == "is_a" and out[child] != "is_a"):
                    out[child] = h
                    stack.append((child, h))
        return out

    def is_below(self, child: str, parent: str) -> bool:
        """True when ``child`` is a kind or a part of ``parent`` (transitively)."""
        return child in self.descendants(parent)

    # ---------------------------------------------------------------- text -> mentions
    def find_mentions(self, text: str) -> tuple[list[Mention], list[tuple[str, bool]], dict]:
        """Concept mentions in ``text`` (longest synonym first).

        Returns ``(mentions, tokens, extras)`` where ``extras`` holds ``laterality`` tokens not used by a
        concept (list of (position, 'L'|'R'|'B')), ``numbers`` and ``conj`` positions ('and'/'or').
        Text is read with and without camelCase splitting ("ETbone" vs "TemporalLobe"); the reading that
        covers more tokens with concepts wins.
        """
        a = self._find(text, camel=True)
        b = self._find(text, camel=False)
        cov_a = sum(m.end - m.start for m in a[0])
        cov_b = sum(m.end - m.start for m in b[0])
        return b if (cov_b, -len(b[1])) > (cov_a, -len(a[1])) else a

    def _find(self, text: str, camel: bool) -> tuple[list[Mention], list[tuple[str, bool]], dict]:
        toks = normalize_tokens(text, camel=camel)
        words = [t for t, _ in toks]
        n = len(words)
        used = [False] * n
        mentions: list[Mention] = []
        # pass 1: synonyms that contain a side word ("left ventricle"), longest first
        self._scan(words, used, mentions, self._lat_syn, toks)
        lat: list[tuple[int, str]] = []
        for i, w in enumerate(words):
            if used[i]:
                continue
            if w in LATERAL_WORDS:
                lat.append((i, LATERAL_WORDS[w]))
                used[i] = True
            elif w in BOTH_WORDS:
                lat.append((i, "B"))
                used[i] = True
        # pass 2: other synonyms over the remaining tokens (side words removed, so "rib left 1" -> "rib 1")
        self._scan(words, used, mentions, self._syn, toks)
        mentions.sort(key=lambda m: m.start)
        numbers = [(i, int(w)) for i, w in enumerate(words) if w.isdigit() and not used[i]]
        conj = [(i, w) for i, w in enumerate(words) if w in ("and", "or", "plus", "with", "including")]
        return mentions, toks, {"laterality": lat, "numbers": numbers, "conj": conj}

    def _scan(self, words, used, mentions, table, toks) -> None:
        idx = [i for i in range(len(words)) if not used[i]]
        k = 0
        while k < len(idx):
            hit = None
            for length in range(min(self.max_len, len(idx) - k), 0, -1):
                key = tuple(words[j] for j in idx[k:k + length])
                if key in table:
                    hit = (length, table[key])
                    break
            if hit is None:
                k += 1
                continue
            length, cid = hit
            span = idx[k:k + length]
            for j in span:
                used[j] = True
            mentions.append(Mention(concept=cid, start=span[0], end=span[-1] + 1,
                                    plural=any(toks[j][1] for j in span), text=" ".join(words[j] for j in span)))
            k += length

    def region_of(self, text: str) -> str | None:
        """A body region named in ``text`` ("abdominal" -> "abdomen"), else None."""
        words = [t for t, _ in normalize_tokens(text, keep_stop=True)]
        for length in (3, 2, 1):
            for i in range(len(words) - length + 1):
                key = " ".join(words[i:i + length])
                if key in self.regions:
                    return self.regions[key]
        return None

    # ---------------------------------------------------------------- fuzzy
    def suggest(self, text: str, n: int = 3) -> list[str]:
        """Closest concept names to ``text`` (difflib ratio), best first; [] when nothing is close."""
        import difflib

        phrase = " ".join(t for t, _ in normalize_tokens(text))
        if not phrase:
            return []
        names: dict[str, str] = {}
        for key, cid in (*self._syn.items(), *self._lat_syn.items()):
            names.setdefault(" ".join(key), self.concepts[cid].name)
        scored = []
        for key, name in names.items():
            r = difflib.SequenceMatcher(None, phrase, key).ratio()
            for w in phrase.split():  # a single close word counts too ("kidny" in "segment the kidny")
                if len(w) >= 4:
                    r = max(r, difflib.SequenceMatcher(None, w, key).ratio())
            scored.append((r, name))
        scored.sort(key=lambda x: -x[0])
        out: list[str] = []
        for r, name in scored:
            if r < 0.6:
                break
            if name not in out:
                out.append(name)
            if len(out) == n:
                break
        return out

    def correct_word(self, word: str) -> str | None:
        """A vocabulary word within a small edit distance of ``word`` (typo fix), else None."""
        import difflib

        if len(word) < 4 or word in self.vocabulary_words:
            return None
        close = difflib.get_close_matches(word, self.vocabulary_words, n=1, cutoff=0.84)
        return close[0] if close else None


def default_terminology_path() -> Path:
    """``$MEDAGENTSEG_TERMINOLOGY`` if set, else ``Resources/Terminology/terminology.json`` of this checkout."""
    env = os.environ.get("MEDAGENTSEG_TERMINOLOGY")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "Resources" / "Terminology" / "terminology.json"
        if cand.is_file():
            return cand
    raise FileNotFoundError("Resources/Terminology/terminology.json was not found next to MedAgentSegLib; set "
                            "MEDAGENTSEG_TERMINOLOGY to the file's path.")


@lru_cache(maxsize=4)
def _load(path: str) -> Terminology:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from None
    return Terminology(data, source=path)


def default_terminology(path: str | os.PathLike | None = None) -> Terminology:
    """Load (cached) the terminology JSON."""
    return _load(str(path or default_terminology_path()))
