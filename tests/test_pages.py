"""The mirror's pages: written after the repodata, only when they change, escaped,
split when large, removed when switched off; and what a real browser shows."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conda_ferry.index import repodata
from conda_ferry.index.channel import ChannelEntry
from conda_ferry.mirror import byname, pages
from conda_ferry.mirror.pages import Package, package_page
from tests.helpers import ferry
from tests.pkgmaker import DEMO, Spec
from tests.servers import Server
from tests.upstream import build_upstream, job_yaml, reindex

HOSTILE = "<img src=x onerror=alert(1)>"
EXTRA = [
    Spec("safe", "1.0", "h0_0", subdir="linux-64"),
    Spec("safe", "2.0", "h0_0", subdir="linux-64", depends=["zlib >=1.2"]),
    Spec("evil", "1.0", "h0_0", subdir="linux-64", license=HOSTILE, summary=f"x {HOSTILE} y"),
]


def hostile_upstream(root: Path) -> Path:
    """An upstream whose licences and summaries (from channeldata) carry markup."""
    build_upstream(root, [(s, ".conda") for s in EXTRA], channeldata=True)
    return root


def sync(job: Path, *args: str) -> None:
    result = ferry("sync", *args, str(job))
    assert result.exit_code == 0, result.output


def html_files(mirror: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(mirror)): p.read_bytes()
        for p in sorted(mirror.rglob("*.html"))
        if ".ferry" not in p.parts
    }


@pytest.fixture
def mirrored(tmp_path: Path) -> tuple[Path, Path, Path]:
    upstream = hostile_upstream(tmp_path / "upstream")
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror), "prune: true\n")
    sync(job)
    return upstream, mirror, job


def test_pages_show_hostile_text_as_text(mirrored: tuple[Path, Path, Path]) -> None:
    _, mirror, _ = mirrored
    listing = (mirror / "linux-64/index.html").read_text()
    page = (mirror / "linux-64/pages/evil.html").read_text()
    for text in (listing, page):
        assert HOSTILE not in text
        assert html.escape(HOSTILE) in text
    assert 'href="pages/safe.html"' in listing
    assert "safe-2.0-h0_0.conda" in (mirror / "linux-64/pages/safe.html").read_text()
    front = (mirror / "index.html").read_text()
    assert 'href="linux-64/index.html"' in front and "synced" in front


def test_a_link_is_never_a_script() -> None:
    package = Package("x", [("x-1-0.conda", {"version": "1", "size": 1})])
    package.about = {"home": "javascript:alert(1)", "summary": '"><script>alert(1)</script>'}
    text = package_page("linux-64", package).decode()
    assert 'href="javascript' not in text
    assert "<script>alert" not in text


def test_a_new_subdir_names_its_shards_and_pages_all_at_once(tmp_path: Path) -> None:
    """A subdir with no shard or page yet has each kind written in a staging directory
    that is renamed into place before the shard index or a listing names it; what a
    killed run left staged goes, and no staging directory stays."""
    upstream = hostile_upstream(tmp_path / "upstream")
    mirror = tmp_path / "mirror"
    left = mirror / "linux-64/.shards.0123456789ab.part"
    left.mkdir(parents=True)
    (left / "torn.msgpack.zst").write_bytes(b"half")
    sync(job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror)))
    for subdir in ("linux-64", "noarch"):
        assert not [p for p in (mirror / subdir).iterdir() if p.name.startswith(".")]
        records = json.loads((mirror / subdir / "repodata.json").read_bytes())
        names = {r["name"] for r in repodata.records(records).values()}
        pages_made = {p.name for p in (mirror / subdir / "pages").iterdir()}
        assert pages_made == {f"{name}.html" for name in names}
        assert len(list((mirror / subdir / "shards").iterdir())) == len(names)


def test_unchanged_channel_is_left_byte_identical(mirrored: tuple[Path, Path, Path]) -> None:
    _, mirror, job = mirrored
    before = {p: (mirror / p).stat().st_mtime_ns for p in html_files(mirror)}
    assert ferry("index", str(mirror)).exit_code == 0
    sync(job)
    assert {p: (mirror / p).stat().st_mtime_ns for p in html_files(mirror)} == before


def test_a_removed_name_loses_its_page(mirrored: tuple[Path, Path, Path]) -> None:
    upstream, mirror, job = mirrored
    (upstream / "linux-64/evil-1.0-h0_0.conda").unlink()
    reindex(upstream, channeldata=True)
    sync(job)
    assert not (mirror / "linux-64/pages/evil.html").exists()
    assert "evil" not in (mirror / "linux-64/index.html").read_text()


def test_a_long_listing_is_split_by_name(
    mirrored: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, mirror, _ = mirrored
    monkeypatch.setattr(pages, "LISTING_LIMIT", 300)
    assert ferry("index", str(mirror)).exit_code == 0
    parts = sorted((mirror / "linux-64").glob("index*.html"))
    assert len(parts) > 2
    names = {"evil", "libpng", "pngtool", "safe", "zlib"}
    for name in names:
        holding = [p for p in parts if f'href="pages/{name}.html"' in p.read_text()]
        assert len(holding) == 1, name
    assert 'href="index-2.html"' in (mirror / "linux-64/index.html").read_text()
    monkeypatch.undo()
    assert ferry("index", str(mirror)).exit_code == 0
    assert [p.name for p in (mirror / "linux-64").glob("index*.html")] == ["index.html"]


def test_pages_switched_off_are_removed_but_a_foreign_front_page_stays(
    mirrored: tuple[Path, Path, Path],
) -> None:
    _, mirror, job = mirrored
    job.write_text(job.read_text() + "outputs: {html: false}\n")
    sync(job, "--force")
    assert html_files(mirror) == {}
    own = b"<html>our own front page</html>"
    (mirror / "index.html").write_bytes(own)
    job.write_text(job.read_text().replace("html: false", "html: true"))
    sync(job, "--force")
    assert (mirror / "index.html").read_bytes() == own
    assert (mirror / "linux-64/pages/safe.html").exists()


def test_front_page_shows_a_failed_run(tmp_path: Path) -> None:
    upstream = hostile_upstream(tmp_path / "upstream")
    mirror = tmp_path / "mirror"
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror))
    sync(job)
    (upstream / "linux-64/repodata.json").write_text('{"packages": [')
    (upstream / "linux-64/repodata.json.zst").unlink()
    result = ferry("sync", str(job))
    assert result.exit_code == 1
    front = (mirror / "index.html").read_text()
    assert "<td class=bad>failed" in front and "not valid JSON" in front


# -- in a real browser --------------------------------------------------------------


def _browser(shots: Path) -> Any:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,900")
    shots.mkdir(parents=True, exist_ok=True)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def test_pages_in_a_real_browser(nginx: Server, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    upstream = hostile_upstream(tmp_path / "upstream")
    name = f"pages-{tmp_path.name}"
    mirror = nginx.root / name
    url = f"{nginx.url}/{name}"
    job = job_yaml(tmp_path / "job.yaml", str(upstream), str(mirror), f"public_url: {url}\n")
    sync(job)
    shots = tmp_path / "screenshots"
    browser = _browser(shots)

    def no_alert() -> None:
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert  # noqa: B018 - the property raises when none is open

    try:
        browser.get(f"{url}/index.html")
        no_alert()
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "linux-64" in body and "noarch" in body and "synced" in body
        assert f"conda install -c {url} PACKAGE" in body
        browser.save_screenshot(str(shots / "channel.png"))

        browser.find_element(By.LINK_TEXT, "linux-64").click()
        no_alert()
        rows = browser.find_elements(By.CSS_SELECTOR, "table[data-filter] tbody tr")
        linux = {spec.name for spec, _ in DEMO if spec.subdir == "linux-64"} | {"safe", "evil"}
        assert [r.text.split()[0] for r in rows] == sorted(linux)
        evil = next(r for r in rows if r.text.startswith("evil"))
        assert HOSTILE in evil.text  # shown as text, never as an element
        assert browser.find_elements(By.CSS_SELECTOR, "td img") == []
        browser.save_screenshot(str(shots / "subdir.png"))
        box = browser.find_element(By.ID, "q")
        box.send_keys("saf")
        shown = [r.text.split()[0] for r in rows if r.is_displayed()]
        assert shown == ["safe"]
        assert browser.find_element(By.ID, "shown").text == "1"
        browser.save_screenshot(str(shots / "subdir-filtered.png"))

        browser.find_element(By.LINK_TEXT, "safe").click()
        no_alert()
        builds = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        assert [b.text.split()[0] for b in builds] == ["2.0", "1.0"]
        assert "zlib >=1.2" in builds[0].text
        browser.save_screenshot(str(shots / "package.png"))

        browser.get(f"{url}/linux-64/pages/evil.html")
        no_alert()
        assert HOSTILE in browser.find_element(By.TAG_NAME, "body").text
        browser.save_screenshot(str(shots / "package-hostile.png"))
    finally:
        browser.quit()
    print(f"screenshots: {shots}")
    assert len(list(shots.glob("*.png"))) == 5


def test_the_names_split_in_parts_of_consecutive_names_and_about_equal_records() -> None:
    """Each spare worker writes the shards and pages of one part (mirror/byname.py)."""
    counts = {"a": 3, "b": 1, "c": 1, "d": 4, "e": 1, "f": 2}
    entries = [
        ChannelEntry("linux-64", f"{name}-{i}-0.conda", {"name": name}, {})
        for i in range(4)
        for name in sorted(counts, reverse=True)
        if i < counts[name]
    ]
    parts = byname.split(entries, 2)
    assert sorted((e for part in parts for e in part), key=entries.index) == entries
    for part in parts:
        assert part == sorted(part, key=entries.index)  # the order each was given
    names = [sorted({e.record["name"] for e in part}) for part in parts]
    assert names == [["a", "b", "c"], ["d", "e", "f"]]  # 5 and 7 records of 12
    assert [len(p) for p in byname.split(entries, 10)] == [3, 1, 1, 4, 1, 2]  # a name is not cut
    assert byname.split([], 2) == [[]]


def test_a_part_that_failed_fails_the_commit_once_every_part_is_heard() -> None:
    """What is to run meanwhile runs first, then each part's worker is heard (and so
    free for the next subdir) before the first failure is raised, and asking again
    raises it again, running nothing twice."""
    heard: list[str] = []

    def part(name: str, fails: bool = False) -> Any:
        def outcome() -> Any:
            heard.append(name)
            if fails:
                raise OSError(f"{name}: no space left")
            return name

        return outcome

    parts = object.__new__(byname.ByName)
    parts._started = [part("first", fails=True), part("second")]
    parts._unstarted = []
    parts._parts = None
    parts.meanwhile = lambda: heard.append("the next subdir started")
    for _ in range(2):
        with pytest.raises(OSError, match="first: no space left"):
            parts._done()
    assert heard == ["the next subdir started", "first", "second"]
