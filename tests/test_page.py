"""The page at /, in Debian's headless chromium driven by Playwright: an upload, and the microphone streamed
to a websocket server process (Chromium's fake audio device plays a WAV file as the microphone).

One HTTP and one websocket server, both with an API key, so that every test also checks that the page
loads without the key and sends the key typed into it.
"""

import shutil
import wave

import httpx
import numpy as np
import pytest
import srt
import webvtt

from .conftest import FIXTURES, OWN_TEXT_MAX_WER, ServerProcess, wer
from .test_websocket import StreamingServerProcess

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make system-deps)")

KEY = "page-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPOKEN = "anna bought the bread at the market"  # tests/fixtures/anna_bread.wav
TIMEOUT_MS = 60_000


# What the stream shows, in order, as `window.shown`: [kind, text] for each partial shown and each final added.
# A MutationObserver sees every change, however briefly a partial stays on a busy machine.
RECORD_WHAT_IS_SHOWN = """
window.shown = [];
document.addEventListener("DOMContentLoaded", () => {
  const partial = document.getElementById("partial");
  new MutationObserver(() => {
    if (partial.textContent.trim()) window.shown.push(["partial", partial.textContent]);
  }).observe(partial, {childList: true, characterData: true, subtree: true});
  new MutationObserver((changes) => {
    for (const change of changes) for (const node of change.addedNodes) window.shown.push(["final", node.textContent]);
  }).observe(document.getElementById("finals"), {childList: true});
});
"""


@pytest.fixture(scope="module")
def servers():
    streaming = StreamingServerProcess(API_KEY=KEY, NUM_THREADS="1", STREAMING_PAUSE_FOR_FINAL="1.0")
    try:
        http = ServerProcess({"API_KEY": KEY, "NUM_THREADS": "1", "STREAMING_PORT": str(streaming.port)})
    except BaseException:
        streaming.stop()
        raise
    yield http, streaming
    streaming.process.terminate()  # both drain at once; each stop then waits for its own
    http.stop()
    streaming.stop()


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory):
    """The fixture's speech, then silence longer than the pause for a final: the fake device loops it."""
    with wave.open(str(FIXTURES / "anna_bread.wav")) as source:
        rate, speech = source.getframerate(), source.readframes(source.getnframes())
    path = tmp_path_factory.mktemp("microphone") / "anna_then_silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        silence = np.zeros(int(0.3 * rate), "<i2").tobytes()
        out.writeframes(silence + speech + silence * 8)
    return path


@pytest.fixture(scope="module")
def browser(servers, microphone_wav):
    # After the servers: Playwright's sync API runs an event loop, and StreamingServerProcess uses asyncio.run.
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone_wav}"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, servers):
    http, _ = servers
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # Uncaught exceptions and what the page's Content-Security-Policy blocks (the failed requests of the
    # refusal tests are logged too, as expected).
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error"
            and not message.text.startswith("Failed to load resource") else None)
    page.add_init_script(RECORD_WHAT_IS_SHOWN)
    page.goto(http.url + "/")
    # Once the page has read its config (the page's CSP forbids wait_for_function's eval: locators instead).
    playwright_api.expect(page.locator("#ws-url")).not_to_have_value("", timeout=TIMEOUT_MS)
    yield page
    context.close()
    assert not errors, errors


def vtt_time(timestamp: str):
    return srt.srt_timestamp_to_timedelta(timestamp.replace(".", ","))


def with_key(page) -> None:
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")


