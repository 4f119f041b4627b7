"""Deterministic request parser: free text -> command, targets (concept, side, lesion site), modality.

No network, no language model. Every decision is rule-based and reported in ``ParsedRequest.notes`` so a
wrong routing can be explained.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .modality import ModalitySpec, modality_from_metadata, parse_modality
from .terminology import Mention, Terminology, default_terminology

__all__ = ["COMMANDS", "ParsedRequest", "RequestParser", "Target", "parse_request"]

COMMANDS = ("segment", "refine", "undo", "redo", "accept", "reject", "stop", "next_slice", "previous_slice",
            "whole_volume", "empty", "unknown")
_CMD_PATTERNS = [
    ("undo", r"\b(?:undo|revert|go back|take (?:that|it) back|step back)\b"),
    ("redo", r"\bredo\b"),
    ("stop", r"\b(?:stop|cancel|abort|quit|halt|enough)\b"),
    ("reject", r"\b(?:reject|discard|throw (?:it|this|that) away|delete (?:it|this|that)|that'?s wrong|not good|"
               r"bad|no)\b"),
    ("accept", r"\b(?:accept|accepted|looks good|look good|confirm|approve|ok|okay|keep (?:it|this|that)|done|"
               r"perfect|good|yes|save)\b"),
    ("next_slice", r"\b(?:next(?: slice)?|slice (?:up|forward)|go (?:up|forward)|forward)\b"),
    ("previous_slice", r"\b(?:previous(?: slice)?|prev|last slice|slice (?:down|back)|go down|backward)\b"),
    ("whole_volume", r"\b(?:whole volume|entire volume|full volume|all slices|every slice|in 3d|3d|propagate|"
                     r"whole scan)\b"),
]
_REFINE = r"\b(?:refine|correct|fix|improve|adjust|smooth|tweak|redo the|update|extend|shrink|grow|edit)\b"
_CONTEXT_WORDS = {"in", "on", "using", "from", "within", "inside", "via", "by", "with"}
HELP = ("Type what to segment, e.g. 'segment both kidneys on this CT', or a command: refine, undo, accept, "
        "reject, stop, next slice, previous slice, whole volume.")


@dataclass
class Target:
    """One structure to segment. ``laterality``: 'L', 'R', or None (both sides / unpaired).

    ``site``: for a lesion, the organ it lies in (concept id) or None. ``segment``: standard name, colour and
    SNOMED CT codes for the new segment.
    """

    concept: str
    laterality: str | None = None
    site: str | None = None
    region: str | None = None
    plural: bool = False
    text: str = ""
    segment: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Display name, e.g. 'left kidney', 'tumor in liver'."""
        base = self.segment.get("name") or self.concept
        return f"{base} in {self.site.replace('_', ' ')}" if self.site else base


@dataclass
class ParsedRequest:
    """Result of parsing one chat message.

    ``modality``: display form ('CT', 'MR (FLAIR)', 'PET+CT') or None; ``modality_source``: 'text',
    'metadata' or None. ``message``: a sentence for the chat when the request cannot be acted on.
    """

    text: str
    command: str
    targets: list[Target] = field(default_factory=list)
    modality: str | None = None
    modality_spec: ModalitySpec = field(default_factory=ModalitySpec)
    modality_source: str | None = None
    region: str | None = None
    suggestions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def target_name(self) -> str | None:
        """All targets joined ('left kidney + right kidney'), or None."""
        return " + ".join(t.name for t in self.targets) or None

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        d = asdict(self)
        d["modality_spec"] = {"alternatives": [sorted(a) for a in self.modality_spec.alternatives],
                              "sequences": sorted(self.modality_spec.sequences)}
        d["target"] = self.target_name
        return d


