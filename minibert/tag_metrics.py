"""Tag schemes and entity-level scores for token tagging (named entities, chunks).

A tag is "O" (outside) or PREFIX-TYPE: "B-PER" begins a PER entity, "I-PER" is inside one,
and in BIOES "E-PER" ends one and "S-PER" is a single-word one. The schemes:
    IOB2   B- on every entity's first word, I- on the rest          B-PER I-PER O B-LOC
    IOB1   I- everywhere; B- only where an entity directly follows  I-PER I-PER O I-LOC
           one of the same type                                     (CoNLL-2003's files)
    BIOES  S- for a one-word entity, else B- I-... E-               B-PER E-PER O S-LOC
`check_tag` accepts the tags of a scheme; `convert_tags` rewrites a sequence in another.

Entities (`entities`) are read exactly as seqeval's default mode reads them (its
`get_entities`, which follows conlleval): leniently, so one reader serves every scheme and
ill-formed predictions still count. An entity begins at B- or S-, at I- or E- after O, E- or
S-, and wherever the type changes; it ends after E- or S-, before B-, S- or O, and where the
type changes. So "O I-PER I-PER" is one PER entity and "B-PER I-LOC" two.

Scores (`entity_scores`), as seqeval's precision_recall_fscore_support / classification_report
in its default mode: an entity is (type, first word, last word); a predicted entity is right
only when the gold sequence holds the same triple. Per type and micro-averaged over types:
    precision = TP / predicted entities, recall = TP / gold entities,
    F1 = 2 P R / (P + R), each 0 where its denominator is 0.
The sentences are read as one sequence with an "O" after each, as seqeval does, so no entity
spans two sentences.
"""

SCHEMES = {"IOB2": "BI", "IOB1": "BI", "BIOES": "BIES"}  # scheme -> the prefixes its tags may carry


def check_scheme(scheme, where="data"):
    """The scheme's name, upper-cased; ValueError for an unknown one."""
    name = str(scheme).upper()
    if name not in SCHEMES:
        raise ValueError(f"{where}: unknown tag scheme {scheme!r}: use {', '.join(SCHEMES)}")
    return name


def check_tag(tag, scheme, where="data"):
    """ValueError naming `where` unless `tag` is "O" or PREFIX-TYPE with a prefix of the scheme."""
    prefixes = SCHEMES[scheme]
    if tag == "O":
        return
    if not (isinstance(tag, str) and len(tag) > 2 and tag[0] in prefixes and tag[1] == "-"):
        forms = ", ".join(["O"] + [f"{p}-TYPE" for p in prefixes])
        raise ValueError(f"{where}: tag {tag!r} is not a {scheme} tag ({forms})")


def _split(tag):
    """(prefix, type) as seqeval reads a tag: "B-PER" -> ("B", "PER"), "O" -> ("O", "_")."""
    return tag[0], tag[1:].split("-", 1)[-1] or "_"


def entities(tags):
    """[(type, first, last)] of a tag sequence, read as seqeval's default mode reads it.

    seqeval's rules, for any tag strings: "." counts like "O" for a type change (a quirk kept
    so the counts are the same on any input)."""
    out = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):  # the "O" closes an entity at the end
        p, t = _split(tag)
        # an entity ends before i: after E or S, where B or I meets B, S or O, or the type changes
        if prev in ("E", "S") or (prev in ("B", "I") and p in ("B", "S", "O")) or \
                (prev not in ("O", ".") and prev_type != t):
            out.append((prev_type, begin, i - 1))
        # one starts at i: at B or S, at E or I after E, S or O, or where the type changes
        if p in ("B", "S") or (prev in ("E", "S", "O") and p in ("E", "I")) or \
                (p not in ("O", ".") and prev_type != t):
            begin = i
        prev, prev_type = p, t
    return out


def tags_from_entities(spans, n, scheme):
    """The n tags of a sentence holding the entities `spans` [(type, first, last)], in `scheme`."""
    tags = ["O"] * n
    last_end = {}  # type -> last word of the previous entity of that type (IOB1 needs it)
    for typ, a, b in sorted(spans, key=lambda s: s[1]):
        if scheme == "IOB2":
            tags[a:b + 1] = [f"B-{typ}"] + [f"I-{typ}"] * (b - a)
        elif scheme == "IOB1":
            # B- only where the entity touches the one before it of the same type
            first = "B" if last_end.get(typ) == a - 1 else "I"
            tags[a:b + 1] = [f"{first}-{typ}"] + [f"I-{typ}"] * (b - a)
        else:  # BIOES
            tags[a:b + 1] = [f"S-{typ}"] if a == b else [f"B-{typ}"] + [f"I-{typ}"] * (b - a - 1) + [f"E-{typ}"]
        last_end[typ] = b
    return tags


def convert_tags(tags, scheme):
    """The same entities (as `entities` reads them) written in `scheme` ("IOB2", "IOB1", "BIOES")."""
    return tags_from_entities(entities(tags), len(tags), check_scheme(scheme))


def _prf(tp, n_pred, n_true):
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": n_true}


def entity_scores(true_sentences, pred_sentences):
    """Entity-level precision, recall, F1 and support (gold entities), micro over all types,
    and per type under "per_type" (the types in the gold or the predicted tags), as seqeval.

    Both are lists of tag sequences, sentence by sentence, of equal lengths."""
    if len(true_sentences) != len(pred_sentences):
        raise ValueError(f"{len(true_sentences)} gold sentences but {len(pred_sentences)} predicted")
    for k, (t, p) in enumerate(zip(true_sentences, pred_sentences)):
        if len(t) != len(p):
            raise ValueError(f"sentence {k + 1}: {len(t)} gold tags but {len(p)} predicted")

    def spans(sentences):  # one sequence with an "O" after each sentence, as seqeval reads a list of them
        return set(entities([tag for s in sentences for tag in list(s) + ["O"]]))

    gold, pred = spans(true_sentences), spans(pred_sentences)
    types = sorted({e[0] for e in gold | pred})
    per_type = {}
    for typ in types:
        g, q = {e for e in gold if e[0] == typ}, {e for e in pred if e[0] == typ}
        per_type[typ] = _prf(len(g & q), len(q), len(g))
    out = _prf(len(gold & pred), len(pred), len(gold))
    out["per_type"] = per_type
    return out
