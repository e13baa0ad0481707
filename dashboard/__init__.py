"""The Streamlit dashboard: ``streamlit run dashboard/Home.py``.

Page scripts in ``dashboard/views/`` are thin views; what they show is computed by the engine and
by the pure helpers here (``batch``, ``worklist``, ``evaluation``, ``figures``, ``imaging``), which
are tested without a browser. Only ``sidebar``, ``state``, ``resources`` and the views import
streamlit.
"""
