"""ReNO: reward-based noise optimisation of one- and two-step generators.

``reno.py`` optimises a batch of initial noises against a weighted sum of reward losses;
``generator.py`` wraps a differentiable base plus ReNO as a generator, which importing this
package registers as the generator prefix ``reno:`` (``reno:BASE,REWARD=W,...``); ``tasks.py``,
``runner.py`` and ``cli.py`` are the prompt sets, the resumable run and ``compalign reno``.
"""

from __future__ import annotations

from ..generators.adapters import register_generator
from .generator import reno_factory

register_generator("reno", reno_factory)
