"""The default tagging, QA and multiple-choice tasks: labels read mechanically off the standard
library's functions (their docstrings and their defs), never written by a person, so they run
offline.

Source (documented_functions): every function and method whose docstring is a document of
the embedded corpus (corpus.stdlib_documents, read with ast, nothing imported), with the
parameter names its def lists (positional-only, ordinary, *args, keyword-only, **kwargs).
The split is pretraining's own: an example is held out exactly when its docstring's document
is (corpus.is_heldout, with the pretraining run's heldout_fraction), so fine-tuning trains
only on text pretraining trained on and is evaluated only on text it held out.

Tagging (tag_sentences, default_tag_task): which words of a docstring name one of its
function's parameters? The model sees the docstring only, never the signature.
  - Words: WORD cuts the text into runs of letters, digits and underscores, and single other
    characters, so punctuation, quotes and backticks are words of their own: "Open `path`."
    is  Open ` path ` .  (Python identifiers are single words.)
  - A word is B-PARAM when it equals, case and all, a parameter name other than self and cls
    of two or more characters (one letter, "a" or "s", is as often an article or a letter),
    and the character before it is not "." (os.path, self.name: an attribute); every other
    word is O. A parameter name is one word, so every entity is one word (IOB2, B- only).
    The rule is the text's, not a reader's: in a function with a `name` parameter, "the name
    of" is tagged too.
  - Sentences: the corpus's sentences of the docstring, packed in order into pieces of at
    most MAX_WORDS words (a longer sentence cut every MAX_WORDS words). Kept: each piece with
    a B-PARAM word, and, as the one negative a function may give, its first piece when that
    names no parameter although the function has a taggable one.

QA (qa_examples, default_qa_task), SQuAD v1.1 style (every question answerable): the context
is the docstring's text as pretraining read it (Document.text), the answer a span of one of
its sentences, its answer_start the character where it begins. With f the function's name:
  - Return: the first sentence that begins "Return ", "Returns ", ":return: " or ":returns: "
    (not "Return value is") and gives an answer. Its object, what follows the verb up to the
    first clause end (",", ";", ":", " (", ". ", " if ", " when ", " unless ", " because ",
    " where ", " which ", or the sentence's end), answers "What does `f` return?". When the
    object is True or False (either case) and " if " or " when " follows, the question is
    "When does `f` return True?" (as written) and the answer the condition, up to the
    first "," or ";" or the sentence's end.
  - Parameter: a sentence that begins as a parameter's description, "p -- text", "p - text",
    "p: text" or ":param p: text" (also "*p", "**p", ":param type p:"), p a parameter of the
    function other than self and cls: "What is `p`?", answered by the text up to the first
    ". ", the next reST field (" :return:"), the next such description of another parameter
    (lists written without line breaks), or the sentence's end.
  - Prose: otherwise, the first clause "p is a ...", "p must be the ...", "p should be
    either ..." in a sentence (is, must be or should be, then a, an, the or either; p
    perhaps in quotes or backticks, not after "if", "whether", "when", "unless" or "while"):
    "What is `p`?", answered from the article up to the first clause end.
  Each parameter is asked about once, at its first description of either kind. Every answer
  loses a final ".", ",", ";" or ":", has 1 to MAX_ANSWER_WORDS words, and is dropped when
  its brackets do not pair up (a cut inside them).

Multiple choice (choice_examples, default_choice_task), SWAG style: which sentence comes next?
  - Pairs (choice_pairs): each function whose docstring's first two sentences differ and have
    MIN_CHOICE_WORDS to MAX_CHOICE_WORDS words each; the context is the first, the true ending
    the second. Split by document as the other tasks; a held-out pair whose first sentence
    begins a training pair too ("Acquire a lock.") is left out, so no context is on both sides.
  - Distractors: N_CHOICES - 1 true endings of other pairs of the same split (so a held-out
    example shows only held-out text), distinct, none equal to the true ending nor one that
    is, or begins, the text after the same context in any document of the corpus (a sentence
    the splitter did not cut, "... asynchronously. addr is ...", counts); taken from the pairs
    of the same module, or of the whole split when the module has too few, within the true
    ending's length band (lengths in characters cut at the powers of LENGTH_RATIO), the ones
    sharing the most lowercased words with the context first, then the nearest in length,
    then in text order. A pair with too few such distractors is left out.
  - Label: the n-th example of a split (in the corpus's order) puts its true ending at index
    n % N_CHOICES, the distractors in their order around it, so each index is the answer
    equally often (chance 1 / N_CHOICES).

Files (write_default_tasks): tags as CoNLL, "word tag" a line and a blank line after each
sentence (tag_data.read_tagged reads them), QA as SQuAD v1.1 JSON, one article per
function (qa_data.read_squad reads them), choices as JSON lines {"context", "endings",
"label"} (choice_data.read_choices reads them).
"""
import ast
import inspect
import json
import math
import os
import re
import sysconfig
from dataclasses import dataclass

