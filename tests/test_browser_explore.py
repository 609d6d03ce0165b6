"""A real browser trains a small data set briefly, opens Explore, draws a lasso and saves a group."""

import re

import pytest

from .conftest import ARTIFACTS, open_explore, train_fixture_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EPOCHS = 3




def test_lasso_on_the_embedding_saves_a_group(dashboard_url, browser_page):
    page = browser_page
    train_fixture_in_browser(page, dashboard_url, EPOCHS)

    plot = open_explore(page)
    # The legend names the clusters; the canvas has points on it.
    assert plot.locator(".atlas-key .atlas-item").count() >= 2
    assert page.evaluate("""() => {
        const c = document.querySelector('.st-key-explore_scatter canvas.atlas-points');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0; for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
        return painted;
    }""") > 1000

    # Hovering a cell names its cluster.
    overlay = plot.locator("canvas.atlas-overlay")
    overlay.scroll_into_view_if_needed()
    box = overlay.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    rx, ry = box["width"] * 0.3, box["height"] * 0.3
    tip = plot.locator(".atlas-tip")
    for dx, dy in ((dx, dy) for dy in range(-150, 151, 30) for dx in range(-150, 151, 10)):
        page.mouse.move(cx + dx, cy + dy)  # somewhere around the middle there is a cell
        if tip.is_visible():
            break
    assert tip.inner_text().startswith("cluster: ")

    # The lasso is the default tool: draw a closed loop around the plot's centre.
    page.mouse.move(cx - rx, cy - ry)
    page.mouse.down()
    for x, y in ((cx + rx, cy - ry), (cx + rx, cy + ry), (cx - rx, cy + ry), (cx - rx, cy - ry + 5)):
        page.mouse.move(x, y, steps=12)
    page.mouse.up()
    page.screenshot(path=str(ARTIFACTS / "explore_lasso_drawn.png"), full_page=True)

    # The selection reruns the page; the save button then counts the selected cells.
    save = page.get_by_role("button", name=re.compile(r"Save selection as group \([1-9][\d,]* cells\)"))
    save.wait_for(timeout=60_000)
    n_selected = int(re.search(r"\(([\d,]+) cells\)", save.inner_text()).group(1).replace(",", ""))
    assert n_selected > 20  # a lasso over the middle 60% of the UMAP catches many cells
    page.get_by_label("Group name").fill("lasso group")
    page.get_by_label("Group name").press("Tab")
    save.click()
    page.get_by_text(f"Saved group 'lasso group' with {n_selected:,} cells.").wait_for()
    listed = page.locator('[data-testid="stTable"]').get_by_text("lasso group", exact=True)
    listed.wait_for()
    assert page.locator('[data-testid="stTable"]').get_by_text(f"{n_selected:,}").count() >= 1
    listed.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "explore_lasso_group.png"), full_page=True)

    # Positions are sent once per session: a tab that lost them (here: dropped on purpose, then a
    # page switch that unmounts the scatter) asks the server again and draws them.
    page.evaluate("() => { delete window.__atlasScatterPositions; }")
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Data").click()
    page.get_by_role("heading", name="Data", exact=True).wait_for()
    page.get_by_test_id("stSidebarNavItems").get_by_role("link", name="Explore").click()
    page.wait_for_function("() => Number(document.querySelector('.st-key-explore_scatter .atlas-scatter')"
                           "?.dataset.points) > 20", timeout=60_000)
    assert page.evaluate("() => window.__atlasScatterPositions.xy.length") > 40

    # Where categories overlap, none lies on top: 400 places with one point of each of two
    # categories on each. Drawn whole one after the other, the second would hide the first at every
    # place; drawn in interleaved rounds, the first is on top at ~7/16 of them.
    shares = page.evaluate("""() => {
        const host = document.querySelector('.st-key-explore_scatter .atlas-scatter').parentElement;
        const s = host.__atlasScatter, side = 20, n = side * side;
        const xy = new Float32Array(4 * n), codes = new Int16Array(2 * n);
        for (let k = 0; k < n; k++) {
            for (const c of [0, 1]) {
                xy[2 * (c * n + k)] = k % side; xy[2 * (c * n + k) + 1] = Math.floor(k / side); codes[c * n + k] = c;
            }
        }
        s.xy = xy; s.codes = codes; s.values = null; s.bounds = [-1, side, -1, side];
        s.data = { ...s.data, kind: 'categorical', opacity: 1, point_size: 8, colours: ['#ff0000', '#0000ff'],
                   names: ['first', 'second'], text_labels: null };
        s.overlay.dispatchEvent(new MouseEvent('dblclick'));  // resets the view and draws
        const px = s.points.getContext('2d').getImageData(0, 0, s.points.width, s.points.height).data;
        let first = 0, second = 0;
        for (let i = 0; i < px.length; i += 4) {
            if (px[i] === 255 && px[i + 1] === 0 && px[i + 2] === 0) first++;
            if (px[i] === 0 && px[i + 1] === 0 && px[i + 2] === 255) second++;
        }
        return [first, second];
    }""")
    first, second = shares
    assert second > 1000 and 0.3 < first / (first + second) < 0.6, shares
