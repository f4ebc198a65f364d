"""The embedded world: scene grammar, layout sampler, renderer, exact evaluator and prompt suites."""

from .evaluator import Verdict, evaluate, find_objects
from .grammar import Entity, PromptError, Relation, Scene, parse_prompt, to_prompt
from .layout import LayoutError, sample_layout
from .render import Placed, render, to_uint8
from .suites import ASPECTS, CATEGORIES, CATEGORY_ASPECT, SUITE_VERSION, list_categories, load_suite

__all__ = [
    "ASPECTS",
    "CATEGORIES",
    "CATEGORY_ASPECT",
    "SUITE_VERSION",
    "Entity",
    "LayoutError",
    "Placed",
    "PromptError",
    "Relation",
    "Scene",
    "Verdict",
    "evaluate",
    "find_objects",
    "list_categories",
    "load_suite",
    "parse_prompt",
    "render",
    "sample_layout",
    "to_prompt",
    "to_uint8",
]
