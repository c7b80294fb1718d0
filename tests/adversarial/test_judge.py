"""The red-team kit: :func:`zkapex_flwr.testing.judge` runs one behaviour against the real verifier.

The README's custom cheat (half the Group-OBS compensation) is run by ``tests/test_readme.py`` and must
be caught; here the same judge must accept an honest bundle, so that "caught" means something.
"""

import pytest

from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.testing import judge

pytestmark = [pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")]


def honest(prover, mask, request, context) -> bytes:
    return cheat_bundle(prover, mask, request.request_id, "honest", binding=request.binding(context.node_id))


def test_judge_accepts_an_honest_bundle():
    verdict = judge(honest)
    assert verdict.compliant, verdict.detail
    assert verdict.steps_verified >= 1
