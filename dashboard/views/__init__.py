"""One module per page, each with a ``render()`` function; run as scripts by ``st.navigation``."""
