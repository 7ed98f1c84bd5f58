"""The dashboard's page scripts: each file is a Streamlit script run by ``dashboard/app.py``'s navigation
(listed in ``dashboard/navigation.py``).

Not named ``pages/``: Streamlit would also list such a folder as legacy pages and run them bare."""
