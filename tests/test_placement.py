"""Selectors: Kubernetes-style label selectors plus numeric comparisons on resources."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pollinate.placement import (
    MAX_LABELS,
    MAX_SELECTOR,
    MAX_TERMS,
    MAX_VALUES,
    Op,
    Placement,
    PlacementError,
    Selector,
    SelectorError,
    Term,
    label_problem,
    parse_labels,
    parse_selector,
)

NODE = {"region": "eu", "site": "berlin", "gpu": "a100"}
RESOURCES = {"gpus": "2", "memory_gib": "15.5", "cpus": "8", "os": "Linux"}


def matches(
    text: str, labels: dict[str, str] = NODE, resources: dict[str, str] = RESOURCES
) -> bool:
    return parse_selector(text).matches(labels, resources)


# --- hand cases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("region in (eu,ch)", True),
        ("region in (us, ch)", False),
        ("region notin (us)", True),
        ("region notin (eu)", False),
        ("zone notin (us)", True),  # a node without the key is not in the set
        ("site=berlin", True),
        ("site==berlin", True),
        ("site=paris", False),
        ("site!=paris", True),
        ("zone!=paris", True),  # as in Kubernetes: no key, not equal
        ("gpu", True),
        ("tpu", False),
        ("!draining", True),
        ("!gpu", False),
        ("gpus>=1", True),
        ("gpus>=3", False),
        ("gpus>2", False),
        ("gpus<3", True),
        ("gpus<=2", True),
        ("memory_gib>8", True),
        ("memory_gib>15.5", False),
        ("os>1", False),  # not a number: no numeric comparison matches
        ("tpus>=0", False),  # no such resource
        ("os=Linux", True),
        ("gpus>=1, region in (eu,ch), !draining", True),
        ("gpus>=1,region in (eu,ch),draining", False),
        ("", True),
        ("   ", True),
    ],
)
def test_hand_cases(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_a_label_hides_a_resource_of_the_same_key() -> None:
    assert matches("gpus=0", {"gpus": "0"}, {"gpus": "2"})
    assert not matches("gpus>=1", {"gpus": "0"}, {"gpus": "2"})


def test_the_empty_selector_matches_every_node_and_is_false() -> None:
    assert parse_selector("") == Selector()
    assert not Selector()
    assert Selector().matches({}, {})


def test_parsed_terms_are_what_they_say() -> None:
    assert parse_selector(" region in ( eu , ch ) , !draining , gpus >= 1 ").terms == (
        Term("region", Op.IN, ("eu", "ch")),
        Term("draining", Op.ABSENT),
        Term("gpus", Op.GE, ("1",)),
    )


# --- errors point at the offending character ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at", "problem"),
    [
        ("gpus>=", 7, "expected a value after '>=', got the end"),
        ("gpus>=x", 7, "'>=' compares numbers, got 'x'"),
        ("gpus>inf", 6, "'>' compares numbers"),
        ("region in eu", 11, "expected '(' after 'in'"),
        ("region in (eu", 14, "expected ',' or ')'"),
        ("region in ()", 12, "expected a value after 'in ('"),
        ("region eu", 8, "unexpected 'e' after the key 'region'"),
        ("region=eu;site=x", 10, "unexpected ';'"),
        ("a,,b", 3, "expected a key, got ','"),
        ("a,", 3, "expected a key, got the end"),
        ("!=x", 1, "expected a key, got '!'"),
        ("re gion=eu", 4, "unexpected 'g' after the key 're'"),
        ("site=ber\nlin", 9, "unexpected '\\n'"),
    ],
)
def test_errors_point_at_the_offending_character(text: str, at: int, problem: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    message = str(caught.value)
    assert f"{problem}" in message
    assert f"at character {at}:" in message
    lines = message.splitlines()
    assert lines[-1].startswith("Hint: ")
    assert lines[-2].index("^") == 2 + at - 1  # under the character, after the indent


def test_a_selector_error_is_a_value_error_and_shows_text_inert() -> None:
    with pytest.raises(ValueError, match=r"\\x1b") as caught:
        parse_selector("a=\x1b[2J")
    assert "\x1b" not in str(caught.value)


# --- hostile input is bounded ------------------------------------------------------------------


def test_a_huge_selector_is_refused_before_it_is_read() -> None:
    started = time.perf_counter()
    with pytest.raises(SelectorError, match="MAX_SELECTOR"):
        parse_selector("a," * 10_000_000)
    assert time.perf_counter() - started < 1.0  # only its length was looked at


def test_terms_values_and_names_are_bounded() -> None:
    parse_selector(",".join(f"k{i}" for i in range(MAX_TERMS)))
    with pytest.raises(SelectorError, match="MAX_TERMS"):
        parse_selector(",".join(f"k{i}" for i in range(MAX_TERMS + 1)))
    values = ",".join(str(i) for i in range(MAX_VALUES))
    parse_selector(f"k in ({values})")
    with pytest.raises(SelectorError, match="MAX_VALUES"):
        parse_selector(f"k in ({values},x)")
    with pytest.raises(SelectorError, match="MAX_NAME"):
        parse_selector("k" * 300)
    assert len("k" * 300) < MAX_SELECTOR


# --- labels --------------------------------------------------------------------------------------


def test_labels_are_names_a_selector_can_spell() -> None:
    assert parse_labels(["region=eu", " site = berlin "]) == {"region": "eu", "site": "berlin"}
    assert label_problem("gpu-model", "a100") is None
    for pair, problem in [
        ("region", "has no '='"),
        ("my region=eu", "holds ' '"),
        ("region=", "holds nothing"),
        ("=eu", "holds nothing"),
        ("region=e\nu", "control character"),
        (f"{'k' * 300}=v", "MAX_NAME"),
    ]:
        with pytest.raises(ValueError, match="Hint: --label region=eu") as caught:
            parse_labels([pair])
        assert problem in str(caught.value)


def test_a_node_has_at_most_max_labels() -> None:
    parse_labels(f"k{i}=v" for i in range(MAX_LABELS))
    with pytest.raises(ValueError, match="MAX_LABELS"):
        parse_labels(f"k{i}=v" for i in range(MAX_LABELS + 1))


# --- properties ----------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True)
numbers = st.integers(-1000, 1000).map(str) | st.integers(-(10**6), 10**6).map(
    lambda i: str(i / 100)
)
terms = st.one_of(
    st.builds(Term, names, st.sampled_from([Op.EXISTS, Op.ABSENT])),
    st.builds(Term, names, st.sampled_from([Op.EQ, Op.NE]), st.tuples(names)),
    st.builds(
        Term,
        names,
        st.sampled_from([Op.IN, Op.NOTIN]),
        st.lists(names, min_size=1, max_size=4).map(tuple),
    ),
    st.builds(Term, names, st.sampled_from([Op.GT, Op.GE, Op.LT, Op.LE]), st.tuples(numbers)),
)
selectors = st.lists(terms, max_size=6).map(lambda ts: Selector(tuple(ts)))
attributes = st.dictionaries(names, names | numbers, max_size=8)


@given(selectors)
def test_a_printed_selector_parses_back_to_itself(selector: Selector) -> None:
    assert parse_selector(str(selector)) == selector


@given(selectors, attributes, attributes)
def test_a_selector_matches_if_and_only_if_each_of_its_terms_does(
    selector: Selector, labels: dict[str, str], resources: dict[str, str]
) -> None:
    each = [Selector((term,)).matches(labels, resources) for term in selector.terms]
    assert selector.matches(labels, resources) is all(each)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_a_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        assert str(exc).splitlines()[-1].startswith("Hint: ")
    else:
        assert parse_selector(str(selector)) == selector


# --- a run's placement: its selector and node counts ------------------------------------------


def test_a_placement_waits_for_min_nodes_and_takes_at_most_max_nodes_of_lowest_id() -> None:
    assert Placement().pick([3, 1, 2]) == [1, 2, 3]
    assert Placement(min_nodes=3).pick([5, 1]) == []
    assert Placement(min_nodes=3).pick([5, 1, 4]) == [1, 4, 5]
    assert Placement(max_nodes=2).pick([5, 1, 4]) == [1, 4]
    assert Placement(min_nodes=2, max_nodes=2).pick([9, 8, 7]) == [7, 8]


def test_a_placement_says_what_it_asks_for() -> None:
    assert not Placement() and str(Placement()) == ""
    assert str(Placement(parse_selector("gpus>=1"))) == "on the nodes that match gpus>=1"
    assert str(Placement(min_nodes=2)) == "at least 2 nodes a round"
    assert (
        str(Placement(parse_selector("a"), 0, 4))
        == "on the nodes that match a, at most 4 of them a round"
    )


@pytest.mark.parametrize(
    ("min_nodes", "max_nodes", "problem"),
    [
        (-1, 0, "min_nodes=-1 is out of range"),
        (0, 10**7, "max_nodes=10000000 is out of range"),
        (3, 2, "max_nodes=2 is below min_nodes=3"),
        (1.5, 0, "min_nodes must be an int, got 1.5"),
        (0, False, "max_nodes must be an int, got False"),
    ],
)
def test_node_counts_that_cannot_be_are_refused_with_the_fix(
    min_nodes: int, max_nodes: int, problem: str
) -> None:
    with pytest.raises(PlacementError, match=rf"(?s){problem}.*\nHint: "):
        Placement(min_nodes=min_nodes, max_nodes=max_nodes)


def test_a_selector_error_is_a_placement_error() -> None:
    with pytest.raises(PlacementError):
        parse_selector("gpus>>1")
