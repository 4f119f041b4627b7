"""Coarse-to-fine matching: modality -> anatomy -> label, over a model library.

For each parsed target and each library entry (MedSegAgent form), the rules are, in order:

1. **Modality** (coarse): every base modality of the request (CT, MR, PET, ...) must be an input channel of
   the entry ("MR or CT" offers either); a named MR sequence (T1, T1CE, T2, FLAIR, ADC, DWI, CINE) must be a
   channel's sequence, or the entry must have a plain MR channel. No modality known -> no filter.
2. **Anatomy/label** (fine): each label name is read with the same terminology as the request
   ("kidney_left", "Left-Kidney", "TemporalLobe_L", "heart_left_ventricle_blood_cavity", "liver_tumour").
   - *Direct*: labels of the same concept; a sided request ("left kidney") needs a label of that side, an
     unsided one takes every side ("kidneys" = left + right); a lesion request with a site ("liver tumor")
     needs a label with that site (or a site-less label in an entry whose name/description names the site).
   - *Parts/kinds* (only when no direct label): the union of labels whose concept lies below the target
     (is-a or part-of), e.g. "heart" = myocardium + LV + RV + ... , "right lung" = its three lobes,
     "adrenal tumor" = "Adrenocortical carcinoma". A group ("bones", "ribs") or an organ decomposed into
     parts needs at least two distinct sub-concepts; one part alone is not the whole.
   - A label that names several things ("kidney and masses", "portal_vein_and_splenic_vein") is used for a
     request naming exactly those things, or, when no single-concept label fits, for one of them.
3. A request with several targets ("liver and liver tumors") matches an entry only if every target does;
   the label ids are the union.

Label ids are returned as written in the entry (a union label contributes all its ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..language.modality import ModalitySpec
from ..language.parser import ParsedRequest, Target
from ..language.terminology import Terminology, default_terminology
from .library import Entry, Label

__all__ = ["LabelItem", "Match", "RouteResult", "analyse_label", "match_request", "modality_ok"]


@dataclass
class LabelItem:
    """One thing a label names: concept, side ('L'/'R'/None), lesion site."""

    concept: str
    laterality: str | None = None
    site: str | None = None


@dataclass
class LabelInfo:
    label: Label
    items: list[LabelItem]
    alternatives: bool = False  # "prostate_or_uterus": either item

    @property
    def compound(self) -> bool:
        return len(self.items) > 1 and not self.alternatives


@dataclass
class Match:
    """One matching entry: label ids (sorted, unique), the labels used and why."""

    entry: str
    ids: list[int]
    labels: list[str]
    reasons: list[str] = field(default_factory=list)
    rank: int = 0


@dataclass
class RouteResult:
    """Routing answer. ``matches`` maps entry name -> label ids; ``message`` explains an empty answer."""

    query: str
    modality: str | None
    target: str | None
    matches: dict[str, list[int]]
    details: list[Match] = field(default_factory=list)
    message: str = ""
    parsed: ParsedRequest | None = None

    def to_json(self) -> dict:
        """The JSONL record: query, modality, target, matches."""
        return {"query": self.query, "modality": self.modality, "target": self.target, "matches": self.matches}


def analyse_label(label: Label, term: Terminology) -> LabelInfo:
    """Read a label name into concept items (see module doc)."""
    mentions, toks, extra = term.find_mentions(label.name)
    sides = {s for _, s in extra["laterality"] if s in ("L", "R")}
    side = next(iter(sides)) if len(sides) == 1 else None
    conj = extra["conj"]
    alternatives = any(w == "or" for _, w in conj)
    items: list[LabelItem] = []
    i = 0
    while i < len(mentions):
        m = mentions[i]
        nxt = mentions[i + 1] if i + 1 < len(mentions) else None
        joined = nxt is not None and not any(m.end <= p < nxt.start for p, _ in conj)
        c = term.get(m.concept)
        if joined and c.kind != "lesion" and term.get(nxt.concept).kind == "lesion":
            items.append(LabelItem(nxt.concept, side, m.concept))
            i += 2
            continue
        if joined and c.kind == "lesion" and term.get(nxt.concept).kind != "lesion":
            items.append(LabelItem(m.concept, side, nxt.concept))  # "tumor_liver"
            i += 2
            continue
        if joined and (term.is_below(m.concept, nxt.concept) or term.is_below(nxt.concept, m.concept)):
            keep = m if term.is_below(m.concept, nxt.concept) else nxt
            items.append(LabelItem(keep.concept, side, term.get(keep.concept).site))
            i += 2
            continue
        items.append(LabelItem(m.concept, side, c.site))
        i += 1
    # a lesion named after "and" inherits the organ before it: "kidney and masses" -> masses of the kidney
    for a, b in zip(items, items[1:], strict=False):
        if term.get(a.concept).kind != "lesion" and term.get(b.concept).kind == "lesion" and b.site is None:
            b.site = a.concept
    return LabelInfo(label=label, items=items, alternatives=alternatives)


def modality_ok(entry: Entry, spec: ModalitySpec) -> tuple[bool, str]:
    """Coarse stage: can ``entry`` take an image of the requested modality? Returns (ok, reason)."""
    if not spec.alternatives:
        return True, "no modality given: not filtered"
    need = spec.bases
    offered = [set().union(*ch.alternatives) if ch.alternatives else set() for ch in entry.channels]
    for b in need:
        if not any(b in o for o in offered):
            return False, f"needs {b}; entry takes {entry.modality_label}"
    if spec.sequences:
        mr = [ch for ch in entry.channels if any("MR" in a for a in ch.alternatives)]
        generic = any(not ch.sequences for ch in mr)
        have = set().union(*(ch.sequences for ch in mr)) if mr else set()
        missing = spec.sequences - have
        if missing and not generic:
            return False, f"needs MR {', '.join(sorted(missing))}; entry takes {entry.modality_label}"
    return True, f"modality {spec.label()} fits {entry.modality_label}"


class _EntryIndex:
    def __init__(self, entry: Entry, term: Terminology) -> None:
        self.entry = entry
        self.labels = [analyse_label(lb, term) for lb in entry.labels if lb.name.strip().lower() != "background"
                       and lb.ids != [0]]
        text_mentions, _, _ = term.find_mentions(f"{entry.name} {entry.description}")
        self.text_concepts = {m.concept for m in text_mentions}
        self.text_region = term.region_of(f"{entry.name} {entry.description}")


def _side_ok(item: LabelItem, target: Target) -> bool:
    return target.laterality is None or item.laterality == target.laterality


def _site_ok(item: LabelItem, target: Target, idx: _EntryIndex, term: Terminology) -> bool:
    if target.site:
        if item.site == target.site or (item.site and term.is_below(item.site, target.site)):
            return True
        return item.site is None and (target.site in idx.text_concepts
                                      or term.get(target.site).region == idx.text_region)
    if target.region:
        if item.site:
            return term.get(item.site).region == target.region or item.site == target.region
        return idx.text_region == target.region
    return True


def _match_target(target: Target, idx: _EntryIndex, term: Terminology) -> tuple[list[LabelInfo], str]:
    def ok(item: LabelItem, concepts) -> bool:
        return item.concept in concepts and _side_ok(item, target) and _site_ok(item, target, idx, term)

    direct = [li for li in idx.labels if any(ok(it, {target.concept}) for it in li.items)]
    simple = [li for li in direct if not li.compound]
    if simple:
        return simple, "direct"
    if direct:
        return direct, "direct (label names more than the target)"
    below = term.descendants(target.concept)
    if not below:
        return [], ""
    found = [li for li in idx.labels if not li.compound and any(ok(it, below) for it in li.items)]
    if not found:
        return [], ""
    concepts = {it.concept for li in found for it in li.items if it.concept in below}
    kind = term.get(target.concept).kind
    only_isa = all(below[c] == "is_a" for c in concepts)
    if kind == "lesion" or len(concepts) >= 2 or (kind == "anatomy" and only_isa):
        return found, f"union of {len(concepts)} sub-structure(s) of {target.concept}"
    return [], f"only {', '.join(sorted(concepts))} of {target.concept}: not the whole"


def _target_key(t: Target) -> tuple:
    return (t.concept, t.laterality, t.site)


def match_request(parsed: ParsedRequest, entries: list[Entry], terminology: Terminology | None = None,
                  ignore_modality: bool = False) -> RouteResult:
    """Match a parsed request against ``entries``; every entry that holds all targets is returned."""
    term = terminology or default_terminology()
    res = RouteResult(query=parsed.text, modality=parsed.modality, target=parsed.target_name, matches={},
                      parsed=parsed)
    if parsed.command not in ("segment", "refine") or not parsed.targets:
        res.message = parsed.message or f"'{parsed.text}' is a '{parsed.command}' command: nothing to route."
        return res
    details: list[Match] = []
    for entry in entries:
        mod_ok, why = (True, "modality ignored") if ignore_modality else modality_ok(entry, parsed.modality_spec)
        if not mod_ok:
            continue
        idx = _index(entry, term)
        # a single label naming exactly all targets ("kidney and masses")
        if len(parsed.targets) > 1:
            exact = [li for li in idx.labels if li.compound and len(li.items) == len(parsed.targets)
                     and all(any(it.concept == t.concept and _side_ok(it, t) for it in li.items)
                             for t in parsed.targets)]
            if exact:
                details.append(_mk(entry, exact, [why, "one label names all targets"]))
                continue
        used: list[LabelInfo] = []
        reasons = [why]
        for t in parsed.targets:
            found, how = _match_target(t, idx, term)
            if not found:
                used = []
                break
            used += found
            reasons.append(f"{t.name}: {how}: " + ", ".join(li.label.name for li in found))
        if used:
            details.append(_mk(entry, used, reasons))
    details.sort(key=lambda m: (-_index_num(entries, m.entry), m.entry))
    for r, m in enumerate(details):
        m.rank = r
    res.details = details
    res.matches = {m.entry: m.ids for m in details}
    if not details:
        res.message = _no_match_message(parsed, entries, term, ignore_modality)
    return res


def _mk(entry: Entry, labels: list[LabelInfo], reasons: list[str]) -> Match:
    ids = sorted({i for li in labels for i in li.label.ids})
    names = list(dict.fromkeys(li.label.name for li in labels))
    return Match(entry=entry.name, ids=ids, labels=names, reasons=reasons)


def _index_num(entries: list[Entry], name: str) -> int:
    return next((e.num_training for e in entries if e.name == name), 0)


_CACHE: dict[int, _EntryIndex] = {}


def _index(entry: Entry, term: Terminology) -> _EntryIndex:
    key = id(entry)
    cached = _CACHE.get(key)
    if cached is None or cached.entry is not entry:
        cached = _EntryIndex(entry, term)
        _CACHE[key] = cached
    return cached


def _no_match_message(parsed: ParsedRequest, entries: list[Entry], term: Terminology, ignored: bool) -> str:
    target = parsed.target_name
    if not ignored and parsed.modality_spec.alternatives:
        other = match_request(parsed, entries, term, ignore_modality=True)
        if other.matches:
            where = ", ".join(f"{n} ({next(e.modality_label for e in entries if e.name == n)})"
                              for n in list(other.matches)[:5])
            return (f"No model in the library segments {target} in {parsed.modality}. Models for {target} take "
                    f"other modalities: {where}. The chat can still segment it interactively.")
    return (f"No model in the library segments {target}; the chat can still segment it interactively with "
            "clicks or a box.")
