"""The page in Chromium: create a hypernetwork, train it a few steps with previews, see loss and images arrive."""
import re

import pytest

from helpers_browser import (browser_page, fill, fill_train_form, open_train_subtab, require_chromium,
                             served_app, tmp_workspace, wait_for)
from helpers_images import make_dataset
from trainer.hypernetworks.network import read_hypernetwork

pytestmark = pytest.mark.browser



def output_text(page):
    return page.locator("#ti_output textarea").input_value()


def test_create_and_train_a_hypernetwork_with_previews(tmp_path):
    require_chromium()
    data = make_dataset(tmp_path / "data", size=(64, 64))
    ws = tmp_workspace(tmp_path)
    with served_app(ws) as demo, browser_page(demo.local_url) as page:
        # The subtabs in the reference's order
        page.get_by_role("tab", name="Train", exact=True).first.click()
        names = [t.strip() for t in page.get_by_role("tab").all_inner_texts()]
        assert names.index("Create embedding") < names.index("Create hypernetwork") < names.index("Preprocess images")

        # Create hypernetwork: the demo model's widths (text 64, attention 128) are the ticked modules
        open_train_subtab(page, "Create hypernetwork")
        sizes = page.locator("#train_new_hypernetwork_sizes")

        def size_box(size):
            return sizes.get_by_role("checkbox", name=size, exact=True)

        assert size_box("64").is_checked() and size_box("128").is_checked() and not size_box("768").is_checked()
        # a model that is not SD-sized: the hint says which sizes it uses and that the others do nothing
        assert "uses 64, 128" in page.locator("#train_new_hypernetwork_sizes").inner_text()
        fill(page, "train_new_hypernetwork_name", "browser-hn")
        fill(page, "train_new_hypernetwork_layer_structure", "1, 1.5, 1")
        page.keyboard.press("Escape")  # Tab moved focus into the activation dropdown, which opened its list
        page.locator("#train_new_hypernetwork_add_layer_norm input").check()
        page.locator("#train_create_hypernetwork").click()
        wait_for(lambda: "Created:" in output_text(page), what="Created:")
        created = read_hypernetwork(tmp_path / "hn" / "browser-hn.pt")
        assert created.sizes == [64, 128] and created.layer_structure == [1, 1.5, 1] and created.layer_norm

        # A second create without Overwrite is refused with a sentence
        page.locator("#train_create_hypernetwork").click()
        wait_for(lambda: "exists" in page.locator("#ti_error").inner_text(), what="refusal")
        assert "Tick 'Overwrite Old Hypernetwork' to replace it." in page.locator("#ti_error").inner_text()

        # Train it with previews every 3 steps through the shared Train subtab
        open_train_subtab(page, "Train")
        assert page.locator("#train_hypernetwork_learn_rate textarea, #train_hypernetwork_learn_rate input") \
            .first.input_value() == "0.00001"
        page.locator("#train_hypernetwork input").click()
        page.get_by_role("option", name="browser-hn").click()
        fill(page, "train_hypernetwork_learn_rate", "0.0005")
        fill_train_form(page, data, tmp_path / "logs", steps=6, preview_every=3, save_every=3)
        page.locator("#train_train_hypernetwork").click()

        wait_for(lambda: "Training finished at 6 steps" in output_text(page), what="finished message")
        assert "Hypernetwork saved to" in output_text(page)
        wait_for(lambda: page.locator("#ti_gallery img").count() >= 2, what="two preview images")
        wait_for(lambda: page.locator("#ti_loss_plot canvas, #ti_loss_plot svg").count() >= 1, what="loss chart")
        wait_for(lambda: page.locator("#ti_parsed_prompt .hn").count() == 1, what="hypernetwork in the prompt view")
        text = page.locator("#ti_progress").inner_text()
        assert re.search(r"Step 6/6", text) and "Loss:" in text and "hypernetwork" in text.lower()
        page.screenshot(path=str(tmp_path / "hypernetwork-trained.png"), full_page=True)

        # A reloaded page: the saved settings go back into the hypernetwork's boxes, and training resumes
        page.reload()
        open_train_subtab(page, "Train")
        fill(page, "train_log_directory", tmp_path / "logs")
        page.locator("#train_settings_file input").click()
        page.get_by_role("option").first.click()
        page.locator("#train_load_settings").click()
        wait_for(lambda: "Loaded settings" in output_text(page), what="loaded settings")
        assert page.locator("#train_hypernetwork input").input_value() == "browser-hn"
        assert page.locator("#train_hypernetwork_learn_rate textarea").input_value() == "0.0005"
        assert page.locator("#train_embedding_learn_rate textarea").input_value() == "0.005"
        fill(page, "train_steps", 8)
        fill(page, "train_create_image_every", 0)
        page.locator("#train_train_hypernetwork").click()
        wait_for(lambda: "Training finished at 8 steps" in output_text(page), what="resumed run")

    trained = read_hypernetwork(tmp_path / "hn" / "browser-hn.pt")
    assert trained.step == 8
    [log] = list((tmp_path / "logs").glob("*/browser-hn"))
    assert sorted(p.name for p in (log / "hypernetworks").iterdir()) == ["browser-hn-3.pt", "browser-hn-6.pt",
                                                                              "browser-hn-best.pt"]
    assert sorted(p.name for p in (log / "images").iterdir()) == ["browser-hn-3.png", "browser-hn-6.png"]
    assert (log / "hypernetwork_loss.csv").read_text().count("\n") == 9  # header + 8 steps
