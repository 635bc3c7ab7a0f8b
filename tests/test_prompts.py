"""Prompt templating, emphasis, deterministic seeds and subsets."""

import pytest

from diffugen.config import SeedRange
from diffugen.prompts import (
    attribute_combinations,
    clean_prompt,
    parse_emphasis,
    plan_txt2img,
    sample_subset,
    seeds_for,
    template_fields,
    words_in,
)


def test_template_fields_and_combinations():
    assert template_fields("a {view} view of a {object} at {view}") == ["view", "object"]
    combos = attribute_combinations(["{a} {b}", "{a}"], {"a": ["1", "2"], "b": ["x"], "c": ["unused"]})
    assert combos == [("{a} {b}", {"a": "1", "b": "x"}), ("{a} {b}", {"a": "2", "b": "x"}),
                      ("{a}", {"a": "1"}), ("{a}", {"a": "2"})]
    with pytest.raises(ValueError, match="plain name"):
        template_fields("a {0} car")


def test_emphasis_parsing():
    chunks = [(c.text, round(c.weight, 4)) for c in parse_emphasis("a car++ with tires-- (in the city)+ and (fog:1.4), high-rise")]
    assert chunks == [("a ", 1.0), ("car", 1.21), (" with ", 1.0), ("tires", 0.81), (" ", 1.0), ("in the city", 1.1),
                      (" and ", 1.0), ("fog", 1.4), (", high-rise", 1.0)]
    assert clean_prompt("It's {sky}++ sky.".format(sky="clear")) == "It's clear sky."
    assert clean_prompt("(deformed car, anime:1.4), blurry") == "deformed car, anime, blurry"


def test_seeds_are_deterministic_and_independent_of_other_prompts():
    rng = SeedRange(min=100, max=200, count_per_prompt=3)
    a = seeds_for(rng, "t {x}", {"x": "1"})
    assert a == seeds_for(rng, "t {x}", {"x": "1"}) and len(set(a)) == 3 and all(100 <= s <= 200 for s in a)
    assert seeds_for([5, 6], "t", {}) == [5, 6]
    small = plan_txt2img(["t {x}"], {"x": ["1", "2"]}, rng, None, [])
    big = plan_txt2img(["t {x}"], {"x": ["1", "2", "3"]}, rng, None, [])
    assert {(i.key, i.seed) for i in small} <= {(i.key, i.seed) for i in big}


def test_image_count_subset_is_deterministic():
    assert sample_subset(10, None) == list(range(10))
    assert sample_subset(10, 20) == list(range(10))
    s = sample_subset(100, 7, "salt")
    assert s == sample_subset(100, 7, "salt") and len(s) == 7 and s == sorted(s)
    items = plan_txt2img(["{a} {b}"], {"a": list("abcd"), "b": list("xyz")}, [1, 2], 5, [])
    assert len(items) == 5 and len({i.key for i in items}) == 5  # image_count counts images
    assert [i.key for i in items] == [i.key for i in plan_txt2img(["{a} {b}"], {"a": list("abcd"), "b": list("xyz")}, [1, 2], 5, [])]


def test_class_words_found_as_whole_words():
    assert words_in("a car near a carpet and a <car-accident>", ["car", "bus", "<car-accident>"]) == ("car", "<car-accident>")
    assert words_in("a Bus++ at noon", ["bus"]) == ("bus",)
    assert words_in("a scar", ["car"]) == ()
