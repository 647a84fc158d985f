"""The homeserver token is checked in constant time, and every wrong token is refused."""
import hmac
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request

from bridge import intake
from bridge.intake import IntakeAppService

TOKEN = "s3cret-homeserver-token-0123456789abcdef"


def check(header: str | None = None, query: str | None = None):
    path = "/_matrix/app/v1/transactions/1" + (f"?access_token={query}" if query else "")
    headers = {"Authorization": f"Bearer {header}"} if header is not None else {}
    request = make_mocked_request("PUT", path, headers=headers)
    return IntakeAppService._token_error(SimpleNamespace(hs_token=TOKEN), request)


@pytest.mark.parametrize("wrong", [
    TOKEN[:-1] + "X",             # same length, last character differs
    "X" + TOKEN[1:],              # same length, first character differs
    TOKEN[:-1],                   # shorter
    TOKEN + "0",                  # longer
    "é" * len(TOKEN),             # beyond ASCII (compare_digest refuses such str)
])
@pytest.mark.parametrize("how", ["header", "query"])
def test_a_wrong_token_is_refused(wrong, how):
    response = check(**{how: wrong})
    assert response is not None and response.status == 403


def test_the_right_token_is_accepted():
    assert check(header=TOKEN) is None
    assert check(query=TOKEN) is None


def test_no_token_is_unauthorized():
    assert check().status == 401


def test_the_comparison_is_constant_time(monkeypatch):
    seen, real = [], hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(intake.hmac, "compare_digest", spy)
    assert check(header=TOKEN[:-1] + "X").status == 403
    assert check(header=TOKEN) is None
    assert seen == [((TOKEN[:-1] + "X").encode(), TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_mautrix_own_check_goes_the_same_way():
    fake = SimpleNamespace(hs_token=TOKEN)
    fake._token_error = lambda request: IntakeAppService._token_error(fake, request)
    request = make_mocked_request("GET", "/x", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert IntakeAppService._check_token(fake, request) is False
    request = make_mocked_request("GET", "/x", headers={"Authorization": f"Bearer {TOKEN}"})
    assert IntakeAppService._check_token(fake, request) is True