def test_page_loads_without_the_key_and_stays_out_of_the_schema(servers):
    http, streaming = servers
    index = httpx.get(http.url + "/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert '<script src="/page/page.js"' in index.text
    for name, media_type in [("page.js", "text/javascript"), ("page.css", "text/css"),
                             ("pcm-worklet.js", "text/javascript")]:
        asset = httpx.get(f"{http.url}/page/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type), name
    config = httpx.get(http.url + "/page/config.json").json()
    assert config == {"websocket_url": None, "websocket_port": streaming.port, "api_key_required": True}
    assert httpx.get(http.url + "/page/..%2Fpage.py").status_code == 404
    assert httpx.get(http.url + "/page/missing.js").status_code == 404
    # The API keeps its key, and its schema describes the API only.
    assert httpx.get(http.url + "/openapi.json").status_code == 401
    schema = httpx.get(http.url + "/openapi.json", headers=AUTH).json()
    assert not [path for path in schema["paths"] if path == "/" or path.startswith("/page")]
    assert httpx.get(http.url + "/docs", headers=AUTH).status_code == 200
    assert httpx.get(http.url + "/healthcheck").text == "1"


def test_upload_shows_the_text_word_times_and_subtitles_of_the_servers_segments(page, servers):
    http, _ = servers
    with_key(page)
    page.set_input_files("#file", str(FIXTURES / "anna_bread.wav"))
    page.click("#transcribe")
    page.wait_for_selector("#upload-result:not([hidden])")
    assert wer(SPOKEN, page.inner_text("#transcript")) <= OWN_TEXT_MAX_WER

    fixture = (FIXTURES / "anna_bread.wav").read_bytes()
    form = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    expected = httpx.post(http.url + "/v1/audio/transcriptions", headers=AUTH, data=form,
                          files={"file": ("anna_bread.wav", fixture)}).json()
    assert page.inner_text("#transcript") == expected["text"]
    rows = page.eval_on_selector_all("#words tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert rows == [[w["word"], f"{w['start']:.3f}", f"{w['end']:.3f}"] for w in expected["words"]]
    hover = page.get_attribute("#transcript span >> nth=0", "title")
    assert hover == f"{expected['words'][0]['start']:.3f} – {expected['words'][0]['end']:.3f} s"

    with page.expect_download() as download:
        page.click("#download-srt")
    assert download.value.suggested_filename == "anna_bread.srt"
    cues = list(srt.parse(download.value.path().read_text()))
    server_srt = httpx.post(http.url + "/v1/audio/transcriptions", headers=AUTH, data={"response_format": "srt"},
                            files={"file": ("anna_bread.wav", fixture)}).text
    assert cues and cues == list(srt.parse(server_srt))
    assert [cue.content for cue in cues] == [segment["text"] for segment in expected["segments"]]

    with page.expect_download() as download:
        page.click("#download-vtt")
    captions = [(vtt_time(c.start), vtt_time(c.end), c.text) for c in webvtt.read(download.value.path())]
    assert captions == [(cue.start, cue.end, cue.content) for cue in cues]


def test_upload_without_the_key_shows_the_401(page):
    page.set_input_files("#file", str(FIXTURES / "anna_bread.wav"))
    page.click("#transcribe")
    error = page.wait_for_selector("#upload-error:not([hidden])")
    assert error.inner_text().startswith("401") and "API key" in error.inner_text()
    assert page.is_hidden("#upload-result")


def test_upload_of_a_file_that_is_not_audio_shows_the_415_and_its_reason(page):
    with_key(page)
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not audio at all"})
    page.click("#transcribe")
    error = page.wait_for_selector("#upload-error:not([hidden])")
    assert error.inner_text().startswith("415") and "notes.txt" in error.inner_text()


def test_microphone_shows_partials_then_a_final_with_the_words_said(page, servers):
    _, streaming = servers
    assert page.input_value("#ws-url") == f"ws://127.0.0.1:{streaming.port}/streaming"
    with_key(page)
    page.click("#start")
    final = page.wait_for_selector("#finals li .final")
    assert wer(SPOKEN, final.inner_text()) <= OWN_TEXT_MAX_WER
    shown = page.evaluate("window.shown")
    kinds = [kind for kind, _ in shown]
    assert "partial" in kinds[:kinds.index("final")], shown  # partials while the sentence went on, then its final
    assert page.get_attribute("#finals li .final span >> nth=0", "title").endswith(" s")  # the words' times
    page.click("#stop")  # the fake microphone loops: the end of the stream closes it normally
    page.wait_for_selector("#mic-status:text-is('Stream ended.')")
    assert page.is_hidden("#mic-error")


def test_microphone_without_the_key_shows_the_servers_close_reason(page):
    page.click("#start")
    error = page.wait_for_selector("#mic-error:not([hidden])")
    assert "1008" in error.inner_text() and "API key" in error.inner_text()
    assert page.is_enabled("#start")
