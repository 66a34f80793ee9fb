"""The chat page in headless Chromium (Debian's `chromium` driven by Playwright): enter the key, ask,
see the streamed answer and its sources, thumbs-down with a correction, prefer one of two answers;
the feedback lands in the store. Screenshots go to $RAGTUNE_TEST_ARTIFACTS when set."""

import pytest

from tests.conftest import shoot
from tests.serve.conftest import KEY, store_of

pytestmark = pytest.mark.slow


def test_ask_see_sources_thumbs_down_with_a_correction_and_prefer_one_of_two(served, browser_page, tmp_path):
    page, errors = browser_page
    first = page.goto(served.url + "/")
    assert first.status == 401 and page.locator("#k").count() == 1  # no key: only the key form
    page.fill("#k", KEY)
    page.click("text=Use key")
    page.wait_for_selector("#model option[value=rag]", state="attached")

    page.fill("#question", "Who founded the observatory?")
    page.click("#send")
    page.wait_for_selector(".answer.streaming")  # the answer arrives piece by piece
    answer = page.locator(".answer").first
    page.wait_for_selector(".answer:not(.streaming) .sources li")
    assert "Vantreight" in answer.locator(".text").inner_text()
    assert answer.locator(".sources li").count() >= 1
    response_id = answer.get_attribute("data-id")
    shoot(page, tmp_path, "serve-answer.png")

    answer.locator(".down").click()
    answer.locator(".correction").fill("Cornelius Vantreight founded it in 1931.")
    answer.locator(".comment").fill("say the full name")
    answer.locator(".send-detail").click()
    page.wait_for_selector(".answer >> text=thanks: feedback saved")

    page.check("#two")
    page.fill("#question", "What is the travel per diem?")
    page.click("#send")
    page.wait_for_selector(".pair .answer:nth-child(2):not(.streaming) .prefer:visible")
    pair = page.locator(".pair .answer")
    ids = [pair.nth(0).get_attribute("data-id"), pair.nth(1).get_attribute("data-id")]
    pair.nth(1).locator(".prefer").click()
    page.wait_for_selector(".pair >> text=thanks: feedback saved")
    shoot(page, tmp_path, "serve-two-answers.png")
    assert errors == []

    feedback = {fb.response_id: fb for fb in store_of(served).feedback()}
    down = feedback[response_id]
    assert (down.kind, down.label, down.correction, down.comment) == ("thumb", False, "Cornelius Vantreight founded it in 1931.",
                                                                        "say the full name")
    ranking = feedback[ids[1]]
    assert ranking.kind == "ranking" and ranking.ranking == [ids[1], ids[0]]
    responses = store_of(served).responses(ids)
    assert responses[ids[0]].messages == responses[ids[1]].messages  # two answers to one prompt


def test_the_page_files_need_the_key_too(served):
    import urllib.error
    import urllib.request

    for path in ("/", "/static/app.js", "/static/style.css"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(served.url + path, timeout=10)
        assert e.value.code == 401
        req = urllib.request.Request(served.url + path, headers={"cookie": f"ragtune_key={KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and len(r.read()) > 100
    req = urllib.request.Request(served.url + "/v1/models", headers={"cookie": f"ragtune_key={KEY}"})
    with pytest.raises(urllib.error.HTTPError) as e:  # the API never takes the cookie
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