from minibert.atomic import atomic_write
from minibert.choice_data import ChoiceExample
from minibert.corpus import Document, docstring_sentences, is_heldout, stdlib_documents
from minibert.qa_data import QAExample, write_json
from minibert.tag_data import TaggedSentence, write_conll

WORD = re.compile(r"\w+|[^\w\s]")
PARAM_TAG = "B-PARAM"
MAX_WORDS = 64          # words per tagged sentence
MAX_ANSWER_WORDS = 20   # longer answers are dropped (postprocess_qa keeps spans of 30 tokens)
N_CHOICES = 4           # endings per multiple-choice example
MIN_CHOICE_WORDS, MAX_CHOICE_WORDS = 3, 48  # words per context and per ending
LENGTH_RATIO = 2.0      # a distractor's length band: lengths in characters from r**k to r**(k + 1)
NOT_TAGGED = frozenset({"self", "cls"})
_functions_cache = {}


@dataclass(frozen=True)
class DocumentedFunction:
    document: Document  # its docstring as the corpus holds it (source: module, name: qualified name)
    path: str           # the .py file of its def
    lineno: int         # the line of its def
    params: tuple       # its parameter names, in the def's order


# ----------------------------------------------------------------------------------------
# the functions behind the corpus's docstrings


def _module_path(stdlib, module):
    base = os.path.join(stdlib, *module.split("."))
    return base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")


def _param_names(args):
    """Parameter names of an ast.arguments, in the def's order."""
    names = [a.arg for a in args.posonlyargs + args.args]
    names += [args.vararg.arg] if args.vararg else []
    names += [a.arg for a in args.kwonlyargs]
    return tuple(names + ([args.kwarg.arg] if args.kwarg else []))


def documented_functions(stdlib=None):
    """Every function and method of the standard library whose docstring is a corpus document,
    in the corpus's order (file, then source order); read once per process."""
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    if stdlib in _functions_cache:
        return list(_functions_cache[stdlib])
    docs = stdlib_documents(stdlib=stdlib)
    corpus = {(d.source, d.name, d.sentences) for d in docs}
    out = []
    for module in dict.fromkeys(d.source for d in docs):
        path = _module_path(stdlib, module)
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)

        def visit(node, qual):
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                name = f"{qual}.{child.name}"
                doc = None if isinstance(child, ast.ClassDef) else ast.get_docstring(child, clean=False)
                if doc:  # built as stdlib_documents builds it, so it is the corpus's document
                    sentences = tuple(docstring_sentences(inspect.cleandoc(doc)))
                    if (module, name, sentences) in corpus:
                        out.append(DocumentedFunction(Document(sentences, module, name), path, child.lineno,
                                                      _param_names(child.args)))
                visit(child, name)

        visit(tree, module)
    _functions_cache[stdlib] = tuple(out)
    return out


def _split(functions, examples_of, heldout_fraction):
    train, heldout = [], []
    for fn in functions:
        (heldout if is_heldout(fn.document, heldout_fraction) else train).extend(examples_of(fn))
    return train, heldout


# ----------------------------------------------------------------------------------------
# tagging: the words that name a parameter


def taggable(params):
    """The parameter names a word can be tagged with: not self or cls, two letters or more."""
    return {p for p in params if p not in NOT_TAGGED and len(p) > 1}


