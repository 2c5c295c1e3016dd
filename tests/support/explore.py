"""Long randomized explorations: thousands of fresh hypothesis draws that look for new
counterexamples. They run only under `HYPOTHESIS_PROFILE=explore`; the default (CI)
profile is derandomized, and repeating a fixed sample thousands of times would only
cost minutes. A counterexample one of them finds belongs in its test as an `@example`.
"""

from __future__ import annotations

import pytest
from hypothesis import settings


def explore_only(what: str) -> pytest.MarkDecorator:
    """Skip unless the loaded hypothesis profile draws fresh examples."""
    return pytest.mark.skipif(
        settings().derandomize, reason=f"{what}: run with HYPOTHESIS_PROFILE=explore"
    )
