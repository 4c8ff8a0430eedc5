"""Placement: which nodes a run's tasks may go to, by their labels and resources.

A node carries **labels** (``region=eu``, set by whoever starts it) and **resources** (``cpus=8``,
``gpus=1``: detected at its start, or stated by hand). A run carries a **selector**, a
Kubernetes-style label selector with numeric comparisons on resources; the hub evaluates it
against every node's latest heartbeat, every round. docs/placement.md has the grammar.

A selector is terms joined by commas, and matches a node if and only if each term does (an
empty selector matches every node). A term looks a key up among the node's labels, then its
resources (a label hides a resource of the same key)::

    region in (eu,ch)    region notin (us)    site=berlin    site!=paris
    gpu                  !draining            gpus>=1        memory_gib>8

Invariants:

- ``parse_selector`` raises only ``SelectorError`` (an ``AppError`` and a ``ValueError``),
  whose message shows the offending character and a ``Hint:``; it reads at most
  ``MAX_SELECTOR`` characters and builds at most ``MAX_TERMS`` terms of at most ``MAX_VALUES``
  values: hostile input costs little.
- ``str(selector)`` parses back to an equal selector.
- Keys and values are names (``text.name_problem``) made of ``[A-Za-z0-9_./-]``; labels are held
  to the same rule (``label_problem``), so every label can be selected.
- ``!=`` and ``notin`` match a node without the key, as in Kubernetes; the numeric comparisons
  (``>``, ``>=``, ``<``, ``<=``) match only a node whose value is a finite number.

>>> selector = parse_selector("gpus>=1, region in (eu,ch), !draining")
>>> str(selector)
'gpus>=1,region in (eu,ch),!draining'
>>> selector.matches({"region": "eu"}, {"gpus": "2"})
True
>>> selector.matches({"region": "eu", "draining": "yes"}, {"gpus": "2"})
False
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from pollinate.errors import AppError
from pollinate.text import inert, name_problem

MAX_SELECTOR = 1000
"""The longest selector accepted, in characters."""

MAX_TERMS = 32
"""The most terms (comma-separated) in one selector."""

MAX_VALUES = 32
"""The most values in one ``in (...)`` or ``notin (...)`` term."""

MAX_LABELS = 64
"""The most labels, and separately the most resources, one node may report."""

_NAME = re.compile(r"[A-Za-z0-9_./-]+")
_OPERATOR = re.compile(r"==|=|!=|>=|<=|>|<")


MAX_RUN_NODES = 1_000_000
"""The largest ``min_nodes`` or ``max_nodes`` a run may ask for."""


class PlacementError(AppError, ValueError):
    """A placement that cannot be: a bad selector, node count or label; the message says how
    to fix it."""


class SelectorError(PlacementError):
    """A selector that cannot be parsed; the message shows where and how to fix it."""


class Op(Enum):
    """What a term asks of a key."""

    EXISTS = ""
    ABSENT = "!"
    EQ = "="
    NE = "!="
    IN = "in"
    NOTIN = "notin"
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


_NUMERIC = {Op.GT, Op.GE, Op.LT, Op.LE}
_COMPARE = {
    Op.GT: lambda a, b: a > b,
    Op.GE: lambda a, b: a >= b,
    Op.LT: lambda a, b: a < b,
    Op.LE: lambda a, b: a <= b,
}


@dataclass(frozen=True)
class Term:
    """One condition on one key: ``key``, ``!key``, ``key=v``, ``key in (a,b)``, ``key>=n``."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a node with these labels-and-resources satisfies this term."""
        value = attributes.get(self.key)
        if self.op is Op.EXISTS:
            return value is not None
        if self.op is Op.ABSENT:
            return value is None
        if self.op in (Op.EQ, Op.IN):
            return value in self.values
        if self.op in (Op.NE, Op.NOTIN):
            return value not in self.values
        number = _number(value)
        return number is not None and _COMPARE[self.op](number, float(self.values[0]))

    def __str__(self) -> str:
        if self.op is Op.EXISTS:
            return self.key
        if self.op is Op.ABSENT:
            return f"!{self.key}"
        if self.op in (Op.IN, Op.NOTIN):
            return f"{self.key} {self.op.value} ({','.join(self.values)})"
        return f"{self.key}{self.op.value}{self.values[0]}"