def tagged_pieces(sentences, params, max_words=MAX_WORDS):
    """Every piece of the sentences (whole sentences packed up to max_words words, a longer
    one cut), each word tagged B-PARAM or O by the rule in the module docstring."""
    names = taggable(params)
    pieces, words, tags = [], [], []
    for s in sentences:
        found = [(m.group(), PARAM_TAG if m.group() in names and s[m.start() - 1:m.start()] != "." else "O")
                 for m in WORD.finditer(s)]
        if words and len(words) + len(found) > max_words:
            pieces.append(TaggedSentence(words, tags))
            words, tags = [], []
        for w, t in found:
            if len(words) == max_words:
                pieces.append(TaggedSentence(words, tags))
                words, tags = [], []
            words.append(w)
            tags.append(t)
    if words:
        pieces.append(TaggedSentence(words, tags))
    return pieces


def tag_sentences(fn, max_words=MAX_WORDS):
    """The kept tagged sentences of one function: its pieces that name a parameter, and its
    first piece when that names none though the function has a taggable parameter."""
    pieces = tagged_pieces(fn.document.sentences, fn.params, max_words)
    keep = [p for p in pieces if PARAM_TAG in p.tags]
    if pieces and PARAM_TAG not in pieces[0].tags and taggable(fn.params):
        keep.insert(0, pieces[0])
    return keep


def default_tag_task(heldout_fraction=0.05, max_words=MAX_WORDS):
    """(train, heldout) TaggedSentences (tags B-PARAM and O), split as pretraining split."""
    return _split(documented_functions(), lambda fn: tag_sentences(fn, max_words), heldout_fraction)


# ----------------------------------------------------------------------------------------
# question answering: what a function returns, what its parameters are


# an object or a description ends at a clause: , ; : " (" if when unless because where which, ". ", or the end
_CLAUSE_END = r"[,;:]|\s\(|\s(?:if|when|unless|because|where|which)\s|\.\s|\.?$"
_RETURN = re.compile(r"(?:Returns?\s+(?!values?\s+(?:is|are)\s)|:returns?:\s*)(.+?)" + f"(?={_CLAUSE_END})")
_CONDITION = re.compile(r"\s(?:if|when)\s+(.+?)(?=[,;]|\.?$)")
_BOOLEANS = ("True", "False", "true", "false")
_PROSE = re.compile(r"(?<![.\w])[`'\"]*(\w+)[`'\"]*\s+(?:is|must be|should be)\s+((?:a|an|the|either)\s.+?)"
                    f"(?={_CLAUSE_END})")
_CONDITIONAL = ("if", "whether", "when", "unless", "while")
_PARAM = re.compile(r"(?::(?:param|parameter|arg|argument|key|keyword)\s+(?:[^:\s]+\s+)*?\*{0,2}(\w+):\s+"
                    r"|\*{0,2}(\w+)\s*(?:--?|:)\s+)")


def _answer(sentence, start, end, stops=()):
    """(start, end) in the sentence of the answer text[start:end], cut at the first of `stops`
    (regexes) after its start, trailing punctuation and spaces dropped; None when it is empty,
    longer than MAX_ANSWER_WORDS words, or its brackets do not pair up."""
    for stop in stops:
        m = stop.search(sentence, start, end)
        if m:
            end = m.start()
    while end > start and sentence[end - 1] in " .,;:":
        end -= 1
    text = sentence[start:end]
    if any(text.count(a) != text.count(b) for a, b in ("()", "[]", "{}")):
        return None  # cut inside brackets
    return (start, end) if 1 <= len(text.split()) <= MAX_ANSWER_WORDS else None


def return_question(name, sentence):
    """(question, answer start, answer end) of a "Return ..." sentence, or None."""
    m = _RETURN.match(sentence)
    if not m:
        return None
    obj = m.group(1)
    if obj in _BOOLEANS:
        c = _CONDITION.match(sentence, m.end(1))
        if not c:
            return None
        span = _answer(sentence, c.start(1), c.end(1))
        return (f"When does `{name}` return {obj}?", *span) if span else None
    span = _answer(sentence, m.start(1), m.end(1))
    return (f"What does `{name}` return?", *span) if span else None


