"""Entry point: ``streamlit run dashboard/Home.py``. A router: page config, shared sidebar, pages."""

from __future__ import annotations

import pydicom  # noqa: F401  imported once here: pydicom's package imports itself circularly, and two
#                 page threads (a page and the inbox fragment) importing it at once can each see it half-made
import streamlit as st

from engine.errors import StoreDamaged

from dashboard import monitor_banner, resources, sidebar, state, upload_spool

# A local file: a Material icon or an emoji as the page icon is fetched from a CDN, which fails offline.
PAGE_ICON = str(resources.PROJECT_ROOT / "assets" / "static" / "favicon.png")

PAGES = (
    ("views/home.py", "Home", ":material/home:"),
    ("views/triage.py", "Triage", ":material/format_list_numbered:"),
    ("views/review.py", "Review", ":material/visibility:"),
    ("views/performance.py", "Performance & thresholds", ":material/monitoring:"),
    ("views/compare.py", "Compare models", ":material/compare_arrows:"),
    ("views/monitoring.py", "Monitoring", ":material/monitor_heart:"),
)


def main() -> None:
    st.set_page_config(page_title="CXR pneumonia triage", page_icon=PAGE_ICON, layout="wide")
    page = st.navigation([st.Page(path, title=title, icon=icon, default=(i == 0))
                          for i, (path, title, icon) in enumerate(PAGES)])
    try:
        store = resources.store()
    except StoreDamaged as exc:           # never an empty worklist in place of a damaged one
        st.error(str(exc), icon=":material/error:")
        st.stop()
    upload_spool.install(store.root)      # uploaded bytes to disk as they arrive, not the server's memory
    state.open_worklist(store)
    sidebar.render()
    monitor_banner.render(store)          # the stop rule crossed: "Model under review since ..." on every page
    page.run()


if __name__ == "__main__":
    main()