@dataclass(frozen=True)
class Selector:
    """Terms that must all match; the empty selector matches every node."""

    terms: tuple[Term, ...] = ()

    def matches(self, labels: Mapping[str, str], resources: Mapping[str, str]) -> bool:
        """Whether a node with these labels and resources satisfies every term."""
        attributes = {**resources, **labels}
        return all(term.matches(attributes) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(str(term) for term in self.terms)

    def __bool__(self) -> bool:
        return bool(self.terms)


@dataclass(frozen=True)
class Placement:
    """Where a run's tasks go: the nodes ``selector`` matches, once at least ``min_nodes`` of
    them do (0: as many as the strategy asks for), and at most ``max_nodes`` of them a round
    (0: all). PlacementError at construction if a count is negative, too large, or
    ``max_nodes`` is below ``min_nodes``.

    >>> placement = Placement(parse_selector("gpus>=1"), min_nodes=2, max_nodes=3)
    >>> str(placement)
    'on the nodes that match gpus>=1, at least 2 and at most 3 of them a round'
    >>> placement.pick([4, 7]), placement.pick([7]), placement.pick([9, 4, 7, 5])
    ([4, 7], [], [4, 5, 7])
    """

    selector: Selector = Selector()
    min_nodes: int = 0
    max_nodes: int = 0

    def __post_init__(self) -> None:
        example = "hub.submit_run(..., min_nodes=2, max_nodes=10)"
        for name in ("min_nodes", "max_nodes"):
            count = getattr(self, name)
            if not isinstance(count, int) or isinstance(count, bool):
                raise PlacementError(f"{name} must be an int, got {count!r}.\nHint: {example}")
            if not 0 <= count <= MAX_RUN_NODES:
                raise PlacementError(
                    f"{name}={count} is out of range: 0 (no bound) to {MAX_RUN_NODES}.\n"
                    f"Hint: {example}"
                )
        if 0 < self.max_nodes < self.min_nodes:
            raise PlacementError(
                f"max_nodes={self.max_nodes} is below min_nodes={self.min_nodes}: no round "
                f"could start.\nHint: raise max_nodes to at least {self.min_nodes}, or set it "
                "to 0 (no maximum)."
            )

    def pick(self, matching: Iterable[int]) -> list[int]:
        """The nodes a round may use of those that match now (sorted): none while fewer
        than ``min_nodes`` match (the round waits for more), else the ``max_nodes`` of lowest
        id (a stable choice: the same fleet gives the same nodes)."""
        nodes = sorted(matching)
        if len(nodes) < self.min_nodes:
            return []
        return nodes[: self.max_nodes] if self.max_nodes else nodes

    def __str__(self) -> str:
        parts = [f"on the nodes that match {self.selector}"] if self.selector else []
        counts = []
        if self.min_nodes:
            counts.append(f"at least {self.min_nodes}")
        if self.max_nodes:
            counts.append(f"at most {self.max_nodes}")
        if counts:
            parts.append(" and ".join(counts) + (" of them a round" if parts else " nodes a round"))
        return ", ".join(parts)

    def __bool__(self) -> bool:
        return bool(self.selector or self.min_nodes or self.max_nodes)


def parse_selector(text: str) -> Selector:
    """The selector ``text`` states; SelectorError, pointing at the bad character, if none.

    >>> parse_selector("site!=paris,gpu").terms[0]
    Term(key='site', op=<Op.NE: '!='>, values=('paris',))
    >>> try:
    ...     parse_selector("gpus>=x")
    ... except SelectorError as exc:
    ...     print(exc)
    selector 'gpus>=x': '>=' compares numbers, got 'x' at character 7:
      gpus>=x
            ^
    Hint: write a number after '>=' (gpus>=1, memory_gib>8.5).
    """
    if len(text) > MAX_SELECTOR:
        raise SelectorError(
            f"a selector is {len(text)} characters long, over the limit of {MAX_SELECTOR} "
            "(pollinate.placement.MAX_SELECTOR).\nHint: select on fewer, shorter labels."
        )
    return _Parser(text).selector()


def label_problem(key: str, value: str) -> str | None:
    """Why ``key=value`` cannot be a node's label or resource; None if it can.

    >>> label_problem("region", "eu") is None
    True
    >>> label_problem("my region", "eu")
    "key 'my region' holds ' ': keys and values are made of A-Z a-z 0-9 _ . / -"
    """
    for what, name in (("key", key), ("value", value)):
        if problem := name_problem(name):
            return f"{what} {inert(name, 40)!r} {problem}"
        if not _NAME.fullmatch(name):
            bad = next((c for c in name if not _NAME.fullmatch(c)), "")
            shown = "nothing" if not name else repr(inert(bad))
            return (
                f"{what} {inert(name, 40)!r} holds {shown}: "
                "keys and values are made of A-Z a-z 0-9 _ . / -"
            )
    return None


def parse_labels(pairs: Iterable[str], option: str = "label") -> dict[str, str]:
    """``["region=eu", "site=berlin"]`` (the values of ``--label``, or of ``--resources``)
    as a dict; ValueError with a Hint if one is not ``KEY=VALUE`` of names, or if there are
    more than ``MAX_LABELS``.

    >>> parse_labels(["region=eu", "gpus=2"])
    {'region': 'eu', 'gpus': '2'}
    """
    example = "gpus=2" if option == "resources" else "region=eu"
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        problem = "has no '='" if not sep else label_problem(key.strip(), value.strip())
        if problem:
            raise ValueError(
                f"--{option} {inert(pair, 80)!r}: {problem}.\nHint: --{option} {example} "
                f"(one KEY=VALUE per --{option}; repeat it for more)."
            )
        labels[key.strip()] = value.strip()
    if len(labels) > MAX_LABELS:
        raise ValueError(
            f"{len(labels)} --{option} pairs, over the limit of {MAX_LABELS} "
            "(pollinate.placement.MAX_LABELS).\nHint: keep those placement selects on."
        )
    return labels


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class _Parser:
    """A recursive-descent parser over ``text``, one position at a time."""

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def selector(self) -> Selector:
        self.space()
        if self.at == len(self.text):
            return Selector()
        terms = [self.term()]
        while self.peek(","):
            self.at += 1
            if len(terms) == MAX_TERMS:
                raise self.error(
                    f"more than {MAX_TERMS} terms (pollinate.placement.MAX_TERMS)",
                    "select on fewer labels: a term per key is enough",
                )
            terms.append(self.term())
        if self.at < len(self.text):
            raise self.error(
                f"unexpected {self.text[self.at]!r}",
                "separate terms with commas: region=eu,gpus>=1",
            )
        return Selector(tuple(terms))

    def term(self) -> Term:
        self.space()
        if self.peek("!") and not self.peek("!="):
            self.at += 1
            self.space()
            term = Term(self.name("key"), Op.ABSENT)
        else:
            term = self.after_key(self.name("key"))
        self.space()
        return term

    def after_key(self, key: str) -> Term:
        self.space()
        operator = _OPERATOR.match(self.text, self.at)
        if operator is not None:
            self.at = operator.end()
            op = Op("=" if operator.group() == "==" else operator.group())
            self.space()
            start = self.at
            value = self.name("value", after=operator.group())
            if op in _NUMERIC and _number(value) is None:
                self.at = start
                raise self.error(
                    f"{op.value!r} compares numbers, got {value!r}",
                    f"write a number after {op.value!r} ({key}>=1, memory_gib>8.5)",
                )
            return Term(key, op, (value,))
        word = _NAME.match(self.text, self.at)
        if word is not None and word.group() in ("in", "notin"):
            self.at = word.end()
            return Term(key, Op(word.group()), self.values(word.group()))
        if self.at < len(self.text) and not self.peek(","):
            raise self.error(
                f"unexpected {self.text[self.at]!r} after the key {key!r}",
                f"{key}=VALUE, {key}!=VALUE, {key} in (A,B), {key}>=N, or {key} alone",
            )
        return Term(key, Op.EXISTS)

    def values(self, word: str) -> tuple[str, ...]:
        self.space()
        if not self.peek("("):
            raise self.error(f"expected '(' after {word!r}", f"region {word} (eu,ch)")
        self.at += 1
        values = [self.name("value", after=f"{word} (")]
        while self.peek(","):
            self.at += 1
            if len(values) == MAX_VALUES:
                raise self.error(
                    f"more than {MAX_VALUES} values (pollinate.placement.MAX_VALUES)",
                    "label the nodes you want with one value and select on it",
                )
            values.append(self.name("value", after=","))
        if not self.peek(")"):
            raise self.error("expected ',' or ')'", f"region {word} (eu,ch)")
        self.at += 1
        return tuple(values)

    def name(self, what: str, after: str = "") -> str:
        self.space()
        found = _NAME.match(self.text, self.at)
        if found is None:
            where = f" after {after!r}" if after else ""
            got = "the end" if self.at == len(self.text) else repr(self.text[self.at])
            raise self.error(
                f"expected a {what}{where}, got {got}",
                f"{what}s are made of A-Z a-z 0-9 _ . / - (region in (eu,ch), gpus>=1, !draining)",
            )
        if problem := name_problem(found.group()):
            raise self.error(f"the {what} {problem}", f"use a shorter {what}")
        self.at = found.end()
        self.space()
        return found.group()

    def peek(self, literal: str) -> bool:
        return self.text.startswith(literal, self.at)

    def space(self) -> None:
        while self.at < len(self.text) and self.text[self.at] in " \t":
            self.at += 1

    def error(self, problem: str, hint: str) -> SelectorError:
        shown = inert(self.text, 200)
        caret = " " * min(self.at, len(shown)) + "^"
        return SelectorError(
            f"selector {shown!r}: {problem} at character {self.at + 1}:\n"
            f"  {shown}\n  {caret}\nHint: {hint}."
        )