def param_question(sentence, params):
    """(parameter, question, answer start, answer end) of a sentence that begins as the
    description of one of params, or None."""
    names = params - NOT_TAGGED
    m = _PARAM.match(sentence)
    p = m and (m.group(1) or m.group(2))
    if not p or p not in names:
        return None
    others = [re.escape(q) for q in sorted(names - {p})]
    stops = [re.compile(r"\.\s|\s:[a-z]+[\s:]")]  # a sentence's end, the next reST field (:return:)
    if others:  # the next parameter's description, in a list written as one line
        stops.append(re.compile(rf"\s\*{{0,2}}(?:{'|'.join(others)})\s*(?:--?|:)\s"))
    span = _answer(sentence, m.end(), len(sentence), stops)
    return (p, f"What is `{p}`?", *span) if span else None


def prose_question(sentence, params):
    """(parameter, question, answer start, answer end) of the first "p is a ..." clause of the
    sentence about one of params (not after "if", "whether", "when", "unless", "while"), or None."""
    names = params - NOT_TAGGED
    for m in _PROSE.finditer(sentence):
        before = sentence[:m.start()].split()[-1:]
        if m.group(1) in names and not (before and before[0].lower() in _CONDITIONAL):
            span = _answer(sentence, m.start(2), m.end(2))
            if span:
                return (m.group(1), f"What is `{m.group(1)}`?", *span)
    return None


def qa_examples(fn):
    """The QA examples of one function (module docstring's rules): its return question, then a
    question per described parameter, each answer's answer_start an index into the context."""
    context = fn.document.text
    name = fn.document.name.rsplit(".", 1)[-1]
    ident = f"{fn.document.name}:{fn.lineno}"
    out, offset, asked, returned = [], 0, set(), False
    for s in fn.document.sentences:  # Document.text joins the sentences with one space
        r = None if returned else return_question(name, s)
        if r:
            q, a, b = r
            out.append(QAExample(f"{ident}:return", q, context, [(s[a:b], offset + a)], title=fn.document.name))
            returned = True
        p = param_question(s, set(fn.params)) or prose_question(s, set(fn.params))
        if p and p[0] not in asked:
            param, q, a, b = p
            out.append(QAExample(f"{ident}:param:{param}", q, context, [(s[a:b], offset + a)],
                                 title=fn.document.name))
            asked.add(param)
        offset += len(s) + 1
    return out


def default_qa_task(heldout_fraction=0.05):
    """(train, heldout) QAExamples (SQuAD v1.1: every question answerable), split as pretraining split."""
    return _split(documented_functions(), qa_examples, heldout_fraction)


# ----------------------------------------------------------------------------------------
# multiple choice: which sentence comes next in a docstring?


def choice_pairs(functions):
    """(function, first sentence, second sentence) of each function whose docstring's first two
    sentences are distinct and each have MIN_CHOICE_WORDS to MAX_CHOICE_WORDS words."""
    out = []
    for fn in functions:
        s = fn.document.sentences
        fits = all(MIN_CHOICE_WORDS <= len(x.split()) <= MAX_CHOICE_WORDS for x in s[:2])
        if len(s) >= 2 and s[0] != s[1] and fits:
            out.append((fn, s[0], s[1]))
    return out


def shared_words(text):
    """The lowercased words of text (runs of letters and digits) that a distractor is matched on."""
    return set(re.findall(r"[^\W_]+", text.lower()))


def length_bin(text):
    """Its length band: lengths in characters cut at the powers of LENGTH_RATIO (fixed bands, so
    the true ending is no more often the middle one than any ending)."""
    return int(math.log(len(text)) / math.log(LENGTH_RATIO))