class RequestParser:
    """Rule-based parser over a :class:`Terminology`."""

    def __init__(self, terminology: Terminology | None = None) -> None:
        self.term = terminology or default_terminology()

    def parse(self, text: str | None, image_metadata: dict | str | None = None) -> ParsedRequest:
        """Parse ``text``; ``image_metadata`` (DICOM Modality or a dict with it) fills in a missing modality."""
        text = (text or "").strip()
        req = ParsedRequest(text=text, command="empty")
        if not text:
            req.message = "The request is empty. " + HELP
            return req
        low = text.lower()
        self._modality(req, image_metadata)
        targets = self._targets(text, req)
        if not targets:
            fixed = self._typo_fix(text)
            if fixed and fixed != text:
                targets = self._targets(fixed, req)
                if targets:
                    req.warnings.append(f"Read '{text}' as '{fixed}'.")
        req.targets = targets
        if targets:
            req.command = "refine" if re.search(_REFINE, low) else "segment"
            req.notes.append(f"command {req.command}: a structure was named")
            return req
        for name, pat in _CMD_PATTERNS:
            if re.search(pat, low):
                req.command = name
                req.notes.append(f"command {name}: matched /{pat}/")
                return req
        req.command = "unknown"
        req.suggestions = self.term.suggest(text)
        if req.suggestions:
            req.message = (f"I did not recognise a structure in '{text}'. Did you mean: "
                           + ", ".join(req.suggestions) + "?")
        else:
            req.message = f"I did not understand '{text}'. " + HELP
        return req

    # ------------------------------------------------------------------ modality
    def _modality(self, req: ParsedRequest, meta) -> None:
        spec = parse_modality(req.text)
        meta_mod = modality_from_metadata(meta)
        if spec.alternatives:
            req.modality_spec, req.modality_source = spec, "text"
            if meta_mod and meta_mod not in spec.bases:
                req.warnings.append(
                    f"The request says {spec.label()} but the image metadata says {meta_mod}; routing uses "
                    f"{spec.label()} from the request. Load a {spec.label()} image or leave the modality out "
                    "to use the image's.")
        elif meta_mod:
            req.modality_spec = ModalitySpec(alternatives=[{meta_mod}], sequences=spec.sequences, text=meta_mod)
            req.modality_source = "metadata"
        req.modality = req.modality_spec.label()

    # ------------------------------------------------------------------ targets
    def _typo_fix(self, text: str) -> str | None:
        words = re.findall(r"[A-Za-z]+|[^A-Za-z]+", text)
        changed = False
        out = []
        for w in words:
            c = self.term.correct_word(w.lower()) if w.isalpha() else None
            if c:
                out.append(c)
                changed = True
            else:
                out.append(w)
        return "".join(out) if changed else None

    def _targets(self, text: str, req: ParsedRequest) -> list[Target]:
        main = re.sub(r"\([^)]*\)", " ", text)
        paren = " ".join(re.findall(r"\(([^)]*)\)", text))
        targets = self._targets_from(main, req)
        if not targets and paren.strip():
            targets = self._targets_from(paren, req)
            if targets:
                req.notes.append("targets read from the text in brackets")
        return targets

    def _targets_from(self, text: str, req: ParsedRequest) -> list[Target]:
        term = self.term
        mentions, toks, extra = term.find_mentions(text)
        words = [t for t, _ in toks]
        if req.modality_spec.sequences and "vertebra" not in words:
            # a bare "T1"/"T2" next to an MR sequence is the sequence, not the vertebra
            mentions = [m for m in mentions if m.text not in ("t1", "t2")]
        if not mentions:
            return []
        # context split: "X in/on/using ..." -> mentions after the preposition are the context (organ/site)
        cut = len(words)
        for i, w in enumerate(words):
            if w in _CONTEXT_WORDS and i > mentions[0].start:
                cut = i
                break
        tmentions = [m for m in mentions if m.start < cut]
        cmentions = [m for m in mentions if m.start >= cut]
        self._attach_laterality(tmentions, [x for x in extra["laterality"] if x[0] < cut])
        conj_pos = [i for i, _ in extra["conj"]]
        region = term.region_of(text)
        if region and any(term.get(m.concept).region == region or m.concept == region for m in mentions):
            region = region if not any(term.get(m.concept).kind != "lesion" and
                                       _region_word_inside(term, m, region) for m in tmentions) else None
        req.region = req.region or region
        targets: list[Target] = []
        i = 0
        while i < len(tmentions):
            m = tmentions[i]
            c = term.get(m.concept)
            nxt = tmentions[i + 1] if i + 1 < len(tmentions) else None
            joined = nxt is not None and not any(m.end <= p < nxt.start for p in conj_pos)
            if joined and c.kind != "lesion" and term.get(nxt.concept).kind == "lesion":
                # "liver tumor", "kidney cyst": lesion with its site
                lat = nxt.laterality or m.laterality
                targets.append(self._target(nxt, site=m.concept, laterality=lat, region=region))
                req.notes.append(f"'{m.text} {nxt.text}': {nxt.concept} in {m.concept}")
                i += 2
                continue
            if joined and (term.is_below(m.concept, nxt.concept) or term.is_below(nxt.concept, m.concept)):
                keep = m if term.is_below(m.concept, nxt.concept) else nxt
                keep.laterality = keep.laterality or m.laterality or nxt.laterality
                targets.append(self._target(keep, region=region))
                i += 2
                continue
            targets.append(self._target(m, region=region))
            i += 1
        # context organs become the site of lesion targets ("tumor in the liver", "whole tumor in brain MRI")
        ctx_sites = [m.concept for m in cmentions if term.get(m.concept).kind != "lesion"]
        if ctx_sites:
            for t in targets:
                if term.get(t.concept).kind == "lesion" and t.site is None:
                    t.site = ctx_sites[0]
                    req.notes.append(f"site of {t.concept} from context: {ctx_sites[0]}")
        if not targets and cmentions:
            targets = [self._target(m, region=region) for m in cmentions]
        return targets

    def _attach_laterality(self, mentions: list[Mention], lat: list[tuple[int, str]]) -> None:
        for pos, side in lat:
            inside = [m for m in mentions if m.start < pos < m.end]
            after = inside + [m for m in mentions if m.start > pos]
            before = [m for m in mentions if m.end <= pos]
            m = after[0] if after else (before[-1] if before else None)
            if m is None:
                continue
            if m.laterality and m.laterality != side:
                m.laterality = "B"
            else:
                m.laterality = side

    def _target(self, m: Mention, site: str | None = None, laterality: str | None = None,
                region: str | None = None) -> Target:
        c = self.term.get(m.concept)
        lat = laterality or m.laterality
        if lat == "B":
            lat = None
        if lat and not c.paired and c.kind != "lesion":
            lat = None  # "left liver" has no side model; keep the organ
        site = site or c.site
        return Target(concept=c.id, laterality=lat, site=site, region=region if c.kind == "lesion" else None,
                      plural=m.plural, text=m.text, segment=c.segment_info(lat, self.term.modifiers))


def _region_word_inside(term: Terminology, m: Mention, region: str) -> bool:
    return term.region_of(m.text) == region


def parse_request(text: str | None, image_metadata: dict | str | None = None,
                  terminology: Terminology | None = None) -> ParsedRequest:
    """Parse one chat message with the default terminology (see :class:`RequestParser`)."""
    return RequestParser(terminology).parse(text, image_metadata)
