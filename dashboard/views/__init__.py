"""The dashboard's pages: each file is a Streamlit script that ``dashboard/app.py``'s navigation runs.

Not named ``pages/``: Streamlit would also list such a folder as legacy pages and run them bare."""