def choice_examples(pairs, n_choices=N_CHOICES, documents=()):
    """A ChoiceExample per (function, context, true ending) of pairs (one split), by the rule
    in the module docstring: distractors are other pairs' true endings, the n-th example's
    label n % n_choices; a pair with too few distractors of its length band is left out. No
    distractor is, or begins, the text that follows the context in a pair or in one of documents."""
    by_module = {}
    for fn, _, ending in pairs:
        by_module.setdefault(fn.document.source, []).append(ending)
    follows = {}  # context -> the texts after it in a pair's or a document's docstring
    for d in [p[0].document for p in pairs] + list(documents):
        if len(d.sentences) > 1:
            follows.setdefault(d.sentences[0], set()).add(" ".join(d.sentences[1:]))

    def goes_on(context, e):  # e is, or begins, what follows context somewhere
        return any(t == e or t.startswith(e + " ") for t in follows[context])
    everyone = [e for _, _, e in pairs]
    out = []
    for fn, context, true in pairs:
        words, band = shared_words(context), length_bin(true)

        def nearest(pool):  # in its length band, most words shared with the context, then the nearest in length
            fits = sorted({e for e in pool if length_bin(e) == band and not goes_on(context, e)},
                          key=lambda e: (-len(words & shared_words(e)), abs(len(e) - len(true)), e))
            return fits[:n_choices - 1]
        wrong = nearest(by_module[fn.document.source])
        if len(wrong) < n_choices - 1:  # too few in the module: the whole split's
            wrong = nearest(everyone)
        if len(wrong) < n_choices - 1:
            continue
        label = len(out) % n_choices
        out.append(ChoiceExample(context, wrong[:label] + [true] + wrong[label:], label))
    return out


def default_choice_task(heldout_fraction=0.05, n_choices=N_CHOICES):
    """(train, heldout) ChoiceExamples of n_choices endings, split as pretraining split; each
    split's distractors are drawn from that split only, and none follows its context in any
    document of the corpus (a module's or a class's docstring included); a held-out pair whose
    context is a training pair's is left out."""
    train, heldout = [], []
    for p in choice_pairs(documented_functions()):
        (heldout if is_heldout(p[0].document, heldout_fraction) else train).append(p)
    seen = {context for _, context, _ in train}  # a first sentence two docstrings share is asked in training only
    heldout = [p for p in heldout if p[1] not in seen]
    documents = stdlib_documents()
    return choice_examples(train, n_choices, documents), choice_examples(heldout, n_choices, documents)


# ----------------------------------------------------------------------------------------
# files a user can read, in the formats the readers take


def squad_json(examples):
    """SQuAD v1.1 JSON of the examples: an article per title, a paragraph per context."""
    data = []
    for e in examples:
        if not data or data[-1]["title"] != e.title:
            data.append({"title": e.title, "paragraphs": []})
        paras = data[-1]["paragraphs"]
        if not paras or paras[-1]["context"] != e.context:
            paras.append({"context": e.context, "qas": []})
        paras[-1]["qas"].append({"id": e.id, "question": e.question,
                                 "answers": [{"text": t, "answer_start": a} for t, a in e.answers]})
    return {"version": "1.1", "data": data}


def choice_jsonl(examples):
    """JSON lines of the examples, {"context", "endings", "label"} each."""
    return "".join(json.dumps({"context": e.context, "endings": e.endings, "label": e.label}, ensure_ascii=False)
                   + "\n" for e in examples)


def write_default_tasks(out_dir, heldout_fraction=0.05):
    """Write tags.{train,heldout}.conll, qa.{train,heldout}.json and choice.{train,heldout}.jsonl
    to out_dir (each atomically); returns {file name: number of sentences, questions or examples}."""
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    tags, qa = default_tag_task(heldout_fraction), default_qa_task(heldout_fraction)
    for split, choices in zip(("train", "heldout"), default_choice_task(heldout_fraction)):
        atomic_write(os.path.join(out_dir, f"choice.{split}.jsonl"), choice_jsonl(choices))
        counts[f"choice.{split}.jsonl"] = len(choices)
    for split, sentences, examples in zip(("train", "heldout"), tags, qa):
        # conll_text writes "word tag" for sentences without gold tags and the tags as predictions
        write_conll(os.path.join(out_dir, f"tags.{split}.conll"),
                    [TaggedSentence(s.words) for s in sentences], [s.tags for s in sentences])
        write_json(os.path.join(out_dir, f"qa.{split}.json"), squad_json(examples))
        counts[f"tags.{split}.conll"], counts[f"qa.{split}.json"] = len(sentences), len(examples)
    return counts
